"""``make bench`` keeps working: a tiny run of the training-step benchmark, minigrad only.

No timing is asserted (house rule); the test checks that the harness runs the public layer
API end to end, reports every requested row, and counts the GEMM FLOPs it divides by.
"""

import importlib.util
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rnn.py"
_spec = importlib.util.spec_from_file_location("bench_rnn", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_gemm_flops_count_the_recurrent_and_readout_gemms_three_times():
    # config B, LSTM: recurrent (2048, 128) @ (128, 512), read-out (2048, 128) @ (128, 65);
    # forward, weight gradient and input gradient each; the id input is a lookup (no GEMM)
    BT = 32 * 64
    assert bench.gemm_flops(bench.CONFIGS["B"], "lstm") == 3 * 2 * BT * 128 * (512 + 65)
    # config D: two directions, and the dense input GEMM (50 -> 256) without input gradient
    BT = 16 * 40
    assert bench.gemm_flops(bench.CONFIGS["D"], "lstm") == (
        2 * 3 * 2 * BT * 64 * 256 + 2 * 2 * 2 * BT * 50 * 256 + 3 * 2 * BT * 128 * 17)


def test_quick_run_reports_every_row(tmp_path):
    out = tmp_path / "results.md"
    bench.main(["--quick", "--configs", "A,D", "--cells", "rnn,lstm", "--sections",
                "steps,minchar", "--threads", "1", "--no-torch", "--markdown", str(out)])
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith(("| A (", "| D ("))]
    assert [r.split(" | ")[1] for r in rows] == ["rnn", "lstm", "lstm"]  # D is LSTM only
    for r in rows:
        eager_ms = r.split(" | ")[3]
        assert float(eager_ms) > 0
    assert "| numpy min-char-rnn (float32) |" in text and "minigrad RNN, eager" in text
