"""Tape semantics: what gets recorded, how backward walks and accumulates, dtype rules, errors.

Expected gradients are derived by hand (e.g. d/da (a + a)^2 = 8a), never read back from the
code under test.  Op-by-op gradient correctness lives in test_ops.py.
"""

import gc
import weakref

import numpy as np
import pytest

import minigrad as mg
from minigrad.core import ops
from minigrad.core.tensor import apply


def f64(*values):
    return mg.tensor(np.array(values, dtype=np.float64), requires_grad=True)


@pytest.fixture
def counting_identity():
    """An identity primitive whose VJP counts its calls (removed from the table afterwards)."""
    calls = []

    def vjp(g, out, a):
        calls.append(1)
        return g

    prim = ops.defprim("test_counting_identity", lambda a: a.copy(), vjp)
    try:
        yield prim, calls
    finally:
        del ops.PRIMITIVES["test_counting_identity"]


# ----------------------------------------------------------------------------- graph shapes

def test_reused_node_accumulates():
    a = f64(1.0, -2.0, 3.0)
    b = a + a
    c = b * b
    c.sum().backward()
    np.testing.assert_allclose(a.grad, 8 * a.data)


@pytest.mark.parametrize("shape", [(), (1,), (2, 3)])
def test_a_leaf_used_four_times_gets_four_gradients(shape):
    """The third use adds in place into the second's sum; for a 0-d tensor that sum was a
    NumPy scalar, which `+=` cannot update, so the third and later gradients were lost."""
    x = mg.tensor(np.full(shape, 2.0), requires_grad=True)
    y = x * 1.0 + x * 2.0 + x * 3.0 + x
    y.backward(np.ones(shape))
    np.testing.assert_array_equal(x.grad, np.full(shape, 7.0))
    assert isinstance(x.grad, np.ndarray) and x.grad.shape == shape


def test_diamond_graph():
    x = f64(0.3, -0.7)
    h = x.tanh()  # shared by both branches
    loss = (h * 2.0 + h.exp()).sum()
    loss.backward()
    t = np.tanh(x.data)
    np.testing.assert_allclose(x.grad, (2 + np.exp(t)) * (1 - t * t), rtol=1e-12)


def test_shared_node_vjp_runs_once(counting_identity):
    prim, calls = counting_identity
    x = f64(0.5, 1.5)
    h = apply(prim, x)
    (h * 2.0 + h * 3.0 + h.exp()).sum().backward()
    assert len(calls) == 1  # the walk sums all incoming gradients, then calls the VJP once
    np.testing.assert_allclose(x.grad, 5 + np.exp(x.data), rtol=1e-12)


def test_long_chain_has_no_recursion_limit():
    a = mg.tensor(np.array([1.0]), requires_grad=True)
    h = a
    for _ in range(100_000):
        h = h * 1.00001
    h.sum().backward()
    np.testing.assert_allclose(a.grad, [1.00001 ** 100_000], rtol=1e-9)


def test_split_with_one_output_used():
    x = f64(1.0, 2.0, 3.0, 4.0, 5.0)
    first, rest = mg.split(x, [2, 3])
    (rest * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 0, 2, 2, 2])


def test_split_outputs_used_differently():
    x = f64(1.0, 2.0, 3.0, 4.0)
    a, b = x.chunk(2)
    (a * 3.0 + b * b).sum().backward()
    np.testing.assert_allclose(x.grad, [3, 3, 6, 8])


def test_backward_with_explicit_gradient():
    x = mg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    g = np.array([[1.0, -1.0, 2.0], [0.5, 0.0, 3.0]])
    (x * x).backward(g)
    np.testing.assert_allclose(x.grad, 2 * x.data * g)


def test_backward_accepts_a_tensor_gradient():
    x = f64(1.0, 2.0)
    (x * 3.0).backward(mg.tensor(np.array([1.0, -2.0])))
    np.testing.assert_array_equal(x.grad, [3.0, -6.0])


