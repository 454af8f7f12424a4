"""Transformer layers with PyTorch's semantics, argument names and parameter names, reached as
``mg.nn.<Name>``: ``LayerNorm``, ``GELU``, ``MultiheadAttention``, ``TransformerEncoderLayer``,
``TransformerDecoderLayer``, the stacks ``TransformerEncoder``/``TransformerDecoder``, and
positional embeddings (``SinusoidalPositionalEmbedding``, ``LearnedPositionalEmbedding``).

Notation (Vaswani et al., 2017): a batch of sequences is (B, T, d_model), batch first —
``batch_first=True`` is the default here (PyTorch's default is False; ``batch_first=False``
takes (T, B, d_model) as PyTorch does).  Queries have length L, keys and values length S.

* ``MultiheadAttention``: Q, K, V = x W_qᵀ, x W_kᵀ, x W_vᵀ (+ biases), stacked as
  ``in_proj_weight`` (3E, E) and ``in_proj_bias`` (3E); each of the h heads attends with
  softmax(Q_i K_iᵀ / √(E/h) + M) V_i, and ``out_proj`` maps the joined heads back to E.
  Masks as PyTorch's: ``key_padding_mask`` (B, S) and ``attn_mask`` (L, S) or (B·h, L, S),
  bool (True = may *not* attend) or float (added).  A query row left with no key raises
  ``ValueError`` where PyTorch returns NaN.  ``is_causal=True`` without ``attn_mask`` builds
  the causal mask (PyTorch requires the mask as well).
* Encoder layer: post-norm ``x = LN(x + SA(x)); x = LN(x + FF(x))``, or with
  ``norm_first=True`` pre-norm ``x = x + SA(LN(x)); x = x + FF(LN(x))``, with
  FF(x) = W₂ act(W₁x + b₁) + b₂.  The decoder layer adds cross-attention to ``memory``
  between the two.  The stacks deep-copy the layer ``num_layers`` times, as PyTorch does
  (so every layer starts from the same weights).

Every module takes ``dtype=``; float inputs must have the module's dtype (as ``nn.Linear``).
``models.interop`` moves the weights to and from PyTorch state dicts under the same names.
"""

import copy
import math

import numpy as np

from minigrad import attention as F
from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply, as_array
from minigrad.nn import Dropout, Linear, Module, ModuleList, Parameter, ReLU, _positive_int, init


def _check_input(where, x, dtype, last=None, ndims=None):
    """``x`` as a float Tensor of the module's dtype (with ``ndims`` axes and the last one of
    size ``last``, when given)."""
    x = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
    if x.dtype.kind != "f":
        raise TypeError(f"{where}: expected a float input, got dtype {x.dtype} (token ids? "
                        "look them up with nn.Embedding first)")
    if x.dtype != dtype:
        raise TypeError(f"{where}: input has dtype {x.dtype} but the module is {dtype}; convert "
                        f"the input (x.astype(np.{dtype})) or build the module with "
                        f"dtype=np.{x.dtype}")
    if (ndims is not None and x.ndim not in ndims) or x.ndim == 0 or \
            (last is not None and x.shape[-1] != last):
        shapes = " or ".join(f"({', '.join(['·'] * (n - 1) + [str(last)])})"
                             for n in ndims or (3,))
        raise ValueError(f"{where}: expected input of shape {shapes}, got {x.shape}")
    return x


