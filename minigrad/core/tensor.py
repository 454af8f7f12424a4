"""The Tensor: a NumPy array plus what the tape needs to differentiate through it.

``apply`` is the single entry point that runs a primitive from :mod:`minigrad.core.ops` and, when
grad mode is on and an input requires grad, records a :class:`~minigrad.core.autograd.Node`.
Every Tensor method below is a thin call to ``apply`` (or a composition of such calls).
"""

import contextlib
import functools
import math
import numbers

import numpy as np

from minigrad.core import autograd, ops
from minigrad.core.autograd import _GradMode, record

_FLOATS = (np.float32, np.float64)


class Tensor:
    """An n-dimensional array that records the operations applied to it.

    Attributes: ``data`` (numpy array), ``grad`` (numpy array of the same shape and dtype,
    or None), ``requires_grad``.  Build one with :func:`minigrad.tensor`.
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "_idx", "__weakref__")
    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = False
        self._node = None
        self._idx = 0
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _result(cls, data, node, idx):
        t = object.__new__(Tensor)
        t.data = data if type(data) is np.ndarray else np.asarray(data)
        t.grad = None
        t.requires_grad = node is not None
        t._node = node
        t._idx = idx
        return t

    # ------------------------------------------------------------------ basics
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._node is None)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self.data)))

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.data.dtype}{extra})"

    def numpy(self):
        """The underlying array (shared, not copied)."""
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors, got shape {self.data.shape}")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype not in _FLOATS:
            raise TypeError(
                f"requires_grad=True needs a float32 or float64 tensor, got {self.data.dtype} "
                "(integer tensors hold indices and targets; convert with .float() first)"
            )
        if not flag and self._node is not None:
            raise RuntimeError("requires_grad_(False) is only allowed on leaf tensors; "
                               "use .detach()")
        self.requires_grad = bool(flag)
        return self

    def detach(self):
        """The same data, cut from the graph (shares memory, as in PyTorch): the row
        ``stop_gradient`` under no_grad, so that a traced program sees it."""
        with autograd.no_grad():
            return apply(ops.STOP_GRADIENT, self)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after ``backward`` (e.g. dL/da<t>)."""
        effect("retain_grad()")  # (a compiled call's values are other tensors)
        if self._node is None:
            return self  # leaves keep their grad anyway
        if self._node.retained is None:
            self._node.retained = {}
        self._node.retained[self._idx] = self
        return self

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d self / d leaf into every leaf's ``.grad`` (see autograd.backward)."""
        effect("backward()", _backward, self, grad, retain_graph)

    def zero_grad(self):
        effect("zero_grad()", _zero_grads, (self,))

    def astype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype == self.data.dtype:
            return self
        if dtype in _FLOATS or not self.requires_grad:  # a row, so that mg.compile traces it
            return apply(ops.ASTYPE, self, dtype)
        return Tensor._result(self.data.astype(dtype), None, 0)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def long(self):
        return self.astype(np.int64)

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        return apply(ops.ADD, self, _operand(other, "add"))

    def __radd__(self, other):
        return apply(ops.ADD, _operand(other, "add"), self)

    def __sub__(self, other):
        return apply(ops.SUB, self, _operand(other, "sub"))

    def __rsub__(self, other):
        return apply(ops.SUB, _operand(other, "sub"), self)

    def __mul__(self, other):
        return apply(ops.MUL, self, _operand(other, "mul"))

    def __rmul__(self, other):
        return apply(ops.MUL, _operand(other, "mul"), self)

    def __truediv__(self, other):
        return apply(ops.DIV, self, _operand(other, "div"))

    def __rtruediv__(self, other):
        return apply(ops.DIV, _operand(other, "div"), self)

    def __neg__(self):
        return apply(ops.NEG, self)

    def __pow__(self, p):
        if isinstance(p, Tensor) or not isinstance(p, numbers.Real):
            raise TypeError(f"pow: the exponent must be a Python or NumPy scalar, got "
                            f"{type(p).__name__}")
        return apply(ops.POW, self, p)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    # comparisons give plain (non-differentiable) boolean tensors
    def __lt__(self, other):
        return Tensor._result(self.data < _raw(other), None, 0)

    def __le__(self, other):
        return Tensor._result(self.data <= _raw(other), None, 0)

    def __gt__(self, other):
        return Tensor._result(self.data > _raw(other), None, 0)

    def __ge__(self, other):
        return Tensor._result(self.data >= _raw(other), None, 0)

    # ------------------------------------------------------------------ elementwise
    def exp(self):
        return apply(ops.EXP, self)

    def log(self):
        return apply(ops.LOG, self)

    def tanh(self):
        return apply(ops.TANH, self)

    def sigmoid(self):
        return apply(ops.SIGMOID, self)

    def relu(self):
        return apply(ops.RELU, self)

    def abs(self):
        return apply(ops.ABS, self)

    __abs__ = abs

    def clip(self, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clip: give at least one of min and max")
        return apply(ops.CLIP, self, min, max)

    def sqrt(self):
        return self ** 0.5

    def softmax(self, axis=-1):
        return apply(ops.SOFTMAX, self, _axis(axis, self.ndim, "softmax"))

    def log_softmax(self, axis=-1):
        return apply(ops.LOG_SOFTMAX, self, _axis(axis, self.ndim, "log_softmax"))

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        return apply(ops.SUM, self, _axes(axis, self.ndim, "sum"), keepdims)

    def mean(self, axis=None, keepdims=False):
        axes = _axes(axis, self.ndim, "mean")
        picked = range(self.ndim) if axes is None else (axes,) if isinstance(axes, int) else axes
        n = math.prod(self.shape[a] for a in picked)
        return apply(ops.SUM, self, axes, keepdims) * (1.0 / max(n, 1))

    def max(self, axis=None, keepdims=False):
        if self.data.size == 0:
            raise ValueError("max: the tensor is empty")
        return apply(ops.MAX, self, _axes(axis, self.ndim, "max"), keepdims)

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        try:
            np.empty(self.data.shape, dtype=bool).reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {self.data.shape} "
                             f"({self.data.size} elements) into shape {tuple(shape)}") from None
        return apply(ops.RESHAPE, self, tuple(shape))

    view = reshape

    def contiguous(self):
        """A C-contiguous copy if needed (a no-op value-wise; BLAS prefers it)."""
        return apply(ops.CONTIGUOUS, self)

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        """``transpose()`` reverses the axes (like ``.T``); ``transpose(i, j)`` swaps two axes
        (PyTorch); ``transpose((p0, p1, ...))`` or three or more ints permute (NumPy)."""
        swap = len(axes) == 2 and all(isinstance(a, (int, np.integer)) for a in axes)
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = axes[0]
        if axes is None or axes == ():
            return apply(ops.TRANSPOSE, self, None)
        axes = tuple(_axis(a, self.ndim, "transpose") for a in axes)
        if swap:
            perm = list(range(self.ndim))
            perm[axes[0]], perm[axes[1]] = perm[axes[1]], perm[axes[0]]
            axes = tuple(perm)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the "
                             f"{self.ndim} axes of a tensor of shape {self.shape}")
        return apply(ops.TRANSPOSE, self, axes)

    @property
    def T(self):
        return apply(ops.TRANSPOSE, self, None)

    def __getitem__(self, key):
        key = _index_key(key)
        try:
            return apply(ops.GETITEM, self, key)
        except IndexError as e:
            if str(e).startswith("getitem:"):
                raise
            raise IndexError(f"getitem: {e} (tensor shape {self.data.shape})") from None

    def split(self, split_size_or_sections, axis=0):
        return split(self, split_size_or_sections, axis)

    def chunk(self, chunks, axis=0):
        return chunk(self, chunks, axis)


