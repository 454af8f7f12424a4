"""The op table: every primitive, one line each, checked against finite differences and NumPy.

Each line of :data:`CASES` gives a function of tensors, its NumPy reference, the input
domain (``log: (0.1, 4)``) and how shapes (and constants such as an axis) are drawn.  Every
line is checked three ways, over hypothesis-drawn small shapes:

* ``mg.check_grads`` in float64 (the gradient);
* the float32 forward against the NumPy reference computed in float64 (the value and dtype);
* the line's primitive really is on the tape (so a line cannot silently test something else).

``test_table_covers_every_primitive`` fails when a primitive is added to
``minigrad.core.ops.PRIMITIVES`` without a line here (``one_hot``, whose only input is integer
ids, has no gradient to check and its own test below).
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad.attention import attend
from minigrad.compiler import rewrites
from minigrad.core import ops
from minigrad.core.tensor import apply

# ----------------------------------------------------------------------------- strategies
# Each strategy draws ``(shapes, params)``: one shape per tensor input, and the constants
# (axis, index, exponent, targets, ...) passed to the function and its reference as keywords.

SIDE = 4


def shape(min_dims=0, max_dims=3):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=SIDE)


def unary(min_dims=0, **params):
    """One tensor of any small shape (and optional constant parameters)."""
    return st.tuples(shape(min_dims), st.fixed_dictionaries(params)).map(
        lambda sp: ((sp[0],), sp[1]))


def binary():
    """Two mutually broadcastable shapes, e.g. (3, 1, 4) with (2, 4), or () with (2, 3)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=SIDE).map(
        lambda b: (b.input_shapes, {}))


sides = st.integers(1, SIDE)


def mm(kind):
    """Shapes for matmul: '2d' (M,K)@(K,N), 'nd' (...,M,K)@(K,N), 'bmm' (B,M,K)@(B,K,N),
    'a@bT' (M,K)@(N,K).T and 'aT@b' (K,M).T@(K,N) — the transposed views BLAS takes as is."""
    def build(m, k, n, lead):
        return {
            "2d": ((m, k), (k, n)),
            "nd": ((*lead, m, k), (k, n)),
            "bmm": ((lead[0], m, k), (lead[0], k, n)),
            "a@bT": ((m, k), (n, k)),
            "aT@b": ((k, m), (k, n)),
        }[kind], {}
    lead = st.lists(sides, min_size=1, max_size=2).map(tuple)
    return st.builds(build, sides, sides, sides, lead)


@st.composite
def axis_of(draw, shape_strategy, tuple_axes=True, keepdims=True):
    """A shape plus an axis argument: None, an int (maybe negative) or a tuple of axes."""
    s = draw(shape_strategy)
    nd = len(s)
    choices = [st.none()]
    if nd:
        choices.append(st.integers(-nd, nd - 1))
    if tuple_axes:
        choices.append(st.lists(st.integers(0, max(nd - 1, 0)), unique=True,
                                max_size=nd).map(tuple))
    params = {"axis": draw(st.one_of(choices))}
    if keepdims:
        params["keepdims"] = draw(st.booleans())
    return (s,), params


@st.composite
def one_axis(draw, min_dims=1):
    s = draw(shape(min_dims))
    return (s,), {"axis": draw(st.integers(-len(s), len(s) - 1))}


@st.composite
def permuted(draw):
    s = draw(shape())
    return (s,), {"axes": tuple(draw(st.permutations(range(len(s)))))}


@st.composite
def reshaped(draw):
    """A new shape with the same size: dims permuted, maybe merged, a 1 inserted, a -1."""
    s = draw(shape())
    target = list(draw(st.permutations(s)))
    if len(target) >= 2 and draw(st.booleans()):
        target = [target[0] * target[1], *target[2:]]
    if draw(st.booleans()):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return (s,), {"shape": tuple(target)}


@st.composite
def basic_index(draw):
    """Basic slicing: per leading axis an int or a non-empty slice with step ±1 or ±2."""
    s = draw(shape(min_dims=1))
    key = []
    for n in s[:draw(st.integers(1, len(s)))]:
        if draw(st.booleans()):
            key.append(draw(st.integers(-n, n - 1)))
        else:
            start = draw(st.none() | st.integers(-n, n - 1))
            key.append(slice(start, None, draw(st.sampled_from([1, 2, -1, -2]))))
    return (s,), {"key": tuple(key)}


@st.composite
def row_index(draw):
    """Integer-array indexing along axis 0, with negative and always a repeated index."""
    s = draw(shape(min_dims=1))
    idx = draw(st.lists(st.integers(-s[0], s[0] - 1), min_size=1, max_size=5))
    return (s,), {"idx": np.array([*idx, idx[0]])}


@st.composite
def bool_mask(draw):
    s = draw(shape(min_dims=1))
    return (s,), {"mask": draw(hnp.arrays(np.bool_, s))}


@st.composite
def concat_shapes(draw):
    base = list(draw(shape(min_dims=1)))
    axis = draw(st.integers(-len(base), len(base) - 1))
    shapes = []
    for _ in range(draw(st.integers(2, 3))):
        base[axis] = draw(sides)
        shapes.append(tuple(base))
    return tuple(shapes), {"axis": axis}


