"""Deep RNNs (chapter 14.12): does stacking layers a[1]<t>, a[2]<t>, a[3]<t> help?

Held-out loss against depth 1, 2 and 3, each with and without the per-time-step *deep head*
(a small MLP on top of the last layer at every t, with no horizontal connections), on:

* the **names** corpus (``demos/names.py``'s character-level language model, GRU); and
* a **generated task** where each output needs both memory and computation:
  ``y<t> = (x<t> + x<t-3>) mod 8`` over random digits 0–7, tagged at every step.  One layer
  must both hold the last three digits and add modulo 8; a second layer can do the sum
  from what the first one holds.

Same hidden size, same steps and data for every depth.  The plot marks each point with its
loss; when depth does not lower the loss by a clear margin on a task, the panel says so,
with the numbers.  Measured (``--steps 300``, hidden 16, seeds 0–2) on the generated
task: depth 1 ends at 1.50–1.61 nats, depth 3 at 0.20–0.67 (chance is log 8 = 2.08); the
deep head's effect varies from seed to seed.  On names (seed 0) depth does not help at this
scale: 2.109, 2.103 and 2.242 nats per letter at depth 1, 2, 3, each worse with the head.

    python -m demos.deep_rnn            # both tasks, 12 runs, a few minutes on 2 cores
    python -m demos.deep_rnn --quick    # the generated task, depths 1 and 3 (the test)
"""

import math
import os
import time

import numpy as np

import minigrad as mg
from demos import common
from minigrad.data import SequenceBatches, Vocab
from minigrad.optim import Adam
from models.language_model import LanguageModel
from models.layers import GRU, SequenceTagger, deep_head

PLOT = "deep_rnn.png"
DIGITS, LAG, T = 8, 3, 20
NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "names.txt")
HELD_OUT = 100
CLEAR = 0.05  # nats: a gain smaller than this is reported as "no clear gain"


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=300, hidden=16, batch=32, lr=1e-2,
                           help_for={"hidden": "hidden size of the digits task"})
    parser.add_argument("--depths", type=common.POSITIVE_INT, nargs="+", default=[1, 2, 3],
                        help="numbers of stacked layers (%(default)s)")
    parser.add_argument("--tasks", nargs="+", choices=["names", "digits"],
                        default=["names", "digits"], help="tasks to run (%(default)s)")
    parser.add_argument("--no-head", action="store_true",
                        help="skip the runs with the deep head")
    parser.add_argument("--names-hidden", type=common.POSITIVE_INT, default=64,
                        help="hidden size of the names model (%(default)s)")
    common.add_run_args(parser, "runs/deep_rnn",
                        quick="digits only, depths 1 and 3, no head, 150 steps")
    args = common.parse(parser, argv, dict(depths=[1, 3], tasks=["digits"], no_head=True,
                                           steps=150))
    if min(args.depths) < 1:
        parser.error("every --depths value must be >= 1")
    args.depths = sorted(set(args.depths))
    return args


def digits(rng, batch):
    """x (B, T) digits, y (B, T) = (x<t> + x<t-3>) mod 8 (x<t-3> = 0 before the start)."""
    x = rng.integers(0, DIGITS, size=(batch, T))
    past = np.pad(x, ((0, 0), (LAG, 0)))[:, :T]
    return x, (x + past) % DIGITS


def run_digits(args, depth, head):
    mg.manual_seed(args.seed)
    H = args.hidden
    model = SequenceTagger(GRU(DIGITS, H, num_layers=depth,
                               head=deep_head(H, [H], H) if head else None), DIGITS)
    rng = np.random.default_rng([args.seed, 1])

    def batches():
        while True:
            yield digits(rng, args.batch)

    step_loss = mg.compile(lambda x, y: mg.cross_entropy(model(x), y))  # the whole step
    common.train(model, Adam(model.parameters(), lr=args.lr),
                 lambda b: step_loss(*b), batches(), args.steps,
                 clip=5.0, desc=f"digits L={depth}{' +head' if head else ''}",
                 progress=not args.no_progress)
    x, y = digits(np.random.default_rng([args.seed, 2]), 500)
    with mg.no_grad():
        model.eval()
        logits = model(x)
    return float(mg.cross_entropy(logits, y).data), float((logits.data.argmax(-1) == y).mean())


