"""Functions on tensors that are not methods: losses, one-hot, dropout, activations.

All are compositions of Tensor operations (no backward code here).
"""

import functools

import numpy as np

from minigrad import ops
from minigrad.data import check_ids
from minigrad.random import get_rng
from minigrad.tensor import Tensor, apply, as_array, cross_entropy_rows


def tanh(x):
    return x.tanh()


def sigmoid(x):
    return x.sigmoid()


def relu(x):
    return x.relu()


def softmax(x, axis=-1):
    return x.softmax(axis)


def log_softmax(x, axis=-1):
    return x.log_softmax(axis)


def cross_entropy(logits, targets, mask=None, reduction="mean"):
    """Softmax cross-entropy ``-log softmax(logits)[target]`` with integer targets.

    logits: (..., V) float; targets: (...) integers in [0, V); mask: (...) bool or None —
    False entries (padding) contribute neither loss nor gradient and may hold any target.
    reduction: 'mean' (over unmasked entries; 0 if there are none), 'sum' (the chapter's
    L = Σ_t L<t>), or 'none' (shape (...)).  Fused and stable: logsumexp with the row max.
    """
    if not isinstance(logits, Tensor):
        raise TypeError("cross_entropy: logits must be a Tensor")
    t = as_array(targets)
    lshape = logits.shape
    if logits.ndim < 1 or logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"cross_entropy: logits must be float32/float64 with a class axis, "
                        f"got shape {lshape} dtype {logits.dtype}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    if t.shape != lshape[:-1]:
        raise ValueError(f"cross_entropy: targets have shape {t.shape} but logits {lshape} "
                         f"need targets of shape {lshape[:-1]} (one class index per row)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', "
                         f"got {reduction!r}")
    V = lshape[-1]
    if mask is None:
        w = np.ones(t.shape, dtype=logits.dtype)
    else:
        m = as_array(mask)
        if m.shape != t.shape:
            raise ValueError(f"cross_entropy: mask has shape {m.shape}, expected {t.shape}")
        w = m.astype(logits.dtype)
        t = np.where(m, t, 0)
    t = t.reshape(-1).astype(np.int64)
    w = w.reshape(-1)
    check_ids("cross_entropy", t[w != 0], V, what="target", size="classes")
    rows = logits.reshape(-1, V) if logits.ndim != 2 else logits
    loss = cross_entropy_rows(rows, t, w)
    if reduction == "none":
        return loss.reshape(lshape[:-1])
    total = loss.sum()
    if reduction == "sum":
        return total
    return total * (1.0 / max(float(w.sum()), 1.0))


def lstm_cell(z, c_prev, peepholes=None):
    """Fused LSTM gate math (see ``kernels.lstm_forward``): returns ``(a<t>, c<t>)``.

    z: (B, 4H) pre-activations [c~, Γu, Γf, Γo]; c_prev: (B, H); peepholes: (3, H) tensor
    [p_u, p_f, p_o] or None.  Equal in value and gradient to the composed equations.
    """
    B, H = c_prev.data.shape
    if z.data.shape != (B, 4 * H):
        raise ValueError(f"lstm_cell: z has shape {z.shape}, expected {(B, 4 * H)} "
                         f"for c_prev of shape {(B, H)}")
    if peepholes is None:
        peepholes = _zero_peepholes(H, z.dtype)
    a, c, _ = apply(ops.LSTM_CELL, z, c_prev, peepholes)
    return a, c


@functools.lru_cache(maxsize=32)
def _zero_peepholes(H, dtype):
    p = np.zeros((3, H), dtype=dtype)
    p.flags.writeable = False  # shared between calls: never written
    return p


def lstm_step(xp_t, a_prev, c_prev, W_aa_T, peepholes=None):
    """One fused LSTM step: ``lstm_cell(xp_t + a_prev @ W_aa_T, c_prev, peepholes)``.

    xp_t: (B, 4H) input terms (biases included); a_prev, c_prev: (B, H); W_aa_T: (H, 4H).
    Returns ``(a<t>, c<t>)``; one recorded op (the GEMM and the gate math together).
    """
    B, H = c_prev.data.shape
    if xp_t.data.shape != (B, 4 * H) or a_prev.data.shape != (B, H) \
            or W_aa_T.data.shape != (H, 4 * H):
        raise ValueError(f"lstm_step: expected xp_t {(B, 4 * H)}, a_prev {(B, H)}, W_aa_T "
                         f"{(H, 4 * H)} for c_prev {(B, H)}; got {xp_t.shape}, "
                         f"{a_prev.shape}, {W_aa_T.shape}")
    if peepholes is None:
        peepholes = _zero_peepholes(H, xp_t.dtype)
    a, c, _ = apply(ops.LSTM_STEP, xp_t, a_prev, c_prev, W_aa_T, peepholes)
    return a, c


def gru_update(z_c, G_u, c_prev):
    """Fused ``Γu * tanh(z_c) + (1 - Γu) * c<t-1>`` (all (B, H)): the GRU's new memory cell."""
    _same_shape("gru_update", z_c, G_u, c_prev)
    return apply(ops.GRU_UPDATE, z_c, G_u, c_prev)[0]


def gru_gates(z_ur, c_prev):
    """Fused ``Γu = σ(z_u)``, ``Γr = σ(z_r)`` from z_ur (B, 2H) = [z_u, z_r]; returns
    ``(Γu, Γr * c<t-1>)`` — the update gate and the relevance-gated state."""
    B, H = c_prev.shape
    if z_ur.shape != (B, 2 * H):
        raise ValueError(f"gru_gates: z_ur has shape {z_ur.shape}, expected {(B, 2 * H)}")
    u, rc, _ = apply(ops.GRU_GATES, z_ur, c_prev)
    return u, rc


def gru_reset_after(xp, h, c_prev):
    """Fused reset-after GRU gate math (see ``kernels.gru_reset_after_forward``) -> c<t>."""
    B, H = c_prev.shape
    if xp.shape != (B, 3 * H) or h.shape != (B, 3 * H):
        raise ValueError(f"gru_reset_after: xp {xp.shape} and h {h.shape} must be "
                         f"{(B, 3 * H)} for c_prev of shape {(B, H)}")
    return apply(ops.GRU_RESET_AFTER, xp, h, c_prev)[0]


def _same_shape(name, *ts):
    shapes = {t.shape for t in ts}
    if len(shapes) != 1:
        raise ValueError(f"{name}: all inputs must have the same shape, got "
                         f"{[t.shape for t in ts]}")


def one_hot(indices, n, dtype=np.float32):
    """(…) integers in [0, n) -> (…, n) one-hot rows (no gradient)."""
    idx = as_array(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"one_hot: indices must be integers, got dtype {idx.dtype}")
    check_ids("one_hot", idx, n, what="index", size="classes")
    return apply(ops.ONE_HOT, indices if isinstance(indices, Tensor) else idx, n, dtype)


def dropout(x, p=0.5, training=True):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    keep = get_rng().random(x.shape) >= p
    return x * (keep / (1 - p)).astype(x.dtype)
