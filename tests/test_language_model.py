"""LanguageModel: sequence log-probabilities, perplexity, sampling, learning and errors.

Every expectation is computed independently of the method under test: log-probabilities
by feeding one token at a time through ``model(...)`` with a carried state, greedy decoding
and top-k sets by recomputing the step distributions in NumPy.  Models are tiny.
"""

import math

import numpy as np
import pytest

import minigrad as mg
from minigrad.data import BPTTBatches, Vocab, pad_batch
from minigrad.optim import Adam, clip_grad_norm_
from models.language_model import LanguageModel

PAD, UNK, EOS = 0, 1, 2
LETTERS = "abcdefghij"


def make_model(cell="lstm", hidden=16, seed=0, sharpen=4.0, letters=LETTERS, **kw):
    """A random model whose output weights are scaled up so step distributions are peaked
    (near-uniform outputs would make greedy/top-k tests toothless)."""
    mg.manual_seed(seed)
    vocab = Vocab.build(letters)
    model = LanguageModel(len(vocab), hidden, cell=cell, vocab=vocab, **kw)
    model.out.weight.data *= sharpen
    return model


def log_softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum()))


def stepwise_log_probs(model, ids):
    """log P(y<t> | y<1..t-1>) for each t, one token per call with the state carried."""
    was = model.training
    model.eval()
    with mg.no_grad():
        state, prev, out = None, EOS, []
        for y in ids:
            logits, state = model(np.array([[prev]]), state)
            out.append(log_softmax64(logits.data[0, -1])[y])
            prev = y
    model.train(was)
    return np.array(out)


def banned_argmax(z):
    z = np.asarray(z, dtype=np.float64).copy()
    z[[PAD, UNK]] = -np.inf
    return int(z.argmax())


def manual_greedy(model, prime_ids, max_len):
    """Greedy decoding by hand: warm up on [<EOS>] + prime, then argmax step by step."""
    model.eval()
    with mg.no_grad():
        logits, state = model(np.array([[EOS, *prime_ids]]))
        z, out = logits.data[0, -1], list(prime_ids)
        for _ in range(max_len):
            t = banned_argmax(z)
            if t == EOS:
                break
            out.append(t)
            logits, state = model(np.array([[t]]), state)
            z = logits.data[0, -1]
    return out


def step_logits(model, seq):
    """The logits predicting every position of ``seq`` (and the one after it): (len+1, V)."""
    model.eval()
    with mg.no_grad():
        logits, _ = model(np.array([[EOS, *seq]]))
    return logits.data[0].astype(np.float64)


# ------------------------------------------------------------------ probabilities

@pytest.mark.parametrize("cell,layers,embed", [("rnn", 1, None), ("gru", 2, None),
                                               ("lstm", 1, None), ("lstm", 2, 5)])
def test_log_prob_is_sum_of_stepwise_log_softmax(cell, layers, embed):
    model = make_model(cell, num_layers=layers, embedding_dim=embed, dropout=0.5)
    model.train()  # log_prob must switch dropout off by itself, and restore the mode
    text = "abcaj"
    ids = model.vocab.encode(text, add_eos=True)
    steps = stepwise_log_probs(model, ids)
    assert model.log_prob(text) == pytest.approx(steps.sum(), rel=1e-5, abs=1e-5)
    assert model.log_prob(ids) == pytest.approx(steps.sum(), rel=1e-5, abs=1e-5)
    # The <EOS> term is included: without it, the last step is missing.
    assert model.log_prob(text, add_eos=False) == pytest.approx(steps[:-1].sum(), rel=1e-5,
                                                                abs=1e-5)
    assert steps[-1] < -1e-3  # so the two checks above really differ
    assert model.training


def test_perplexity_is_consistent_with_log_prob():
    model = make_model("gru")
    texts = ["abc", "jihg", "a", "eeeeeee"]
    lps = [model.log_prob(t) for t in texts]
    n = sum(len(t) + 1 for t in texts)  # every text also predicts its <EOS>
    assert model.perplexity(texts) == pytest.approx(math.exp(-sum(lps) / n), rel=1e-6)
    assert model.perplexity("abc") == pytest.approx(math.exp(-lps[0] / 4), rel=1e-6)
    assert 1.0 < model.perplexity(texts) < 1e6


def test_log_probs_of_all_next_tokens_sum_to_one():
    """P(prefix + c) / P(prefix) over every next token c (including <EOS>) sums to 1."""
    model = make_model("lstm")
    prefix = model.vocab.encode("bad")
    base = model.log_prob(prefix, add_eos=False)
    total = sum(math.exp(model.log_prob(np.append(prefix, c), add_eos=False) - base)
                for c in range(len(model.vocab)))
    assert total == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------------ sampling

