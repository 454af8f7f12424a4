"""Training-step benchmark: minigrad against PyTorch and JAX, same models, same weights.

A training step is forward + a linear head at every step + mean cross-entropy + backward +
SGD, float32 (``peers.py`` writes it in all three frameworks).  Configurations:

    A  V65 H100 B1 T25                 min-char-rnn                RNN GRU LSTM
    N  V29 H128 B64 T10                the names demo (make demo)  GRU LSTM
    B  V65 H128 B32 T64                                            RNN GRU LSTM
    K  V65 H128 B50 T50, 2 layers      char-rnn's defaults         GRU LSTM
    C  V65 H256 B64 T100, 2 layers                                 GRU LSTM
    D  BiLSTM I50 H64 B16 T40, 17 tags a tagger (dense input)      LSTM

For every (config, cell, thread count) each framework runs in its own process, pinned to
``threads`` cores before anything is imported (XLA sizes its thread pool from the affinity
mask when its client starts), with ``mg.set_num_threads`` / ``torch.set_num_threads``.
The processes start from minigrad's initial weights; before any timing, their losses over
the first 4 steps (3 SGD updates) must agree (relative 1e-5, and the loss's fall within
1 %), or the run stops.  Then interleaved rounds: each round times every framework (and the
step's GEMMs alone, through NumPy's BLAS, in minigrad's process) for a window of steps; the
table shows the median round.  Peak RSS is each process's own (minigrad's without the
floor's operands).  First steps run in fresh processes with the most threads asked for, on
as many cores: minigrad with a new empty ``MINIGRAD_CACHE_DIR`` (cold), then the same
directory (warm), then, cold, a new hidden size after the first; JAX's first step is its compile.

    python benchmarks/bench_rnn.py --threads 1,2 --markdown benchmarks/results.md  # make bench
    python benchmarks/bench_rnn.py --configs N --cells lstm --threads 1 --quick    # < 1 minute
    python benchmarks/bench_rnn.py --frameworks minigrad,jax --sections steps
"""

import argparse
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Only numpy here: the parent stays small (a child's ru_maxrss starts at its parent's peak),
# and minigrad, torch and JAX are imported in their own children.
import peers  # noqa: E402
from peers import CONFIGS, FRAMEWORKS, GATES, Config, disagreement, gemm_flops  # noqa: E402

VERIFY_STEPS = 4      # losses compared: before the first update and after each of 3 updates
RTOL = 1e-5           # float32: the three agree to ~5e-7 on every config
FALL_RTOL = 0.01      # the fall loss_4 - loss_1 must agree to 1 % (tests the update itself)
NEW_HIDDEN = 96       # the "new hidden size" row: H -> 96 after a warm H
WARM = 1              # untimed steps before each timed window (after another framework ran)
BUSY = 0.1            # cores of other load at which a row is flagged (quiet: 0.01-0.05)
_CHILD = "--child"
_TAG = "@@ "          # protocol lines on a child's stdout; anything else is passed through


# ------------------------------------------------------------------------ child side

