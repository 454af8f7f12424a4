"""Shared helpers for the demos: flags, the training loop, evaluation, plots, checkpoints.

Kept deliberately small.  A demo builds its data and model, then calls :func:`train` with a
``loss_fn(batch) -> scalar Tensor`` and an endless batch iterator; the loop shows a tqdm
progress bar with the recent loss, clips the gradient norm, and returns a :class:`History`
(every step's loss) that :func:`plot_losses` draws.

What a run never loses (see the README, "Runs that never lose work"):

* every numeric flag is checked by one argparse type (:func:`number`): a bad value is an
  argparse error, never a traceback;
* ``--out`` is checked before training: a fresh run writes its step-0 checkpoint first (so
  an unwritable or full directory fails at once), and refuses to overwrite a longer run or
  another demo's run without ``--force``; ``--quick`` has its own default ``--out``;
* a :class:`Checkpoint` is saved atomically every ``--save-every`` steps and at the end,
  recording the demo's name and the architecture actually used, so ``--resume`` (even with
  other architecture flags) continues where a run stopped — after Ctrl-C, a crash or
  ``kill -9``;
* divergence (a non-finite loss or gradient norm, or a loss far above log V) stops the run
  with one line naming the step and the fix; the last good checkpoint stays;
* if the final save fails, the model is written to a rescue file whose path is printed.
"""

import argparse
import gc
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

import minigrad as mg
from minigrad.data import pad_batch
from minigrad.optim import clip_grad_norm_, grad_norm

CHECKPOINT = "checkpoint.npz"
PLOT = "loss.png"
DIVERGED = 4.0  # a loss above DIVERGED * log V (a uniform guess costs log V) has diverged


# ---------------------------------------------------------------------------- flags

