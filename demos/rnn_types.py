"""The RNN types of chapter 14.5, side by side: one small model of each, trained and scored.

* **one-to-many** — a melody from a single start input.  The tunes come from a small
  Markov chain over the eight notes of a C-major scale (steps are likely, leaps rarer,
  c/e/g preferred), 12 notes each.  A GRU language model learns them from the start token
  alone, feeding each sampled note back in.  Score: how far the transition statistics of
  its samples are from the true chain (KL divergence, nats), against the untrained model
  and against the chain's own samples (the floor that finite samples allow).
* **many-to-one** — sentiment of generated sentences with negation ("the film was not
  very good", "this show is never boring"), read by a GRU; the class comes from the last
  state (with ``lengths``: padding never enters).  Score: held-out accuracy, overall and on
  the negated sentences alone (a model that ignores "not" gets half of those right).
* **many-to-many, T_x = T_y** — the name tagger of ``demos/bidirectional.py`` (a tag at
  every word); score: tag accuracy of its bidirectional RNN.
* **many-to-many, T_x ≠ T_y** — the encoder–decoder of ``demos/seq2seq.py`` (dates to ISO);
  score: exact-match accuracy on held-out dates.

The picture (``rnn_types.png``) draws the four architectures unrolled, each with its
measured score, and a piano roll of a generated melody beside one from the true chain.

    python -m demos.rnn_types            # about a minute (the two reused demos' full runs)
    python -m demos.rnn_types --quick    # a few seconds (what the test runs)
"""

import contextlib
import io
import os
import time

import numpy as np

import minigrad as mg
from demos import bidirectional, common, seq2seq
from minigrad.data import Vocab, pad_batch
from minigrad.optim import Adam
from models.language_model import LanguageModel
from models.layers import GRU, SequenceClassifier

PLOT = "rnn_types.png"
NOTES = "cdefgabC"  # C major, c = C4 ... C = C5
MELODY_LEN = 12
SAMPLES = 400  # melodies drawn to measure transition statistics


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=600, hidden=48, batch=32, lr=1e-2,
                           help_for={"steps": "Adam steps for each of the two small models"})
    common.add_run_args(parser, "runs/rnn_types")
    args = common.parse(parser, argv, dict(steps=150))
    return args


# ---------------------------------------------------------------------------- one-to-many

def transition_matrix():
    """The true melody grammar: P(next note | note), a fixed 8 × 8 Markov chain."""
    n = len(NOTES)
    P = np.zeros((n, n))
    for i in range(n):
        for step, w in ((1, 3.0), (-1, 3.0), (2, 1.0), (-2, 1.0), (0, 0.4), (4, 0.6), (-4, 0.6)):
            j = i + step
            if 0 <= j < n:
                P[i, j] += w * (1.5 if NOTES[j] in "cegC" else 1.0)  # the tonic chord
    return P / P.sum(axis=1, keepdims=True)


START = np.array([0.5, 0, 0.25, 0, 0.25, 0, 0, 0])  # a tune starts on c, e or g


def melodies(rng, n):
    P = transition_matrix()
    out = []
    for _ in range(n):
        i = rng.choice(len(NOTES), p=START)
        notes = [i]
        for _ in range(MELODY_LEN - 1):
            i = rng.choice(len(NOTES), p=P[i])
            notes.append(i)
        out.append("".join(NOTES[k] for k in notes))
    return out


def transition_kl(tunes):
    """KL(true ‖ observed) of the next-note statistics, weighted by how often the true
    chain leaves each note (nats).  Counts get +0.5 (Jeffreys) so no cell is empty."""
    n = len(NOTES)
    counts = np.full((n, n), 0.5)
    for tune in tunes:
        ids = [NOTES.index(ch) for ch in tune if ch in NOTES]
        for a, b in zip(ids, ids[1:]):
            counts[a, b] += 1
    Q = counts / counts.sum(axis=1, keepdims=True)
    P = transition_matrix()
    weight = np.ones(n) @ np.linalg.matrix_power(P, 50)  # the chain's long-run note mix
    weight /= weight.sum()
    kl = (P * np.log(np.where(P > 0, P, 1) / Q)).sum(axis=1)
    return float(weight @ kl)


def one_to_many(args):
    vocab = Vocab(list(NOTES))
    mg.manual_seed(args.seed)
    lm = LanguageModel(len(vocab), args.hidden, cell="gru", vocab=vocab)
    rng = np.random.default_rng([args.seed, 10])
    before = lm.sample(SAMPLES, max_len=2 * MELODY_LEN, seed=args.seed)

    def batches():
        while True:
            ids, lengths, _ = pad_batch([vocab.encode(m, add_eos=True)
                                         for m in melodies(rng, args.batch)])
            yield ids, lengths

    opt = Adam(lm.parameters(), lr=args.lr)
    history = common.train(lm, opt, lambda b: lm.loss(*b)[0], batches(), args.steps, clip=5.0,
                           desc="one-to-many", progress=not args.no_progress)
    after = lm.sample(SAMPLES, max_len=2 * MELODY_LEN, seed=args.seed)
    truth = melodies(np.random.default_rng([args.seed, 11]), SAMPLES)
    return {"kl_before": transition_kl(before), "kl_after": transition_kl(after),
            "kl_floor": transition_kl(truth), "samples": after[:4], "true": truth[:4],
            "length_right": float(np.mean([len(m) == MELODY_LEN for m in after])),
            "loss": list(history.smoothed())}