# ------------------------------------------------------------------ apply: the one entry point

def apply(prim, *inputs):
    """Run ``prim`` on the inputs' arrays and record it if any input requires grad."""
    args = []
    needs = 0  # bit i set: input i requires grad
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor):
            args.append(x.data)
            if x.requires_grad:
                needs |= 1 << i
        else:
            args.append(x)
    try:
        out = prim.fwd(*args)
    except ValueError as e:
        if "broadcast" not in str(e):
            raise
        shapes = " and ".join(str(np.shape(a)) for a in args if isinstance(a, np.ndarray))
        raise ValueError(f"{prim.name}: shapes {shapes} are not broadcastable (NumPy rules: "
                         "trailing dimensions must be equal or 1)") from None
    node = None
    if needs and _GradMode.enabled:
        node = record(prim, args, _positions(needs), inputs, out)
    if prim.nout == 1:
        t = _new(Tensor)
        t.data = out if type(out) is np.ndarray else np.asarray(out)
        t.grad = None
        t.requires_grad = node is not None
        t._node = node
        t._idx = 0
        if _TRACER is not None:
            _TRACER(prim, inputs, (t,))
        return t
    outs = tuple(Tensor._result(o, node, i) for i, o in enumerate(out))
    if _TRACER is not None:
        _TRACER(prim, inputs, outs)
    return outs


