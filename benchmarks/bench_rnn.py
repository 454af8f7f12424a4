"""Training-step benchmark of minigrad's RNN/GRU/LSTM against PyTorch, a numpy min-char-rnn
and the machine's GEMM floor; peak memory and compile cost in fresh processes.

A training step is forward + backward + SGD update, float32, cross-entropy (mean) at every
time step.  Configurations (issue 8):

    A  V65 H100 B1 T25             character LM, 1 layer         (overhead-bound)
    B  V65 H128 B32 T64            character LM, 1 layer         (GEMM-bound)
    C  V65 H256 B64 T100           character LM, 2 layers
    D  I50 H64 B16 T40, 17 tags    BiLSTM tagger, dense input    (LSTM only)

At A–C minigrad gets (B, T) int64 ids (the layer's input size is V: a row lookup), PyTorch
one-hot floats; at D both get dense (B, T, 50) floats.  minigrad runs its layers *compiled*
and *eager* (``RNN/GRU/LSTM(..., compiled=True|False)``; where the layers do not take that
keyword yet, eager only and the compiled column says n/a).  All runs of one row are timed in
the same process in interleaved rounds (each round times every contender for ≥ a window);
the table shows the median round.  ratio = torch time / minigrad time: > 1 means minigrad
is faster.  Absolute times move ±20–40 % between runs on a shared 2-core machine: compare
ratios measured in one run.

Sections (``--sections``, default all):
  steps    the training-step table, once per ``--threads`` value
  minchar  minigrad's vanilla RNN against benchmarks/min_char_rnn.py at A (same algorithm:
           summed loss, clip ±5, Adagrad, state carried over)
  rss      peak RSS per config in a fresh process per run (``resource.getrusage``)
  compile  first training step in a fresh process: cold (empty NUMBA_CACHE_DIR) and warm

    python benchmarks/bench_rnn.py                          # everything, 2 threads
    python benchmarks/bench_rnn.py --threads 1,2 --markdown benchmarks/results.md
    python benchmarks/bench_rnn.py --quick --configs A,B --cells lstm,gru
"""

import argparse
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# minigrad and torch are imported lazily: the memory and compile-cost children must measure
# their own imports, and a torch child must not carry Numba's memory (or the reverse).


@dataclass(frozen=True)
class Config:
    name: str
    V: int          # input size (vocabulary at A–C, features at D)
    H: int
    B: int
    T: int
    layers: int = 1
    out: int = 0    # classes of the read-out; 0 means V (a language model)
    dense: bool = False          # dense float input for both frameworks (else ids / one-hot)
    bidirectional: bool = False
    cells: tuple = ("rnn", "gru", "lstm")

    @property
    def classes(self):
        return self.out or self.V

    def describe(self):
        s = f"{'I' if self.dense else 'V'}{self.V} H{self.H} B{self.B} T{self.T}"
        if self.layers > 1:
            s += f" ×{self.layers} layers"
        if self.bidirectional:
            s = f"Bi {s}, {self.classes} tags"
        return s


CONFIGS = {
    "A": Config("A", V=65, H=100, B=1, T=25),
    "B": Config("B", V=65, H=128, B=32, T=64),
    "C": Config("C", V=65, H=256, B=64, T=100, layers=2),
    "D": Config("D", V=50, H=64, B=16, T=40, out=17, dense=True, bidirectional=True,
                cells=("lstm",)),
}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks acting on [a, x]: GEMM width G·H


