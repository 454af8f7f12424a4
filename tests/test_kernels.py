"""Every Numba kernel against a plain-NumPy reference (the references live here, as stumpy's
``naive.py``), on hypothesis-drawn shapes including size-1 dims, in float32 and float64.

References compute in float64.  Tolerances: float64 1e-12; float32 1e-5 relative with an
absolute term scaled by the number of summed terms.  The float32 ``tanh``/``sigmoid`` are a
rational approximation (abs error <= 3e-7); float64 is exact (<= 1e-15).
"""

import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import kernels
from minigrad.core import autograd, ops
from minigrad.core.autograd import unbroadcast
from minigrad.kernels import blas

FLOATS = st.sampled_from([np.float32, np.float64])
sides = st.integers(1, 5)
matrix_shapes = st.tuples(sides, sides)


def rand(data, shape, dtype, lo=-2.0, hi=2.0):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return rng.uniform(lo, hi, shape).astype(dtype)


def close(actual, ref, dtype, terms=1):
    """Compare with the dtype's tolerance; ``terms`` = values summed into each result."""
    assert actual.dtype == dtype
    assert actual.shape == np.shape(ref)
    if dtype == np.float64:
        np.testing.assert_allclose(actual, ref, rtol=1e-12, atol=1e-12 * terms)
    else:
        np.testing.assert_allclose(actual, ref, rtol=1e-5, atol=1e-6 * terms)


# ----------------------------------------------------------------------------- references

def f64(x):
    return np.asarray(x, dtype=np.float64)


def tanh_ref(x):
    return np.tanh(f64(x))


def sigmoid_ref(x):
    return 0.5 * (1 + np.tanh(f64(x) / 2))  # = 1 / (1 + e^-x), without overflow


def sum_axis0_ref(x):
    return f64(x).sum(axis=0)


def sum_axis1_ref(x):
    return f64(x).sum(axis=1)


def log_softmax_rows_ref(x):
    x = f64(x)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def softmax_rows_ref(x):
    return np.exp(log_softmax_rows_ref(x))


def softmax_backward_rows_ref(g, y):
    g, y = f64(g), f64(y)
    return y * (g - (g * y).sum(axis=1, keepdims=True))


def log_softmax_backward_rows_ref(g, y):
    g, y = f64(g), f64(y)
    return g - np.exp(y) * g.sum(axis=1, keepdims=True)


def cross_entropy_rows_ref(x, t, w):
    x = f64(x)
    lse = x.max(axis=1) + np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1))
    loss = np.where(w != 0, f64(w) * (lse - x[np.arange(len(t)), t]), 0.0)
    return loss, lse


def cross_entropy_backward_rows_ref(g, x, t, w, lse):
    p = np.exp(f64(x) - f64(lse)[:, None])
    p[np.arange(len(t)), t] -= 1
    return (f64(g) * f64(w))[:, None] * p


def gather_rows_ref(w, idx):
    return w[idx]


def scatter_add_rows_ref(out, idx, g):
    out = f64(out).copy()
    np.add.at(out, idx, f64(g))
    return out


def matmul_ref(a, b):
    return f64(a) @ f64(b)


