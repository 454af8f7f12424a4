"""The compile cache (``minigrad/compile_cache.py``), with real processes, real scratch copies
of the package and real cache directories:

* keyed by everything compiled code depends on: a behaviour change planted in a helper of a
  scratch copy reaches the next run, with a warm cache (it used to load stale machine code:
  gradients off by 12.17 after a planted bug in a helper, until the cache was cleared);
* verified on load: every kind of file the cache writes (the generated ``.py``, Numba's
  ``.nbi`` index and ``.nbc`` data), cut short, corrupted, edited or swapped for another
  kernel's, is discarded and rebuilt with one warning naming it, and the results are right;
* safe directories: a read-only or uncreatable ``MINIGRAD_CACHE_DIR`` gives one warning and
  one private fallback directory reused by later runs (never an OSError, never a new
  temporary directory per run); the cache prunes itself oldest first, safely while another
  process uses it; ``python -m minigrad.cache`` shows and clears it.

Each child process runs :data:`PROBE`: a float64 RNN with ``lengths`` on both paths (a
generated kernel module) and ``cross_entropy`` (the package's own kernels); float64 keeps
the compile short (its loops run as Python).
"""

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minigrad import compile_cache as cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, sys, warnings
import numpy as np
import minigrad as mg
from models.layers import RNN

warnings.simplefilter("error", mg.CompileFallbackWarning)
H = int(sys.argv[1]) if len(sys.argv) > 1 else 4
NONLINEARITY = sys.argv[2] if len(sys.argv) > 2 else "tanh"
rng = np.random.default_rng(0)
x, y = rng.standard_normal((3, 5, 2)), rng.integers(0, H, 15)
res = {}
for compiled in (True, False):
    mg.manual_seed(0)
    layer = RNN(2, H, dtype=np.float64, compiled=compiled, nonlinearity=NONLINEARITY)
    out, _ = layer(mg.tensor(x), lengths=np.array([5, 3, 1]))
    loss = mg.cross_entropy(out.reshape(-1, H), y)
    loss.backward()
    assert layer.layers[0].compiled == compiled
    res[compiled] = [float(loss.data)] + [float(g) for p in layer.parameters()
                                          for g in p.grad.ravel()]
logits, t = rng.standard_normal((4, 6)), rng.integers(0, 6, 4)
m = logits.max(1, keepdims=True)
ref = np.mean(np.log(np.exp(logits - m).sum(1)) + m[:, 0] - logits[np.arange(4), t])
print(json.dumps({"compiled": res[True], "eager": res[False], "file": mg.__file__,
                  "ce": float(mg.cross_entropy(mg.tensor(logits), t).data),
                  "ce_ref": float(ref), "dir": mg.compile_cache.directory()}))
"""


def probe(cache_dir, *args, cwd=ROOT, env=None):
    """Run :data:`PROBE` in a fresh process; returns (its result, its stderr)."""
    env = {**os.environ, "MINIGRAD_CACHE_DIR": str(cache_dir), "OPENBLAS_NUM_THREADS": "1",
           **(env or {})}
    env.pop("PYTHONPATH", None)  # the package under test is the one in cwd
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(cwd))
    np.testing.assert_allclose(out["compiled"], out["eager"], rtol=1e-10, atol=1e-12)
    return out, proc.stderr


def compiled_files(directory):
    """{path: (size, mtime)} of Numba's files under ``directory`` (what a compile writes; a
    generated .py is touched by every load, so it is left out)."""
    out = {}
    for dirpath, _, names in os.walk(directory):
        for n in names:
            if n.endswith((".nbi", ".nbc")):
                st = os.stat(os.path.join(dirpath, n))
                out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


def cache_warnings(stderr):
    return [line for line in stderr.splitlines() if "CacheWarning" in line]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A cache directory the probe has filled (compiled once for the whole module)."""
    d = tmp_path_factory.mktemp("warm-cache")
    result, _ = probe(d)
    assert os.path.dirname(result["dir"]) == str(d)
    return d, result


def copy_of(warm, tmp_path):
    d = tmp_path / "cache"
    shutil.copytree(warm[0], d)
    return d, os.path.join(d, os.path.basename(warm[1]["dir"]))


