"""Data-parallel training: ``minigrad.distributed`` in one process, and real MPI jobs
(``mpiexec -n N python -m mpi4py ...``, MPICH from its PyPI wheel, installed by ``make
test``) for determinism, the demos' ``--distributed`` runs, resume and faults.

Every MPI job runs with a timeout; a job that outlives it fails its test (a hang is a bug)
and is killed with all its processes.  The ranks' programs are ``tests/mpi_scenarios.py``
and the demos themselves.
"""

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from minigrad import distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpi_scenarios  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
SCENARIOS = os.path.join(ROOT, "tests", "mpi_scenarios.py")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not os.path.exists(MPIEXEC),
    reason="needs mpi4py and MPICH's mpiexec: pip install 'minigrad[distributed]' "
           "(make test installs them)")
# Float32 round-off: each weight tensor within rtol 1e-5 of the one-process run's, in norm
# (measured: ~3e-7), and every element within 1e-5 |w| + 1e-5.  Why an absolute term: Adam
# divides each component by its own RMS, so a component whose gradient nearly cancels over the
# batch turns the (unavoidable) round-off of a different summation order into steps of up to
# lr.  One process shows the same spread when only the order of its batch rows changes
# (measured at the names demo's --quick: 1.7e-6 there, 2.5e-6 for 2 ranks).
RTOL, ATOL = 1e-5, 1e-5


def assert_same_weights(got, want):
    for name, w in want.items():
        assert np.linalg.norm(got[name] - w) <= RTOL * np.linalg.norm(w), name
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=ATOL, err_msg=name)


