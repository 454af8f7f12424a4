"""The demos' ``--quick`` modes: they must *learn*, not only run.

Each demo runs in-process through ``main(argv)`` (the Numba kernels are already compiled)
with ``--out`` in a temporary directory, and returns a small result dict.  We check that
the loss falls well below the uniform-guess baseline log V, that samples are valid text,
that a fixed seed reproduces the run, that the plot and checkpoint are written, and that
``--resume`` continues from the saved step with the saved model and optimizer.
"""

import contextlib
import math
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
    # the model the run reports on (samples, scores) is the best one by held-out loss
    best = mg.load(os.path.join(out, "best.npz"))
    assert best["step"] == r["best_step"] <= steps
    model_state = r["model"].state_dict()
    assert all(np.array_equal(best["model"][k], v) for k, v in model_state.items())
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


DEMOS = ["names", "words", "seq2seq", "vanishing_gradients", "clipping", "bidirectional",
         "code2seq"]


def demo_parser(name, monkeypatch):
    """The demo module and the ArgumentParser its parse_args builds."""
    import importlib

    from demos import common

    module = importlib.import_module(f"demos.{name}")
    made = []
    real = common.make_parser
    monkeypatch.setattr(common, "make_parser", lambda d: made.append(real(d)) or made[-1])
    module.parse_args(["--quick"])
    return module, made[-1]


@pytest.mark.parametrize("name", DEMOS)
def test_every_numeric_flag_gets_an_argparse_error(name, monkeypatch, capsys):
    """--lr nan, --clip nan, --seed -1 used to give tracebacks, --temperature nan crashed
    at the first sample, --sample-every -5 was silently 5: every numeric flag of every demo
    goes through one validating argparse type now."""
    module, parser = demo_parser(name, monkeypatch)
    numeric = [a for a in parser._actions if a.type is not None]
    assert len(numeric) >= 5
    for action in numeric:
        flag = action.option_strings[0]
        assert action.type.__qualname__ == "number.<locals>.parse", flag  # the shared type
        for bad in ("nan", "inf", "-inf", "-1", "1e999", "abc", ""):
            with pytest.raises(SystemExit) as exit_:
                module.parse_args(["--quick", flag, bad])
            assert exit_.value.code == 2, (flag, bad)
            err = capsys.readouterr().err
            assert f"argument {flag}: expected " in err and "Traceback" not in err, (flag, bad)


def test_bad_flag_messages_say_what_is_expected(capsys):
    for argv, expected in ((["--hidden", "0"], "argument --hidden: expected an integer >= 1, "
                                               "got '0'"),
                           (["--lr", "nan"], "argument --lr: expected a finite number > 0"),
                           (["--dropout", "1"], "argument --dropout: expected a finite number "
                                                ">= 0 and < 1, got '1'"),
                           (["--sample-every", "-5"], "argument --sample-every: expected an "
                                                      "integer >= 0, got '-5'")):
        with pytest.raises(SystemExit):
            names.main(argv)
        assert expected in capsys.readouterr().err