def unbroadcast_ref(g, shape):
    """Sum ``g`` over the axes broadcasting added or stretched from 1, one axis at a time."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g


# ----------------------------------------------------------------------------- coverage

TESTED = {
    "tanh_forward", "sigmoid_forward",
    "sum_axis0", "sum_axis1", "log_softmax_rows", "softmax_rows",
    "softmax_backward_rows", "log_softmax_backward_rows", "cross_entropy_rows",
    "cross_entropy_backward_rows", "gather_rows", "scatter_add_rows",
    "gelu", "gelu_backward", "layer_norm_rows", "layer_norm_backward_rows",
    "attention_softmax", "attention_softmax_backward", "sum_squares", "adam_update",
}
# Fused recurrent-cell kernels are checked against the composed cells in their own tests.
EXCLUDED_PREFIXES = ("rnn_", "lstm_", "gru_")


def test_every_kernel_has_a_reference_test():
    compiled = {
        name for name, v in vars(kernels).items()
        if not name.startswith("_") and not name.startswith(EXCLUDED_PREFIXES)
        and isinstance(v, (np.ufunc, numba.core.dispatcher.Dispatcher, kernels.Ufunc))
    }
    assert compiled - TESTED == set(), "kernels without a NumPy reference test"


# ----------------------------------------------------------------------------- elementwise

UNARY = {"tanh_forward": tanh_ref, "sigmoid_forward": sigmoid_ref}
# The unary rows' rules, which the walk runs as ufuncs made from them (ops.Prim).
RULES = [p for p in ops.PRIMITIVES.values() if p.elementwise and len(p.args) == 1 and p.rules
         and p.rules[0] is not None]


def elementwise_tol(name, dtype):
    if name in UNARY:
        return 1e-15 if dtype == np.float64 else 3e-7
    return 1e-12 if dtype == np.float64 else 1e-6


def lay_out(x, kind):
    """The same values as ``x`` in a non-contiguous (or contiguous) array."""
    if kind == "strided":
        big = np.zeros(tuple(2 * n for n in x.shape), dtype=x.dtype)
        big[tuple(slice(None, None, 2) for _ in x.shape)] = x
        return big[tuple(slice(None, None, 2) for _ in x.shape)]
    if kind == "transposed":
        return x.T.copy().T  # NOTE: not np.ascontiguousarray, which makes 0-d arrays 1-d
    return x


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data(), dtype=FLOATS, shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
       kind=st.sampled_from(["c", "strided", "transposed"]))
def test_unary_ufunc(name, data, dtype, shape, kind):
    x = rand(data, shape, dtype, -10, 10)
    out = getattr(kernels, name)(lay_out(x, kind))
    out = np.asarray(out)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, UNARY[name](x), rtol=0, atol=elementwise_tol(name, dtype))


@pytest.mark.parametrize("prim", RULES, ids=lambda p: p.name)
@given(data=st.data(), dtype=FLOATS, shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
       kind=st.sampled_from(["c", "strided", "transposed"]))
def test_a_unary_rule_as_a_ufunc_equals_the_rule_on_arrays(prim, data, dtype, shape, kind):
    """The one definition of a derivative, compiled into a ufunc, is the same function as
    that definition run by NumPy (in float64)."""
    g, a = rand(data, shape, dtype), rand(data, shape, dtype, 0.1, 2)
    out = prim.fwd(a)
    got = np.asarray(prim.vjps[0](lay_out(g, kind), out, a))
    assert got.dtype == dtype and got.shape == shape
    ref = prim.rules[0](f64(g), f64(out), f64(a))
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("name", UNARY)
def test_float32_activation_error_bound_on_a_dense_grid(name):
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    y = getattr(kernels, name)(x)
    err = np.abs(y - UNARY[name](x))
    assert err.max() <= 3e-7
    lo = -1 if name == "tanh_forward" else 0
    assert y.min() >= lo and y.max() <= 1  # never outside the range (log(σ) stays finite)


def test_the_readme_bounds_of_the_float32_approximations():
    """What the README promises (section "float32 tanh and sigmoid"): float32 tanh is within
    2.8e-7 of the exact value and saturates just below 1 (|tanh| <= 1 - 5.9e-8); float32
    sigmoid is within 1.7e-7 and bottoms out near 3e-8 instead of following e^x; float64
    is exact to rounding."""
    x = np.linspace(-40, 40, 800_001)
    t32 = kernels.tanh_forward(x.astype(np.float32)).astype(np.float64)
    s32 = kernels.sigmoid_forward(x.astype(np.float32)).astype(np.float64)
    x32 = x.astype(np.float32).astype(np.float64)
    assert np.abs(t32 - np.tanh(x32)).max() <= 2.8e-7
    assert np.abs(s32 - 0.5 * (1 + np.tanh(x32 / 2))).max() <= 1.7e-7
    assert 1 - np.abs(t32).max() >= 5.9e-8  # never exactly ±1
    assert 2e-8 <= s32[x <= -20].max() <= 1.2e-7  # σ(-20) = 2e-9 exactly
    np.testing.assert_allclose(kernels.tanh_forward(x), np.tanh(x), rtol=0, atol=1e-15)
    np.testing.assert_allclose(kernels.sigmoid_forward(x), 1 / (1 + np.exp(-x)), rtol=1e-15,
                               atol=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_at_special_values(dtype):
    x = np.array([-np.inf, -1000, 0, 1000, np.inf], dtype=dtype)
    tol = 3e-7 if dtype == np.float32 else 0
    np.testing.assert_allclose(kernels.tanh_forward(x), [-1, -1, 0, 1, 1], atol=tol)
    np.testing.assert_allclose(kernels.sigmoid_forward(x), [0, 0, 0.5, 1, 1], atol=tol)
    with np.errstate(invalid="ignore"):
        assert np.isnan(kernels.tanh_forward(np.array([np.nan], dtype=dtype))).all()
        assert np.isnan(kernels.sigmoid_forward(np.array([np.nan], dtype=dtype))).all()


# ----------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("name, ref, axis", [("sum_axis0", sum_axis0_ref, 0),
                                             ("sum_axis1", sum_axis1_ref, 1)])
@given(data=st.data(), dtype=FLOATS, shape=matrix_shapes)
def test_row_reductions(name, ref, axis, data, dtype, shape):
    x = rand(data, shape, dtype)
    close(getattr(kernels, name)(x), ref(x), dtype, terms=shape[axis])


@pytest.mark.parametrize("name, shape", [("sum_axis0", (6400, 1)), ("sum_axis1", (1, 6400))])
def test_long_float32_sums_do_not_drift(name, shape):
    # The mean of config C's 6400 per-step losses: a float32 running sum drifted 1.8e-6
    # relative (the bench's same-update check against torch and JAX caught it).
    x = (4.1754 + 0.1 * np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    exact = x.astype(np.float64).sum()
    assert abs(float(getattr(kernels, name)(x)[0]) - exact) <= 1e-7 * exact


@given(data=st.data(), dtype=FLOATS, n=st.integers(1, 40))
def test_sum_squares(data, dtype, n):
    x = rand(data, (n,), dtype)
    got = kernels.sum_squares(x)
    assert isinstance(got, float)  # float64, whatever x's dtype: a gradient norm's sum
    np.testing.assert_allclose(got, (f64(x) ** 2).sum(), rtol=1e-12)


def test_sum_squares_keeps_nan_and_inf_and_does_not_overflow_in_float32():
    big = np.full(4, 3e20, np.float32)  # its squares overflow float32, not float64
    assert kernels.sum_squares(big) == pytest.approx(4 * 9e40)
    assert np.isnan(kernels.sum_squares(np.array([1, np.nan], np.float32)))
    assert kernels.sum_squares(np.array([1, np.inf], np.float32)) == np.inf


def adam_ref(p, g, m, v, b1, c1, b2, c2, step_size, bias2, eps):
    m = b1 * f64(m) + c1 * f64(g)
    v = b2 * f64(v) + c2 * f64(g) ** 2
    return f64(p) - step_size * m / (np.sqrt(v) / bias2 + eps), m, v


@given(data=st.data(), dtype=FLOATS, n=st.integers(1, 40), t=st.integers(1, 50))
def test_adam_update(data, dtype, n, t):
    p, g, m = (rand(data, (n,), dtype) for _ in range(3))
    v = rand(data, (n,), dtype, 0.0, 2.0)
    b1, b2, lr, eps = 0.9, 0.999, 1e-2, 1e-8
    scalars = (b1, 1 - b1, b2, 1 - b2, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t), eps)
    want = adam_ref(p, g, m, v, *scalars)
    kernels.adam_update(p, g, m, v, *(dtype(c) for c in scalars))  # in place
    for got, ref in zip((p, m, v), want):
        close(got, ref, dtype)


def test_max_propagates_nan():
    x = mg.tensor(np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32))
    out = x.max(axis=1).data
    assert np.isnan(out[0]) and out[1] == 3.0


# ----------------------------------------------------------------------------- softmax family

@pytest.mark.parametrize("name, ref", [("softmax_rows", softmax_rows_ref),
                                       ("log_softmax_rows", log_softmax_rows_ref)])
@given(data=st.data(), dtype=FLOATS, shape=matrix_shapes)
def test_softmax_rows(name, ref, data, dtype, shape):
    x = rand(data, shape, dtype, -5, 5)
    close(getattr(kernels, name)(x), ref(x), dtype, terms=10)  # log-sum-exp: magnitude ~10


@pytest.mark.parametrize("name, forward, ref", [
    ("softmax_backward_rows", softmax_rows_ref, softmax_backward_rows_ref),
    ("log_softmax_backward_rows", log_softmax_rows_ref, log_softmax_backward_rows_ref),
])
@given(data=st.data(), dtype=FLOATS, shape=matrix_shapes)
def test_softmax_backward_rows(name, forward, ref, data, dtype, shape):
    y = forward(rand(data, shape, dtype, -5, 5)).astype(dtype)
    g = rand(data, shape, dtype)
    close(getattr(kernels, name)(g, y), ref(g, y), dtype, terms=2 * shape[1])


@given(data=st.data(), dtype=FLOATS, shape=matrix_shapes)
def test_cross_entropy_rows(data, dtype, shape):
    n, v = shape
    x = rand(data, shape, dtype, -5, 5)
    t = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, v - 1)), label="targets")
    w = data.draw(hnp.arrays(dtype, n, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
    loss, lse = kernels.cross_entropy_rows(x, t, w)
    ref_loss, ref_lse = cross_entropy_rows_ref(x, t, w)
    close(lse, ref_lse, dtype, terms=10)
    close(loss, ref_loss, dtype, terms=20)
    assert np.all(loss[w == 0] == 0)  # masked rows: exactly nothing

    g = rand(data, n, dtype)
    gx = kernels.cross_entropy_backward_rows(g, x, t, w, lse)
    close(gx, cross_entropy_backward_rows_ref(g, x, t, w, lse), dtype, terms=4)
    assert np.all(gx[w == 0] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_rows_extreme_logits(dtype):
    x = np.array([[-1000, 0, 1000], [1000, 1000, -1000]], dtype=dtype)
    t = np.array([0, 2])
    w = np.ones(2, dtype=dtype)
    loss, lse = kernels.cross_entropy_rows(x, t, w)
    np.testing.assert_allclose(loss, [2000, 2000 + np.log(2)], rtol=1e-6)
    gx = kernels.cross_entropy_backward_rows(np.ones(2, dtype=dtype), x, t, w, lse)
    # NOTE: softmax = exp(x - lse) with lse ~ 1000 rounded to the dtype: float32 keeps ~3e-5.
    tol = 4 * float(np.spacing(dtype(1000)))
    np.testing.assert_allclose(gx, [[-1, 0, 1], [0.5, 0.5, -1]], atol=tol)


# ----------------------------------------------------------------------------- gather / scatter

@st.composite
def rows_and_indices(draw):
    n, d = draw(sides), draw(sides)
    idx = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
    return (n, d), np.array([*idx, idx[-1]], dtype=np.int64)  # always one repeated index


def test_an_unbuilt_elementwise_kernel_runs_as_numpy_on_examples():
    """While the compiler runs a cell on examples, a kernel whose ufunc is not built yet
    runs its Python form on the arrays (NumPy) instead of building it; otherwise it builds."""
    from minigrad.kernels.jit import elementwise, on_examples
    square = elementwise("f8(f8)")(lambda x: x * x + 1.0)
    x = np.arange(3.0)
    with on_examples():
        np.testing.assert_array_equal(square(x), x * x + 1.0)
    assert square._ufunc is None
    np.testing.assert_array_equal(square(x), x * x + 1.0)
    assert square._ufunc is not None


@given(data=st.data(), dtype=FLOATS, drawn=rows_and_indices())
def test_gather_rows(data, dtype, drawn):
    shape, idx = drawn
    w = rand(data, shape, dtype)
    idx = np.where(idx % 2 == 1, idx - shape[0], idx)  # negative ones count from the end
    out, bad = kernels.gather_rows(w, idx)
    assert out.dtype == dtype and bad == -1
    np.testing.assert_array_equal(out, gather_rows_ref(w, idx))
    for wrong in (shape[0], -shape[0] - 1):  # the first index out of range, by position
        assert kernels.gather_rows(w, np.array([*idx, wrong, 0]))[1] == idx.size


@given(data=st.data(), dtype=FLOATS, drawn=rows_and_indices())
def test_scatter_add_rows_accumulates_repeated_indices(data, dtype, drawn):
    (n, d), idx = drawn
    out = rand(data, (n, d), dtype)
    g = rand(data, (idx.size, d), dtype)
    idx = np.where(idx % 2 == 1, idx - n, idx)  # negative ones count from the end
    ref = scatter_add_rows_ref(out, idx, g)
    res = kernels.scatter_add_rows(out, idx, g)
    assert res is out  # in place
    close(out, ref, dtype, terms=idx.size + 1)


# ----------------------------------------------------------------------------- matmul
# GEMMs go through NumPy's BLAS (benchmarks/bench_engine.py measured it faster here than
# Numba's np.dot, which calls SciPy's BLAS); what is ours is the routing and OuterSum.

@pytest.mark.parametrize("a_t, b_t", [(False, False), (True, False), (False, True), (True, True)])
@given(data=st.data(), dtype=FLOATS, mkn=st.tuples(sides, sides, sides))
def test_matmul_with_transposed_views(a_t, b_t, data, dtype, mkn):
    m, k, n = mkn
    # a.T of a C-contiguous (K, M) array is an F-contiguous (M, K) view: BLAS takes it as is.
    a = rand(data, (k, m), dtype).T if a_t else rand(data, (m, k), dtype)
    b = rand(data, (n, k), dtype).T if b_t else rand(data, (k, n), dtype)
    assert a.flags.f_contiguous == a_t or m == 1 or k == 1
    close(ops._mm2(a, b), matmul_ref(a, b), dtype, terms=4 * k)


@given(data=st.data(), dtype=FLOATS, bmkn=st.tuples(sides, sides, sides, sides))
def test_batched_matmul(data, dtype, bmkn):
    bsz, m, k, n = bmkn
    a, b = rand(data, (bsz, m, k), dtype), rand(data, (bsz, k, n), dtype)
    close(ops._matmul(a, b), matmul_ref(a, b), dtype, terms=4 * k)


@given(data=st.data(), dtype=FLOATS, parts=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       kn=st.tuples(sides, sides))
def test_outer_sum_is_the_sum_of_its_products(data, dtype, parts, kn):
    """OuterSum([a_1..a_T], [g_1..g_T]) = Σ_t a_tᵀ g_t, formed as one stacked GEMM."""
    k, n = kn
    pairs = [(rand(data, (r, k), dtype), rand(data, (r, n), dtype)) for r in parts]
    total = autograd.OuterSum(*pairs[0])
    for a, g in pairs[1:]:
        total.add(autograd.OuterSum(a, g))
    assert total.shape == (k, n) and total.dtype == dtype
    ref = sum(matmul_ref(a.T, g) for a, g in pairs)
    close(total.materialize(), ref, dtype, terms=4 * sum(parts))


# ----------------------------------------------------------------------------- unbroadcast

@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64, np.int64]),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4),
       kind=st.sampled_from(["c", "strided", "transposed"]))
def test_unbroadcast(data, dtype, shapes, kind):
    target = shapes.input_shapes[0]
    g = (rand(data, shapes.result_shape, np.float64) * 4).astype(dtype)
    out = unbroadcast(lay_out(g, kind), target)
    assert out.shape == target
    assert out.dtype == dtype
    ref = unbroadcast_ref(g.astype(np.float64), target)
    if dtype == np.int64:
        np.testing.assert_array_equal(out, ref)
    else:
        close(np.asarray(out), ref, dtype, terms=g.size)


@numba.njit
def _exp_row_via_kernel(v):
    out = v.copy()
    kernels.exp_row(out, np.empty(v.size, dtype=np.int32))
    return out


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-7), (np.float64, 1e-15)])
def test_exp_row_matches_numpy(dtype, rtol):
    """The row exp used by the softmax family: float32 polynomial, float64 exact."""
    v = np.concatenate([np.linspace(-87, 0, 20001), [-1e-30, 0.0, -0.5, -80.25]]).astype(dtype)
    ref = np.exp(v.astype(np.float64))
    np.testing.assert_allclose(_exp_row_via_kernel(v), ref, rtol=rtol, atol=0)
    assert _exp_row_via_kernel(np.zeros(3, dtype))[0] == 1.0


# ----------------------------------------------------------------------------- ufuncs

def test_an_elementwise_kernel_is_one_object_with_a_ufunc_accessor():
    """Building the ufunc on first use leaves the module attribute the same object (no module
    globals rewritten); ``.ufunc()`` gives the NumPy ufunc itself."""
    before = ops.SIGMOID.vjps[0]
    g, y = np.array([1.0, 2.0]), np.array([0.25, 0.5])
    np.testing.assert_allclose(before(g, y, y), g * y * (1 - y), rtol=1e-12)
    assert ops.SIGMOID.vjps[0] is before
    assert isinstance(before.ufunc(), np.ufunc) and before.ufunc() is before.ufunc()
    out = np.empty(2)
    assert before(g, y, y, out=out) is out  # ufunc keywords pass through


# ----------------------------------------------------------------------------- Transformer

ERF = np.vectorize(math.erf)


def gelu_ref(x, tanh_form):
    x = f64(x)
    if tanh_form:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + ERF(x / np.sqrt(2)))


def gelu_backward_ref(g, x, tanh_form):
    x = f64(x)
    if tanh_form:
        c = np.sqrt(2 / np.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        return f64(g) * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x))
    return f64(g) * (0.5 * (1 + ERF(x / np.sqrt(2))) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi))


def layer_norm_ref(x, w, b, eps):
    x = f64(x)
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    return (x - mean) * rstd * f64(w) + f64(b), mean[:, 0], rstd[:, 0]


def layer_norm_backward_ref(g, x, w, eps):
    x, g = f64(x), f64(g)
    _, mean, rstd = layer_norm_ref(x, np.ones(x.shape[1]), np.zeros(x.shape[1]), eps)
    xh = (x - mean[:, None]) * rstd[:, None]
    gh = g * f64(w)
    dx = rstd[:, None] * (gh - gh.mean(1, keepdims=True) - xh * (gh * xh).mean(1, keepdims=True))
    return dx, (g * xh).sum(0), g.sum(0)


def attention_softmax_ref(s, mask, drop, scale):
    z = f64(s) * scale + f64(mask)
    e = np.where(np.isneginf(z), 0.0, np.exp(z - z.max(-1, keepdims=True)))
    p = e / e.sum(-1, keepdims=True)
    return p * f64(drop), p


def attention_softmax_backward_ref(da, p, drop, scale):
    dp = f64(da) * f64(drop)
    return p * (dp - (dp * p).sum(-1, keepdims=True)) * scale


@pytest.mark.parametrize("tanh_form", [False, True])
@given(data=st.data(), dtype=FLOATS, n=st.integers(1, 600))
def test_gelu_kernels(tanh_form, data, dtype, n):
    """Forward and VJP on 1-D arrays (the exact VJP's exp works on chunks of any length)."""
    x, g = rand(data, n, dtype, -6, 6), rand(data, n, dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(kernels.gelu(x, tanh_form), gelu_ref(x, tanh_form), **tol)
    if tanh_form and dtype == np.float32:
        # NOTE: 1 - t² inherits the float32 tanh's 2.8e-7 twice, times the chain factor
        # ½x·√(2/π)(1 + 0.134x²) (≤ 15 on [-6, 6])
        tol["atol"] = 1e-5
    np.testing.assert_allclose(kernels.gelu_backward(g, x, tanh_form),
                               gelu_backward_ref(g, x, tanh_form), **tol)


@numba.njit
def erf_array(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = kernels.erf(x[i])
    return out


def test_float32_erf_error_bound_on_a_dense_grid():
    """The rational float32 erf (README: within 4.2e-7 of the exact value, and never
    outside [-1, 1]); the float64 one is libm's."""
    x = np.linspace(-8, 8, 400_001)
    e32 = erf_array(x.astype(np.float32))
    assert e32.dtype == np.float32
    assert np.abs(e32 - ERF(x.astype(np.float32).astype(np.float64))).max() <= 4.2e-7
    assert np.abs(e32).max() <= 1
    np.testing.assert_allclose(erf_array(x), ERF(x), rtol=0, atol=1e-16)


@given(data=st.data(), dtype=FLOATS, shape=matrix_shapes, eps=st.sampled_from([1e-5, 0.1]))
def test_layer_norm_kernels(data, dtype, shape, eps):
    x, g = rand(data, shape, dtype, -3, 3), rand(data, shape, dtype)
    w, b = rand(data, shape[1], dtype), rand(data, shape[1], dtype)
    y, mean, rstd = kernels.layer_norm_rows(x, w, b, dtype(eps))
    for got, ref in zip((y, mean, rstd), layer_norm_ref(x, w, b, eps)):
        close(got, ref, dtype, terms=shape[1] * 30)  # rstd up to 1/sqrt(eps) amplifies
    for got, ref in zip(kernels.layer_norm_backward_rows(g, x, w, mean, rstd),
                        layer_norm_backward_ref(g, x, w, eps)):
        close(got, ref, dtype, terms=shape[0] * shape[1] * 30)


@st.composite
def attention_inputs(draw, dtype):
    """Scores (B, H, L, S), an additive mask broadcasting over some axes (every row keeps a
    key), dropout multipliers, and a gradient."""
    b, h, L, S = (draw(st.integers(1, 4)) for _ in range(4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mshape = tuple(n if draw(st.booleans()) else 1 for n in (b, h, L)) + (S,)
    mask = np.where(rng.random(mshape) < 0.3, -np.inf, rng.uniform(-2, 0, mshape))
    mask[..., rng.integers(0, S)] = 0.5
    drop = np.where(rng.random((b, h, L, S)) < 0.3, 0, 1 / 0.7)
    s, da = rng.uniform(-4, 4, (b, h, L, S)), rng.standard_normal((b, h, L, S))
    return [x.astype(dtype) for x in (s, mask, drop, da)]


@given(data=st.data(), dtype=FLOATS, use_drop=st.booleans())
def test_attention_softmax_kernels(data, dtype, use_drop):
    s, mask, drop, da = data.draw(attention_inputs(dtype))
    scale = dtype(0.7)
    ra, rp = attention_softmax_ref(s, mask, drop if use_drop else np.ones(1), 0.7)
    a, p = kernels.attention_softmax(s.copy(), mask, drop if use_drop else None, scale)
    close(p, rp, dtype, terms=10)
    close(a, ra, dtype, terms=10)
    assert (a is p) != use_drop
    assert (p[np.isneginf(np.broadcast_to(mask, p.shape))] == 0).all()  # masked: exactly 0
    ds = kernels.attention_softmax_backward(da.copy(), p, drop if use_drop else None, scale)
    close(ds, attention_softmax_backward_ref(da, p, drop if use_drop else np.ones(1), 0.7),
          dtype, terms=s.shape[-1] * 10)


# ------------------------------------------------------------------------------ the BLAS

def _blas_name(env):
    out = subprocess.run([sys.executable, "-c", "from minigrad.kernels import blas; "
                          "print(blas.NAME, blas.AVAILABLE)"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    return out.stdout.split(), out.stderr


def test_the_blas_is_mkl_when_installed_on_intel_else_openblas_and_an_env_var_chooses():
    from minigrad.kernels import blas
    with open("/proc/cpuinfo") as f:
        intel = "GenuineIntel" in f.read(4096)
    chosen = os.environ.get("MINIGRAD_BLAS", "").lower()
    assert (chosen or ("mkl" if intel and blas._libraries("mkl") else "openblas")) == blas.NAME
    assert blas.AVAILABLE
    assert _blas_name({"MINIGRAD_BLAS": "openblas"})[0] == ["openblas", "True"]
    if blas._libraries("mkl"):
        assert _blas_name({"MINIGRAD_BLAS": "MKL"})[0] == ["mkl", "True"]
    out, err = _blas_name({"MINIGRAD_BLAS": "cublas"})
    assert out == [] and "MINIGRAD_BLAS='cublas': expected 'mkl' or 'openblas'" in err


@pytest.mark.parametrize("shape", [(1, 100, 400), (7, 13, 5), (32, 128, 512), (3, 157, 64)])
@pytest.mark.parametrize("layout", ["rows", "transposed", "column-slice"])
def test_gemm_against_numpy_with_the_same_bits_at_any_alignment(shape, layout):
    """py_gemm (the very call the Numba loops make) equals a float64 reference, with beta 0
    and 1; and it gives the same bits whatever the arrays' alignment: what makes runs
    deterministic, with either BLAS (MKL does not promise it outside its CNR mode)."""
    from minigrad.kernels import blas
    M, K, N = shape
    rng = np.random.default_rng(M * K * N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N) if layout != "transposed" else (N, K)).astype(np.float32)
    b = b.T if layout == "transposed" else b
    if layout == "column-slice":  # rows with a stride: a's columns 2..K+2 of a wider array
        wide = rng.standard_normal((M, K + 5)).astype(np.float32)
        wide[:, 2:K + 2] = a
        a = wide[:, 2:K + 2]
    ref = a.astype(np.float64) @ b.astype(np.float64)
    c = rng.standard_normal((M, N)).astype(np.float32)
    c1 = c.astype(np.float64) + ref
    blas.py_gemm(a, b, c, 1.0)
    np.testing.assert_allclose(c, c1, rtol=1e-4, atol=1e-4 * math.sqrt(K))
    results = set()
    for offset in (0, 1, 3, 8, 15):  # float32 elements: 4 to 60 bytes off a 64-byte line
        def at(x, offset=offset):
            buf = np.empty(x.size + 32, np.float32)
            base = (-buf.ctypes.data // 4) % 16 + offset
            y = buf[base:base + x.size].reshape(x.shape)
            y[...] = x
            return y
        a2 = at(np.ascontiguousarray(a))
        b2 = at(np.ascontiguousarray(b.T)).T if layout == "transposed" else at(b)
        c2 = at(np.zeros((M, N), np.float32))
        blas.py_gemm(a2, b2, c2, 0.0)
        np.testing.assert_allclose(c2, ref, rtol=1e-4, atol=1e-4 * math.sqrt(K))
        results.add(c2.tobytes())
    assert len(results) == 1, f"{blas.NAME}: the same product differs with alignment"


@numba.njit
def _packed_gemm(a, b, c, beta):
    p = blas.pack32(b, a.shape[0])
    blas.gemm32p(a, b, p, c, beta)
    return p.size


@pytest.mark.parametrize("shape,layout,packed", [
    ((32, 256, 1024), "rows", True), ((32, 1024, 256), "transposed", True),
    ((25, 512, 128), "column-slice", True), ((64, 900, 300), "rows", True),
    ((2, 1100, 500), "transposed", True), ((16, 64, 256), "rows", False),
    ((1, 1100, 1000), "rows", False)])
def test_a_packed_weight_gives_cblas_bits(shape, layout, packed):
    """A loop's weight packed once (pack32, gemm32p) gives the very bits of cblas_sgemm,
    with beta 0 and 1, k in OpenBLAS's blocks (900: 448 + 240 + 212); it is packed (the
    fast path taken, not a silent fallback) above 100^3 multiply-adds on more than one row
    with one BLAS thread, and not with two (cblas_sgemm then splits it over its threads)."""
    import threadpoolctl
    if blas.CORE != b"SkylakeX":
        pytest.skip(f"OpenBLAS runs its {blas.CORE} kernels here: pack32 is SkylakeX's")
    assert blas.PACKED
    M, K, N = shape
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((M, K + 3)).astype(np.float32)
    a = a[:, 3:] if layout == "column-slice" else np.ascontiguousarray(a[:, :K])
    b = rng.standard_normal((K, N) if layout != "transposed" else (N, K)).astype(np.float32)
    b = b.T if layout == "transposed" else b
    for beta in (0.0, 1.0):
        c = rng.standard_normal((M, N)).astype(np.float32)
        ref = c.copy()
        blas.py_gemm(a, b, ref, beta)
        with threadpoolctl.threadpool_limits(1, "blas"):
            assert (_packed_gemm(a, b, c, beta) > 0) == packed
        assert c.tobytes() == ref.tobytes()
    if packed and (os.cpu_count() or 1) > 1:
        with threadpoolctl.threadpool_limits(2, "blas"):
            assert _packed_gemm(a, b, c, 1.0) == 0


@pytest.mark.parametrize("layouts", [("C", "C"), ("F", "C"), ("C", "F"), ("F", "F")])
@pytest.mark.parametrize("shape", [(640, 128, 512), (3, 5, 7), (1, 2048, 600)])
def test_dot_equals_numpy_and_big_float32_products_take_the_loops_blas(shape, layouts,
                                                                        monkeypatch):
    """blas.dot (threads.dot and dot_t call it: the head, its gradients, every weight
    gradient) equals numpy.dot, with and without ``out``; a float32 product of at least BIG
    multiply-adds goes to MKL when MKL is the loops' BLAS — counted, so a silent fallback
    to NumPy fails — and anything smaller or other goes to NumPy."""
    from minigrad.kernels import blas
    calls = []
    if blas._SGEMM is not None:
        real = blas._SGEMM
        monkeypatch.setattr(blas, "_SGEMM", lambda *args: calls.append(args) or real(*args))
    M, K, N = shape
    rng = np.random.default_rng(M + K + N)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in ((M, K), (K, N)))
    a, b = (np.asfortranarray(x) if lay == "F" else x for x, lay in zip((a, b), layouts))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(blas.dot(a, b), ref, rtol=1e-4, atol=1e-4 * math.sqrt(K))
    out = np.full((M, N), np.nan, np.float32)
    assert blas.dot(a, b, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * math.sqrt(K))
    a64 = a.astype(np.float64)  # (not float32: NumPy, whatever the size)
    np.testing.assert_array_equal(blas.dot(a64, b), np.dot(a64, b))
    big = M * K * N >= blas.BIG
    assert len(calls) == (2 if big and blas.NAME == "mkl" else 0)
