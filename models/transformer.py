"""Models that attend to themselves: a decoder-only causal Transformer language model (the
same job as ``models.language_model.LanguageModel``, without recurrence) and a masked
language model, BERT or ALBERT.

Built from ``mg.nn``'s Transformer layers; no backward code, as everywhere in ``models/``.

* :class:`TransformerLM` — ŷ<t> = softmax(W h<t> + b) where h<t> is the last layer's output
  at position t, and every layer's self-attention is causal: position t sees x<1..t> only,
  so one forward pass over a teacher-forced sequence gives every step's prediction at once
  (where an RNN needs T steps).  Same ``loss``/``log_prob``/``sample`` as the recurrent
  model (:class:`~models.language_model.Autoregressive`).
* :class:`MaskedLM` — BERT (Devlin et al., 2019): bidirectional self-attention over a
  sentence in which some tokens were replaced by ``[MASK]``; the loss is the cross-entropy
  of the original tokens at the chosen positions only.  ALBERT (Lan et al., 2020) makes two
  changes, each an option: ``embedding_dim`` < ``d_model`` factorises the V×H embedding
  into V×E then E×H, and ``share_layers=True`` applies one layer's weights at every depth.
"""

import numpy as np

import minigrad as mg
from minigrad.attention import additive_mask, check_rows
from minigrad.data import EOS_ID, check_ids
from minigrad.nn import (
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    Module,
    SinusoidalPositionalEmbedding,
    TransformerEncoder,
    TransformerEncoderLayer,
    generate_square_subsequent_mask,
    init,
)
from models.language_model import Autoregressive


def _positions(kind, max_len, d):
    if kind == "learned":
        return LearnedPositionalEmbedding(max_len, d)
    if kind == "sinusoidal":
        return SinusoidalPositionalEmbedding(d, max_len)
    raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {kind!r}")


class TransformerLM(Autoregressive):
    """``TransformerLM(vocab_size, d_model=64, nhead=4, num_layers=2, dim_feedforward=256,
    dropout=0.0, max_len=64, positional='learned', norm_first=True, activation='gelu',
    vocab=None, compiled=True)``: token embedding + positional embedding, ``num_layers`` causal
    ``TransformerEncoderLayer`` s (GPT's pre-norm by default, with a final LayerNorm), a
    Linear read-out.

    ``forward(inputs (B, T) ids, state=None, lengths=None) -> (logits (B, T, V), state)``:
    the state is the ids read so far, so ``sample`` can feed one token at a time (each call
    reads the whole prefix again: there is no key/value cache).  Right padding needs no
    mask: causality keeps every real position from seeing the padding after it.
    """

    def __init__(self, vocab_size, d_model=64, nhead=4, num_layers=2, dim_feedforward=256,
                 dropout=0.0, max_len=64, positional="learned", norm_first=True,
                 activation="gelu", vocab=None, compiled=True):
        super().__init__()
        self.compiled = bool(compiled)  # loss: one function compiled with mg.compile
        if vocab is not None and len(vocab) != vocab_size:
            raise ValueError(f"TransformerLM: vocab has {len(vocab)} tokens but "
                             f"vocab_size={vocab_size}")
        self.vocab_size, self.vocab, self.start_id = vocab_size, vocab, EOS_ID
        self.cell_type, self.max_len = "transformer", max_len
        self.embedding = Embedding(vocab_size, d_model)
        self.pos = _positions(positional, max_len, d_model)
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                        norm_first=norm_first)
        self.encoder = TransformerEncoder(layer, num_layers,
                                          norm=LayerNorm(d_model) if norm_first else None)
        self.out = Linear(d_model, vocab_size)

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, max_len={self.max_len}"

    def _ids(self, inputs, state):
        """The ids read so far, (B, T): a tensor when ``inputs`` is one (what ``mg.compile``
        passes), else an array."""
        ids = inputs if isinstance(inputs, mg.Tensor) else mg.as_array(inputs)
        if ids.ndim != 2:
            raise ValueError(f"TransformerLM: inputs must be (B, T) ids, got shape {ids.shape}")
        if state is not None:
            if isinstance(ids, mg.Tensor) or isinstance(state, mg.Tensor):
                ids = mg.concat([t if isinstance(t, mg.Tensor) else mg.tensor(np.asarray(t))
                                 for t in (state, ids)], axis=1)
            else:
                ids = np.concatenate([state, ids], axis=1)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"TransformerLM: {ids.shape[1]} positions, but the model was "
                             f"built with max_len={self.max_len}")
        return ids

    def forward(self, inputs, state=None, lengths=None, mask=None):
        """``lengths``/``mask`` (right padding) are accepted and need nothing: causality
        keeps every real position from seeing the padding after it."""
        ids = self._ids(inputs, state)
        T = ids.shape[1]
        h = self.encoder(self.pos(self.embedding(ids)), mask=generate_square_subsequent_mask(T),
                         is_causal=True)
        logits = mg.functional.linear(h, self.out.weight, self.out.bias)
        new = np.shape(inputs)[1] if not isinstance(inputs, mg.Tensor) else inputs.shape[1]
        return (logits if new == T else logits[:, T - new:]), ids

    @mg.no_grad()
    def attention_maps(self, inputs):
        """Every layer's causal self-attention weights per head on ``inputs`` (B, T) ids:
        a list of (B, nhead, T, T) arrays; row t is where position t looked."""
        was = self.training
        self.eval()
        ids = self._ids(inputs, None)
        mask = generate_square_subsequent_mask(ids.shape[1])
        x, maps = self.pos(self.embedding(ids)), []
        for layer in self.encoder.layers:
            a = layer.norm1(x) if layer.norm_first else x
            maps.append(layer.self_attn(a, a, a, attn_mask=mask, average_attn_weights=False)[1]
                        .data)
            x = layer(x, src_mask=mask, is_causal=True)
        self.train(was)
        return maps