def _peak_mib():
    """This process's peak resident set (MiB): ``VmHWM``, else ``ru_maxrss``.

    NOTE: Linux carries a parent's high-water mark into ``ru_maxrss`` across fork + exec;
    ``VmHWM`` belongs to this address space alone (the parent is small either way)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_without(make_floor, step):
    """(floor, peak): the GEMM floor's ``run``, and the peak RSS (MiB) of everything but the
    floor's operands (~190 MiB at C, which torch's and JAX's processes do not hold): the
    peak before they were made, or, after they are freed and the high-water mark is reset
    (``/proc/self/clear_refs``), two more steps'.  Where the mark cannot be reset, the peak
    with them (an overstatement, never an under-)."""
    before, held = _peak_mib(), [make_floor()]

    def peak():
        held.clear()
        with contextlib.suppress(OSError, AttributeError):  # their freed memory leaves the
            ctypes.CDLL(None).malloc_trim(0)  # heap too (minigrad.memory keeps freed blocks)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return _peak_mib()
        step()
        step()
        return max(before, _peak_mib())

    return (lambda: held[0]()), peak


def _send(obj):
    print(_TAG + json.dumps(obj), flush=True)


def _setup(spec):
    """Pin, import the framework, set its threads; returns the import time (s)."""
    os.sched_setaffinity(0, spec["cpus"])  # before JAX exists: its pool follows the mask
    t0 = time.perf_counter()
    if spec["framework"].startswith("minigrad"):
        import minigrad as mg
        import models.language_model  # noqa: F401  (part of the import a user pays)

        mg.set_num_threads(spec["threads"])
        mg.freeze_gc()  # what the demos do: Numba's objects out of the collector's sight
    elif spec["framework"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
    elif spec["framework"] == "jax":
        import jax  # noqa: F401
    else:  # the NumPy reference
        import threadpoolctl

        threadpoolctl.threadpool_limits(spec["threads"], user_api="blas")
    return time.perf_counter() - t0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def child_main(spec):
    cfg = Config(**spec["cfg"])
    t_import = _setup(spec)
    step = peers.make_step(spec["framework"], cfg, spec["cell"], spec["weights"],
                           compiled=spec.get("compiled"))
    t_first, loss = _timed(step)
    if spec["mode"] == "first":
        t_second, _ = _timed(step)
        out = {"import": t_import, "first": t_first, "second": t_second}
        if spec.get("new_hidden"):
            again = peers.make_step("minigrad", cfg, spec["cell"], None, hidden=spec["new_hidden"])
            out["new_hidden_first"] = _timed(again)[0]
        _send(out)
        return
    losses = [loss] + [step() for _ in range(VERIFY_STEPS - 1)]
    floor, peak = None, _peak_mib
    if spec["framework"] == "minigrad":
        import minigrad.compiler
        from minigrad.compiler import whole

        for _ in range(whole.AFTER or 0):  # (a program's whole step compiles after these)
            step()
        minigrad.compiler.wait()  # the Numba loops and the whole step are in use
        floor, peak = _peak_without(lambda: peers.gemm_floor(cfg, spec["cell"]), step)
    _send({"losses": losses})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        fn = floor if cmd["cmd"] == "floor" else step
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(cmd.get("warm", 0)):  # untimed: caches and cores after the others ran
            fn()
        t0 = time.perf_counter()
        for _ in range(cmd["n"]):
            loss = fn()
        t1 = time.perf_counter()
        _send({"seconds": t1 - t0, "span": t1 - w0, "cpu": time.process_time() - c0,
               "loss": loss})
    _send({"rss": peak()})


# ------------------------------------------------------------------------ parent side

def busy_seconds():
    """CPU seconds the whole machine has spent busy so far, every process's (user, nice,
    system, irq, softirq and steal time in /proc/stat); None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _window(child, cmd, n):
    """Time ``n`` steps in ``child``: (seconds per step, loss, (other, seconds)), where other
    is the CPU time the rest of the machine used meanwhile: busy time minus the child's own
    (None without /proc/stat; the parent waits on a pipe meanwhile).  A 2-thread row is only
    as good as this is near 0: a chunk whose core is shared waits, and the step with it."""
    b0 = busy_seconds()
    reply = child.ask(cmd, n=n, warm=WARM)
    b1 = busy_seconds()
    other = None if b0 is None or b1 is None else max(0.0, b1 - b0 - reply["cpu"])
    return reply["seconds"] / n, reply["loss"], (other, reply["span"])


class Child:
    """A framework's process: JSON commands on stdin, tagged JSON replies on stdout."""

    def __init__(self, spec, env=None):
        self.spec = spec
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed in kill)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), _CHILD, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            env=env)

    def receive(self):
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG):])
            print(f"  [{self.spec['framework']}] {line.rstrip()}", flush=True)
        self.proc.wait()
        self.err.seek(0)
        raise RuntimeError(f"bench_rnn: the {self.spec['framework']} process for "
                           f"{self.spec['cfg']['name']} {self.spec['cell']} exited "
                           f"({self.proc.returncode}):\n{self.err.read()[-3000:]}")

    def ask(self, cmd, **kw):
        self.proc.stdin.write(json.dumps(dict(cmd=cmd, **kw)) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self):
        """Ends the process; returns its peak RSS (MiB)."""
        rss = self.ask("quit")["rss"]
        self.proc.wait()
        return rss

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


