"""Array helpers of a whole-step program (:mod:`minigrad.compiler.whole`): each a kernel of
its own, compiled once per argument types and kept on disk, so that a generated step is a
sequence of calls (its own compile then takes seconds, not the tens that NumPy's generic
implementations inlined into it, with their error messages, took)."""

import numpy as np

from minigrad.kernels.blas import gemm32, gemm_tn32
from minigrad.kernels.jit import kernel
from minigrad.kernels.loops import sum_axis0


@kernel
def flat(a, n):
    """a as a C-contiguous (rows, n) array (a copy only when a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, n)


@kernel
def reshaped(a, shape):
    return np.ascontiguousarray(a).reshape(shape)


@kernel
def transposed(a, axes):
    return np.transpose(a, axes)


@kernel
def mm(a, b):
    """a (..., K) @ b (K, N), float32 (b of any strides)."""
    x = flat(a, a.shape[-1])
    out = np.empty((x.shape[0], b.shape[1]), np.float32)
    if b.strides[1] == 4 or b.strides[0] == 4:  # (row- or column-major: BLAS reads it)
        gemm32(x, b, out, 0.0)
    else:
        gemm32(x, np.ascontiguousarray(b), out, 0.0)
    return out.reshape(a.shape[:-1] + (b.shape[1],))


@kernel
def mm_tn(a, g):
    """Σ over every leading axis of aᵀ g: (K, N), float32."""
    x, y = flat(a, a.shape[-1]), flat(g, g.shape[-1])
    out = np.empty((x.shape[1], y.shape[1]), np.float32)
    gemm_tn32(x, y, out)
    return out


@kernel
def colsum(a, n):
    """a's sum over every axis but a last one of n (a bias's gradient); n = 1: everything."""
    return sum_axis0(flat(a, n))


@kernel
def filled(a, value):
    return np.full(a.shape, value)


@kernel
def put(h, i, x):
    """h[i] = x."""
    h[i] = x


@kernel
def ids_ok(t, n):
    """Every id in range(n)?"""
    return t.size == 0 or (t.min() >= 0 and t.max() < n)


@kernel
def sgd_step(p, g, lr):
    """p -= lr g in place (SGD's step; p C-contiguous, a parameter's data)."""
    pf, gf = p.reshape(-1), np.ascontiguousarray(g).reshape(-1)
    for k in range(pf.size):
        pf[k] -= lr * gf[k]
