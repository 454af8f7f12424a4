"""Checkpoints that never lose a run: atomic saves that name the demo and the architecture
actually used, an ``--out`` checked before training, resume, a rescue file, and the best
model by held-out loss kept beside the last one."""

import math
import os
import tempfile
import time

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos.common.flags import describe_args
from demos.common.parallel import primary
from demos.common.training import BEST, CHECKPOINT, History
from minigrad.distributed import broadcast_object


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
        """Write the checkpoint now (atomically; on rank 0 alone under ``--distributed``);
        raises OSError naming the target."""
        self.write(self.path, history)
        self.saved_step = len(history.losses)
        return self.path

    def write(self, path, history, **meta):
        if primary():
            mg.save({"model": self.model, "optim": self.optimizer, "step": len(history.losses),
                     "losses": np.asarray(history.losses, dtype=np.float64),
                     "evals": np.asarray(history.evals, dtype=np.float64).reshape(-1, 2),
                     "meta": {**self.meta, **meta}}, path)

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


class BestModel:
    """The model with the lowest held-out loss so far: its weights in memory and, as a
    complete checkpoint of that step, ``best.npz`` beside ``checkpoint.npz`` (the last).

    A fresh run starts from the step-0 model; a resumed run from its ``best.npz`` when that
    is this demo's and not newer than the checkpoint resumed, else from the model resumed.
    """

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.path = os.path.join(os.path.dirname(checkpoint.path), BEST)
        self.step, self.loss, self.state = None, math.inf, None

    def resume(self, history, held):
        """On ``--resume``: the run's best so far (or the model resumed, held-out ``held``).
        Under ``--distributed`` rank 0 reads it and sends it to every rank: all ranks must
        take the same early-stopping decisions."""
        ckpt = broadcast_object(_load(self.path, None) if primary() and
                                os.path.exists(self.path) else None)
        best = ckpt["meta"].get("best") if _demo_of(ckpt) == self.checkpoint.demo else None
        if isinstance(best, dict) and ckpt["step"] <= len(history.losses):
            self.step, self.loss, self.state = ckpt["step"], best["held_out"], ckpt["model"]
        else:
            self.offer(len(history.losses), held, history)

    def offer(self, step, held, history):
        """Keep the model now if ``held`` (its held-out loss at ``step``) is the lowest yet.
        A failed write of ``best.npz`` is reported; training goes on."""
        if not held < self.loss:
            return False
        self.step, self.loss, self.state = step, held, self.checkpoint.model.state_dict()
        try:
            self.checkpoint.write(self.path, history, best={"step": step, "held_out": held})
        except OSError as e:
            tqdm.write(f"warning: step {step}: {e}; the best model is kept in memory only")
        return True

    def waited(self, history):
        """Evaluations since the best one."""
        return sum(1 for s, _ in history.evals if s > self.step)

    def finish(self, history, held_last, use_last):
        """After the final save: offer the last model (held-out ``held_last``), put the best
        weights in the model unless ``use_last``, and say which model the summary is from."""
        last = len(history.losses)
        self.offer(last, held_last, history)
        if self.step == last:
            return (f"\nThe last model (step {last}) has the best held-out loss so far "
                    f"({held_last:.3f}): the summary below comes from it.")
        if use_last:
            return (f"\nThe summary below comes from the last model (step {last}, held-out "
                    f"{held_last:.3f}), as --use-last asks; the best (step {self.step}, "
                    f"{self.loss:.3f}) is in {self.path}.")
        self.checkpoint.model.load_state_dict(self.state)
        return (f"\nThe summary below comes from the best model by held-out loss: step "
                f"{self.step} ({self.loss:.3f}; the last, step {last}: {held_last:.3f}), "
                f"kept in {self.path}. --use-last for the last one.")


def prepare_out(args, demo):
    """Before anything is trained: create ``--out`` and check it is writable; with
    ``--resume`` return the checkpoint to continue (checked to be this demo's), else refuse
    to overwrite a longer run or another demo's run without ``--force``.  Errors exit with
    a message saying what is wrong and what to do.  Under ``--distributed`` rank 0 alone
    does this and sends the checkpoint to every rank."""
    return broadcast_object(_prepare_out(args, demo) if primary() else None)


def _prepare_out(args, demo):
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"--out {args.out}: is a file, not a directory; choose another --out "
                         "(a directory for the checkpoint and the plot)")
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