def gemm_flops(cfg, cell):
    """GEMM FLOPs of one training step that no implementation can avoid.

    Per GEMM (M, K, N): forward 2MKN, weight gradient 2MKN, input gradient 2MKN unless the
    input is data.  Counted: every layer's recurrent GEMM (B·T, H, G·H), the input
    projections of layers ≥ 2 (B·T, H·D, G·H), the dense input projection at D, the read-out
    (B·T, H·D, classes).  Not counted: ids at A–C (a row lookup, no GEMM; PyTorch spends
    real FLOPs on its one-hot GEMM, and that is its choice) and all elementwise work — so
    the floor is a lower bound, reachable only by a step that is all GEMM.
    """
    G, BT = GATES[cell], cfg.B * cfg.T
    D = 2 if cfg.bidirectional else 1
    total = 0
    for l in range(cfg.layers):
        n_in = cfg.V if l == 0 else cfg.H * D
        for _ in range(D):
            total += 3 * 2 * BT * cfg.H * G * cfg.H
            if l > 0:
                total += 3 * 2 * BT * n_in * G * cfg.H
            elif cfg.dense:
                total += 2 * 2 * BT * n_in * G * cfg.H
    total += 3 * 2 * BT * cfg.H * D * cfg.classes
    return total


# ------------------------------------------------------------------------ models and steps

def compiled_supported():
    """True when the recurrent layers take ``compiled=`` (the compiled path has landed)."""
    from models.layers import LAYERS, Recurrent

    return all("compiled" in inspect.signature(c).parameters
               for c in (Recurrent, *LAYERS.values()))


def _data(cfg, seed=0):
    rng = np.random.default_rng(seed)
    if cfg.dense:
        x = rng.standard_normal((cfg.B, cfg.T, cfg.V)).astype(np.float32)
    else:
        x = rng.integers(0, cfg.V, (cfg.B, cfg.T))
    return x, rng.integers(0, cfg.classes, (cfg.B, cfg.T))


def minigrad_model(cfg, cell, compiled=None):
    """The layer stack and its read-out: ``(model, params)``, ``model(x) -> logits``."""
    import minigrad as mg
    from minigrad.nn import Linear
    from models.layers import SequenceTagger, make_layer

    mg.manual_seed(0)
    kw = {} if compiled is None else {"compiled": compiled}
    rnn = make_layer(cell, cfg.V, cfg.H, num_layers=cfg.layers,
                     bidirectional=cfg.bidirectional, **kw)
    if cfg.bidirectional:
        tagger = SequenceTagger(rnn, cfg.classes)
        return tagger, list(tagger.parameters())
    head = Linear(cfg.H, cfg.classes)

    def model(x, state=None):
        out, final = rnn(x, state)
        return head(out), final

    return model, list(rnn.parameters()) + list(head.parameters())