def test_backward_on_a_leaf():
    x = f64(2.0)
    x.backward(np.array([3.0]))
    np.testing.assert_array_equal(x.grad, [3.0])


# ----------------------------------------------------------------------------- recording

def test_nothing_recorded_without_requires_grad():
    x = mg.tensor([1.0, 2.0])
    y = (x * 2.0).exp()
    assert not y.requires_grad and y._node is None


def test_no_grad_context_records_nothing():
    x = f64(1.0, 2.0)
    with mg.no_grad():
        assert not mg.is_grad_enabled()
        y = x * 2.0 + x
    assert mg.is_grad_enabled()
    assert not y.requires_grad and y._node is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_decorator_records_nothing():
    @mg.no_grad()
    def step(t):
        assert not mg.is_grad_enabled()
        return t * 3.0

    y = step(f64(1.0))
    assert not y.requires_grad and y._node is None
    assert mg.is_grad_enabled()


def test_no_grad_decorator_is_reentrant():
    @mg.no_grad()
    def depth(n):
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(3) == 3
    assert mg.is_grad_enabled()  # the outermost exit restores what the outermost enter saw


def test_no_grad_restores_mode_after_an_exception():
    with pytest.raises(KeyError), mg.no_grad():
        raise KeyError("boom")
    assert mg.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = f64(1.0, 2.0)
    with mg.no_grad():
        with mg.enable_grad():
            y = x * x
        z = x * x
    assert y.requires_grad and y._node is not None
    assert not z.requires_grad
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_detach_stops_gradients():
    x = f64(1.0, 2.0, 3.0)
    d = x.detach()
    assert not d.requires_grad and d._node is None
    assert np.shares_memory(d.data, x.data)
    (x * d).sum().backward()  # d is a constant: d/dx (x * c) = c = x, not 2x
    np.testing.assert_allclose(x.grad, x.data)


def test_retain_grad_on_intermediates():
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = mg.tensor(rng.standard_normal((4, 2)), requires_grad=True)
    c = rng.standard_normal((3, 2))
    h = (x @ w).retain_grad()
    a = h.tanh()
    (a * mg.tensor(c)).sum().backward()
    hv = x.data @ w.data
    np.testing.assert_allclose(h.grad, c * (1 - np.tanh(hv) ** 2), rtol=1e-12)
    assert a.grad is None  # not retained
    np.testing.assert_allclose(x.grad, h.grad @ w.data.T, rtol=1e-12)


def test_saved_arrays_are_freed_after_backward():
    x = f64(0.1, 0.2, 0.3)
    h = x.exp()
    ref = weakref.ref(h.data)
    loss = (h * h).sum()
    del h
    gc.collect()
    assert ref() is not None  # held by the tape until backward
    loss.backward()
    gc.collect()
    assert ref() is None


# ----------------------------------------------------------------------------- accumulation

