"""Translate dates written by people into ISO dates: a character-level seq2seq model.

The chapter's many-to-many RNN with T_x ≠ T_y.  The source is a date as a person might
write it — "3 march 2001", "march 3, 2001", "the 3rd of march 2001", "03.03.2001" — and
the target is always the 10 characters "2001-03-03".  Lengths differ (9 to 26 source
characters, 10 target characters plus <EOS>) and order matters: the year comes last in
the source but first in the target, and the month may be a word or two digits.

An encoder RNN reads the source characters; its final state starts a decoder RNN that
writes the target one character at a time (teacher forcing while training, its own
greedy predictions when translating).  Dates are drawn from 1950-01-01 .. 2049-12-31; the
held-out dates are never seen in training, in any format, so exact-match accuracy on them
measures real generalisation.  Chance is ~0: there are 36 525 possible answers.

    python -m demos.seq2seq                   # LSTM encoder-decoder, under a minute
    python -m demos.seq2seq --attention       # + Luong attention over the encoder outputs
    python -m demos.seq2seq --resume --steps 3000

Without attention the whole date must squeeze through the encoder's one final state, and
the longest format ("the 24th of march 1969") is clearly the hardest (about 86 % exact
match overall by the end of the default run, under 40 % on that format); with
``--attention`` each output character looks straight at the source characters it needs
(``attention.png`` shows where), and the same budget reaches about 97 %.

Prints held-out translations marked ✓/✗ and the exact-match accuracy before and after (of
the model with the lowest held-out loss; ``--use-last`` for the last), and writes
``loss.png`` (training and held-out loss; ``attention.png`` with --attention),
``checkpoint.npz`` (the last model) and ``best.npz`` (the best) to ``--out``.
"""

import datetime
import math
import os
import time

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos import common
from minigrad import distributed as dist
from minigrad.data import Vocab, pad_batch
from minigrad.optim import Adam
from models.seq2seq import Seq2Seq

FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
FORMATS = ("{d} {month} {y}", "{month} {d}, {y}", "the {nth} of {month} {y}",
           "{dd}.{mm}.{y}", "{d} {mon} {y}", "{mon} {d} {y}")
SRC_CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 ,."))
TGT_CHARS = sorted(set("0123456789-"))
ARCH = ("cell", "hidden", "layers", "embed", "attention", "bidirectional")
DEMO = "seq2seq"
# --quick writes every date one way, "dd.mm.yyyy": a few seconds of training then get many
# held-out dates exactly right (35-61 % over seeds 0-2), where all six formats get none.
QUICK_FORMATS = (3,)


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_training_args(parser, steps=1200, lr=5e-3, batch=64, hidden=128,
                             out="runs/seq2seq")
    parser.set_defaults(temperature=0.0)  # translations are greedy unless asked otherwise
    parser.add_argument("--embed", type=common.COUNT, default=0,
                        help="embedding size; 0 = one-hot characters (%(default)s)")
    parser.add_argument("--attention", action="store_true",
                        help="Luong attention over the encoder outputs")
    parser.add_argument("--bidirectional", action="store_true",
                        help="a bidirectional encoder (its final states are projected)")
    parser.add_argument("--held-out", type=common.POSITIVE_INT, default=500,
                        help="held-out dates, never trained on (%(default)s)")
    parser.add_argument("--show", type=common.COUNT, default=10,
                        help="held-out translations to print (%(default)s)")
    parser.add_argument("--eval-every", type=common.COUNT, default=0,
                        help="held-out loss every N steps (default: 10 times per run)")
    # --quick: a few seconds — a small model, few steps, a small held-out set, and only the
    # numeric format (QUICK_FORMATS), so that whole dates come out right
    return common.parse(parser, argv, dict(hidden=64, steps=400, lr=2e-2, batch=32,
                                           held_out=200, show=5))


# ---------------------------------------------------------------------------- the data

def all_dates():
    n = (LAST - FIRST).days + 1
    return [FIRST + datetime.timedelta(days=i) for i in range(n)]


def ordinal(d):
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def human(date, fmt):
    """``date`` written in format number ``fmt`` (an index into FORMATS)."""
    month = MONTHS[date.month - 1]
    return FORMATS[fmt].format(d=date.day, dd=f"{date.day:02d}", mm=f"{date.month:02d}",
                               y=date.year, month=month, mon=month[:3], nth=ordinal(date.day))