@dataclass
class Timing:
    rounds: int
    window: float   # seconds of steps per contender per round (at least one step)
    settle: float   # pause between contenders: spinning BLAS/OpenMP workers go to sleep


def _spec(mode, framework, cfg, cell, threads, cpus, weights, **kw):
    return dict(mode=mode, framework=framework, cfg=asdict(cfg), cell=cell, threads=threads,
                cpus=cpus, weights=weights, **kw)


def check_agreement(cfg, cell, threads, losses):
    """Stops the run unless every framework's losses agree with minigrad's."""
    ref = losses["minigrad"]
    bad = []
    for k, other in losses.items():
        fall_ref, fall = ref[-1] - ref[0], other[-1] - other[0]
        if (disagreement(ref, other) > RTOL
                or abs(fall - fall_ref) > FALL_RTOL * abs(fall_ref) + 2e-6):
            bad.append(k)
    if bad:
        lines = "\n".join(f"  {k:16s} " + " ".join(f"{v:.7f}" for v in ls)
                          for k, ls in losses.items())
        raise SystemExit(f"bench_rnn: {cfg.name} {cell} ({threads} thread(s)): the losses of "
                         f"{', '.join(bad)} disagree with minigrad's over {VERIFY_STEPS} "
                         f"steps from the same weights (relative {RTOL:g}, fall "
                         f"{FALL_RTOL:.0%}): not the same model or not the same update; "
                         f"nothing was timed.\n{lines}")


def measure(cfg, cell, threads, cpus, contenders, tm, tmp, check=True):
    """One row: ``{"time": {contender: median seconds per step}, "rss": ..., "losses": ...}``.

    ``contenders``: {label: (framework, compiled)}; the first is minigrad (the reference,
    which writes the weights).  ``check``: verify the losses and time the GEMM floor."""
    weights = os.path.join(tmp, f"{cfg.name}-{cell}.npz")
    children = {}
    try:
        info = {}
        for label, (framework, compiled) in contenders.items():  # one at a time: clean starts
            children[label] = Child(_spec("serve", framework, cfg, cell, threads, cpus,
                                          None if compiled is False else weights,
                                          compiled=compiled))
            info[label] = children[label].receive()
        runs = {k: (c, "step") for k, c in children.items()}
        if check:
            check_agreement(cfg, cell, threads, {k: v["losses"] for k, v in info.items()})
            runs["GEMM floor"] = (children["minigrad"], "floor")
        n = {}
        for k, (child, cmd) in runs.items():  # warm up, then size the window
            child.ask(cmd, n=1)
            n[k] = max(1, math.ceil(tm.window / max(child.ask(cmd, n=1)["seconds"], 1e-6)))
        per_round = {k: [] for k in runs}
        labels = list(runs)
        last, other = {}, []
        for r in range(tm.rounds):
            for k in labels[r % len(labels):] + labels[:r % len(labels)]:
                time.sleep(tm.settle)
                seconds, last[k], load = _window(*runs[k], n[k])
                per_round[k].append(seconds)
                other.append(load)
        for k, loss in last.items():
            if k in children and not math.isfinite(loss):
                print(f"  **warning: {k} ended with a non-finite loss {loss}**", flush=True)
        rss = {k: c.close() for k, c in children.items()}
    finally:
        for c in children.values():
            c.kill()
    return {"time": {k: float(np.median(v)) for k, v in per_round.items()}, "rss": rss,
            "losses": {k: v["losses"] for k, v in info.items()},
            "other": None if any(o is None for o, _ in other) else
            sum(o for o, _ in other) / sum(t for _, t in other)}  # (in cores, on average)


