"""Functions on tensors that are not methods: losses, one-hot, dropout, activations.

All are compositions of Tensor operations (no backward code here).  The Transformer's
``gelu``, ``layer_norm`` and ``scaled_dot_product_attention`` come from
:mod:`minigrad.attention`.
"""


import numpy as np

from minigrad.attention import gelu, layer_norm, linear, scaled_dot_product_attention
from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply, as_array
from minigrad.data import check_ids


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
    # The ids, the weights and the mean's count are rows too, so that mg.compile traces them.
    V, t = lshape[-1], (targets if isinstance(targets, Tensor) else Tensor(t)).reshape(-1)
    if mask is None:
        check_ids("cross_entropy", t.data, V, what="target", size="classes")
        w = apply(ops.FULL, t.shape, 1, logits.dtype)
    else:
        m = mask if isinstance(mask, Tensor) else Tensor(as_array(mask))
        if m.shape != lshape[:-1]:
            raise ValueError(f"cross_entropy: mask has shape {m.shape}, expected {lshape[:-1]}")
        m = m.reshape(-1)
        check_ids("cross_entropy", t.data[m.data != 0], V, what="target", size="classes")
        w, t = m.astype(logits.dtype), where(m, t, 0)  # padding may hold any id
    loss = apply(ops.CROSS_ENTROPY, logits.reshape(-1, V), t.astype(np.int64), w)[0]
    if reduction == "none":  # (output 1 of the row is the logsumexp)
        return loss.reshape(lshape[:-1])
    total = loss.sum()
    return total if reduction == "sum" else total / w.sum().clip(1.0, None)


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
    return x * apply(ops.DROPOUT_SCALE, x.shape, p, x.dtype)


def addmm(c, a, b):
    """``c + a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N); ``c`` broadcasts to (M, N)."""
    c, a, b = (t if isinstance(t, Tensor) else Tensor(np.asarray(t))
               for t in (c, a, b))
    sa, sb, sc = a.data.shape, b.data.shape, c.data.shape
    if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[0]:
        raise ValueError(f"addmm: shapes {sa} and {sb} do not match: expected (M, K) @ (K, N)")
    if sc != (sa[0], sb[1]) and (len(sc) > 2 or any(
            n not in (1, m) for n, m in zip(sc[::-1], (sb[1], sa[0])))):
        raise ValueError(f"addmm: c of shape {sc} does not broadcast to (M, N) = "
                         f"{(sa[0], sb[1])}")
    return c + a @ b  # the weight's gradient stays an OuterSum (one GEMM after a loop)


def where(cond, a, b):
    """Elementwise ``a`` where ``cond`` else ``b``; gradients flow to the chosen branch."""
    cond = cond if isinstance(cond, Tensor) else np.asarray(as_array(cond), dtype=bool)
    a, b = _operand(a), _operand(b)
    try:
        np.broadcast_shapes(cond.shape, np.shape(as_array(a)), np.shape(as_array(b)))
    except ValueError:
        raise ValueError(f"where: shapes {cond.shape}, {np.shape(as_array(a))} and "
                         f"{np.shape(as_array(b))} are not broadcastable") from None
    return apply(ops.WHERE, cond, a, b)


def _operand(x):
    """A tensor, or a Python number as it is (the primitive broadcasts it)."""
    return x if isinstance(x, (Tensor, int, float)) else Tensor(np.asarray(x))


__all__ = ["addmm", "cross_entropy", "dropout", "gelu", "layer_norm", "linear", "log_softmax",
           "one_hot", "relu", "scaled_dot_product_attention", "sigmoid", "softmax", "tanh",
           "where"]
