"""Shared helpers for the demos: flags, the training loop, evaluation, plots, checkpoints.

Kept deliberately small.  A demo builds its data and model, then calls :func:`train` with a
``loss_fn(batch) -> scalar Tensor`` and an endless batch iterator; the loop shows a tqdm
progress bar with the smoothed loss, clips the gradient norm, and returns a
:class:`History` (every step's loss plus the smoothed value) that :func:`plot_losses` draws
and :func:`save_checkpoint` stores next to the model and the optimizer, so ``--resume``
continues where a run stopped — even one stopped with Ctrl-C.
"""

import argparse
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

import minigrad as mg
from minigrad.data import pad_batch
from minigrad.optim import clip_grad_norm_

CHECKPOINT = "checkpoint.npz"
PLOT = "loss.png"


def add_training_args(parser, *, steps, lr, batch, hidden=128, cell="lstm", out="runs/demo"):
    """The flags every sequence-model demo shares (defaults vary per demo)."""
    parser.add_argument("--cell", choices=["rnn", "gru", "lstm"], default=cell,
                        help="recurrent cell (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=hidden, help="hidden size (%(default)s)")
    parser.add_argument("--layers", type=int, default=1, help="stacked layers (%(default)s)")
    parser.add_argument("--steps", type=int, default=steps,
                        help="total optimizer steps; with --resume, the step to train up to "
                             "(%(default)s)")
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate (%(default)s)")
    parser.add_argument("--clip", type=float, default=5.0,
                        help="clip the global gradient norm to this; 0 = off (%(default)s)")
    parser.add_argument("--batch", type=int, default=batch, help="batch size (%(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature (%(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (model, optimizer, step)")
    return add_run_args(parser, out)


def add_run_args(parser, out, quick="a tiny run of a few seconds"):
    """The flags of every demo: --seed, --out, --quick, --no-progress, --threads."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    parser.add_argument("--out", default=out, help="output directory (%(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"{quick} (used by the tests)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (%(default)s: these matrices are small, and spare "
                        "BLAS threads busy-wait against anything else running)")
    return parser


def parse(parser, argv, quick):
    """Parse ``argv``; with ``--quick`` the ``quick`` dict replaces the defaults (flags given
    explicitly still win, so ``--quick --steps 300`` trains 300 steps)."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            parser.error(f"--threads must be positive, got {args.threads}")
        mg.set_num_threads(args.threads)
    return args


def positive(parser, args, *names):
    """Reject non-positive values of integer/float flags with argparse's usual error."""
    for name in names:
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")


@dataclass
class History:
    """Every step's training loss and its exponential moving average (``beta``).

    The average starts at the first loss (not at 0), so it needs no bias correction.
    ``evals`` holds occasional ``(step, value)`` measurements, e.g. a held-out loss.
    """

    losses: list = field(default_factory=list)
    smooth: float = math.nan
    beta: float = 0.98
    evals: list = field(default_factory=list)

    def add(self, loss):
        self.losses.append(loss)
        self.smooth = loss if len(self.losses) == 1 else \
            self.beta * self.smooth + (1 - self.beta) * loss

    def smoothed(self):
        """The moving average after every step, as an array (for plotting)."""
        out, s = np.empty(len(self.losses)), None
        for i, x in enumerate(self.losses):
            s = x if s is None else self.beta * s + (1 - self.beta) * x
            out[i] = s
        return out


def forever(batches):
    """Cycle through an iterable of batches epoch after epoch (each epoch reshuffles)."""
    while True:
        yield from batches


def train(model, optimizer, loss_fn, batches, steps, *, history=None, clip=None, every=0,
          on_every=None, desc="training", progress=True):
    """Train until ``len(history.losses) == steps`` and return the history.

    ``loss_fn(batch)`` returns a scalar loss Tensor; ``batches`` yields batches forever.
    Every ``every`` steps ``on_every(step, history)`` runs (print samples with
    ``tqdm.write`` so the bar stays intact).  Ctrl-C stops training cleanly after the
    current step, so the caller can still save a checkpoint and resume later.
    """
    history = History() if history is None else history
    start = len(history.losses)
    if start >= steps:
        print(f"nothing to train: already at step {start} (target {steps}); ask for more steps")
    model.train()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               disable=not progress)
    try:
        for step in range(start + 1, steps + 1):
            loss = loss_fn(next(batches))
            optimizer.zero_grad()
            loss.backward()
            # NOTE: a non-finite norm means the step would poison every weight; skip it.
            if clip and not math.isfinite(clip_grad_norm_(model.parameters(), clip)):
                tqdm.write(f"step {step}: non-finite gradient norm, update skipped")
                optimizer.zero_grad()
            optimizer.step()
            history.add(float(loss.data))
            bar.update(1)
            bar.set_postfix(loss=f"{history.smooth:.3f}", refresh=False)
            if every and on_every and step % every == 0:
                on_every(step, history)
    except KeyboardInterrupt:
        tqdm.write(f"interrupted at step {len(history.losses)}; stopping cleanly")
    finally:
        bar.close()
    return history


