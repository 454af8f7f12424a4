"""The primitive table: every differentiable operation as a forward and its VJPs, side by side.

A primitive's forward takes NumPy arrays (and Python constants such as an axis) and returns
an array — or a tuple of arrays when ``nout`` is not 1.  Its vector-Jacobian products all share
one signature, ``vjp(g, out, *inputs) -> gradient``: ``g`` is the gradient of the loss
w.r.t. ``out`` (a tuple, with ``None`` for outputs that got no gradient, when the primitive
has several outputs).  A primitive gives one VJP per input (only those whose input requires
grad are called); where the inputs share work it may instead give one ``vjp_all`` returning
a tuple for all inputs, and the walk hands each input its entry.  ``nout=None`` declares a
variable output count: as many outputs as the forward returns (``split``, ``unstack``).

Composite operations (mean, softmax cross-entropy wrappers, chunk, …) live in
``tensor.py``/``functional.py`` and are built from these.  Nothing here knows about
Tensors; the hot loops are Numba kernels from :mod:`minigrad.kernels`.
"""

import math

import numpy as np

from minigrad import kernels, threads
from minigrad.core.autograd import OuterSum, unbroadcast
from minigrad.kernels.jit import Ufunc
from minigrad.random import get_rng

PRIMITIVES = {}


class Prim:
    """A primitive, everything about it in one row.

    ``fwd(*inputs)``; per-input ``vjps`` or one ``vjp_all``; ``nout`` outputs (``None``: as
    many as the forward returns); ``args``, the names of its arguments in order (``"*xs"``:
    any number of tensors), by which the compiler reads static ones (``Eqn.params``);
    ``batch(eqn) -> params | None``, its static parameters when its per-step inputs get a
    leading time axis (None: that would not be the same computation; the compiler then keeps
    the equation inside the time loop).

    An **elementwise** row also has ``scalar``, its forward for one element as source text
    (``scalar(*names) -> str``; the compiler's fused kernels are made of these), and its VJPs
    are *rules*: arithmetic on ``g``, ``out`` and the inputs (and calls of other elementwise
    rows) that returns the cotangent before broadcasting is undone (the walk calls
    :func:`~minigrad.core.autograd.unbroadcast`).  A rule is the one definition of that
    derivative: the walk runs it on arrays (a unary row's arithmetic as a Numba ufunc made
    from it) and the compiler on symbols, which gives the equations of the reverse program.
    Elementwise rows batch over time as they are.
    """

    __slots__ = ("name", "fwd", "vjps", "vjp_all", "nout", "args", "scalar", "rules", "batch")

    def __init__(self, name, fwd, *vjps, vjp_all=None, nout=1, args="", scalar=None,
                 batch=None):
        if vjps and vjp_all is not None:
            raise TypeError(f"defprim {name!r}: give per-input VJPs or vjp_all, not both")
        self.name, self.fwd, self.vjp_all, self.nout = name, fwd, vjp_all, nout
        self.args, self.scalar, self.rules = tuple(args.split()), scalar, vjps
        unary = scalar is not None and len(self.args) == 1
        # NOTE: a unary rule of arithmetic only runs as one ufunc; one that calls rows, as NumPy
        self.vjps = tuple(Ufunc(r, _UNARY) if unary and r and not r.__code__.co_names else r
                          for r in vjps)
        self.batch = same if scalar is not None else batch

    @property
    def elementwise(self):
        return self.scalar is not None

    def has_vjp(self, i):
        """Does input i get a cotangent?  Not where its rule is None (stop_gradient's)."""
        return self.vjp_all is not None or (i < len(self.vjps) and self.vjps[i] is not None)

    def __call__(self, *args):
        """The row applied inside a rule: on arrays its forward, on the compiler's symbols
        an equation (so ``lambda g, out, a: g * EXP(-out)`` is a rule too)."""
        sym = next((a for a in args if hasattr(a, "emit")), None)
        return self.fwd(*args) if sym is None else sym.emit(self, *args)

    def __repr__(self):
        return f"Prim({self.name})"