# The compiler's tracer sees every primitive application while it is set (see tracing).
_TRACER = None


def effect(what, fn=None, *args):
    """Run the side effect ``fn(*args)`` (backward(), an optimizer's step(), ...) and return
    its result.  A trace (``mg.compile``'s) records it, to be replayed after its equations
    at every compiled call; it runs hidden from the trace (what it applies is not part of
    the program).  ``fn`` None: only tell the trace of an effect it cannot replay."""
    if _TRACER is None:  # (eager: 0.1 µs a call; the block below costs 1.8)
        return None if fn is None else fn(*args)
    getattr(_TRACER, "effects", []).append((what, fn, args, len(_TRACER.eqns)))
    with tracing(None):
        return None if fn is None else fn(*args)


def _zero_grads(params):
    for p in params:
        p.grad = None


def _backward(t, grad, retain_graph):
    autograd.backward(t, None if grad is None else as_array(grad), retain_graph)


@contextlib.contextmanager
def tracing(recorder):
    """``with tracing(recorder):`` — ``recorder(prim, inputs, outputs)`` sees every primitive
    that :func:`apply` runs inside the block (the compiler's ``trace``).  Blocks nest: the
    innermost recorder alone sees a primitive, and ``tracing(None)`` hides what runs inside
    it from an outer one (a compile that happens while a function is traced)."""
    global _TRACER
    outer, _TRACER = _TRACER, recorder
    try:
        yield recorder
    finally:
        _TRACER = outer


_new = object.__new__


@functools.lru_cache(maxsize=256)
def _positions(mask):
    """The set bits of ``mask`` as a tuple — shared, so recording allocates no list."""
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


# ------------------------------------------------------------------ helpers

def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.array(data, dtype=dtype)
    if isinstance(data, np.ndarray):
        return data.copy()
    arr = np.array(data)
    if arr.dtype == np.float64 and not isinstance(data, np.generic):
        arr = arr.astype(np.float32)  # Python floats: float32 by default, as PyTorch
    elif arr.dtype.kind == "O" or arr.dtype.kind in "USV":
        raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__} "
                        f"(got numpy dtype {arr.dtype})")
    return arr


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def as_array(x, dtype=None):
    """The NumPy array behind ``x``: a Tensor's ``.data`` (shared, not copied), anything
    else (lists, ids, masks, lengths) through ``np.asarray``."""
    return np.asarray(x.data if isinstance(x, Tensor) else x, dtype=dtype)


def _operand(x, op):
    if isinstance(x, (Tensor, numbers.Number)):  # a number stays as it is: NumPy broadcasts it
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        return Tensor._result(np.asarray(x), None, 0) if isinstance(x, np.ndarray) else Tensor(x)
    raise TypeError(f"{op}: unsupported operand of type {type(x).__name__}")


