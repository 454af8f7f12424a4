"""Long memory (chapter 14.8–14.10): "The cat, which …, was full" vs "The cats, which …, were".

The verb must agree with a subject that came k words earlier.  Each sequence is

    the  cat|cats  which  <k filler words>   ->  predict "was" (singular) or "were" (plural)

with the subject drawn from five nouns, singular or plural, and the fillers drawn at random
from words that say nothing about number ("already ate a lot of food in the old garden…").
A many-to-one classifier reads the sequence and predicts the verb from its last state; the
only evidence is at t = 2, k + 1 steps before the end.  Chance is 50 %.

The sweep trains an RNN, a GRU and an LSTM with the same budget at each k and plots held-out
accuracy against k: the RNN falls to chance as k grows, the gated cells hold.  Beside it,
‖∂L/∂a<t>‖ against t for each cell on the same sequences at the largest k (at
initialisation and after training): the RNN's gradient has all but vanished by the time it
reaches the subject.  The gated cells start with their memory path open (``--gate-bias``,
as in ``demos/vanishing_gradients.py``, which measures the same decay on a simpler
recall task).

    python -m demos.long_memory                   # k = 0, 5, 10, 20, 40, 60; about a minute
    python -m demos.long_memory --quick           # k = 2, 20, 40 (what the test runs)
"""

import os
import time

import numpy as np

import minigrad as mg
from demos import common
from demos.vanishing_gradients import CELLS, accuracy, flow, make_model
from minigrad.optim import Adam

NOUNS = ("cat", "dog", "bird", "fox", "child")
PLURALS = ("cats", "dogs", "birds", "foxes", "children")
FILLERS = ("already", "ate", "a", "lot", "of", "food", "in", "the", "old", "garden", "and",
           "then", "slept", "near", "house", "today")
WORDS = ("<pad>", "the", "which", *NOUNS, *PLURALS, *FILLERS)
ID = {w: i for i, w in enumerate(WORDS)}
VERBS = ("was", "were")
PLOT = "long_memory.png"
EVAL_SIZE = 1000


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=200, hidden=32, batch=64, lr=3e-3)
    parser.add_argument("--gaps", type=common.COUNT, nargs="+", default=[0, 5, 10, 20, 40, 60],
                        help="numbers k of filler words to sweep (%(default)s)")
    parser.add_argument("--gate-bias", type=common.number(float), default=3.0,
                        help="initial memory-gate bias (LSTM forget +b, GRU update −b) "
                             "(%(default)s)")
    common.add_run_args(parser, "runs/long_memory",
                        quick="a run of a few seconds (k = 2, 20, 40; 100 steps)")
    args = common.parse(parser, argv, dict(gaps=[2, 20, 40], steps=100))
    if min(args.gaps) < 0 or args.gate_bias < 0:
        parser.error("every --gaps value and --gate-bias must be >= 0")
    args.gaps = sorted(set(args.gaps))
    return args


def make_data(rng, batch, k):
    """x (B, k + 3) word ids, y (B,): 0 = "was" (singular subject), 1 = "were"."""
    y = rng.integers(0, 2, size=batch)
    noun = rng.integers(0, len(NOUNS), size=batch)
    x = np.empty((batch, k + 3), dtype=np.int64)
    x[:, 0] = ID["the"]
    x[:, 1] = np.where(y == 0, ID[NOUNS[0]] + noun, ID[PLURALS[0]] + noun)
    x[:, 2] = ID["which"]
    x[:, 3:] = ID[FILLERS[0]] + rng.integers(0, len(FILLERS), size=(batch, k))
    return x, y


def sentence(x, y):
    return " ".join(WORDS[i] for i in x) + " -> " + VERBS[y]