@mg.no_grad()
def evaluate(model, seqs, batch_size=256):
    """Mean cross-entropy per token (nats) of ``model`` on id sequences (each ending with
    <EOS>), in eval mode.  ``exp`` of it is the perplexity."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        ids, lengths, _ = pad_batch(seqs[i:i + batch_size])
        loss, _ = model.loss(ids, lengths, reduction="sum")
        total += float(loss.data)
        count += int(lengths.sum())
    model.train(was)
    return total / count


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: it is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=120):
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_losses(history, path, baseline=None, title="training loss", evals_label="held-out"):
    """Save the loss curve (raw and smoothed) as a PNG, with ``log V`` drawn as a line and
    ``history.evals`` as marked points."""
    plt = pyplot()
    steps = np.arange(1, len(history.losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, history.losses, color="tab:blue", alpha=0.25, lw=0.8, label="loss per step")
    ax.plot(steps, history.smoothed(), color="tab:blue", lw=2, label="smoothed")
    if history.evals:
        xs, ys = zip(*history.evals)
        ax.plot(xs, ys, "o-", color="tab:orange", ms=4, label=evals_label)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1,
                   label=f"uniform guess, log V = {baseline:.2f}")
    ax.set(xlabel="step", ylabel="cross-entropy per token (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_checkpoint(directory, model, optimizer, history, **meta):
    """One atomic file: model, optimizer state, the loss history and ``meta`` (args, vocab)."""
    path = os.path.join(directory, CHECKPOINT)
    mg.save({"model": model, "optim": optimizer, "step": len(history.losses),
             "losses": np.asarray(history.losses, dtype=np.float64), "beta": history.beta,
             "evals": np.asarray(history.evals, dtype=np.float64).reshape(-1, 2),
             "meta": meta}, path)
    return path


def read_checkpoint(directory):
    """The raw checkpoint tree; a clear error if there is none to resume from."""
    path = os.path.join(directory, CHECKPOINT)
    if not os.path.exists(path):
        raise SystemExit(f"--resume: no checkpoint at {path}; run once without --resume first")
    return mg.load(path)


def restore(ckpt, model, optimizer):
    """Load model and optimizer state from ``ckpt``; return the :class:`History` so far."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optim"])
    history = History(beta=float(ckpt["beta"]))
    for loss in np.asarray(ckpt["losses"]).tolist():
        history.add(loss)
    history.evals = [(int(s), v) for s, v in np.asarray(ckpt["evals"]).tolist()]
    if len(history.losses) != ckpt["step"]:
        raise ValueError("checkpoint: the loss history does not match the saved step")
    return history