def first_steps(cfg, cell, threads, cpus, others, tmp):
    """Seconds: minigrad's first step cold, warm and at a new hidden size; peers' first."""
    weights = os.path.join(tmp, f"first-{cfg.name}-{cell}.npz")
    new_h = NEW_HIDDEN if cfg.H != NEW_HIDDEN else NEW_HIDDEN + 16
    out = {"new_h": new_h}

    def once(framework, env=None, model_cell=cell, c=cfg, **kw):
        w = weights if (c, model_cell) == (cfg, cell) else f"{weights}.{c.name}-{model_cell}.npz"
        child = Child(_spec("first", framework, c, model_cell, threads, cpus, w, **kw), env)
        try:
            reply = child.receive()
            child.proc.wait()
            return reply
        finally:
            child.kill()

    with tempfile.TemporaryDirectory(prefix="mg-bench-cache-") as cache:
        env = dict(os.environ, MINIGRAD_CACHE_DIR=cache)
        empty = once("minigrad", env)
        warm = once("minigrad", env)
    with tempfile.TemporaryDirectory(prefix="mg-bench-cache-") as cache:
        env = dict(os.environ, MINIGRAD_CACHE_DIR=cache)
        # another cell's model first (the tagger is always an LSTM: the names GRU)
        once("minigrad", env, model_cell="gru" if cell != "gru" else "rnn",
             c=CONFIGS["N"] if cfg.bidirectional else cfg)
        cold = once("minigrad", env, new_hidden=new_h)
    out.update(empty=empty["first"], cold=cold["first"], warm=warm["first"],
               new=cold["new_hidden_first"], import_warm=warm["import"])
    for p in others:
        out[p] = once(p)["first"]
    return out


# ------------------------------------------------------------------------ report

class Report:
    """Prints markdown as it goes and keeps it for ``--markdown``."""

    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        print(text, flush=True)
        self.lines.append(text)

    def table(self, headers, rows, left=2):
        self("| " + " | ".join(headers) + " |")
        self("|" + "|".join("---" if i < left else "---:" for i in range(len(headers))) + "|")
        for r in rows:
            self("| " + " | ".join(str(c) for c in r) + " |")
        self()


def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.2f}" if t < 0.1 else f"{t * 1e3:.1f}" \
        if t < 1 else f"{t * 1e3:.0f}"


def _x(peer, mine):
    """peer time / minigrad time, bold where minigrad is slower (< 1)."""
    if peer is None or mine is None:
        return "n/a"
    r = peer / mine
    return f"**{r:.2f}**" if r < 1 else f"{r:.2f}"


def _pct(floor, t):
    return "n/a" if t is None else f"{100 * floor / t:.0f} %"


def _s(t):
    return "n/a" if t is None else f"{t:.2f}"


def machine_lines(others):
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    load = os.getloadavg()
    lines = [f"- {platform.processor() or platform.machine()}, nproc = {os.cpu_count()}; "
             f"Python {platform.python_version()}, numpy {np.__version__}, numba "
             f"{version('numba')}; peers: "
             + (", ".join(f"{p} {version(p)}" for p in others) or "none"),
             f"- load average at start: {', '.join(f'{x:.2f}' for x in load)}"]
    if load[0] > 0.5 * (os.cpu_count() or 1):
        lines.append(f"- **warning: the machine is busy (1-min load {load[0]:.1f} on "
                     f"{os.cpu_count()} cores): times are noisy and 2-thread times can be "
                     f"many times too slow — rerun on a quiet machine**")
    try:
        import threadpoolctl

        for lib in threadpoolctl.threadpool_info():
            if lib.get("user_api") == "blas":
                forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                          if k in os.environ}
                lines.append(f"- NumPy's BLAS (the floor's; minigrad's for small products): "
                             f"{lib.get('internal_api')} {lib.get('version')}, its "
                             f"{lib.get('architecture')} kernels" + (
                                 f" (forced by {forced}: unset both to let it choose)"
                                 if forced else " (its own choice for this CPU)"))
        loops = subprocess.run([sys.executable, "-c", "from minigrad.kernels import blas; "
                                "print(blas.NAME)"], capture_output=True, text=True, timeout=120)
        lines.append(f"- minigrad's GEMMs in its compiled loops and float32 products of ≥ 2²⁰ "
                     f"multiply-adds: {loops.stdout.strip()} (`minigrad.kernels.blas`)")
    except Exception:  # informative only
        pass
    return lines


