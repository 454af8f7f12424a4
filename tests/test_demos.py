"""The demos' ``--quick`` modes: they must *learn*, not only run.

Each demo runs in-process through ``main(argv)`` (the Numba kernels are already compiled)
with ``--out`` in a temporary directory, and returns a small result dict.  We check that
the loss falls well below the uniform-guess baseline log V, that samples are valid text,
that a fixed seed reproduces the run, that the plot and checkpoint are written, and that
``--resume`` continues from the saved step with the saved model and optimizer.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from demos import names, words

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--quick", "--no-progress"]


@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("names")
    return out, names.main([*QUICK, "--out", str(out)])


@pytest.fixture(scope="module")
def words_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("words")
    return out, words.main([*QUICK, "--out", str(out)])


def assert_learned(r):
    # An untrained model is close to a uniform guess over the vocabulary ...
    assert abs(r["initial_loss"] - r["log_v"]) < 0.15 * r["log_v"]
    # ... and training must take the smoothed loss well below it.
    assert r["final_loss"] < 0.8 * r["log_v"]
    assert r["losses"][-1] < 0.8 * r["log_v"]


def assert_outputs(out, r, steps):
    with open(os.path.join(out, "loss.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    ckpt = mg.load(os.path.join(out, "checkpoint.npz"))
    assert ckpt["step"] == steps and len(ckpt["losses"]) == steps
    assert ckpt["meta"]["vocab"] == r["vocab"].itos
    adam_steps = {s["step"] for s in ckpt["optim"]["state"].values()}
    assert adam_steps == {steps}  # the optimizer state is saved, not just the weights
    model_state = r["model"].state_dict()
    assert all(np.array_equal(ckpt["model"][k], v) for k, v in model_state.items())
    return ckpt


# ------------------------------------------------------------------ names

def test_names_learns(names_run):
    out, r = names_run
    assert_learned(r)
    before, after = r["held_out_loss"]
    assert after < 0.75 * before  # it generalises to names it never saw
    # Real names it never saw score higher, per letter, than implausible strings.
    real = [r["scores"][n][1] for n in names.UNSEEN_REAL]
    fake = [r["scores"][n][1] for n in names.IMPLAUSIBLE]
    assert min(real) > max(fake)


def test_names_samples_are_names(names_run):
    _, r = names_run
    letters = set(r["vocab"].itos[3:])
    assert letters == set("abcdefghijklmnopqrstuvwxyz")
    samples = [s for group in r["samples"].values() for s in group]
    assert len(samples) == 36
    for s in samples:
        assert isinstance(s, str) and set(s) <= letters and len(s) <= 20
    # Mostly name-length strings, not empty and not runaway.
    assert 3 <= np.mean([len(s) for s in samples]) <= 10


def test_names_outputs_and_same_seed(names_run, tmp_path):
    out, r = names_run
    assert_outputs(out, r, steps=300)
    again = names.main([*QUICK, "--out", str(tmp_path)])
    assert again["samples"] == r["samples"]
    assert again["losses"] == r["losses"]
    other = names.main([*QUICK, "--out", str(tmp_path / "seed1"), "--seed", "1",
                        "--steps", "20"])
    assert other["samples"][0.5] != r["samples"][0.5]


def test_names_resume_continues(names_run, tmp_path):
    out, first = names_run
    for f in ("checkpoint.npz", "loss.png"):  # work on a copy: the fixture is shared
        with open(os.path.join(out, f), "rb") as src, open(tmp_path / f, "wb") as dst:
            dst.write(src.read())
    r = names.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", "340"])
    assert (r["start_step"], r["step"]) == (300, 340)
    assert r["losses"][:300] == first["losses"]
    # The weights were restored: the first resumed step is far from an untrained loss.
    assert r["losses"][300] < first["losses"][-1] + 0.3
    assert r["losses"][300] < 0.8 * r["log_v"]
    ckpt = assert_outputs(tmp_path, r, steps=340)  # Adam's step count went on from 300
    assert ckpt["meta"]["args"]["steps"] == 340


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        names.main([*QUICK, "--out", str(tmp_path), "--resume"])


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        names.main(["--hidden", "0"])
    assert "--hidden must be positive" in capsys.readouterr().err


def test_names_runs_as_a_script(tmp_path):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script must find the repository by itself
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "demos", "names.py"), *QUICK, "--steps", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Character-level LSTM language model" in proc.stdout
    assert os.path.exists(tmp_path / "checkpoint.npz")


# ------------------------------------------------------------------ words

def test_words_learns(words_run):
    _, r = words_run
    assert_learned(r)
    before, after = r["perplexity"]
    assert before > 0.5 * len(r["vocab"])  # untrained: about a uniform guess
    assert after < 0.1 * before
    # The demo's batched perplexity agrees with LanguageModel.perplexity, sentence by
    # sentence, on the same held-out split.
    assert r["model"].perplexity(r["held_out"]) == pytest.approx(after, rel=1e-3)


def test_words_samples_are_sentences(words_run):
    out, r = words_run
    vocab = r["vocab"]
    assert len(r["samples"]) == 8
    for s in [*r["samples"], r["greedy"]]:
        ids = vocab.encode(s)
        assert vocab.unk_id not in ids  # every word is in the vocabulary (no <UNK> drawn)
        assert len(ids) <= 30
    assert sum(len(vocab.encode(s)) >= 3 for s in r["samples"]) >= 6
    assert_outputs(out, r, steps=200)


def test_words_same_seed_and_resume(words_run, tmp_path):
    out, first = words_run
    for f in ("checkpoint.npz", "loss.png"):
        with open(os.path.join(out, f), "rb") as src, open(tmp_path / f, "wb") as dst:
            dst.write(src.read())
    r = words.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", "230"])
    assert (r["start_step"], r["step"]) == (200, 230)
    assert r["losses"][:200] == first["losses"]
    assert r["losses"][200] < 0.8 * r["log_v"]
    assert_outputs(tmp_path, r, steps=230)
    short = words.main([*QUICK, "--out", str(tmp_path / "a"), "--steps", "30"])
    again = words.main([*QUICK, "--out", str(tmp_path / "b"), "--steps", "30"])
    assert short["samples"] == again["samples"] and short["losses"] == again["losses"]