class LayerNorm(Module):
    """``LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``: each
    sample normalised over its trailing ``normalized_shape`` axes, then scaled by ``weight``
    (ones) and shifted by ``bias`` (zeros).  See :func:`minigrad.attention.layer_norm`."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            else tuple(normalized_shape)
        self.normalized_shape = tuple(_positive_int("LayerNorm", "normalized_shape", n)
                                      for n in shape)
        if not eps > 0:
            raise ValueError(f"LayerNorm: eps must be > 0, got {eps}")
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)
        self.dtype = np.dtype(dtype)
        affine = elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if affine and bias \
            else None

    def forward(self, x):
        x = _check_input("LayerNorm", x, self.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GELU(Module):
    """``GELU(approximate='none'|'tanh')``: x·Φ(x); see :func:`minigrad.attention.gelu`."""

    def __init__(self, approximate="none"):
        super().__init__()
        F.gelu(np.zeros(1), approximate)  # validates approximate
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class MultiheadAttention(Module):
    """``MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
    add_zero_attn=False, kdim=None, vdim=None, batch_first=True)`` (see the module docs).

    Parameters as PyTorch's: ``in_proj_weight`` (3E, E, Xavier-uniform) and ``in_proj_bias``
    (3E, zeros); when ``kdim``/``vdim`` differ from E, ``q_proj_weight`` (E, E),
    ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim) instead of ``in_proj_weight``;
    ``out_proj`` a Linear(E, E) with zero bias.  ``dropout`` drops attention weights while
    training.  ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` returns ``(output (B, L, E),
    weights)``: weights (B, L, S) averaged over heads, (B, h, L, S) with
    ``average_attn_weights=False``, None with ``need_weights=False``.  Unbatched inputs
    (L, E) work too.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=True,
                 dtype=np.float32):
        super().__init__()
        where = "MultiheadAttention"
        E = self.embed_dim = _positive_int(where, "embed_dim", embed_dim)
        self.num_heads = _positive_int(where, "num_heads", num_heads)
        if E % self.num_heads:
            raise ValueError(f"{where}: embed_dim {E} must be divisible by num_heads "
                             f"{self.num_heads}")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError(f"{where}: add_bias_kv and add_zero_attn are not "
                                      "supported")
        if not 0 <= dropout < 1:
            raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout}")
        self.head_dim, self.dropout, self.batch_first = E // self.num_heads, float(dropout), \
            bool(batch_first)
        self.kdim = E if kdim is None else _positive_int(where, "kdim", kdim)
        self.vdim = E if vdim is None else _positive_int(where, "vdim", vdim)
        self.dtype = np.dtype(dtype)

        def weight(n_in, n_out=E):
            return init.xavier_uniform_(Parameter(np.zeros((n_out, n_in), dtype)))

        if self.kdim == E and self.vdim == E:
            self.in_proj_weight = weight(E, 3 * E)
        else:
            self.in_proj_weight = None
            self.q_proj_weight, self.k_proj_weight = weight(E), weight(self.kdim)
            self.v_proj_weight = weight(self.vdim)
        self.in_proj_bias = Parameter(np.zeros(3 * E, dtype)) if bias else None
        self.out_proj = Linear(E, E, bias=bias, dtype=dtype)
        if bias:
            init.zeros_(self.out_proj.bias)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        where, E, H, hd = "MultiheadAttention", self.embed_dim, self.num_heads, self.head_dim
        packed = query is key and key is value and self.in_proj_weight is not None
        q, k, v = (_check_input(where, t, self.dtype, n, ndims=(2, 3))
                   for t, n in ((query, E), (key, self.kdim), (value, self.vdim)))
        batched = q.ndim == 3
        if not (q.ndim == k.ndim == v.ndim):
            raise ValueError(f"{where}: query, key and value must all be batched (3-D) or "
                             f"all unbatched (2-D), got shapes {q.shape}, {k.shape}, {v.shape}")
        if not batched:
            q, k, v = (t.reshape(1, *t.shape) for t in (q, k, v))
            if key_padding_mask is not None:
                key_padding_mask = as_array(key_padding_mask)[None]
        elif not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        (B, L, _), S = q.shape, k.shape[1]
        if k.shape[:2] != v.shape[:2] or k.shape[0] != B:
            raise ValueError(f"{where}: key {k.shape} and value {v.shape} need the same batch "
                             f"and length, and the query's batch {B}")
        w, b = self.in_proj_weight, self.in_proj_bias

        def rows(t, lo, hi):  # t[lo·E : hi·E] of the stacked weight or bias
            return None if t is None else t[lo * E:hi * E]

        if packed:  # self-attention: one GEMM for Q, K and V, read in place by the primitive
            qkv = (F.linear(q, w, b).reshape(B, L, 3 * H, hd), None, None)
            heads = (0, H, 2 * H, H)
        elif key is value and w is not None:  # one GEMM for K and V
            qkv = (F.linear(q, rows(w, 0, 1), rows(b, 0, 1)).reshape(B, L, H, hd),
                   F.linear(k, rows(w, 1, 3), rows(b, 1, 3)).reshape(B, S, 2 * H, hd),
                   None)
            heads = (0, 0, H, H)
        else:
            ws = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight) if w is None \
                else (rows(w, 0, 1), rows(w, 1, 2), rows(w, 2, 3))
            qkv = tuple(F.linear(t, wi, rows(b, i, i + 1)).reshape(B, t.shape[1], H, hd)
                        for i, (t, wi) in enumerate(zip((q, k, v), ws)))
            heads = (0, 0, 0, H)
        mask = self._mask(key_padding_mask, attn_mask, is_causal, B, L, S)
        out, weights = F.attend(*qkv, heads, mask, self.dropout if self.training else 0.0,
                                1 / math.sqrt(hd))
        out = _linear(self.out_proj, out.reshape(B, L, E))
        if not batched:
            out = out.reshape(L, E)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(axis=1) if average_attn_weights else weights
        return out, weights if batched else weights.reshape(weights.shape[1:])

    def _mask(self, key_padding_mask, attn_mask, is_causal, B, L, S):
        """One additive mask broadcasting to (B, h, L, S), or None; rows checked."""
        where, H = "MultiheadAttention", self.num_heads
        mask = None
        if attn_mask is not None:
            mask = F.additive_mask(attn_mask, self.dtype, where)
            if mask.shape == (B * H, L, S):
                mask = mask.reshape(B, H, L, S)
            elif mask.shape != (L, S):
                raise ValueError(f"{where}: attn_mask must have shape (L, S) = {(L, S)} or "
                                 f"(B·num_heads, L, S) = {(B * H, L, S)}, got {mask.shape}")
        elif is_causal:
            mask = F.generate_square_subsequent_mask(max(L, S), self.dtype)[:L, :S]
        if key_padding_mask is not None:
            kp = F.additive_mask(key_padding_mask, self.dtype, where)
            if kp.shape != (B, S):
                raise ValueError(f"{where}: key_padding_mask must have shape (B, S) = "
                                 f"{(B, S)}, got {kp.shape}")
            if isinstance(key_padding_mask, Tensor) and mask is None:  # rows: mg.compile traces
                F.check_rows(kp[:, None], where)
                m = key_padding_mask.reshape(B, 1, 1, S)
                return (apply(ops.WHERE, m, -np.inf, 0.0) if m.dtype == np.bool_ else m) \
                    .astype(self.dtype)
            kp = kp.reshape(B, 1, 1, S)
            mask = kp if mask is None else mask + kp
        if mask is not None:
            F.check_rows(mask, where)
        return mask


def _linear(layer, x):
    """An nn.Linear's function as the one fused ``linear`` row."""
    return F.linear(x, layer.weight, layer.bias)


def _activation(activation):
    if callable(activation):
        return activation
    if activation == "relu":
        return ReLU()
    if activation == "gelu":
        return GELU()
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")


class _Layer(Module):
    """What the encoder and decoder layers share: self-attention, the feed-forward block and
    ``n_norms`` LayerNorms (``norm1`` ...) with a dropout after each sub-block."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                 batch_first, norm_first, bias, dtype, cross):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, dtype=dtype)
        if cross:
            self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                     batch_first=batch_first, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = bool(norm_first)
        for i in range(1, 3 + cross):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias,
                                                dtype=dtype))
        for i in range(1, 3 + cross):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation)

    def _residual(self, x, norm, block, *args):
        """Post-norm LN(x + block(x)), or pre-norm x + block(LN(x))."""
        if self.norm_first:
            return x + block(norm(x), *args)
        return norm(x + block(x, *args))

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        return self.dropout1(self.self_attn(x, x, x, attn_mask=attn_mask,
                                            key_padding_mask=key_padding_mask,
                                            need_weights=False, is_causal=is_causal)[0])

    def _ff_block(self, x, dropout):
        h = self.dropout(self.activation(_linear(self.linear1, x)))
        return dropout(_linear(self.linear2, h))


class TransformerEncoderLayer(_Layer):
    """``TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1,
    activation='relu', layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True)``:
    self-attention then feed-forward, each with a residual connection and LayerNorm.
    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True,
                 dtype=np.float32):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         batch_first, norm_first, bias, dtype, cross=False)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = self._residual(src, self.norm1, self._sa_block, src_mask, src_key_padding_mask,
                           is_causal)
        return self._residual(x, self.norm2, self._ff_block, self.dropout2)


class TransformerDecoderLayer(_Layer):
    """``TransformerDecoderLayer(d_model, nhead, ...)`` (the encoder layer's arguments):
    masked self-attention, cross-attention to ``memory``, then feed-forward.
    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)``."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True,
                 dtype=np.float32):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         batch_first, norm_first, bias, dtype, cross=True)

    def _mha_block(self, x, memory, attn_mask, key_padding_mask, is_causal):
        return self.dropout2(self.multihead_attn(x, memory, memory, attn_mask=attn_mask,
                                                 key_padding_mask=key_padding_mask,
                                                 need_weights=False, is_causal=is_causal)[0])

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = self._residual(tgt, self.norm1, self._sa_block, tgt_mask, tgt_key_padding_mask,
                           tgt_is_causal)
        x = self._residual(x, self.norm2, self._mha_block, memory, memory_mask,
                           memory_key_padding_mask, memory_is_causal)
        return self._residual(x, self.norm3, self._ff_block, self.dropout3)


class TransformerEncoder(Module):
    """``TransformerEncoder(encoder_layer, num_layers, norm=None)``: ``num_layers`` deep
    copies of ``encoder_layer`` (``layers.0`` ...) and an optional final ``norm``.
    ``forward(src, mask=None, src_key_padding_mask=None, is_causal=None)``."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True,
                 mask_check=True):
        super().__init__()
        self.num_layers = _positive_int("TransformerEncoder", "num_layers", num_layers)
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(Module):
    """``TransformerDecoder(decoder_layer, num_layers, norm=None)``, as the encoder stack.
    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False)``."""

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__()
        self.num_layers = _positive_int("TransformerDecoder", "num_layers", num_layers)
        self.layers = ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                      memory_key_padding_mask, bool(tgt_is_causal), memory_is_causal)
        return x if self.norm is None else self.norm(x)


class SinusoidalPositionalEmbedding(Module):
    """Fixed positions (Vaswani et al., §3.5): PE(pos, 2i) = sin(pos / 10000^(2i/d)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).  ``forward(x (..., T, d), offset=0)`` returns
    x + PE[offset : offset + T].  No parameters."""

    def __init__(self, embedding_dim, max_len=5000, dtype=np.float32):
        super().__init__()
        d = self.embedding_dim = _positive_int(type(self).__name__, "embedding_dim",
                                               embedding_dim)
        self.max_len, self.dtype = _positive_int(type(self).__name__, "max_len", max_len), \
            np.dtype(dtype)
        angle = np.arange(max_len)[:, None] / 10000.0 ** (np.arange(0, d, 2) / d)
        pe = np.zeros((max_len, d))
        pe[:, 0::2], pe[:, 1::2] = np.sin(angle), np.cos(angle[:, :d // 2])
        self.pe = Tensor(pe.astype(dtype))  # a tensor: a compiled step reads it, not a copy

    def table(self, offset, T):
        return self.pe[offset:offset + T]

    def forward(self, x, offset=0):
        x = _check_input(type(self).__name__, x, self.dtype, self.embedding_dim)
        if x.ndim < 2:
            raise ValueError(f"{type(self).__name__}: expected input (..., T, "
                             f"{self.embedding_dim}), got shape {x.shape}")
        T = x.shape[-2]
        if not offset >= 0 or offset + T > self.max_len:
            raise ValueError(f"{type(self).__name__}: positions {offset}..{offset + T - 1} "
                             f"are beyond max_len={self.max_len}")
        return x + self.table(offset, T)

    def extra_repr(self):
        return f"{self.max_len}, {self.embedding_dim}"


class LearnedPositionalEmbedding(SinusoidalPositionalEmbedding):
    """A learned row per position (BERT, GPT): ``weight`` (max_len, d) starts N(0, 0.02²).
    ``forward(x (..., T, d), offset=0)`` returns x + weight[offset : offset + T]."""

    def __init__(self, max_len, embedding_dim, dtype=np.float32):
        Module.__init__(self)
        self.embedding_dim = _positive_int(type(self).__name__, "embedding_dim", embedding_dim)
        self.max_len = _positive_int(type(self).__name__, "max_len", max_len)
        self.dtype = np.dtype(dtype)
        self.weight = init.normal_(Parameter(np.zeros((max_len, embedding_dim), dtype)),
                                   std=0.02)

    def table(self, offset, T):
        return self.weight[offset:offset + T]


__all__ = ["GELU", "LayerNorm", "LearnedPositionalEmbedding", "MultiheadAttention",
           "SinusoidalPositionalEmbedding", "TransformerDecoder", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerEncoderLayer"]
