"""A Transformer beside an LSTM: two language models of about the same size invent names.

The chapter's supplement points from RNNs to the Transformer (Vaswani et al., 2017).  Both
models here do the job of ``demos/names.py`` — predict the next letter of a first name from
the letters before it — on the same 1 821 training names, batches, optimizer and steps:

* the **LSTM** reads x<1>, x<2>, … one step at a time and carries everything it knows in
  its state a<t>;
* the **Transformer** (decoder-only, causal, GPT-style pre-norm) has no state: at every
  position each of its heads *attends* to all earlier positions at once,
  softmax(q<t>·k<j> / √d) for j ≤ t, so the whole name is processed in one pass.

It prints a table (parameters, held-out loss and perplexity, steps per second), samples
from both, and writes ``transformer.png``: held-out loss against steps and against seconds
of training for both (CPU seconds with one thread, the default: the time the run itself
used, which other jobs on a shared machine do not inflate; compilation and evaluation
excluded), and where each head of each layer looks while reading one held-out
name (row t: the letter being predicted after position t; columns: the positions it attends
to — the upper triangle is empty, the future is masked).

    python -m demos.transformer             # ~1 minute of CPU
    python -m demos.transformer --quick     # a few seconds (the test)
    python -m demos.transformer --d-model 128 --layers 4 --steps 3000

Both final models are saved (``transformer/checkpoint.npz``, ``lstm/checkpoint.npz`` under
``--out``), with the flags and the vocabulary, like every demo's checkpoint.
"""

import math
import os
import time

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos import common
from minigrad.data import SequenceBatches, Vocab
from minigrad.optim import Adam
from models.language_model import LanguageModel
from models.transformer import TransformerLM

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "names.txt")
HELD_OUT = 100  # as demos/names.py: the file's last 100 names are never trained on
PLOT = "transformer.png"
SHOWN = "samantha"  # a held-out name whose attention maps are drawn (if it is held out)


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=1000, hidden=144, batch=64, lr=3e-3,
                          help_for={"hidden": "the LSTM's hidden size (144: about the "
                                              "Transformer's parameter count)"})
    parser.add_argument("--d-model", type=common.POSITIVE_INT, default=64,
                        help="the Transformer's width d_model (%(default)s)")
    parser.add_argument("--heads", type=common.POSITIVE_INT, default=4,
                        help="attention heads per layer (%(default)s)")
    parser.add_argument("--layers", type=common.POSITIVE_INT, default=2,
                        help="Transformer layers (%(default)s)")
    parser.add_argument("--ff", type=common.POSITIVE_INT, default=256,
                        help="feed-forward width (%(default)s)")
    parser.add_argument("--dropout", type=common.FRACTION, default=0.2,
                        help="dropout in both models (%(default)s)")
    parser.add_argument("--eval-every", type=common.COUNT, default=0,
                        help="held-out loss every N steps (default: 20 times per run)")
    parser.add_argument("--temperature", type=common.NONNEGATIVE, default=0.8,
                        help="sampling temperature (%(default)s)")
    common.add_run_args(parser, "runs/transformer",
                        quick="a smaller Transformer and LSTM, 250 steps")
    args = common.parse(parser, argv, dict(steps=250, d_model=32, ff=64, hidden=64, lr=1e-2,
                                           dropout=0.0))
    if args.d_model % args.heads:
        parser.error(f"--d-model {args.d_model} must be divisible by --heads {args.heads}")
    return args


def cpu_clock(args):
    """The clock of the seconds axis: with one thread the process's CPU time, which other
    jobs on a shared machine do not inflate as they inflate wall time; with more, wall
    time (CPU time would add the threads up)."""
    return time.process_time if args.threads == 1 else time.perf_counter