def test_names_runs_as_a_module(tmp_path):
    """``python -m demos.names`` from the repository root: no sys.path edits in the demos."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "demos.names", *QUICK, "--steps", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
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


# ------------------------------------------------------------------ runs that never lose work

def copy_run(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in ("checkpoint.npz", "loss.png"):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return dst


def test_resume_with_other_architecture_flags_can_resume_again(names_run, tmp_path):
    """Resuming without --quick (flags say hidden 128, dropout 0.2) rebuilds the checkpoint's
    model (hidden 64, dropout 0); the checkpoint it saves must record that architecture, so
    the run can be resumed again — it used to record the flags and fail forever after."""
    out = copy_run(names_run[0], tmp_path / "run")
    r = names.main(["--no-progress", "--out", str(out), "--resume", "--steps", "305"])
    assert r["step"] == 305
    ckpt = mg.load(out / "checkpoint.npz")
    assert ckpt["meta"]["demo"] == "names"
    assert ckpt["meta"]["arch"] == {"cell": "lstm", "hidden": 64, "layers": 1, "dropout": 0.0}
    assert ckpt["meta"]["args"]["hidden"] == 64
    again = names.main(["--no-progress", "--out", str(out), "--resume", "--steps", "310",
                        "--hidden", "32", "--cell", "gru"])
    assert (again["start_step"], again["step"]) == (305, 310)
    assert again["model"].hidden_size == 64 and again["model"].cell_type == "lstm"


def test_resuming_another_demos_checkpoint_says_what_it_is(words_run, tmp_path):
    out = copy_run(words_run[0], tmp_path / "run")
    with pytest.raises(SystemExit, match=r"--resume: .*checkpoint\.npz is a words\.py "
                                         r"checkpoint \(cell lstm, hidden 64, .*step 200\), not "
                                         r"a checkpoint of names\.py"):
        names.main([*QUICK, "--out", str(out), "--resume"])
    mg.save({"model": {"w": np.zeros(2)}}, out / "checkpoint.npz")  # not a demo checkpoint
    with pytest.raises(SystemExit, match="is a checkpoint without a demo name"):
        words.main([*QUICK, "--out", str(out), "--resume"])


def test_quick_runs_have_their_own_default_out():
    assert names.parse_args([]).out == "runs/names"
    assert names.parse_args(["--quick"]).out == "runs/names-quick"
    assert words.parse_args(["--quick"]).out == "runs/words-quick"
    assert names.parse_args(["--quick", "--out", "x"]).out == "x"


def test_a_fresh_run_does_not_overwrite_a_longer_run_without_force(names_run, words_run,
                                                                   tmp_path, capsys):
    out = copy_run(names_run[0], tmp_path / "run")
    before = (out / "checkpoint.npz").read_bytes()
    with pytest.raises(SystemExit, match=r"already holds a names\.py checkpoint .*step 300\); "
                                         r"a fresh 20-step names\.py run would overwrite it\. "
                                         r"Use --resume to continue it, another --out, or "
                                         r"--force"):
        names.main([*QUICK, "--out", str(out), "--steps", "20"])
    assert (out / "checkpoint.npz").read_bytes() == before  # refused before anything ran
    assert capsys.readouterr().out == ""  # refused before anything ran
    with pytest.raises(SystemExit, match="already holds a words.py checkpoint"):
        names.main([*QUICK, "--out", str(words_run[0]), "--steps", "400"])
    r = names.main([*QUICK, "--out", str(out), "--steps", "20", "--force"])
    assert mg.load(out / "checkpoint.npz")["step"] == r["step"] == 20


def test_checkpoints_are_saved_periodically_and_at_the_start(tmp_path, monkeypatch):
    from demos import common

    saved = []
    real = common.Checkpoint.save

    def spy(self, history):
        saved.append(len(history.losses))
        return real(self, history)

    monkeypatch.setattr(common.Checkpoint, "save", spy)
    names.main([*QUICK, "--out", str(tmp_path), "--steps", "25", "--save-every", "10"])
    assert saved == [0, 10, 20, 25]


KILL_AFTER = 20


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path):
    """kill -9 in the middle of training: the last periodic checkpoint survives, --resume
    continues from it, and no temp file outlives the next save."""
    import signal
    import time

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "demos.names", *QUICK, "--steps", "100000",
         "--save-every", "10", "--sample-every", "100000", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    path = tmp_path / "checkpoint.npz"
    step = 0
    try:
        deadline = time.monotonic() + 120
        while step < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.05)
            with contextlib.suppress(FileNotFoundError, ValueError):  # not there yet
                step = mg.load(path)["step"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert step >= KILL_AFTER, "the run never reached its second periodic checkpoint"
    saved = mg.load(path)["step"]
    assert saved >= step and saved % 10 == 0
    r = names.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", str(saved + 3)])
    assert (r["start_step"], r["step"]) == (saved, saved + 3)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_an_unwritable_out_fails_before_training(tmp_path, monkeypatch, capsys):
    import errno

    from minigrad import serialization

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match=r"--out .*a-file/run: the directory is not writable"):
        names.main([*QUICK, "--out", str(blocker / "run")])

    def disk_full(f, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "_write_npz", disk_full)
    with pytest.raises(SystemExit, match=r"--out: cannot write a checkpoint before training: "
                                         r"\[Errno 28\] save: could not write "
                                         r"'.*checkpoint\.npz': No space left on device"):
        names.main([*QUICK, "--out", str(tmp_path / "full")])
    assert "\nstep " not in capsys.readouterr().out  # nothing was trained


def test_a_failed_final_save_keeps_the_model_in_a_rescue_file(tmp_path, monkeypatch):
    import errno
    import tempfile

    from minigrad import serialization

    out, rescue_dir = tmp_path / "out", tmp_path / "rescue"
    rescue_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_dir))
    real, calls = serialization.atomic_write, []

    def full_after_the_first_save(path, write, **kwargs):
        in_out = os.path.dirname(os.path.abspath(path)) == str(out)
        calls.append(in_out)
        if in_out and len(calls) > 1:  # the step-0 save works, the disk is full by the end
            raise OSError(errno.ENOSPC, f"save: could not write {path!r}: No space left")
        return real(path, write, **kwargs)

    monkeypatch.setattr(serialization, "atomic_write", full_after_the_first_save)
    with pytest.raises(SystemExit) as exit_:
        names.main([*QUICK, "--out", str(out), "--steps", "15", "--save-every", "0"])
    msg = str(exit_.value.code)
    assert f"the final checkpoint could not be saved to {out / 'checkpoint.npz'}" in msg
    assert "No space left" in msg
    (rescued,) = rescue_dir.glob("minigrad-rescue-names-*.npz")
    assert f"The trained model is safe in {rescued}" in msg
    monkeypatch.undo()
    assert mg.load(rescued)["step"] == 15 and mg.load(rescued)["meta"]["demo"] == "names"
    assert mg.load(out / "checkpoint.npz")["step"] == 0  # the last good one is intact


def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoint(tmp_path):
    """--lr 1000 --clip 0 used to reach a loss of ~4000 nats and die with OverflowError at
    the perplexity print, with nothing saved."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "demos.names", *QUICK, "--lr", "1000",
         "--clip", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    import re

    m = re.fullmatch(r"names\.py: training diverged at step (\d+): the (loss|gradient norm|"
                     r"held-out loss) is .*\. Lower --lr or clip the gradient norm \(--clip 1\); "
                     r"the last good checkpoint \(step (\d+)\) is kept at .*checkpoint\.npz",
                     last)
    assert m, last
    ckpt = mg.load(tmp_path / "checkpoint.npz")
    assert ckpt["step"] == int(m.group(3)) < int(m.group(1))
    assert np.isfinite(ckpt["losses"]).all()


