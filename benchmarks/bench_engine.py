"""Engine micro-benchmarks for minigrad: GEMM, per-op tape overhead, kernels, import time.

Everything is reported *in one run, side by side with NumPy*, as ratios: the machine is a
shared 2-core box whose absolute timings move ±20–40 % between sittings, so only numbers
measured in the same process a few milliseconds apart are comparable.  Every timing is
taken after a warm-up (Numba compile time is excluded) as the best (min) or the median of
several repeats.  Four sections, each printed as a markdown table with its goal and a
✓/✗ per row (paste them into benchmarks/README.md):

1. ``matmul`` GFLOP/s — the engine's matmul primitive (what ``a @ b`` runs) and the Numba
   route (``np.dot`` inside ``@njit``, i.e. scipy's OpenBLAS: ``kernels.matmul`` where it
   exists) against ``numpy.dot`` (numpy's OpenBLAS) for square float32 ``A @ B``,
   ``A.T @ B`` and ``A @ B.T`` (transposed views, no copy).  Goal: ≥ 0.9× NumPy at n ≥ 128.
   The two BLAS libraries have two thread pools, so each is timed in its own block with
   its own warm-up, after a pause that lets the other pool's spinning threads sleep; a
   second small table shows what alternating the two libraries call by call costs.
2. per-op overhead (µs) of the tape on 16-element float32 tensors: a chain of ~1000
   ``add``/``mul``/``tanh``/``exp``/``sigmoid`` ops, then one ``backward``; against the
   plain-NumPy cost of the same forward + backward arithmetic; with the garbage
   collector on (its share shown apart), off (``gc.disable()``) and frozen (``gc.freeze()``).
   Goal: ≤ 5 µs total (record + forward + backward) per tiny elementwise op.
3. every Numba kernel against the equivalent NumPy expression on a (256, 1024) float32
   array, in ns/element.  Goal: each kernel at least as fast as NumPy (speed-up ≥ 1.0).
4. import + first op in a fresh interpreter, cold (empty ``NUMBA_CACHE_DIR``) and warm
   (same cache again).  Goal: warm ≤ 1.5 s.

Run ``python benchmarks/bench_engine.py`` (about a minute) or ``--quick`` (< 20 s, fewer
repeats, shorter timing windows).  ``--sections 1,3`` runs a subset; ``--blas-threads 1``
pins both BLAS pools to one thread (steadier on a busy machine, lower GEMM peak).
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numba
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

import minigrad as mg  # noqa: E402
from minigrad import kernels  # noqa: E402
from minigrad.core import ops  # noqa: E402

F32 = np.float32
OK, BAD = "✓", "✗"
perf = time.perf_counter


# ----------------------------------------------------------------------------- helpers

class Cfg:
    """Timing knobs; ``--quick`` shrinks them."""

    def __init__(self, quick):
        self.quick = quick
        self.repeats = 5 if quick else 7          # timed repeats per measurement
        self.min_time = 0.005 if quick else 0.03  # seconds per repeat (calls are batched)
        self.warmup = 0.02 if quick else 0.1      # seconds of warm-up calls per block
        self.settle = 0.2                         # pause before a BLAS block (see section 1)
        self.chain = 1000                         # ops per chain in section 2
        self.chain_repeats = 8 if quick else 40
        self.warm_runs = 1 if quick else 3        # warm subprocess runs in section 4
        self.mm_rounds = 1 if quick else 2        # ours-block/numpy-block rounds, section 1


def timeit(fn, cfg, min_time=None, repeats=None, warmup=None):
    """Seconds per call of ``fn()``: (min, median) over repeats, after a timed warm-up.

    Calls are batched so each repeat lasts ``min_time``; the batch size comes from the
    warm-up, which runs for ``warmup`` seconds (at least 3 calls).
    """
    min_time = cfg.min_time if min_time is None else min_time
    repeats = cfg.repeats if repeats is None else repeats
    warmup = cfg.warmup if warmup is None else warmup
    calls, t0 = 0, perf()
    end = t0 + warmup
    while calls < 3 or perf() < end:
        fn()
        calls += 1
    per_call = (perf() - t0) / calls
    number = max(1, int(min_time / max(per_call, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = perf()
        for _ in range(number):
            fn()
        times.append((perf() - t0) / number)
    return min(times), statistics.median(times)


def table(headers, rows, align=None):
    """A markdown table; ``align`` is a string of 'l'/'r' per column (default: first l)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)
        ) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def mark(ok):
    return OK if ok else BAD


