"""The chapter's supplement (``demos/README.md``, "Supplement"): each ``--quick`` run shows its
claim.  Margins were measured on the quick runs with seeds 0-2 (listed per test) and hold
for every one of them; the tests run seed 0.
"""

import math

import numpy as np
import pytest
import test_demos

from demos import bert, transformer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--quick", "--no-progress"]


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_transformer_learns_beside_the_lstm(tmp_path):
    """Seeds 0-2: the quick Transformer ends at 2.12-2.19 nats per letter (log V = 3.37),
    the LSTM at 2.10-2.13.  The claim: the Transformer learns, far below log V, and the table
    compares both; the attention maps are causal distributions."""
    r = transformer.main([*QUICK, "--out", str(tmp_path)])
    t, lstm = r["runs"]["Transformer"], r["runs"]["LSTM"]
    assert t["held_out"][1] < r["log_v"] - 0.9
    assert t["held_out"][1] < t["held_out"][0] - 0.9
    assert lstm["held_out"][1] < r["log_v"] - 0.9
    for name, run in r["runs"].items():
        assert name in r["table"] and f"{run['held_out'][1]:.3f}" in r["table"]
        assert len(run["history"].evals) == len(run["seconds"])  # loss against seconds
        assert all(isinstance(s, str) for s in r["samples"][name])
    T = len(r["shown"]) + 1
    for m in r["maps"]:  # (heads, T, T): rows are distributions over the past only
        assert m.shape[1:] == (T, T)
        np.testing.assert_allclose(m.sum(-1), 1, rtol=1e-5)
        assert (m[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0).all()
    assert_png(r["plot"])


def test_mask_tokens_chooses_15_percent_then_80_10_10():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50, (4000, 30))
    lengths = rng.integers(1, 31, 4000)
    inputs, targets = bert.mask_tokens(ids, lengths, rng, mask_id=50, n_words=50)
    real = np.arange(30)[None] < lengths[:, None]
    chosen = targets >= 0
    assert not (chosen & ~real).any() and chosen.any(axis=1).all()  # real tokens, ≥ 1 each
    assert 0.14 < chosen.sum() / real.sum() < 0.17
    np.testing.assert_array_equal(targets[chosen], ids[chosen])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 50)[chosen].mean()
    kept = (inputs == ids)[chosen].mean()  # 10 % kept, plus random draws that hit the word
    assert 0.78 < masked < 0.82 and 0.09 < kept < 0.12  # ±4 standard deviations
    assert inputs[chosen].min() >= 3  # random words, never a special token


def test_bert_fills_blanks_and_albert_is_smaller(tmp_path):
    """Seeds 0-2, quick runs, held-out masked-word accuracy: BERT 29-31 % (3.1-4.1x the
    baseline), ALBERT 20-23 % (2.1-2.7x), always answering the most frequent word 7.6-9.9 %;
    BERT's loss 3.4-3.7 nats (log V = 6.3); ALBERT has 2.6x fewer parameters."""
    r = bert.main([*QUICK, "--albert", "--out", str(tmp_path)])
    b, a, base = r["runs"]["BERT"], r["runs"]["ALBERT"], r["baseline"]
    assert b["accuracy"] > 2.5 * base
    assert a["accuracy"] > 1.7 * base
    assert a["params"] < b["params"] / 2
    assert b["loss"] < math.log(r["vocab_size"]) - 1.5
    assert len(r["fills"]["BERT"]) >= 5 and all("___" in t for t, _, _ in r["fills"]["BERT"])
    assert_png(r["plot"])


@pytest.mark.parametrize("name", ["transformer", "bert"])
def test_every_numeric_flag_gets_an_argparse_error(name, monkeypatch, capsys):
    """The rule of tests/test_demos.py for the supplement's demos too."""
    test_demos.test_every_numeric_flag_gets_an_argparse_error(name, monkeypatch, capsys)


def test_flags_that_do_not_fit_together_are_refused(capsys):
    for module, argv, match in ((transformer, ["--d-model", "30"], "divisible by --heads 4"),
                                (bert, ["--albert", "--embed", "64"], "smaller than --hidden")):
        with pytest.raises(SystemExit):
            module.parse_args(argv)
        assert match in capsys.readouterr().err
