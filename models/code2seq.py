"""code2seq (Alon et al., ICLR 2019): a function's name from the paths of its syntax tree.

A function is a bag of k *path-contexts* (x_s, v_1 … v_l, x_t): two leaf tokens of its
abstract syntax tree and the path of node types between them, up from x_s to their lowest
common ancestor and down to x_t (``self Name ↑Attribute ↑Call ↓Name open``).  Each is
encoded on its own::

    h_path    = [a→<l>, a←<1>]                     a bidirectional LSTM over the node-type
                                                    embeddings E_node v_1 … v_l, final states
    enc(x)    = Σ_{s ∈ subtokens(x)} E_sub s        a leaf token is the sum of its subtokens'
                                                    embeddings (get_file_name: get, file, name)
    z_i       = tanh(W_in [enc(x_s); h_path; enc(x_t)])                  (B, k, H)

then attention-pooled into one vector that starts the decoder (code2vec's global attention;
code2seq itself averages, which is the special case a = 0)::

    α_i       = exp(aᵀ z_i) / Σ_j exp(aᵀ z_j)       over the function's real contexts only
    s<0>      = c<0> = Σ_i α_i z_i                  the decoder LSTM's hidden and memory cell

An LSTM decoder writes the name's subtokens, ending with <EOS>, each step attending over
the k contexts as :mod:`models.seq2seq` attends over the source (Luong, "general" score)::

    e<t,i>    = s<t>ᵀ W_α z_i ,  β<t,i> = softmax_i(e<t,i>),  c<t> = Σ_i β<t,i> z_i
    s~<t>     = tanh(W_c [c<t>, s<t>] + b_c),      ŷ<t> = softmax(W_y s~<t> + b_y)

The paper gives names their own subtoken vocabulary; by default (``target_vocab_size=None``)
names are spelled in the leaves' subtokens instead, with one table E_sub that also makes the
output layer, W_y = E_sub W_p (tied): see :class:`Code2Seq`.

A batch stores each distinct path and each distinct leaf token once
(:class:`PathContexts`): the path LSTM runs over the distinct paths (one compiled call
with ``lengths``), and the contexts gather rows of the results.  Padding contexts (a
function with fewer than k) get α = β = 0 exactly.

No backward code here: the tape differentiates encoder, pooling, attention and decoder.
"""

from typing import NamedTuple

import numpy as np

import minigrad as mg
from minigrad import functional as F
from minigrad.data import EOS_ID, PAD_ID, UNK_ID, check_ids, check_lengths
from minigrad.nn import Embedding, Linear, Module, Parameter, init
from models.language_model import check_temperature, draw
from models.layers import LAYERS

# NOTE: finite, not -inf (no inf - inf).  float32 softmax clamps exp at ~1e-38 rather than
# 0, so the weights are also multiplied by the mask: padding's weight and gradient are then
# exactly 0 (its ~1e-38 weights made denormal gradients, and BLAS ran 50x slower on them).
_MASKED_SCORE = -1e9


class PathContexts(NamedTuple):
    """A batch of B functions, k path-contexts each, every distinct path and token once.

    * ``paths`` (P, T_p) node-type ids of the distinct paths, <PAD>-padded, with
      ``path_lengths`` (P,) their numbers of nodes;
    * ``tokens`` (N, S) subtoken ids of the distinct leaf tokens, <PAD>-padded;
    * ``index`` (B, k, 3): each context as (start token, path, end token) rows of those;
    * ``valid`` (B, k) bool: False where a function has fewer than k contexts (padding).
    """

    paths: np.ndarray
    path_lengths: np.ndarray
    tokens: np.ndarray
    index: np.ndarray
    valid: np.ndarray

    @classmethod
    def gather(cls, contexts, path_nodes, path_lengths, token_subtokens, k):
        """Build a batch from per-function ``contexts``: a list of B (n_b, 3) arrays of
        (token, path, token) ids into the corpus-wide tables ``path_nodes`` (n_paths, T_p)
        with ``path_lengths`` and ``token_subtokens`` (n_tokens, S).  Takes the first k
        contexts of each function (sample before calling to draw a random k)."""
        B = len(contexts)
        rows = np.zeros((B, k, 3), dtype=np.int64)
        valid = np.zeros((B, k), dtype=bool)
        for b, c in enumerate(contexts):
            n = min(len(c), k)
            rows[b, :n], valid[b, :n] = c[:n], True
        used = rows[valid]
        tok_ids, tok_inv = np.unique(used[:, [0, 2]], return_inverse=True)
        path_ids, path_inv = np.unique(used[:, 1], return_inverse=True)
        index = np.zeros_like(rows)
        index[valid] = np.stack([tok_inv.reshape(-1, 2)[:, 0], path_inv.reshape(-1),
                                 tok_inv.reshape(-1, 2)[:, 1]], axis=1)
        lengths = path_lengths[path_ids]
        return cls(path_nodes[path_ids][:, :lengths.max()], lengths,
                   token_subtokens[tok_ids], index, valid)


