"""``make bench`` keeps working: a tiny run of the Transformer benchmark (optional: it needs
torch, and is skipped without it).

No timing is asserted (house rule).  What is checked: the harness builds the same model in
both frameworks, moves the weights with ``models.interop``, and refuses to time unless the
losses agree — and it reports every row.
"""

import argparse
import importlib.util
import pathlib

import pytest

torch = pytest.importorskip("torch")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_transformer.py"
_spec = importlib.util.spec_from_file_location("bench_transformer", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_quick_run_checks_the_losses_and_reports_every_row(tmp_path):
    out = tmp_path / "results.md"
    results = bench.main(["--quick", "--d-model", "16", "--ff", "32", "--markdown", str(out)])
    text = out.read_text()
    assert [label for label, _, _ in results[1]] == [v[0] for v in bench.VARIANTS]
    assert all(m > 0 and t > 0 for _, m, t in results[1])
    for label, _, _ in bench.VARIANTS:
        assert f"| {label} |" in text
    for row in ("gelu (tanh form)", "linear", "layer_norm", "causal self-attention"):
        assert f"| {row} |" in text


def test_a_model_that_differs_from_torchs_is_refused():
    """The loss check is real: torch's copy with one bias changed stops the benchmark."""
    vocab, ids, lengths = bench.names_batch(8)
    model, tmodel = bench.build(vocab, argparse.Namespace(d_model=16, nhead=2, layers=1, ff=32),
                                True, "gelu")
    bench.check_losses("same", *bench.steps(model, tmodel, ids, lengths))
    with torch.no_grad():
        tmodel.out.bias[3] += 1.0
    with pytest.raises(SystemExit, match="losses differ at step 1"):
        bench.check_losses("changed", *bench.steps(model, tmodel, ids, lengths))