def test_grads_accumulate_across_backward_calls_until_zeroed():
    x = f64(1.0, -2.0)
    (x * x).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_second_backward_raises():
    x = f64(1.0, 2.0)
    loss = (x.exp() * 2.0).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_second_backward():
    x = f64(1.0, 2.0)
    h = x.exp().retain_grad()
    loss = (h * 2.0).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 4 * np.exp(x.data), rtol=1e-12)
    np.testing.assert_allclose(h.grad, [4.0, 4.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


# ----------------------------------------------------------------------------- dtypes

def test_python_floats_default_to_float32():
    assert mg.tensor([1.0]).dtype == np.float32
    assert mg.tensor(2.5).dtype == np.float32


def test_numpy_float64_is_kept():
    assert mg.tensor(np.array([1.0])).dtype == np.float64
    assert mg.tensor(np.float64(1.0)).dtype == np.float64


def test_integers_stay_integers():
    assert mg.tensor([1, 2]).dtype == np.int64
    assert (mg.tensor([1, 2]) * 2 + 1).dtype == np.int64
    assert mg.tensor(np.array([1, 2], dtype=np.int32)).dtype == np.int32


def test_requires_grad_on_integers_is_refused():
    with pytest.raises(TypeError, match="requires_grad=True needs a float32 or float64"):
        mg.tensor([1, 2], requires_grad=True)


@pytest.mark.parametrize("scalar", [2, 2.0, np.float32(2), np.float64(2), np.int64(2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_scalar_promotion_follows_numpy(dtype, scalar):
    x = np.array([1, 2], dtype=dtype)
    t = mg.tensor(x)
    assert (t * scalar).dtype == (x * scalar).dtype
    assert (scalar - t).dtype == (scalar - x).dtype


def test_float32_times_python_float_stays_float32():
    x = mg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_mixed_float32_float64():
    a = mg.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    b = mg.tensor(np.array([3.0, 4.0]), requires_grad=True)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [3.0, 4.0])
    np.testing.assert_array_equal(b.grad, [1.0, 2.0])


def test_astype_gradient_comes_back_in_the_leaf_dtype():
    x = mg.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = x.astype(np.float64) * mg.tensor(np.array([3.0, 1e-10]))
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, np.array([3.0, 1e-10], dtype=np.float32))


def test_manual_seed_reproduces_randn():
    mg.manual_seed(123)
    a = mg.randn(3, 4)
    b = mg.randn(3, 4)
    mg.manual_seed(123)
    np.testing.assert_array_equal(mg.randn(3, 4).data, a.data)
    np.testing.assert_array_equal(mg.randn(3, 4).data, b.data)
    assert not np.array_equal(a.data, b.data)
    assert a.dtype == np.float32


# ----------------------------------------------------------------------------- errors

def test_backward_on_non_scalar_needs_a_gradient():
    y = f64(1.0, 2.0) * 2.0
    with pytest.raises(RuntimeError, match=r"only for a scalar output.*shape \(2,\)"):
        y.backward()


def test_backward_gradient_of_wrong_shape():
    y = mg.tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"gradient has shape \(3,\) but the tensor has shape "
                                         r"\(2, 3\)"):
        y.backward(np.ones(3))


@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((2, 3, 4), (2, 5, 6)), ((3,), (3, 2)),
                                    ((2, 2, 3), (4, 3, 1))])
def test_matmul_shape_mismatch_names_both_shapes(sa, sb):
    a, b = mg.tensor(np.ones(sa)), mg.tensor(np.ones(sb))
    with pytest.raises(ValueError, match=rf"matmul: shapes {re_shape(sa)} and {re_shape(sb)}"):
        a @ b


def test_batched_matmul_names_the_batch_dimension():
    # K agrees (3 and 3); the batch sizes 2 and 4 do not: the message used to blame K.
    a, b = mg.tensor(np.ones((2, 5, 3))), mg.tensor(np.ones((4, 3, 6)))
    with pytest.raises(ValueError, match=r"matmul: shapes .* have different batch sizes "
                                         r"B=2 and 4 \(dimension 0\)"):
        a @ b


def re_shape(s):
    return str(s).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("name, fn", [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
])
def test_non_broadcastable_shapes(name, fn):
    a = mg.tensor(np.ones((2, 3)), requires_grad=True)
    b = mg.tensor(np.ones(4))
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4,\) are not "
                                         "broadcastable"):
        fn(a, b)


def test_where_non_broadcastable_shapes():
    with pytest.raises(ValueError, match=r"where: shapes \(2,\), \(3,\) and \(3,\)"):
        mg.where(np.array([True, False]), mg.ones(3), mg.zeros(3))


