"""``make bench`` keeps working: the training-step benchmark's harness, its FLOP count, its
loss check, and (where torch / JAX are installed) that the peers' models are minigrad's.

No timing is asserted (house rule).  The peers are optional: their tests skip cleanly
without them, and the harness runs with minigrad alone.
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_DIR))
_spec = importlib.util.spec_from_file_location("bench_rnn", _DIR / "bench_rnn.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
peers = bench.peers
Config = peers.Config


def test_gemm_flops_count_the_recurrent_and_head_gemms_three_times():
    # config B, LSTM: recurrent (2048, 128) @ (128, 512), head (2048, 128) @ (128, 65);
    # forward, weight gradient and input gradient each; the id input is a lookup (no GEMM)
    BT = 32 * 64
    assert bench.gemm_flops(bench.CONFIGS["B"], "lstm") == 3 * 2 * BT * 128 * (512 + 65)
    # config D: two directions, and the dense input GEMM (50 -> 256) without input gradient
    BT = 16 * 40
    assert bench.gemm_flops(bench.CONFIGS["D"], "lstm") == (
        2 * 3 * 2 * BT * 64 * 256 + 2 * 2 * 2 * BT * 50 * 256 + 3 * 2 * BT * 128 * 17)
    # config K, GRU: layer 2's input projection (H -> 3H) has all three GEMMs
    BT = 50 * 50
    assert bench.gemm_flops(bench.CONFIGS["K"], "gru") == (
        2 * 3 * 2 * BT * 128 * 384 + 3 * 2 * BT * 128 * 384 + 3 * 2 * BT * 128 * 65)


def test_the_loss_check_rejects_a_different_update_even_when_losses_are_close():
    def check(other):
        bench.check_agreement(bench.CONFIGS["A"], "lstm", 1, {"minigrad": ref, "jax": other})

    ref = [4.0, 3.9999, 3.9998, 3.9997]              # the loss falls by 3e-4 over 3 steps
    check([v * (1 + 3e-7) for v in ref])              # float32 noise: accepted
    for other in ([4.0 - 0.97 * (4.0 - v) for v in ref],   # each loss within 3e-6 relative,
                                                            # but a 3 % smaller fall
                  [v * (1 + 3e-5) for v in ref],            # every loss 3e-5 off
                  ref[:3] + [float("nan")]):
        with pytest.raises(SystemExit, match="jax disagree"):
            check(other)


def test_quick_run_reports_every_section_with_minigrad_alone(tmp_path):
    out = tmp_path / "results.md"
    results = bench.main(["--quick", "--configs", "A", "--cells", "rnn", "--threads", "1",
                          "--frameworks", "minigrad", "--markdown", str(out)])
    text = out.read_text()
    m = results[(bench.CONFIGS["A"], "rnn")][1]
    assert m["time"]["minigrad"] > 0 and m["time"]["GEMM floor"] > 0
    assert m["rss"]["minigrad"] > 50  # MiB: Python + NumPy + Numba at least
    losses = m["losses"]["minigrad"]
    assert len(losses) == bench.VERIFY_STEPS and losses[-1] < losses[0]  # SGD learns
    row = next(ln for ln in text.splitlines() if ln.startswith("| A | rnn | "))
    cols = row.split(" | ")
    assert float(cols[2]) > 0 and cols[3] == "n/a" and cols[5] == "n/a"  # minigrad, no peers
    assert m["other"] is None or m["other"] >= 0  # the machine's other load, in cores
    assert cols[-1].rstrip(" |") == ("n/a" if m["other"] is None else f"{m['other']:.2f}")
    first = next(ln for ln in text.splitlines() if ln.startswith("| A | rnn | ")
                 and "(H 96)" in ln).split(" | ")
    assert all(float(c) > 0 for c in first[2:5])  # empty-cache, new-cell, warm first steps (s)
    assert "### Summary" in text and "| A | V65 H100 B1 T25 (min-char-rnn) | rnn |" in text


@pytest.mark.skipif(bench.busy_seconds() is None, reason="no /proc/stat")
def test_a_window_reports_what_other_processes_ran_meanwhile_not_what_it_ran_itself():
    """Another process busy for 0.4 s of CPU during a window is other load; the same CPU
    reported as the timed process's own is not."""
    import subprocess

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"

    class Child:  # a window's work: one spinning process; its CPU reported as ours or not
        def __init__(self, own):
            self.own = own

        def ask(self, cmd, n, warm):  # (a window's length is not tested: 1 s is given, and
            subprocess.run([sys.executable, "-c", spin], check=True)  # 1.5 s with the warm-up)
            assert warm >= 1  # untimed steps first: the one after another framework ran is slow
            return {"seconds": 1.0, "span": 1.5, "cpu": 0.4 if self.own else 0.0, "loss": 1.0}

    seconds, loss, (other, wall) = bench._window(Child(own=False), "step", 2)
    assert loss == 1.0 and seconds == 0.5 and wall == 1.5
    assert other >= 0.39  # the spin's 0.4 s of CPU (at least; other processes may add)
    _, _, (mine, _) = bench._window(Child(own=True), "step", 2)
    assert mine < other - 0.3  # the same spin, counted as the process's own


