"""A recurrent language model and sampling novel sequences.

The chapter's model: x<1> is a start token, a<0> = 0, and at every step a softmax over the
vocabulary predicts y<t> from y<1..t-1>; the input at step t is the previous token,
x<t> = y<t-1>.  The loss is the per-step cross-entropy L = Σ_t L<t>(ŷ<t>, y<t>), masked
for padding.  The probability of a whole sequence is the product of the per-step
conditionals, P(y<1>, …, y<Ty>) = P(y<1>) P(y<2>|y<1>) … including the final <EOS>.

The start token is ``<EOS>``: a sequence begins as if the previous one had just ended, so
the model needs no extra symbol (the chapter's x<1> = 0 vector works the same way; with
one-hot inputs either is one fixed input vector).
"""

import math
import numbers

import numpy as np

import minigrad as mg
from minigrad.core import ops
from minigrad.core.tensor import apply
from minigrad.data import EOS_ID, PAD_ID, UNK_ID, check_ids
from minigrad.nn import Embedding, Linear, Module
from models.layers import LAYERS, _valid


class Autoregressive(Module):
    """What every left-to-right language model shares: teacher forcing (:meth:`shift`), the
    masked loss, the probability of a sequence and sampling.  A subclass sets ``vocab_size``,
    ``vocab`` and ``start_id`` and defines ``forward(inputs (B, T) ids, state=None,
    lengths=None) -> (logits (B, T, V), state)``, where ``state`` carries what the next call
    needs to continue the sequence (a recurrent state, or the tokens read so far).

    ``compiled``: :meth:`loss` runs as one function compiled with ``mg.compile`` (its
    checks stay in Python, in front of it); a subclass opts in."""

    compiled, _step = False, None

    def shift(self, targets):
        """Inputs for teacher forcing: x<1> = start, x<t> = y<t-1> (of a tensor: with rows,
        so that a compiled training step traces it)."""
        if isinstance(targets, mg.Tensor):
            start = apply(ops.FULL, (targets.shape[0], 1), self.start_id, targets.dtype)
            return mg.concat([start, targets[:, :-1]], axis=1)
        targets = np.asarray(targets)
        start = np.full((targets.shape[0], 1), self.start_id, dtype=targets.dtype)
        return np.concatenate([start, targets[:, :-1]], axis=1)

    def loss(self, targets, lengths=None, inputs=None, state=None, reduction="mean"):
        """Cross-entropy of predicting ``targets`` (B, T); returns ``(loss, final_state)``.

        Short sequences: pass padded targets (each ending with <EOS>) and their ``lengths``;
        the inputs are the targets shifted right behind the start token.  One long stream
        (truncated BPTT): pass ``inputs`` and the previous chunk's detached ``state``.
        ``reduction='mean'`` averages over real tokens (what the optimizer sees and what is
        reported); ``'sum'`` is the chapter's L = Σ_t L<t>, summed over the batch too.
        """
        # tensors (the arguments of a compiled training step) stay tensors: the shift and the
        # mask are then rows of its program; x and y are the arrays the checks read
        y = mg.as_array(targets)
        targets = targets if isinstance(targets, mg.Tensor) else y
        if y.ndim != 2:
            raise ValueError(f"LanguageModel.loss: targets must be (B, T) ids, got shape "
                             f"{y.shape}")
        if inputs is None:
            inputs = self.shift(targets)
        elif not isinstance(inputs, mg.Tensor):
            inputs = mg.as_array(inputs)
        x = mg.as_array(inputs)
        if x.shape != y.shape:
            raise ValueError(f"LanguageModel.loss: inputs {x.shape} and targets {y.shape} "
                             f"must have the same shape")
        mask = None if lengths is None else _valid(type(self).__name__, lengths, None, *y.shape)
        if not self.compiled:
            logits, state = self(inputs, state, lengths)
            return mg.cross_entropy(logits, targets, mask=mask, reduction=reduction), state
        for what, ids in (("inputs", x), ("targets", y)):
            if ids.dtype.kind not in "iu":
                raise TypeError(f"LanguageModel.loss: {what} must be integer ids, got dtype "
                                f"{ids.dtype}")
        check_ids("LanguageModel.loss", x, self.vocab_size, what="input")
        check_ids("LanguageModel.loss", y if mask is None else y[mg.as_array(mask) != 0],
                  self.vocab_size, what="target")
        if self._step is None:
            self._step = mg.compile(self._loss)
        return self._step(inputs, targets, mask, state, reduction)

    def _loss(self, inputs, targets, mask, state, reduction):
        """The loss from tensors only (what ``mg.compile`` traces): the padding as a mask."""
        logits, state = self(inputs, state, mask=mask)
        return mg.cross_entropy(logits, targets, mask=mask, reduction=reduction), state

    # ------------------------------------------------------------------ probabilities

    def _ids(self, sequence, add_eos):
        if isinstance(sequence, str):
            if self.vocab is None:
                raise ValueError("LanguageModel: pass token ids, or build the model with "
                                 "vocab= to use text")
            return self.vocab.encode(sequence, add_eos=add_eos)
        ids = np.asarray(sequence, dtype=np.int64)
        if add_eos and (ids.size == 0 or ids[-1] != self.start_id):
            ids = np.append(ids, self.start_id)
        return ids

    @mg.no_grad()
    def log_prob(self, sequence, add_eos=True):
        """log P(y<1>, …, y<Ty>) = Σ_t log P(y<t> | y<1..t-1>), including the <EOS> term.

        ``sequence``: text (needs ``vocab``) or ids.  Natural log; a float.  Tokens not in
        the vocabulary count as <UNK> (so held-out text can be scored, as for perplexity);
        ``sample``'s prime, which would steer generation, rejects them instead.
        """
        was = self.training
        self.eval()
        try:
            y = self._ids(sequence, add_eos)[None, :]
            if y.size == 0:
                raise ValueError("LanguageModel.log_prob: empty sequence")
            logits, _ = self(self.shift(y))
            logp = logits.log_softmax(-1).data[0]
            return float(logp[np.arange(y.shape[1]), y[0]].astype(np.float64).sum())
        finally:
            self.train(was)

    def perplexity(self, texts):
        """exp(−Σ log P / Σ tokens) over ``texts`` (each scored with its <EOS>)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("LanguageModel.perplexity: no texts")
        total, n = 0.0, 0
        for t in texts:
            total += self.log_prob(t)
            n += len(self._ids(t, True))
        return math.exp(-total / n)

    # ------------------------------------------------------------------ sampling

    @mg.no_grad()
    def sample(self, n=1, max_len=100, temperature=1.0, top_k=None, prime="", seed=None,
               allow_unk=False, return_ids=False):
        """Sample ``n`` novel sequences, feeding each sampled token back in as the next input.

        At each step ŷ = softmax(logits / temperature) and the next token is drawn from it
        (``np.random.choice(vocab, p=ŷ)`` semantics); ``temperature=0`` is greedy (argmax).
        ``top_k`` keeps only the k most likely tokens.  Generation stops at <EOS> (not
        included) or after ``max_len`` tokens.  ``prime`` (text or ids) is fed first to
        warm up the state and is included in the result; a token it contains that is not in
        the vocabulary raises ValueError (rather than silently becoming <UNK>).  <PAD> is
        never sampled; <UNK> only with ``allow_unk=True``.  ``seed`` makes it reproducible
        (otherwise minigrad's generator, see ``mg.manual_seed``, is used).
        Returns a list of strings (ids with ``return_ids=True`` or when there is no vocab).
        """
        V = self.vocab_size
        for name, v in (("n", n), ("max_len", max_len)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"sample: {name} must be a positive integer, got {v!r}")
        check_temperature("sample", temperature)
        if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= V):
            raise ValueError(f"sample: top_k must be in 1..{V} (the vocabulary size), "
                             f"got {top_k}")
        rng = np.random.default_rng(seed) if seed is not None else mg.get_rng()
        prime_ids = self._prime_ids(prime)
        was = self.training
        self.eval()
        try:
            banned = [PAD_ID] if allow_unk else [PAD_ID, UNK_ID]
            x = np.concatenate([[self.start_id], prime_ids]).astype(np.int64)
            logits, state = self(np.tile(x, (n, 1)))
            last = logits.data[:, -1].astype(np.float64)
            out = [list(prime_ids) for _ in range(n)]
            alive = np.ones(n, dtype=bool)
            for step in range(max_len):
                nxt = draw(last, temperature, top_k, banned, rng)
                for i in np.flatnonzero(alive):
                    if nxt[i] == self.start_id:
                        alive[i] = False
                    else:
                        out[i].append(int(nxt[i]))
                if not alive.any() or step == max_len - 1:
                    break
                logits, state = self(nxt[:, None], state)
                last = logits.data[:, -1].astype(np.float64)
        finally:
            self.train(was)
        if return_ids or self.vocab is None:
            return [np.array(o, dtype=np.int64) for o in out]
        return [self.vocab.decode(o) for o in out]

    def _prime_ids(self, prime):
        if prime is None or (hasattr(prime, "__len__") and len(prime) == 0):
            return np.zeros(0, dtype=np.int64)
        if isinstance(prime, str):
            if self.vocab is None:
                raise ValueError("sample: a text prime needs the model's vocab")
            tokens = self.vocab.tokenize(prime)
            unknown = sorted({t for t in tokens if t not in self.vocab})
            if unknown:
                raise ValueError(f"sample: prime contains tokens not in the vocabulary: "
                                 f"{unknown}")
            return self.vocab.encode(tokens)
        ids = np.asarray(prime)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"sample: prime must be text or a 1-D sequence of integer ids, got "
                             f"shape {ids.shape} dtype {ids.dtype}")
        return check_ids("sample: prime", ids.astype(np.int64), self.vocab_size)


class LanguageModel(Autoregressive):
    """``LanguageModel(vocab_size, hidden_size, cell='lstm', num_layers=1, embedding_dim=None,
    dropout=0.0, vocab=None, **cell_options)``.

    * ``embedding_dim=None`` feeds one-hot inputs (as in the chapter; computed as a row
      lookup, never a dense one-hot matmul); an integer adds an ``Embedding`` first.
    * ``vocab`` (a :class:`minigrad.data.Vocab`) lets ``sample``/``log_prob`` speak text.
    * ``forward(inputs (B, T) ids, state=None, lengths=None) -> (logits (B, T, V), state)``.
    """

    def __init__(self, vocab_size, hidden_size, cell="lstm", num_layers=1, embedding_dim=None,
                 dropout=0.0, vocab=None, **cell_options):
        super().__init__()
        if cell not in LAYERS:
            raise ValueError(f"LanguageModel: unknown cell {cell!r}; expected one of "
                             f"{sorted(LAYERS)}")
        if vocab is not None and len(vocab) != vocab_size:
            raise ValueError(f"LanguageModel: vocab has {len(vocab)} tokens but "
                             f"vocab_size={vocab_size}")
        if vocab_size < 3:
            raise ValueError(f"LanguageModel: vocab_size must be at least 3 (<PAD>, <UNK>, "
                             f"<EOS>), got {vocab_size}")
        self.vocab_size, self.hidden_size, self.cell_type = vocab_size, hidden_size, cell
        self.vocab = vocab
        self.start_id = EOS_ID
        self.embedding = Embedding(vocab_size, embedding_dim) if embedding_dim else None
        n_in = embedding_dim or vocab_size
        self.rnn = LAYERS[cell](n_in, hidden_size, num_layers=num_layers, dropout=dropout,
                                **cell_options)
        self.dropout = dropout
        self.out = Linear(hidden_size, vocab_size)  # ŷ<t> = softmax(W_ya a<t> + b_y)
        # the loss, from the lookup to the mean, one compiled call (mg.compile) by default
        self.compiled, self._step = cell_options.get("compiled", True), None

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, cell={self.cell_type!r}"

    def forward(self, inputs, state=None, lengths=None, mask=None):
        x = inputs if isinstance(inputs, mg.Tensor) else mg.tensor(np.asarray(inputs))
        if self.embedding is not None:
            x = self.embedding(x)
            if self.dropout:
                x = mg.dropout(x, self.dropout, self.training)
        a, state = self.rnn(x, state, lengths, mask)
        if self.dropout:
            a = mg.dropout(a, self.dropout, self.training)
        return self.out(a), state


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_temperature(where, temperature):
    """A sampling temperature must be a finite real number >= 0 (0 means greedy)."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{where}: temperature must be a finite number >= 0 (0 means greedy), "
                         f"got {temperature!r}")
    return float(temperature)


