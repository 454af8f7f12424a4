"""Core loops: reductions (and the optimizer's fused update), the softmax family's rows
(overflow-safe, with the fast exp in float32), and row gathers / scatter-adds for lookups."""

import numpy as np

from minigrad.kernels.blas import copy_block
from minigrad.kernels.jit import inline, kernel
from minigrad.kernels.numerics import exp_row

# ---------------------------------------------------------------------------- reductions

@kernel
def sum_axis0(x):
    """(N, M) -> (M,): column sums (bias gradients, unbroadcasting leading axes), added up
    in float64: a float32 running sum over thousands of rows drifts (the mean of config C's
    6400 losses by 7e-6, ~2e-6 relative)."""
    n, m = x.shape
    acc = np.zeros(m, dtype=np.float64)
    for i in range(n):  # NOTE: not ``acc += x[i]``: an array op per row cost 0.5 us (13 us
        for j in range(m):  # for the 25 numbers of a loss), this loop 0.05 us
            acc[j] += x[i, j]
    return acc.astype(x.dtype)


@kernel
def sum_axis1(x):
    """(N, M) -> (N,): row sums, added up in float64 as :func:`sum_axis0`'s."""
    n, m = x.shape
    out = np.empty(n, dtype=x.dtype)
    for i in range(n):
        s = 0.0
        for j in range(m):
            s += x[i, j]
        out[i] = s
    return out


@kernel
def sum_squares(x):
    """Σ x² of a 1-D array, added up in float64 (a gradient norm), without temporaries."""
    total = 0.0
    for i in range(x.size):
        total += np.float64(x[i]) * x[i]
    return total


@kernel
def adam_update(p, g, m, v, b1, c1, b2, c2, step_size, bias2, eps):
    """One Adam step on 1-D arrays, in place, in one pass (scalars in p's dtype; c = 1 - b,
    worked out in float64): m = b1·m + c1·g;  v = b2·v + c2·g²;
    p -= step_size · m / (√v / bias2 + eps)."""
    for i in range(p.size):
        m[i] = b1 * m[i] + c1 * g[i]
        v[i] = b2 * v[i] + c2 * (g[i] * g[i])
        p[i] -= step_size * m[i] / (np.sqrt(v[i]) / bias2 + eps)


# ---------------------------------------------------------------------------- softmax family
# Row kernels work on one row at a time in a scratch buffer: ``x - max`` into it, exp in
# place (:func:`exp_row`), then one more pass.  Each loop stays short enough to vectorise.


@inline
def _row_max(x):
    m = x[0]
    for j in range(1, x.size):
        m = max(m, x[j])
    return m


@inline
def _row_logsumexp(xi, buf, ibuf):
    """log Σ_j exp(x_j), shifted by the row max; ``buf``/``ibuf`` are scratch rows."""
    m = _row_max(xi)
    for j in range(xi.size):
        buf[j] = xi[j] - m
    exp_row(buf, ibuf)
    return m + np.log(buf.sum())


@kernel
def log_softmax_rows(x):
    """(N, V) -> (N, V): x - logsumexp(x) per row, shifted by the row max for stability."""
    n, v = x.shape
    out = np.empty_like(x)
    buf = np.empty(v, dtype=x.dtype)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        xi, oi = x[i], out[i]
        lse = _row_logsumexp(xi, buf, ibuf)
        for j in range(v):
            oi[j] = xi[j] - lse
    return out


@kernel
def softmax_rows(x):
    """(N, V) -> (N, V): exp(x - max) / Σ exp(x - max) per row."""
    n, v = x.shape
    out = np.empty_like(x)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        xi, oi = x[i], out[i]
        m = _row_max(xi)
        for j in range(v):
            oi[j] = xi[j] - m
        exp_row(oi, ibuf)
        r = 1 / oi.sum()
        for j in range(v):
            oi[j] *= r
    return out


@kernel
def softmax_backward_rows(g, y):
    """VJP of softmax from its output y: y * (g - Σ g·y) per row."""
    n, v = g.shape
    out = np.empty_like(g)
    zero = np.zeros(1, dtype=g.dtype)[0]
    for i in range(n):
        s = zero
        for j in range(v):
            s += g[i, j] * y[i, j]
        for j in range(v):
            out[i, j] = y[i, j] * (g[i, j] - s)
    return out


@kernel
def log_softmax_backward_rows(g, y):
    """VJP of log-softmax from its output y: g - exp(y) * Σ g per row."""
    n, v = g.shape
    out = np.empty_like(g)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        gi, oi = g[i], out[i]
        s = gi.sum()
        oi[:] = y[i]
        exp_row(oi, ibuf)
        for j in range(v):
            oi[j] = gi[j] - oi[j] * s
    return out