# ---------------------------------------------------------------------------- many-to-one

NOUNS = ("movie", "film", "show", "book", "meal", "song")
POSITIVE = ("good", "great", "fun", "lovely")
NEGATIVE = ("bad", "awful", "dull", "boring")
ADVERBS = ("very", "really", "so", "quite")


def sentences(rng, n):
    """``n`` (sentence, label, negated): label 1 = positive; "not"/"never" flips it."""
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.5
        adj = rng.choice(POSITIVE if positive else NEGATIVE)
        words = [rng.choice(("the", "this")), rng.choice(NOUNS), rng.choice(("was", "is"))]
        if negated:
            words.append(rng.choice(("not", "never")))
        if rng.random() < 0.5:
            words.append(rng.choice(ADVERBS))
        words.append(adj)
        if rng.random() < 0.3:
            words += ["in", "the", "end"]  # the verdict is not always the last word
        out.append((" ".join(words), int(positive != negated), negated))
    return out


def many_to_one(args):
    vocab = Vocab.build([" ".join(("the this was is not never in end",) + NOUNS + POSITIVE
                                  + NEGATIVE + ADVERBS)], level="word")
    mg.manual_seed(args.seed)
    model = SequenceClassifier(GRU(len(vocab), args.hidden), 2)
    rng = np.random.default_rng([args.seed, 20])

    def encode(batch):
        ids, lengths, _ = pad_batch([vocab.encode(s) for s, _, _ in batch])
        return ids, lengths, np.array([y for _, y, _ in batch])

    def batches():
        while True:
            yield encode(sentences(rng, args.batch))

    @mg.compile  # the whole step: one traced program, one tape node
    def step_loss(ids, lengths, y):
        return mg.cross_entropy(model(ids, lengths=lengths), y)

    def loss_fn(b):
        return step_loss(*b)

    opt = Adam(model.parameters(), lr=args.lr)
    common.train(model, opt, loss_fn, batches(), args.steps, clip=5.0, desc="many-to-one",
                 progress=not args.no_progress)
    test = sentences(np.random.default_rng([args.seed, 21]), 1000)
    ids, lengths, y = encode(test)
    with mg.no_grad():
        model.eval()
        pred = np.argmax(model(ids, lengths=lengths).data, axis=1)
    right = pred == y
    neg = np.array([n for _, _, n in test])
    return {"accuracy": float(right.mean()), "negated": float(right[neg].mean()),
            "plain": float(right[~neg].mean()),
            "examples": [(s, int(p)) for (s, _, _), p in zip(test[:4], pred[:4])]}


# ---------------------------------------------------------------------------- many-to-many

def reused(module, argv):
    """Run another demo in-process, quietly; return its result dict."""
    with contextlib.redirect_stdout(io.StringIO()):
        return module.main(argv)


# ---------------------------------------------------------------------------- the picture

def draw_architecture(ax, kind, score):
    """An unrolled RNN of ``kind``: inputs at the bottom, states in the middle, outputs on
    top; arrows as in the chapter's figures."""
    xs, ys, n = {
        "one-to-many": ([0], [0, 1, 2, 3], 4),
        "many-to-one": ([0, 1, 2, 3], [3], 4),
        "many-to-many, T_x = T_y": ([0, 1, 2, 3], [0, 1, 2, 3], 4),
        "many-to-many, T_x ≠ T_y": ([0, 1, 2], [3, 4, 5], 6),
    }[kind]
    box = dict(boxstyle="round,pad=0.25", ec="gray")
    for t in range(n):
        color = "#fde8c8" if kind.endswith("≠ T_y") and t >= 3 else "#e8f0fe"
        ax.text(t, 1, f"a<{t + 1}>", ha="center", va="center", fontsize=8,
                bbox={**box, "fc": color})
        if t:
            ax.annotate("", (t - 0.3, 1), (t - 0.7, 1), arrowprops=dict(arrowstyle="-|>"))
        if t and kind.endswith("= T_y"):  # the tagger is bidirectional: a← runs back
            ax.annotate("", (t - 0.7, 0.72), (t - 0.3, 0.72),
                        arrowprops=dict(arrowstyle="-|>", color="tab:purple"))
    for i, t in enumerate(xs):
        ax.text(t, 0, f"x<{i + 1}>", ha="center", va="center", fontsize=8)
        ax.annotate("", (t, 0.8), (t, 0.18), arrowprops=dict(arrowstyle="-|>"))
    for i, t in enumerate(ys):
        ax.text(t, 2, f"ŷ<{i + 1}>", ha="center", va="center", fontsize=8)
        ax.annotate("", (t, 1.82), (t, 1.2), arrowprops=dict(arrowstyle="-|>"))
        if kind == "one-to-many" and t + 1 < n or kind.endswith("≠ T_y") and t + 1 < n:
            ax.annotate("", (t + 1 - 0.1, 0.78), (t + 0.1, 1.85),
                        arrowprops=dict(arrowstyle="-|>", color="tab:orange", ls="--",
                                        connectionstyle="arc3,rad=-0.3"))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(-0.9, 2.5)
    ax.axis("off")
    ax.set_title(kind, fontsize=10)
    ax.text((n - 1) / 2, -0.65, score, ha="center", va="center", fontsize=8,
            color="darkgreen", wrap=True)