class Code2Seq(Module):
    """``Code2Seq(node_vocab_size, subtoken_vocab_size, target_vocab_size=None,
    hidden_size=128, node_dim=64, path_hidden=64, subtoken_dim=64, target_dim=64,
    cell='lstm', num_layers=1, dropout=0.0, dtype=np.float32)``.

    * ``target_vocab_size``: the names' own vocabulary, as in the paper (separate
      embeddings E_name and a separate output layer W_y); ``None`` spells names in the
      leaves' subtoken vocabulary instead, with *one* table E_sub for leaves, decoder inputs
      and, tied, the output layer: ŷ<t> = softmax(E_sub W_p s~<t> + b_y) (Press & Wolf 2017).
      A name subtoken then starts out knowing what the same subtoken meant in the body —
      about a third of the stdlib's name subtokens occur among the function's own leaves —
      which learns far faster on little data (``target_dim`` is then ``subtoken_dim``);
    * ``hidden_size`` H: each context's z_i, and the decoder's state;
    * ``node_dim``/``path_hidden``: the node-type embeddings and the path LSTM (per
      direction, so h_path has 2·path_hidden);
    * ``subtoken_dim``/``target_dim``: the leaves' and the names' subtoken embeddings;
    * ``cell``: 'lstm' (the paper's), 'gru' or 'rnn', for the path encoder and the decoder;
      an LSTM decoder starts with both s<0> and c<0> at the pooled vector;
    * ``num_layers``: L stacked layers in the path encoder and the decoder (the top one's
      final states make h_path; every decoder layer starts from the pooled vector);
    * ``dropout``: on [enc(x_s); h_path; enc(x_t)] while training.

    Ids follow :class:`minigrad.data.Vocab`: <PAD> = 0 (padding; its embedding is zero),
    <UNK> = 1, <EOS> = 2 (also the decoder's start token).
    """

    def __init__(self, node_vocab_size, subtoken_vocab_size, target_vocab_size=None,
                 hidden_size=128, node_dim=64, path_hidden=64, subtoken_dim=64, target_dim=64,
                 cell="lstm", num_layers=1, dropout=0.0, dtype=np.float32):
        super().__init__()
        self.tied = target_vocab_size is None
        if self.tied:
            target_vocab_size, target_dim = subtoken_vocab_size, subtoken_dim
        for name, v in (("node_vocab_size", node_vocab_size),
                        ("subtoken_vocab_size", subtoken_vocab_size),
                        ("target_vocab_size", target_vocab_size)):
            if not isinstance(v, (int, np.integer)) or v < 3:
                raise ValueError(f"Code2Seq: {name} must be an integer >= 3 (<PAD>, <UNK>, "
                                 f"<EOS>), got {v!r}")
        if cell not in LAYERS:
            raise ValueError(f"Code2Seq: unknown cell {cell!r}; expected one of {sorted(LAYERS)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"Code2Seq: dropout must be in [0, 1), got {dropout!r}")
        H = hidden_size
        self.node_vocab_size, self.subtoken_vocab_size = node_vocab_size, subtoken_vocab_size
        self.target_vocab_size, self.hidden_size, self.dropout = target_vocab_size, H, dropout
        self.dtype, self.cell_type, self.num_layers = dtype, cell, num_layers
        self.node_embedding = Embedding(node_vocab_size, node_dim, padding_idx=PAD_ID,
                                        dtype=dtype)
        self.path_encoder = LAYERS[cell](node_dim, path_hidden, num_layers=num_layers,
                                         bidirectional=True, dtype=dtype)
        self.subtoken_embedding = Embedding(subtoken_vocab_size, subtoken_dim,
                                            padding_idx=PAD_ID, dtype=dtype)
        self.combine = Linear(2 * subtoken_dim + 2 * path_hidden, H, dtype=dtype)  # W_in
        self.pool = init.normal_(Parameter(np.zeros(H, dtype=dtype)), std=H ** -0.5)  # a
        self.target_embedding = self.subtoken_embedding if self.tied else \
            Embedding(target_vocab_size, target_dim, dtype=dtype)
        self.decoder = LAYERS[cell](target_dim, H, num_layers=num_layers, dtype=dtype)
        self.attn_score = Linear(H, H, bias=False, dtype=dtype)   # W_α: keys W_α z_i, once
        self.attn_combine = Linear(2 * H, H, dtype=dtype)         # W_c [c<t>, s<t>] + b_c
        if self.tied:
            self.out = Linear(H, subtoken_dim, bias=False, dtype=dtype)   # W_p
            self.out_bias = Parameter(np.zeros(target_vocab_size, dtype=dtype))  # b_y
        else:
            self.out = Linear(H, target_vocab_size, dtype=dtype)  # W_y s~<t> + b_y
        self.pool_weights = self.alignments = None  # α (B, k), β (B, T, k): NumPy, for display

    def extra_repr(self):
        return (f"node_vocab_size={self.node_vocab_size}, subtoken_vocab_size="
                f"{self.subtoken_vocab_size}, target_vocab_size={self.target_vocab_size}, "
                f"tied={self.tied}, cell={self.cell_type!r}")

    def encode(self, batch):
        """``batch``: :class:`PathContexts`.  Returns ``(z (B, k, H), valid (B, k), s0)``
        with s0 the decoder's initial state: (L, B, H), or (s<0>, c<0>) for an LSTM."""
        paths, path_lengths, tokens, index, valid = _check(self, batch)
        _, final = self.path_encoder(self.node_embedding(paths), lengths=path_lengths)
        a_n = final[0] if self.cell_type == "lstm" else final          # (L·2, P, path_hidden)
        h_path = mg.concat([a_n[-2], a_n[-1]], axis=1)                 # [a→<l>, a←<1>]
        enc = self.subtoken_embedding(tokens).sum(axis=1)              # Σ_s E_sub s  (N, E)
        x = mg.concat([enc[index[..., 0]], h_path[index[..., 1]], enc[index[..., 2]]], axis=2)
        if self.dropout:
            x = F.dropout(x, self.dropout, self.training)
        z = self.combine(x).tanh()                                     # z_i (B, k, H)
        scores = mg.where(valid, (z * self.pool).sum(axis=2), _MASKED_SCORE)
        alpha = scores.softmax(axis=1) * valid.astype(self.dtype)      # α_i (B, k)
        self.pool_weights = alpha.data
        B, k, H = z.shape
        pooled = (alpha.reshape(B, 1, k) @ z).reshape(1, B, H)         # Σ_i α_i z_i
        s0 = mg.concat([pooled] * self.num_layers, axis=0) if self.num_layers > 1 else pooled
        return z, valid, ((s0, s0) if self.cell_type == "lstm" else s0)

    def decode(self, tgt_in, state, z, valid):
        """Decoder steps on ``tgt_in`` (B, T) ids from ``state``, attending over the contexts
        z (B, k, H); returns ``(logits (B, T, V_y), state)``."""
        tgt_in = check_ids("Code2Seq.decode", mg.as_array(tgt_in), self.target_vocab_size,
                           what="target id")
        s, state = self.decoder(self.target_embedding(tgt_in), state)   # s<t> (B, T, H)
        keys = self.attn_score(z)                                        # W_α z_i (B, k, H)
        scores = mg.where(valid[:, None, :], s @ keys.transpose(0, 2, 1), _MASKED_SCORE)
        beta = scores.softmax(axis=-1) * valid[:, None, :].astype(self.dtype)  # β<t,i>
        self.alignments = beta.data
        context = beta @ z                                               # c<t> (B, T, H)
        s_tilde = self.attn_combine(mg.concat([context, s], axis=2)).tanh()
        if self.tied:  # E_sub W_p s~<t> + b_y: the subtoken table is the output layer too
            return self.out(s_tilde) @ self.subtoken_embedding.weight.T + self.out_bias, state
        return self.out(s_tilde), state

    def loss(self, batch, tgt, tgt_lengths, reduction="mean"):
        """Cross-entropy of the names ``tgt`` (B, T_y) — subtoken ids, each row ending with
        <EOS> at ``tgt_lengths - 1``, then padding — under teacher forcing (the decoder
        reads <EOS>, y<1>, …, y<T_y - 1>).  'mean' averages over the real tokens."""
        tgt = check_ids("Code2Seq.loss", mg.as_array(tgt), self.target_vocab_size,
                        what="target id")
        B, T = tgt.shape
        tgt_lengths = check_lengths("Code2Seq.loss", tgt_lengths, B, T, "tgt_lengths")
        if batch.index.shape[0] != B:
            raise ValueError(f"Code2Seq.loss: {batch.index.shape[0]} functions but {B} names")
        z, valid, state = self.encode(batch)
        tgt_in = np.concatenate([np.full((B, 1), EOS_ID), tgt[:, :-1]], axis=1)
        logits, _ = self.decode(tgt_in, state, z, valid)
        mask = np.arange(T)[None, :] < tgt_lengths[:, None]
        return mg.cross_entropy(logits, tgt, mask=mask, reduction=reduction)

    @mg.no_grad()
    def predict(self, batch, max_len=8, temperature=0.0, rng=None):
        """Names, greedy (``temperature=0``) or drawn from softmax(logits / temperature)
        with ``rng`` (a NumPy Generator; default minigrad's): a list of B int64 arrays of
        subtoken ids (without <EOS>; never <PAD> or <UNK>), and the decoder's attention
        β (B, steps run, k) over the contexts at each step (NumPy)."""
        check_temperature("Code2Seq.predict", temperature)
        rng = mg.get_rng() if rng is None else rng
        was = self.training
        self.eval()
        try:
            z, valid, state = self.encode(batch)
            B = valid.shape[0]
            y = np.full((B, 1), EOS_ID, dtype=np.int64)
            out, alive, betas = [[] for _ in range(B)], np.ones(B, dtype=bool), []
            for _ in range(max_len):
                logits, state = self.decode(y, state, z, valid)
                betas.append(self.alignments[:, 0])
                y = draw(logits.data[:, -1].astype(np.float64), temperature, None,
                         [PAD_ID, UNK_ID], rng, where="Code2Seq.predict")[:, None]
                for i in np.flatnonzero(alive):
                    if y[i, 0] == EOS_ID:
                        alive[i] = False
                    else:
                        out[i].append(int(y[i, 0]))
                if not alive.any():
                    break
        finally:
            self.train(was)
        return [np.array(o, dtype=np.int64) for o in out], np.stack(betas, axis=1)


def _check(model, batch):
    """The batch's arrays, checked against each other and the vocabularies."""
    if not isinstance(batch, PathContexts):
        raise TypeError(f"Code2Seq: expected a PathContexts batch, got {type(batch).__name__}")
    paths, lengths, tokens, index, valid = (np.asarray(a) for a in batch)
    if paths.ndim != 2 or tokens.ndim != 2 or index.ndim != 3 or index.shape[2] != 3 \
            or valid.shape != index.shape[:2]:
        raise ValueError(f"Code2Seq: PathContexts shapes must be paths (P, T_p), tokens (N, S), "
                         f"index (B, k, 3), valid (B, k); got {paths.shape}, {tokens.shape}, "
                         f"{index.shape}, {valid.shape}")
    check_ids("Code2Seq", paths, model.node_vocab_size, what="node-type id")
    check_ids("Code2Seq", tokens, model.subtoken_vocab_size, what="subtoken id")
    check_ids("Code2Seq", index[..., 1], len(paths), what="path index", size="paths")
    check_ids("Code2Seq", index[..., [0, 2]], len(tokens), what="token index", size="tokens")
    if not valid.any(axis=1).all():
        raise ValueError("Code2Seq: every function needs at least one valid path-context")
    lengths = check_lengths("Code2Seq", lengths, *paths.shape, "path_lengths")
    return paths, lengths, tokens, index, valid.astype(bool)


__all__ = ["Code2Seq", "PathContexts"]