@pytest.mark.parametrize("key, match", [
    (5, r"getitem: index 5 is out of bounds .*\(tensor shape \(3, 4\)\)"),
    ((0, 4), r"getitem: index 4 is out of bounds for axis 1"),
    ([0, 7], r"getitem: index 7 is out of range for axis 0 of a tensor of shape \(3, 4\)"),
    ([-4], r"getitem: index -4 is out of range"),
    ((slice(None), [1, 9]), r"getitem: index 9 is out of bounds"),
])
def test_index_out_of_range(key, match):
    x = mg.tensor(np.ones((3, 4)), requires_grad=True)
    with pytest.raises(IndexError, match=match):
        x[key]


def test_transpose_axis_out_of_range():
    x = mg.tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="transpose: axis 3 is out of range"):
        x.transpose(0, 3)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_repeated_reduction_axis(reduce):
    x = mg.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=rf"{reduce}: repeated axis in \(0, 0\)"):
        getattr(x, reduce)((0, 0))



def test_iterating_a_tensor():
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        list(mg.tensor(3.0))
    rows = list(mg.tensor(np.arange(6.0).reshape(3, 2)))
    assert len(rows) == 3 and rows[2].shape == (2,)


@pytest.mark.parametrize("elementwise_first", [False, True])
@pytest.mark.parametrize("through_node", [False, True])
def test_weight_used_at_every_step_gets_the_summed_gradient(through_node, elementwise_first):
    """A weight used by T addmms and a matmul (and once elementwise) gets Σ_t h<t-1>ᵀ δ<t>
    plus the other terms, whether its deferred OuterSums land on a leaf (merged after the
    walk) or on an intermediate node (merged there, several in a row), and whether the
    elementwise term arrives before them or after: against BPTT written out in NumPy."""
    rng = np.random.default_rng(0)
    W0 = 0.5 * rng.standard_normal((3, 3))
    xs = [rng.standard_normal((2, 3)) for _ in range(5)]
    h0, u = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    k = 2.0 if through_node else 1.0

    W = mg.tensor(W0, requires_grad=True)
    Wn = W * k if through_node else W
    # the oldest consumer of Wn is walked last: its plain array then meets merged OuterSums
    sq = (Wn * Wn).sum() if elementwise_first else None
    h = mg.tensor(h0)
    for x in xs:
        h = mg.addmm(mg.tensor(x), h, Wn).tanh()
    loss = ((h @ Wn) * mg.tensor(u)).sum() + (sq if elementwise_first else (Wn * Wn).sum())
    loss.backward()

    Wk = k * W0  # the hand-written reference
    hs = [h0]
    for x in xs:
        hs.append(np.tanh(x + hs[-1] @ Wk))
    dWk = hs[-1].T @ u + 2 * Wk
    dh = u @ Wk.T
    for t in range(len(xs), 0, -1):
        dz = dh * (1 - hs[t] ** 2)
        dWk += hs[t - 1].T @ dz
        dh = dz @ Wk.T
    np.testing.assert_allclose(W.grad, k * dWk, rtol=1e-12, atol=1e-12)


def test_deferred_weight_gradient_matches_direct_sum():
    rng = np.random.default_rng(1)
    W = mg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    xs = [rng.standard_normal((2, 3)) for _ in range(4)]
    gs = [rng.standard_normal((2, 4)) for _ in range(4)]
    total = sum(((mg.tensor(x) @ W) * g).sum() for x, g in zip(xs, gs))
    total.backward()
    np.testing.assert_allclose(W.grad, sum(x.T @ g for x, g in zip(xs, gs)), rtol=1e-12)


def test_float32_weight_with_float64_activations_keeps_its_dtype():
    W = mg.tensor(np.ones((3, 2), dtype=np.float32), requires_grad=True)
    x = mg.tensor(np.ones((4, 3)))  # float64
    (x @ W.double()).sum().backward()
    assert W.grad.dtype == np.float32
    np.testing.assert_allclose(W.grad, 4.0)


# ----------------------------------------------------------------------------- the table's rows

