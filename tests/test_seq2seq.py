"""Seq2Seq: gradients, padding invariance, teacher forcing vs decoding, translate, the demo.

Expectations come from outside the code under test where possible: a reference encoder–
decoder written with the cells' plain chapter equations (``cell(x<t>, state)``), one
sequence at a time and unpadded, with the bridge and attention in NumPy; greedy decoding
re-derived by re-running the whole prefix at every step.  Models are tiny and float64.
"""

import math
import os

import numpy as np
import pytest

import minigrad as mg
from demos import seq2seq as demo
from models.seq2seq import Seq2Seq

PAD, UNK, EOS = 0, 1, 2
F64 = np.float64
VS, VT = 7, 6  # source and target vocabulary sizes (3 specials + 4 / 3 tokens)

# (id, constructor options): every cell, stacking, bidirectional bridge, attention, embedding
CONFIGS = [
    ("gru", dict(cell="gru")),
    ("gru-simplified-bi", dict(cell="gru", full=False, bidirectional_encoder=True)),
    ("lstm-bi-attention", dict(cell="lstm", bidirectional_encoder=True, attention=True)),
    ("lstm-2layers-peephole", dict(cell="lstm", num_layers=2, peephole=True)),
    ("rnn-embedding-attention", dict(cell="rnn", embedding_dim=3, attention=True)),
    ("gru-2layers-bi-attention", dict(cell="gru", num_layers=2, bidirectional_encoder=True,
                                      attention=True)),
]
IDS = [c[0] for c in CONFIGS]


def make(opts, hidden=3, seed=0, src_vocab=VS, tgt_vocab=VT):
    mg.manual_seed(seed)
    return Seq2Seq(src_vocab, tgt_vocab, hidden, dtype=F64, **opts)


def batch(seed=0, B=3, Tx=5, Ty=4):
    """A padded batch with different source and target lengths; the padding holds random
    *non-pad* junk, so only the lengths can keep it out."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, VS, (B, Tx))
    tgt = rng.integers(3, VT, (B, Ty))
    sl = np.array([Tx, 2, 1, 4, 3][:B])
    tl = np.array([Ty, 1, 3, 2, 4][:B])
    for i in range(B):
        tgt[i, tl[i] - 1] = EOS
    return src, sl, tgt, tl


# ------------------------------------------------------------------ an independent reference

def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _inputs(embedding, ids):
    """Per-step cell inputs: (1,) ids (the cell makes them one-hot) or (1, E) rows."""
    if embedding is None:
        return [np.array([i]) for i in ids]
    return [mg.tensor(embedding.weight.data[[i]]) for i in ids]


def _run(cell, xs, state=None):
    """The cell's own chapter equations over xs: (outputs, final state)."""
    state = cell.init_state(1) if state is None else state
    outs = []
    for x in xs:
        state = cell(x, state)
        outs.append(cell.output(state))
    return outs, state