def test_temperature_zero_is_greedy_and_tiny_temperature_matches():
    model = make_model("lstm")
    want = manual_greedy(model, [], 12)
    got = model.sample(3, max_len=12, temperature=0, return_ids=True)
    assert all(g.tolist() == want for g in got)
    for seed in range(3):
        tiny = model.sample(3, max_len=12, temperature=1e-8, seed=seed, return_ids=True)
        assert all(t.tolist() == want for t in tiny)


def test_top_k_never_leaves_the_top_k():
    model = make_model("gru", sharpen=1.5)
    k, max_len = 3, 10

    def outside_top_k(samples):
        bad = 0
        for seq in samples:
            z = step_logits(model, seq.tolist())
            z[:, [PAD, UNK]] = -np.inf
            top = np.argsort(z, axis=1)[:, -k:]
            bad += sum(int(tok not in top[t]) for t, tok in enumerate(seq))
            if len(seq) < max_len:  # it stopped: <EOS> was drawn, so it was in the top k
                bad += int(EOS not in top[len(seq)])
        return bad

    samples = model.sample(30, max_len=max_len, temperature=2.0, top_k=k, seed=0,
                           return_ids=True)
    assert sum(map(len, samples)) > 50
    assert outside_top_k(samples) == 0
    # The check has teeth: without top_k the same model does leave the top k.
    free = model.sample(30, max_len=max_len, temperature=2.0, seed=0, return_ids=True)
    assert outside_top_k(free) > 0


def test_eos_stops_generation():
    model = make_model("rnn")
    for s in model.sample(20, max_len=15, temperature=1.5, seed=1, return_ids=True):
        assert EOS not in s.tolist()
    model.out.bias.data[EOS] = 1e4  # <EOS> is certain at every step
    assert model.sample(5, temperature=1.0, seed=0) == [""] * 5
    assert model.sample(2, temperature=0) == [""] * 2
    assert model.sample(3, prime="ab", seed=0) == ["ab"] * 3


def test_max_len_counts_generated_tokens():
    model = make_model("lstm")
    lengths = [len(s) for s in model.sample(20, max_len=6, temperature=1.0, seed=0)]
    assert max(lengths) <= 6
    model.out.bias.data[EOS] = -1e4  # never stops by itself
    assert [len(s) for s in model.sample(4, max_len=7, seed=0)] == [7] * 4
    primed = model.sample(4, max_len=7, prime="ab", seed=0)
    assert all(len(s) == 2 + 7 and s.startswith("ab") for s in primed)


def test_prime_warms_up_the_state():
    model = make_model("lstm")
    vocab = model.vocab
    differs = 0
    for prime in ["a", "ji", "cab", "eee"]:
        pid = vocab.encode(prime).tolist()
        got = model.sample(1, max_len=10, temperature=0, prime=prime, return_ids=True)[0]
        assert got.tolist() == manual_greedy(model, pid, 10)  # continues from the primed state
        # Had the prime only been copied to the output (state not warmed up), the
        # continuation would be the unprimed greedy string fed from <EOS> alone.
        unprimed = manual_greedy(model, [], 10)
        differs += got.tolist()[len(pid):] != unprimed
    assert differs >= 1  # at least one prime where ignoring it would be caught
    # The state after a prime gives different next-token logits than the start state.
    z0 = step_logits(model, [])[-1]
    z1 = step_logits(model, vocab.encode("cab").tolist())[-1]
    assert np.abs(z0 - z1).max() > 1e-3


def test_seeds_make_samples_reproducible():
    model = make_model("gru", sharpen=1.0)
    a = model.sample(10, max_len=12, seed=123)
    assert model.sample(10, max_len=12, seed=123) == a
    assert model.sample(10, max_len=12, seed=124) != a
    mg.manual_seed(7)
    b = model.sample(10, max_len=12)
    mg.manual_seed(7)
    assert model.sample(10, max_len=12) == b


def test_pad_never_sampled_unk_only_when_allowed():
    model = make_model("lstm", sharpen=1.0)
    model.out.bias.data[PAD] = 8.0  # both specials would dominate if they were allowed
    model.out.bias.data[UNK] = 8.0
    ids = np.concatenate(model.sample(20, max_len=10, seed=0, return_ids=True))
    assert ids.size > 0 and PAD not in ids and UNK not in ids
    with_unk = model.sample(20, max_len=10, seed=0, allow_unk=True, return_ids=True)
    ids = np.concatenate(with_unk)
    assert PAD not in ids
    assert (ids == UNK).mean() > 0.5
    assert "<UNK>" in "".join(model.sample(5, max_len=5, seed=0, allow_unk=True))


def test_samples_are_text_over_the_vocabulary():
    model = make_model("rnn", sharpen=1.0)
    for s in model.sample(10, max_len=8, seed=3):
        assert isinstance(s, str) and len(s) <= 8 and set(s) <= set(LETTERS)


# ------------------------------------------------------------------ learning

