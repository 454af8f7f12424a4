"""minigrad: a small, fast, honest tape-based autodiff framework for sequence models."""

import gc

from minigrad import compile_cache, data, distributed, functional, kernels, memory, nn, optim
from minigrad.compiler import TraceError, compile, scan, trace
from minigrad.core import ops
from minigrad.core.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from minigrad.core.tensor import Tensor, as_array, chunk, concat, matmul, split, stack, unstack
from minigrad.creation import arange, ones, ones_like, rand, randn, tensor, zeros, zeros_like
from minigrad.functional import addmm, cross_entropy, dropout, one_hot, where
from minigrad.gradcheck import GradcheckError, check_grads
from minigrad.kernels import CacheWarning
from minigrad.nn import Module, Parameter
from minigrad.random import get_rng, manual_seed
from minigrad.serialization import load, save
from minigrad.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"


class CompileFallbackWarning(UserWarning):
    """A recurrent layer could not compile its cell, or ``mg.compile`` a function, and it
    runs eagerly (same values, slower); the message says what is the cause.  Make it an
    error to find out: ``warnings.simplefilter("error", mg.CompileFallbackWarning)``."""


def freeze_gc():
    """Opt in: move every object alive now out of the cyclic garbage collector's sight.

    Importing Numba leaves ~100k long-lived objects that every full collection walks
    again, which costs ~2 µs per recorded op in a training loop
    (benchmarks/bench_engine.py, section 2).  Call this once after your imports and data
    loading, before training; the demos and benchmarks do.  It is not done on import: a
    library must not change the interpreter's collection behind your back (objects frozen
    are never collected, even cycles that become garbage later).  ``gc.unfreeze()`` undoes
    it.  Returns the number of objects frozen.
    """
    gc.collect()  # free what is garbage already, rather than freezing it forever
    gc.freeze()
    return gc.get_freeze_count()


__all__ = [
    "CacheWarning", "CompileFallbackWarning", "GradcheckError", "Module", "Parameter", "Tensor",
    "TraceError", "addmm", "arange", "as_array", "check_grads", "chunk", "compile", "compile_cache",
    "concat",
    "cross_entropy", "data", "distributed", "dropout", "enable_grad", "freeze_gc", "functional",
    "get_num_threads", "get_rng", "is_grad_enabled", "kernels", "load", "manual_seed", "matmul",
    "memory", "nn", "no_grad", "one_hot", "ones", "ones_like", "ops", "optim", "rand", "randn",
    "save", "scan", "set_grad_enabled", "set_num_threads", "split", "stack", "tensor", "trace",
    "unstack", "where", "zeros", "zeros_like"
]