def make_pairs(dates, rng, formats=None):
    """One (source text, target text) pair per date, each in a random format (one of
    ``formats``, indices into FORMATS; default all)."""
    if formats is None:
        fmts = rng.integers(0, len(FORMATS), len(dates))
    else:
        fmts = np.asarray(formats)[rng.integers(0, len(formats), len(dates))]
    return [(human(d, int(f)), d.isoformat()) for d, f in zip(dates, fmts)]


def split_dates(n_held_out, seed):
    """Shuffle every date once; the first ``n_held_out`` are held out, the rest train."""
    dates = all_dates()
    order = np.random.default_rng([seed, 1]).permutation(len(dates))
    dates = [dates[i] for i in order]
    return dates[n_held_out:], dates[:n_held_out]


def batches(train_dates, batch_size, src_vocab, tgt_vocab, rng, formats=None):
    """Endless batches of fresh pairs: a random training date in a random format."""
    while True:
        picks = rng.integers(0, len(train_dates), batch_size)
        pairs = make_pairs([train_dates[i] for i in picks], rng, formats)
        yield encode_pairs(pairs, src_vocab, tgt_vocab)


def encode_pairs(pairs, src_vocab, tgt_vocab):
    """(src ids, src lengths, tgt ids ending with <EOS>, tgt lengths), padded with 0."""
    src, src_len, _ = pad_batch([src_vocab.encode(s) for s, _ in pairs])
    tgt, tgt_len, _ = pad_batch([tgt_vocab.encode(t, add_eos=True) for _, t in pairs])
    return src, src_len, tgt, tgt_len


# ---------------------------------------------------------------------------- evaluation

@mg.no_grad()
def held_out_loss(model, data, batch_size=250):
    """Mean cross-entropy per target character (nats), in eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data[0]), batch_size):
        src, sl, tgt, tl = (a[i:i + batch_size] for a in data)
        total += float(model.loss(src, sl, tgt, tl, reduction="sum").data)
        count += int(tl.sum())
    model.train(was)
    return total / count


def translate(model, sources, src_vocab, tgt_vocab, temperature=0.0, seed=None,
              batch_size=250):
    """Source strings -> translated strings (greedy unless temperature > 0)."""
    out = []
    for i in range(0, len(sources), batch_size):
        ids = [src_vocab.encode(s) for s in sources[i:i + batch_size]]
        out += [tgt_vocab.decode(y) for y in model.translate(
            ids, max_len=12, temperature=temperature, seed=seed)]
    return out


def accuracy(predictions, pairs):
    """Exact match: the whole predicted date must be right."""
    return float(np.mean([p == t for p, (_, t) in zip(predictions, pairs)]))


def char_accuracy(predictions, pairs):
    """The fraction of target characters predicted right at their position (a wrong
    length counts the missing or extra characters as wrong); chance is about 1/11."""
    right = sum(sum(a == b for a, b in zip(p, t)) for p, (_, t) in zip(predictions, pairs))
    total = sum(max(len(p), len(t)) for p, (_, t) in zip(predictions, pairs))
    return right / total


def plot_attention(model, pairs, src_vocab, tgt_vocab, path):
    """Heat maps of α<t,t'>, one per translation: which source characters each output
    character looked at (teacher-forced on the model's own greedy output).  Returns the
    matrices, (T_y + 1, T_x) each."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(pairs), squeeze=False,
                             figsize=(sum(max(3.5, 0.28 * len(s)) for s, _ in pairs), 4))
    alphas = []
    for ax, (src_text, _) in zip(axes[0], pairs):
        pred = translate(model, [src_text], src_vocab, tgt_vocab)[0]
        tgt = tgt_vocab.encode(pred, add_eos=True)[None, :]
        src = src_vocab.encode(src_text)[None, :]
        with mg.no_grad():
            model.eval()
            model(src, None, model.shift(tgt))
            model.train()
        alphas.append(model.alignments[0])  # (T_y, T_x)
        ax.imshow(alphas[-1], cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(src_text)), list(src_text))
        ax.set_yticks(range(len(pred) + 1), [*pred, "<EOS>"])
        ax.set(xlabel="source character t'", title=f"{src_text!r} -> {pred!r}")
    axes[0][0].set_ylabel("output character t")
    fig.suptitle("attention α<t,t'>: where each output character looks")
    common.save_figure(fig, path, dpi=100)
    return alphas