@kernel
def cross_entropy_rows(x, t, w):
    """Per-row softmax cross-entropy with integer targets.

    x: (N, V) logits, t: (N,) int targets, w: (N,) row weights (0 masks a row).
    Returns (loss (N,), lse (N,)) with loss_i = w_i (logsumexp(x_i) - x_i[t_i]);
    lse is saved for the backward pass.  NOTE: the exps of all rows in one pass (a row of a
    few dozen classes is too short to vectorise well): 2x faster at 640 x 29, same bits.
    """
    n, v = x.shape
    loss, lse, e = np.empty(n, x.dtype), np.empty(n, x.dtype), np.empty((n, v), x.dtype)
    for i in range(n):
        lse[i] = _row_max(x[i])
        for j in range(v):
            e[i, j] = x[i, j] - lse[i]
    exp_row(e.reshape(-1), np.empty(n * v, np.int32))
    for i in range(n):
        lse[i] += np.log(e[i].sum())
        loss[i] = w[i] * (lse[i] - x[i, t[i]]) if w[i] != 0 else 0
    return loss, lse


@kernel
def cross_entropy_backward_rows(g, x, t, w, lse):
    """VJP of :func:`cross_entropy_rows` w.r.t. x: g_i w_i (softmax(x_i) - onehot(t_i))."""
    n, v = x.shape
    out = np.empty_like(x)
    for i in range(n):
        for j in range(v):
            out[i, j] = x[i, j] - lse[i]
    exp_row(out.reshape(-1), np.empty(n * v, np.int32))  # (all rows at once, as above)
    for i in range(n):
        c = g[i] * w[i]
        for j in range(v):
            out[i, j] = out[i, j] * c if c != 0 else 0
        out[i, t[i]] -= c
    return out



# ---------------------------------------------------------------------------- layouts

@kernel
def put_blocks(out, blocks, xs):
    """A layout's blocks written into ``out``: for each row (k, r0, r1, c0, c1, transposed,
    i, j) of ``blocks``, ``out[i:, j:] = xs[k][r0:r1, c0:c1]`` (transposed)."""
    for n in range(blocks.shape[0]):
        k, r0, r1, c0, c1, t, i, j = blocks[n, 0], blocks[n, 1], blocks[n, 2], \
            blocks[n, 3], blocks[n, 4], blocks[n, 5] != 0, blocks[n, 6], blocks[n, 7]
        h, w = (c1 - c0, r1 - r0) if t else (r1 - r0, c1 - c0)
        copy_block(out, i, j, xs[k], r0, c0, h, w, t, False)
    return out


@kernel
def take_blocks(gs, blocks, g, add):
    """The reverse of :func:`put_blocks`: ``gs[k][r0:r1, c0:c1]`` = (or +=) g's block."""
    for n in range(blocks.shape[0]):
        k, r0, r1, c0, c1, t, i, j = blocks[n, 0], blocks[n, 1], blocks[n, 2], \
            blocks[n, 3], blocks[n, 4], blocks[n, 5] != 0, blocks[n, 6], blocks[n, 7]
        copy_block(gs[k], r0, c0, g, i, j, r1 - r0, c1 - c0, t, add)


# ---------------------------------------------------------------------------- gather / scatter

@kernel
def gather_rows(w, idx):
    """(N, D), (K,) ints -> ((K, D), bad): out[k] = w[idx[k]] (an embedding lookup), a
    negative index counting from the end as in NumPy; ``bad`` is the position of the first
    index out of range (-1: none; the caller raises)."""
    k, n, d = idx.size, w.shape[0], w.shape[1]
    out = np.empty((k, d), dtype=w.dtype)
    for i in range(k):
        r = idx[i] + n if idx[i] < 0 else idx[i]
        if r < 0 or r >= n:
            return out, i
        for j in range(d):  # an explicit loop: a row-slice assignment ran at 0.4x NumPy
            out[i, j] = w[r, j]
    return out, -1


@kernel
def scatter_add_rows(out, idx, g):
    """out[idx[k]] += g[k] for every k, in place (a negative index counts from the end);
    repeated indices accumulate."""
    d, n = g.shape[1], out.shape[0]
    for i in range(idx.size):
        r = idx[i] + n if idx[i] < 0 else idx[i]
        for j in range(d):  # an explicit loop: a row op (out[r] += g[i]) cost ~0.3 us a row
            out[r, j] += g[i, j]
    return out
