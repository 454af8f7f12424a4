"""Functional forms of the Transformer's pieces: GELU, linear, layer normalisation, scaled
dot-product attention with masks, and the causal mask — PyTorch's ``torch.nn.functional``
semantics.

Each is one fused primitive from :mod:`minigrad.core.ops` (``gelu``, ``linear``,
``layer_norm``, ``attention``) behind the checks that give bad input an early, named error.
Masks become one *additive* float array (0 where a query may look, -inf where it may not)
before they reach the primitive; a query row whose every key is masked raises ``ValueError`` here,
instead of PyTorch's silent NaN.  The modules built on these live in
:mod:`minigrad.transformer`.
"""

import math

import numpy as np

from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply, as_array


def _float_tensor(where, name, x):
    if not isinstance(x, Tensor):
        x = Tensor(np.asarray(x))
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: {name} must be a float32 or float64 tensor, got dtype "
                        f"{x.dtype}")
    return x


def gelu(x, approximate="none"):
    """GELU(x) = x·Φ(x) = ½x(1 + erf(x/√2)), Φ the standard normal CDF (Hendrycks & Gimpel,
    2016; BERT's activation).  ``approximate='tanh'``: ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply(ops.GELU, _float_tensor("gelu", "input", x), approximate)


def linear(x, weight, bias=None):
    """y = x Wᵀ + b for x (..., in_features), weight (out_features, in_features), bias
    (out_features,) or None: ``nn.Linear``'s function as one fused row (PyTorch's F.linear)."""
    x = _float_tensor("linear", "input", x)
    if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1] \
            or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"linear: input {x.shape}, weight {weight.shape} and bias "
                         f"{None if bias is None else bias.shape} do not fit: expected "
                         "(..., I), (O, I) and (O,)")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"linear: input {x.dtype}, weight {weight.dtype} and bias "
                        f"{None if bias is None else bias.dtype} must share one float dtype")
    return apply(ops.LINEAR, x, weight, bias)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing ``normalized_shape`` axes (Ba, Kiros & Hinton, 2016):
    y = (x - μ) / √(σ² + eps) · weight + bias, μ and σ² (biased) per sample.

    x (..., *normalized_shape); weight, bias of shape ``normalized_shape`` or None."""
    x = _float_tensor("layer_norm", "input", x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
        tuple(normalized_shape)
    if not shape or x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end with "
                         f"normalized_shape {shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != shape or p.dtype != x.dtype):
            raise ValueError(f"layer_norm: {name} has shape {p.shape} and dtype {p.dtype}; "
                             f"expected {shape} and the input's {x.dtype}")
    weight = np.ones(shape, x.dtype) if weight is None else weight  # constants: no gradient
    bias = np.zeros(shape, x.dtype) if bias is None else bias
    return apply(ops.LAYER_NORM, x, weight, bias, len(shape), float(eps))[0]


def generate_square_subsequent_mask(sz, dtype=np.float32):
    """The causal mask, as ``torch.nn.Transformer.generate_square_subsequent_mask``: an
    (sz, sz) float array, -inf above the diagonal (position i may not see j > i), else 0."""
    return np.triu(np.full((sz, sz), -np.inf, dtype=dtype), k=1)


def additive_mask(mask, dtype, where, masked_when=True):
    """A mask as an additive float array: a float mask is kept (cast to ``dtype``); in a
    bool mask the entries equal to ``masked_when`` become -inf, the others 0."""
    m = as_array(mask)
    if m.dtype == np.bool_:
        return np.where(m == masked_when, -np.inf, 0.0).astype(dtype)
    if m.dtype.kind != "f":
        raise TypeError(f"{where}: a mask must be bool or float (added to the scores), got "
                        f"dtype {m.dtype}")
    return m.astype(dtype, copy=False)


def check_rows(mask, where):
    """Raise if some query row of an additive mask (..., L, S) has every key at -inf: its
    softmax would be 0/0 (PyTorch returns NaN there)."""
    empty = np.isneginf(mask).all(axis=-1)
    if empty.any():
        at = tuple(int(i) for i in np.argwhere(empty)[0])
        raise ValueError(f"{where}: every key is masked for query position {at[-1]}"
                         + (f" of batch element {at[0]}" if len(at) > 1 else "")
                         + f" (index {at} into the mask of shape {mask.shape} without its key "
                         "axis): its softmax would be 0/0. Every query needs a key it may "
                         "attend to (is a sequence all padding?)")


def attend(q, k, v, heads, mask, dropout_p, scale):
    """The attention primitive: q (B, L, ·, E), k (B, S, ·, E), v (B, S, ·, Ev) tensors, head
    h reading slot q0 + h, k0 + h, v0 + h of them for ``heads`` = (q0, k0, v0, H); k or v
    None means the same tensor as the one before it (a packed projection).  ``mask`` is an
    additive array broadcasting to (B, H, L, S), already checked, or None.  Returns
    (out (B, L, H, Ev), weights (B, H, L, S)), the weights after dropout as PyTorch's
    ``need_weights``."""
    B, L, S = q.shape[0], q.shape[1], (q if k is None else k).shape[1]
    if not isinstance(mask, Tensor):  # (a tensor: a key-padding mask (B, 1, 1, S), see _mask)
        mask = np.zeros((1, 1, 1, S), q.dtype) if mask is None else mask.reshape(
            (1,) * (4 - mask.ndim) + mask.shape)
        mask = np.ascontiguousarray(np.broadcast_to(mask, mask.shape[:3] + (S,)))
    drop = None  # the draw is a row, so that a compiled step draws what the eager one does
    if dropout_p > 0:
        drop = apply(ops.DROPOUT_SCALE, (B, heads[3], L, S), dropout_p, q.dtype)
    out, weights, _ = apply(ops.ATTENTION, q, k, v, heads, mask, drop, scale)
    return out, weights


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None):
    """softmax(Q Kᵀ / √E + M) V (Vaswani et al., 2017), as ``torch.nn.functional.
    scaled_dot_product_attention``: query (..., L, E), key (..., S, E), value (..., S, Ev)
    with equal leading axes -> (..., L, Ev).

    ``attn_mask`` broadcasts to (..., L, S): bool (True = *may* attend, PyTorch's convention
    here — the opposite of ``MultiheadAttention``'s) or float (added to the scores);
    ``is_causal`` masks j > i; ``scale`` defaults to 1/√E; ``dropout_p`` drops weights
    (pass 0 when evaluating).
    """
    where = "scaled_dot_product_attention"
    q, k, v = (_float_tensor(where, n, t) for n, t in (("query", query), ("key", key),
                                                       ("value", value)))
    if q.ndim < 2 or q.ndim != k.ndim or k.ndim != v.ndim or q.shape[:-2] != k.shape[:-2] \
            or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{where}: expected query (..., L, E), key (..., S, E) and value "
                         f"(..., S, Ev) with equal leading axes; got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{where}: query, key and value must share a dtype, got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}")
    if not 0 <= dropout_p < 1:
        raise ValueError(f"{where}: dropout_p must be in [0, 1), got {dropout_p}")
    L, S = q.shape[-2], k.shape[-2]
    mask = None
    if attn_mask is not None:
        mask = additive_mask(attn_mask, q.dtype, where, masked_when=False)
        try:
            np.broadcast_shapes(mask.shape, q.shape[:-1] + (S,))
        except ValueError:
            raise ValueError(f"{where}: attn_mask of shape {mask.shape} does not broadcast "
                             f"to (..., L, S) = {q.shape[:-1] + (S,)}") from None
    if is_causal:
        causal = np.triu(np.full((L, S), -np.inf, q.dtype), k=1)
        mask = causal if mask is None else mask + causal
    if mask is not None:
        check_rows(mask, where)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    # The primitive's layout is (B, L, heads, E): here every leading axis goes into B.
    lead = q.shape[:-2]
    if mask is not None:
        mask = np.broadcast_to(mask, lead + (L, S)).reshape(-1, 1, L, S)
    out = attend(*(t.reshape(-1, t.shape[-2], 1, t.shape[-1]) for t in (q, k, v)),
                 (0, 0, 0, 1), mask, float(dropout_p), scale)[0]
    return out.reshape(lead + (L, v.shape[-1]))


__all__ = ["additive_mask", "attend", "check_rows", "gelu", "generate_square_subsequent_mask",
           "layer_norm", "linear", "scaled_dot_product_attention"]