def draw(logits, temperature, top_k, banned, rng, where="sample"):
    """The next token of every row of ``logits`` (B, V): argmax at ``temperature=0``, else a
    draw from softmax(logits / temperature) restricted to the ``top_k`` most likely;
    ``banned`` ids are never chosen.  Raises FloatingPointError if a logit is not finite
    (a diverged model), instead of NumPy's "probabilities contain NaN" or a silent argmax
    of NaN."""
    if not np.isfinite(logits).all():
        raise FloatingPointError(f"{where}: the model's outputs (logits) are not finite (NaN or "
                                 "inf): the model has diverged; retrain it with a lower "
                                 "learning rate or gradient clipping")
    logits = logits.copy()
    logits[:, banned] = -np.inf
    if top_k is not None:  # exactly k survive, even with ties
        drop = np.argsort(logits, axis=1, kind="stable")[:, :-top_k]
        np.put_along_axis(logits, drop, -np.inf, axis=1)
    if temperature == 0:
        return logits.argmax(axis=1)
    # NOTE: shift before dividing: a tiny temperature then sends every non-maximal logit
    # to -inf (probability 0) instead of overflowing to inf/inf = NaN.
    z = (logits - logits.max(axis=1, keepdims=True)) / temperature
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in p])


__all__ = ["Autoregressive", "LanguageModel", "check_temperature", "draw"]