def report_steps(rep, threads, rows, labels):
    rep(f"### Training step, {threads} thread{'s' if threads > 1 else ''} (ms per step, "
        f"median round; × peer = peer time / minigrad time)")
    rep()
    extra = [k for k in labels if k not in ("minigrad", "torch", "jax")]
    table = []
    for cfg, cell, m in rows:
        t, rss = m["time"], m["rss"]
        mine, floor = t["minigrad"], t["GEMM floor"]
        flops = gemm_flops(cfg, cell)
        table.append([cfg.name, cell, _ms(mine), _ms(t.get("torch")), _ms(t.get("jax")),
                      _x(t.get("torch"), mine), _x(t.get("jax"), mine),
                      *[_ms(t[k]) for k in extra],
                      f"{flops / 1e9:.3f}", _ms(floor), f"{flops / floor / 1e9:.0f}",
                      " / ".join(_pct(floor, t.get(k)) for k in FRAMEWORKS),
                      " / ".join("n/a" if k not in rss else f"{rss[k]:.0f}"
                                 for k in FRAMEWORKS),
                      "n/a" if m["other"] is None else f"{m['other']:.2f}"])
    rep.table(["config", "cell", "minigrad", "torch", "JAX", "× torch", "× JAX",
               *[f"{k} ms" for k in extra], "GEMM GFLOP", "GEMM floor ms",
               "floor GFLOP/s", "floor % minigrad / torch / JAX",
               "peak RSS MiB minigrad / torch / JAX", "other load, cores"], table)
    busy = [f"{cfg.name} {cell} ({m['other']:.2f})" for cfg, cell, m in rows
            if m["other"] is not None and m["other"] >= BUSY]
    if busy:
        rep(f"**Other load of ≥ {BUSY} cores while timing {', '.join(busy)}: with "
            f"{threads} thread{'s' if threads > 1 else ''} on {os.cpu_count()} cores, "
            "these rows measured the machine's load as much as the frameworks.**")
        rep()


def report_summary(rep, results, thread_counts):
    rep("### Summary: minigrad ms / × torch / × JAX (> 1: minigrad faster)")
    rep()
    rows = []
    for (cfg, cell), by_threads in results.items():
        row = [cfg.name, cfg.describe(), cell]
        for n in thread_counts:
            m = by_threads.get(n)
            if m is None:
                row.append("n/a")
                continue
            t = m["time"]
            row.append(f"{_ms(t['minigrad'])} / {_x(t.get('torch'), t['minigrad'])} / "
                       f"{_x(t.get('jax'), t['minigrad'])}")
        rows.append(row)
    rep.table(["config", "shape", "cell",
               *[f"{n} thread{'s' if n > 1 else ''}" for n in thread_counts]], rows, left=3)


def report_agreement(rep, results):
    rep("### Same model, same update: losses over the first 4 steps from the same weights")
    rep()
    rows = []
    for (cfg, cell), by_threads in results.items():
        for n, m in by_threads.items():
            ls = m["losses"]
            rows.append([cfg.name, cell, n, " → ".join(f"{v:.5f}" for v in ls["minigrad"]),
                         *[("n/a" if k not in ls else f"{disagreement(ls['minigrad'], ls[k]):.1e}")
                           for k in ("torch", "jax")]])
    rep.table(["config", "cell", "threads", "minigrad loss, steps 1–4",
               "max rel. diff torch", "max rel. diff JAX"], rows, left=4)