def train_one(name, model, args, vocab, train_names, held_ids):
    """Adam on the shared batch stream; returns the history with (step, held-out loss)
    evaluations, the training seconds at each of them (evaluation excluded, and the first
    step's compilation: one forward/backward runs before the clock starts) and Adam."""
    batches = common.forever(SequenceBatches(
        [vocab.encode(n, add_eos=True) for n in train_names], args.batch,
        rng=np.random.default_rng(args.seed)))
    optimizer = Adam(model.parameters(), lr=args.lr)
    history = common.History()
    history.evals.append((0, common.evaluate(model, held_ids)))
    now = cpu_clock(args)
    seconds, clock = [0.0], {"start": now(), "eval": 0.0}

    def on_every(step, hist):
        t = now()
        seconds.append(t - clock["start"] - clock["eval"])
        hist.evals.append((step, common.evaluate(model, held_ids)))
        clock["eval"] += now() - t

    every = args.eval_every or max(1, args.steps // 20)
    model.loss(*next(batches)[:2])[0].backward()  # compile (or load) the kernels off the clock
    model.zero_grad()
    clock["start"] = now()
    common.train(model, optimizer, lambda b: model.loss(b[0], b[1])[0], batches, args.steps,
                 history=history, clip=5.0, every=every, on_every=on_every, desc=name,
                 progress=not args.no_progress)
    tqdm.write(f"  {name}: held-out {history.evals[0][1]:.3f} -> {history.evals[-1][1]:.3f} "
               f"nats per letter in {seconds[-1]:.1f} s of training")
    return history, seconds, optimizer


def save(model, optimizer, name, args, history, vocab, arch):
    """The demos' checkpoint (model, Adam, history, flags, vocabulary) in ``--out/name``."""
    os.makedirs(os.path.join(args.out, name), exist_ok=True)
    return common.Checkpoint(os.path.join(args.out, name), "transformer", model,
                             optimizer, arch, args, vocab=vocab.itos).save(history)


def plot(path, runs, maps, shown, args):
    plt = common.pyplot()
    n_layers, heads = len(maps), maps[0].shape[0]
    fig = plt.figure(figsize=(3.0 * max(heads, 4), 4.2 + 2.9 * n_layers))
    grid = fig.add_gridspec(1 + n_layers, max(heads, 4), height_ratios=[1.5] + [1] * n_layers)
    colors = {"Transformer": "tab:red", "LSTM": "tab:blue"}
    half = max(heads, 4) // 2
    secs = "CPU seconds of training" if args.threads == 1 else "seconds of training"
    for col, (xlabel, key) in enumerate((("step", "steps"), (secs, "secs"))):
        ax = fig.add_subplot(grid[0, col * half:(col + 1) * half])
        for name, r in runs.items():
            xs = [s for s, _ in r["history"].evals] if key == "steps" else r["seconds"]
            ax.plot(xs, [v for _, v in r["history"].evals], "o-", ms=3, color=colors[name],
                    label=f"{name} ({r['params']:,} parameters)")
        ax.axhline(runs["LSTM"]["log_v"], color="gray", ls="--", lw=1, label="log V (uniform)")
        ax.set(xlabel=xlabel, ylabel="held-out loss (nats per letter)",
               title=f"held-out loss against {xlabel}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    letters = ["<s>"] + list(shown)  # input at position t: the previous letter
    targets = list(shown) + ["<eos>"]
    for layer, m in enumerate(maps):
        for h in range(heads):
            ax = fig.add_subplot(grid[1 + layer, h])
            ax.imshow(m[h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(letters)), letters, fontsize=7)
            ax.set_yticks(range(len(targets)), targets, fontsize=7)
            ax.set_title(f"layer {layer + 1}, head {h + 1}", fontsize=9)
            if h == 0:
                ax.set_ylabel("predicting", fontsize=8)
    fig.suptitle(f"Transformer vs LSTM on names; where each head looks while reading "
                 f"'{shown}' (rows: the letter predicted; columns: the inputs it attends to)",
                 fontsize=10)
    common.save_figure(fig, path, dpi=90)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    mg.manual_seed(args.seed)
    names = common.read_lines(DATA)
    train_names, held_out = names[:-HELD_OUT], names[-HELD_OUT:]
    vocab = Vocab.build(train_names, level="char")
    held_ids = [vocab.encode(n, add_eos=True) for n in held_out]
    log_v = math.log(len(vocab))
    max_len = max(len(n) for n in names) + 1
    models = {
        "Transformer": TransformerLM(len(vocab), args.d_model, args.heads, args.layers, args.ff,
                                     dropout=args.dropout, max_len=max_len, vocab=vocab),
        "LSTM": LanguageModel(len(vocab), args.hidden, cell="lstm", dropout=args.dropout,
                              vocab=vocab),
    }
    print("Transformer vs LSTM: character-level language models of first names")
    print(f"  corpus: {len(train_names)} training names, {len(held_out)} held out; V = "
          f"{len(vocab)} (log V = {log_v:.3f} nats); Adam lr {args.lr}, batch {args.batch}, "
          f"{args.steps} steps each, dropout {args.dropout}")
    print(f"  Transformer: d_model {args.d_model}, {args.heads} heads, {args.layers} layers, "
          f"feed-forward {args.ff}, pre-norm, GELU, learned positions: "
          f"{models['Transformer'].num_parameters():,} parameters")
    print(f"  LSTM: hidden {args.hidden}, one-hot input: "
          f"{models['LSTM'].num_parameters():,} parameters")
    runs = {}
    for name, model in models.items():
        mg.manual_seed(args.seed)
        history, seconds, optimizer = train_one(name, model, args, vocab, train_names,
                                                held_ids)
        arch = {"d_model": args.d_model, "heads": args.heads, "layers": args.layers,
                "ff": args.ff} if name == "Transformer" else {"hidden": args.hidden}
        runs[name] = {"history": history, "seconds": seconds, "log_v": log_v,
                      "params": model.num_parameters(),
                      "held_out": (history.evals[0][1], history.evals[-1][1]),
                      "steps_per_second": len(history.losses) / max(seconds[-1], 1e-9),
                      "checkpoint": save(model, optimizer, name.lower(), args, history, vocab,
                                         arch)}

    rows = [f"  {'model':12s} {'parameters':>10s} {'held-out':>9s} {'perplexity':>10s} "
            f"{'steps/s':>8s} {'train s':>8s}" + (" (CPU)" if args.threads == 1 else "")]
    rows += [f"  {name:12s} {r['params']:>10,} {r['held_out'][1]:9.3f} "
             f"{math.exp(r['held_out'][1]):10.2f} {r['steps_per_second']:8.1f} "
             f"{r['seconds'][-1]:8.1f}" for name, r in runs.items()]
    table = "\n".join(rows)
    print(f"\nAfter {args.steps} steps (held-out loss in nats per letter; log V = {log_v:.3f}):")
    print(table)

    seen = set(train_names)
    samples = {}
    print("\nSamples ('*' = a real name from the training list):")
    for name, model in models.items():
        samples[name] = model.sample(10, max_len=max_len - 1, temperature=args.temperature,
                                     seed=args.seed)
        print(f"  {name:12s} " + " ".join((s or '""') + ("*" if s in seen else "")
                                          for s in samples[name]))

    shown = SHOWN if SHOWN in held_out else held_out[0]
    maps = [m[0] for m in models["Transformer"].attention_maps(
        models["Transformer"].shift(vocab.encode(shown, add_eos=True)[None]))]
    path = os.path.join(args.out, PLOT)
    plot(path, runs, maps, shown, args)
    print(f"\nSaved {path} and the two checkpoints under {args.out}")
    return {"runs": runs, "table": table, "samples": samples, "maps": maps, "shown": shown,
            "log_v": log_v, "plot": path}


if __name__ == "__main__":
    main()