_UNARY = ("f4(f4, f4, f4)", "f8(f8, f8, f8)")  # a unary rule as a ufunc: (g, out, a)


def defprim(name, fwd, *vjps, vjp_all=None, nout=1, args="", scalar=None, batch=None):
    """Add a row to the table (see :class:`Prim`)."""
    PRIMITIVES[name] = prim = Prim(name, fwd, *vjps, vjp_all=vjp_all, nout=nout, args=args,
                                   scalar=scalar, batch=batch)
    return prim


def same(e):
    """Batching rule: the same static parameters."""
    return e.params


def shift(name):
    """Batching rule: the axis parameter ``name`` moves one place right (negative axes count
    from the end and stay)."""
    def rule(e):
        axis = e.params[name]
        return {**e.params, name: axis + 1 if axis >= 0 else axis}
    return rule


# ----------------------------------------------------------------------- elementwise
# Rules use + - * / ** and comparisons on g, out and the inputs (and may call other
# elementwise rows), so that arrays and the compiler's symbols both evaluate them.

ADD = defprim("add", np.add, lambda g, out, a, b: g, lambda g, out, a, b: g,
              args="a b", scalar=lambda a, b: f"{a} + {b}")
SUB = defprim("sub", np.subtract, lambda g, out, a, b: g, lambda g, out, a, b: -g,
              args="a b", scalar=lambda a, b: f"{a} - {b}")
MUL = defprim("mul", np.multiply, lambda g, out, a, b: g * b, lambda g, out, a, b: g * a,
              args="a b", scalar=lambda a, b: f"{a} * {b}")
DIV = defprim("div", np.true_divide, lambda g, out, a, b: g / b,
              lambda g, out, a, b: -g * out / b, args="a b", scalar=lambda a, b: f"{a} / {b}")
NEG = defprim("neg", np.negative, lambda g, out, a: -g, args="a", scalar=lambda a: f"-{a}")
POW = defprim("pow", np.power, lambda g, out, a, p: g * p * a ** (p - 1), None,
              args="a p", scalar=lambda a, p: f"{a} ** {p}")
ABS = defprim("abs", np.abs, lambda g, out, a: g * (a > 0) - g * (a < 0), args="a",
              scalar=lambda a: f"abs({a})")
EXP = defprim("exp", np.exp, lambda g, out, a: g * out, args="a",
              scalar=lambda a: f"np.exp({a})")
LOG = defprim("log", np.log, lambda g, out, a: g / a, args="a",
              scalar=lambda a: f"np.log({a})")


def _clip_rule(g, out, a, lo, hi):
    if lo is not None:
        g = g * (a >= lo)
    if hi is not None:
        g = g * (a <= hi)
    return g


def _clip_scalar(a, lo, hi):
    x = a if lo == "None" else f"max({a}, {lo})"
    return x if hi == "None" else f"min({x}, {hi})"


def _clip(a, lo, hi):  # NOTE: np.clip's Python wrapper costs ~5 us, as much as a small array
    a = a if lo is None else np.maximum(a, lo)
    return a if hi is None else np.minimum(a, hi)


CLIP = defprim("clip", _clip, _clip_rule, None, None,
               args="a lo hi", scalar=_clip_scalar)
# fast-math float32, exact float64 (kernels.numerics); their rules read the output
TANH = defprim("tanh", lambda a: kernels.tanh_forward(a), lambda g, out, a: g * (1 - out * out),
               args="a", scalar=lambda a: f"tanh({a})")
SIGMOID = defprim("sigmoid", lambda a: kernels.sigmoid_forward(a),
                  lambda g, out, a: g * out * (1 - out), args="a",
                  scalar=lambda a: f"sigmoid({a})")
# The identity with no derivative (JAX's stop_gradient): what ``detach()`` and a ``no_grad``
# block are in a traced program (its rule None: its input gets no cotangent from it).
STOP_GRADIENT = defprim("stop_gradient", lambda a: a, None, args="a", scalar=lambda a: a)
RELU = defprim("relu", lambda a: np.maximum(a, 0), lambda g, out, a: g * (out > 0), args="a",
               scalar=lambda a: f"max({a}, ZERO)")