def reference_logits(model, src, tgt_in):
    """(T_y, V) logits for one unpadded source row and one decoder input row."""
    bi = model.bidirectional_encoder
    xs = _inputs(model.src_embedding, src)
    finals = []
    for layer in model.encoder.layers:
        if bi:
            out_f, fin_f = _run(layer.fwd.cell, xs)
            out_b, fin_b = _run(layer.bwd.cell, xs[::-1])
            xs = [mg.concat([f, b], axis=1) for f, b in zip(out_f, out_b[::-1])]
            finals.append((fin_f, fin_b))
        else:
            xs, fin = _run(layer.cell, xs)
            finals.append(fin)
    enc_out = np.concatenate([x.data for x in xs])  # (T_x, H·D)

    def parts(state):
        return (state,) if isinstance(state, mg.Tensor) else state

    states = []
    for fin in finals:  # the bridge, in NumPy
        if not bi:
            states.append(fin)
            continue
        joined = [np.concatenate([f.data, b.data], axis=1) for f, b in
                  zip(parts(fin[0]), parts(fin[1]))]
        s = np.tanh(joined[0] @ model.bridge.weight.data.T + model.bridge.bias.data)
        if model.lstm:
            c = joined[1] @ model.bridge_c.weight.data.T + model.bridge_c.bias.data
            states.append((mg.tensor(s), mg.tensor(c)))
        else:
            states.append(mg.tensor(s))

    rows = []
    for x in _inputs(model.tgt_embedding, tgt_in):
        for l, layer in enumerate(model.decoder.layers):
            states[l] = layer.cell(x, states[l])
            x = layer.cell.output(states[l])
        s = x.data[0]
        if model.attention:
            keys = enc_out @ model.attn_score.weight.data.T  # W_α a<t'>
            alpha = _softmax(keys @ s)                       # α<t,t'>
            context = alpha @ enc_out                        # c<t>
            W, b = model.attn_combine.weight.data, model.attn_combine.bias.data
            s = np.tanh(W @ np.concatenate([context, s]) + b)
        rows.append(model.out.weight.data @ s + model.out.bias.data)
    assert len(rows[0]) == VT
    return np.array(rows)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_matches_reference_one_sequence_at_a_time(name, opts):
    """The batched, padded, teacher-forced model equals the chapter's equations run on each
    sequence alone and unpadded: the encoder's state at each sequence's *own* last token
    starts the decoder (through the bridge for a bidirectional encoder)."""
    model = make(opts)
    src, sl, tgt, tl = batch()
    logits = model(src, sl, model.shift(tgt)).data
    for i in range(len(src)):
        ref = reference_logits(model, src[i, :sl[i]], model.shift(tgt)[i])
        np.testing.assert_allclose(logits[i], ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_gradcheck_full_loss(name, opts):
    """d loss / d every parameter (embeddings, both RNNs, bridge, attention, output) against
    central differences, on a padded batch with masked targets."""
    model = make(opts, hidden=2)
    src, sl, tgt, tl = batch(B=2, Tx=4, Ty=3)
    params = list(model.parameters())
    assert all(p.dtype == F64 for p in params)
    mg.check_grads(lambda *ps: model.loss(src, sl, tgt, tl), *params)


def test_every_parameter_gets_a_gradient():
    model = Seq2Seq(VS, VT, 4, cell="lstm", num_layers=2, embedding_dim=3,
                    bidirectional_encoder=True, attention=True)
    src, sl, tgt, tl = batch()
    assert model(src, sl, model.shift(tgt)).dtype == np.float32  # float32 by default
    model.loss(src, sl, tgt, tl).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and np.abs(p.grad).sum() > 0, name


# ------------------------------------------------------------------ padding

@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_padding_changes_nothing(name, opts):
    """Appending padding (pad ids or junk) to source and target, with the right lengths,
    changes neither the logits of the real steps nor the loss."""
    model = make(opts)
    src, sl, tgt, tl = batch()
    logits = model(src, sl, model.shift(tgt)).data
    loss = float(model.loss(src, sl, tgt, tl).data)
    rng = np.random.default_rng(1)
    for fill in (PAD, "junk"):
        extra = np.full((3, 3), PAD) if fill == PAD else rng.integers(0, VS, (3, 3))
        src2 = np.concatenate([src, extra], axis=1)
        tgt2 = np.concatenate([tgt, np.zeros((3, 2), dtype=tgt.dtype)], axis=1)
        logits2 = model(src2, sl, model.shift(tgt2)).data
        np.testing.assert_allclose(logits2[:, :tgt.shape[1]], logits, rtol=1e-10, atol=1e-12)
        assert float(model.loss(src2, sl, tgt2, tl).data) == pytest.approx(loss, rel=1e-12)
    # ... and the loss ignores whatever the target holds past each length.
    tgt3 = tgt.copy()
    tgt3[np.arange(tgt.shape[1])[None, :] >= tl[:, None]] = 4
    assert float(model.loss(src, sl, tgt3, tl).data) == pytest.approx(loss, rel=1e-12)


def test_attention_gives_padding_zero_weight():
    model = make(dict(cell="gru", attention=True, bidirectional_encoder=True))
    src, sl, tgt, _ = batch()
    model(src, sl, model.shift(tgt))
    alpha = model.alignments  # (B, T_y, T_x)
    np.testing.assert_allclose(alpha.sum(axis=2), 1.0, rtol=1e-12)
    pad = np.arange(src.shape[1])[None, :] >= sl[:, None]
    assert np.all(alpha.transpose(0, 2, 1)[pad] == 0.0)


# ------------------------------------------------------------------ teacher forcing

@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_teacher_forcing_equals_step_by_step(name, opts):
    """All T_y steps in one call == one token per call with the state carried (the path
    translate uses) == re-running each prefix (step t sees only y<0..t-1>)."""
    model = make(opts)
    src, sl, tgt, _ = batch()
    tgt_in = model.shift(tgt)
    logits = model(src, sl, tgt_in).data
    memory, state = model.encode(src, sl)
    for t in range(tgt_in.shape[1]):
        step, state = model.decode(tgt_in[:, t:t + 1], state, memory)
        np.testing.assert_allclose(step.data[:, 0], logits[:, t], rtol=1e-10, atol=1e-12)
        prefix = model(src, sl, tgt_in[:, :t + 1]).data
        np.testing.assert_allclose(prefix[:, -1], logits[:, t], rtol=1e-10, atol=1e-12)


def test_shift_starts_with_eos():
    model = make(dict(cell="gru"))
    np.testing.assert_array_equal(model.shift(np.array([[3, 4, 2], [5, 2, 0]])),
                                  [[EOS, 3, 4], [EOS, 5, 2]])


def test_bidirectional_lstm_bridge_shapes():
    model = make(dict(cell="lstm", num_layers=2, bidirectional_encoder=True), hidden=4)
    src, sl, _, _ = batch()
    (outputs, valid), (s0, c0) = model.encode(src, sl)
    assert outputs.shape == (3, 5, 8) and valid.shape == (3, 5)
    assert s0.shape == c0.shape == (2, 3, 4)
    assert np.all(np.abs(s0.data) < 1)  # tanh-projected hidden state


# ------------------------------------------------------------------ translate

def greedy_by_prefixes(model, src, max_len):
    """Greedy decoding re-derived: re-run the whole prefix through forward every step."""
    out = []
    for row in src:
        y = [EOS]
        for _ in range(max_len):
            z = model(row[None, :], None, np.array([y])).data[0, -1].copy()
            z[[PAD, UNK]] = -np.inf
            nxt = int(z.argmax())
            if nxt == EOS:
                break
            y.append(nxt)
        out.append(np.array(y[1:]))
    return out


def test_translate_greedy_stops_at_eos_and_respects_max_len():
    model = make(dict(cell="lstm", attention=True), hidden=6, seed=3)
    model.out.weight.data *= 4  # peaked step distributions: no near-ties
    model.out.bias.data[EOS] += 1.0
    rng = np.random.default_rng(0)
    src = [rng.integers(3, VS, n) for n in (1, 5, 3, 4, 2, 5, 2, 1)]
    max_len = 6
    got = model.translate(src, max_len=max_len)
    want = [greedy_by_prefixes(model, s[None, :], max_len)[0] for s in src]
    lengths = [len(w) for w in want]
    # The test has teeth only if some stop at <EOS> before max_len and some run to it.
    assert min(lengths) < max_len and max(lengths) == max_len, lengths
    for g, w in zip(got, want):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)
        assert EOS not in g and PAD not in g and UNK not in g
    # A padded array with lengths gives the same as the list of sequences.
    ids, lens = np.zeros((len(src), 5), dtype=np.int64), np.array([len(s) for s in src])
    for i, s in enumerate(src):
        ids[i, :len(s)] = s
    for g, w in zip(model.translate(ids, lens, max_len=max_len), want):
        np.testing.assert_array_equal(g, w)


