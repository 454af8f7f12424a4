"""Array helpers of a whole-step program (:mod:`minigrad.compiler.whole`): each a kernel of
its own, compiled once per argument types and kept on disk, so that a generated step is a
sequence of calls (its own compile then takes seconds, not the tens that NumPy's generic
implementations inlined into it, with their error messages, took).

``sp`` = (threads, rows, flops): how work may be split (:mod:`minigrad.threads`: at most
``threads`` parts, each of at least ``rows`` rows and, for a GEMM, ``flops`` FLOPs).  A GEMM
split into row blocks runs them on Numba's threads, each one single-threaded BLAS call, a
product's partial sums added in a fixed order (the same result for a given thread count)."""

import numpy as np

from minigrad.kernels.blas import dot_blocks, dot_t_blocks, gemm32, gemm_tn32
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
    """a's axes permuted, as a C-contiguous copy: its consumers (a GEMM, a lookup's ids,
    a loop's gradients) read it flat, each had copied the view (twice, for a GEMM's
    operand that is also a weight gradient's)."""
    return np.ascontiguousarray(np.transpose(a, axes))


@kernel
def parts(n, sp, work=0.0):
    """The edges of k near-equal parts of range(n), int64 (k + 1,): k = sp's threads at most,
    each part of at least sp's rows and (work > 0: a GEMM's FLOPs) sp's flops."""
    k = max(1, min(sp[0], n // sp[1], int(work // sp[2]) if work > 0 else sp[0]))
    e = np.empty(k + 1, np.int64)
    for i in range(k + 1):
        e[i] = n * i // k
    return e


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
def mm_split(a, b, sp):
    """:func:`mm` in row blocks on Numba's threads when it pays."""
    x = flat(a, a.shape[-1])
    e = parts(x.shape[0], sp, 2.0 * x.size * b.shape[1])
    if e.size == 2 or not (b.strides[1] == 4 or b.strides[0] == 4):  # (b: as BLAS reads it)
        return mm(a, b)
    out = np.empty((x.shape[0], b.shape[1]), np.float32)
    dot_blocks(x, b, out, e)
    return out.reshape(a.shape[:-1] + (b.shape[1],))


@kernel
def mm_tn_split(a, g, sp):
    """:func:`mm_tn` in row blocks on Numba's threads when it pays, their partial sums
    added in order."""
    x, y = flat(a, a.shape[-1]), flat(g, g.shape[-1])
    e = parts(x.shape[0], sp, 2.0 * x.size * y.shape[1])
    if e.size == 2:
        return mm_tn(a, g)
    p = np.empty((e.size - 1, x.shape[1], y.shape[1]), np.float32)
    dot_t_blocks(x, y, p, e)
    return added(p)


@kernel
def added(p):
    """p[0] + p[1] + ... (a chunk's own sums, in order): a new array."""
    out = p[0].copy()
    for c in range(1, p.shape[0]):
        out += p[c]
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