def heading(text):
    print(f"\n### {text}\n", flush=True)


# ----------------------------------------------------------------------------- machine

def machine_info():
    """Lines describing the machine, library versions and BLAS."""
    import scipy

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        f"- CPU: {cpu}; nproc = {usable} (os.cpu_count = {os.cpu_count()})",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}, scipy {scipy.__version__}",
    ]
    env = {k: os.environ[k] for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS", "NUMBA_CACHE_DIR")
           if k in os.environ}
    load = os.getloadavg()
    lines.append(f"- thread env: {env or 'none set'}; load average at start: "
                 f"{', '.join(f'{x:.2f}' for x in load)}")
    if load[0] > 0.5:
        lines.append(f"- **warning**: the machine is busy (1-min load {load[0]:.2f} on "
                     f"{usable} cores): BLAS and per-op numbers will be noisy — rerun idle")
    try:
        import threadpoolctl
        for p in threadpoolctl.threadpool_info():
            lines.append(f"- BLAS pool: {p.get('internal_api')} {p.get('version')} "
                         f"({p.get('threading_layer')}, {p.get('num_threads')} threads, "
                         f"{p.get('architecture')}) — {os.path.basename(p.get('filepath', ''))}")
    except ImportError:
        # threadpoolctl is not a dependency: fall back to the build configuration.
        for name, mod in (("numpy", np), ("scipy", scipy)):
            try:
                blas = mod.show_config(mode="dicts")["Build Dependencies"]["blas"]
                lines.append(f"- {name} BLAS (build config; threadpoolctl not installed): "
                             f"{blas.get('name')} {blas.get('version')}")
            except Exception:  # show_config's layout differs across versions
                lines.append(f"- {name} BLAS: unknown (threadpoolctl not installed)")
    return lines


# ----------------------------------------------------------------------------- 1. matmul

MM_VARIANTS = {
    # name: (how the operands are presented) — transposes are views, never copies
    "A @ B": lambda a, b: (a, b),
    "A.T @ B": lambda a, b: (a.T, b),
    "A @ B.T": lambda a, b: (a, b.T),
}


@numba.njit(cache=True)
def _numba_dot(a, b):
    """``np.dot`` inside ``@njit``: Numba hands it to the OpenBLAS that SciPy ships."""
    return np.dot(a, b)


def numba_matmul():
    """The Numba-BLAS route: ``kernels.matmul`` where the engine still has it."""
    return getattr(kernels, "matmul", _numba_dot)


def engine_matmul():
    """What ``a @ b`` on two 2-D tensors runs: the matmul primitive's forward."""
    return ops.PRIMITIVES["matmul"].fwd