def test_tiny_model_memorises_three_names():
    names = ["anna", "bob", "carl"]
    mg.manual_seed(0)
    vocab = Vocab.build(names)
    model = LanguageModel(len(vocab), 24, cell="lstm", vocab=vocab)
    opt = Adam(model.parameters(), lr=0.03)
    ids, lengths, _ = pad_batch([vocab.encode(n, add_eos=True) for n in names])
    for _ in range(250):
        loss, _ = model.loss(ids, lengths)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    # NOTE: the loss cannot reach 0: the first letter is a fair 3-way choice, so the best
    # mean per-token loss is 3·log 3 / 14 tokens (4+1, 3+1, 4+1 with <EOS>).
    floor = 3 * math.log(3) / int(lengths.sum())
    assert float(loss.data) < floor + 0.02
    for name in names:
        assert model.log_prob(name) == pytest.approx(math.log(1 / 3), abs=0.05)
        assert model.sample(1, temperature=0, prime=name[0]) == [name]
    assert model.sample(1, temperature=0)[0] in names
    drawn = model.sample(60, temperature=1.0, seed=0)
    assert set(drawn) == set(names)


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def test_truncated_bptt_on_one_long_text_reduces_the_loss():
    text = "the quick brown fox jumps over the lazy dog. " * 12
    mg.manual_seed(0)
    vocab = Vocab.build(text)
    model = LanguageModel(len(vocab), 32, cell="gru", vocab=vocab)
    stream = vocab.encode(text)
    batches = BPTTBatches(stream, batch_size=4, seq_len=12)

    # Carrying the state across chunks = one forward over the whole row.
    chunks = list(batches)[:2]
    state, total = None, 0.0
    for x, y in chunks:
        loss, state = model.loss(y, inputs=x, state=state, reduction="sum")
        total += float(loss.data)
    x = np.concatenate([c[0] for c in chunks], axis=1)
    y = np.concatenate([c[1] for c in chunks], axis=1)
    whole, _ = model.loss(y, inputs=x, reduction="sum")
    assert total == pytest.approx(float(whole.data), rel=1e-4)

    opt = Adam(model.parameters(), lr=0.01)
    epoch_losses = []
    for _ in range(12):
        state, losses = None, []
        for x, y in batches:
            loss, state = model.loss(y, inputs=x, state=state)
            state = _detach(state)  # truncated BPTT: keep the values, cut the graph
            opt.zero_grad()
            loss.backward()
            clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.data))
        epoch_losses.append(np.mean(losses))
    assert epoch_losses[0] > 0.8 * math.log(len(vocab))
    assert epoch_losses[-1] < 0.3 * epoch_losses[0]


# ------------------------------------------------------------------ errors

def test_errors_are_clear():
    model = make_model("rnn")
    V = len(model.vocab)
    with pytest.raises(ValueError, match=r"prime contains tokens not in the vocabulary.*'z'"):
        model.sample(prime="abz")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(temperature=-0.5)
    with pytest.raises(ValueError, match=rf"top_k must be in 1\.\.{V}"):
        model.sample(top_k=V + 1)
    with pytest.raises(ValueError, match="top_k"):
        model.sample(top_k=0)
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab.build([])
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab.build(["", ""], level="word")
    with pytest.raises(ValueError, match="no texts"):
        model.perplexity([])
    with pytest.raises(ValueError, match="empty sequence"):
        model.log_prob([], add_eos=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature="1.0"), "temperature must be a finite number >= 0"),
    (dict(temperature=math.nan), "temperature must be a finite number >= 0"),
    (dict(temperature=True), "temperature must be a finite number >= 0"),
    (dict(n=True), "n must be a positive integer"),
    (dict(max_len=2.0), "max_len must be a positive integer"),
    (dict(prime=[[3, 4]]), r"prime must be text or a 1-D sequence of integer ids, got shape "
                           r"\(1, 2\)"),
    (dict(prime=[1.5]), "prime must be text or a 1-D sequence of integer ids"),
    (dict(prime=7), "prime must be text or a 1-D sequence of integer ids"),
])
def test_sampling_arguments_of_the_wrong_type_get_our_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_model("gru").sample(**kwargs)


def test_prime_ids_out_of_range_name_the_bad_id():
    model = make_model("rnn")
    V = len(model.vocab)
    with pytest.raises(IndexError, match=r"prime: token id -3 is out of range \(negative\)"):
        model.sample(prime=[4, -3, V + 5])
    with pytest.raises(IndexError, match=rf"token id {V + 5} is out of range \(too large\): "
                                         rf"expected 0\.\.{V - 1}"):
        model.sample(prime=[4, V + 5])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=1.0),
                                    dict(temperature=1.0, top_k=3)])
def test_sampling_a_non_finite_model_says_so(bad, kwargs):
    # A diverged model used to crash in NumPy ("probabilities contain NaN") or, greedy,
    # silently return empty strings.
    model = make_model("lstm")
    model.out.bias.data[:] = bad
    with pytest.raises(FloatingPointError, match="sample: the model's outputs .* are not "
                                                 "finite"):
        model.sample(3, seed=0, **kwargs)