def model_args(args, names, ckpt=None):
    """The architecture flags; on resume they come from the checkpoint (which wins)."""
    if ckpt is None:
        return {n: getattr(args, n) for n in names}
    saved = ckpt["meta"]["args"]
    changed = [f"--{n} {getattr(args, n)} -> {saved[n]}" for n in names
               if getattr(args, n) != saved[n]]
    if changed:
        print("resuming: using the checkpoint's architecture (" + ", ".join(changed) + ")")
    return {n: saved[n] for n in names}


def describe_args(args):
    """The flags as a JSON-friendly dict (what the checkpoint stores)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}


def make_parser(description):
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def train_language_model(model, optimizer, history, batches, args, *, start, held_ids,
                         vocab, describe, baseline, evals_label, title):
    """The shared middle of the language-model demos: measure the held-out loss, train
    with ``describe(step, history)`` printed every few steps, save the checkpoint and the
    plot.  ``batches`` yields ``(ids, lengths, mask)``.  Returns
    ``(held-out loss before, seconds, checkpoint path, plot path)``."""
    held_before = evaluate(model, held_ids)
    if not start:
        history.evals.append((0, held_before))

    def loss_fn(batch):
        ids, lengths, _ = batch
        return model.loss(ids, lengths)[0]

    def on_every(step, hist):
        hist.evals.append((step, evaluate(model, held_ids)))
        tqdm.write(describe(step, hist))

    every = args.sample_every or max(1, args.steps // 5)
    t0 = time.perf_counter()
    train(model, optimizer, loss_fn, batches, args.steps, history=history, clip=args.clip,
          every=every, on_every=on_every, desc=model.cell_type, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    path = save_checkpoint(args.out, model, optimizer, history, vocab=vocab.itos,
                           args=describe_args(args))
    plot = os.path.join(args.out, PLOT)
    plot_losses(history, plot, baseline=baseline, evals_label=evals_label, title=title)
    return held_before, seconds, path, plot


def report_losses(model, history, held_ids, *, start, seconds, log_v, unit):
    """Print the initial vs final training loss per ``unit``.  Returns the held-out loss now
    and the result fields every language-model demo returns."""
    print(f"\nLoss per {unit} (nats): initial {history.losses[0]:.3f} (log V = {log_v:.3f}) "
          f"-> final smoothed {history.smooth:.3f} after {len(history.losses)} steps "
          f"({len(history.losses) - start} in {seconds:.1f} s)")
    result = {"initial_loss": history.losses[0], "final_loss": history.smooth, "log_v": log_v,
              "start_step": start, "step": len(history.losses), "losses": history.losses}
    return evaluate(model, held_ids), result


def check_sampling_args(parser, args):
    """--clip and --temperature must be >= 0, --dropout in [0, 1)."""
    if args.clip < 0 or args.temperature < 0 or not 0 <= args.dropout < 1:
        parser.error("--clip and --temperature must be >= 0, --dropout in [0, 1)")


def read_lines(path):
    """The non-empty lines of a bundled UTF-8 corpus, stripped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def setup_language_model(model, args, ckpt, vocab, train_texts, held_texts):
    """Adam (restored from ``ckpt`` when resuming), the history, the start step, log V,
    the encoded held-out texts and an endless stream of padded training batches.

    The shuffling stream is seeded by (seed, start step), so a resumed run is reproducible.
    """
    from minigrad.data import SequenceBatches
    from minigrad.optim import Adam

    optimizer = Adam(model.parameters(), lr=args.lr)
    history = restore(ckpt, model, optimizer) if ckpt else History()
    optimizer.lr = args.lr  # a resumed run may change the learning rate
    start = len(history.losses)
    train_ids = [vocab.encode(t, add_eos=True) for t in train_texts]
    held_ids = [vocab.encode(t, add_eos=True) for t in held_texts]
    batches = forever(SequenceBatches(train_ids, args.batch,
                                      rng=np.random.default_rng([args.seed, start])))
    return optimizer, history, start, math.log(len(vocab)), held_ids, batches