@st.composite
def stack_shapes(draw):
    s = draw(shape())
    k = draw(st.integers(2, 3))
    return (s,) * k, {"axis": draw(st.integers(-len(s) - 1, len(s)))}


@st.composite
def split_shapes(draw, by):
    """A shape with an axis of size >= 2 and a split of it into at least two pieces."""
    s = list(draw(shape(min_dims=1)))
    axis = draw(st.integers(-len(s), len(s) - 1))
    n = s[axis] = draw(st.integers(2, 6))
    if by == "sizes":
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=1)))
        arg = list(np.diff([0, *cuts, n]))
    elif by == "size":
        arg = draw(st.integers(1, n - 1))
    else:  # chunks
        arg = draw(st.integers(2, n))
    return (tuple(s),), {"arg": arg, "axis": axis}


@st.composite
def addmm_shapes(draw):
    """c + a @ b with c broadcastable to (M, N): (M, N), (N,), (1, N), (M, 1), ()."""
    m, k, n = draw(sides), draw(sides), draw(sides)
    c = [d if draw(st.booleans()) else 1 for d in (m, n)]
    return (tuple(c[draw(st.integers(0, 2)):]), (m, k), (k, n)), {}


@st.composite
def where_shapes(draw):
    b = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=SIDE))
    c, sa, sb = b.input_shapes
    return (sa, sb), {"cond": draw(hnp.arrays(np.bool_, c))}


@st.composite
def ce_inputs(draw, masked):
    """Logits (..., V), integer targets (...), optionally a mask whose False entries hold
    out-of-range targets (padding may hold anything), and a reduction."""
    lead = draw(shape(max_dims=2))
    v = draw(st.integers(1, 5))
    targets = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, v - 1)))
    mask = draw(hnp.arrays(np.bool_, lead)) if masked else None
    if masked:
        targets = np.where(mask, targets, -7)
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return ((*lead, v),), {"targets": targets, "mask": mask, "reduction": reduction}


# ----------------------------------------------------------------------------- references