class MaskedLM(Module):
    """``MaskedLM(vocab_size, d_model=64, nhead=4, num_layers=4, dim_feedforward=256,
    dropout=0.1, max_len=64, embedding_dim=None, share_layers=False, compiled=True)``:
    BERT's encoder and masked-token head; ALBERT with ``embedding_dim`` E < ``d_model`` and
    ``share_layers``; ``loss`` compiled with ``mg.compile`` (``compiled=False``: eager).

    Embedding: tokens (V×E, N(0, 1/E)) + learned positions (max_len×E),
    LayerNorm, then (ALBERT) a
    Linear E→H.  ``num_layers`` post-norm GELU encoder layers (with ``share_layers``, one
    ``layer`` applied ``num_layers`` times).  Head: Linear H→E, GELU, LayerNorm, then the
    token embedding's own weights (tied, as BERT's) plus a bias: logits (B, T, V).
    ``forward(ids (B, T), key_padding_mask=None)``; ``loss(ids, targets, key_padding_mask)``
    averages the cross-entropy over positions where ``targets`` ≥ 0 (the masked ones).
    """

    def __init__(self, vocab_size, d_model=64, nhead=4, num_layers=4, dim_feedforward=256,
                 dropout=0.1, max_len=64, embedding_dim=None, share_layers=False,
                 compiled=True):
        super().__init__()
        self.compiled, self._step = bool(compiled), None  # loss: compiled with mg.compile
        E = embedding_dim or d_model
        self.vocab_size, self.num_layers, self.share_layers = vocab_size, num_layers, \
            share_layers
        self.embedding = Embedding(vocab_size, E)
        # NOTE: N(0, 1/E): the tied read-out h·e then starts with logits of unit scale (N(0, 1)
        # rows made the first loss ~25 nats; BERT's N(0, 0.02²) learned slowly at this size)
        init.normal_(self.embedding.weight, std=E ** -0.5)
        self.pos = LearnedPositionalEmbedding(max_len, E)
        self.embed_norm = LayerNorm(E)
        self.embed_project = Linear(E, d_model) if d_model != E else None
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, "gelu")
        if share_layers:
            self.layer = layer
        else:
            self.encoder = TransformerEncoder(layer, num_layers)
        self.head = Linear(d_model, E)
        self.head_norm = LayerNorm(E)
        self.out_bias = mg.Parameter(np.zeros(vocab_size, np.float32))
        self.dropout = dropout

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, share_layers={self.share_layers}"

    def forward(self, ids, key_padding_mask=None):
        x = self.embed_norm(self.pos(self.embedding(ids)))
        x = mg.dropout(x, self.dropout, self.training)
        if self.embed_project is not None:
            x = self.embed_project(x)
        if self.share_layers:
            for _ in range(self.num_layers):
                x = self.layer(x, src_key_padding_mask=key_padding_mask)
        else:
            x = self.encoder(x, src_key_padding_mask=key_padding_mask)
        h = self.head_norm(mg.functional.gelu(mg.functional.linear(x, self.head.weight,
                                                                  self.head.bias)))
        return mg.functional.linear(h, self.embedding.weight, self.out_bias)  # tied weights

    def loss(self, ids, targets, key_padding_mask=None):
        """Mean cross-entropy of the original tokens at the positions where ``targets`` ≥ 0
        (the chosen 15 %); the others are ignored (-1)."""
        ids, targets = mg.as_array(ids), mg.as_array(targets)
        # checked here, in Python: a compiled call runs none of the model's own checks
        check_ids("MaskedLM.loss", ids, self.vocab_size, what="input")
        check_ids("MaskedLM.loss", targets[targets >= 0], self.vocab_size, what="target")
        if key_padding_mask is not None:
            check_rows(additive_mask(key_padding_mask, np.float32, "MaskedLM.loss")[:, None],
                       "MaskedLM.loss")
        args = (ids, np.maximum(targets, 0), targets >= 0, key_padding_mask)
        if not self.compiled:
            return self._loss(*args)
        if self._step is None:
            self._step = mg.compile(self._loss)
        return self._step(*args)

    def _loss(self, ids, targets, mask, key_padding_mask):
        """The loss from arrays as tensors (what ``mg.compile`` traces)."""
        return mg.cross_entropy(self(ids, key_padding_mask), targets, mask=mask)


__all__ = ["MaskedLM", "TransformerLM"]