def bench_matmul(cfg, sizes):
    nb_name = "kernels.matmul" if hasattr(kernels, "matmul") else "Numba np.dot"
    heading(f"1. matmul, float32, square: the engine's matmul primitive and {nb_name} "
            "(scipy's BLAS) vs numpy.dot (GFLOP/s)")
    rng = np.random.default_rng(0)
    engine, nb = engine_matmul(), numba_matmul()
    cases = []
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(F32)
        b = rng.standard_normal((n, n)).astype(F32)
        for vname, present in MM_VARIANTS.items():
            x, y = present(a, b)
            ref = np.dot(x, y)
            for fn in (engine, nb):
                assert np.allclose(fn(x, y), ref, rtol=1e-3, atol=1e-2)
            cases.append((n, vname, x, y))
    # Each BLAS library is timed in its own block — every case through Numba (scipy's
    # OpenBLAS), then every case through the engine and numpy.dot — after a pause that lets
    # the other pool's spinning threads go to sleep, with a warm-up per case.  Full mode
    # runs the blocks twice and keeps the best time per cell, so a slow stretch of the
    # shared machine is less likely to hit one side only.
    best = {}

    def keep(key, t):
        best[key] = min(t, best.get(key, np.inf))

    for _ in range(cfg.mm_rounds):
        for block in (("numba",), ("engine", "numpy")):
            time.sleep(cfg.settle)
            for n, vname, x, y in cases:
                # one 1024³ GEMM takes ~10–20 ms: fewer repeats for the big sizes
                reps = cfg.repeats if n <= 256 else max(3, cfg.repeats // 2)
                for side in block:
                    fn = {"numba": nb, "engine": engine, "numpy": np.dot}[side]
                    t, _ = timeit(lambda x=x, y=y, fn=fn: fn(x, y), cfg, repeats=reps)
                    keep((side, n, vname), t)
    rows = []
    for n, vname, _, _ in cases:
        eng, ref, nbt = (best[s, n, vname] for s in ("engine", "numpy", "numba"))
        gf = 2.0 * n ** 3 / 1e9
        ratio = ref / eng
        goal = "≥ 0.9×" if n >= 128 else "—"
        ok = mark(ratio >= 0.9) if n >= 128 else "(n < 128)"
        rows.append([n, vname, f"{gf / eng:.1f}", f"{gf / ref:.1f}", f"{ratio:.2f}×", goal, ok,
                     f"{gf / nbt:.1f}", f"{ref / nbt:.2f}×"])
    print(table(["n", "op", "engine", "numpy.dot", "engine / numpy", "goal", "",
                 nb_name, f"{nb_name} / numpy"], rows, "rlrrrllrr"))
    print("\nengine = `ops.PRIMITIVES['matmul'].fwd`, what `a @ b` on 2-D tensors runs "
          "(transposes are views, never copies).")
    return rows


def bench_blas_switch(cfg, sizes):
    """What alternating the two BLAS pools call by call costs, vs each in its own block."""
    heading("1b. switching BLAS libraries: alternating Numba np.dot (scipy's OpenBLAS) and "
            "numpy.dot call by call vs each library in its own block")
    nb = numba_matmul()
    rng = np.random.default_rng(1)
    rows = []
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(F32)
        b = rng.standard_normal((n, n)).astype(F32)
        time.sleep(cfg.settle)
        ours, _ = timeit(lambda a=a, b=b: nb(a, b), cfg)
        time.sleep(cfg.settle)
        ref, _ = timeit(lambda a=a, b=b: np.dot(a, b), cfg)

        def both(a=a, b=b):
            nb(a, b)
            np.dot(a, b)
        time.sleep(cfg.settle)
        alt_min, alt_med = timeit(both, cfg)
        block = ours + ref
        rows.append([n, f"{ours * 1e6:.1f}", f"{ref * 1e6:.1f}", f"{block * 1e6:.1f}",
                     f"{alt_med * 1e6:.1f}", f"{alt_med / block:.2f}×"])
    print(table(["n", "Numba µs (block)", "numpy µs (block)", "sum of blocks µs",
                 "alternating pair µs (median)", "slow-down"], rows))
    print("\nA slow-down well above 1× means the two OpenBLAS pools (numpy's and scipy's) "
          "fight over the 2 cores: every GEMM of a step must go through one of them.")
    return rows


# ----------------------------------------------------------------------------- 2. per-op overhead

# Why GC matters: every recorded op allocates a handful of GC-tracked containers (the
# output Tensor, its Node, the args/needs/parents lists).  CPython runs a generation-0
# collection every ~700 net allocations of such objects; a live tape of thousands of nodes
# survives into the older generations, and once enough objects have been promoted a full
# (generation-2) collection walks *every* tracked object in the process — with Numba
# loaded that is ~10⁵ objects, tens of ms per collection, amortised as µs per op.  The
# "gc off" and "gc frozen" columns show how much of the per-op cost is the collector's.

OVERHEAD_OPS = ("add", "mul", "tanh", "exp", "sigmoid")


def _mg_steps(c):
    return {
        "add": lambda y: y + c,
        "mul": lambda y: y * c,
        "tanh": lambda y: y.tanh(),
        "exp": lambda y: y.exp(),
        "sigmoid": lambda y: y.sigmoid(),
    }


def _np_fwd_bwd(c):
    """(forward(y) -> y', backward(g, y_in, y_out) -> g') in plain NumPy, as a tape would."""
    return {
        "add": (lambda y: y + c, lambda g, x, y: g),
        "mul": (lambda y: y * c, lambda g, x, y: g * c),
        "tanh": (np.tanh, lambda g, x, y: g * (1 - y * y)),
        "exp": (np.exp, lambda g, x, y: g * y),
        "sigmoid": (lambda y: 1 / (1 + np.exp(-y)), lambda g, x, y: g * y * (1 - y)),
    }


class _GCClock:
    """Seconds spent inside the cyclic garbage collector, via ``gc.callbacks``."""

    def __init__(self):
        self.total, self._t0 = 0.0, 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = perf()
        else:
            self.total += perf() - self._t0

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


def _time_chain_mg(op, cfg, gc_mode="on"):
    """Seconds per op: (record+forward, backward, GC, total) over ``chain_repeats`` chains.

    The time outside the collector is the median over chains (robust to the shared
    machine's hiccups); the collector's own time is the mean (a full collection lands on
    roughly one chain in twenty and costs tens of ms: that amortised cost is part of what
    an op costs).  ``gc_mode``: "on", "off" (gc.disable()) or "frozen" (gc.freeze()).
    """
    rng = np.random.default_rng(2)
    x0 = mg.tensor(rng.uniform(-0.5, 0.5, 16).astype(F32), requires_grad=True)
    c = mg.tensor(np.full(16, 1.0001, F32))  # a constant: its gradient is not wanted
    step = _mg_steps(c)[op]
    seed = np.ones(16, F32)
    fwd, bwd, gct = [], [], []
    gc.collect()  # once per series, not per chain: a collect costs ~0.1 s with Numba loaded
    if gc_mode == "frozen":
        gc.freeze()  # everything alive now (Numba's ~10⁵ objects) leaves the GC's view
    with _GCClock() as clock:
        for r in range(cfg.chain_repeats + 2):  # the first two are warm-up
            x0.grad = None
            if gc_mode == "off":
                gc.disable()
            try:
                g0 = clock.total
                t0 = perf()
                y = x0
                for _ in range(cfg.chain):
                    y = step(y)
                t1 = perf()
                g1 = clock.total
                y.backward(seed)
                del y  # freeing the graph is part of the cost of an op
                t2 = perf()
                g2 = clock.total
            finally:
                gc.enable()
            if r >= 2:
                fwd.append(t1 - t0 - (g1 - g0))
                bwd.append(t2 - t1 - (g2 - g1))
                gct.append(g2 - g0)
    if gc_mode == "frozen":
        gc.unfreeze()
    n = cfg.chain
    f, b, g = statistics.median(fwd) / n, statistics.median(bwd) / n, statistics.mean(gct) / n
    return f, b, g, statistics.median(x + y for x, y in zip(fwd, bwd)) / n + g


def _time_chain_np(op, cfg):
    """Seconds per op (median over chains) of the same arithmetic on plain arrays, with a
    list as the tape."""
    rng = np.random.default_rng(2)
    x0 = rng.uniform(-0.5, 0.5, 16).astype(F32)
    c = np.full(16, 1.0001, F32)
    fwd_fn, bwd_fn = _np_fwd_bwd(c)[op]
    seed = np.ones(16, F32)
    times = []
    gc.collect()
    for r in range(cfg.chain_repeats + 2):
        t0 = perf()
        tape = [x0]
        y = x0
        for _ in range(cfg.chain):
            y = fwd_fn(y)
            tape.append(y)
        g = seed
        for k in range(cfg.chain, 0, -1):
            g = bwd_fn(g, tape[k - 1], tape[k])
        del tape, y
        t1 = perf()
        if r >= 2:
            times.append(t1 - t0)
    return statistics.median(times) / cfg.chain


def bench_overhead(cfg):
    heading(f"2. per-op overhead, 16-element float32 tensors, chain of {cfg.chain} ops "
            f"+ one backward (µs per op, {cfg.chain_repeats} chains)")
    rows = []
    # exp of exp of … overflows to inf after a few steps; inf costs NumPy the same as any
    # float (no slow path), so silence the warnings on both sides alike.
    with np.errstate(all="ignore"):
        for op in OVERHEAD_OPS:
            f, b, g, tot = _time_chain_mg(op, cfg)
            tot_off = _time_chain_mg(op, cfg, "off")[3]
            tot_frozen = _time_chain_mg(op, cfg, "frozen")[3]
            ref = _time_chain_np(op, cfg)
            rows.append([op, f"{f * 1e6:.2f}", f"{b * 1e6:.2f}", f"{g * 1e6:.2f}",
                         f"{tot * 1e6:.2f}", f"{tot_off * 1e6:.2f}", f"{tot_frozen * 1e6:.2f}",
                         f"{ref * 1e6:.2f}", f"{tot / ref:.1f}×", "≤ 5 µs", mark(tot <= 5e-6)])
    print(table(["op", "record+fwd", "backward", "GC", "total", "total, gc off",
                 "total, gc frozen", "numpy fwd+bwd", "total / numpy", "goal", ""], rows))
    print(f"\n`record+fwd` and `backward` (which includes freeing the graph) are medians over "
          f"chains of the time outside the garbage collector; `GC` is the collector's time "
          f"(measured with gc.callbacks), averaged: a full collection walks all "
          f"{len(gc.get_objects())} objects alive in this process and hits about one chain "
          f"in twenty. `total` = their sum. `gc off` = gc.disable() around each chain; "
          f"`gc frozen` = gc.freeze() first, so collections skip the objects alive before "
          f"the run. `numpy fwd+bwd` = the same arithmetic on plain arrays with a list as the "
          f"tape.")
    return rows


# ----------------------------------------------------------------------------- 3. kernels

def _softmax_np(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax_np(x):
    s = x - x.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _kernel_cases(shape=(256, 1024)):
    """(name, kernel thunk, numpy thunk, elements) for every kernel, on shared inputs."""
    n, v = shape
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2).astype(F32)
    g = rng.standard_normal(shape).astype(F32)
    y_tanh = np.tanh(x)
    y_sig = (1 / (1 + np.exp(-x))).astype(F32)
    y_relu = np.maximum(x, 0)
    y_sm = _softmax_np(x)
    y_lsm = _log_softmax_np(x)
    t = rng.integers(0, v, n).astype(np.int64)
    w = np.ones(n, F32)
    gl = np.ones(n, F32)
    _, lse = kernels.cross_entropy_rows(x, t, w)
    rows_ = np.arange(n)
    table_ = rng.standard_normal(shape).astype(F32)   # an embedding table (n rows, v wide)
    idx = rng.integers(0, n, n).astype(np.int64)        # with repeats, as in a batch
    acc_ours = np.zeros(shape, F32)
    acc_np = np.zeros(shape, F32)
    size = x.size

    def ce_np():
        m = x.max(axis=1)
        ls = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
        return w * (ls - x[rows_, t]), ls

    def ce_bwd_np():
        p = np.exp(x - lse[:, None])
        p[rows_, t] -= 1
        p *= (gl * w)[:, None]
        return p

    cases = [
        ("tanh forward", lambda: kernels.tanh_forward(x), lambda: np.tanh(x), size),
        ("sigmoid forward", lambda: kernels.sigmoid_forward(x),
         lambda: 1 / (1 + np.exp(-x)), size),
        ("tanh backward", lambda: kernels.tanh_backward(g, y_tanh),
         lambda: g * (1 - y_tanh * y_tanh), size),
        ("sigmoid backward", lambda: kernels.sigmoid_backward(g, y_sig),
         lambda: g * y_sig * (1 - y_sig), size),
        ("relu backward", lambda: kernels.relu_backward(g, y_relu),
         lambda: g * (y_relu > 0), size),
        ("softmax_rows", lambda: kernels.softmax_rows(x), lambda: _softmax_np(x), size),
        ("log_softmax_rows", lambda: kernels.log_softmax_rows(x),
         lambda: _log_softmax_np(x), size),
        ("softmax_backward_rows", lambda: kernels.softmax_backward_rows(g, y_sm),
         lambda: y_sm * (g - (g * y_sm).sum(axis=1, keepdims=True)), size),
        ("log_softmax_backward_rows", lambda: kernels.log_softmax_backward_rows(g, y_lsm),
         lambda: g - np.exp(y_lsm) * g.sum(axis=1, keepdims=True), size),
        ("cross_entropy_rows", lambda: kernels.cross_entropy_rows(x, t, w), ce_np, size),
        ("cross_entropy_backward_rows",
         lambda: kernels.cross_entropy_backward_rows(gl, x, t, w, lse), ce_bwd_np, size),
        ("sum_axis0", lambda: kernels.sum_axis0(x), lambda: np.sum(x, axis=0), size),
        ("sum_axis1", lambda: kernels.sum_axis1(x), lambda: np.sum(x, axis=1), size),
        ("gather_rows", lambda: kernels.gather_rows(table_, idx), lambda: table_[idx], size),
        ("scatter_add_rows", lambda: kernels.scatter_add_rows(acc_ours, idx, g),
         lambda: np.add.at(acc_np, idx, g), size),
    ]
    if v % 4 == 0:
        cases += _cell_cases(n, v // 4)
    return cases


def _sig_np(z):
    return 1 / (1 + np.exp(-z))


def _cell_cases(b, h):
    """The fused recurrent-cell kernels at batch ``b``, hidden size ``h``, against the same
    gate math as separate NumPy ufuncs (what a cell costs composed from array ops).

    Only the kernels that exist are listed; ns/element is per element of the (B, H) state.
    """
    rng = np.random.default_rng(4)

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(F32)

    cases = []
    size = b * h
    c_prev, gc_, ga = r(b, h), r(b, h), r(b, h)
    if hasattr(kernels, "lstm_forward"):
        z, p = r(b, 4 * h, scale=2.0), r(3, h, scale=0.1)

        def lstm_np():
            zc, zu, zf, zo = z[:, :h], z[:, h:2 * h], z[:, 2 * h:3 * h], z[:, 3 * h:]
            ct = np.tanh(zc)
            u = _sig_np(zu + p[0] * c_prev)
            f = _sig_np(zf + p[1] * c_prev)
            c = u * ct + f * c_prev
            o = _sig_np(zo + p[2] * c)
            tc = np.tanh(c)
            return o * tc, c, (ct, u, f, o, tc)

        _, c, acts = kernels.lstm_forward(z, c_prev, p)
        ct, u, f, o, tc = lstm_np()[2]

        def lstm_bwd_np():
            do_ = ga * tc * o * (1 - o)
            dc = gc_ + ga * o * (1 - tc * tc) + do_ * p[2]
            du = dc * ct * u * (1 - u)
            df = dc * c_prev * f * (1 - f)
            dz = np.concatenate([dc * u * (1 - ct * ct), du, df, do_], axis=1)
            dcp = dc * f + du * p[0] + df * p[1]
            dp = np.stack([(du * c_prev).sum(0), (df * c_prev).sum(0), (do_ * c).sum(0)])
            return dz, dcp, dp

        cases += [
            ("lstm_forward", lambda: kernels.lstm_forward(z, c_prev, p), lstm_np, size),
            ("lstm_backward", lambda: kernels.lstm_backward(ga, gc_, acts, c_prev, c, p),
             lstm_bwd_np, size),
        ]
    if hasattr(kernels, "gru_update_forward"):
        # NOTE: fresh names — the closures above read theirs when called, not when made.
        zc_g, u_g = r(b, h, scale=2.0), _sig_np(r(b, h, scale=2.0))
        ct_g = np.tanh(zc_g)
        cases += [
            ("gru_update_forward", lambda: kernels.gru_update_forward(zc_g, u_g, c_prev),
             lambda: (u_g * np.tanh(zc_g) + (1 - u_g) * c_prev,), size),
            ("gru_update_backward",
             lambda: kernels.gru_update_backward(gc_, ct_g, u_g, c_prev),
             lambda: (gc_ * u_g * (1 - ct_g * ct_g), gc_ * (ct_g - c_prev), gc_ * (1 - u_g)),
             size),
        ]
    if hasattr(kernels, "gru_gates_forward"):
        zur = r(b, 2 * h, scale=2.0)
        gu_, gr_ = _sig_np(zur[:, :h]), _sig_np(zur[:, h:])

        def gates_np():
            uu, rr = _sig_np(zur[:, :h]), _sig_np(zur[:, h:])
            return uu, rr * c_prev, rr

        def gates_bwd_np():
            dz = np.concatenate([ga * gu_ * (1 - gu_), gc_ * c_prev * gr_ * (1 - gr_)], axis=1)
            return dz, gc_ * gr_

        cases += [
            ("gru_gates_forward", lambda: kernels.gru_gates_forward(zur, c_prev), gates_np,
             size),
            ("gru_gates_backward",
             lambda: kernels.gru_gates_backward(ga, gc_, gu_, gr_, c_prev), gates_bwd_np, size),
        ]
    if hasattr(kernels, "gru_reset_after_forward"):
        xp, hh = r(b, 3 * h, scale=2.0), r(b, 3 * h)

        def ra_np():
            uu = _sig_np(xp[:, h:2 * h] + hh[:, h:2 * h])
            rr = _sig_np(xp[:, 2 * h:] + hh[:, 2 * h:])
            cc = np.tanh(xp[:, :h] + rr * hh[:, :h])
            return uu * cc + (1 - uu) * c_prev, (cc, uu, rr)

        _, ra_acts = kernels.gru_reset_after_forward(xp, hh, c_prev)
        s_c, s_u, s_r = ra_np()[1]

        def ra_bwd_np():
            dxc = gc_ * s_u * (1 - s_c * s_c)
            dxu = gc_ * (s_c - c_prev) * s_u * (1 - s_u)
            dxr = dxc * hh[:, :h] * s_r * (1 - s_r)
            return (np.concatenate([dxc, dxu, dxr], axis=1),
                    np.concatenate([dxc * s_r, dxu, dxr], axis=1), gc_ * (1 - s_u))

        cases += [
            ("gru_reset_after_forward",
             lambda: kernels.gru_reset_after_forward(xp, hh, c_prev), ra_np, size),
            ("gru_reset_after_backward",
             lambda: kernels.gru_reset_after_backward(gc_, ra_acts, hh, c_prev), ra_bwd_np,
             size),
        ]
    return [(f"{name} (B={b}, H={h})", ours, ref, n) for name, ours, ref, n in cases]


def _arrays(x):
    """The array outputs of a kernel or of its twin (nested tuples of saved values skipped)."""
    return [o for o in (x if isinstance(x, tuple) else (x,)) if isinstance(o, np.ndarray)]


def _check(name, ours, ref):
    """None if the kernel computes what its NumPy twin computes (float32 tolerances),
    else a short description of the difference or of the error (e.g. a changed signature)."""
    if name.startswith("scatter_add_rows"):
        return None  # in place and accumulating: checked by the test suite, not here
    try:
        outs, refs = _arrays(ours()), _arrays(ref())
    except Exception as e:  # a kernel whose signature changed since this was written
        return f"error: {type(e).__name__}: {e}"[:120]
    for i, (a, b) in enumerate(zip(outs, refs)):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-4):
            diff = np.max(np.abs(a - b)) if a.shape == b.shape else f"{a.shape}≠{b.shape}"
            return f"output {i} differs from NumPy (max abs diff {diff})"
    return None


def bench_kernels(cfg, shape=(256, 1024)):
    heading(f"3. kernels vs NumPy on a {shape} float32 array (ns per element, best of "
            f"{cfg.repeats})")
    rows, notes = [], []
    for name, ours, ref, size in _kernel_cases(shape):
        problem = _check(name, ours, ref)
        if problem is not None and problem.startswith("error"):
            rows.append([name, "—", "—", "—", "≥ 1.0×", "skipped"])
            notes.append(f"{name}: {problem}")
            continue
        if problem:
            notes.append(f"{name}: {problem}")
        t_ours, _ = timeit(ours, cfg)
        t_ref, _ = timeit(ref, cfg)
        speed = t_ref / t_ours
        rows.append([name, f"{t_ours / size * 1e9:.3f}", f"{t_ref / size * 1e9:.3f}",
                     f"{speed:.2f}×", "≥ 1.0×", mark(speed >= 1.0)])
    print(table(["kernel", "ours ns/elem", "numpy ns/elem", "speed-up", "goal", ""], rows))
    print("\nNumPy twins: tanh → np.tanh; sigmoid → 1/(1+np.exp(-x)); backward → "
          "g*(1-y*y), g*y*(1-y), g*(y>0); softmax → exp(x-max)/sum; log_softmax → "
          "x-max-log(sum(exp)); cross-entropy → same + x[rows, t]; gather → table[idx]; "
          "scatter-add → np.add.at; cells → the same gate math as separate ufuncs, per "
          "element of the (B, H) state.")
    for note in notes:
        print(f"\n**{note}**")
    return rows


# ----------------------------------------------------------------------------- 4. import time

_CHILD = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    import numpy as np
    t1 = time.perf_counter()
    import numba
    t2 = time.perf_counter()
    import minigrad as mg
    t3 = time.perf_counter()
    x = mg.tensor(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), requires_grad=True)
    (x.tanh() * x).sum().backward()
    assert x.grad is not None
    t4 = time.perf_counter()
    print(json.dumps({"numpy": t1 - t0, "numba": t2 - t1, "minigrad": t3 - t2,
                      "first_op": t4 - t3}))