def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_ref(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def ce_ref(x, targets, mask, reduction):
    v = x.shape[-1]
    picked = np.take_along_axis(log_softmax_ref(x, -1), np.clip(targets, 0, v - 1)[..., None],
                                axis=-1)[..., 0]
    w = np.ones(targets.shape) if mask is None else mask.astype(np.float64)
    loss = np.where(w > 0, -picked, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / max(w.sum(), 1.0)


def split_ref(x, arg, axis, by):
    n = x.shape[axis]
    if by == "sizes":
        bounds = np.cumsum(arg)[:-1]
    else:
        size = arg if by == "size" else -(-n // arg)  # chunk: ceil(n / chunks) per piece
        bounds = list(range(size, n, size))
    parts = np.split(x, bounds, axis=axis)
    return np.concatenate([p * (i + 1.0) for i, p in enumerate(parts)], axis=axis)


@st.composite
def layout_plans(draw):
    """One to three 2-D arrays and a plan laying blocks of them side by side, some
    transposed, a source used twice or not at all (``rewrites.layouts``' stacked weights)."""
    shapes = [(draw(sides), draw(sides)) for _ in range(draw(st.integers(1, 3)))]
    k, t = draw(st.integers(0, len(shapes) - 1)), draw(st.booleans())
    R, blocks, j = draw(st.integers(1, shapes[k][t])), [], 0
    for _ in range(draw(st.integers(1, 3))):
        k, t = draw(st.sampled_from([(k, t) for k, s in enumerate(shapes) for t in (0, 1)
                                     if s[t] >= R]))
        a, c0 = draw(st.integers(0, shapes[k][t] - R)), draw(st.integers(0, shapes[k][1 - t] - 1))
        c1 = draw(st.integers(c0 + 1, shapes[k][1 - t]))
        blocks.append((k, c0, c1, a, a + R, True, 0, j) if t else
                      (k, a, a + R, c0, c1, False, 0, j))
        j += c1 - c0
    once = rewrites._once([np.empty(s) for s in shapes], blocks)
    return shapes, {"plan": ((R, j), tuple(blocks), once)}


def layout_ref(*xs, plan):
    return np.concatenate([xs[k][r0:r1, c0:c1].T if t else xs[k][r0:r1, c0:c1]
                           for k, r0, r1, c0, c1, t, _, _ in plan[1]], axis=1)


def unstack_ref(x, arg, axis):
    parts = [np.take(x, i, axis=axis) * (i + 1.0) for i in range(x.shape[axis])]
    return np.stack(parts, axis=axis)


def weighted(parts, axis):
    """Join the pieces of a split, each scaled differently so every piece's gradient shows."""
    return mg.concat([p * (i + 1.0) for i, p in enumerate(parts)], axis)


# ----------------------------------------------------------------------------- Transformer rows

ERF = np.vectorize(math.erf)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def gelu_ref(x):
    return 0.5 * x * (1 + ERF(x / math.sqrt(2)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))


@st.composite
def linear_shapes(draw):
    """x (..., I), weight (O, I), bias (O,) or none."""
    lead = draw(shape(max_dims=2))
    i, o = draw(sides), draw(sides)
    return ((*lead, i), (o, i), (o,)) if draw(st.booleans()) else ((*lead, i), (o, i)), {}


def linear_ref(x, w, b=None):
    return x @ w.T + (0 if b is None else b)


@st.composite
def layer_norm_shapes(draw, affine=True):
    """x (..., *normalized) with weight and bias of the normalized shape (1 or 2 axes)."""
    s = draw(shape(min_dims=1))
    d = draw(st.integers(1, len(s)).filter(lambda d: d <= 2))
    return ((s, s[len(s) - d:], s[len(s) - d:]) if affine else (s,)), {"d": d}


def layer_norm_ref(x, w=None, b=None, d=1, eps=0.01):
    axes = tuple(range(x.ndim - d, x.ndim))
    xc = x - x.mean(axis=axes, keepdims=True)
    y = xc / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    return y if w is None else y * w + b


@st.composite
def attention_shapes(draw):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) with 1 or 2 leading axes; a bool mask
    (True = attend, every row keeps key 0) broadcasting over some axes, or none; causal."""
    lead = tuple(draw(st.lists(sides, min_size=1, max_size=2)))
    L, S, E, Ev = (draw(sides) for _ in range(4))
    mask = None
    if draw(st.booleans()):
        mshape = tuple(n if draw(st.booleans()) else 1 for n in lead) + (L, S)
        mask = draw(hnp.arrays(np.bool_, mshape))
        mask[..., 0] = True
    return ((*lead, L, E), (*lead, S, E), (*lead, S, Ev)), {"mask": mask,
                                                             "causal": draw(st.booleans())}


def attention_ref(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -np.inf), k=1)
    return softmax_ref(s, -1) @ v


def sdpa(q, k, v, mask=None, causal=False):
    return mg.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def heads_first(x):
    """(B, L, H, E), the primitive's layout -> (B, H, L, E)."""
    return np.swapaxes(x, 1, 2)


def attention_weights(q, k, v):
    """Both outputs of the primitive (output and weights), so the weights' VJP is checked."""
    out, w = attend(q, k, v, (0, 0, 0, q.shape[2]), None, 0.0, 0.5)
    return mg.concat([out.reshape(-1), w.reshape(-1)])


def attention_weights_ref(q, k, v):
    q, k, v = (heads_first(x) for x in (q, k, v))
    p = softmax_ref(q @ np.swapaxes(k, -1, -2) * 0.5, -1)
    return np.concatenate([heads_first(p @ v).reshape(-1), p.reshape(-1)])


def attention_dropout(q, k, v):
    """Dropout on the weights, with the same drop mask on every call (seeded)."""
    mg.manual_seed(7)
    return attend(q, k, v, (0, 0, 0, q.shape[2]), None, 0.4, 0.5)[0]


def attention_dropout_ref(q, k, v):
    mg.manual_seed(7)
    q, k, v = (heads_first(x) for x in (q, k, v))
    keep = (mg.get_rng().random(q.shape[:-1] + (k.shape[-2],)) >= 0.4) / 0.6
    return heads_first((softmax_ref(q @ np.swapaxes(k, -1, -2) * 0.5, -1) * keep) @ v)


def attention_packed(qkv, heads):
    """One packed (B, L, 3H, E) projection read as q, k and v (self-attention)."""
    return attend(qkv, None, None, (0, heads, 2 * heads, heads), None, 0.0, 0.5)[0]


def attention_packed_ref(qkv, heads):
    q, k, v = (heads_first(x) for x in np.split(qkv, 3, axis=2))
    return heads_first(softmax_ref(q @ np.swapaxes(k, -1, -2) * 0.5, -1) @ v)


def attention_same(x):
    """q = k = v: one tensor in the same slots (the VJP adds the three gradients)."""
    return attend(x, None, None, (0, 0, 0, x.shape[2]), None, 0.0, 0.5)[0]


def attention_same_ref(x):
    x = heads_first(x)
    return heads_first(softmax_ref(x @ np.swapaxes(x, -1, -2) * 0.5, -1) @ x)


def qkv4():
    """(B, L, H, E) q, (B, S, H, E) k, (B, S, H, Ev) v: the primitive's own layout."""
    return st.tuples(*(sides,) * 6).map(
        lambda d: (((d[0], d[2], d[1], d[4]), (d[0], d[3], d[1], d[4]),
                    (d[0], d[3], d[1], d[5])), {}))


def packed4():
    return st.tuples(*(sides,) * 4).map(
        lambda d: (((d[0], d[1], 3 * d[2], d[3]),), {"heads": d[2]}))


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    name: str
    prim: str  # the primitive this line is about (must appear on the tape)
    fn: Any  # (*tensors, **params) -> Tensor
    ref: Any  # (*float64 arrays, **params) -> array
    domain: Any  # (lo, hi) for every input, or a list with one (lo, hi) per input
    shapes: Any  # strategy drawing (shapes, params)
    avoid: tuple = ()  # kinks: inputs are kept at least 0.1 away from these points
    distinct: bool = False  # well-separated values (max: no ties within eps)
    check: dict = field(default_factory=dict)  # extra check_grads keywords
    atol32: float = 1e-6  # float32 forward: absolute tolerance (rtol is 1e-5)
    dtype32: Any = np.float32  # float32 forward: expected result dtype


F32 = np.float32
CE_TOL = 1e-5
# NOTE: float32 tanh/sigmoid use a rational approximation: abs error <= 3e-7.
R = 3e-7

# fmt: off
CASES = [
    Case("add",          "add", lambda a, b: a + b, np.add, (-2, 2), binary()),
    Case("x+s",          "add", lambda x: x + 1.5, lambda x: x + 1.5, (-2, 2), unary()),
    Case("s+x",          "add", lambda x: 1.5 + x, lambda x: 1.5 + x, (-2, 2), unary()),
    Case("sub",          "sub", lambda a, b: a - b, np.subtract, (-2, 2), binary()),
    Case("x-s",          "sub", lambda x: x - 2.0, lambda x: x - 2.0, (-2, 2), unary()),
    Case("s-x",          "sub", lambda x: 2.0 - x, lambda x: 2.0 - x, (-2, 2), unary()),
    Case("mul",          "mul", lambda a, b: a * b, np.multiply, (-2, 2), binary()),
    Case("x*s",          "mul", lambda x: x * 3.0, lambda x: x * 3.0, (-2, 2), unary()),
    Case("s*x",          "mul", lambda x: 3.0 * x, lambda x: 3.0 * x, (-2, 2), unary()),
    Case("div",          "div", lambda a, b: a / b, np.divide, [(-2, 2), (0.5, 2)], binary()),
    Case("x/s",          "div", lambda x: x / 3, lambda x: x / 3, (-2, 2), unary()),
    Case("s/x",          "div", lambda x: 3.0 / x, lambda x: 3.0 / x, (0.5, 2), unary()),
    Case("neg",          "neg", lambda x: -x, np.negative, (-2, 2), unary()),
    Case("pow",          "pow", lambda x, p: x ** p, lambda x, p: x ** p, (0.2, 2),
         unary(p=st.sampled_from([2, 3, 0.5, -1, -1.5, 2.5]))),
    Case("pow-neg-base", "pow", lambda x: x ** 3, lambda x: x ** 3, (-2, 2), unary()),
    Case("abs",          "abs", lambda x: abs(x), np.abs, (-2, 2), unary(), avoid=(0,)),
    Case("exp",          "exp", lambda x: x.exp(), np.exp, (-2, 2), unary()),
    Case("log",          "log", lambda x: x.log(), np.log, (0.1, 4), unary()),
    Case("clip",         "clip", lambda x: x.clip(-0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5),
         (-1, 1), unary(), avoid=(-0.5, 0.5)),
    Case("clip-min",     "clip", lambda x: x.clip(min=0.2), lambda x: np.maximum(x, 0.2),
         (-1, 1), unary(), avoid=(0.2,)),
    Case("clip-max",     "clip", lambda x: x.clip(max=-0.2), lambda x: np.minimum(x, -0.2),
         (-1, 1), unary(), avoid=(-0.2,)),
    Case("tanh",         "tanh", lambda x: x.tanh(), np.tanh, (-3, 3), unary(), atol32=R),
    Case("sigmoid",      "sigmoid", lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x)),
         (-4, 4), unary(), atol32=R),
    Case("relu",         "relu", lambda x: x.relu(), lambda x: np.maximum(x, 0), (-2, 2),
         unary(), avoid=(0,)),
    Case("matmul-2d",    "matmul", lambda a, b: a @ b, np.matmul, (-2, 2), mm("2d"), atol32=1e-5),
    Case("matmul-nd",    "matmul", lambda a, b: a @ b, np.matmul, (-2, 2), mm("nd"), atol32=1e-5),
    Case("matmul-bmm",   "matmul", lambda a, b: a @ b, np.matmul, (-2, 2), mm("bmm"),
         atol32=1e-5),
    Case("matmul-a@bT",  "matmul", lambda a, b: a @ b.T, lambda a, b: a @ b.T, (-2, 2),
         mm("a@bT"), atol32=1e-5),
    Case("matmul-aT@b",  "matmul", lambda a, b: a.T @ b, lambda a, b: a.T @ b, (-2, 2),
         mm("aT@b"), atol32=1e-5),
    Case("addmm",        "matmul", lambda c, a, b: mg.addmm(c, a, b), lambda c, a, b: c + a @ b,
         (-2, 2), addmm_shapes(), atol32=1e-5),
    Case(".T",           "transpose", lambda x: x.T, lambda x: x.T, (-2, 2), unary()),
    Case("transpose",    "transpose", lambda x, axes: x.transpose(axes), np.transpose, (-2, 2),
         permuted()),
    Case("transpose-ij", "transpose", lambda x: x.transpose(0, -1),
         lambda x: np.swapaxes(x, 0, -1), (-2, 2), unary(min_dims=3)),
    Case("reshape",      "reshape", lambda x, shape: x.reshape(shape), np.reshape, (-2, 2),
         reshaped()),
    Case("contiguous",   "contiguous", lambda x: x.T.contiguous(), lambda x: x.T, (-2, 2),
         unary(min_dims=1)),  # 0-d: see test_contiguous_keeps_0d_shape
    Case("getitem",      "getitem", lambda x, key: x[key], lambda x, key: x[key], (-2, 2),
         basic_index()),
    Case("getitem-rows", "getitem", lambda x, idx: x[idx], lambda x, idx: x[idx], (-2, 2),
         row_index()),
    Case("getitem-cols", "getitem", lambda x: x[:, [1, 1, 3]], lambda x: x[:, [1, 1, 3]],
         (-2, 2), shape(min_dims=2).map(lambda s: (((s[0], 4, *s[2:]),), {}))),
    Case("getitem-mask", "getitem", lambda x, mask: x[mask], lambda x, mask: x[mask], (-2, 2),
         bool_mask()),
    Case("getitem-newaxis", "getitem", lambda x: x[..., None, ::-1],
         lambda x: x[..., None, ::-1], (-2, 2), unary(min_dims=1)),
    Case("sum",          "sum", lambda x, axis, keepdims: x.sum(axis, keepdims),
         lambda x, axis, keepdims: np.sum(x, axis, keepdims=keepdims), (-2, 2),
         axis_of(shape()), atol32=1e-5),
    Case("mean",         "sum", lambda x, axis, keepdims: x.mean(axis, keepdims),
         lambda x, axis, keepdims: np.mean(x, axis, keepdims=keepdims), (-2, 2),
         axis_of(shape())),
    Case("max",          "max", lambda x, axis, keepdims: x.max(axis, keepdims),
         lambda x, axis, keepdims: np.max(x, axis, keepdims=keepdims), (-2, 2),
         axis_of(shape()), distinct=True),
    Case("softmax",      "softmax", lambda x, axis: x.softmax(axis), softmax_ref, (-3, 3),
         one_axis()),
    Case("log_softmax",  "log_softmax", lambda x, axis: x.log_softmax(axis), log_softmax_ref,
         (-3, 3), one_axis(), atol32=CE_TOL),
    Case("concat",       "concat", lambda *xs, axis: mg.concat(xs, axis),
         lambda *xs, axis: np.concatenate(xs, axis), (-2, 2), concat_shapes()),
    Case("layout",       "layout", lambda *xs, plan: apply(ops.LAYOUT, plan, *xs), layout_ref,
         (-2, 2), layout_plans()),
    Case("stack",        "stack", lambda *xs, axis: mg.stack(xs, axis),
         lambda *xs, axis: np.stack(xs, axis), (-2, 2), stack_shapes()),
    Case("split-sizes",  "split", lambda x, arg, axis: weighted(mg.split(x, arg, axis), axis),
         lambda x, arg, axis: split_ref(x, arg, axis, "sizes"), (-2, 2), split_shapes("sizes")),
    Case("split-size",   "split", lambda x, arg, axis: weighted(x.split(arg, axis), axis),
         lambda x, arg, axis: split_ref(x, arg, axis, "size"), (-2, 2), split_shapes("size")),
    Case("chunk",        "split", lambda x, arg, axis: weighted(mg.chunk(x, arg, axis), axis),
         lambda x, arg, axis: split_ref(x, arg, axis, "chunks"), (-2, 2),
         split_shapes("chunks")),
    Case("unstack",      "unstack",
         lambda x, arg, axis: mg.stack([p * (i + 1.0) for i, p in enumerate(mg.unstack(x, axis))],
                                       axis),
         unstack_ref, (-2, 2), split_shapes("chunks")),
    Case("where",        "where", lambda a, b, cond: mg.where(cond, a, b),
         lambda a, b, cond: np.where(cond, a, b), (-2, 2), where_shapes()),
    Case("where-scalar", "where", lambda x: mg.where(x > 0, x, 0.0),
         lambda x: np.where(x > 0, x, 0.0), (-2, 2), unary(), avoid=(0,)),
    Case("cross_entropy", "cross_entropy",
         lambda x, targets, mask, reduction: mg.cross_entropy(x, targets, mask, reduction),
         ce_ref, (-3, 3), ce_inputs(masked=False), atol32=CE_TOL),
    Case("cross_entropy-mask", "cross_entropy",
         lambda x, targets, mask, reduction: mg.cross_entropy(x, targets, mask, reduction),
         ce_ref, (-3, 3), ce_inputs(masked=True), atol32=CE_TOL),
    # float32 rounding inside: a linear map, so a big step is exact up to that rounding.
    Case("astype",       "astype", lambda x: x.astype(F32).astype(np.float64),
         lambda x: x.astype(F32).astype(np.float64), (-2, 2), unary(), check={"eps": 1e-2},
         dtype32=np.float64),
    # ---- the Transformer's fused rows (each also checked against its composition below)
    Case("gelu",         "gelu", lambda x: mg.functional.gelu(x), gelu_ref, (-3, 3), unary(),
         atol32=2e-6),
    Case("gelu-tanh",    "gelu", lambda x: mg.functional.gelu(x, "tanh"), gelu_tanh_ref,
         (-3, 3), unary(), atol32=2e-6),
    Case("linear",       "linear", lambda x, w, b=None: mg.functional.linear(x, w, b),
         linear_ref, (-2, 2), linear_shapes(), atol32=1e-5),
    Case("layer_norm",   "layer_norm",
         lambda x, w, b, d: mg.functional.layer_norm(x, w.shape, w, b, eps=0.01),
         layer_norm_ref, (-2, 2), layer_norm_shapes(), atol32=2e-5),
    Case("layer_norm-plain", "layer_norm",
         lambda x, d: mg.functional.layer_norm(x, x.shape[x.ndim - d:], eps=0.01),
         lambda x, d: layer_norm_ref(x, d=d), (-2, 2), layer_norm_shapes(affine=False),
         atol32=2e-5),
    Case("attention",    "attention", sdpa, attention_ref, (-2, 2), attention_shapes(),
         atol32=1e-5),
    Case("attention-weights", "attention", attention_weights, attention_weights_ref, (-2, 2),
         qkv4(), atol32=1e-5),
    Case("attention-dropout", "attention", attention_dropout, attention_dropout_ref, (-2, 2),
         qkv4(), atol32=1e-5),
    Case("attention-packed", "attention", attention_packed, attention_packed_ref, (-2, 2),
         packed4(), atol32=1e-5),
    Case("attention-same", "attention", attention_same, attention_same_ref, (-2, 2),
         qkv4().map(lambda sp: (sp[0][:1], {})), atol32=1e-5),
]
# fmt: on

