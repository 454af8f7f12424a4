"""Sequence to sequence: the chapter's many-to-many RNN with T_x ≠ T_y (encoder–decoder).

An *encoder* RNN reads the whole input x<1>, …, x<T_x> and summarises it in its final
state; a *decoder* RNN starts from that state and generates y<1>, …, y<T_y> one token at a
time, each step reading the token it produced last::

    encoder:  a<t'> = RNN_enc(x<t'>, a<t'-1>),        t' = 1..T_x,   a<0> = 0
    bridge:   s<0>  = a<T_x>                         (see below for a bidirectional encoder)
    decoder:  s<t>  = RNN_dec(y<t-1>, s<t-1>),        t = 1..T_y,    y<0> = <EOS>
              ŷ<t>  = softmax(W_y s<t> + b_y)

The start token y<0> is ``<EOS>``, as in :mod:`models.language_model`: the decoder is a
conditional language model of the target, P(y<1..T_y> | x) = Π_t P(y<t> | y<1..t-1>, x),
and every target sequence ends with ``<EOS>`` so the model learns where to stop.

Training uses teacher forcing: the decoder reads the *true* previous tokens (the targets
shifted right behind the start token), so all T_y steps run in one call and the loss is the
per-token cross-entropy, masked for padding.  :meth:`Seq2Seq.translate` instead feeds each
predicted token back in (greedy by default) until ``<EOS>``.

Padding never reaches the encoder state: the encoder runs with the source ``lengths``, so
each sequence's final state is its state at its own last token (and a bidirectional
encoder's backward direction starts there).

Optional attention (``attention=True``; Luong et al. 2015, "global attention" with the
"general" score, no input feeding).  The decoder state s<t> looks at every encoder output
a<t'> instead of only at the last one::

    e<t,t'>   = s<t>ᵀ W_α a<t'>                        alignment score
    α<t,t'>   = exp(e<t,t'>) / Σ_t'' exp(e<t,t''>)     softmax over the source positions
    c<t>      = Σ_t' α<t,t'> a<t'>                     context vector
    s~<t>     = tanh(W_c [c<t>, s<t>] + b_c)            attentional state
    ŷ<t>      = softmax(W_y s~<t> + b_y)

Padded source positions get α = 0 exactly (their score is replaced by a large negative
number before the softmax).  The context does not feed back into the decoder RNN, so the
decoder stays a plain stacked layer and teacher forcing is still one call.

No backward code here: the tape differentiates encoder, bridge, attention and decoder.
"""


import numpy as np

import minigrad as mg
from minigrad.data import EOS_ID, PAD_ID, UNK_ID, check_ids, check_lengths, pad_batch
from minigrad.nn import Embedding, Linear, Module
from models.language_model import check_temperature, draw
from models.layers import LAYERS

_MASKED_SCORE = -1e9  # NOTE: finite, not -inf: exp underflows to exactly 0, no inf - inf


