"""``python -m demos.sweep``: real sweeps (``--quick``) on a process pool and under
``mpiexec``, stored in Optuna's SQLite database, resumed, and refused when they would mix
incomparable trials.  Every run has a timeout (a hang fails the test)."""

import math
import os
import subprocess
import sys

import pytest
from test_distributed import MPIEXEC, ROOT, _env, mpirun, needs_mpi, ok

from demos import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
optuna = pytest.importorskip("optuna", reason="pip install 'minigrad[distributed]'")


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "demos.sweep", "--quick", *map(str, args)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def study(out):
    return optuna.load_study(study_name=sweep.STUDY,
                             storage=f"sqlite:///{os.path.join(out, sweep.DB)}")


def values(out):
    return {t.number: t.value for t in study(out).trials
            if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, ok(run("--workers", 2, "--trials", 3, "--out", out))


def test_a_sweep_stores_every_trial_prints_a_table_and_draws(pool_sweep):
    out, result = pool_sweep
    trials = study(out).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        assert t.params["cell"] in ("gru", "lstm") and t.params["hidden"] == 32
        assert 1e-3 <= t.params["lr"] <= 3e-2
        (r,) = t.user_attrs["runs"]  # one seed
        assert r["curve"][0][0] == 0 and r["curve"][-1] == [40, t.value]
        assert t.value < r["curve"][0][1] - 0.4  # it learned: held-out fell from ~log V
    table = result.stdout.split("held-out ± (seeds)")[1]
    assert all(f"\n{t.number:5d}  {t.params['cell']:4s}" in table for t in trials)
    best = min(trials, key=lambda t: t.value)
    assert f"Best: {best.params['cell']} hidden 32 lr {best.params['lr']:.4f}" in result.stdout
    with open(out / sweep.PLOT, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_resume_adds_trials_keeps_the_old_ones_and_reruns_an_interrupted_one(pool_sweep):
    out, _ = pool_sweep
    before = values(out)
    s = study(out)
    s.enqueue_trial({"cell": "gru", "hidden": 32, "lr": 0.02})
    stale = sweep.ask(s, sweep.parse_args(["--quick"]))  # as if killed while it trained
    assert stale.params == {"cell": "gru", "hidden": 32, "lr": 0.02}
    ok(run("--workers", 2, "--trials", 5, "--out", out, "--resume"))
    trials = study(out).trials
    after = values(out)
    assert len(after) == 5 and {k: after[k] for k in before} == before
    assert trials[stale.number].state == optuna.trial.TrialState.FAIL
    again = [t for t in trials if t.params == stale.params
             and t.state == optuna.trial.TrialState.COMPLETE]
    assert len(again) == 1 and math.isfinite(again[0].value)
    refused = run("--trials", 6, "--out", out)  # a fresh sweep would overwrite it
    assert refused.returncode != 0 and "--resume" in refused.stderr
    refused = run("--trials", 6, "--out", out, "--resume", "--steps", 41)
    assert refused.returncode != 0 and "--steps 40 -> 41" in refused.stderr
    assert len(values(out)) == 5


@needs_mpi
def test_under_mpiexec_the_same_trials_give_the_same_losses(pool_sweep, tmp_path):
    """Rank 0 leads, ranks 1 and 2 train; the seeded startup trials are the pool's, and
    each trial is reproducible from its seed, so their held-out losses are the pool's."""
    out, _ = pool_sweep
    assert os.path.exists(MPIEXEC)
    ok(mpirun(3, "-m", "demos.sweep", "--quick", "--trials", 3, "--out", tmp_path))
    assert values(tmp_path) == {k: v for k, v in values(out).items() if k < 3}


@pytest.mark.parametrize("flags, message", [
    (["--cells", "lstm,tcn"], "argument --cells: expected a comma-separated list"),
    (["--hidden", "32,0"], "argument --hidden: expected a comma-separated list"),
    (["--lr", "0.1", "0.01"], "argument --lr: LOW 0.1 is above HIGH 0.01"),
])
def test_bad_flags_are_argparse_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        sweep.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_more_workers_than_cores_are_refused(tmp_path):
    result = run("--workers", sweep.cores() + 1, "--out", tmp_path)
    assert result.returncode != 0 and "more workers would only slow" in result.stderr
