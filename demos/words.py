"""Write new sentences: a word-level recurrent language model on a small generated corpus.

Each sentence of ``data/sentences.txt`` is a sequence of word and punctuation tokens
ending with <EOS>.  The vocabulary keeps words seen at least twice in the training split;
the rarer ones (and unseen words in the held-out split) become <UNK>, as a real word-level
model must do with an open vocabulary.  An embedding layer feeds the recurrent layer; the
loss is the per-token cross-entropy, and the held-out perplexity exp(loss) says how many
equally likely words the model is choosing between at each step.

    python -m demos.words                  # LSTM, well under a minute on 2 cores
    python -m demos.words --cell gru --steps 2000
    python -m demos.words --resume --steps 2000

Samples come from the model of the lowest held-out loss (``--use-last`` for the last).  Writes
``loss.png`` (training and held-out loss), ``checkpoint.npz`` (the last model) and
``best.npz`` (the best) to ``--out``.
"""

import os
from collections import Counter

import minigrad as mg
from demos import common
from minigrad.data import Vocab, tokenize_words
from models.language_model import LanguageModel

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentences.txt")
HELD_OUT = 300  # the last sentences of the file; never trained on, never in the vocabulary
MIN_COUNT = 2
ARCH = ("cell", "hidden", "layers", "embed", "dropout")
DEMO = "words"


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_training_args(parser, steps=1000, lr=3e-3, batch=32, out="runs/words")
    parser.add_argument("--embed", type=common.POSITIVE_INT, default=64,
                        help="embedding size (%(default)s)")
    parser.add_argument("--dropout", type=common.FRACTION, default=0.4,
                        help="dropout on embeddings and hidden states (%(default)s)")
    parser.add_argument("--sample-every", type=common.COUNT, default=0,
                        help="print a few samples every N steps (default: 5 times per run)")
    return common.parse(parser, argv, dict(hidden=64, embed=32, steps=200, lr=1e-2,
                                           batch=32, dropout=0.0))


def load_sentences(path=DATA):
    return common.read_lines(path)


def unk_report(vocab, sentences):
    """(rare types, their tokens, all tokens) of ``sentences`` that encode as <UNK>."""
    counts = Counter(t for s in sentences for t in tokenize_words(s))
    rare = {t: c for t, c in counts.items() if t not in vocab}
    return len(rare), sum(rare.values()), sum(counts.values()), len(counts)


class WordsRun(common.LanguageModelRun):
    def describe(self, step):
        s = self.model.sample(1, max_len=30, temperature=self.args.temperature,
                              seed=self.args.seed + step)
        return (f"step {step:5d}  loss {self.history.recent():.3f}  held-out perplexity "
                f"{common.perplexity(self.history.evals[-1][1]):7.1f} | {s[0]}")


def main(argv=None):
    args = parse_args(argv)
    ckpt = common.prepare_out(args, DEMO)
    mg.manual_seed(args.seed)
    sentences = load_sentences()
    train_s, held_s = sentences[:-HELD_OUT], sentences[-HELD_OUT:]

    vocab = (Vocab(ckpt["meta"]["vocab"], level="word") if ckpt
             else Vocab.build(train_s, level="word", min_count=MIN_COUNT))
    arch = common.model_args(args, ARCH, ckpt)
    model = LanguageModel(len(vocab), arch["hidden"], cell=arch["cell"],
                          num_layers=arch["layers"], embedding_dim=arch["embed"],
                          dropout=arch["dropout"], vocab=vocab)
    run = WordsRun.setup(DEMO, model, args, ckpt, vocab, arch, train_s, held_s)

    rare_types, rare_tokens, n_tokens, n_types = unk_report(vocab, train_s)
    _, held_unk, held_tokens, _ = unk_report(vocab, held_s)
    print(f"Word-level {arch['cell'].upper()} language model on generated sentences")
    print(f"  corpus: {len(sentences)} sentences ({len(train_s)} to train on, {len(held_s)} "
          f"held out); {n_tokens} training tokens of {n_types} types")
    print(f"  vocab:  {len(vocab)} tokens (words seen >= {MIN_COUNT} times + <PAD> <UNK> "
          f"<EOS>); log V = {run.log_v:.3f} nats")
    print(f"  <UNK>:  {rare_types} rare types = {rare_tokens} training tokens "
          f"({100 * rare_tokens / n_tokens:.1f}%); {held_unk} of {held_tokens} held-out tokens "
          f"({100 * held_unk / held_tokens:.1f}%)")
    print(f"  model:  embedding {arch['embed']}, {arch['layers']} {arch['cell'].upper()} "
          f"layer{'s' if arch['layers'] > 1 else ''}, hidden {arch['hidden']}, "
          f"{model.num_parameters():,} parameters; Adam lr {args.lr}, clip {args.clip}, "
          f"batch {args.batch}, {args.steps} steps")
    if run.start:
        print(f"  resumed from step {run.start} (recent loss {run.history.recent():.3f})")
    run.train(title=f"sentences: {arch['cell']} {arch['hidden']}, per-word loss",
              evals_label="held-out sentences")

    samples = model.sample(8, max_len=30, temperature=args.temperature, seed=args.seed)
    print(f"\nSampled sentences (temperature {args.temperature}, <UNK> never drawn):")
    for s in samples:
        print(f"  {s}")
    greedy = model.sample(1, max_len=30, temperature=0)[0]
    print(f"Greedy (temperature 0): {greedy}")

    result = run.report(unit="token")
    ppl = result["perplexity"]
    print(f"Held-out perplexity: {ppl[0]:.1f} -> {ppl[1]:.1f} "
          f"(a uniform guess over the vocabulary: {len(vocab)})")
    print(f"Saved {run.plot}, {run.path} (the last model) and {run.best.path} (the best, "
          f"step {run.best.step})")
    return {**result, "samples": samples, "greedy": greedy, "held_out": held_s,
            "vocab": vocab}


if __name__ == "__main__":
    common.run(main)
