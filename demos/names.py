"""Invent new first names: a character-level recurrent language model on 1 921 US names.

The classic "dinosaur names" exercise on the US census list: every name is a sequence of
letters ending with <EOS>; the model reads x<t> = y<t-1> (the start token is <EOS>, as if
the previous name had just ended) and predicts a softmax over the next letter.  Training
minimises the per-letter cross-entropy (teacher forcing, padded batches masked by length);
sampling feeds each drawn letter back in until <EOS> appears.

    python -m demos.names                      # LSTM, ~1 minute on 2 cores
    python -m demos.names --cell gru --steps 2000
    python -m demos.names --resume --steps 1500  # continue the run saved in --out

At the end it prints samples at three temperatures (0.5, ``--temperature``, 1.0), scores real
names the model never saw against implausible strings — both with the model of the lowest
held-out loss (``--use-last`` for the last) — and writes ``loss.png``, ``checkpoint.npz``
(the last model) and ``best.npz`` (the best) to ``--out``.
"""

import os

import minigrad as mg
from demos import common
from minigrad.data import Vocab
from models.language_model import LanguageModel

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "names.txt")
HELD_OUT = 100  # the file is already shuffled; its last names are never trained on
# Real given names that are not in the 1990 census lists (so the model never saw them) ...
UNSEEN_REAL = ["liam", "chloe", "aiden", "harper", "zoe"]
# ... and strings no one would name a child.
IMPLAUSIBLE = ["xqzvt", "bbbbbbbb", "qqq", "aaaaaaaaaa", "zxcvbn"]
ARCH = ("cell", "hidden", "layers", "dropout")
DEMO = "names"


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_training_args(parser, steps=1000, lr=3e-3, batch=64, out="runs/names")
    parser.add_argument("--dropout", type=common.FRACTION, default=0.2,
                        help="dropout on the hidden states before the softmax (%(default)s)")
    parser.add_argument("--sample-every", type=common.COUNT, default=0,
                        help="print a few samples every N steps (default: 5 times per run)")
    # --quick: a few seconds — a small model, a high learning rate, few steps
    return common.parse(parser, argv, dict(hidden=64, steps=300, lr=1e-2, batch=32, dropout=0.0))


def load_names(path=DATA):
    return common.read_lines(path)


def shown(name, seen=()):
    """A sample for printing: '*' marks a name from the training list, "" an empty one."""
    return (name or '""') + ("*" if name in seen else "")


def score(model, name):
    """(log P(name), per character), both including the final <EOS> term."""
    lp = model.log_prob(name)
    return lp, lp / (len(name) + 1)


class NamesRun(common.LanguageModelRun):
    def describe(self, step):
        s = self.model.sample(8, max_len=20, temperature=self.args.temperature,
                              seed=self.args.seed + step)
        return f"{super().describe(step)} | " + " ".join(shown(n) for n in s)


def main(argv=None):
    args = parse_args(argv)
    ckpt = common.prepare_out(args, DEMO)
    mg.manual_seed(args.seed)
    names = load_names()
    train_names, held_out = names[:-HELD_OUT], names[-HELD_OUT:]
    seen = set(train_names)

    vocab = Vocab(ckpt["meta"]["vocab"]) if ckpt else Vocab.build(train_names, level="char")
    arch = common.model_args(args, ARCH, ckpt)
    model = LanguageModel(len(vocab), arch["hidden"], cell=arch["cell"],
                          num_layers=arch["layers"], dropout=arch["dropout"], vocab=vocab)
    run = NamesRun.setup(DEMO, model, args, ckpt, vocab, arch, train_names, held_out)

    print(f"Character-level {arch['cell'].upper()} language model on first names")
    print(f"  corpus: {len(names)} US census names ({len(train_names)} to train on, "
          f"{len(held_out)} held out), {sum(map(len, names))} letters")
    print(f"  vocab:  {len(vocab)} tokens = {len(vocab) - 3} letters + <PAD> <UNK> <EOS>; "
          f"a uniform guess costs log V = {run.log_v:.3f} nats per letter")
    print(f"  model:  {arch['layers']} {arch['cell'].upper()} layer"
          f"{'s' if arch['layers'] > 1 else ''}, hidden {arch['hidden']}, "
          f"{model.num_parameters():,} parameters; Adam lr {args.lr}, clip {args.clip}, "
          f"batch {args.batch}, {args.steps} steps")
    if run.start:
        print(f"  resumed from step {run.start} (recent loss {run.history.recent():.3f})")
    run.train(title=f"names: {arch['cell']} {arch['hidden']}, per-letter loss",
              evals_label="held-out names")

    samples = {}
    print("\nSamples ('*' = a real name from the training list; the rest are invented):")
    for temp in sorted({0.5, args.temperature, 1.0}):
        s = model.sample(12, max_len=20, temperature=temp, seed=args.seed)
        samples[temp] = s
        novel = sum(n not in seen for n in s)
        print(f"  T={temp:<4} " + " ".join(shown(n, seen) for n in s)
              + f"   ({novel}/{len(s)} new)")

    print("\nHow plausible is a string?  log P = sum of log P(letter | prefix), incl. <EOS>")
    print(f"  {'':12s} {'log P':>8s} {'per letter':>11s}")
    scores = {}
    for label, group in (("real, unseen", UNSEEN_REAL), ("implausible", IMPLAUSIBLE)):
        for name in group:
            scores[name] = score(model, name)
            print(f"  {name:12s} {scores[name][0]:8.2f} {scores[name][1]:11.2f}   {label}")

    result = run.report(unit="letter")
    (before, after), (ppl_before, ppl_after) = result["held_out_loss"], result["perplexity"]
    print(f"Held-out names: {before:.3f} -> {after:.3f} nats per letter "
          f"(perplexity {ppl_before:.1f} -> {ppl_after:.1f})")
    print(f"Saved {run.plot}, {run.path} (the last model) and {run.best.path} (the best, "
          f"step {run.best.step})")
    return {**result, "samples": samples, "scores": scores, "vocab": vocab}


if __name__ == "__main__":
    common.run(main)