# Fused recurrent-cell primitives are checked in their own test files.
NO_GRADIENT = {"one_hot", "gt", "ge", "lt", "le", "zeros_like",  # values, not derivatives
               "full", "arange", "dropout_scale",  # (no tensor input)
               "stop_gradient"}  # (detach: none by definition; tests/test_compile*.py)


# ----------------------------------------------------------------------------- helpers

def sample(rng, shp, domain, avoid, distinct):
    lo, hi = domain
    n = int(np.prod(shp))
    if distinct:  # a shuffled grid: neighbours are (hi - lo) / n apart, far beyond eps
        x = lo + (hi - lo) * (rng.permutation(n) + 0.5 + 0.2 * rng.uniform(-1, 1, n)) / n
    else:
        x = rng.uniform(lo, hi, n)
    for p in avoid:
        near = np.abs(x - p) < 0.1
        x[near] = p + np.where(x[near] >= p, 0.1, -0.1)
    return x.reshape(shp)


def draw_inputs(case, data):
    shapes, params = data.draw(case.shapes, label="shapes, params")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    domains = case.domain if isinstance(case.domain, list) else [case.domain] * len(shapes)
    arrays = [sample(rng, s, d, case.avoid, case.distinct) for s, d in zip(shapes, domains)]
    return arrays, params