# ---------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    ckpt = common.prepare_out(args, DEMO)
    mg.manual_seed(args.seed)
    src_vocab, tgt_vocab = Vocab(SRC_CHARS), Vocab(TGT_CHARS)
    train_dates, test_dates = split_dates(args.held_out, args.seed)
    formats = QUICK_FORMATS if args.quick else None
    test_pairs = make_pairs(test_dates, np.random.default_rng([args.seed, 2]), formats)
    test_data = encode_pairs(test_pairs, src_vocab, tgt_vocab)

    arch = common.model_args(args, ARCH, ckpt)
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), arch["hidden"], cell=arch["cell"],
                    num_layers=arch["layers"], embedding_dim=arch["embed"] or None,
                    bidirectional_encoder=arch["bidirectional"], attention=arch["attention"])
    optimizer = Adam(model.parameters(), lr=args.lr)
    history = common.restore(ckpt, model, optimizer) if ckpt else common.History()
    optimizer.lr = args.lr  # a resumed run may change the learning rate
    start = len(history.losses)
    optimizer, sync = common.parallel.distribute(args, model, optimizer, start,
                                                 data=common.parallel.digest(train_dates))
    log_v = math.log(len(tgt_vocab))
    checkpoint = common.Checkpoint(args.out, DEMO, model, optimizer, arch, args,
                                   vocab=[src_vocab.itos, tgt_vocab.itos])
    # A fresh data stream per (seed, start step): a resumed run is reproducible too.
    stream = batches(train_dates, args.batch, src_vocab, tgt_vocab,
                     np.random.default_rng([args.seed, 3, start]), formats)

    lengths = [len(s) for s, _ in test_pairs]
    print(f"Seq2seq: human-written dates -> ISO dates ({arch['cell'].upper()} encoder-decoder"
          f"{', bidirectional encoder' if arch['bidirectional'] else ''}"
          f"{', attention' if arch['attention'] else ''})")
    print(f"  data:   {len(train_dates)} training dates x "
          f"{len(formats or FORMATS)} format{'s' if len(formats or FORMATS) > 1 else ''}, "
          f"{len(test_dates)} held-out dates; T_x = {min(lengths)}..{max(lengths)}, "
          f"T_y = 10 (+ <EOS>)")
    print(f"  vocab:  {len(src_vocab)} source / {len(tgt_vocab)} target tokens (3 specials "
          f"each); a uniform guess costs log V = {log_v:.3f} nats per character")
    print(f"  model:  {arch['layers']} layer{'s' if arch['layers'] > 1 else ''} each side, "
          f"hidden {arch['hidden']}, {model.num_parameters():,} parameters; Adam lr "
          f"{args.lr}, clip {args.clip}, batch {args.batch}, {args.steps} steps")
    if start:
        print(f"  resumed from step {start} (recent loss {history.recent():.3f})")
    test_sources = [s for s, _ in test_pairs]
    before = translate(model, test_sources, src_vocab, tgt_vocab)
    acc_before, chars_before = accuracy(before, test_pairs), char_accuracy(before, test_pairs)
    max_loss = common.DIVERGED * log_v
    best = common.BestModel(checkpoint)
    if not start:
        history.evals.append((0, held_out_loss(model, test_data)))
        checkpoint.save_first(history)
        best.offer(0, history.evals[-1][1], history)
    else:
        best.resume(history, held_out_loss(model, test_data))

    def loss_fn(batch):
        if sync:  # this rank's rows, as a share of the whole batch's mean per character
            return model.loss(*dist.shard(*batch), reduction="sum") * (1.0 / float(batch[3].sum()))
        return model.loss(*batch)

    def report(step, hist):
        held = held_out_loss(model, test_data)
        if not held <= max_loss:  # e.g. weights gone to inf after a finite loss
            raise common.Diverged(step, f"the held-out loss is {held:.4g}")
        hist.evals.append((step, held))
        best.offer(step, held, hist)
        pair = test_pairs[step % len(test_pairs)]
        pred = translate(model, [pair[0]], src_vocab, tgt_vocab)[0]
        tqdm.write(f"step {step:5d}  loss {hist.recent():.3f}  held-out {held:.3f}"
                   f" | {pair[0]!r} -> {pred!r} {'✓' if pred == pair[1] else '✗'}")
        if args.early_stop and best.waited(hist) >= args.early_stop and step < args.steps:
            raise common.Stop(f"early stop at step {step}: no better held-out loss in "
                              f"{args.early_stop} evaluations (best {best.loss:.3f} at step "
                              f"{best.step})")

    every = args.eval_every or max(1, args.steps // 10)
    t0 = time.perf_counter()
    common.train(model, optimizer, loss_fn, stream, args.steps, history=history,
                 clip=args.clip, every=every, on_every=report, desc=arch["cell"],
                 progress=not args.no_progress, checkpoint=checkpoint,
                 save_every=args.save_every, max_loss=max_loss, sync=sync)
    seconds = time.perf_counter() - t0
    held_last = held_out_loss(model, test_data)
    path = checkpoint.save_final(history)
    plot = os.path.join(args.out, common.PLOT)
    if common.parallel.primary():  # rank 0 alone draws under --distributed
        common.plot_losses(history, plot, baseline=log_v, evals_label="held-out dates",
                           title=f"dates: {arch['cell']} {arch['hidden']}, per-character loss")
    print(best.finish(history, held_last, args.use_last))
    plots, alignments = [plot], []
    if arch["attention"] and common.parallel.primary():
        plots.append(os.path.join(args.out, "attention.png"))
        alignments = plot_attention(model, test_pairs[:3], src_vocab, tgt_vocab, plots[-1])

    predictions = translate(model, test_sources, src_vocab, tgt_vocab)
    acc_after = accuracy(predictions, test_pairs)
    chars_after = char_accuracy(predictions, test_pairs)
    print("\nHeld-out translations (dates never seen in training):")
    width = max(lengths[:args.show], default=0) + 2
    for (src, tgt), pred in list(zip(test_pairs, predictions))[:args.show]:
        mark = "✓" if pred == tgt else f"✗ (expected {tgt})"
        print(f"  {src!r:>{width}} -> {pred!r:12} {mark}")
    samples = []
    if args.temperature > 0:
        src = test_pairs[0][0]
        samples = translate(model, [src] * 5, src_vocab, tgt_vocab, args.temperature,
                            seed=args.seed)
        print(f"\nSampled at temperature {args.temperature}: {src!r} -> "
              + ", ".join(repr(s) for s in samples))
    per_format = {}
    for fmt in range(len(FORMATS)):
        idx = [i for i, d in enumerate(test_dates) if human(d, fmt) == test_pairs[i][0]]
        per_format[FORMATS[fmt]] = float(np.mean([predictions[i] == test_pairs[i][1]
                                                  for i in idx])) if idx else math.nan
    print("\nExact-match accuracy by source format: " + ", ".join(
        f"{f!r} {a:.0%}" for f, a in per_format.items() if not math.isnan(a)))

    final, initial = history.recent(), history.losses[0] if history.losses else math.nan
    held = held_out_loss(model, test_data)
    print(f"\nLoss per character (nats): initial {initial:.3f} (log V = {log_v:.3f})"
          f" -> final {final:.3f} (mean of the last {history.window} steps), held-out "
          f"{held:.3f}, after "
          f"{len(history.losses)} steps ({len(history.losses) - start} in {seconds:.1f} s)")
    print(f"Held-out exact-match accuracy: {acc_before:.1%} -> {acc_after:.1%} "
          f"({len(test_pairs)} dates; chance is about 1/{(LAST - FIRST).days + 1}); "
          f"characters right: {chars_before:.1%} -> {chars_after:.1%}")
    print("Saved " + ", ".join(plots) + f", {path} (the last model) and {best.path} (the best, "
          f"step {best.step})")
    return {"initial_loss": initial, "final_loss": final, "held_out_loss": held,
            "held_out_last": held_last, "best_step": best.step, "best": best.path,
            "stopped": history.stopped,
            "log_v": log_v, "accuracy": (acc_before, acc_after),
            "char_accuracy": (chars_before, chars_after), "per_format": per_format,
            "start_step": start, "step": len(history.losses), "losses": history.losses,
            "pairs": test_pairs, "predictions": predictions, "samples": samples,
            "vocab": (src_vocab, tgt_vocab), "model": model, "checkpoint": path,
            "plot": plot, "plots": plots, "alignments": alignments, "seconds": seconds}


if __name__ == "__main__":
    common.run(main)