# c: a mask, bool or 0/1 in the values' dtype (a compiled loop's lengths are one)
WHERE = defprim("where", np.where, None, lambda g, out, c, a, b: g * c,
                lambda g, out, c, a, b: g - g * c, args="c a b",
                scalar=lambda c, a, b: f"({a} if {c} else {b})")


def _compare(name, ufunc, op):
    """A comparison, as 0/1 in its operands' float dtype: the rules above are made of them."""
    def fwd(a, b):
        return ufunc(a, b).astype(np.result_type(a, b, np.float32))
    return defprim(name, fwd, None, None, args="a b", scalar=lambda a, b: f"DT({a} {op} {b})")


GT, GE = _compare("gt", np.greater, ">"), _compare("ge", np.greater_equal, ">=")
LT, LE = _compare("lt", np.less, "<"), _compare("le", np.less_equal, "<=")
ZEROS_LIKE = defprim("zeros_like", np.zeros_like, None, args="a", scalar=lambda a: "ZERO")


def _one_hot(ids, n, dtype):
    out = np.zeros(ids.shape + (n,), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


# (…) integer ids -> (…, n) one-hot rows; no gradient (the ids are not differentiable).
ONE_HOT = defprim("one_hot", _one_hot, None, args="ids n dtype", batch=same)


# Rows without a tensor input: a compiled function (mg.compile) makes them at every call.
FULL = defprim("full", lambda shape, value, dtype: np.zeros(shape, dtype) if value == 0 else
               np.full(shape, value, dtype), args="shape value dtype")  # (zeros: 5x faster)
ARANGE = defprim("arange", lambda start, stop, step, dtype: np.arange(start, stop, step, dtype),
                 args="start stop step dtype")


def _dropout_scale(shape, p, dtype):
    """Inverted dropout's factors: 0 with probability p, else 1/(1 - p) (minigrad's
    generator, so that a compiled call draws what the eager one draws)."""
    return np.multiply(get_rng().random(shape) >= p, np.dtype(dtype).type(1 / (1 - p)), dtype=dtype)


DROPOUT_SCALE = defprim("dropout_scale", _dropout_scale, args="shape p dtype")


# ----------------------------------------------------------------------- matmul

def _mm2(a, b):
    """2-D GEMM through NumPy's BLAS (transposed views are passed to BLAS as they are)."""
    if a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize < 4:
        return np.matmul(a, b)  # integer or mixed dtypes: NumPy's rules, NumPy's loop
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    return threads.dot(a, b)


def _matmul(a, b):
    """(M, K) @ (K, N); (..., M, K) @ (K, N); (B, M, K) @ (B, K, N)."""
    if b.ndim == 2:
        if a.ndim == 2:
            return _mm2(a, b)
        lead = a.shape[:-1]
        return _mm2(a.reshape(-1, a.shape[-1]), b).reshape(*lead, b.shape[1])
    return np.matmul(a, b)  # batched: NumPy loops BLAS GEMMs over the batch


def _matmul_vjp_a(g, out, a, b):
    if b.ndim == 2:
        return _matmul(g, b.T)
    return _matmul(g, b.transpose(0, 2, 1))


def _matmul_vjp_b(g, out, a, b):
    if b.ndim == 2:  # sum over every leading axis of a: one GEMM on the flattened rows
        return OuterSum(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1]))
    return _matmul(a.transpose(0, 2, 1), g)


def _matmul_batch(e):
    """(T, B, K) @ (K, N) is T GEMMs at once; a per-step right operand is not."""
    b = e.args[1]
    return e.params if len(b.shape) == 2 and b.shape[0] is not None else None


MATMUL = defprim("matmul", _matmul, _matmul_vjp_a, _matmul_vjp_b, args="a b",
                 batch=_matmul_batch)

