"""Functions on tensors that are not methods: losses, one-hot, dropout, activations.

All are compositions of Tensor operations (no backward code here).
"""


import numpy as np

from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply, as_array, cross_entropy_rows
from minigrad.data import check_ids
from minigrad.random import get_rng


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
