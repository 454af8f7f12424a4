"""minigrad: a small, fast, honest tape-based autodiff framework for sequence models."""

import gc

from minigrad import data, functional, kernels, nn, ops, optim
from minigrad.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from minigrad.functional import cross_entropy, dropout, one_hot
from minigrad.gradcheck import GradcheckError, check_grads
from minigrad.nn import Module, Parameter
from minigrad.random import get_rng, manual_seed
from minigrad.serialization import load, save
from minigrad.tensor import (
    Tensor,
    addmm,
    arange,
    as_array,
    chunk,
    concat,
    matmul,
    ones,
    ones_like,
    rand,
    randn,
    split,
    stack,
    tensor,
    unstack,
    where,
    zeros,
    zeros_like,
)
from minigrad.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

# NOTE: move the ~100k long-lived objects that importing Numba creates out of the garbage
# collector's sight: otherwise every full collection walks them all, which cost ~2 µs per
# recorded op in a training loop (benchmarks/bench_engine.py, section 2).
gc.freeze()

__all__ = [
    "GradcheckError", "Module", "Parameter", "Tensor", "addmm", "arange", "as_array",
    "check_grads",
    "chunk", "concat", "cross_entropy", "data", "dropout", "enable_grad", "functional",
    "get_num_threads", "get_rng", "is_grad_enabled", "kernels", "load", "manual_seed", "matmul",
    "nn", "no_grad", "one_hot", "ones", "ones_like", "ops", "optim", "rand", "randn", "save",
    "set_grad_enabled", "set_num_threads", "split", "stack", "tensor", "unstack", "where",
    "zeros", "zeros_like",
]