def plot(path, accs, init_flow, trained_flow, args):
    plt = common.pyplot()
    colors = {"rnn": "tab:red", "gru": "tab:blue", "lstm": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for cell in CELLS:
        ax.plot(args.gaps, [accs[cell][k] for k in args.gaps], "o-", color=colors[cell],
                label=cell.upper())
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set(xlabel="filler words k between subject and verb", ylabel="held-out accuracy",
           ylim=(0.3, 1.05), title=f"was / were after k words ({args.steps} Adam steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    k = max(args.gaps)
    t = np.arange(1, k + 4)
    for ax, flows, title in ((axes[1], init_flow, "at initialisation"),
                             (axes[2], trained_flow, "after training")):
        for cell, norms in flows.items():
            ax.semilogy(t, np.maximum(norms, 1e-45), color=colors[cell], lw=2,
                        label=cell.upper())
        ax.axvline(2, color="gray", ls=":", lw=1)
        ax.text(2.3, ax.get_ylim()[0] * 3, "subject", color="gray", fontsize=8)
        ax.set(xlabel="time step t", ylabel="‖∂L/∂a<t>‖ (log scale)",
               title=f"gradient reaching each step, {title} (k = {k})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle('"The cat, which …, was full" / "The cats, which …, were full": how far '
                 "back can each cell carry the subject's number?")
    common.save_figure(fig, path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng([args.seed, 99])
    print("Long memory: agree the verb with a subject k words back (chance 50%)")
    for k in (3, max(args.gaps)):
        print("  e.g. " + sentence(*(a[0] for a in make_data(rng, 1, k))))
    print(f"  hidden {args.hidden}, Adam lr {args.lr}, batch {args.batch}, {args.steps} steps "
          f"per run, clip 5; gate bias {args.gate_bias:g}")
    k_max = max(args.gaps)
    x_flow, y_flow = make_data(np.random.default_rng([args.seed, k_max, 2]), args.batch, k_max)
    accs = {c: {} for c in CELLS}
    init_flow, trained_flow = {}, {}
    t0 = time.perf_counter()
    for k in args.gaps:
        x_test, y_test = make_data(np.random.default_rng([args.seed, k, 1]), EVAL_SIZE, k)
        for cell in CELLS:
            mg.manual_seed(args.seed)
            model = make_model(cell, args.hidden, args.gate_bias, len(WORDS), 2)
            if k == k_max:
                init_flow[cell] = flow(model, x_flow, y_flow)
            optimizer = Adam(model.parameters(), lr=args.lr)
            data_rng = np.random.default_rng([args.seed, k])  # every cell sees the same data

            def batches(rng=data_rng, k=k):
                while True:
                    yield make_data(rng, args.batch, k)

            @mg.compile  # the whole step: one traced program, one tape node
            def step_loss(x, y, model=model):
                return mg.cross_entropy(model(x), y)

            def loss_fn(batch, step_loss=step_loss):
                return step_loss(*batch)

            common.train(model, optimizer, loss_fn, batches(), args.steps, clip=5.0,
                         desc=f"{cell} k={k}", progress=not args.no_progress)
            accs[cell][k] = accuracy(model, x_test, y_test)
            if k == k_max:
                trained_flow[cell] = flow(model, x_flow, y_flow)
    seconds = time.perf_counter() - t0
    print(f"\nHeld-out accuracy ({EVAL_SIZE} sentences) after {args.steps} steps")
    print("  " + f"{'k':>4s}" + "".join(f"{c.upper():>8s}" for c in CELLS))
    for k in args.gaps:
        print("  " + f"{k:4d}" + "".join(f"{accs[c][k]:8.1%}" for c in CELLS))
    reach = {c: float(v[1] / v[-1]) for c, v in trained_flow.items()}
    print(f"\n‖∂L/∂a<2>‖ / ‖∂L/∂a<T>‖ at k = {k_max} after training (how much of the gradient "
          "reaches the subject): " + ", ".join(f"{c.upper()} {v:.1e}" for c, v in reach.items()))
    path = os.path.join(args.out, PLOT)
    plot(path, accs, init_flow, trained_flow, args)
    print(f"({seconds:.1f} s of training; saved {path})")
    return {"gaps": args.gaps, "accuracy": accs, "init_flow": init_flow,
            "trained_flow": trained_flow, "reach": reach, "plot": path, "seconds": seconds}


if __name__ == "__main__":
    main()