def minigrad_step(cfg, cell, compiled=None):
    import minigrad as mg

    model, params = minigrad_model(cfg, cell, compiled)
    opt = mg.optim.SGD(params, lr=0.1)
    x_np, y = _data(cfg)
    x = mg.tensor(x_np)

    def step():
        logits = model(x) if cfg.bidirectional else model(x)[0]
        loss = mg.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_step(cfg, cell):
    import torch

    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    rnn = cls(cfg.V, cfg.H, num_layers=cfg.layers, batch_first=True,
              bidirectional=cfg.bidirectional)
    D = 2 if cfg.bidirectional else 1
    head = torch.nn.Linear(cfg.H * D, cfg.classes)
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.1)
    x_np, y_np = _data(cfg)
    x = torch.from_numpy(x_np)
    if not cfg.dense:
        x = torch.nn.functional.one_hot(x, cfg.V).float()
    y = torch.from_numpy(y_np).reshape(-1)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        out, _ = rnn(x)
        loss = loss_fn(head(out).reshape(-1, cfg.classes), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def minchar_steps(compiled_modes):
    """Config A, the min-char-rnn algorithm on both sides: summed cross-entropy, every
    gradient element clipped to ±5, Adagrad lr 0.1, the final state carried to the next
    step (detached).  Returns {label: step}."""
    from min_char_rnn import MinCharRNN

    import minigrad as mg

    cfg = CONFIGS["A"]
    x_np, y = _data(cfg)
    steps = {}
    ref = MinCharRNN(cfg.V, cfg.H)
    inputs, targets = x_np[0].tolist(), y[0].tolist()
    h_ref = [np.zeros((cfg.H, 1), np.float32)]

    def ref_step():
        loss, h_ref[0] = ref.step(inputs, targets, h_ref[0])
        return loss

    steps["numpy min-char-rnn"] = ref_step
    for compiled in compiled_modes:
        model, params = minigrad_model(cfg, "rnn", compiled)
        opt = mg.optim.Adagrad(params, lr=0.1)
        x = mg.tensor(x_np)
        state = [None]

        def step(model=model, params=params, opt=opt, x=x, state=state):
            logits, final = model(x, state[0])
            loss = mg.cross_entropy(logits, y, reduction="sum")
            opt.zero_grad()
            loss.backward()
            mg.optim.clip_grad_value_(params, 5.0)
            opt.step()
            state[0] = final.detach()
            return loss.item()

        steps[f"minigrad RNN, {_mode(compiled)}"] = step
    return steps


def _mode(compiled):
    return {None: "eager", False: "eager", True: "compiled"}[compiled]


# ------------------------------------------------------------------------ timing

@dataclass
class Timing:
    rounds: int
    window: float   # seconds each contender runs per round (at least one step)
    settle: float   # pause between contenders: spinning BLAS/OpenMP workers go to sleep


def interleaved(steps, tm):
    """Median over rounds of the mean step time of each contender: {label: seconds}.

    Each contender is warmed up (JIT compile, allocator, caches) first; each round runs
    every contender for ≥ ``tm.window`` seconds, starting with a different one each round.
    """
    labels = list(steps)
    n_steps = {}
    last_loss = {}
    for k in labels:
        steps[k]()  # compile / first-call costs
        t0 = time.perf_counter()
        steps[k]()
        dt = time.perf_counter() - t0
        n_steps[k] = max(1, math.ceil(tm.window / max(dt, 1e-6)))
    per_round = {k: [] for k in labels}
    for r in range(tm.rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for k in order:
            time.sleep(tm.settle)
            fn, n = steps[k], n_steps[k]
            t0 = time.perf_counter()
            for _ in range(n):
                last_loss[k] = fn()
            per_round[k].append((time.perf_counter() - t0) / n)
    for k, loss in last_loss.items():
        if not math.isfinite(loss):
            print(f"**warning: {k} ended with a non-finite loss {loss}**")
    return {k: float(np.median(v)) for k, v in per_round.items()}


def gemm_rate(n, repeats):
    """The machine's float32 GEMM rate (FLOP/s): best of ``repeats`` n×n×n ``numpy.dot``
    (the BLAS minigrad's matmul calls), at the thread count currently set."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.dot(a, b, out=c)
    best = min(_timed(lambda: np.dot(a, b, out=c)) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def set_threads(n, have_torch):
    import minigrad as mg

    mg.set_num_threads(n)
    mg.freeze_gc()  # opt-in: full collections would walk Numba's objects (see README)
    if have_torch:
        import torch

        torch.set_num_threads(n)


# ------------------------------------------------------------------------ report helpers

class Report:
    """Prints markdown as it goes and keeps it for ``--markdown``."""

    def __init__(self):
        self.lines = []

    def __call__(self, text=""):
        print(text, flush=True)
        self.lines.append(text)

    def table(self, headers, rows, left=2):
        """A markdown table: the first ``left`` columns are labels, the rest numbers."""
        self("| " + " | ".join(headers) + " |")
        self("|" + "|".join("---" if i < left else "---:" for i in range(len(headers))) + "|")
        for r in rows:
            self("| " + " | ".join(str(c) for c in r) + " |")
        self()


def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.2f}" if t < 1 else f"{t * 1e3:.0f}"


def _ratio(num, den):
    return "n/a" if num is None or den is None else f"{num / den:.2f}"


def _bold(text):
    return text if text == "n/a" else f"**{text}**"


def _pct(floor, t):
    return "n/a" if t is None else f"{100 * floor / t:.0f} %"


def machine_lines(have_torch, torch_version):
    import numba

    import minigrad  # noqa: F401  (the version lines below name what was loaded)

    load = os.getloadavg()
    lines = [
        f"- {platform.processor() or platform.machine()}, nproc = {os.cpu_count()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}"
        f", torch {torch_version if have_torch else 'n/a (not installed or --no-torch)'}",
        f"- load average at start: {', '.join(f'{x:.2f}' for x in load)}",
    ]
    if load[0] > 0.75 * (os.cpu_count() or 1):
        lines.append(f"- **warning: the machine is busy (1-min load {load[0]:.1f} on "
                     f"{os.cpu_count()} cores): multi-threaded times, torch's above all, "
                     f"can be many times too slow — rerun idle**")
    try:
        import threadpoolctl

        for lib in threadpoolctl.threadpool_info():
            if lib.get("user_api") == "blas":
                lines.append(f"- BLAS: {lib.get('internal_api')} {lib.get('version')} "
                             f"({os.path.basename(lib.get('filepath', ''))})")
    except Exception:  # informative only
        pass
    return lines


# ------------------------------------------------------------------------ sections

def section_steps(rep, args, tm, threads, have_torch, modes):
    set_threads(threads, have_torch)
    n = 512 if args.quick else 1024
    rate = gemm_rate(n, 5 if args.quick else 10)
    rep(f"### Training step, {threads} thread{'s' if threads > 1 else ''} "
        f"(float32 GEMM floor: {rate / 1e9:.0f} GFLOP/s, numpy.dot {n}³)")
    rep()
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        for cell in [c for c in args.cells if c in cfg.cells]:
            steps = {_mode(m): minigrad_step(cfg, cell, m) for m in modes}
            if have_torch:
                steps["torch"] = torch_step(cfg, cell)
            t = interleaved(steps, tm)
            tc, te, tt = t.get("compiled"), t.get("eager"), t.get("torch")
            flops = gemm_flops(cfg, cell)
            floor = flops / rate
            rows.append([f"{name} ({cfg.describe()})", cell, _ms(tc), _ms(te), _ms(tt),
                         _bold(_ratio(tt, tc)), _ratio(tt, te), _ratio(te, tc),
                         f"{flops / 1e9:.3f}", _ms(floor), _pct(floor, tc), _pct(floor, te),
                         _pct(floor, tt)])
            print(f"  [{name} {cell}: " + ", ".join(f"{k} {v * 1e3:.2f} ms"
                                                   for k, v in t.items()) + "]", flush=True)
    rep.table(["config", "cell", "compiled ms", "eager ms", "torch ms", "× torch (compiled)",
               "× torch (eager)", "compiled / eager", "GEMM GFLOP", "floor ms",
               "floor % compiled", "floor % eager", "floor % torch"], rows)
    return rate


def section_minchar(rep, tm, threads, have_torch, modes):
    set_threads(threads, have_torch)
    t = interleaved(minchar_steps(modes), tm)
    ref = t.pop("numpy min-char-rnn")
    rep(f"### Vanilla RNN vs numpy min-char-rnn at A, {threads} "
        f"thread{'s' if threads > 1 else ''} (summed loss, clip ±5, Adagrad, state carried)")
    rep()
    rows = [["numpy min-char-rnn (float32)", _ms(ref), "1.00"]]
    rows += [[k, _ms(v), f"**{ref / v:.2f}**"] for k, v in t.items()]
    if "minigrad RNN, compiled" not in t:
        rows.append(["minigrad RNN, compiled", "n/a", "n/a"])
    rep.table(["implementation", "ms/step", "× min-char-rnn (> 1: faster)"], rows, left=1)


_CHILD_FLAG = "--child"


def _run_child(spec, env=None, timeout=900):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), _CHILD_FLAG,
                          json.dumps(spec)], env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"bench_rnn child {spec} failed:\n{out.stderr[-3000:]}")
    d = json.loads(out.stdout.strip().splitlines()[-1])
    d["wall"] = wall
    return d


def child_main(spec):
    """Runs in a fresh interpreter: import, build, train; prints one JSON line."""
    def peak_mib():
        # NOTE: ru_maxrss of an exec'd child starts at its parent's peak (Linux carries the
        # high-water mark across fork + exec), which here is torch + Numba; VmHWM belongs to
        # the new address space alone.  getrusage is the fallback off Linux.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    cfg, cell = CONFIGS[spec["config"]], spec["cell"]
    t0 = time.perf_counter()
    if spec["framework"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
        t_import = time.perf_counter() - t0
        rss_import = peak_mib()
        step = torch_step(cfg, cell)
    else:
        import minigrad as mg
        import models.layers  # noqa: F401  (part of the import cost a user pays)

        mg.set_num_threads(spec["threads"])
        t_import = time.perf_counter() - t0
        rss_import = peak_mib()
        step = minigrad_step(cfg, cell, spec["compiled"])
    t_build = time.perf_counter() - t0 - t_import
    t1 = time.perf_counter()
    step()
    t_first = time.perf_counter() - t1
    t2 = time.perf_counter()
    step()
    t_second = time.perf_counter() - t2
    for _ in range(spec["steps"]):
        step()
    print(json.dumps({"import": t_import, "build": t_build, "first": t_first, "second": t_second,
                      "rss_import": rss_import, "rss_peak": peak_mib()}))


def section_rss(rep, args, threads, have_torch, modes):
    rep(f"### Peak RSS (MiB), one fresh process per run ({threads} "
        f"thread{'s' if threads > 1 else ''}; import, build, {2 + args.rss_steps} steps)")
    rep()
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        for cell in [c for c in args.cells if c in cfg.cells]:
            runs = {"compiled": ("minigrad", True) if True in modes else None,
                    "eager": ("minigrad", modes[-1]),
                    "torch": ("torch", None) if have_torch else None}
            row = [f"{name} ({cfg.describe()})", cell]
            for run in runs.values():
                if run is None:
                    row.append("n/a")
                    continue
                d = _run_child(dict(framework=run[0], compiled=run[1], config=name,
                                    cell=cell, threads=threads, steps=args.rss_steps))
                row.append(f"{d['rss_peak']:.0f} (+{d['rss_peak'] - d['rss_import']:.0f})")
            rows.append(row)
            print(f"  [{name} {cell}: {row[2:]}]", flush=True)
    rep.table(["config", "cell", "minigrad compiled", "minigrad eager", "torch"], rows)
    rep("Peak = the child's peak resident set (`VmHWM`) after its last step; (+n) = growth "
        "after the imports (model, data, tape, workspace, kernels loaded from the cache). "
        "Children use the project's Numba cache, warm once any earlier run (e.g. the steps "
        "section) has compiled the kernels; otherwise compile memory is included.")
    rep()


def section_compile(rep, args, threads, modes):
    cfg_name = args.configs[0]
    cells = [c for c in args.cells if c in CONFIGS[cfg_name].cells]
    rep(f"### Compile cost: first training step in a fresh process, config {cfg_name} "
        f"(seconds)")
    rep()
    rows = []
    n_warm = 1 if args.quick else 3
    for cell in cells:
        for compiled in modes:
            with tempfile.TemporaryDirectory(prefix="mg-bench-numba-") as cache:
                env = dict(os.environ, NUMBA_CACHE_DIR=cache, MINIGRAD_CACHE_DIR=cache)
                spec = dict(framework="minigrad", compiled=compiled, config=cfg_name,
                            cell=cell, threads=threads, steps=0)
                cold = _run_child(spec, env)
                warm = sorted((_run_child(spec, env) for _ in range(n_warm)),
                              key=lambda d: d["wall"])[n_warm // 2]
            total = warm["import"] + warm["build"] + warm["first"]
            rows.append([cell, _mode(compiled), f"{cold['first']:.2f}", f"{warm['first']:.2f}",
                         f"{warm['second'] * 1e3:.1f} ms", f"{warm['import']:.2f}",
                         f"**{total:.2f}** {'✓' if total <= 1.5 else '✗'}",
                         f"{cold['wall']:.1f}", f"{warm['wall']:.1f}"])
            print(f"  [{cell} {_mode(compiled)}: cold {cold['first']:.2f} s, warm "
                  f"{warm['first']:.2f} s]", flush=True)
        if True not in modes:
            rows.append([cell, "compiled", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
    rep.table(["cell", "mode", "first step, cold cache", "first step, warm cache",
               "second step", "import minigrad + models",
               "warm import + model + first step (≤ 1.5)",
               "process wall cold", "process wall warm"], rows)
    rep(f"Cold = a new empty `NUMBA_CACHE_DIR` (every kernel compiled); warm = the same "
        f"directory again (median of {n_warm}). Code generated outside Numba's cache, if "
        f"any, is not made cold by this.")
    rep()


# ------------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fast smoke run: short windows")
    ap.add_argument("--configs", default="A,B,C,D", help="subset of A,B,C,D")
    ap.add_argument("--cells", default="rnn,gru,lstm", help="subset of rnn,gru,lstm")
    ap.add_argument("--threads", default="2",
                    help="BLAS / torch intra-op threads; a list such as 1,2 runs each")
    ap.add_argument("--sections", default="steps,minchar,rss,compile")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (median; ≥ 3)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    args = ap.parse_args(argv)

    def listed(text, allowed, what):
        items = [s.strip().upper() if what == "config" else s.strip().lower()
                 for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            ap.error(f"--{what}s: unknown {what} {bad or text!r}; expected a subset of "
                     f"{','.join(allowed)}")
        return items

    args.configs = listed(args.configs, list(CONFIGS), "config")
    args.cells = listed(args.cells, list(GATES), "cell")
    args.sections = listed(args.sections, ["steps", "minchar", "rss", "compile"], "section")
    try:
        thread_counts = [int(s) for s in args.threads.split(",")]
        assert all(n >= 1 for n in thread_counts)
    except (ValueError, AssertionError):
        ap.error(f"--threads: expected positive integers such as 1,2; got {args.threads!r}")
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 3:
        ap.error("--rounds: at least 3 (the table reports the median round)")
    tm = Timing(rounds=rounds, window=0.05 if args.quick else 0.25,
                settle=0.02 if args.quick else 0.05)
    args.rss_steps = 2 if args.quick else 5

    t_start = time.perf_counter()
    torch_version = None
    if not args.no_torch:
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:
            pass
    have_torch = torch_version is not None
    modes = (True, False) if compiled_supported() else (None,)

    rep = Report()
    rep(f"## `{' '.join(['python benchmarks/bench_rnn.py'] + sys.argv[1:])}`")
    rep()
    rep(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{'--quick; ' if args.quick else ''}median of {rounds} interleaved rounds, "
        f"≥ {tm.window * 1e3:.0f} ms per contender per round")
    for line in machine_lines(have_torch, torch_version):
        rep(line)
    if True not in modes:
        rep("- compiled: n/a — the layers do not take `compiled=` yet; minigrad runs eager")
    rep("- ratio = torch time / minigrad time (> 1: minigrad faster); compiled / eager = "
        "eager time / compiled time; floor = GEMM FLOPs of the step (fwd + bwd) at the "
        "measured GEMM rate, floor % = floor / step time")
    rep()
    for threads in thread_counts:
        if "steps" in args.sections:
            section_steps(rep, args, tm, threads, have_torch, modes)
        if "minchar" in args.sections:
            section_minchar(rep, tm, threads, have_torch, modes)
    if "rss" in args.sections:
        section_rss(rep, args, thread_counts[-1], have_torch, modes)
    if "compile" in args.sections:
        section_compile(rep, args, thread_counts[-1], modes)
    rep(f"_Total {time.perf_counter() - t_start:.0f} s; load average at end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}_")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(rep.lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD_FLAG:
        child_main(json.loads(sys.argv[2]))
    else:
        main()
