"""Fill in the blank: a small BERT (and with ``--albert``, an ALBERT beside it) pretrained as
a masked language model on the bundled sentences.

BERT (Devlin et al., 2019) reads a whole sentence at once with *bidirectional*
self-attention — every word sees the words on both sides, unlike a left-to-right language
model — and learns by filling in blanks.  In each training sentence 15 % of the words are
chosen; of those 80 % are replaced by ``[MASK]``, 10 % by a random word and 10 % are left as
they are, and the model must say what the chosen words were.

ALBERT (Lan et al., 2020) keeps the encoder and cuts its parameters twice: the V×H word
embedding becomes V×E then E×H with E < H (here V = 583 words, H = 64, E = 16), and one
layer's weights serve at every depth.  ``--albert`` trains both on the same data and steps
and prints parameters against held-out masked-word accuracy.

    python -m demos.bert                # BERT, ~3 minutes of CPU
    python -m demos.bert --albert       # BERT and ALBERT side by side, ~5 minutes
    python -m demos.bert --quick        # a few seconds (the test)

Held-out sentences (the file's last 300) are masked once, the same way, for every model;
the baseline always answers the most frequent training word.  Prints filled-in blanks on
held-out sentences and writes ``bert.png`` (or ``albert.png``) and the checkpoints.
"""

import math
import os
from collections import Counter

import numpy as np

import minigrad as mg
from demos import common
from minigrad.data import PAD_ID, Vocab, pad_batch
from minigrad.optim import Adam
from models.transformer import MaskedLM

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentences.txt")
HELD_OUT = 300  # as demos/words.py: the last sentences, never trained on
MASK = "[MASK]"
SHOW = 8  # filled-in blanks to print


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=2000, hidden=64, batch=64, lr=2e-3,
                          help_for={"hidden": "the encoder's width H (d_model)"})
    parser.add_argument("--heads", type=common.POSITIVE_INT, default=4,
                        help="attention heads (%(default)s)")
    parser.add_argument("--layers", type=common.POSITIVE_INT, default=4,
                        help="encoder layers (%(default)s)")
    parser.add_argument("--ff", type=common.POSITIVE_INT, default=256,
                        help="feed-forward width (%(default)s)")
    parser.add_argument("--embed", type=common.POSITIVE_INT, default=16,
                        help="ALBERT's embedding size E < H (%(default)s)")
    parser.add_argument("--dropout", type=common.FRACTION, default=0.1,
                        help="dropout (%(default)s)")
    parser.add_argument("--albert", action="store_true",
                        help="also train ALBERT (factorised embedding, one shared layer)")
    parser.add_argument("--eval-every", type=common.COUNT, default=0,
                        help="held-out accuracy every N steps (default: 10 times per run)")
    common.add_run_args(parser, "runs/bert", quick="a smaller encoder, 300 steps")
    args = common.parse(parser, argv, dict(steps=300, hidden=32, ff=64, layers=2, embed=8,
                                           lr=1e-2, dropout=0.0))
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.albert and args.embed >= args.hidden:
        parser.error(f"--embed {args.embed} must be smaller than --hidden {args.hidden} "
                     "(ALBERT factorises the embedding)")
    return args


def mask_tokens(ids, lengths, rng, mask_id, n_words):
    """BERT's corruption of a padded batch (B, T): 15 % of the real tokens chosen (at least
    one per sentence); of those, 80 % become [MASK], 10 % a random word (ids 3 ..
    n_words - 1) and 10 % stay.  Returns (inputs, targets): targets hold the original id at
    the chosen positions and -1 elsewhere."""
    B, T = ids.shape
    real = np.arange(T)[None, :] < lengths[:, None]
    chosen = (rng.random((B, T)) < 0.15) & real
    none = ~chosen.any(axis=1)
    chosen[none, (rng.random(B) * lengths).astype(int)[none]] = True
    r = rng.random((B, T))
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rng.integers(3, n_words, int(swap.sum()))
    return inputs, np.where(chosen, ids, -1)


def batches(seqs, batch, rng, mask_id, n_words):
    """Endless (inputs, targets, padding mask) batches of freshly masked sentences."""
    while True:
        order = rng.permutation(len(seqs))
        for i in range(0, len(order) - batch + 1, batch):
            ids, lengths, _ = pad_batch([seqs[j] for j in order[i:i + batch]])
            inputs, targets = mask_tokens(ids, lengths, rng, mask_id, n_words)
            yield inputs, targets, ids == PAD_ID