def number(kind, low=None, high=None, *, low_open=False, high_open=False):
    """An argparse ``type=`` for numeric flags: ``kind`` (int or float), finite, within
    [low, high] (an end left out is unbounded; ``*_open`` excludes it).  A bad value gives
    argparse's usual error naming the flag, e.g. ``argument --lr: expected a finite number
    > 0, got 'nan'``."""
    parts = ["an integer" if kind is int else "a finite number"]
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'and ' if low is not None else ''}{'<' if high_open else '<='} {high}")
    what = " ".join(parts)

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(v)) \
                or (low is not None and (v < low or (low_open and v == low))) \
                or (high is not None and (v > high or (high_open and v == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    parse.__name__ = what  # argparse names the type in some messages
    return parse


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)  # 0 allowed (it usually means "off" or "the default")
POSITIVE = number(float, 0, low_open=True)
NONNEGATIVE = number(float, 0)
FRACTION = number(float, 0, 1, high_open=True)
FINITE = number(float)


def add_training_args(parser, *, steps, lr, batch, hidden=128, cell="lstm", out="runs/demo"):
    """The flags every sequence-model demo shares (defaults vary per demo)."""
    parser.add_argument("--cell", choices=["rnn", "gru", "lstm"], default=cell,
                        help="recurrent cell (default: %(default)s)")
    parser.add_argument("--hidden", type=POSITIVE_INT, default=hidden,
                        help="hidden size (%(default)s)")
    parser.add_argument("--layers", type=POSITIVE_INT, default=1,
                        help="stacked layers (%(default)s)")
    parser.add_argument("--steps", type=POSITIVE_INT, default=steps,
                        help="total optimizer steps; with --resume, the step to train up to "
                             "(%(default)s)")
    parser.add_argument("--lr", type=POSITIVE, default=lr,
                        help="Adam learning rate (%(default)s)")
    parser.add_argument("--clip", type=NONNEGATIVE, default=5.0,
                        help="clip the global gradient norm to this; 0 = off (%(default)s)")
    parser.add_argument("--batch", type=POSITIVE_INT, default=batch,
                        help="batch size (%(default)s)")
    parser.add_argument("--temperature", type=NONNEGATIVE, default=0.8,
                        help="sampling temperature; 0 = greedy (%(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (model, optimizer, step)")
    parser.add_argument("--save-every", type=COUNT, default=100,
                        help="save the checkpoint every N steps, atomically; 0 = only at the "
                             "start and the end (%(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="let a fresh run overwrite a longer run (or another demo's run) "
                             "in --out")
    return add_run_args(parser, out)


def add_story_args(parser, steps, hidden, batch, lr, optimizer="Adam", help_for=None):
    """The training flags the story demos share: --steps --hidden --batch --lr, validated;
    ``help_for`` overrides help texts (e.g. ``{"hidden": "hidden size per direction"}``)."""
    help_for = help_for or {}
    for flag, kind, default, text in (
            ("steps", POSITIVE_INT, steps, f"{optimizer} steps per run"),
            ("hidden", POSITIVE_INT, hidden, "hidden size"),
            ("batch", POSITIVE_INT, batch, "batch size"),
            ("lr", POSITIVE, lr, f"{optimizer} learning rate")):
        parser.add_argument(f"--{flag}", type=kind, default=default,
                            help=f"{help_for.get(flag, text)} (%(default)s)")
    return parser


def add_run_args(parser, out, quick="a tiny run of a few seconds"):
    """The flags of every demo: --seed, --out, --quick, --no-progress, --threads."""
    parser.add_argument("--seed", type=COUNT, default=0, help="random seed (%(default)s)")
    parser.add_argument("--out", default=out,
                        help="output directory (%(default)s; with --quick: %(default)s-quick)")
    parser.add_argument("--quick", action="store_true", help=f"{quick} (used by the tests)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=POSITIVE_INT, default=1,
                        help="BLAS threads (%(default)s: these matrices are small, and spare "
                        "BLAS threads busy-wait against anything else running)")
    return parser


def parse(parser, argv, quick):
    """Parse ``argv``; with ``--quick`` the ``quick`` dict replaces the defaults (flags given
    explicitly still win, so ``--quick --steps 300`` trains 300 steps), and the default
    ``--out`` gains a ``-quick`` suffix, so a quick run never replaces a full run's files.

    Also opts in to :func:`minigrad.freeze_gc` once per process (the demos are programs,
    not libraries: they may change the interpreter's collection)."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**{"out": parser.get_default("out") + "-quick", **quick})
        args = parser.parse_args(argv)
    mg.set_num_threads(args.threads)
    if gc.get_freeze_count() == 0:
        mg.freeze_gc()
    return args


@dataclass
class History:
    """Every step's training loss, and occasional ``(step, value)`` evals (held-out loss).

    :meth:`recent` (the mean of the last ``window`` losses) is what the demos report as the
    loss *now*; :meth:`smoothed` (a centred moving average) is what the plots draw.  Both
    track the data: an exponential average started at the first, highest loss lagged far
    above a falling curve and overstated the final loss.
    """

    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    window: int = 20

    def add(self, loss):
        self.losses.append(loss)

    def recent(self, k=None):
        """The mean of the last ``k`` (default ``window``) losses; NaN before any step."""
        tail = self.losses[-(k or self.window):]
        return math.fsum(tail) / len(tail) if tail else math.nan

    def smoothed(self):
        """A centred moving average over ``window`` steps (narrower near both ends, still
        centred), as an array: it never lags behind the data."""
        x = np.asarray(self.losses, dtype=np.float64)
        n = len(x)
        i = np.arange(n)
        # The window shrinks symmetrically near both ends, so it stays centred (no lag).
        half = np.minimum(np.minimum(i, n - 1 - i), self.window // 2)
        c = np.concatenate([[0.0], np.cumsum(x)])
        return (c[i + half + 1] - c[i - half]) / (2 * half + 1)


def forever(batches):
    """Cycle through an iterable of batches epoch after epoch (each epoch reshuffles)."""
    while True:
        yield from batches


class Diverged(Exception):
    """Training diverged at ``step``; ``str()`` says why.  :func:`train` turns it into a
    one-line exit; an ``on_every`` callback may raise it too (e.g. a NaN held-out loss)."""

    def __init__(self, step, why):
        super().__init__(why)
        self.step = step


def perplexity(nats):
    """exp(nats), inf rather than OverflowError for a diverged loss."""
    return math.exp(nats) if nats < 700 else math.inf


def train(model, optimizer, loss_fn, batches, steps, *, history=None, clip=None, every=0,
          on_every=None, desc="training", progress=True, checkpoint=None, save_every=0,
          max_loss=math.inf):
    """Train until ``len(history.losses) == steps`` and return the history.

    ``loss_fn(batch)`` returns a scalar loss Tensor; ``batches`` yields batches forever.
    Every ``every`` steps ``on_every(step, history)`` runs (print samples with
    ``tqdm.write`` so the bar stays intact); every ``save_every`` steps ``checkpoint``
    (a :class:`Checkpoint`) is saved — a failed periodic save is reported and training
    goes on, the previous checkpoint intact.  Ctrl-C stops training cleanly after the
    current step, so the caller can still save and resume later.

    Divergence — a non-finite loss or gradient norm, or a loss above ``max_loss`` — raises
    SystemExit with one line: the step, the reason, the fix (lower --lr, use --clip) and
    the last good checkpoint, which is left as it was.
    """
    history = History() if history is None else history
    start = len(history.losses)
    if start >= steps:
        print(f"nothing to train: already at step {start} (target {steps}); ask for more steps")
    model.train()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               disable=not progress)
    step = start
    try:
        for step in range(start + 1, steps + 1):
            loss = loss_fn(next(batches))
            value = float(loss.data)
            if not value <= max_loss:  # NaN fails this comparison too
                raise Diverged(step, f"the loss is {value:.4g}" + (
                    f", far above log V (stopping above {max_loss:.3g})"
                    if math.isfinite(value) else ""))
            optimizer.zero_grad()
            loss.backward()
            params = model.parameters()
            norm = clip_grad_norm_(params, clip) if clip else grad_norm(params)
            if not math.isfinite(norm):
                raise Diverged(step, f"the gradient norm is {norm}")
            optimizer.step()
            history.add(value)
            bar.update(1)
            bar.set_postfix(loss=f"{history.recent():.3f}", refresh=False)
            if every and on_every and step % every == 0:
                on_every(step, history)
            if save_every and checkpoint is not None and step % save_every == 0:
                checkpoint.save_periodic(history)
    except KeyboardInterrupt:
        tqdm.write(f"interrupted at step {len(history.losses)}; stopping cleanly")
    except Diverged as e:
        bar.close()
        kept = (f"; the last good checkpoint (step {checkpoint.saved_step}) is kept at "
                f"{checkpoint.path}" if checkpoint is not None and checkpoint.saved_step
                is not None else "")
        who = f"{checkpoint.demo}.py" if checkpoint is not None else desc
        raise SystemExit(f"{who}: training diverged at step {e.step}: {e}. Lower --lr or "
                         f"clip the gradient norm (--clip 1){kept}") from None
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
    ax.plot(steps, history.smoothed(), color="tab:blue", lw=2,
            label=f"mean over {history.window} steps (centred)")
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


class Checkpoint:
    """The one checkpoint file of a demo run, ``<out>/checkpoint.npz``, saved atomically.

    It holds the model, the optimizer, the loss history and ``meta``: the demo's name, the
    architecture *actually built* (on ``--resume`` that is the checkpoint's, whatever the
    flags say) and the flags.  ``saved_step`` is the step of the last good save (None
    before the first).
    """

    def __init__(self, out, demo, model, optimizer, arch, args, **meta):
        self.path = os.path.join(out, CHECKPOINT)
        self.demo, self.model, self.optimizer = demo, model, optimizer
        self.meta = {"demo": demo, "arch": dict(arch),
                     "args": {**describe_args(args), **arch}, **meta}
        self.saved_step = None

    def save(self, history):
        """Write the checkpoint now (atomically); raises OSError naming the target."""
        mg.save({"model": self.model, "optim": self.optimizer, "step": len(history.losses),
                 "losses": np.asarray(history.losses, dtype=np.float64),
                 "evals": np.asarray(history.evals, dtype=np.float64).reshape(-1, 2),
                 "meta": self.meta}, self.path)
        self.saved_step = len(history.losses)
        return self.path

    def save_first(self, history):
        """The save before training: proves ``--out`` writable with a real checkpoint (a
        read-only or full disk fails now, not after training) and gives a diverging run a
        checkpoint to keep."""
        try:
            return self.save(history)
        except OSError as e:
            raise SystemExit(f"--out: cannot write a checkpoint before training: {e}") from None

    def save_periodic(self, history):
        try:
            self.save(history)
        except OSError as e:
            tqdm.write(f"warning: step {len(history.losses)}: {e}; training goes on, the last "
                       f"good checkpoint (step {self.saved_step}) is kept")

    def save_final(self, history):
        """Save at the end; if that fails, write the model to a rescue file in the temp
        directory instead, print both paths and exit non-zero."""
        try:
            return self.save(history)
        except OSError as e:
            failed = e
        rescue = os.path.join(tempfile.gettempdir(), f"minigrad-rescue-{self.demo}-"
                              f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.npz")
        where = self.path
        self.path = rescue
        try:
            self.save(history)
        except OSError as e:
            raise SystemExit(f"{self.demo}.py: the final checkpoint could not be saved to "
                             f"{where} ({failed}) nor to {rescue} ({e}); the trained model "
                             "is lost") from None
        raise SystemExit(f"{self.demo}.py: the final checkpoint could not be saved to {where} "
                         f"({failed}). The trained model is safe in {rescue}: copy it to "
                         f"{where} and continue with --resume")


def prepare_out(args, demo):
    """Before anything is trained: create ``--out`` and check it is writable; with
    ``--resume`` return the checkpoint to continue (checked to be this demo's), else refuse
    to overwrite a longer run or another demo's run without ``--force``.  Errors exit with
    a message saying what is wrong and what to do."""
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as e:
        raise SystemExit(f"--out {args.out}: the directory is not writable ({e.strerror or e}); "
                         "choose another --out") from None
    path = os.path.join(args.out, CHECKPOINT)
    if args.resume:
        if not os.path.exists(path):
            raise SystemExit(f"--resume: no checkpoint at {path}; run once without --resume "
                             "first")
        ckpt = _load(path, "--resume")
        if _demo_of(ckpt) != demo:
            raise SystemExit(f"--resume: {path} is {_what(ckpt)}, not a checkpoint of "
                             f"{demo}.py; point --out at a {demo}.py run")
        return ckpt
    if os.path.exists(path) and not args.force:
        old = _load(path, None)
        if old is None or _demo_of(old) != demo or old.get("step", 0) > args.steps:
            raise SystemExit(f"--out {args.out} already holds {_what(old)}; a fresh "
                             f"{args.steps}-step {demo}.py run would overwrite it. Use "
                             "--resume to continue it, another --out, or --force")
    return None


def _load(path, flag):
    try:
        ckpt = mg.load(path)
    except ValueError as e:
        if flag is None:
            return None
        raise SystemExit(f"{flag}: {e}") from None
    return ckpt


def _demo_of(ckpt):
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return meta.get("demo") if isinstance(meta, dict) else None


def _what(ckpt):
    """A checkpoint described in a few words, for error messages."""
    if ckpt is None:
        return "a file that is not a readable minigrad checkpoint"
    demo = _demo_of(ckpt)
    if demo is None:
        return (f"a checkpoint without a demo name (keys {sorted(ckpt)[:6]}; an older or "
                "hand-made one)")
    arch = ckpt["meta"].get("arch", {})
    shown = ", ".join(f"{k} {v}" for k, v in arch.items())
    return f"a {demo}.py checkpoint ({shown}; step {ckpt.get('step')})"


def restore(ckpt, model, optimizer):
    """Load model and optimizer state from ``ckpt``; return the :class:`History` so far."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optim"])
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--resume: the checkpoint does not fit this model: {e}") from None
    history = History(losses=np.asarray(ckpt["losses"]).tolist())
    history.evals = [(int(s), v) for s, v in np.asarray(ckpt["evals"]).tolist()]
    if len(history.losses) != ckpt["step"]:
        raise SystemExit("--resume: the checkpoint's loss history does not match its step")
    return history


def model_args(args, names, ckpt=None):
    """The architecture: the flags, or on resume the checkpoint's (which wins)."""
    if ckpt is None:
        return {n: getattr(args, n) for n in names}
    saved = ckpt["meta"].get("arch", {})
    missing = [n for n in names if n not in saved]
    if missing:
        raise SystemExit(f"--resume: the checkpoint does not record {missing} of the "
                         "architecture")
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


def train_language_model(model, optimizer, history, batches, args, *, checkpoint, start,
                         held_ids, describe, baseline, evals_label, title):
    """The shared middle of the language-model demos: measure the held-out loss, save the
    step-0 checkpoint of a fresh run, train with ``describe(step, history)`` printed every
    few steps and periodic checkpoints, save the final checkpoint and the plot.
    ``batches`` yields ``(ids, lengths, mask)``.  Returns
    ``(held-out loss before, seconds, checkpoint path, plot path)``."""
    held_before = evaluate(model, held_ids)
    max_loss = DIVERGED * baseline
    if not start:
        history.evals.append((0, held_before))
        checkpoint.save_first(history)

    def loss_fn(batch):
        ids, lengths, _ = batch
        return model.loss(ids, lengths)[0]

    def on_every(step, hist):
        held = evaluate(model, held_ids)
        if not held <= max_loss:  # e.g. weights gone to inf after a finite loss
            raise Diverged(step, f"the held-out loss is {held:.4g}")
        hist.evals.append((step, held))
        tqdm.write(describe(step, hist))

    every = args.sample_every or max(1, args.steps // 5)
    t0 = time.perf_counter()
    train(model, optimizer, loss_fn, batches, args.steps, history=history, clip=args.clip,
          every=every, on_every=on_every, desc=model.cell_type, progress=not args.no_progress,
          checkpoint=checkpoint, save_every=args.save_every, max_loss=max_loss)
    seconds = time.perf_counter() - t0
    path = checkpoint.save_final(history)
    plot = os.path.join(args.out, PLOT)
    plot_losses(history, plot, baseline=baseline, evals_label=evals_label, title=title)
    return held_before, seconds, path, plot


def report_losses(model, history, held_ids, *, start, seconds, log_v, unit):
    """Print the initial vs final training loss per ``unit`` (the final one is the mean of
    the last ``history.window`` steps).  Returns the held-out loss now and the result
    fields every language-model demo returns."""
    print(f"\nLoss per {unit} (nats): initial {history.losses[0]:.3f} (log V = {log_v:.3f}) "
          f"-> final {history.recent():.3f} (mean of the last {history.window} steps) after "
          f"{len(history.losses)} steps ({len(history.losses) - start} in {seconds:.1f} s)")
    result = {"initial_loss": history.losses[0], "final_loss": history.recent(),
              "log_v": log_v, "start_step": start, "step": len(history.losses),
              "losses": history.losses}
    return evaluate(model, held_ids), result


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