def _env():
    """This environment without any MPI launcher's variables (the test runs outside MPI)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_"))}


def _descendants(pid):
    """Every process below ``pid`` (Hydra puts each rank in its own session)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _kill_tree(p):
    for pid in [p.pid, *_descendants(p.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.communicate()


def launch(n, *args):
    """Start ``mpiexec -n n python -m mpi4py args...`` from the repository root."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p, timeout):
    """Wait for a job; if it outlives ``timeout`` seconds, kill it all and fail (a hang)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(p)
        pytest.fail(f"{' '.join(p.args)} did not end within {timeout} s: a hang")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def mpirun(n, *args, timeout=180):
    return finish(launch(n, *args), timeout)


def ok(result):
    assert result.returncode == 0, f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n" \
                                   f"{result.stderr}"
    return result


# ---------------------------------------------------------------- one process, no MPI

class FakeComm:
    """Just enough of a communicator for the arithmetic of ``shard`` at any rank."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):  # noqa: N802 (mpi4py's names)
        return self.rank

    def Get_size(self):  # noqa: N802
        return self.size


@pytest.fixture
def world():
    yield dist
    dist.init()  # back to this process's own world (a single process)


def test_a_single_process_needs_no_mpi():
    """Without a launcher, init() imports nothing and everything is size 1, rank 0."""
    code = ("import sys, minigrad as mg; from minigrad import distributed as d; "
            "print(d.init(), d.rank(), d.size(), 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), text=True,
                         capture_output=True, timeout=120, check=True).stdout
    assert out.split() == ["None", "0", "1", "False"]


def test_at_size_one_every_call_is_the_identity(world):
    """DistributedOptimizer steps exactly as the optimizer it wraps; shard, broadcast and
    synchronize change nothing; state dicts are the wrapped optimizer's."""
    assert world.init() is None and (world.rank(), world.size()) == (0, 1)
    model, data = mpi_scenarios.build(hidden=8, names=20)
    twin, _ = mpi_scenarios.build(hidden=8, names=20)
    plain = mg.optim.Adam(twin.parameters(), lr=0.1)
    wrapped = dist.DistributedOptimizer(mg.optim.Adam(model.parameters(), lr=0.1), op="sum")
    ids, lengths, _ = mg.data.pad_batch(data[:6])
    assert dist.shard(ids) is ids and all(a is b for a, b in zip(dist.shard(ids, lengths),
                                                                  (ids, lengths)))
    dist.broadcast_parameters(model)
    for _ in range(3):
        for m, opt in ((model, wrapped), (twin, plain)):
            opt.zero_grad()
            m.loss(ids, lengths)[0].backward()
        grads = [p.grad for p in model.parameters()]
        assert wrapped.synchronize(1.5, 2) == (1.5, 2.0)
        assert all(p.grad is g for p, g in zip(model.parameters(), grads))
        wrapped.step()
        plain.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert np.array_equal(p.data, q.data)
    wrapped.lr = 0.5
    assert plain.state_dict()["type"] == wrapped.state_dict()["type"] == "Adam"
    assert wrapped.optimizer.lr == 0.5 and "DistributedOptimizer(Adam" in repr(wrapped)


@pytest.mark.filterwarnings("ignore:distributed.init")
@given(B=st.integers(1, 40), n=st.integers(1, 8))
def test_shard_splits_every_batch_into_contiguous_near_equal_shares(B, n):
    batch = np.arange(B * 2).reshape(B, 2)
    if n > B:
        dist.init(FakeComm(0, n))
        with pytest.raises(ValueError, match=f"{B} rows cannot give each of {n} ranks"):
            dist.shard(batch)
        dist.init()
        return
    shares = []
    for r in range(n):
        dist.init(FakeComm(r, n))
        shares.append(dist.shard(batch))
    dist.init()
    assert np.array_equal(np.concatenate(shares), batch)  # in rank order: the whole batch
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_bad_arguments_are_refused(world):
    with pytest.raises(ValueError, match="op must be 'average' or 'sum', got 'mean'"):
        dist.DistributedOptimizer(mg.optim.SGD([mg.nn.Parameter(np.zeros(2))], lr=1), op="mean")
    with pytest.raises(ValueError, match=r"same number of rows, got \[3, 2\]"):
        dist.shard(np.zeros(3), np.zeros(2))


def test_shares_of_the_global_mean_add_up_to_the_single_process_gradient():
    """The reduction the demos use: each share is Σ over its rows / tokens in the whole
    batch, so the shares' gradients add up to the one-process gradient; averaging each
    share's own mean (what equal-weight averaging would do) is visibly wrong when the
    shares hold different numbers of tokens."""
    model, data = mpi_scenarios.build(hidden=8, names=40)
    ids, lengths, _ = mg.data.pad_batch(data[:10])

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return np.concatenate([p.grad.ravel() for p in model.parameters()])

    whole = grads(model.loss(ids, lengths)[0])
    n, parts = float(lengths.sum()), [(ids[:3], lengths[:3]), (ids[3:], lengths[3:])]
    assert lengths[:3].sum() * 10 != n * 3  # the shares hold different numbers of tokens
    summed = sum(grads(model.loss(i, ln, reduction="sum")[0] * (1.0 / n)) for i, ln in parts)
    averaged = sum(grads(model.loss(i, ln)[0]) for i, ln in parts) / 2
    np.testing.assert_allclose(summed, whole, rtol=1e-5, atol=1e-7)
    assert np.abs(averaged - whole).max() > 100 * np.abs(summed - whole).max()


# ---------------------------------------------------------------- real MPI jobs

@pytest.fixture(scope="module")
def reference():
    """One process, a plain Adam, the usual mean loss: what N ranks must reproduce."""
    return mpi_scenarios.train(distributed=False)


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_train_the_same_model_as_one_process(tmp_path, reference, n):
    """50 steps, global batch 12 (the epoch's last batch has 4 rows, so with 3 ranks the
    shares hold 1, 1 and 2 names), clipping active: losses and weights equal the single
    process's to float32 round-off, and the replicas stay bitwise identical."""
    out = tmp_path / "result.npz"
    ok(mpirun(n, SCENARIOS, "train", "--steps", 50, "--batch", 12, "--out", out))
    got = np.load(out)
    assert (reference["norms"] > 0.3).sum() >= 10  # the clip (0.3) acted on many steps
    np.testing.assert_allclose(got["losses"], reference["losses"], rtol=RTOL)
    assert_same_weights({k: got[f"w/{k}"] for k in reference["weights"]}, reference["weights"])
    assert len(got["digests"]) == n and len(set(got["digests"])) == 1


def test_a_compiled_whole_step_trains_as_the_eager_one():
    """The step (zero_grad, backward, clipping, Adam) as one mg.compile'd function, in one
    process: the weights the eager loop reaches (the MPI job below checks the ranks')."""
    got = mpi_scenarios.train(distributed=False, compiled=True)
    assert_same_weights(got["weights"], mpi_scenarios.train(distributed=False)["weights"])


@needs_mpi
def test_two_ranks_running_a_compiled_step_train_the_same_model_as_one_process(tmp_path,
                                                                                reference):
    """The same with DistributedOptimizer: its synchronize() and step() are replayed by
    every compiled call (skipped, the replicas would drift apart and from the reference)."""
    out = tmp_path / "result.npz"
    ok(mpirun(2, SCENARIOS, "train", "--steps", 50, "--batch", 12, "--compiled", "--out", out))
    got = np.load(out)
    assert_same_weights({k: got[f"w/{k}"] for k in reference["weights"]}, reference["weights"])
    assert len(got["digests"]) == 2 and len(set(got["digests"])) == 1


@needs_mpi
def test_a_rank_that_raises_ends_the_whole_job():
    result = mpirun(2, SCENARIOS, "raise", timeout=120)
    assert result.returncode != 0
    assert "planted failure on rank 1 at step 3" in result.stderr


@needs_mpi
@pytest.mark.parametrize("scenario, expected", [
    ("model", r"parameter 'rnn.layers.0.cell.W_c' is \(33, 62\) float32 on rank 1 but "
              r"\(32, 61\) float32 on rank 0"),
    ("data", r"'data' is '[0-9a-f]{16}' on rank 1 but '[0-9a-f]{16}' on rank 0"),
])
def test_ranks_that_disagree_fail_in_broadcast_parameters(scenario, expected):
    result = mpirun(2, SCENARIOS, scenario, timeout=120)
    assert result.returncode != 0
    assert "broadcast_parameters: the 2 ranks did not build the same model" in result.stderr
    assert re.search(expected, result.stderr), result.stderr[-2000:]


# ---------------------------------------------------------------- the demos, --distributed

QUICK = ["--quick", "--no-progress"]


def weights(out):
    ckpt = mg.load(os.path.join(out, "checkpoint.npz"))
    return ckpt, ckpt["model"]


def assert_same_training(a, b):
    (ca, wa), (cb, wb) = weights(a), weights(b)
    assert ca["step"] == cb["step"]
    np.testing.assert_allclose(cb["losses"], ca["losses"], rtol=RTOL)
    assert_same_weights(wb, wa)


@needs_mpi
def test_names_on_two_ranks_equals_one_process_and_resumes_on_three(tmp_path):
    """The README's command: rank 0 alone prints and saves; 2 ranks train the model one
    process trains; the run resumes on 3 ranks and still equals the one-process run resumed
    in one process (the checkpoint knows nothing of ranks)."""
    from demos import names

    one, many = tmp_path / "one", tmp_path / "many"
    names.main([*QUICK, "--steps", "40", "--out", str(one)])
    run = ok(mpirun(2, "-m", "demos.names", "--distributed", *QUICK, "--steps", 40,
                    "--out", many))
    assert run.stdout.count("Character-level LSTM language model") == 1
    assert run.stdout.count("Saved ") == 1 and (many / "loss.png").exists()
    assert_same_training(one, many)

    names.main([*QUICK, "--steps", "60", "--out", str(one), "--resume"])
    run = ok(mpirun(3, "-m", "demos.names", "--distributed", *QUICK, "--steps", 60,
                    "--out", many, "--resume"))
    assert "resumed from step 40" in run.stdout
    assert_same_training(one, many)


@needs_mpi
@pytest.mark.parametrize("demo, flags", [
    ("words", ["--dropout", "0.3"]),   # dropout: each rank draws its own masks
    ("seq2seq", ["--attention"]),
])
def test_the_other_demos_learn_on_two_ranks(tmp_path, demo, flags):
    run = ok(mpirun(2, "-m", f"demos.{demo}", "--distributed", *QUICK, "--steps", 80, *flags,
                    "--out", tmp_path))
    ckpt, _ = weights(tmp_path)
    losses = ckpt["losses"]
    assert ckpt["step"] == 80 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert run.stdout.count("Saved ") == 1


@needs_mpi
def test_code2seq_on_two_ranks_equals_one_process(tmp_path):
    """code2seq gives each rank its share of a batch's functions (their paths are encoded
    on that rank alone): without dropout, 2 ranks train the model one process trains —
    the same losses, and each weight tensor within RTOL in norm (one attention weight in
    16 384 lands 2e-5 away after Adam's per-component division; see RTOL, ATOL)."""
    from demos import code2seq

    flags = [*QUICK, "--max-files", "30", "--steps", "8", "--batch", "8", "--contexts", "10",
             "--dropout", "0", "--show", "0"]
    one, many = tmp_path / "one", tmp_path / "many"
    code2seq.main([*flags, "--out", str(one)])
    run = ok(mpirun(2, "-m", "demos.code2seq", "--distributed", *flags, "--out", many))
    assert run.stdout.count("Saved ") == 1 and (many / "code2seq.png").exists()
    (ca, wa), (cb, wb) = weights(one), weights(many)
    assert ca["step"] == cb["step"] == 8
    np.testing.assert_allclose(cb["losses"], ca["losses"], rtol=RTOL)
    for name, w in wa.items():
        assert np.linalg.norm(wb[name] - w) <= RTOL * np.linalg.norm(w), name


def _ranks(out):
    """The pids of the Python ranks of a demo job writing to ``out``."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except OSError:
            continue
        if str(out) in argv and "python" in os.path.basename(argv[0]):
            pids.append(int(entry))
    return pids


def _wait_for_checkpoint(p, out, step, timeout=120):
    path = os.path.join(out, "checkpoint.npz")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(path) and mg.load(path)["step"] >= step:
            return
        time.sleep(0.2)
    _kill_tree(p)
    pytest.fail(f"no checkpoint at step >= {step} in {out} (job ended: {p.returncode})")


@needs_mpi
def test_a_rank_killed_with_sigkill_ends_the_job_and_the_checkpoint_resumes(tmp_path):
    from demos import names

    p = launch(2, "-m", "demos.names", "--distributed", *QUICK, "--steps", 100_000,
               "--save-every", 10, "--out", tmp_path)
    _wait_for_checkpoint(p, tmp_path, 20)
    ranks = _ranks(tmp_path)
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), signal.SIGKILL)
    result = finish(p, timeout=60)  # never a hang: mpiexec ends every rank
    # mpiexec reports the killed rank (BAD TERMINATION ...), or the survivor's Allreduce sees
    # its peer gone and aborts first: either way a non-zero exit
    assert result.returncode != 0
    deadline = time.monotonic() + 10
    while _ranks(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ranks(tmp_path) == []  # the other rank was ended too
    step = mg.load(tmp_path / "checkpoint.npz")["step"]  # intact: written atomically
    assert step >= 20 and step % 10 == 0
    r = names.main([*QUICK, "--steps", str(step + 10), "--out", str(tmp_path), "--resume"])
    assert r["start_step"] == step and r["step"] == step + 10


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_step_and_saves(tmp_path):
    """mpiexec forwards SIGINT to every rank; they agree in the next Allreduce to stop
    after it, so no rank waits for another, and rank 0 saves the final checkpoint."""
    p = launch(2, "-m", "demos.names", "--distributed", *QUICK, "--steps", 100_000,
               "--save-every", 0, "--out", tmp_path)
    _wait_for_checkpoint(p, tmp_path, 0)
    time.sleep(2)  # into training
    p.send_signal(signal.SIGINT)
    result = finish(p, timeout=60)
    assert result.returncode == 130, result.stderr  # 128 + SIGINT, after the final save
    ckpt = mg.load(tmp_path / "checkpoint.npz")
    assert ckpt["step"] > 0 and f"interrupted at step {ckpt['step']}" in result.stdout
    assert "Saved " in result.stdout  # rank 0 printed its summary before the job ended
