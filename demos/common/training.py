"""The training loop (progress, clipping, divergence, Ctrl-C, early stopping, periodic
checkpoints), its loss history, and evaluation."""

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos.common.interrupts import ctrl_c, is_interrupt
from minigrad.compiler import whole
from minigrad.data import pad_batch
from minigrad.optim import clip_grad_norm_, grad_norm

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"  # the model with the lowest held-out loss, beside the last checkpoint
PLOT = "loss.png"
DIVERGED = 4.0  # a loss above DIVERGED * log V (a uniform guess costs log V) has diverged
WORTH = 40.0  # seconds a run must have left to start the whole step's compile (~20-35 s of
#               the other core, stopped at exit: make demo's 5-s run would only waste it)


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
    stopped: str = ""  # why training ended before its last step: "interrupted", "early stop"

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


class Stop(Exception):
    """Raised by an ``on_every`` callback to end training cleanly before its last step
    (early stopping); ``str()`` says why and :func:`train` prints it."""


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
          max_loss=math.inf, sync=None):
    """Train until ``len(history.losses) == steps`` and return the history.

    ``loss_fn(batch)`` returns a scalar loss Tensor; ``batches`` yields batches forever.
    Every ``every`` steps ``on_every(step, history)`` runs (print samples with
    ``tqdm.write`` so the bar stays intact; raise :class:`Stop` to end training there);
    every ``save_every`` steps ``checkpoint`` (a :class:`Checkpoint`) is saved — a failed
    periodic save is reported and training goes on, the previous checkpoint intact.
    Ctrl-C stops training after the current step (:mod:`.interrupts`), so the caller can
    still save and resume later; ``history.stopped`` says why training ended early.

    Divergence — a non-finite loss or gradient norm, or a loss above ``max_loss`` — raises
    SystemExit with one line: the step, the reason, the fix (lower --lr, use --clip) and
    the last good checkpoint, which is left as it was.

    ``sync(loss) -> (loss, stop)``, if given, runs after ``backward()``: data-parallel
    training sums every rank's gradients and loss in it, and all ranks stop together
    (:mod:`demos.common.parallel`).

    Without ``sync`` a step is one ``mg.compile``d call — the loss, ``zero_grad()``,
    ``backward()``, clipping and ``step()`` (:func:`whole_step`) — which becomes one Numba
    function after 20 calls, compiled in another process meanwhile; the checks then read
    its loss and its gradients' norm after the update (clipped: a NaN or inf stays one), and
    that compile starts only when steps 21-40 timed say ``WORTH`` seconds are left.  A
    ``loss_fn`` that cannot be compiled that way (one that builds tensors from its batch's
    NumPy data, say) trains with the loop as written out below, from that step on.
    """
    history = History() if history is None else history
    one_call = whole_step(model, optimizer, loss_fn, clip) if sync is None else None
    start = len(history.losses)
    if start >= steps:
        print(f"nothing to train: already at step {start} (target {steps}); ask for more steps")
    model.train()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               disable=not progress)
    clock, after = time.perf_counter(), whole.AFTER
    whole.AFTER = None  # (set again below if this run is long enough to use it)
    with ctrl_c() as interrupt:
        try:
            for step in range(start + 1, steps + 1):
                if interrupt.requested and sync is None:  # with sync: all ranks at once, below
                    break
                batch, loss = next(batches), None
                if one_call is not None:  # (if it cannot compile: the loop below, from here)
                    loss, one_call = _one_call(one_call, batch)
                took = loss is not None  # (the call took the whole step, update included)
                if not took:
                    loss = loss_fn(batch)
                    optimizer.zero_grad()
                    loss.backward()
                value, stop = sync(float(loss.data)) if sync else (float(loss.data), False)
                if not value <= max_loss:  # NaN fails this comparison too
                    raise Diverged(step, f"the loss is {value:.4g}" + (
                        f", far above log V (stopping above {max_loss:.3g})"
                        if math.isfinite(value) else ""))
                params = model.parameters()
                norm = clip_grad_norm_(params, clip) if clip and not took else grad_norm(params)
                if not math.isfinite(norm):
                    raise Diverged(step, f"the gradient norm is {norm}")
                if not took:
                    optimizer.step()
                history.add(value)
                if step == start + 20:  # (steps 21-40 timed: past the first traces)
                    clock = time.perf_counter()
                if step == start + 40 and one_call is not None and after is not None:
                    left = (time.perf_counter() - clock) / 20 * (steps - step)
                    whole.AFTER = after if left >= WORTH else None
                bar.update(1)
                bar.set_postfix(loss=f"{history.recent():.3f}", refresh=False)
                if every and on_every and step % every == 0:
                    on_every(step, history)
                if save_every and checkpoint is not None and step % save_every == 0:
                    checkpoint.save_periodic(history)
                if stop:  # some rank was interrupted: every rank stops after this same step
                    interrupt.requested = True
                    break
        except Stop as e:
            history.stopped = "early stop"
            tqdm.write(str(e))
        except Diverged as e:
            bar.close()
            kept = (f"; the last good checkpoint (step {checkpoint.saved_step}) is kept at "
                    f"{checkpoint.path}" if checkpoint is not None and checkpoint.saved_step
                    is not None else "")
            who = f"{checkpoint.demo}.py" if checkpoint is not None else desc
            raise SystemExit(f"{who}: training diverged at step {e.step}: {e}. Lower --lr or "
                             f"clip the gradient norm (--clip 1){kept}") from None
        except BaseException as e:  # an interrupt raised anyway: the step in flight is lost
            if not is_interrupt(e):
                raise
            interrupt.requested = True
        finally:
            bar.close()
            whole.AFTER = after
        if interrupt.requested:
            history.stopped = "interrupted"
            tqdm.write(f"interrupted at step {len(history.losses)}: stopping cleanly (Ctrl-C "
                       "again to quit at once)")
    return history


def _one_call(step, batch):
    """(loss, step) of a :func:`whole_step` call; (loss, None) when it fell back to eager
    (that call took the step); (None, None) when its trace raised (a loss_fn running NumPy
    on its batch: the loop then runs the step as written, and raises a real error again)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mg.CompileFallbackWarning)
            loss = step(batch)
    except Exception as e:  # noqa: BLE001 - see the docstring
        if is_interrupt(e):  # (Ctrl-C inside a compiled call: train() discards the step)
            raise
        return None, None
    return loss, step if step.why is None else None


def whole_step(model, optimizer, loss_fn, clip=None):
    """``step(batch) -> loss``: one training step as one ``mg.compile``d call."""
    params = list(model.parameters())  # (a generator would be empty at the second trace)

    @mg.compile
    def step(batch):
        loss = loss_fn(batch)
        optimizer.zero_grad()
        loss.backward()
        if clip:
            clip_grad_norm_(params, clip)
        optimizer.step()
        return loss
    return step


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


def read_lines(path):
    """The non-empty lines of a bundled UTF-8 corpus, stripped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
