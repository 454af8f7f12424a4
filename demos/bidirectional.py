"""Why a BRNN needs the future: "Teddy bears are on sale" vs "Teddy Roosevelt was a president".

A name tagger reads a sentence and marks every word as part of a person's name (1) or not
(0).  The generated sentences are built so that some words cannot be tagged from the past:
"teddy", "april", "rose", ... are a first name when the next word is a surname ("teddy
roosevelt") and an ordinary word when it is a noun ("teddy bears"); what comes before them
is random filler, independent of the answer.  Half the time each way, so a model that only
reads left to right can do no better than a coin flip on exactly those words.

Both models are many-to-many taggers (T_x = T_y) with the same cell, hidden size, steps,
learning rate and batches; one is ``bidirectional=False``, the other reads the sentence in
both directions and tags from ``[a→<t>, a←<t>]``.  Sentences have different lengths: each
batch is padded, the recurrent layers get ``lengths=`` (so the backward direction starts at
each sentence's own last word, not at padding) and the loss ignores padding through
``mg.cross_entropy(..., mask=...)``.

Accuracy is reported on held-out sentences over all real words, and over the words whose
tag needs the future.

    python -m demos.bidirectional                 # GRU taggers, ~7 s on 2 cores
    python -m demos.bidirectional --cell lstm

Writes ``bidirectional.png`` (accuracy during training) to ``--out``.
"""

import os
import time

import numpy as np

import minigrad as mg
from demos import common
from minigrad.data import pad_batch
from minigrad.optim import Adam
from models.layers import GRU, LSTM, SequenceTagger

# word -> the noun that makes it an ordinary word ("teddy bears", "april showers", ...)
AMBIGUOUS = {"teddy": "bears", "april": "showers", "rose": "bushes", "bill": "payments",
             "grace": "period", "jack": "fruit", "summer": "sale", "hunter": "green"}
SURNAMES = ["roosevelt", "smith", "jones", "brown", "lee", "king", "walker", "taylor"]
PREFIXES = [[], ["yesterday"], ["i", "think"], ["we", "heard", "that"], ["and"],
            ["in", "the", "news"], ["my", "aunt", "said"], ["today"]]
AFTER_NAME = [["was", "a", "president"], ["is", "my", "friend"], ["called", "today"],
              ["won", "the", "race"], ["lives", "here"]]
AFTER_NOUN = [["are", "on", "sale"], ["were", "late"], ["is", "in", "the", "store"],
              ["look", "nice"], ["came", "early", "this", "year"]]
WORDS = sorted({w for ws in (list(AMBIGUOUS), list(AMBIGUOUS.values()), SURNAMES,
                             *PREFIXES, *AFTER_NAME, *AFTER_NOUN) for w in ws})
VOCAB = {w: i + 1 for i, w in enumerate(WORDS)}  # 0 is padding
NAME, OTHER = 1, 0
PLOT = "bidirectional.png"
EVAL_SIZE = 500


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=400, hidden=32, batch=32, lr=1e-2,
                           help_for={"hidden": "hidden size per direction",
                                      "batch": "sentences per batch"})
    parser.add_argument("--cell", choices=["gru", "lstm"], default="gru",
                        help="recurrent cell of both taggers (%(default)s)")
    parser.add_argument("--eval-every", type=common.POSITIVE_INT, default=25,
                        help="measure held-out accuracy every N steps (%(default)s)")
    common.add_run_args(parser, "runs/bidirectional", quick="a run of a few seconds (150 steps)")
    return common.parse(parser, argv, dict(steps=150))


def make_sentence(rng):
    """(words, tags, needs_future): one generated sentence with 1–2 ambiguous words."""
    words, tags, future = [], [], []

    def add(ws, tag, fut=False):
        words.extend(ws)
        tags.extend([tag] * len(ws))
        future.extend([fut] * len(ws))

    add(PREFIXES[rng.integers(len(PREFIXES))], OTHER)
    for k in range(1 + int(rng.random() < 0.3)):  # sometimes a second ambiguous pair
        if k:
            add(["and"], OTHER)
        first = list(AMBIGUOUS)[rng.integers(len(AMBIGUOUS))]
        if rng.random() < 0.5:  # a person: both words are part of the name
            add([first], NAME, fut=True)
            add([SURNAMES[rng.integers(len(SURNAMES))]], NAME)
            rest = AFTER_NAME
        else:  # a thing: "teddy bears"
            add([first], OTHER, fut=True)
            add([AMBIGUOUS[first]], OTHER)
            rest = AFTER_NOUN
    add(rest[rng.integers(len(rest))], OTHER)
    return words, tags, future


def make_batch(rng, n):
    """Padded ids (B, T), tags (B, T), lengths (B,), mask (B, T), needs-future (B, T)."""
    sents = [make_sentence(rng) for _ in range(n)]
    ids, lengths, mask = pad_batch([[VOCAB[w] for w in s[0]] for s in sents])
    tags, _, _ = pad_batch([s[1] for s in sents])
    future, _, _ = pad_batch([np.array(s[2], dtype=np.int64) for s in sents])
    return ids, tags, lengths, mask, future.astype(bool) & mask, sents


def make_tagger(cell, hidden, bidirectional):
    layer = {"gru": GRU, "lstm": LSTM}[cell]
    return SequenceTagger(layer(len(VOCAB) + 1, hidden, bidirectional=bidirectional), 2)


@mg.no_grad()
def evaluate(model, test):
    """Accuracy over all real words, over words that need the future, and over the rest."""
    ids, tags, lengths, mask, future, _ = test
    was = model.training
    model.eval()
    right = model(ids, lengths=lengths).data.argmax(-1) == tags
    model.train(was)
    return {"all": float(right[mask].mean()), "future": float(right[future].mean()),
            "past": float(right[mask & ~future].mean())}