def test_rows_timed_under_other_load_are_flagged_below_their_table():
    rep = bench.Report()
    m = {"time": {"minigrad": 0.004, "torch": 0.005, "GEMM floor": 0.002},
         "rss": {"minigrad": 200.0}}
    rows = [(bench.CONFIGS["N"], "lstm", {**m, "other": 0.03}),
            (bench.CONFIGS["B"], "gru", {**m, "other": 0.43}),
            (bench.CONFIGS["K"], "lstm", {**m, "other": None})]  # (no /proc/stat)
    bench.report_steps(rep, 2, rows, ["minigrad", "torch"])
    text = "\n".join(rep.lines)
    assert [ln.split(" | ")[-1] for ln in rep.lines if ln.startswith("| ") and "---" not in ln
            and not ln.startswith("| config")] == ["0.03 |", "0.43 |", "n/a |"]
    flagged = [ln for ln in rep.lines if ln.startswith("**Other load")]
    assert len(flagged) == 1 and "B gru (0.43)" in flagged[0] and "N lstm" not in flagged[0]
    assert "2 threads" in text


# ---------------------------------------------------------------- the peers are the same model

TINY = [Config("ids", 7, 5, 3, 4, cells=("rnn", "gru", "lstm")),
        Config("deep", 7, 5, 3, 4, layers=2, cells=("rnn", "gru", "lstm")),
        Config("bi", 6, 5, 3, 4, out=4, dense=True, bidirectional=True, cells=("lstm",))]
CASES = [pytest.param(c, cell, id=f"{c.name}-{cell}") for c in TINY for cell in c.cells]


@pytest.mark.parametrize("peer", ["torch", "jax"])
@pytest.mark.parametrize("cfg, cell", CASES)
def test_a_peer_computes_minigrads_losses_from_its_weights(peer, cfg, cell, tmp_path):
    pytest.importorskip(peer)
    weights = str(tmp_path / "w.npz")
    mine = peers.make_step("minigrad", cfg, cell, weights)
    ref = [mine() for _ in range(bench.VERIFY_STEPS)]
    theirs = peers.make_step(peer, cfg, cell, weights)
    other = [theirs() for _ in range(bench.VERIFY_STEPS)]
    assert np.isfinite(ref).all() and ref[-1] < ref[0] - 1e-3  # the updates move the loss
    bench.check_agreement(cfg, cell, 1, {"minigrad": ref, peer: other})


PEAK = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("bench_rnn", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
base = bench._peak_mib()
def make_floor():  # operands of 300 MiB, touched
    return np.ones(300 << 18, np.float32).sum
floor, peak = bench._peak_without(make_floor, lambda: np.ones(1 << 18, np.float32).sum())
floor()
print(base, bench._peak_mib(), peak())
"""


@pytest.mark.skipif(not pathlib.Path("/proc/self/clear_refs").exists(), reason="Linux /proc")
def test_minigrads_peak_rss_leaves_out_the_gemm_floors_operands():
    """The floor is timed in minigrad's process only; its operands (190 MiB at C) must not
    count as minigrad's memory against the peers'."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", PEAK, str(_DIR / "bench_rnn.py")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    base, with_floor, peak = map(float, out.split())
    assert with_floor - base > 250  # they were there, and the plain high-water mark saw them
    assert peak - base < 50, (base, with_floor, peak)