def run_names(args, depth, head):
    names = common.read_lines(NAMES)
    vocab = Vocab.build(names, level="char")
    mg.manual_seed(args.seed)
    H = args.names_hidden
    model = LanguageModel(len(vocab), H, cell="gru", num_layers=depth, vocab=vocab,
                          head=deep_head(H, [H], H) if head else None)
    train_ids = [vocab.encode(n, add_eos=True) for n in names[:-HELD_OUT]]
    held_ids = [vocab.encode(n, add_eos=True) for n in names[-HELD_OUT:]]
    batches = common.forever(SequenceBatches(train_ids, args.batch,
                                             rng=np.random.default_rng([args.seed, 3])))
    common.train(model, Adam(model.parameters(), lr=args.lr),
                 lambda b: model.loss(b[0], b[1])[0], batches, args.steps, clip=5.0,
                 desc=f"names L={depth}{' +head' if head else ''}",
                 progress=not args.no_progress)
    return common.evaluate(model, held_ids), None


def verdict(losses, depths):
    """One line: does the deepest stack beat depth 1 by a clear margin (without the head)?"""
    first, last = losses[(depths[0], False)], losses[(depths[-1], False)]
    gain = first - last
    if gain > CLEAR:
        return f"depth {depths[-1]} beats depth {depths[0]} by {gain:.2f} nats", True
    return (f"no clear gain from depth at this scale: depth {depths[-1]} {last:.3f} vs depth "
            f"{depths[0]} {first:.3f} nats ({-gain:+.3f})"), False


def plot(path, results, args):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    titles = {"names": f"names: held-out loss per letter (GRU {args.names_hidden})",
              "digits": f"y<t> = (x<t> + x<t-3>) mod 8: held-out loss (GRU {args.hidden})"}
    for ax, (task, r) in zip(axes[0], results.items()):
        for head, style in ((False, "o-"), (True, "s--")):
            pts = [(d, r["loss"][d, head]) for d in args.depths if (d, head) in r["loss"]]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label="with deep head" if head else "no head")
            for x_, y_ in pts:
                ax.annotate(f"{y_:.3f}", (x_, y_), textcoords="offset points", xytext=(6, 4),
                            fontsize=8)
        if task == "digits":
            ax.axhline(math.log(DIGITS), color="gray", ls=":", lw=1, label="chance, log 8")
        ax.set_xticks(args.depths)
        ax.set(xlabel="stacked layers (depth)", ylabel="held-out cross-entropy (nats)",
               title=titles[task])
        ax.text(0.5, -0.24, r["verdict"], transform=ax.transAxes, ha="center", fontsize=9,
                color="darkgreen" if r["helps"] else "darkred",
                bbox=dict(fc="white", ec="lightgray"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Deep RNNs: the same budget ({args.steps} Adam steps) at each depth")
    common.save_figure(fig, path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    heads = (False,) if args.no_head else (False, True)
    print(f"Deep RNNs: held-out loss at depth {args.depths}, "
          f"{'without' if args.no_head else 'with and without'} the deep head; "
          f"{args.steps} Adam steps each (lr {args.lr}, batch {args.batch}, clip 5)")
    results = {}
    t0 = time.perf_counter()
    for task in args.tasks:
        run = run_names if task == "names" else run_digits
        loss, acc = {}, {}
        for depth in args.depths:
            for head in heads:
                loss[depth, head], acc[depth, head] = run(args, depth, head)
        line, helps = verdict(loss, args.depths)
        results[task] = {"loss": loss, "accuracy": acc, "verdict": line, "helps": helps}
        print(f"\n{task}: held-out loss (nats)" + ("" if task == "names" else
                                                    ", accuracy; chance log 8 = 2.079, 12.5%"))
        for head in heads:
            print(f"  {'with deep head' if head else 'no head':15s}" + "".join(
                f"  depth {d}: {loss[d, head]:.3f}"
                + (f" ({acc[d, head]:.0%})" if acc[d, head] is not None else "")
                for d in args.depths))
        print(f"  -> {line}")
    path = os.path.join(args.out, PLOT)
    plot(path, results, args)
    seconds = time.perf_counter() - t0
    print(f"\n({seconds:.1f} s; saved {path})")
    return {"results": results, "depths": args.depths, "plot": path, "seconds": seconds}


if __name__ == "__main__":
    main()