# ----------------------------------------------------------------------- shape

def _inverse_perm(axes):
    return tuple(sorted(range(len(axes)), key=axes.__getitem__))


TRANSPOSE = defprim(
    "transpose", np.transpose,
    lambda g, out, a, axes: np.transpose(g, None if axes is None else _inverse_perm(axes)),
    args="a axes",
)
RESHAPE = defprim("reshape", np.reshape, lambda g, out, a, shape: g.reshape(a.shape),
                  args="a shape")
ASTYPE = defprim("astype", lambda a, dtype: a.astype(dtype),
                 lambda g, out, a, dtype: g.astype(a.dtype), args="a dtype", batch=same)
CONTIGUOUS = defprim(
    "contiguous", lambda a: a if a.flags.c_contiguous else a.copy(order="C"),
    lambda g, out, a: g, args="a", batch=same,
)


def _getitem_vjp(g, out, a, key):
    ga = np.zeros(a.shape, dtype=g.dtype)
    if isinstance(key, np.ndarray) and key.dtype.kind in "iu" and a.ndim >= 1:
        # Integer-array indexing along axis 0 (embedding lookups): repeated indices add up.
        idx, row = key.reshape(-1), math.prod(a.shape[1:])
        kernels.scatter_add_rows(
            ga.reshape(a.shape[0], row), idx, np.ascontiguousarray(g).reshape(idx.size, row)
        )
    elif _is_advanced(key):
        np.add.at(ga, key, g)
    else:
        ga[key] = g  # basic slicing never repeats an element
    return ga


def _is_advanced(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


def _getitem(a, key):
    if isinstance(key, np.ndarray) and key.dtype.kind in "iu" and a.ndim >= 1 and a.size:
        idx = key.reshape(-1)  # NOTE: one layout for the kernel (a strided table is another
        # compile of it, 0.4 s, and its C-contiguous copy loops vectorise: 3.5x at N's size)
        rows, bad = kernels.gather_rows(np.ascontiguousarray(a).reshape(a.shape[0], -1), idx)
        if bad >= 0:
            raise IndexError(
                f"getitem: index {idx[bad]} is out of range for axis 0 of a tensor of shape "
                f"{a.shape} (valid: -{a.shape[0]} .. {a.shape[0] - 1})")
        return rows.reshape(key.shape + a.shape[1:])
    return a[key]


def _getitem_batch(e):
    """W[ids] for ids of any shape; basic keys get a leading full slice."""
    if "key" not in e.params:  # the key is a tensor of ids: W[ids] batches if W does not
        return e.params if None not in e.args[0].shape else None
    key = e.params["key"]
    key = key if isinstance(key, tuple) else (key,)
    if key[:1] == (Ellipsis,):
        return e.params
    if all(isinstance(k, (slice, int)) for k in key):
        return {"key": (slice(None),) + key}
    return None


GETITEM = defprim("getitem", _getitem, _getitem_vjp, args="a key", batch=_getitem_batch)


def _split(a, bounds, axis):
    """``np.split(a, bounds, axis)`` (views at the listed indices) without its overhead."""
    edges = (0, *bounds, a.shape[axis])
    return tuple(a[(slice(None),) * (axis % a.ndim) + (slice(lo, hi),)]
                 for lo, hi in zip(edges[:-1], edges[1:]))


def _concat_vjp(g, out, axis, *arrays):
    bounds = np.cumsum([x.shape[axis] for x in arrays])[:-1]
    return (None, *_split(g, bounds, axis))


def _layout(plan, *xs):
    """Pieces of 2-D arrays laid out side by side in a new C-contiguous array: ``plan`` is
    (shape, blocks, once), a block (k, r0, r1, c0, c1, transposed, i, j) puts ``xs[k][r0:r1,
    c0:c1]`` (transposed) at row i, column j; ``once[k]``: no element of xs[k] is in two
    blocks.  Made by :func:`minigrad.compiler.rewrites.layouts` from chains of transposes,
    slices and concats of weights."""
    out = np.empty(plan[0], xs[0].dtype)
    for k, r0, r1, c0, c1, t, i, j in plan[1]:
        piece = xs[k][r0:r1, c0:c1]
        piece = piece.T if t else piece
        out[i:i + piece.shape[0], j:j + piece.shape[1]] = piece
    return out


def _layout_vjp(g, out, plan, *xs):
    _, blocks, once = plan  # (written, not added: 2.5x faster)
    gs = [np.zeros(x.shape, g.dtype) for x in xs]
    for k, r0, r1, c0, c1, t, i, j in blocks:
        piece = g[i:i + (c1 - c0 if t else r1 - r0), j:j + (r1 - r0 if t else c1 - c0)]
        if once[k]:
            gs[k][r0:r1, c0:c1] = piece.T if t else piece
        else:
            gs[k][r0:r1, c0:c1] += piece.T if t else piece
    return (None, *gs)


LAYOUT = defprim("layout", _layout, vjp_all=_layout_vjp, args="plan *xs")
CONCAT = defprim("concat", lambda axis, *xs: np.concatenate(xs, axis=axis),
                 vjp_all=_concat_vjp, args="axis *xs", batch=shift("axis"))
STACK = defprim(
    "stack", lambda axis, *xs: np.stack(xs, axis=axis),
    vjp_all=lambda g, out, axis, *xs: (None, *np.moveaxis(g, axis, 0)),
    args="axis *xs", batch=shift("axis"),
)


def _pieces(g, out):
    """A multi-output VJP's gradients, zeros for the outputs that got none."""
    return [np.zeros(o.shape, dtype=o.dtype) if gi is None else gi for gi, o in zip(g, out)]


SPLIT = defprim(
    "split", _split,
    lambda g, out, a, bounds, axis: np.concatenate(_pieces(g, out), axis=axis), nout=None,
    args="a bounds axis", batch=shift("axis"),
)
# The slices along ``axis`` (views), one output each.
UNSTACK = defprim(
    "unstack", lambda a, axis: tuple(np.moveaxis(a, axis, 0)),
    lambda g, out, a, axis: np.stack(_pieces(g, out), axis=axis), nout=None,
    args="a axis", batch=shift("axis"),
)


# ----------------------------------------------------------------------- reductions

def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"reduction: axis {ax} is out of range for {ndim}-D tensor")
        out.append(ax % max(ndim, 1))
    return tuple(sorted(set(out)))