def test_split_and_unstack_are_fixed_rows_whatever_the_count():
    """One 'split' and one 'unstack' row serve every output count: none is minted at run time."""
    rows = set(ops.PRIMITIVES)
    x = f64(*range(12))
    for n in (2, 3, 4, 6):
        parts = mg.chunk(x, n)
        assert len(parts) == n and {p._node.prim.name for p in parts} == {"split"}
    pieces = mg.unstack(x.reshape(3, 4), axis=1)
    assert len(pieces) == 4 and pieces[0]._node.prim.name == "unstack"
    assert set(ops.PRIMITIVES) == rows
    (pieces[3] * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.reshape(3, 4), [[0, 0, 0, 2]] * 3)


def test_a_vjp_all_row_runs_once_per_node():
    """A row whose inputs share work gives one ``vjp_all``; the walk calls it once per node
    and hands each input its entry."""
    calls = []

    def vjp_all(g, out, a, b, c):
        calls.append(1)
        return g * 1.0, g * 2.0, g * 3.0

    ops.defprim("test_weighted_sum", lambda a, b, c: a + 2 * b + 3 * c, vjp_all=vjp_all)
    try:
        a, b, c = f64(1.0, 2.0), f64(3.0, 4.0), f64(5.0, 6.0)
        apply(ops.PRIMITIVES["test_weighted_sum"], a, b, c).sum().backward()
    finally:
        del ops.PRIMITIVES["test_weighted_sum"]
    assert len(calls) == 1
    for t, k in ((a, 1), (b, 2), (c, 3)):
        np.testing.assert_array_equal(t.grad, [k, k])


def test_a_row_gives_per_input_vjps_or_vjp_all_not_both():
    with pytest.raises(TypeError, match="not both"):
        ops.Prim("both", np.negative, lambda g, out, a: -g, vjp_all=lambda g, out, a: (-g,))


def test_an_error_mid_walk_leaves_leaves_and_graph_usable():
    """A VJP that raises leaves no half-summed gradient: leaves keep their .grad, and a graph
    kept with retain_graph can be walked again."""
    fail = [True]

    def vjp(g, out, a):
        if fail[0]:
            raise FloatingPointError("boom")
        return g

    prim = ops.defprim("test_flaky_identity", lambda a: a.copy(), vjp)
    try:
        x = f64(1.0, 2.0)
        e = x.exp()  # older than the flaky node: still waiting on the heap when it raises
        loss = (apply(prim, x * 3.0) + e).sum()
        with pytest.raises(FloatingPointError):
            loss.backward(retain_graph=True)
        assert x.grad is None
        fail[0] = False
        loss.backward()
    finally:
        del ops.PRIMITIVES["test_flaky_identity"]
    np.testing.assert_allclose(x.grad, 3.0 + np.exp(x.data), rtol=1e-12)


def test_as_array_unwraps_tensors_without_copying():
    t = mg.tensor(np.arange(3.0))
    assert mg.as_array(t) is t.data
    np.testing.assert_array_equal(mg.as_array([1, 2]), [1, 2])
    assert mg.as_array([1, 2], dtype=np.float32).dtype == np.float32


def test_import_leaves_the_garbage_collector_alone():
    """``import minigrad`` used to call gc.freeze(): cycles created before the import were
    never collected.  Freezing is opt-in now, through mg.freeze_gc()."""
    import subprocess
    import sys

    code = ("import gc, weakref\n"
            "class Big: pass\n"
            "a, b = Big(), Big(); a.other, b.other = b, a; probe = weakref.ref(a)\n"
            "del a, b\n"
            "import minigrad as mg\n"
            "assert gc.get_freeze_count() == 0, gc.get_freeze_count()\n"
            "gc.collect()\n"
            "assert probe() is None, 'a cycle made before the import was never collected'\n"
            "assert mg.freeze_gc() > 10_000 and gc.get_freeze_count() > 10_000\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
