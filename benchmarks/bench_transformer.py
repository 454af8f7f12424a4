"""Training-step benchmark of minigrad's causal Transformer language model against PyTorch's
``nn.TransformerEncoder`` with a causal mask, at the names demo's shape.

A step is forward + masked mean cross-entropy + backward + SGD update, float32, on one fixed
padded batch of 64 names (V = 29, T = the batch's longest name + <EOS>).  Both models are the
same: token embedding + learned positions, ``--layers`` encoder layers (``d_model``,
``nhead``, ``dim_feedforward`` as ``demos.transformer``), a final LayerNorm when pre-norm,
a Linear read-out; torch's weights are minigrad's, moved with ``models.interop``, and the
losses of three steps are checked equal (to 1e-4 relative, float32) before anything is
timed.  Timing: interleaved rounds (each times both contenders for ≥ ``--window`` s), the
median round; ratio = torch time / minigrad time (> 1: minigrad faster).  The machine is a
shared 2-core box: compare ratios measured in one run, never absolute times across runs.

    python benchmarks/bench_transformer.py                     # 1 thread, both variants
    python benchmarks/bench_transformer.py --threads 1,2 --markdown FILE
    python benchmarks/bench_transformer.py --quick             # a smoke run (the tests)
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import minigrad as mg  # noqa: E402
from minigrad.data import SequenceBatches, Vocab  # noqa: E402
from models.interop import to_torch_state_dict  # noqa: E402
from models.transformer import TransformerLM  # noqa: E402

NAMES = os.path.join(ROOT, "demos", "data", "names.txt")
# (label, norm_first, activation): the demo's pre-norm GELU model and torch's defaults.
VARIANTS = [("pre-norm, GELU (the demo's)", True, "gelu"),
            ("post-norm, ReLU (torch's defaults)", False, "relu")]


def names_batch(batch, seed=0):
    """(vocab, ids (B, T), lengths (B,)): one padded batch of names, each ending in <EOS>."""
    with open(NAMES, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    vocab = Vocab.build(names, level="char")
    seqs = [vocab.encode(n, add_eos=True) for n in names]
    ids, lengths, _ = next(iter(SequenceBatches(seqs, batch, rng=np.random.default_rng(seed))))
    return vocab, ids, lengths


def build(vocab, args, norm_first, activation):
    """The minigrad model and a step function for it and for the same model in torch."""
    import torch

    mg.manual_seed(0)
    model = TransformerLM(len(vocab), args.d_model, args.nhead, args.layers, args.ff,
                          norm_first=norm_first, activation=activation)

    class Torch(torch.nn.Module):  # the same module tree, so the state dicts share names
        def __init__(self):
            super().__init__()
            V, d = len(vocab), args.d_model
            self.embedding = torch.nn.Embedding(V, d)
            self.pos = torch.nn.Module()
            self.pos.weight = torch.nn.Parameter(torch.zeros(model.max_len, d))
            layer = torch.nn.TransformerEncoderLayer(d, args.nhead, args.ff, 0.0, activation,
                                                     batch_first=True, norm_first=norm_first)
            self.encoder = torch.nn.TransformerEncoder(
                layer, args.layers, norm=torch.nn.LayerNorm(d) if norm_first else None,
                enable_nested_tensor=False)
            self.out = torch.nn.Linear(d, V)

        def forward(self, x, mask):
            T = x.shape[1]
            h = self.embedding(x) + self.pos.weight[:T]
            return self.out(self.encoder(h, mask=mask, is_causal=True))

    tmodel = Torch()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in
                            to_torch_state_dict(model).items()})
    return model, tmodel


def steps(model, tmodel, ids, lengths, lr=0.1):
    import torch

    opt = mg.optim.SGD(model.parameters(), lr=lr)
    topt = torch.optim.SGD(tmodel.parameters(), lr=lr)
    inputs, T = model.shift(ids), ids.shape[1]
    mask = np.arange(T)[None, :] < lengths[:, None]
    tin, tmask = torch.from_numpy(inputs), torch.nn.Transformer.generate_square_subsequent_mask(T)
    tgt, keep = torch.from_numpy(np.where(mask, ids, -100)), int(mask.sum())

    def mg_step():
        loss = model.loss(ids, lengths)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.data)

    def torch_step():
        logits = tmodel(tin, tmask)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 tgt.reshape(-1), ignore_index=-100)
        topt.zero_grad()
        loss.backward()
        topt.step()
        return loss.item()

    assert keep > 0
    return mg_step, torch_step


def check_losses(label, mg_step, torch_step, n=3):
    """The same losses for ``n`` steps before anything is timed, or SystemExit."""
    for i in range(n):
        a, b = mg_step(), torch_step()
        if not abs(a - b) <= 1e-4 * abs(b):
            raise SystemExit(f"{label}: losses differ at step {i + 1}: minigrad {a:.7f}, "
                             f"torch {b:.7f}")


def timed(fn, window, clock):
    """Seconds per call: calls batched to last at least ``window`` seconds of ``clock``."""
    n, t0 = 0, clock()
    while True:
        fn()
        n += 1
        t = clock() - t0
        if t >= window:
            return t / n


def fused_rows(args, clock, out):
    """Each fused Transformer row against its composition of older primitives (forward +
    backward at the demo's shape; the compositions are the ones tests/test_ops.py holds the
    fused rows to)."""
    B, T, d, H, ff = args.batch, 10, args.d_model, args.nhead, args.ff
    rng = np.random.default_rng(0)

    def tensor(*shape):
        return mg.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)

    x, h, w, b = tensor(B, T, d), tensor(B, T, ff), tensor(3 * d, d), tensor(3 * d)
    gamma, beta = tensor(d), tensor(d)
    mask = mg.nn.generate_square_subsequent_mask(T)
    c = math.sqrt(2 / math.pi)

    def composed_attention(qkv):
        q, k, v = (t.reshape(B, T, H, d // H).transpose(0, 2, 1, 3).reshape(B * H, T, d // H)
                   for t in qkv.split(d, axis=2))
        p = ((q @ k.transpose(0, 2, 1)) * (1 / math.sqrt(d // H)) + mask).softmax(-1)
        return (p @ v).reshape(B, H, T, d // H).transpose(0, 2, 1, 3).reshape(B, T, d)

    def composed_layer_norm(x):
        xc = x - x.mean(-1, keepdims=True)
        return xc * ((xc * xc).mean(-1, keepdims=True) + 1e-5) ** -0.5 * gamma + beta

    cases = [
        ("gelu (tanh form)", lambda: mg.functional.gelu(h, "tanh"),
         lambda: 0.5 * h * (1 + (c * (h + 0.044715 * h ** 3)).tanh())),
        ("linear", lambda: mg.functional.linear(x, w, b), lambda: x @ w.T + b),
        ("layer_norm", lambda: mg.functional.layer_norm(x, d, gamma, beta),
         lambda: composed_layer_norm(x)),
        ("causal self-attention", lambda: mg.functional.scaled_dot_product_attention(
            *(t.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)
              for t in mg.functional.linear(x, w, b).split(d, axis=2)), is_causal=True),
         lambda: composed_attention(x @ w.T + b)),
    ]
    out.append(f"\n### Fused rows against their composition (forward + backward, B{B} T{T}, "
               f"d_model {d}, {H} heads, feed-forward {ff})\n")
    out.append("| row | fused µs | composed µs | speed-up |\n|---|---:|---:|---:|")
    for name, fused, composed in cases:
        times = []
        for fn in (fused, composed):
            def step(fn=fn):
                y = fn()
                y.backward(np.ones(y.shape, np.float32))
            step()
            times.append(statistics.median(timed(step, args.window / 3, clock)
                                           for _ in range(args.rounds)) * 1e6)
        out.append(f"| {name} | {times[0]:.0f} | {times[1]:.0f} | **{times[1] / times[0]:.1f}×** |")
        print(f"  {name}: fused {times[0]:.0f} µs, composed {times[1]:.0f} µs", flush=True)


def run(args, threads, out):
    import torch

    mg.set_num_threads(threads)
    torch.set_num_threads(threads)
    vocab, ids, lengths = names_batch(args.batch)
    # NOTE: one thread: the process's CPU time, which other jobs on a shared machine do not
    # inflate the way they inflate wall time; more threads: wall time (CPU time would add
    # the threads up).
    clock = time.process_time if threads == 1 and args.clock == "auto" or args.clock == "cpu" \
        else time.perf_counter
    rows = []
    for label, norm_first, activation in VARIANTS:
        model, tmodel = build(vocab, args, norm_first, activation)
        mg_step, torch_step = steps(model, tmodel, ids, lengths)
        check_losses(label, mg_step, torch_step)
        for _ in range(args.warmup):
            mg_step(), torch_step()
        rounds = [(timed(mg_step, args.window, clock), timed(torch_step, args.window, clock))
                  for _ in range(args.rounds)]
        m = statistics.median(r[0] for r in rounds) * 1e3
        t = statistics.median(r[1] for r in rounds) * 1e3
        rows.append((label, m, t))
        print(f"  {label}: minigrad {m:.2f} ms, torch {t:.2f} ms, x torch {t / m:.2f}",
              flush=True)
    out.append(f"\n### {threads} thread{'s' if threads > 1 else ''} "
               f"({'CPU' if clock is time.process_time else 'wall'} time): V{len(vocab)} "
               f"B{args.batch} T{ids.shape[1]}, d_model {args.d_model}, {args.nhead} heads, "
               f"{args.layers} layers, feed-forward {args.ff}\n")
    out.append("| model | minigrad ms | torch ms | × torch |\n|---|---:|---:|---:|")
    out += [f"| {label} | {m:.2f} | {t:.2f} | **{t / m:.2f}** |" for label, m, t in rows]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1", help="comma-separated thread counts (1)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--nhead", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ff", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=0.3, help="seconds per timing (0.3)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                    help="auto: CPU time with 1 thread, wall time with more (auto)")
    ap.add_argument("--quick", action="store_true", help="1 round, short windows")
    ap.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.window, args.warmup = 1, 0.02, 1
    try:
        import torch
    except ImportError:
        print("bench_transformer.py compares against PyTorch, which is not installed: "
              "`make test-oracle` (or pip install torch==2.13.0) installs it")
        return None

    mg.freeze_gc()
    out = ["## `python benchmarks/bench_transformer.py` — causal Transformer LM training step\n",
           f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {args.rounds} "
           f"interleaved rounds, ≥ {args.window * 1e3:.0f} ms per contender per round",
           f"- {platform.machine()}, nproc = {os.cpu_count()}; Python "
           f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}",
           f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
           "(a shared machine: compare ratios within one run)",
           "- ratio = torch time / minigrad time (> 1: minigrad faster); same weights, losses "
           "checked equal before timing"]
    mg.set_num_threads(1)
    fused_rows(args, time.process_time, out)
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"{threads} thread(s):", flush=True)
        results[threads] = run(args, threads, out)
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return results


if __name__ == "__main__":
    main()