def _ids(name, x, vocab_size, what):
    """A (B, T) integer id array (from a Tensor, list or array), with a clear error."""
    x = mg.as_array(x)
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise ValueError(f"Seq2Seq.{name}: {what} must be (B, T) integer token ids, got shape "
                         f"{x.shape} dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"Seq2Seq.{name}: {what} is empty (shape {x.shape})")
    return check_ids(f"Seq2Seq.{name}", x, vocab_size, what=f"{what} token id")


def _valid(name, lengths, B, T, what):
    """(B, T) bool, True where a step is real, from (B,) lengths in 1..T (the one rule,
    ``check_lengths``); None: all T long."""
    if lengths is None:
        return np.ones((B, T), dtype=bool)
    lengths = check_lengths(f"Seq2Seq.{name}", lengths, B, T, what)
    return np.arange(T)[None, :] < lengths[:, None]


class Seq2Seq(Module):
    """``Seq2Seq(src_vocab_size, tgt_vocab_size, hidden_size, cell='gru', num_layers=1,
    embedding_dim=None, bidirectional_encoder=False, attention=False, dtype=np.float32,
    **cell_options)``.

    * ``cell``: 'gru', 'lstm' or 'rnn' for both encoder and decoder; ``cell_options`` go to
      every cell (e.g. ``full=False``, ``peephole=True``, ``nonlinearity='relu'``).
    * ``num_layers``: L stacked layers in the encoder and in the decoder; decoder layer l
      starts from encoder layer l's final state.
    * ``embedding_dim=None`` feeds one-hot token vectors (computed as a row lookup); an
      integer adds a source and a target ``Embedding``.
    * ``bidirectional_encoder=True``: every encoder layer reads the source both ways.  Its
      final state per layer, [a→<T_x>, a←<1>] (B, 2H), is *projected* to the decoder's size
      H, because the decoder is unidirectional::

          s<0> = tanh(W_s [a→<T_x>, a←<1>] + b_s)        (W_s shared by all layers)

      (Bahdanau et al. 2015 initialise from the backward state alone; the projection
      sees both directions and lets training pick.)  For an LSTM the memory cell gets its
      own, linear projection, c_s<0> = W_sc [c→, c←] + b_sc, since c is not bounded by
      tanh.  A unidirectional encoder's final state is used as is, with no parameters.
    * ``attention=True``: Luong "general" attention over the encoder outputs (module
      docstring).
    * ``dtype``: of every parameter (float64 for gradient checks).

    Token ids follow :class:`minigrad.data.Vocab`: ``<PAD>`` = 0, ``<UNK>`` = 1,
    ``<EOS>`` = 2 (also the decoder's start token).
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, hidden_size, cell="gru", num_layers=1,
                 embedding_dim=None, bidirectional_encoder=False, attention=False,
                 dtype=np.float32, **cell_options):
        super().__init__()
        if cell not in LAYERS:
            raise ValueError(f"Seq2Seq: unknown cell {cell!r}; expected one of {sorted(LAYERS)}")
        for name, v in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
            if not isinstance(v, (int, np.integer)) or v < 3:
                raise ValueError(f"Seq2Seq: {name} must be an integer >= 3 (<PAD>, <UNK>, "
                                 f"<EOS>), got {v!r}")
        if not isinstance(hidden_size, (int, np.integer)) or hidden_size < 1:
            raise ValueError(f"Seq2Seq: hidden_size must be a positive integer, got "
                             f"{hidden_size!r}")
        H = int(hidden_size)
        self.src_vocab_size, self.tgt_vocab_size = int(src_vocab_size), int(tgt_vocab_size)
        self.hidden_size, self.cell_type, self.num_layers = H, cell, num_layers
        self.bidirectional_encoder, self.attention = bool(bidirectional_encoder), bool(attention)
        self.dtype = dtype
        self.start_id = EOS_ID
        if embedding_dim:
            self.src_embedding = Embedding(self.src_vocab_size, embedding_dim, dtype=dtype)
            self.tgt_embedding = Embedding(self.tgt_vocab_size, embedding_dim, dtype=dtype)
        else:
            self.src_embedding = self.tgt_embedding = None
        layer = LAYERS[cell]
        self.encoder = layer(embedding_dim or self.src_vocab_size, H, num_layers=num_layers,
                             bidirectional=self.bidirectional_encoder, dtype=dtype,
                             **cell_options)
        self.decoder = layer(embedding_dim or self.tgt_vocab_size, H, num_layers=num_layers,
                             dtype=dtype, **cell_options)
        D = 2 if self.bidirectional_encoder else 1
        self.lstm = cell == "lstm"
        self.bridge = self.bridge_c = self.attn_score = self.attn_combine = None
        if self.bidirectional_encoder:
            self.bridge = Linear(2 * H, H, dtype=dtype)  # s<0> = tanh(W_s [a→, a←] + b_s)
            if self.lstm:
                self.bridge_c = Linear(2 * H, H, dtype=dtype)  # c_s<0> = W_sc [c→, c←] + b_sc
        self.alignments = None  # α of the last decode with attention, (B, T_y, T_x) NumPy
        if self.attention:
            # W_α as a bias-free Linear on a<t'>: keys k<t'> = W_α a<t'> (B, T_x, H), once.
            self.attn_score = Linear(D * H, H, bias=False, dtype=dtype)
            self.attn_combine = Linear(D * H + H, H, dtype=dtype)  # W_c [c<t>, s<t>] + b_c
        self.out = Linear(H, self.tgt_vocab_size, dtype=dtype)  # ŷ<t> = softmax(W_y s + b_y)
        # the loss, encoder to mean, one compiled call (mg.compile) unless compiled=False
        self.compiled, self._step = cell_options.get("compiled", True), None

    def extra_repr(self):
        return (f"src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size}, "
                f"cell={self.cell_type!r}, bidirectional_encoder={self.bidirectional_encoder}, "
                f"attention={self.attention}")

    # ------------------------------------------------------------------ the two halves

    def encode(self, src, src_lengths=None):
        """Read the source; returns ``(memory, s0)``.

        src: (B, T_x) ids; src_lengths: (B,) true lengths (None: all T_x).  ``memory`` is
        ``(outputs a<1..T_x> (B, T_x, H·D), valid (B, T_x) bool)`` — what attention looks at —
        and ``s0`` the decoder's initial state: (L, B, H), or (s0, c0) for an LSTM.
        """
        src = _ids("encode", src, self.src_vocab_size, "src")
        B, T = src.shape
        valid = _valid("encode", src_lengths, B, T, "src_lengths")
        return self._encode(src, valid, not bool(valid.all()))

    def _encode(self, src, valid, padded):
        """:meth:`encode` from checked ids and ``valid`` (B, T_x) bool, arrays or tensors
        (what ``mg.compile`` traces); unpadded batches (``padded`` False) skip the per-step
        masking (same values, fewer ops)."""
        x = self.src_embedding(src) if self.src_embedding is not None else src
        outputs, final = self.encoder(x, mask=valid if padded else None)
        return (outputs, valid), self._bridge(final, src.shape[0])

    def _bridge(self, final, B):
        if not self.bidirectional_encoder:
            return final  # (L, B, H) per state part, exactly the decoder's layout
        L, H = self.num_layers, self.hidden_size

        def join(s):  # (2L, B, H) = [l0→, l0←, l1→, …] -> (L, B, 2H) = [a→, a←] per layer
            return s.reshape(L, 2, B, H).transpose(0, 2, 1, 3).reshape(L, B, 2 * H)

        if self.lstm:
            a, c = final
            return self.bridge(join(a)).tanh(), self.bridge_c(join(c))
        return self.bridge(join(final)).tanh()

    def decode(self, tgt_in, state, memory=None):
        """Run the decoder on ``tgt_in`` (B, T) ids from ``state``; returns
        ``(logits (B, T, V_y), state)``.

        Teacher forcing passes all shifted targets at once; :meth:`translate` passes one
        token per call and carries the state — the two give the same logits (tested).
        ``memory`` (from :meth:`encode`) is required with ``attention=True``.
        """
        tgt_in = _ids("decode", tgt_in, self.tgt_vocab_size, "tgt_in")
        if self.attention and memory is None:
            raise ValueError("Seq2Seq.decode: attention=True needs the encoder's memory")
        return self._decode(tgt_in, state, memory)

    def _decode(self, tgt_in, state, memory):
        x = self.tgt_embedding(tgt_in) if self.tgt_embedding is not None else tgt_in
        s, state = self.decoder(x, state)  # s<t>: (B, T, H)
        if self.attention:
            s = self._attend(s, *memory)
        return self.out(s), state

    def _attend(self, s, enc_out, valid):
        """s~<t> = tanh(W_c [c<t>, s<t>] + b_c), c<t> = Σ_t' α<t,t'> a<t'> (module doc)."""
        keys = self.attn_score(enc_out)                          # W_α a<t'>   (B, T_x, H)
        scores = s @ keys.transpose(0, 2, 1)                     # e<t,t'>     (B, T_y, T_x)
        scores = mg.where(valid[:, None, :], scores, _MASKED_SCORE)
        alpha = scores.softmax(axis=-1)                          # α<t,t'>
        self.alignments = alpha.data  # for plots only (a compiled loss does not update it)
        context = alpha @ enc_out                                # c<t>  (B, T_y, H·D)
        return self.attn_combine(mg.concat([context, s], axis=2)).tanh()

    # ------------------------------------------------------------------ training

    def shift(self, tgt):
        """Teacher-forcing inputs: y<0> = <EOS> (the start token), then y<1..T_y-1>."""
        tgt = mg.as_array(tgt)
        start = np.full((tgt.shape[0], 1), self.start_id, dtype=tgt.dtype)
        return np.concatenate([start, tgt[:, :-1]], axis=1)

    def forward(self, src, src_lengths, tgt_in):
        """Teacher forcing: logits (B, T_y, V_y) for every step at once.

        src (B, T_x) ids with src_lengths (B,) (None: unpadded); tgt_in (B, T_y) ids, the
        targets shifted right behind <EOS> (:meth:`shift`).
        """
        src = _ids("forward", src, self.src_vocab_size, "src")
        tgt_in = _ids("forward", tgt_in, self.tgt_vocab_size, "tgt_in")
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"Seq2Seq.forward: batch sizes differ: src has {src.shape[0]} "
                             f"sequences, tgt_in {tgt_in.shape[0]}")
        memory, state = self.encode(src, src_lengths)
        return self.decode(tgt_in, state, memory)[0]

    def loss(self, src, src_lengths, tgt, tgt_lengths=None, reduction="mean"):
        """Cross-entropy of predicting ``tgt`` (B, T_y) — each row ending with <EOS>, then
        padding — given the source: L = Σ_t L<t>(ŷ<t>, y<t>) over real tokens only.

        ``reduction='mean'`` averages over the Σ tgt_lengths real tokens; ``'sum'`` is the
        chapter's L summed over the batch.
        """
        src = _ids("loss", src, self.src_vocab_size, "src")
        tgt = _ids("loss", tgt, self.tgt_vocab_size, "tgt")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"Seq2Seq.loss: batch sizes differ: src has {src.shape[0]} "
                             f"sequences, tgt {tgt.shape[0]}")
        (B, T), T_x = tgt.shape, src.shape[1]
        mask = _valid("loss", tgt_lengths, B, T, "tgt_lengths")
        valid = _valid("loss", src_lengths, B, T_x, "src_lengths")
        args = (src, valid, not bool(valid.all()), self.shift(tgt), tgt, mask, reduction)
        if not self.compiled:
            return self._loss(*args)
        if self._step is None:
            self._step = mg.compile(self._loss)
        return self._step(*args)

    def _loss(self, src, valid, padded, tgt_in, tgt, mask, reduction):
        """The loss from checked arrays, as tensors (what ``mg.compile`` traces)."""
        memory, state = self._encode(src, valid, padded)
        logits = self._decode(tgt_in, state, memory)[0]
        return mg.cross_entropy(logits, tgt, mask=mask, reduction=reduction)

    # ------------------------------------------------------------------ inference

    @mg.no_grad()
    def translate(self, src, src_lengths=None, max_len=50, temperature=0.0, seed=None,
                  allow_unk=False):
        """Generate a target for every source sequence, all in one batch.

        ``src``: a (B, T_x) id array with ``src_lengths`` (None: unpadded), or a list of 1-D
        id sequences of any lengths (padded here).  Step t feeds the token chosen at t-1
        (starting from <EOS>) and picks y<t> from ŷ<t> = softmax(logits / temperature):
        ``temperature=0`` is greedy (argmax), otherwise a draw (``seed`` makes it
        reproducible; else minigrad's generator, see ``mg.manual_seed``).  A sequence stops
        at its first <EOS> (not included) or after ``max_len`` tokens.  <PAD> is never
        produced; <UNK> only with ``allow_unk=True``.  Returns a list of B int64 arrays.
        """
        if not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"Seq2Seq.translate: max_len must be a positive integer, got "
                             f"{max_len!r}")
        check_temperature("Seq2Seq.translate", temperature)
        if isinstance(src, (list, tuple)):
            if src_lengths is not None:
                raise ValueError("Seq2Seq.translate: pass src_lengths only with a padded "
                                 "(B, T_x) array; a list of sequences carries its lengths")
            src, src_lengths, _ = pad_batch(src, pad_id=PAD_ID)
        rng = np.random.default_rng(seed) if seed is not None else mg.get_rng()
        banned = [PAD_ID] if allow_unk else [PAD_ID, UNK_ID]
        was = self.training
        self.eval()
        try:
            memory, state = self.encode(src, src_lengths)
            B = memory[1].shape[0]
            y = np.full((B, 1), self.start_id, dtype=np.int64)
            out = [[] for _ in range(B)]
            alive = np.ones(B, dtype=bool)
            for _ in range(max_len):
                logits, state = self.decode(y, state, memory)
                nxt = draw(logits.data[:, -1].astype(np.float64), temperature, None, banned,
                           rng, where="Seq2Seq.translate")
                for i in np.flatnonzero(alive):
                    if nxt[i] == EOS_ID:
                        alive[i] = False
                    else:
                        out[i].append(int(nxt[i]))
                if not alive.any():
                    break
                y = nxt[:, None].astype(np.int64)
        finally:
            self.train(was)
        return [np.array(o, dtype=np.int64) for o in out]


__all__ = ["Seq2Seq"]