def report_minchar(rep, rows):
    rep("### Vanilla RNN at A against the NumPy min-char-rnn (`min_char_rnn.py`; summed loss, "
        "clip ±5, Adagrad, state carried; same initial weights)")
    rep()
    table = []
    for threads, m in rows:
        t, ref = m["time"], m["time"]["numpy min-char-rnn"]
        table.append([threads, _ms(ref), _ms(t["minigrad"]), f"{ref / t['minigrad']:.2f}",
                      " / ".join(f"{m['losses'][k][0]:.4f}" for k in t),
                      " / ".join(f"{m['rss'][k]:.0f}" for k in t)])
    rep.table(["threads", "min-char-rnn ms", "minigrad ms", "× min-char-rnn",
               "first loss minigrad / min-char-rnn", "peak RSS MiB minigrad / min-char-rnn"],
              table, left=1)


def report_first(rep, rows, others, threads):
    rep(f"### First training step in a fresh process (seconds; {threads} thread(s) on "
        f"{threads} core(s), every framework)")
    rep()
    table = [[cfg.name, cell, _s(f.get("empty")), _s(f["cold"]), _s(f["warm"]),
              f"{_s(f['new'])} (H {f['new_h']})", _s(f["import_warm"]),
              *[_s(f.get(p)) for p in ("jax", "torch")]] for cfg, cell, f in rows]
    rep.table(["config", "cell", "minigrad empty cache", "minigrad new cell", "minigrad warm",
               "minigrad new hidden size", "minigrad import (warm)", "JAX (compile + step)",
               "torch"], table)
    rep("empty cache = a new empty `MINIGRAD_CACHE_DIR`: the package's own Numba kernels and "
        "the cell's generated code are compiled (once per installation); new cell = a new "
        "directory where a compiled model with another cell (GRU; RNN for a GRU; D, whose "
        "tagger is always an LSTM: the names GRU) ran first, so only this cell's generated "
        "code is compiled; warm = a second process on the "
        "empty-cache directory; new hidden size = in the new-cell process, after its first "
        "steps, the first step of the same model at another H. Every minigrad first step "
        "runs its loops as Python while Numba compiles them in the background. Peers: their "
        "first step in a fresh process (JAX's is its trace and XLA compile). With more than one "
        "core, minigrad compiles a new cell's backward kernels in a forked copy of the process "
        "while it compiles the forward's.")
    rep()