def _sum(a, axis, keepdims):
    """Sum over ``axis``: leading axes of a C-contiguous array as one column-sum kernel,
    otherwise the reduced axes are moved last and summed by the row kernel."""
    axes = _norm_axes(axis, a.ndim)
    kept = tuple(i for i in range(a.ndim) if i not in axes)
    out_shape = tuple(1 if i in axes else a.shape[i] for i in range(a.ndim)) if keepdims \
        else tuple(a.shape[i] for i in kept)
    if a.dtype.kind != "f" or a.size == 0 or not axes:
        return np.sum(a, axis=axes, keepdims=keepdims)
    if axes == tuple(range(len(axes))) and a.flags.c_contiguous:
        r = kernels.sum_axis0(a.reshape(math.prod([a.shape[i] for i in axes]), -1))
    else:
        moved = np.ascontiguousarray(np.transpose(a, kept + axes))
        r = kernels.sum_axis1(moved.reshape(math.prod([a.shape[i] for i in kept]), -1))
    return r.reshape(out_shape)


def _expand(g, a, axis, keepdims):
    """Broadcast a reduction's gradient back to the input's shape."""
    if not keepdims:
        g = np.expand_dims(g, _norm_axes(axis, a.ndim))
    return np.broadcast_to(g, a.shape)


def _max_vjp(g, out, a, axis, keepdims):
    outk = _expand(out, a, axis, keepdims)
    hit = a == outk
    # Ties share the gradient equally (as numpy's/PyTorch's amax).
    count = hit.sum(axis=_norm_axes(axis, a.ndim), keepdims=True)
    return _expand(g, a, axis, keepdims) * hit / count


