"""Data-parallel throughput on MPI: samples per second of a training step at configs N and K,
on 1 rank × 1 thread, 2 ranks × 1 thread and 1 rank × 2 threads; the time in Allreduce; and
a projection to 8 and 32 workers from the measured compute time and message size.

    N  V29 H128 B64 T10, LSTM              the names demo's shape (one-hot input, lookup)
    K  V65 H128 B50 T50, 2-layer LSTM      char-rnn's defaults

A step is what ``demos.names --distributed`` does: forward, cross-entropy (each rank's share
of the global batch's mean), backward, ``DistributedOptimizer.synchronize`` (one Allreduce of
the flat gradient buffer + the loss), global-norm clipping, Adam.  The global batch is the
same in every setup (the 2 ranks take half each), so samples/s compare directly.  Each setup
runs in fresh processes (``mpiexec -n 2 python -m mpi4py`` for 2 ranks), in interleaved
rounds; a round times ``--steps`` steps after a warm-up; the table shows the median round.

Projection (on paper): a step on W workers costs compute(B_w) + allreduce(W, M), with
compute(b) measured here at per-worker batches b = B, B/2, B/8, B/32 (1 rank, 1 thread; the
fastest of the timed steps, i.e. with the core to itself),
M = the gradient buffer's bytes, and a ring Allreduce's cost 2(W−1)·α + 2(W−1)/W · M/β
for two interconnects (α latency, β bandwidth: assumed, stated in the table).  Strong
scaling keeps the global batch B (each worker gets B/W); weak scaling keeps B per worker.

The machine is a shared 2-core box: two ranks compete with everything else running, so the
2-rank and 2-thread figures are noisy; rerun on a quiet machine before reading much into them.

    python benchmarks/bench_distributed.py                    # N and K, 3 rounds (~3 minutes)
    python benchmarks/bench_distributed.py --configs N --rounds 1 --steps 20   # a smoke run
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIGS = {"N": dict(V=29, H=128, B=64, T=10, layers=1),
           "K": dict(V=65, H=128, B=50, T=50, layers=2)}
SETUPS = [("1 rank × 1 thread", 1, 1), ("2 ranks × 1 thread", 2, 1),
          ("1 rank × 2 threads", 1, 2)]
# Interconnects for the projection: (name, alpha = latency per message s, beta = bytes/s).
NETWORKS = [("10 GbE (TCP)", 50e-6, 1.1e9), ("100 Gb/s InfiniBand", 2e-6, 11e9)]


# ---------------------------------------------------------------- the worker (one process/rank)

def worker(cfg, steps, threads, batches):
    """Time ``steps`` training steps at each global batch in ``batches``; rank 0 prints one
    JSON line: per-step seconds, seconds in Allreduce, message bytes."""
    import minigrad as mg
    from minigrad import distributed as dist
    from models.language_model import LanguageModel

    mg.set_num_threads(threads)
    dist.init()
    mg.freeze_gc()
    c = CONFIGS[cfg]
    mg.manual_seed(0)
    model = LanguageModel(c["V"], c["H"], cell="lstm", num_layers=c["layers"])
    dist.broadcast_parameters(model)
    opt = dist.DistributedOptimizer(mg.optim.Adam(model.parameters(), lr=1e-3), op="sum")
    rng = np.random.default_rng(0)
    out = {"bytes": sum(p.data.nbytes for p in model.parameters()),
           "runs": {B: {"step": [], "allreduce": []} for B in batches}}
    data = {}
    for B in batches:
        ids, lengths = rng.integers(3, c["V"], (B, c["T"])), np.full(B, c["T"])
        data[B] = (*dist.shard(ids, lengths), float(lengths.sum()))
    # Batch sizes take turns step by step, so a busy neighbour slows them all alike.
    for step in range(steps + 3):  # 3 warm-up steps (the first compiles)
        for B, (mine, my_lengths, n) in data.items():
            t0, w0 = time.perf_counter(), opt.allreduce_seconds
            loss = model.loss(mine, my_lengths, reduction="sum")[0] * (1.0 / n)
            opt.zero_grad()
            loss.backward()
            opt.synchronize(loss.item())
            mg.optim.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if step >= 3:
                out["runs"][B]["step"].append(time.perf_counter() - t0)
                out["runs"][B]["allreduce"].append(opt.allreduce_seconds - w0)
    if dist.size() > 1:  # the Allreduce alone, both ranks ready: 8 bytes and the real message
        comm = dist.init()
        from mpi4py import MPI

        for label, size in (("tiny", 2), ("message", out["bytes"] // 4)):
            buf = np.zeros(size, np.float32)
            samples = []
            for _ in range(30):
                comm.Barrier()
                t0 = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                samples.append(time.perf_counter() - t0)
            out[label] = min(samples)  # both ranks on a core: the communication itself
    if dist.rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- the driver

def run(cfg, ranks, threads, steps, batches):
    cmd = [sys.executable, "-m", "mpi4py"] if ranks > 1 else [sys.executable]
    if ranks > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), *cmd]
    cmd += [os.path.abspath(__file__), "--worker", cfg, "--steps", str(steps), "--threads",
            str(threads), "--batches", ",".join(map(str, batches))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[0][7:])


def ring(W, M, alpha, beta):
    """Seconds for a ring Allreduce of M bytes over W workers."""
    return 0.0 if W == 1 else 2 * (W - 1) * alpha + 2 * (W - 1) / W * M / beta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="N,K")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round (%(default)s)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--batches", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps, args.threads,
                      [int(b) for b in args.batches.split(",")])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(a shared machine: 2-process figures are noisy)\n")
    for cfg in args.configs.split(","):
        c = CONFIGS[cfg]
        B = c["B"]
        rounds = {name: [] for name, _, _ in SETUPS}
        for _ in range(args.rounds):
            for name, ranks, threads in SETUPS:
                rounds[name].append(run(cfg, ranks, threads, args.steps, [B]))
        shape = f"V{c['V']} H{c['H']} B{B} T{c['T']}, {c['layers']}-layer LSTM"
        print(f"### Config {cfg}: {shape}\n")
        print("| setup | step (ms) | samples/s | × 1 rank | in Allreduce (ms) |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for name, ranks, _ in SETUPS:
            medians = [statistics.median(r["runs"][str(B)]["step"]) for r in rounds[name]]
            step = statistics.median(medians)
            waits = statistics.median(statistics.median(r["runs"][str(B)]["allreduce"])
                                      for r in rounds[name])
            base = base or step
            print(f"| {name} | {1e3 * step:.2f} | {B / step:,.0f} | {base / step:.2f} | "
                  + (f"{1e3 * waits:.3f} |" if ranks > 1 else "— |"))
        two = rounds["2 ranks × 1 thread"]
        M = two[0]["bytes"]
        tiny = statistics.median(r["tiny"] for r in two)
        msg = statistics.median(r["message"] for r in two)
        print(f"\nMessage: {M:,} bytes of float32 gradients (+ the loss and one flag per "
              f"parameter). Allreduce alone on 2 ranks of this machine (shared memory, both "
              f"ready, fastest of 30): {1e6 * tiny:.1f} µs for 8 bytes, {1e6 * msg:.0f} µs "
              f"for the message ({M / max(msg - tiny, 1e-9) / 1e9:.1f} GB/s effective).\n")

        per = [B, B // 2, max(1, B // 8), max(1, B // 32)]
        comp = run(cfg, 1, 1, args.steps, per)
        # the fastest of the timed steps: the compute time with the core to itself (on a busy
        # machine the median mostly measures the neighbours)
        compute = {b: min(comp["runs"][str(b)]["step"]) for b in per}
        print("Projection (one worker = one core; compute(b) = the fastest of the timed steps "
              "on 1 rank × 1 thread at per-worker batch b; ring Allreduce):\n")
        print("| workers | scaling | per-worker batch | compute (ms) | network | "
              "Allreduce (ms) | samples/s | efficiency |")
        print("|---:|---|---:|---:|---|---:|---:|---:|")
        one = B / compute[B]
        for W in (2, 8, 32):
            for label, b in (("strong (global B)", max(1, B // W)), ("weak (B per worker)", B)):
                # W = 2: this machine's two cores, with the Allreduce measured above
                for net, reduce in ([("this machine (measured)", msg)] if W == 2 else
                                    [(n, ring(W, M, a, bw)) for n, a, bw in NETWORKS]):
                    rate = W * b / (compute[b] + reduce)
                    print(f"| {W} | {label} | {b} | {1e3 * compute[b]:.2f} | {net} | "
                          f"{1e3 * reduce:.2f} | {rate:,.0f} | {rate / (W * one):.0%} |")
        print(f"\n(1 worker: {one:,.0f} samples/s. Networks assumed: "
              + "; ".join(f"{n}: α = {a * 1e6:g} µs, β = {b / 1e9:g} GB/s"
                          for n, a, b in NETWORKS) + ".)\n")


if __name__ == "__main__":
    main()
