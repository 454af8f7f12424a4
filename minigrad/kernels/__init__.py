"""Numba kernels: pure functions on NumPy arrays (never Tensors), split by concern.

* :mod:`~minigrad.kernels.jit` — the one decorator and its options (one project-wide
  fastmath choice that keeps NaN/Inf semantics, ``error_model='numpy'``);
* :mod:`~minigrad.kernels.numerics` — fast-math float32 tanh / sigmoid / exp (exact in
  float64) and the activations' ufuncs;
* :mod:`~minigrad.kernels.loops` — reductions, softmax-family rows, gathers and scatter-adds;
* :mod:`~minigrad.kernels.transformer` — GELU and layer-normalisation rows.

Compiled code is kept on disk by :mod:`minigrad.compile_cache`, which also loads the kernel
modules the recurrence compiler generates (``load_kernels``).

Callers hand the array kernels C-contiguous 1-D or 2-D arrays so each compiles for few type
signatures.  Every kernel has a plain-NumPy reference in ``tests/test_kernels.py``.
"""

from minigrad.compile_cache import CacheWarning, load_kernels
from minigrad.kernels.jit import FASTMATH, OPTIONS, Ufunc, elementwise, inline, kernel, parallel
from minigrad.kernels.loops import (
    adam_update,
    cross_entropy_backward_rows,
    cross_entropy_rows,
    gather_rows,
    log_softmax_backward_rows,
    log_softmax_rows,
    scatter_add_rows,
    softmax_backward_rows,
    softmax_rows,
    sum_axis0,
    sum_axis1,
    sum_squares,
)
from minigrad.kernels.numerics import (
    exp_row,
    sigmoid,
    sigmoid_forward,
    tanh,
    tanh_forward,
)
from minigrad.kernels.transformer import (
    attention_softmax,
    attention_softmax_backward,
    erf,
    gelu,
    gelu_backward,
    layer_norm_backward_rows,
    layer_norm_rows,
)

__all__ = [
    "CacheWarning", "FASTMATH", "OPTIONS", "Ufunc", "adam_update", "attention_softmax",
    "attention_softmax_backward", "cross_entropy_backward_rows", "cross_entropy_rows",
    "elementwise", "erf", "exp_row", "gather_rows", "gelu", "gelu_backward", "inline", "kernel",
    "layer_norm_backward_rows", "layer_norm_rows", "load_kernels", "log_softmax_backward_rows",
    "log_softmax_rows", "parallel", "scatter_add_rows", "sigmoid", "sigmoid_forward",
    "softmax_backward_rows", "softmax_rows", "sum_axis0", "sum_axis1", "sum_squares", "tanh",
    "tanh_forward"
]
