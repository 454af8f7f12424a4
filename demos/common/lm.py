"""A language-model demo run as one object: the model, its optimizer, the batches, the
history and the checkpoint.  ``names.py`` and ``words.py`` read top-down::

    run = NamesRun.setup(DEMO, model, args, ckpt, vocab, arch, train_texts, held_texts)
    run.train(title=..., evals_label=...)      # prints run.describe(step) every few steps
    result = run.report(unit="letter")
"""

import math
import os
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from demos.common import parallel
from demos.common.checkpoints import BestModel, Checkpoint, restore
from demos.common.plots import plot_losses
from demos.common.training import (
    DIVERGED,
    PLOT,
    Diverged,
    History,
    Stop,
    evaluate,
    forever,
    perplexity,
    train,
)
from minigrad.data import SequenceBatches
from minigrad.optim import Adam


@dataclass
class LanguageModelRun:
    """One run of a language-model demo.  Subclasses say what to print while training
    (:meth:`describe`)."""

    model: object
    args: object
    optimizer: object
    history: History
    batches: object
    checkpoint: Checkpoint
    held_ids: list
    start: int          # steps already done (a resumed run)
    log_v: float        # what a uniform guess costs: log V nats
    held_before: float = math.nan
    seconds: float = 0.0
    sync: object = None  # --distributed: the training loop's Allreduce hook

    @classmethod
    def setup(cls, demo, model, args, ckpt, vocab, arch, train_texts, held_texts):
        """Adam (restored from ``ckpt`` when resuming), the history, the encoded held-out
        texts, the checkpoint, and an endless stream of padded training batches — seeded by
        (seed, start step), so a resumed run is reproducible."""
        optimizer = Adam(model.parameters(), lr=args.lr)
        history = restore(ckpt, model, optimizer) if ckpt else History()
        optimizer.lr = args.lr  # a resumed run may change the learning rate
        start = len(history.losses)
        train_ids = [vocab.encode(t, add_eos=True) for t in train_texts]
        optimizer, sync = parallel.distribute(args, model, optimizer, start,
                                              data=parallel.digest(vocab.itos, train_ids))
        batches = forever(SequenceBatches(train_ids, args.batch,
                                          rng=np.random.default_rng([args.seed, start])))
        checkpoint = Checkpoint(args.out, demo, model, optimizer, arch, args, vocab=vocab.itos)
        return cls(model, args, optimizer, history, batches, checkpoint,
                   [vocab.encode(t, add_eos=True) for t in held_texts], start,
                   math.log(len(vocab)), sync=sync)

    def describe(self, step):
        """The line printed every few steps (a subclass adds samples)."""
        return (f"step {step:5d}  loss {self.history.recent():.3f}  held-out "
                f"{self.history.evals[-1][1]:.3f}")

    def train(self, title, evals_label):
        """Measure the held-out loss, save the step-0 checkpoint of a fresh run, train with
        :meth:`describe` printed, periodic checkpoints and the best model kept (stopping
        early after ``--early-stop`` evaluations without a better one), save the final
        checkpoint and the plot, then put the best model in place for the summary unless
        ``--use-last``.  Sets ``held_before``, ``held_last``, ``best``, ``seconds``,
        ``path`` and ``plot``."""
        model, args, history = self.model, self.args, self.history
        self.held_before = evaluate(model, self.held_ids)
        max_loss = DIVERGED * self.log_v
        best = self.best = BestModel(self.checkpoint)
        if not self.start:
            history.evals.append((0, self.held_before))
            self.checkpoint.save_first(history)
            best.offer(0, self.held_before, history)
        else:
            best.resume(history, self.held_before)

        def loss_fn(batch):
            ids, lengths, _ = batch
            if self.sync:  # this rank's rows, as a share of the whole batch's mean
                return parallel.lm_loss(model, ids, lengths)
            return model.loss(ids, lengths)[0]

        def on_every(step, hist):
            held = evaluate(model, self.held_ids)
            if not held <= max_loss:  # e.g. weights gone to inf after a finite loss
                raise Diverged(step, f"the held-out loss is {held:.4g}")
            hist.evals.append((step, held))
            best.offer(step, held, hist)
            tqdm.write(self.describe(step))
            if args.early_stop and best.waited(hist) >= args.early_stop and step < args.steps:
                raise Stop(f"early stop at step {step}: no better held-out loss in "
                           f"{args.early_stop} evaluations (best {best.loss:.3f} at step "
                           f"{best.step})")

        every = args.sample_every or max(1, args.steps // 5)
        t0 = time.perf_counter()
        train(model, self.optimizer, loss_fn, self.batches, args.steps, history=history,
              clip=args.clip, every=every, on_every=on_every, desc=model.cell_type,
              progress=not args.no_progress, checkpoint=self.checkpoint,
              save_every=args.save_every, max_loss=max_loss, sync=self.sync)
        self.seconds = time.perf_counter() - t0
        self.held_last = evaluate(model, self.held_ids)
        self.path = self.checkpoint.save_final(history)
        self.plot = os.path.join(args.out, PLOT)
        if parallel.primary():
            plot_losses(history, self.plot, baseline=self.log_v, evals_label=evals_label,
                        title=title)
        print(best.finish(history, self.held_last, args.use_last))

    def report(self, unit):
        """Print the initial vs final training loss per ``unit`` (the final one is the mean
        of the last ``history.window`` steps); return the fields every language-model demo
        returns, with the held-out loss before and after (of the model the summary is
        from: the best, or the last with ``--use-last``)."""
        h = self.history
        if h.losses:
            print(f"\nLoss per {unit} (nats): initial {h.losses[0]:.3f} (log V = "
                  f"{self.log_v:.3f}) -> final {h.recent():.3f} (mean of the last {h.window} "
                  f"steps) after {len(h.losses)} steps ({len(h.losses) - self.start} in "
                  f"{self.seconds:.1f} s)")
        else:
            print(f"\nLoss per {unit} (nats): no training step was taken")
        held_after = evaluate(self.model, self.held_ids)
        return {"initial_loss": h.losses[0] if h.losses else math.nan, "final_loss": h.recent(),
                "log_v": self.log_v, "start_step": self.start, "step": len(h.losses),
                "losses": h.losses, "stopped": h.stopped,
                "held_out_loss": (self.held_before, held_after), "held_out_last": self.held_last,
                "perplexity": (perplexity(self.held_before), perplexity(held_after)),
                "best_step": self.best.step, "best": self.best.path,
                "model": self.model, "checkpoint": self.path, "plot": self.plot}