def test_words_diverging_in_process_exits_non_zero(tmp_path):
    with pytest.raises(SystemExit, match=r"words\.py: training diverged at step \d+"):
        words.main([*QUICK, "--lr", "1000", "--clip", "0", "--out", str(tmp_path)])
    assert mg.load(tmp_path / "checkpoint.npz")["meta"]["demo"] == "words"


def test_reports_never_overflow():
    from demos import common

    assert common.perplexity(4000.0) == math.inf
    assert common.perplexity(2.0) == pytest.approx(math.exp(2.0))


def test_the_smoothed_curve_and_final_loss_track_the_data():
    """The old EMA (beta 0.98, started at the first loss) lagged far above a falling loss
    and overstated the final one; the centred mean and the last-k mean follow it."""
    from demos import common

    steps = np.arange(150)
    truth = 1.0 + 3.0 * np.exp(-steps / 25.0)
    noise = np.random.default_rng(0).normal(0, 0.05, steps.size)
    h = common.History()
    for v in truth + noise:
        h.add(float(v))
    smooth = h.smoothed()
    assert smooth.shape == truth.shape
    assert np.abs(smooth - truth)[10:-10].max() < 0.06
    assert np.abs(smooth - truth).max() < 0.1  # centred up to both ends
    final_truth = truth[-1]
    assert abs(h.recent() - final_truth) < 0.05 * final_truth
    assert h.recent() == pytest.approx(np.mean((truth + noise)[-20:]))