def tape_prims(t):
    """Names of the primitives recorded on the tape that produced ``t``."""
    names, todo, seen = set(), [t._node], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(node.prim.name)
        todo.extend(getattr(p, "_node", None) for p in node.parents)
    return names


IDS = [c.name for c in CASES]


# ----------------------------------------------------------------------------- the checks

def test_table_covers_every_primitive():
    listed = {c.prim for c in CASES}
    wanted = set(ops.PRIMITIVES) - NO_GRADIENT
    # (The other direction — a line names a real primitive — is checked on the tape by
    # test_gradient.)
    assert wanted - listed == set(), "primitives without a line in the op table"


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
def test_gradient(case, data):
    arrays, params = draw_inputs(case, data)
    xs = [mg.tensor(a, requires_grad=True) for a in arrays]
    assert case.prim in tape_prims(case.fn(*xs, **params))
    assert mg.check_grads(lambda *ts: case.fn(*ts, **params), *xs, **case.check)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(data=st.data())
def test_float32_forward(case, data):
    arrays, params = draw_inputs(case, data)
    xs = [a.astype(np.float32) for a in arrays]
    out = case.fn(*(mg.tensor(x) for x in xs), **params)
    ref = case.ref(*(x.astype(np.float64) for x in xs), **params)
    assert out.dtype == case.dtype32
    assert out.shape == np.shape(ref)
    np.testing.assert_allclose(out.data, ref, rtol=1e-5, atol=case.atol32)


