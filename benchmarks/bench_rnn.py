"""Training-step throughput of minigrad's RNN/GRU/LSTM, side by side with PyTorch (CPU).

A training step is forward + backward + SGD update of a character language model:
one-hot input (ids), one recurrent layer, a linear read-out, mean cross-entropy over all
steps.  Both frameworks run in the same process, interleaved, and the table reports
tokens/s and the ratio minigrad / torch (> 1 means minigrad is faster).  Absolute times
move ±20–40 % between runs on this shared 2-core machine; the ratios are what to compare.

    python benchmarks/bench_rnn.py            # both configurations, all cells
    python benchmarks/bench_rnn.py --quick    # fewer repeats
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minigrad as mg  # noqa: E402
from minigrad.nn import Linear  # noqa: E402
from models.layers import make_layer  # noqa: E402

CONFIGS = {
    "A": dict(V=65, H=100, B=1, T=25),
    "B": dict(V=65, H=128, B=32, T=64),
}


def minigrad_step_fn(cell, V, H, B, T):
    mg.manual_seed(0)
    rnn = make_layer(cell, V, H)
    head = Linear(H, V)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = mg.optim.SGD(params, lr=0.1)
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.integers(0, V, (B, T)))
    y = rng.integers(0, V, (B, T))

    def step():
        out, _ = rnn(x)
        loss = mg.cross_entropy(head(out), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def torch_step_fn(cell, V, H, B, T):
    import torch
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    rnn = cls(V, H, batch_first=True)
    head = torch.nn.Linear(H, V)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(0, V, (B, T)))
    x = torch.nn.functional.one_hot(ids, V).float()
    y = torch.tensor(rng.integers(0, V, (B, T)))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        out, _ = rnn(x)
        loss = loss_fn(head(out).reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def best_time(step, seconds, min_reps=5):
    step()
    step()  # warm-up (JIT compile, allocator)
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timing windows")
    ap.add_argument("--cells", default="rnn,gru,lstm")
    ap.add_argument("--configs", default="A,B")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS threads for minigrad and intra-op threads for torch")
    args = ap.parse_args()
    mg.set_num_threads(args.threads)
    mg.freeze_gc()  # opt-in: keep full collections from walking Numba's objects (see README)
    seconds = 0.5 if args.quick else 2.0
    try:
        if args.no_torch:
            raise ImportError
        import torch
        torch.set_num_threads(args.threads)
        have_torch = True
    except ImportError:
        have_torch = False
    print(f"# bench_rnn: training step (fwd + bwd + SGD), float32, {args.threads} threads, "
          f"torch {torch.__version__ if have_torch else 'not installed (column skipped)'}")
    print()
    print("| config | cell | minigrad ms/step | minigrad tokens/s | torch ms/step | "
          "torch tokens/s | ratio (× torch) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        shape = "V{V} H{H} B{B} T{T}".format(**cfg)
        tokens = cfg["B"] * cfg["T"]
        for cell in args.cells.split(","):
            t_mg = best_time(minigrad_step_fn(cell, **cfg), seconds)
            row = f"| {name} ({shape}) | {cell} | {t_mg * 1e3:.2f} | {tokens / t_mg:,.0f} |"
            if have_torch:
                t_th = best_time(torch_step_fn(cell, **cfg), seconds)
                row += f" {t_th * 1e3:.2f} | {tokens / t_th:,.0f} | {t_th / t_mg:.2f} |"
            else:
                row += " — | — | — |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