FORKED = r"""
import json, sys
import numpy as np
import minigrad as mg
from minigrad import compile_cache
from models.layers import LSTM

compile_cache.FORK = sys.argv[1] != "0"
if sys.argv[1] == "late":  # the copy sleeps before it compiles: the backward cannot wait
    class Slow:
        def compile(self, sig):
            import time
            time.sleep(60)
    forked, compile_cache.FORK_TIMEOUT = compile_cache.compile_forked, 0.5
    compile_cache.compile_forked = lambda jobs: forked([(Slow(), None), *jobs])
mg.manual_seed(0)
layer = LSTM(3, 5, dtype=np.float32)
x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
out, _ = layer(mg.tensor(x))
(out * out).sum().backward()
kernels = {m.__name__: (sum(m.fused.stats.cache_misses.values()),
                        sum(m.fused.stats.cache_hits.values()), len(m.fused.signatures))
           for m in list(sys.modules.values()) if m.__name__.startswith("mg_")
           and hasattr(m, "fused")}
for reaper in compile_cache._FORKED.values():  # (a copy waited for too long is killed)
    reaper.join(10.0)
print(json.dumps({"kernels": kernels, "grads": [p.grad.tolist() for p in layer.parameters()],
                  "forks": len(compile_cache._FORKED),
                  "running": sum(r.is_alive() for r in compile_cache._FORKED.values())}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="compiles in a forked process only on Linux with two CPUs")
def test_a_new_cells_backward_kernels_compile_in_a_forked_process(tmp_path):
    """A new cell's first step compiles its forward kernel here and its backward kernel in a
    forked copy of the process meanwhile: the backward's is loaded from the cache (a hit),
    not compiled here (a miss), which fails if the emitter's signature for it differs from
    the one the loop calls.  Off (``FORK = False``), both compile here.  A copy not done
    when the backward needs it (``FORK_TIMEOUT``) is killed, none outlives the step, and
    the backward compiles here.  The gradients are the same bits each way."""
    runs = {}
    for fork in ("1", "0", "late"):
        env = {**os.environ, "MINIGRAD_CACHE_DIR": str(tmp_path / fork)}
        proc = subprocess.run([sys.executable, "-c", FORKED, fork], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs[fork] = json.loads(proc.stdout.strip().splitlines()[-1])
    forked, here = runs["1"]["kernels"], runs["0"]["kernels"]
    assert forked.keys() == here.keys() and len(forked) == 2  # (the LSTM's two kernels)
    assert sorted(forked.values()) == [[0, 1, 1], [1, 0, 1]]  # (misses, hits, signatures)
    assert sorted(here.values()) == [[1, 0, 1], [1, 0, 1]]
    assert sorted(runs["late"]["kernels"].values()) == [[1, 0, 1], [1, 0, 1]]
    assert [r["forks"] for r in runs.values()] == [1, 0, 1]
    assert [r["running"] for r in runs.values()] == [0, 0, 0]
    assert runs["1"]["grads"] == runs["0"]["grads"] == runs["late"]["grads"]


# ---------------------------------------------------------------------- keyed on sources

def test_a_helper_changed_in_the_package_reaches_the_next_run(tmp_path, warm):
    pkg = tmp_path / "pkg"
    for sub in ("minigrad", "models"):
        shutil.copytree(os.path.join(ROOT, sub), pkg / sub,
                        ignore=shutil.ignore_patterns("__pycache__"))
    cache_dir, _ = copy_of(warm, tmp_path)
    before, _ = probe(cache_dir, cwd=pkg)
    assert before["dir"].endswith(os.path.basename(warm[1]["dir"]))  # same sources, same key
    files = compiled_files(cache_dir)
    again, err = probe(cache_dir, cwd=pkg)
    assert compiled_files(cache_dir) == files, "a warm run compiled something"
    assert "minigrad: compiling" not in err  # and says nothing about compiling
    assert again["compiled"] == before["compiled"]
    assert before["ce"] == pytest.approx(before["ce_ref"], abs=1e-12)

    # Plant behaviour changes in helpers that compiled kernels inline: float64 tanh (the
    # generated kernels' and the eager ufunc's, and its Python form, in which the compiler
    # runs a cell on examples to check its compiled step) and the exp of the softmax rows.
    numerics = pkg / "minigrad" / "kernels" / "numerics.py"
    text = numerics.read_text()
    plants = [("    return lambda x: np.tanh(x)\n", "    return lambda x: np.tanh(x) * 0.5\n"),
              ("    return np.tanh(x)\n", "    return np.tanh(x) * 0.5\n"),
              ("        def exact(v, ibuf):\n            for j in range(v.size):\n"
               "                v[j] = np.exp(v[j])\n",
               "        def exact(v, ibuf):\n            for j in range(v.size):\n"
               "                v[j] = 2.0 * np.exp(v[j])\n")]
    for old, new in plants:
        assert text.count(old) == 1, f"the helper to plant a change in moved: {old!r}"
        text = text.replace(old, new)
    numerics.write_text(text)

    after, err = probe(cache_dir, cwd=pkg)  # the same cache directory, warm for the old code
    assert "minigrad: compiling RNNCell's kernels" in err
    assert after["dir"] != before["dir"] and os.path.isdir(before["dir"])
    assert abs(after["compiled"][0] - before["compiled"][0]) > 1e-3  # tanh changed ...
    # ... compiled and eager agree (probe()), and the softmax rows' exp doubled:
    assert after["ce"] == pytest.approx(after["ce_ref"] + math.log(2), abs=1e-12)


def test_the_key_covers_sources_versions_cpu_and_blas(monkeypatch):
    v = cache.versions()
    assert {"minigrad kernels+compiler+cache", "numba", "llvmlite", "numpy", "python", "target",
            "cpu features", "blas"} <= set(v)
    assert len(cache.tag()) == 16 and cache.directory().endswith(cache.tag())
    monkeypatch.setenv("MINIGRAD_BLAS", "mkl" if os.environ.get("MINIGRAD_BLAS") != "mkl"
                       else "openblas")
    assert cache.versions()["blas"] != v["blas"]


MM = """import numpy as np
from minigrad import compile_cache
from minigrad.kernels import blas, program
a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
print(blas.NAME, float(program.mm(a, b).sum()), compile_cache.tag())
"""


@pytest.mark.skipif(not cache.mkl_libraries(), reason="MKL is not installed (the mkl extra)")
def test_a_kernel_cached_with_one_blas_is_not_loaded_with_another(tmp_path):
    """Compiled code calls its BLAS's sgemm by name: a kernel cached with OpenBLAS, loaded
    after MINIGRAD_BLAS changed (or MKL was installed), called a symbol never loaded: the
    process died (SIGSEGV).  Each choice has a cache directory of its own."""
    out = []
    for name in ("openblas", "mkl", "openblas"):
        env = {**os.environ, "MINIGRAD_CACHE_DIR": str(tmp_path), "MINIGRAD_BLAS": name}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, "-c", MM], cwd=ROOT, env=env, timeout=600,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.returncode, proc.stderr[-2000:])
        out.append(proc.stdout.split())
    assert [o[:2] for o in out] == [["openblas", "24.0"], ["mkl", "24.0"], ["openblas", "24.0"]]
    assert out[0][2] == out[2][2] != out[1][2]


# ---------------------------------------------------------------------- verified on load

def read(path):
    with open(path, "rb") as f:
        return f.read()


def _flip(b):
    i = len(b) // 2
    return b[:i] + bytes(x ^ 0xFF for x in b[i:i + 16]) + b[i + 16:]


def _targets(here):
    names = sorted(os.listdir(here))
    py = next(n for n in names if n.startswith("mg_") and n.endswith(".py"))
    generated_index = next(n for n in names if n.startswith("mg_") and n.endswith(".nbi"))
    package_data = [n for n in names if n.startswith("loops.") and n.endswith(".nbc")]
    return py, generated_index, package_data


@pytest.mark.parametrize("damage", ["cut", "corrupt", "edit"])
def test_every_kind_of_damaged_cache_file_is_discarded_and_rebuilt(tmp_path, warm, damage):
    cache_dir, here = copy_of(warm, tmp_path)
    py, index, (data, other, *_) = _targets(here)
    path = {k: os.path.join(here, n) for k, n in (("py", py), ("nbi", index), ("nbc", data))}
    raw = {k: read(p) for k, p in path.items()}
    new = {
        "cut": {k: b[:len(b) // 2] for k, b in raw.items()},
        "corrupt": {"py": b"\xff\xfe not utf-8 \x00" + raw["py"], "nbi": _flip(raw["nbi"]),
                    "nbc": _flip(raw["nbc"])},
        # edits that would run: a constant of the generated module changed (the old cache
        # ran an edited backward silently), an empty index, another kernel's data file
        "edit": {"py": raw["py"].replace(b"ONE = DT(1.0)", b"ONE = DT(2.0)", 1)
                 .replace(b"ZERO = DT(0.0)", b"ZERO = DT(0.5)", 1), "nbi": b"",
                 "nbc": read(os.path.join(here, other))},
    }[damage]
    for k, p in path.items():
        assert new[k] != raw[k]
        with open(p, "wb") as f:
            f.write(new[k])

    result, err = probe(cache_dir)
    assert result["compiled"] == pytest.approx(warm[1]["compiled"], rel=1e-12, abs=1e-15)
    assert result["ce"] == pytest.approx(result["ce_ref"], abs=1e-12)
    warned = cache_warnings(err)
    for k, p in path.items():  # one warning naming each damaged file, saying what happened
        assert sum(f"discarded the damaged compile-cache file {p}" in w for w in warned) == 1, \
            (k, err)
    assert len(warned) == 3, err
    assert read(path["py"]) == raw["py"]  # rebuilt
    again, err = probe(cache_dir)
    assert cache_warnings(err) == [] and again["compiled"] == result["compiled"]


# ---------------------------------------------------------------------- safe directories

@contextlib.contextmanager
def read_only(path):
    """Make ``path`` and everything under it read-only, even for root (``chattr +i``)."""
    dirs = [p for p, _, _ in os.walk(path)]
    if os.geteuid() != 0:
        for d in dirs:
            os.chmod(d, 0o555)
        try:
            yield
        finally:
            for d in dirs:
                os.chmod(d, 0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", *dirs], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *dirs], check=True)


@pytest.mark.parametrize("how", ["read-only", "uncreatable"])
def test_an_unusable_cache_dir_warns_once_and_reuses_one_fallback_dir(tmp_path, warm, how):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    if how == "uncreatable":
        (tmp_path / "a-file").write_text("")
        cache_dir, guard = tmp_path / "a-file" / "cache", contextlib.nullcontext()
    else:  # a read-only cache that already holds compiled code
        cache_dir, _ = copy_of(warm, tmp_path)
        guard = read_only(cache_dir)
    fallback = tmp / f"minigrad-cache-{os.getuid()}"
    with guard:
        files = compiled_files(cache_dir)
        runs = [probe(cache_dir, env={"TMPDIR": str(tmp)})]
        after_first = compiled_files(fallback)
        runs.append(probe(cache_dir, env={"TMPDIR": str(tmp)}))
        assert after_first and compiled_files(fallback) == after_first  # reused, not rebuilt
        assert os.listdir(tmp) == [fallback.name]  # one directory, not one per run
        assert compiled_files(cache_dir) == files  # the unusable directory is untouched
    for result, err in runs:
        assert result["dir"] == str(fallback / cache.tag())
        (warning,) = cache_warnings(err)
        assert f"the compile cache {cache_dir} is not usable" in warning
        assert str(fallback) in warning and "MINIGRAD_CACHE_DIR" in warning
        assert result["compiled"] == pytest.approx(warm[1]["compiled"], rel=1e-12, abs=1e-15)


def test_no_usable_directory_at_all_compiles_in_memory(tmp_path):
    tmp = tmp_path / "tmp"
    (tmp / f"minigrad-cache-{os.getuid()}").mkdir(parents=True)
    os.chmod(tmp / f"minigrad-cache-{os.getuid()}", 0o777)  # not private: not trusted
    (tmp_path / "a-file").write_text("")
    result, err = probe(tmp_path / "a-file" / "cache", env={"TMPDIR": str(tmp)})
    (warning,) = cache_warnings(err)
    assert "compiling in memory" in warning and result["dir"] is None
    assert compiled_files(tmp_path) == {}


# ---------------------------------------------------------------------- pruning

def _fill(path, size, when):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)
    os.utime(path, (when, when))


def test_pruning_removes_the_least_recently_used_first_and_only_the_caches_files(tmp_path):
    now, here, kb = time.time(), tmp_path / cache.tag(), 1024
    _fill(tmp_path / "0123456789abcdef" / "loops.f-1.py311.nbi", 40 * kb, now - 9e5)  # old
    os.utime(tmp_path / "0123456789abcdef", (now - 9e5, now - 9e5))
    for name, age in (("mg_aaaaaaaaaaaaaaaa", 5e5), ("mg_bbbbbbbbbbbbbbbb", 1e5)):
        for suffix in (".py", ".fused1_fwd-9.py311.nbi", ".fused1_fwd-9.py311.1.nbc"):
            _fill(here / (name + suffix), 10 * kb, now - age)
    _fill(here / "loops.sum_axis0-11.py311.nbi", 10 * kb, now - 8e5)  # the package's own
    _fill(here / "mg_cccccccccccccccc.py.tmp.0a1b", 5 * kb, now - 2 * cache.STALE_TMP)
    _fill(here / "mg_dddddddddddddddd.py.tmp.2c3d", 5 * kb, now)  # a write in flight
    _fill(tmp_path / "notes" / "mine.txt", 50 * kb, now - 1e6)  # not the cache's
    os.utime(here, (now, now))  # this installation was used just now

    names = {e["name"] for e in cache.entries(str(tmp_path))}
    assert names == {"0123456789abcdef/", f"{cache.tag()}/mg_aaaaaaaaaaaaaaaa",
                     f"{cache.tag()}/mg_bbbbbbbbbbbbbbbb", f"{cache.tag()}/ (package kernels)",
                     "mg_cccccccccccccccc.py.tmp.0a1b"}
    # 115 kB in all; least recently used first: the other installation, then mg_aaaa
    removed = cache.prune(45 * kb, str(tmp_path))
    assert [e["name"] for e in removed] == ["0123456789abcdef/",
                                             f"{cache.tag()}/mg_aaaaaaaaaaaaaaaa"]
    assert sorted(os.listdir(here)) == [
        "loops.sum_axis0-11.py311.nbi", "mg_bbbbbbbbbbbbbbbb.fused1_fwd-9.py311.1.nbc",
        "mg_bbbbbbbbbbbbbbbb.fused1_fwd-9.py311.nbi", "mg_bbbbbbbbbbbbbbbb.py",
        "mg_cccccccccccccccc.py.tmp.0a1b", "mg_dddddddddddddddd.py.tmp.2c3d"]
    assert os.listdir(tmp_path / "notes") == ["mine.txt"]
    assert cache.prune(0, str(tmp_path))  # everything of the cache's, but a write in flight
    assert sorted(os.listdir(here)) == ["mg_dddddddddddddddd.py.tmp.2c3d"]
    assert sorted(os.listdir(tmp_path)) == sorted([cache.tag(), "notes"])


def test_a_run_that_compiles_prunes_the_cache_past_its_limit(tmp_path, warm):
    cache_dir, here = copy_of(warm, tmp_path)
    old = cache_dir / "0123456789abcdef"
    _fill(old / "loops.f-1.py311.1.nbc", 4 << 20, time.time() - 9e5)
    os.utime(old, (time.time() - 9e5,) * 2)
    limit = sum(e["size"] for e in cache.entries(str(cache_dir))) - (2 << 20)
    result, err = probe(cache_dir, 4, "relu", env={"MINIGRAD_CACHE_MAX_SIZE": str(limit)})
    assert not old.exists()  # the oldest entry went
    assert sum(e["size"] for e in cache.entries(str(cache_dir))) <= limit
    assert any(n.startswith("mg_") for n in os.listdir(here))  # what was just used stays
    assert cache_warnings(err) == []


def test_pruning_is_safe_while_another_process_uses_the_cache(tmp_path, warm):
    """One process clears the cache again and again while others load from it and compile
    into it: every run is right and warns of nothing."""
    cache_dir, _ = copy_of(warm, tmp_path)
    stop = threading.Event()
    cleared = []

    def clear():
        while not stop.is_set():
            cleared.append(len(cache.prune(0, str(cache_dir))))
            time.sleep(0.01)

    pruner = threading.Thread(target=clear)
    pruner.start()
    try:
        runs = [probe(cache_dir, *args) for args in ((4,), (3, "relu"))]
    finally:
        stop.set()
        pruner.join()
    assert sum(cleared) > 0, "the pruner never found anything to remove"
    for i, (result, err) in enumerate(runs):
        assert cache_warnings(err) == [], err
        if i == 0:
            assert result["compiled"] == pytest.approx(warm[1]["compiled"], rel=1e-12,
                                                       abs=1e-15)


# ---------------------------------------------------------------------- the command line

def test_the_command_line_shows_prunes_and_clears_the_cache(tmp_path, warm):
    cache_dir, here = copy_of(warm, tmp_path)
    env = {**os.environ, "MINIGRAD_CACHE_DIR": str(cache_dir)}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "minigrad.cache", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    code, out = cli()
    assert code == 0, out
    size = sum(e["size"] for e in cache.entries(str(cache_dir)))
    assert f"minigrad compile cache: {cache_dir}" in out and f"this installation: {here}" in out
    assert f"size: {size / 2**20:.1f} MB" in out
    assert "a generated recurrence" in out and "minigrad's own kernels" in out
    n = len(cache.entries(str(cache_dir)))  # the package's kernels, the cell's modules
    assert n >= 2
    code, out = cli("--max-size", "1k")
    assert code == 0 and f"removed {n} entries" in out, out
    assert cache.entries(str(cache_dir)) == []
    code, out = cli("--clear")
    assert code == 0 and "removed 0 entries" in out and "size: 0.0 MB in 0 entries" in out
    code, out = cli("--max-size", "lots")
    assert code == 2 and "expected a size such as 256M" in out