# ----------------------------------------------------------------------------- fused = composed

def gelu_tanh_composed(x):
    return 0.5 * x * (1 + (SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)).tanh())


def layer_norm_composed(x, w, b, d):
    axes = tuple(range(x.ndim - d, x.ndim))
    xc = x - x.mean(axes, keepdims=True)
    return xc * ((xc * xc).mean(axes, keepdims=True) + 0.01) ** -0.5 * w + b


def attention_composed(q, k, v, mask=None, causal=False):
    """softmax(q kᵀ/√E + M) v from matmul, mul, add and softmax rows."""
    lead, L, S = q.shape[:-2], q.shape[-2], k.shape[-2]
    q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    add = np.zeros(lead + (L, S))
    if mask is not None:
        add = np.where(mask, add, -np.inf)
    if causal:
        add = add + np.triu(np.full((L, S), -np.inf), k=1)
    s = (q3 @ k3.transpose(0, 2, 1)) * (1 / math.sqrt(q.shape[-1])) + add.reshape(-1, L, S)
    return (s.softmax(-1) @ v3).reshape(*lead, L, v.shape[-1])


def linear_composed(x, w, b=None):
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])
    return y if b is None else y + b


FUSED = {  # the exact GELU has no composition: erf is not a primitive (its reference is NumPy's)
    "linear": (lambda x, w, b=None: mg.functional.linear(x, w, b), linear_composed,
               linear_shapes()),
    "gelu-tanh": (lambda x: mg.functional.gelu(x, "tanh"), gelu_tanh_composed, unary()),
    "layer_norm": (lambda x, w, b, d: mg.functional.layer_norm(x, w.shape, w, b, eps=0.01),
                   layer_norm_composed, layer_norm_shapes()),
    "attention": (sdpa, attention_composed, attention_shapes()),
}


