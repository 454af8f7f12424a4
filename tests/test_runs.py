"""Runs that keep their best model, and the demos' rough edges.

* ``best.npz`` beside ``checkpoint.npz`` holds the model of the lowest held-out loss; the
  samples and scores at the end come from it (``--use-last`` for the last), the run says
  which step it came from, ``--early-stop N`` ends a run after N evaluations without a
  better one, and ``--resume`` keeps the run's best;
* the divergence threshold, by a run that must stop (a loss ~9 × log V, finite);
* ``--out`` naming a file, and a model too big for memory, each in one line.

Where a run must overfit on cue, the held-out loss is the real one plus a penalty that grows
after step 120 (``overfit``): the bookkeeping is then checked against known steps.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from demos import common, names
from demos.common import lm, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--quick", "--no-progress", "--sample-every", "60", "--save-every", "0"]


@pytest.fixture
def overfit(monkeypatch):
    """Held-out losses that get worse after step 120 (real ones, plus 1 nat per 60 steps)."""
    seen = {"step": 0}
    add, real = training.History.add, lm.evaluate

    def counting_add(self, loss):
        add(self, loss)
        seen["step"] = len(self.losses)

    def evaluate(model, seqs, *args, **kwargs):
        return real(model, seqs, *args, **kwargs) + max(0, seen["step"] - 120) / 60

    monkeypatch.setattr(training.History, "add", counting_add)
    monkeypatch.setattr(lm, "evaluate", evaluate)
    return seen


def weights(state):
    return {k: np.asarray(v) for k, v in state.items()}


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_the_best_model_is_kept_and_the_summary_comes_from_it(tmp_path, overfit, capsys):
    r = names.main([*QUICK, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    best, last = mg.load(tmp_path / "best.npz"), mg.load(tmp_path / "checkpoint.npz")
    assert (best["step"], best["meta"]["best"]["step"], last["step"]) == (120, 120, 300)
    assert r["best_step"] == 120 and len(best["losses"]) == 120  # a complete checkpoint
    assert [s for s, _ in last["evals"]] == [0, 60, 120, 180, 240, 300]
    assert best["meta"]["best"]["held_out"] == min(v for _, v in last["evals"])
    assert "The summary below comes from the best model by held-out loss: step 120" in out
    assert f"{tmp_path / 'best.npz'} (the best, step 120)" in out
    assert same(weights(r["model"].state_dict()), best["model"])  # samples, scores from it
    assert not same(best["model"], last["model"])
    # the held-out loss reported is the best model's (plus the penalty of the step it is at)
    assert r["held_out_loss"][1] - 3 == pytest.approx(best["meta"]["best"]["held_out"],
                                                      abs=1e-9)

    # --resume keeps the run's best (the later evaluations are worse) ...
    r = names.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", "330"])
    assert r["best_step"] == 120 and mg.load(tmp_path / "best.npz")["step"] == 120
    assert same(weights(r["model"].state_dict()), best["model"])
    # ... and --use-last samples from the last model instead
    r = names.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", "340",
                    "--use-last"])
    assert "as --use-last asks; the best (step 120" in capsys.readouterr().out
    assert same(weights(r["model"].state_dict()), mg.load(tmp_path / "checkpoint.npz")["model"])


def test_early_stop_ends_a_run_that_stopped_improving(tmp_path, overfit, capsys):
    r = names.main([*QUICK, "--out", str(tmp_path), "--early-stop", "2"])
    out = capsys.readouterr().out
    assert ("early stop at step 240: no better held-out loss in 2 evaluations (best "
            in out) and "at step 120)" in out
    assert (r["step"], r["best_step"], r["stopped"]) == (240, 120, "early stop")
    assert mg.load(tmp_path / "checkpoint.npz")["step"] == 240  # saved, resumable


def test_best_npz_is_the_model_of_the_lowest_real_held_out_loss(tmp_path):
    r = names.main([*QUICK, "--out", str(tmp_path), "--steps", "120"])
    best = mg.load(tmp_path / "best.npz")
    assert best["meta"]["demo"] == "names" and best["step"] == r["best_step"]
    model = r["model"]
    model.load_state_dict(best["model"])
    held = [names.Vocab(best["meta"]["vocab"]).encode(n, add_eos=True)
            for n in names.load_names()[-names.HELD_OUT:]]
    assert common.evaluate(model, held) == pytest.approx(best["meta"]["best"]["held_out"],
                                                         rel=1e-6)
    assert best["meta"]["best"]["held_out"] <= min(v for _, v in best["evals"]) + 1e-12


def test_a_run_far_above_log_v_stops_at_the_divergence_threshold(tmp_path):
    """A model gone bad — every letter predicted as <PAD> with logit 30, a loss of ~30 nats
    (≈ 9 log V, finite) — stops at once; a threshold ten times higher would train on."""
    names.main([*QUICK, "--out", str(tmp_path), "--steps", "2"])
    ckpt = mg.load(tmp_path / "checkpoint.npz")
    ckpt["model"]["out.weight"][...] = 0
    ckpt["model"]["out.bias"][...] = 0
    ckpt["model"]["out.bias"][0] = 30.0  # <PAD> is never a target
    mg.save(ckpt, tmp_path / "checkpoint.npz")
    log_v = math.log(len(ckpt["meta"]["vocab"]))
    with pytest.raises(SystemExit, match=r"names\.py: training diverged at step 3: the loss is "
                                         r"30(\.\d+)?, far above log V \(stopping above 13\.5\)"):
        names.main([*QUICK, "--out", str(tmp_path), "--resume", "--steps", "20"])
    assert 4 * log_v < 30 < 40 * log_v and common.DIVERGED * log_v < 30
    assert mg.load(tmp_path / "checkpoint.npz")["step"] == 2


def test_out_naming_a_file_says_so(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(SystemExit, match=r"--out .*f: is a file, not a directory; choose "
                                         r"another --out"):
        names.main([*QUICK, "--out", str(tmp_path / "f")])
    assert (tmp_path / "f").read_text() == "mine"


def test_a_model_too_big_for_memory_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demos.names", "--quick", "--no-progress", "--hidden",
         "100000000", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("names.py: out of memory (Unable to allocate") and \
        "choose a smaller --hidden" in line


def _names_run(tmp_path, monkeypatch, whole):
    """The names demo for 40 steps, its step one compiled call (``whole``) or the loop
    written out (as with ``sync``): (losses, the compiled step or None, final weights)."""
    made, real = [], training.whole_step
    monkeypatch.setattr(training, "whole_step", lambda *a, **k: made.append(real(*a, **k)) or
                        made[-1] if whole else None)
    out = tmp_path / ("whole" if whole else "loop")
    names.main([*QUICK, "--out", str(out), "--steps", "40"])
    ckpt = mg.load(out / "checkpoint.npz")
    return ckpt["losses"], made, weights(ckpt["model"])


def test_the_training_loop_takes_a_step_as_one_compiled_call(tmp_path, monkeypatch):
    """``train()``'s step (loss, zero_grad, backward, clipping, Adam) as one ``mg.compile``d
    call equals the loop written out, step for step, and it did compile."""
    got, made, w = _names_run(tmp_path, monkeypatch, True)
    want, none, w0 = _names_run(tmp_path, monkeypatch, False)
    assert len(made) == 1 and made[0].why is None and made[0].compiled_calls > 20 and not none
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for k in w0:
        np.testing.assert_allclose(w[k], w0[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind", ["raises", "falls back"])
def test_a_loss_that_cannot_be_one_call_trains_with_the_loop_written_out(kind):
    """A loss_fn running NumPy on its batch raises inside a trace; one building a tensor
    from NumPy data makes mg.compile fall back (that call took the step eagerly): either way
    the loop runs it as written from there, every step taken once (the loop's weights)."""
    def run(whole):
        mg.manual_seed(0)
        model = mg.nn.Linear(3, 1)
        opt = mg.optim.SGD(model.parameters(), lr=0.1)
        xs = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)

        def loss_fn(batch):
            i = int(np.asarray(batch)[0]) if kind == "raises" else 3  # (a TypeError traced)
            return ((model(mg.tensor(xs[i:i + 4])) - 1.0) ** 2).mean()
        real = training.whole_step
        training.whole_step = real if whole else (lambda *a, **k: None)
        try:
            hist = training.train(model, opt, loss_fn, iter(np.arange(12)[:, None] % 16),
                                  12, progress=False)
        finally:
            training.whole_step = real
        return hist.losses, model.weight.data.copy()
    (got, w), (want, w0) = run(True), run(False)
    assert got == want and np.array_equal(w, w0) and got[-1] < got[0]