def plot(path, curves, histories, args):
    plt = common.pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"unidirectional": "tab:red", "bidirectional": "tab:blue"}
    for name, pts in curves.items():
        steps = [s for s, _ in pts]
        ax1.plot(steps, [a["future"] for _, a in pts], "o-", ms=3, color=colors[name],
                 label=f"{name}: words that need the next word")
        ax1.plot(steps, [a["all"] for _, a in pts], "--", color=colors[name],
                 label=f"{name}: all words")
        ax2.plot(np.arange(1, len(histories[name].losses) + 1), histories[name].smoothed(),
                 color=colors[name], label=name)
    ax1.axhline(0.5, color="gray", ls=":", lw=1, label="coin flip")
    ax1.set(xlabel="step", ylabel="held-out accuracy", ylim=(0.3, 1.02),
            title="name tagging: accuracy during training")
    ax2.set(xlabel="step", ylabel="cross-entropy per word (smoothed)", title="training loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{args.cell.upper()} tagger, hidden {args.hidden} per direction: "
                 "left-to-right only vs bidirectional")
    common.save_figure(fig, path, dpi=110)


def show(words, tags):
    return " ".join(w.upper() if t == NAME else w for w, t in zip(words, tags))


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    test = make_batch(np.random.default_rng([args.seed, 1]), EVAL_SIZE)
    _, _, lengths, mask, future, sents = test
    print("Why a BRNN needs the future: tag the words of a person's name "
          "(shown in CAPITALS below)")
    for words, tags, _ in sents[:4]:
        print(f"    {show(words, tags)}")
    print(f"  {len(VOCAB)} words; held-out: {len(sents)} sentences of {lengths.min()}–"
          f"{lengths.max()} words ({int(mask.sum())} words, {int(future.sum())} of which "
          "need the next word to be tagged)")
    print(f"  both taggers: {args.cell.upper()}, hidden {args.hidden} per direction, Adam lr "
          f"{args.lr}, batch {args.batch}, {args.steps} steps, the same batches; padded "
          "batches with lengths= and a masked loss")

    curves, histories, results, models = {}, {}, {}, {}
    seconds = {}
    for name, bidir in (("unidirectional", False), ("bidirectional", True)):
        mg.manual_seed(args.seed)
        model = make_tagger(args.cell, args.hidden, bidir)
        optimizer = Adam(model.parameters(), lr=args.lr)
        data_rng = np.random.default_rng([args.seed, 0])

        def batches(rng=data_rng):
            while True:
                yield make_batch(rng, args.batch)

        @mg.compile  # the whole step, from the lookup to the loss: one traced program
        def step_loss(ids, tags, lens, m, model=model):
            return mg.cross_entropy(model(ids, lengths=lens), tags, mask=m)

        def loss_fn(batch, step_loss=step_loss):
            return step_loss(*batch[:4])

        pts = curves[name] = [(0, evaluate(model, test))]

        def record(step, history, model=model, pts=pts):
            pts.append((step, evaluate(model, test)))

        t0 = time.perf_counter()
        histories[name] = common.train(model, optimizer, loss_fn, batches(), args.steps,
                                       clip=5.0, every=args.eval_every, on_every=record,
                                       desc=name, progress=not args.no_progress)
        seconds[name] = time.perf_counter() - t0
        if pts[-1][0] != args.steps:
            record(args.steps, histories[name])
        results[name], models[name] = pts[-1][1], model

    print(f"\n  {'held-out accuracy':20s} {'all words':>10s} {'need next word':>15s} "
          f"{'the rest':>9s} {'params':>7s} {'time':>6s}")
    for name, r in results.items():
        print(f"  {name:20s} {r['all']:10.1%} {r['future']:15.1%} {r['past']:9.1%} "
              f"{models[name].num_parameters():7d} {seconds[name]:5.1f}s")

    print("\n  How each tags the held-out sentences (CAPITALS = tagged as a name):")
    ids, _, lens, _, fut, _ = test
    with mg.no_grad():
        preds = {n: m(ids, lengths=lens).data.argmax(-1) for n, m in models.items()}
    shown = 0
    for i, (words, tags, _) in enumerate(sents):
        if not fut[i].any() or shown == 3:
            continue
        shown += 1
        print(f"    truth           {show(words, tags)}")
        for n in models:
            print(f"    {n:15s} {show(words, preds[n][i][:len(words)])}")

    uni, bi = results["unidirectional"], results["bidirectional"]
    print("\nWhat to see:")
    print(f"  * Left to right, a word like 'teddy' is tagged before its next word is read: "
          f"{uni['future']:.0%} right on those words — a coin flip, and more training cannot "
          f"help: the words before it say nothing about the answer (the rest: {uni['past']:.0%}).")
    share = float(future.sum() / mask.sum())
    print(f"    Its loss cannot fall below (share of such words)·log 2 = {share:.2f}·0.693 = "
          f"{share * np.log(2):.3f} nats per word; it ends at "
          f"{histories['unidirectional'].smoothed()[-1]:.3f} (smoothed).")
    print(f"  * The bidirectional tagger reads the sentence from the end as well, so a←<t> "
          f"already knows 'roosevelt' or 'bears': {bi['future']:.0%} on those words.")
    path = os.path.join(args.out, PLOT)
    plot(path, curves, histories, args)
    print(f"  (saved {path})")
    return {"accuracy": results, "curves": curves, "plot": path, "seconds": seconds,
            "losses": {n: h.losses for n, h in histories.items()}}


if __name__ == "__main__":
    main()