def _axis(axis, ndim, op):
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{op}: axis {axis} is out of range for a {ndim}-D tensor")
    return int(axis) % max(ndim, 1)


def _axes(axis, ndim, op):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        axes = tuple(_axis(a, ndim, op) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{op}: repeated axis in {tuple(axis)}")
        return axes
    return _axis(axis, ndim, op)


def _index_key(key):
    """Normalise an index: Tensors and lists of ints become integer arrays."""
    if isinstance(key, tuple):
        return tuple(_index_key(k) for k in key)
    if isinstance(key, (Tensor, list)):
        key = as_array(key)
    if isinstance(key, np.ndarray) and key.dtype.kind not in "iub":
        raise IndexError(f"getitem: index arrays must be integer or boolean, got {key.dtype}")
    return key


# ------------------------------------------------------------------ functions on tensors

def matmul(a, b):
    """``a @ b``: (M, K) @ (K, N), (..., M, K) @ (K, N) or batched (B, M, K) @ (B, K, N)."""
    a, b = _operand(a, "matmul"), _operand(b, "matmul")
    sa, sb = np.shape(_raw(a)), np.shape(_raw(b))
    if len(sa) == 3 and len(sb) == 3 and sa[0] != sb[0]:
        raise ValueError(f"matmul: shapes {sa} and {sb} have different batch sizes B={sa[0]} "
                         f"and {sb[0]} (dimension 0); expected (B, M, K) @ (B, K, N) with "
                         "equal B")
    ok = len(sa) >= 2 and (len(sb) == 2 or (len(sb) == 3 and len(sa) == 3))
    if not ok or sa[-1] != sb[-2]:
        raise ValueError(
            f"matmul: shapes {sa} and {sb} do not match: expected (M, K) @ (K, N), "
            f"(..., M, K) @ (K, N) or (B, M, K) @ (B, K, N) with equal K"
            + (f", got K={sa[-1]} and {sb[-2]}" if len(sa) >= 2 and len(sb) >= 2 else "")
        )
    return apply(ops.MATMUL, a, b)


def concat(tensors, axis=0):
    """Join tensors along an existing axis (``np.concatenate``)."""
    tensors = [_operand(t, "concat") for t in tensors]
    if not tensors:
        raise ValueError("concat: expected a non-empty sequence of tensors")
    shapes = [np.shape(_raw(t)) for t in tensors]
    ndim = len(shapes[0])
    axis = _axis(axis, ndim, "concat")
    for s in shapes:
        if len(s) != ndim or any(s[i] != shapes[0][i] for i in range(ndim) if i != axis):
            raise ValueError(f"concat: shapes {shapes} must agree except along axis {axis}")
    return apply(ops.CONCAT, axis, *tensors)


def stack(tensors, axis=0):
    """Join same-shaped tensors along a new axis (``np.stack``)."""
    tensors = [_operand(t, "stack") for t in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    shapes = {np.shape(_raw(t)) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    axis = _axis(axis, len(shapes.pop()) + 1, "stack")
    return apply(ops.STACK, axis, *tensors)


def split(t, split_size_or_sections, axis=0):
    """Split into pieces of ``split_size`` (last may be smaller) or of the listed sizes."""
    axis = _axis(axis, t.ndim, "split")
    n = t.shape[axis]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes {sizes} must be non-negative and sum to {n}, "
                             f"the size of axis {axis}")
    return apply(ops.SPLIT, t, tuple(np.cumsum(sizes)[:-1].tolist()), axis)


def unstack(t, axis=0):
    """The slices of ``t`` along ``axis`` as a tuple (the inverse of :func:`stack`)."""
    return apply(ops.UNSTACK, t, _axis(axis, t.ndim, "unstack"))


def chunk(t, chunks, axis=0):
    """Split into ``chunks`` pieces of (nearly) equal size, as ``torch.chunk``."""
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    n = t.shape[_axis(axis, t.ndim, "chunk")]
    size = max(1, -(-n // chunks))
    return split(t, size, axis)