@mg.no_grad()
def evaluate(model, held):
    """(mean loss, accuracy) over the chosen positions of the fixed held-out batches."""
    was = model.training
    model.eval()
    right = total = 0
    loss = 0.0
    for inputs, targets, pad in held:
        logits = model(inputs, key_padding_mask=pad).data
        chosen = targets >= 0
        right += int((logits.argmax(-1)[chosen] == targets[chosen]).sum())
        total += int(chosen.sum())
        loss += float(mg.cross_entropy(mg.tensor(logits), np.maximum(targets, 0),
                                       mask=chosen, reduction="sum").data)
    model.train(was)
    return loss / total, right / total


def build(args, V, albert):
    return MaskedLM(V, args.hidden, args.heads, args.layers, args.ff, dropout=args.dropout,
                    max_len=64, embedding_dim=args.embed if albert else None,
                    share_layers=albert)


def train_one(name, model, args, seqs, held, mask_id, n_words):
    rng = np.random.default_rng([args.seed, 1])
    history = common.History()
    history.evals.append((0, evaluate(model, held)[1]))

    def on_every(step, hist):
        hist.evals.append((step, evaluate(model, held)[1]))

    optimizer = Adam(model.parameters(), lr=args.lr)
    common.train(model, optimizer, lambda b: model.loss(b[0], b[1], b[2]),
                 batches(seqs, args.batch, rng, mask_id, n_words), args.steps,
                 history=history, clip=5.0, every=args.eval_every or max(1, args.steps // 10),
                 on_every=on_every, desc=name, progress=not args.no_progress)
    return history, optimizer


@mg.no_grad()
def fill_in(model, vocab, sentences, rng, k=3):
    """For each sentence, blank one word (not punctuation, not <UNK>) and return
    (text with ___, the word, [(guess, probability)] * k)."""
    model.eval()
    out = []
    for text in sentences:
        ids = vocab.encode(text)
        words = [i for i, t in enumerate(ids) if vocab.itos[t].isalpha() and t != vocab.unk_id]
        if not words:
            continue
        at = words[rng.integers(len(words))]
        inputs = ids.copy()
        inputs[at] = vocab[MASK]
        p = model(inputs[None]).softmax(-1).data[0, at]
        best = np.argsort(p)[::-1][:k]
        shown = [vocab.itos[t] if i != at else "___" for i, t in enumerate(ids)]
        out.append((" ".join(shown), vocab.itos[ids[at]],
                    [(vocab.itos[b], float(p[b])) for b in best]))
    return out


def plot(path, runs, baseline):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"BERT": "tab:purple", "ALBERT": "tab:green"}
    for name, r in runs.items():
        h = r["history"]
        axes[0].plot(np.arange(1, len(h.losses) + 1), h.smoothed(), color=colors[name],
                     label=f"{name} ({r['params']:,} parameters)")
        xs, ys = zip(*h.evals)
        axes[1].plot(xs, np.array(ys) * 100, "o-", ms=3, color=colors[name],
                     label=f"{name}: {r['accuracy'] * 100:.1f} %")
    axes[1].axhline(baseline * 100, color="gray", ls="--", lw=1,
                    label=f"most frequent word: {baseline * 100:.1f} %")
    axes[0].set(xlabel="step", ylabel="masked-word cross-entropy (nats)",
                title=f"training loss (mean over {runs[next(iter(runs))]['history'].window} "
                      "steps)")
    axes[1].set(xlabel="step", ylabel="held-out masked-word accuracy (%)",
                title="held-out fill-in-the-blank accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Masked language models on the bundled sentences: " +
                 " vs ".join(f"{n} {r['params']:,} parameters, {r['accuracy'] * 100:.1f} %"
                             for n, r in runs.items()), fontsize=10)
    common.save_figure(fig, path, dpi=90)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    mg.manual_seed(args.seed)
    lines = common.read_lines(DATA)
    train_text, held_text = lines[:-HELD_OUT], lines[-HELD_OUT:]
    words = Vocab.build(train_text, level="word", min_count=2)
    vocab = Vocab([*words.itos, MASK], level="word")  # [MASK] last: never a "random word"
    mask_id, V = vocab[MASK], len(vocab)
    seqs = [vocab.encode(t) for t in train_text]
    counts = Counter(t for s in seqs for t in s.tolist())
    top_word = counts.most_common(1)[0][0]
    held_rng = np.random.default_rng([args.seed, 2])
    held = []
    for i in range(0, HELD_OUT, 100):
        ids, lengths, _ = pad_batch([vocab.encode(t) for t in held_text[i:i + 100]])
        inputs, targets = mask_tokens(ids, lengths, held_rng, mask_id, V - 1)
        held.append((inputs, targets, ids == PAD_ID))
    chosen = np.concatenate([t[t >= 0] for _, t, _ in held])
    baseline = float((chosen == top_word).mean())

    kinds = ["BERT", "ALBERT"] if args.albert else ["BERT"]
    print(f"Masked language model{'s' if args.albert else ''} on {len(train_text)} sentences "
          f"({sum(map(len, seqs))} tokens; {HELD_OUT} held out), V = {V} "
          f"(words seen twice + <PAD> <UNK> <EOS> {MASK})")
    print(f"  encoder: H = {args.hidden}, {args.heads} heads, {args.layers} layers, "
          f"feed-forward {args.ff}, GELU, post-norm; Adam lr {args.lr}, batch {args.batch}, "
          f"{args.steps} steps; 15 % chosen: 80 % {MASK}, 10 % random, 10 % kept")
    runs = {}
    for name in kinds:
        mg.manual_seed(args.seed)
        model = build(args, V, albert=name == "ALBERT")
        what = (f"E = {args.embed} (V×E + E×H), one layer shared by all {args.layers}"
                if name == "ALBERT" else f"E = H = {args.hidden}, {args.layers} layers")
        print(f"  {name}: {what}: {model.num_parameters():,} parameters")
        history, optimizer = train_one(name, model, args, seqs, held, mask_id, V - 1)
        loss, acc = evaluate(model, held)
        os.makedirs(os.path.join(args.out, name.lower()), exist_ok=True)
        ckpt = common.Checkpoint(os.path.join(args.out, name.lower()), "bert", model,
                                 optimizer, {"albert": name == "ALBERT"}, args,
                                 vocab=vocab.itos).save(history)
        runs[name] = {"model": model, "history": history, "params": model.num_parameters(),
                      "loss": loss, "accuracy": acc, "checkpoint": ckpt}

    print(f"\nHeld-out masked words ({len(chosen)} positions in {HELD_OUT} sentences):")
    print(f"  {'model':24s} {'parameters':>10s} {'accuracy':>9s} {'loss':>6s}")
    print(f"  {'most frequent word':24s} {0:>10,} {baseline * 100:8.1f}% {'':>6s}  "
          f"(always '{vocab.itos[top_word]}')")
    for name, r in runs.items():
        print(f"  {name:24s} {r['params']:>10,} {r['accuracy'] * 100:8.1f}% {r['loss']:6.3f}  "
              f"(perplexity {math.exp(r['loss']):.1f})")
    if args.albert:
        b, a = runs["BERT"], runs["ALBERT"]
        print(f"  ALBERT: {b['params'] / a['params']:.1f}x fewer parameters, "
              f"{(a['accuracy'] - b['accuracy']) * 100:+.1f} points of accuracy")

    fills = {}
    for name, r in runs.items():
        fills[name] = fill_in(r["model"], vocab, held_text[:SHOW],
                              np.random.default_rng([args.seed, 3]))
        print(f"\nFill in the blank ({name}, held-out sentences; top 3 guesses):")
        for text, word, guesses in fills[name]:
            mark = "✓" if guesses[0][0] == word else "✗"
            print(f"  {mark} {text}\n      {word!r}: " +
                  ", ".join(f"{g} {p:.2f}" for g, p in guesses))
    path = os.path.join(args.out, "albert.png" if args.albert else "bert.png")
    plot(path, runs, baseline)
    print(f"\nSaved {path}")
    return {"runs": {n: {k: v for k, v in r.items() if k != "model"} for n, r in runs.items()},
            "baseline": baseline, "fills": fills, "plot": path, "vocab_size": V}


if __name__ == "__main__":
    main()