SUM = defprim(
    "sum", _sum,
    lambda g, out, a, axis, keepdims: _expand(g, a, axis, keepdims), args="a axis keepdims",
)
MAX = defprim(
    # NumPy's max: vectorised and NaN-propagating (a Numba loop with a NaN-aware compare
    # does not vectorise; it measured 0.2x).
    "max", lambda a, axis, keepdims: np.max(a, axis=_norm_axes(axis, a.ndim), keepdims=keepdims),
    _max_vjp, args="a axis keepdims",
)


# ----------------------------------------------------------------------- softmax family

def _rows(kern, axis, *arrays):
    """Apply a row kernel along ``axis`` of same-shaped arrays; result has their shape."""
    first = arrays[0]
    axis = axis % first.ndim
    moved = [np.ascontiguousarray(np.moveaxis(x, axis, -1)) for x in arrays]
    r = kern(*(m.reshape(-1, m.shape[-1]) for m in moved))
    return np.moveaxis(r.reshape(moved[0].shape), -1, axis)


def _check_float(name, a):
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension, got a scalar")


def _row_prim(name, fwd_rows, bwd_rows):
    """A softmax-family row: the kernels along ``axis``; the VJP from the output."""
    def fwd(a, axis):
        _check_float(name, a)
        return _rows(fwd_rows, axis, a)
    return defprim(name, fwd, lambda g, out, a, axis: _rows(bwd_rows, axis, g, out),
                   args="a axis", batch=shift("axis"))


SOFTMAX = _row_prim("softmax", kernels.softmax_rows, kernels.softmax_backward_rows)
LOG_SOFTMAX = _row_prim("log_softmax", kernels.log_softmax_rows,
                        kernels.log_softmax_backward_rows)


def _cross_entropy(logits, targets, weights):
    """Per-row loss (N,) and the saved logsumexp (N,) of (N, V) logits.  The ids are checked
    here too, so that a compiled function (which skips the Python checks) still refuses
    them: the kernel would read outside the logits."""
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[-1]):
        bad = targets[(targets < 0) | (targets >= logits.shape[-1])][0]
        raise IndexError(f"cross_entropy: target {bad} is out of range for "
                         f"{logits.shape[-1]} classes")
    return kernels.cross_entropy_rows(np.ascontiguousarray(logits), targets, weights)


def _cross_entropy_vjp(g, out, logits, targets, weights):
    gl = g[0]
    return kernels.cross_entropy_backward_rows(
        np.ascontiguousarray(gl), np.ascontiguousarray(logits), targets, weights, out[1]
    )


# Inputs must be C-contiguous (N, V) float logits, (N,) int64 targets, (N,) float weights;
# functional.cross_entropy checks and reshapes.  Output 1 (logsumexp) is auxiliary.
CROSS_ENTROPY = defprim("cross_entropy", _cross_entropy, _cross_entropy_vjp, nout=2,
                        args="logits targets weights")


# ======================================================================= Transformer rows
# GELU, linear, layer normalisation and attention are fused: each replaces 3-11 recorded ops
# and as many passes over memory (tests/test_ops.py checks each against its composition).

def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


GELU = defprim(
    "gelu", lambda a, approx: kernels.gelu(_flat(a), approx == "tanh").reshape(a.shape),
    lambda g, out, a, approx: kernels.gelu_backward(_flat(g), _flat(a), approx == "tanh")
    .reshape(a.shape), args="a approx")


def _linear(x, w, b):
    """x (..., I) wᵀ + b for w (O, I): one GEMM, the bias added in place (PyTorch's F.linear)."""
    y = _mm2(x.reshape(-1, x.shape[-1]), w.T)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0])


LINEAR = defprim(
    "linear", _linear,
    lambda g, out, x, w, b: _mm2(g.reshape(-1, g.shape[-1]), w).reshape(x.shape),
    lambda g, out, x, w, b: OuterSum(g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])),
    lambda g, out, x, w, b: unbroadcast(g, b.shape), args="x w b",
)