def tape_size(t):
    nodes, todo = set(), [t._node]
    while todo:
        node = todo.pop()
        if node is not None and id(node) not in nodes:
            nodes.add(id(node))
            todo.extend(getattr(p, "_node", None) for p in node.parents)
    return len(nodes)


@pytest.mark.parametrize("name", FUSED)
@given(data=st.data())
def test_fused_row_equals_its_composition(name, data):
    """Each fused Transformer row gives its composition of older primitives' values and
    gradients (float64), on fewer tape nodes (why it is fused: benchmarks/bench_transformer.py
    measures the time)."""
    fused, composed, shapes = FUSED[name]
    shps, params = data.draw(shapes, label="shapes, params")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    arrays = [rng.uniform(-2, 2, s) for s in shps]
    outs, grads, sizes = [], [], []
    for fn in (fused, composed):
        xs = [mg.tensor(a, requires_grad=True) for a in arrays]
        y = fn(*xs, **params)
        sizes.append(tape_size(y))
        y.backward(np.random.default_rng(1).standard_normal(y.shape))
        outs.append(y)
        grads.append([x.grad for x in xs])
    np.testing.assert_allclose(outs[0].data, outs[1].data, rtol=1e-12, atol=1e-12)
    for gf, gc in zip(*grads):
        np.testing.assert_allclose(gf, gc, rtol=1e-10, atol=1e-12)
    assert sizes[0] < sizes[1]


BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("sa, sb", [((3, 1, 4), (2, 4)), ((2, 4), (3, 1, 4)),
                                    ((), (2, 3)), ((4, 1), (1, 3)), ((2, 3), (1,))])
def test_binary_broadcasting_pairs(op, sa, sb):
    rng = np.random.default_rng(0)
    a = mg.tensor(rng.uniform(0.5, 2, sa), requires_grad=True)
    b = mg.tensor(rng.uniform(0.5, 2, sb), requires_grad=True)
    assert mg.check_grads(BINARY[op], a, b)
    assert a.grad is None and b.grad is None  # check_grads leaves .grad as it was
    out = BINARY[op](a, b)
    out.sum().backward()
    assert a.grad.shape == sa and b.grad.shape == sb


# ----------------------------------------------------------------------------- stability

