"""The story demos (vanishing gradients, clipping, bidirectional): their ``--quick`` runs
must show what each story claims, not only run.

Each demo runs in-process through ``main(argv)`` with ``--out`` in a temporary directory.
The margins below come from measuring the quick runs over seeds 0–9 (vanishing gradients),
0–7 (clipping) and 0–5 (bidirectional), and are wide enough to hold for every one of them:

* vanishing gradients (T = 40, at init): the RNN's gradient shrinks by ×0.53–0.63 per step
  back in time, gated cells with open memory gates by ×0.93–0.96, gated cells with the
  default init by ×0.58–0.64; ‖∂L/∂a<1>‖/‖∂L/∂a<T>‖ is 2e-11..2e-8 for the RNN and
  0.06..0.23 for the LSTM.  After 100 steps at T = 40 the RNN is at chance (0.49–0.52),
  the GRU and LSTM at 1.0, and the trained gated cells pass 2e-3..3.5 of the gradient back
  to t = 1 against the RNN's 3e-11..3e-7.
* clipping: the unclipped run's gradient norm peaks at 3e6..1e26, the norm-clipped run
  never applies more than 5 and ends at a loss of 0.02–0.28 (log V = 2.08).
* bidirectional: on words that need the next word the left-to-right tagger scores
  0.47–0.51, the bidirectional one 1.0.
"""

import math

import numpy as np
import pytest

from demos import bidirectional, clipping, vanishing_gradients

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--quick", "--no-progress"]


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def numbers(x):
    """The numeric content of a result, for comparing two runs exactly."""
    if isinstance(x, dict):
        return {k: numbers(v) for k, v in x.items() if k not in ("seconds", "plot", "model")}
    if isinstance(x, (list, tuple)):
        return [numbers(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def same(a, b):
    """Equal, with NaN equal to NaN (a non-finite loss is a result too)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_vanishing_gradients_story(tmp_path):
    r = vanishing_gradients.main([*QUICK, "--out", str(tmp_path)])
    short, long = r["lengths"]
    assert (short, long) == (10, 40)
    factor, decay = r["per_step"], r["decay"]
    # (a) at init the RNN's gradient decays geometrically back in time ...
    assert factor["RNN"] < 0.7
    # ... the gated cells with an open memory gate keep most of it at every step ...
    assert factor["GRU"] > 0.9 and factor["LSTM"] > 0.9
    assert decay["LSTM"] > 1e4 * decay["RNN"] and decay["GRU"] > 1e4 * decay["RNN"]
    # ... and with the default (half-open) gates they decay nearly as fast as the RNN.
    assert factor["GRU (bias 0)"] < 0.7 and factor["LSTM (bias 0)"] < 0.7
    for norms in r["init_flow"].values():
        assert norms.shape == (long,) and np.all(np.isfinite(norms)) and norms[-1] > 0
    # (b) everyone learns the short gap; at T = 40 the RNN is at chance, the gated cells not.
    acc = r["accuracy"]
    assert all(acc[c][short] > 0.95 for c in ("rnn", "gru", "lstm"))
    assert acc["rnn"][long] < 0.6
    assert acc["gru"][long] > 0.95 and acc["lstm"][long] > 0.95
    # after training, the gated cells pass far more gradient back than the RNN
    after = {k: v[0] / v[-1] for k, v in r["trained_flow"].items()}
    assert min(after["GRU"], after["LSTM"]) > 1e3 * after["RNN"]
    assert_png(r["plot"])


def test_clipping_story(tmp_path):
    r = clipping.main([*QUICK, "--out", str(tmp_path)])
    s, h, log_v = r["stats"], r["histories"], r["log_v"]
    # Without clipping the gradient norm explodes by orders of magnitude ...
    assert s["none"]["max_norm"] > 1e5
    assert s["none"]["max_norm"] > 1e3 * h["none"]["norms"][0]
    # ... and the run is lost: non-finite, or dead at a constant guess (loss = log V).
    lost = h["none"]["nonfinite_step"] is not None or s["none"]["dead"]
    assert lost and not s["none"]["final_loss"] < log_v - 0.01
    # With norm clipping every applied step has norm <= 5, far below the unclipped peak ...
    assert s["norm"]["max_applied"] <= 5.0 + 1e-3
    assert s["none"]["max_norm"] > 1e4 * s["norm"]["max_applied"]
    # ... the run never goes non-finite, and the loss falls well below log V.
    assert h["norm"]["nonfinite_step"] is None
    assert np.all(np.isfinite(h["norm"]["losses"]))
    assert s["norm"]["final_loss"] < 0.25 * log_v
    assert s["norm"]["final_loss"] < 0.25 * s["norm"]["initial_loss"]
    # The pre-clip norm is what clip_grad_norm_ returned: the first steps exceed max_norm.
    assert h["norm"]["norms"][0] > 5.0
    # All three runs start from the same weights and batches.
    assert h["none"]["losses"][0] == h["norm"]["losses"][0] == h["value"]["losses"][0]
    assert_png(r["plot"])


def test_bidirectional_story(tmp_path):
    r = bidirectional.main([*QUICK, "--out", str(tmp_path)])
    uni, bi = r["accuracy"]["unidirectional"], r["accuracy"]["bidirectional"]
    # Words whose tag needs the next word: a coin flip left to right, solved with the future.
    assert uni["future"] < 0.6
    assert bi["future"] > 0.95
    # Words that the past determines are learned by both.
    assert uni["past"] > 0.95 and bi["past"] > 0.95
    assert bi["all"] > uni["all"] + 0.05
    # The curves start at step 0 and end at the last step.
    for pts in r["curves"].values():
        assert pts[0][0] == 0 and pts[-1][0] == 150
    assert_png(r["plot"])


@pytest.mark.parametrize("demo, argv", [
    (vanishing_gradients, ["--lengths", "5", "--steps", "10"]),
    (clipping, ["--steps", "20"]),
    (bidirectional, ["--steps", "20", "--eval-every", "10"]),
], ids=["vanishing_gradients", "clipping", "bidirectional"])
def test_same_seed_same_numbers(tmp_path, demo, argv):
    runs = [numbers(demo.main([*QUICK, *argv, "--seed", "3", "--out", str(tmp_path / str(i))]))
            for i in range(2)]
    assert same(runs[0], runs[1])
    other = numbers(demo.main([*QUICK, *argv, "--seed", "4", "--out", str(tmp_path / "2")]))
    assert not same(runs[0], other)