def piano_roll(ax, tune, title, color):
    ids = [NOTES.index(ch) for ch in tune if ch in NOTES]
    for t, k in enumerate(ids):
        ax.add_patch(common.pyplot().Rectangle((t, k - 0.4), 0.9, 0.8, color=color))
    ax.set_xlim(0, MELODY_LEN + 1)
    ax.set_ylim(-0.7, len(NOTES) - 0.3)
    ax.set_yticks(range(len(NOTES)), ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5"])
    ax.set(xlabel="time step t", title=title)
    ax.grid(alpha=0.3)


def plot(path, r):
    plt = common.pyplot()
    fig = plt.figure(figsize=(13, 6.2))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.1, 1])
    m, s, tg, dt = r["one_to_many"], r["many_to_one"], r["tagger"], r["seq2seq"]
    scores = {
        "one-to-many": f"melody: transition KL {m['kl_after']:.3f} nats\n(untrained "
                       f"{m['kl_before']:.2f}, true chain's own samples {m['kl_floor']:.3f})",
        "many-to-one": f"sentiment: {s['accuracy']:.1%} right\n"
                       f"negated sentences: {s['negated']:.1%}",
        "many-to-many, T_x = T_y": f"name tagger (BRNN): {tg['all']:.1%} of tags\n"
                                   f"words that need the next word: {tg['future']:.1%}",
        "many-to-many, T_x ≠ T_y": f"dates → ISO: {dt['exact']:.1%} exact match\n"
                                   f"characters right: {dt['chars']:.1%}",
    }
    for i, (kind, score) in enumerate(scores.items()):
        draw_architecture(fig.add_subplot(grid[0, i]), kind, score)
    piano_roll(fig.add_subplot(grid[1, 0:2]), m["samples"][0],
               f"a melody the GRU generated: {m['samples'][0]}", "tab:blue")
    piano_roll(fig.add_subplot(grid[1, 2:4]), m["true"][0],
               f"a melody from the true chain: {m['true'][0]}", "tab:gray")
    fig.suptitle("Chapter 14.5: the RNN types, each trained here and scored")
    common.save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print("The RNN types of 14.5, side by side (a small model of each; seed "
          f"{args.seed}, {args.steps} Adam steps for the two small ones)")
    t0 = time.perf_counter()
    m = one_to_many(args)
    print(f"\none-to-many (GRU language model, melodies from one start token): transition KL "
          f"{m['kl_before']:.3f} -> {m['kl_after']:.3f} nats (the true chain's own "
          f"{SAMPLES} samples: {m['kl_floor']:.3f}); {m['length_right']:.0%} of samples have "
          f"exactly {MELODY_LEN} notes")
    print("  generated: " + "  ".join(m["samples"]) + "\n  true chain: "
          + "  ".join(m["true"]))
    s = many_to_one(args)
    print(f"\nmany-to-one (GRU, last state, lengths): held-out accuracy {s['accuracy']:.1%}; "
          f"negated sentences {s['negated']:.1%}, plain ones {s['plain']:.1%}")
    for text, p in s["examples"]:
        print(f"  {text!r:45s} -> {'positive' if p else 'negative'}")
    common_argv = ["--no-progress", "--seed", str(args.seed), "--threads", str(args.threads)]
    quick = ["--quick"] if args.quick else []
    b = reused(bidirectional, [*quick, *common_argv, "--out", os.path.join(args.out, "tagger")])
    tagger = b["accuracy"]["bidirectional"]
    print(f"\nmany-to-many, T_x = T_y (demos/bidirectional.py, BRNN tagger): {tagger['all']:.1%}"
          f" of tags right; {tagger['future']:.1%} on words that need the next word")
    d = reused(seq2seq, [*quick, *common_argv, "--show", "0",
                         "--out", os.path.join(args.out, "seq2seq")])
    dates = {"exact": d["accuracy"][1], "chars": d["char_accuracy"][1]}
    print(f"many-to-many, T_x ≠ T_y (demos/seq2seq.py, encoder-decoder): {dates['exact']:.1%} "
          f"of held-out dates exactly right, {dates['chars']:.1%} of characters")
    r = {"one_to_many": m, "many_to_one": s, "tagger": tagger, "seq2seq": dates,
         "seconds": time.perf_counter() - t0}
    path = os.path.join(args.out, PLOT)
    plot(path, r)
    print(f"\n({r['seconds']:.1f} s; saved {path})")
    r["plot"] = path
    return r


if __name__ == "__main__":
    main()
