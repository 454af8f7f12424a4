"""Making tensors: from data, zeros and ones, random samples (from minigrad's generator,
``mg.manual_seed``), ranges.  Every one returns a :class:`~minigrad.core.tensor.Tensor`."""

import numpy as np

from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply, as_array
from minigrad.random import get_rng


def tensor(data, requires_grad=False, dtype=None):
    """Make a tensor: Python floats -> float32, NumPy arrays keep their dtype (float64 kept),
    integers stay integers (indices, targets)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _shape_arg(shape):
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape


def _full(shape, value, dtype, requires_grad):
    """A row (``full``), so that a function compiled with ``mg.compile`` makes it at every
    call instead of refusing it as data."""
    t = apply(ops.FULL, tuple(int(n) for n in _shape_arg(shape)), value, np.dtype(dtype))
    if requires_grad:
        t = Tensor(t.data, requires_grad=True)
    return t


def zeros(*shape, dtype=np.float32, requires_grad=False):
    return _full(shape, 0, dtype, requires_grad)


def ones(*shape, dtype=np.float32, requires_grad=False):
    return _full(shape, 1, dtype, requires_grad)


def zeros_like(t, requires_grad=False):
    return Tensor(np.zeros_like(as_array(t)), requires_grad=requires_grad)


def ones_like(t, requires_grad=False):
    return Tensor(np.ones_like(as_array(t)), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, requires_grad=False):
    """Standard normal samples from minigrad's generator (see ``mg.manual_seed``)."""
    data = get_rng().standard_normal(_shape_arg(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, dtype=np.float32, requires_grad=False):
    data = get_rng().random(_shape_arg(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def arange(*args, dtype=None):
    """``np.arange(stop)`` or ``(start, stop[, step])`` as a tensor: a row, so that a compiled
    function makes it at every call (NumPy's dtype; its errors when the row runs)."""
    if not 1 <= len(args) <= 3:
        raise TypeError(f"arange: expected stop, or start, stop[, step]; got {len(args)} arguments")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    dtype = np.dtype(dtype) if dtype is not None else np.result_type(  # (NumPy's choice)
        *(a.item() if isinstance(a, np.generic) else a for a in args))
    return apply(ops.ARANGE, start, stop, step, dtype)