# ------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="subset of A,N,B,K,C,D")
    ap.add_argument("--cells", default="rnn,gru,lstm",
                    help="subset of rnn,gru,lstm (each config runs the ones it lists)")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1 or 1,2")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help="minigrad plus any of torch,jax (missing peers are skipped)")
    ap.add_argument("--sections", default="steps,first,minchar",
                    help="subset of steps,first,minchar")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (median; ≥ 3)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, short windows")
    ap.add_argument("--eager", action="store_true",
                    help="also time minigrad's eager path (compiled=False)")
    ap.add_argument("--core", type=int, default=None,
                    help="the CPU that 1-thread runs are pinned to (default: the first one)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    args = ap.parse_args(argv)

    def listed(text, allowed, what, upper=False):
        items = [s.strip().upper() if upper else s.strip().lower()
                 for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            ap.error(f"--{what}: unknown {bad or text!r}; expected a subset of "
                     f"{','.join(allowed)}")
        return items

    configs = [CONFIGS[c] for c in listed(args.configs, list(CONFIGS), "configs", True)]
    cells = listed(args.cells, list(GATES), "cells")
    sections = listed(args.sections, ["steps", "first", "minchar"], "sections")
    frameworks = listed(args.frameworks, list(FRAMEWORKS), "frameworks")
    if "minigrad" not in frameworks:
        ap.error("--frameworks: minigrad is the reference every peer is compared with")
    try:
        thread_counts = [int(s) for s in args.threads.split(",")]
    except ValueError:
        thread_counts = [0]
    mask = sorted(os.sched_getaffinity(0))
    if not all(1 <= n <= len(mask) for n in thread_counts):
        ap.error(f"--threads: expected counts from 1 to {len(mask)} (the CPUs this process "
                 f"may use), such as 1,2; got {args.threads!r}")
    if args.core is not None and args.core not in mask:
        ap.error(f"--core: CPU {args.core} is not among the usable CPUs {mask}")
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 3:
        ap.error("--rounds: at least 3 (the table reports the median round)")
    tm = Timing(rounds, window=0.05 if args.quick else 0.3, settle=0.02 if args.quick else 0.05)

    missing = [p for p in frameworks[1:] if importlib.util.find_spec(peers.MODULES[p]) is None]
    present = [p for p in frameworks[1:] if p not in missing]
    contenders = {"minigrad": ("minigrad", None), **{p: (p, None) for p in present}}
    if args.eager:
        contenders["minigrad eager"] = ("minigrad", False)

    def cpus(threads):
        first = mask.index(args.core) if args.core is not None else 0
        return (mask[first:] + mask[:first])[:threads]

    t_start = time.perf_counter()
    rep = Report()
    rep(f"## `{' '.join(['python benchmarks/bench_rnn.py'] + sys.argv[1:])}`")
    rep()
    rep(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {rounds} "
        f"interleaved rounds, ≥ {tm.window * 1e3:.0f} ms per contender per round; "
        f"each framework in its own process, pinned to its thread count's cores")
    for line in machine_lines(present):
        rep(line)
    for p in missing:
        rep(f"- {p}: not installed, left out (`make bench` installs it)")
    rep("- ratio × peer = peer time / minigrad time (> 1: minigrad faster; bold: slower). "
        "GEMM floor = the step's GEMMs alone at their shapes through NumPy's BLAS "
        "(`peers.gemms`), timed in minigrad's process; floor % = floor / step time")
    rep("- other load = the CPU that the rest of the machine used while the row was timed, "
        "in cores on average (/proc/stat's busy time minus the timed process's own, ±0.01 s "
        "per window): with 2 threads on 2 cores, a row whose other load is not near 0 had "
        "threads waiting for a core, and its times say little")
    rep()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mg-bench-") as tmp:
        rows_first, rows_minchar = [], []
        if "steps" in sections:
            for threads in thread_counts:
                rows = []
                for cfg in configs:
                    for cell in [c for c in cells if c in cfg.cells]:
                        m = measure(cfg, cell, threads, cpus(threads), contenders, tm, tmp)
                        rows.append((cfg, cell, m))
                        results.setdefault((cfg, cell), {})[threads] = m
                        print(f"  [{cfg.name} {cell}, {threads} thread(s): " + ", ".join(
                            f"{k} {v * 1e3:.2f} ms" for k, v in m["time"].items()) + "]",
                            flush=True)
                report_steps(rep, threads, rows, list(contenders))
        if "minchar" in sections:
            for threads in thread_counts:
                minchar = {"minigrad": ("minigrad min-char-rnn", None),
                           "numpy min-char-rnn": ("numpy min-char-rnn", None)}
                rows_minchar.append((threads, measure(CONFIGS["A"], "rnn", threads,
                                                      cpus(threads), minchar, tm, tmp, False)))
        if "first" in sections:
            for cfg in configs:
                for cell in [c for c in cells if c in cfg.cells]:
                    f = first_steps(cfg, cell, max(thread_counts), cpus(max(thread_counts)),
                                    present, tmp)  # (as a user starts: every core)
                    rows_first.append((cfg, cell, f))
                    print(f"  [{cfg.name} {cell} first steps: {f}]", flush=True)
    if results:
        report_summary(rep, results, thread_counts)
        report_agreement(rep, results)
    if rows_minchar:
        report_minchar(rep, rows_minchar)
    if rows_first:
        report_first(rep, rows_first, present, max(thread_counts))
    rep(f"_Total {time.perf_counter() - t_start:.0f} s; load average at end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}_")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(rep.lines) + "\n")
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD:
        child_main(json.loads(sys.argv[2]))
    else:
        main()