def _layer_norm(x, weight, bias, d, eps):
    """Normalise over the last ``d`` axes, then ·weight + bias: returns (y, mean, rstd)."""
    rows = np.ascontiguousarray(x).reshape(-1, math.prod(x.shape[x.ndim - d:]))
    y, mean, rstd = kernels.layer_norm_rows(rows, weight.reshape(-1), bias.reshape(-1),
                                            x.dtype.type(eps))
    return y.reshape(x.shape), mean, rstd


def _layer_norm_vjp(g, out, x, weight, bias, d, eps):
    rows = np.ascontiguousarray(x).reshape(out[1].size, -1)
    gx, gw, gb = kernels.layer_norm_backward_rows(np.ascontiguousarray(g[0]).reshape(rows.shape),
                                                  rows, weight.reshape(-1), out[1], out[2])
    return gx.reshape(x.shape), gw.reshape(weight.shape), gb.reshape(bias.shape), None, None


# Outputs 1 and 2 (the rows' mean and 1/σ) are auxiliary, saved for the VJP.
LAYER_NORM = defprim("layer_norm", _layer_norm, vjp_all=_layer_norm_vjp, nout=3,
                     args="x weight bias d eps")


def _attention(q, k, v, heads, mask, drop, scale):
    """Queries q (B, L, ·, E), keys k (B, S, ·, E), values v (B, S, ·, Ev); ``heads`` =
    (q0, k0, v0, H) picks head h as q[:, :, q0 + h] ...; k or v None: the same as the input
    before it (one packed projection).  P = softmax(q kᵀ·scale + mask) over S, A = P·drop,
    out = A v: returns (out (B, L, H, Ev), A, P (B, H, L, S)).  ``mask`` (B|1, H|1, L|1, S)
    is additive with a finite entry in every row; ``drop`` holds dropout's 0 or 1/(1-p), or
    is None.  The products are NumPy's batched GEMMs on strided views, the softmax a kernel."""
    (q, k, v), (q0, k0, v0, H) = _packed(q, k, v), heads
    s = np.matmul(_heads(q, q0, H), _heads(k, k0, H).swapaxes(2, 3))
    a, p = kernels.attention_softmax(s, mask, drop, q.dtype.type(scale))
    out = np.empty(q.shape[:2] + (H, v.shape[3]), q.dtype)
    np.matmul(a, _heads(v, v0, H), out=out.transpose(0, 2, 1, 3))
    return out, a, p


def _packed(q, k, v):
    k = q if k is None else k
    return q, k, k if v is None else v


def _heads(x, first, H):
    """Slots first .. first + H of (B, L, ·, E) as a (B, H, L, E) view."""
    return x[:, :, first:first + H].transpose(0, 2, 1, 3)


def _attention_vjp(g, out, q, k, v, heads, mask, drop, scale):
    (q0, k0, v0, H), go = heads, g[0].transpose(0, 2, 1, 3)
    grads = [None if x is None else np.zeros(x.shape, x.dtype) for x in (q, k, v)]
    dq, dk, dv = _packed(*grads)
    (q, k, v), (_, a, p) = _packed(q, k, v), out
    da = np.matmul(go, _heads(v, v0, H).swapaxes(2, 3))
    if g[1] is not None:  # the weights were used too (need_weights)
        da += g[1]
    ds = kernels.attention_softmax_backward(da, p, drop, q.dtype.type(scale))
    _heads(dv, v0, H)[...] += np.matmul(np.swapaxes(a, 2, 3), go)  # += : slots may coincide
    _heads(dq, q0, H)[...] += np.matmul(ds, _heads(k, k0, H))
    _heads(dk, k0, H)[...] += np.matmul(np.swapaxes(ds, 2, 3), _heads(q, q0, H))
    return (*grads, None, None, None, None)


ATTENTION = defprim("attention", _attention, vjp_all=_attention_vjp, nout=3,
                    args="q k v heads mask drop scale")
