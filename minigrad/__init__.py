"""minigrad: a small, fast, honest tape-based autodiff framework for sequence models."""

from minigrad import functional, kernels, ops
from minigrad.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from minigrad.functional import cross_entropy, dropout, one_hot
from minigrad.gradcheck import GradcheckError, check_grads
from minigrad.random import get_rng, manual_seed
from minigrad.tensor import (
    Tensor,
    arange,
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
    where,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"

__all__ = [
    "GradcheckError", "Tensor", "arange", "check_grads", "chunk", "concat", "cross_entropy",
    "dropout", "enable_grad", "functional", "get_rng", "is_grad_enabled", "kernels",
    "manual_seed", "matmul", "no_grad", "one_hot", "ones", "ones_like", "ops", "rand",
    "randn", "set_grad_enabled", "split", "stack", "tensor", "where", "zeros", "zeros_like",
]