""")


def _run_child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, MINIGRAD_CACHE_DIR=cache_dir,
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    t0 = perf()
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, check=False)
    wall = perf() - t0
    if out.returncode != 0:
        raise RuntimeError(f"import benchmark child failed:\n{out.stderr}")
    d = json.loads(out.stdout.strip().splitlines()[-1])
    d["wall"] = wall
    return d


def bench_import(cfg):
    heading("4. fresh interpreter: import minigrad + first op "
            "`(x.tanh() * x).sum().backward()` (seconds)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mg-numba-cache-") as cache:
        cold = _run_child(cache)
        warm = [_run_child(cache) for _ in range(cfg.warm_runs)]
    # the median run by wall time (keeps the breakdown of one actual run)
    warm_med = sorted(warm, key=lambda d: d["wall"])[len(warm) // 2]
    for label, d, goal, ok in (
        ("cold (empty NUMBA_CACHE_DIR)", cold, "—", ""),
        (f"warm (same cache, median of {len(warm)})", warm_med, "≤ 1.5 s",
         mark(warm_med["wall"] <= 1.5)),
    ):
        rows.append([label, f"{d['wall']:.2f}", f"{d['numpy']:.2f}", f"{d['numba']:.2f}",
                     f"{d['minigrad']:.2f}", f"{d['first_op']:.3f}", goal, ok])
    print(table(["run", "process wall", "import numpy", "import numba", "import minigrad",
                 "first op", "goal", ""], rows))
    print("\n`process wall` includes interpreter start-up; `import minigrad` is what is left "
          "after numpy and numba are imported (the kernels module; ufuncs are built on first use).")
    return rows


# ----------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and shorter timing windows (< 20 s)")
    p.add_argument("--sections", default="1,2,3,4",
                   help="comma-separated subset of sections to run (default: all)")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="limit both BLAS pools to N threads (threadpoolctl); default: "
                        "OpenBLAS's own choice. N=1 gives steadier numbers on a busy machine")
    args = p.parse_args(argv)
    mg.freeze_gc()  # opt-in: keep full collections from walking Numba's objects (see README)
    cfg = Cfg(args.quick)
    if args.blas_threads is not None:
        import threadpoolctl  # a dependency of minigrad.threads; imported here only if asked

        numba_matmul()(np.ones((2, 2), F32), np.ones((2, 2), F32))  # load scipy's BLAS too
        threadpoolctl.threadpool_limits(limits=args.blas_threads, user_api="blas")
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}

    t_start = perf()
    print(f"## minigrad engine benchmark ({'--quick' if cfg.quick else 'full'})\n")
    for ln in machine_info():
        print(ln)
    # Compile (or load from cache) every kernel the benchmark calls before any timing.
    t0 = perf()
    with np.errstate(all="ignore"):
        for name, ours, ref, _ in _kernel_cases((4, 8)):
            _check(name, ours, ref)  # compiles; errors are reported by section 3
        a = np.ones((8, 8), F32)
        for present in MM_VARIANTS.values():
            numba_matmul()(*present(a, a))
        for op in OVERHEAD_OPS:
            x = mg.tensor(np.ones(4, F32), requires_grad=True)
            _mg_steps(mg.tensor(np.ones(4, F32)))[op](x).backward(np.ones(4, F32))
    print(f"- JIT warm-up in this process (excluded from every timing): {perf() - t0:.2f} s")

    for key, run in (
        ("1", lambda: (bench_matmul(cfg, (64, 128, 256, 512, 1024)),
                       bench_blas_switch(cfg, (128,) if cfg.quick else (64, 128, 256)))),
        ("2", lambda: bench_overhead(cfg)),
        ("3", lambda: bench_kernels(cfg)),
        ("4", lambda: bench_import(cfg)),
    ):
        if key in sections:
            t0 = perf()
            run()
            time.sleep(cfg.settle)  # let the BLAS threads go to sleep before the next one
            print(f"\n_(section {key}: {perf() - t0:.1f} s)_", flush=True)
    print(f"\nTotal benchmark time: {perf() - t_start:.1f} s; load average at end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