EXTREME = np.array([[-1000.0, 0.0, 1000.0], [1000.0, 1000.0, -1000.0],
                    [-1000.0, -1000.0, -1000.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_plus_minus_1000(dtype):
    tol = 3e-7 if dtype == np.float32 else 1e-15
    big = 2 * float(np.spacing(dtype(2000)))  # x - logsumexp(x) near ±1000 loses this much
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        x = mg.tensor(EXTREME.astype(dtype), requires_grad=True)
        results = {
            "sigmoid": x.sigmoid(),
            "softmax": x.softmax(-1),
            "log_softmax": x.log_softmax(-1),
            "cross_entropy": mg.cross_entropy(x, np.array([0, 2, 1]), reduction="none"),
        }
        for name, y in results.items():
            assert y.dtype == dtype, name
            assert np.isfinite(y.data).all(), name
            x.grad = None
            (y * mg.tensor(np.arange(1.0, y.size + 1).reshape(y.shape).astype(dtype))
             ).sum().backward()
            assert np.isfinite(x.grad).all(), name
    s = results["sigmoid"].data
    np.testing.assert_allclose(s, (EXTREME > 0) + 0.5 * (EXTREME == 0), rtol=0, atol=tol)
    np.testing.assert_allclose(results["softmax"].data[0], [0, 0, 1], atol=tol)
    np.testing.assert_allclose(results["softmax"].data[2], [1 / 3] * 3, rtol=1e-6)
    ln2, ln3 = np.log(2), np.log(3)
    np.testing.assert_allclose(results["log_softmax"].data[0], [-2000, -1000, 0], atol=big)
    np.testing.assert_allclose(results["log_softmax"].data[1], [-ln2, -ln2, -2000 - ln2],
                               atol=big)
    np.testing.assert_allclose(results["cross_entropy"].data, [2000, 2000 + ln2, ln3], atol=big)


@st.composite
def spiked_rows(draw):
    """(V, V) logits, each row with one large spike (the row max, ≫ 88 and ≫ 710: exp of it
    overflows float32 and float64) over small noise.  The spikes' columns are a drawn
    permutation, so in every example the max sits at every position in some row."""
    v = draw(st.integers(2, 6), label="V")
    cols = np.array(draw(st.permutations(range(v)), label="spike columns"))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.uniform(-3, 3, (v, v))
    x[np.arange(v), cols] = rng.uniform(750, 1000, v)
    return x, rng.integers(0, v, v), rng.standard_normal((v, v))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "cross_entropy"])
@given(drawn=spiked_rows())
def test_stable_wherever_the_row_max_sits(fn, dtype, drawn):
    """Overflow-safe rows whatever the position of the max: values and gradients equal the
    float64 references on the same (dtype-rounded) logits; cross-entropy is never negative."""
    x64, targets, g = drawn
    x64 = x64.astype(dtype).astype(np.float64)  # the reference sees the rounded logits
    x = mg.tensor(x64.astype(dtype), requires_grad=True)
    big = 4 * float(np.spacing(dtype(1000)))  # |x - logsumexp(x)| ~ 1000 loses this much
    p = softmax_ref(x64, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        if fn == "softmax":
            y = x.softmax(-1)
            ref, tol = p, 1e-6
            ref_grad = p * (g - (g * p).sum(-1, keepdims=True))
        elif fn == "log_softmax":
            y = x.log_softmax(-1)
            ref, tol = log_softmax_ref(x64, -1), big
            ref_grad = g - p * g.sum(-1, keepdims=True)
        else:
            y = mg.cross_entropy(x, targets, reduction="none")
            ref, tol = ce_ref(x64, targets, None, "none"), big
            g = g[:, 0]
            ref_grad = g[:, None] * (p - np.eye(x64.shape[1])[targets])
        y.backward(g.astype(dtype))
    assert y.dtype == dtype and x.grad.dtype == dtype
    np.testing.assert_allclose(y.data, ref, rtol=1e-6, atol=tol)
    # NOTE: log_softmax's VJP uses exp(y) with y rounded like the logits: scales with Σ|g|.
    gtol = big * max(1.0, float(np.abs(g).sum(-1).max())) + 1e-12
    np.testing.assert_allclose(x.grad, ref_grad, rtol=1e-5, atol=gtol)
    if fn == "cross_entropy":
        assert np.all(y.data >= 0), "cross-entropy is -log of a probability: never negative"


def test_contiguous_keeps_0d_shape():
    x = mg.tensor(np.float64(1.5), requires_grad=True)
    y = x.contiguous()
    assert y.shape == ()
    y.backward()
    assert x.grad == 1.0


@pytest.mark.parametrize("c_shape", [(2, 2), (3,), (2, 1, 2)])
def test_addmm_rejects_c_that_does_not_broadcast_to_m_n(c_shape):
    c, a, b = mg.zeros(c_shape), mg.zeros(2, 3), mg.zeros(3, 1)
    with pytest.raises(ValueError, match=r"addmm: .*\(2, 1\)"):
        mg.addmm(c, a, b)


def test_transpose_two_ints_swaps_like_pytorch():
    x = mg.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.transpose(0, 1).data, x.data.T)
    np.testing.assert_array_equal(x.transpose((0, 1)).data, x.data)  # a tuple permutes
    y = mg.tensor(np.zeros((2, 3, 4)))
    assert y.transpose(0, 2).shape == (4, 3, 2)
    assert y.transpose(2, 0, 1).shape == (4, 2, 3)


def test_max_splits_the_gradient_between_ties():
    x = mg.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_empty_index_array_backward():
    x = mg.tensor(np.ones((3, 2)), requires_grad=True)
    x[np.array([], dtype=np.int64)].sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((3, 2)))


def test_one_hot_is_a_row_without_gradient():
    """ids -> one-hot rows (what a traced cell's integer input becomes); nothing recorded."""
    ids = np.array([[0, 3], [2, 2]])
    out = mg.one_hot(ids, 4, dtype=np.float64)
    np.testing.assert_array_equal(out.data, np.eye(4)[ids])
    assert out.dtype == np.float64 and out._node is None
    with pytest.raises(IndexError, match="4"):
        mg.one_hot(np.array([4]), 4)


def test_concat_of_a_kernels_output():
    """A Numba kernel's output array has a MemInfo, not an ndarray, as its ``base`` (concat
    once walked the bases looking for pieces side by side, and failed on it)."""
    x = mg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = mg.concat([x.softmax(-1), mg.functional.layer_norm(x, 3), x], axis=1)
    np.testing.assert_allclose(y.data[:, :3], softmax_ref(x.data, -1))
    y.sum().backward()
    assert x.grad.shape == (2, 3)