def test_translate_extremes():
    model = make(dict(cell="gru"), hidden=4)
    src = [np.array([3, 4]), np.array([5, 6, 3])]
    model.out.bias.data[EOS] = 1e3  # <EOS> first: empty translations
    assert [len(y) for y in model.translate(src, max_len=5)] == [0, 0]
    model.out.bias.data[EOS] = -1e3  # never <EOS>: exactly max_len tokens
    assert [len(y) for y in model.translate(src, max_len=7)] == [7, 7]
    assert [len(y) for y in model.translate(src, max_len=1)] == [1, 1]
    model.out.bias.data[UNK] = 1e3  # <UNK> only when allowed
    assert all(UNK not in y for y in model.translate(src, max_len=3))
    assert all(np.all(y == UNK) for y in model.translate(src, max_len=3, allow_unk=True))


def test_translate_sampling_is_seeded_and_restores_mode():
    model = make(dict(cell="gru"), hidden=4)
    src = [np.array([3, 4, 5])] * 6
    a = model.translate(src, max_len=8, temperature=1.0, seed=5)
    b = model.translate(src, max_len=8, temperature=1.0, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({tuple(x) for x in a}) > 1  # a near-uniform model: draws differ
    model.eval()
    model.translate(src, max_len=2)
    assert not model.training
    model.train()
    model.translate(src, max_len=2)
    assert model.training


# ------------------------------------------------------------------ errors

def test_bad_input_errors():
    model = make(dict(cell="gru", attention=True))
    src, sl, tgt, tl = batch()
    with pytest.raises(ValueError, match="batch sizes differ: src has 3 sequences, tgt_in 2"):
        model(src, sl, model.shift(tgt)[:2])
    with pytest.raises(ValueError, match="batch sizes differ: src has 2 sequences, tgt 3"):
        model.loss(src[:2], sl[:2], tgt, tl)
    with pytest.raises(ValueError, match="batch sizes differ: 2 src_lengths for a batch of 3"):
        model(src, sl[:2], model.shift(tgt))
    with pytest.raises(ValueError, match="batch sizes differ: 4 tgt_lengths for a batch of 3"):
        model.loss(src, sl, tgt, np.array([1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"src_lengths must be in 1\.\.5"):
        model(src, np.array([6, 2, 1]), model.shift(tgt))
    with pytest.raises(ValueError, match=r"src_lengths must be in 1\.\.5 .* min 0"):
        model(src, np.array([0, 2, 1]), model.shift(tgt))
    with pytest.raises(ValueError, match=r"tgt_lengths must be in 1\.\.4"):
        model.loss(src, sl, tgt, np.array([5, 1, 1]))
    with pytest.raises(ValueError, match=r"src_lengths must be 3 integers \(one per sequence\)"):
        model(src, sl.astype(float), model.shift(tgt))
    with pytest.raises(IndexError, match=r"src token id 7 is out of range \(too large\)"):
        model(np.full((3, 5), VS), sl, model.shift(tgt))
    with pytest.raises(IndexError, match=r"tgt token id -1 is out of range \(negative\)"):
        model.loss(src, sl, -np.ones((3, 4), dtype=np.int64), tl)
    with pytest.raises(ValueError, match=r"src must be \(B, T\) integer token ids"):
        model(np.ones((3, 5)), sl, model.shift(tgt))
    with pytest.raises(ValueError, match="attention=True needs the encoder's memory"):
        model.decode(tgt, None)
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        model.translate(src, sl, max_len=0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.translate(src, sl, temperature=-1.0)
    with pytest.raises(ValueError, match="pass src_lengths only with a padded"):
        model.translate([src[0]], sl[:1])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        Seq2Seq(VS, VT, 4, cell="transformer")
    with pytest.raises(ValueError, match="tgt_vocab_size must be an integer >= 3"):
        Seq2Seq(VS, 2, 4)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        Seq2Seq(VS, VT, 0)


# ------------------------------------------------------------------ the demo

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq2seq")
    return out, demo.main(["--quick", "--no-progress", "--out", str(out)])


def test_demo_data_differs_in_length_and_order():
    pairs = demo.make_pairs(demo.all_dates()[:400], np.random.default_rng(0))
    assert {len(t) for _, t in pairs} == {10}
    assert len({len(s) for s, _ in pairs}) > 5  # T_x varies, T_x ≠ T_y
    assert demo.human(demo.datetime.date(2001, 3, 3), 0) == "3 march 2001"
    assert demo.human(demo.datetime.date(2001, 3, 3), 3) == "03.03.2001"
    assert demo.human(demo.datetime.date(2012, 11, 22), 2) == "the 22nd of november 2012"
    train, held = demo.split_dates(50, seed=0)
    assert len(held) == 50 and not set(train) & set(held)


def test_quick_demo_learns(quick_run):
    """--quick (a few seconds, dates written "dd.mm.yyyy" only) must learn: the held-out
    loss falls from about log V to under 40 % of it, greedy translations of dates never
    trained on get over 40 % of the characters right (chance: about 1/11) and over 20 % of
    whole dates (35-61 % over seeds 0-3; chance 1/36 525)."""
    out, r = quick_run
    assert abs(r["initial_loss"] - r["log_v"]) < 0.1 * r["log_v"]
    assert r["held_out_loss"] < 0.4 * r["log_v"]
    before, after = r["char_accuracy"]
    assert before < 0.2 and after > 0.4
    assert r["accuracy"][1] > 0.2 and r["accuracy"][0] == 0.0
    with open(os.path.join(out, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert all(set(p) <= set("0123456789-") for p in r["predictions"])


def test_quick_demo_resumes(quick_run, tmp_path):
    out, r = quick_run
    steps = r["step"]
    r2 = demo.main(["--quick", "--no-progress", "--out", str(out), "--resume",
                    "--steps", str(steps + 5), "--show", "0"])
    assert r2["start_step"] == steps and r2["step"] == steps + 5
    assert r2["losses"][:steps] == r["losses"]
    assert math.isfinite(r2["held_out_loss"])
