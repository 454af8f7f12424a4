"""Shared helpers for the demos, by concern: :mod:`.flags`, :mod:`.training` (the loop, the
history, evaluation), :mod:`.interrupts` (Ctrl-C, the entry point :func:`run`),
:mod:`.plots`, :mod:`.checkpoints` and :mod:`.lm` (a language-model run as one object).

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
* if the final save fails, the model is written to a rescue file whose path is printed;
* Ctrl-C finishes the step in flight, saves, prints the summary and exits with code 130
  (a second Ctrl-C exits at once); the best model by held-out loss is kept as ``best.npz``
  (:class:`BestModel`), ``--early-stop N`` ends a run that stopped improving.
"""

from demos.common import parallel
from demos.common.checkpoints import BestModel, Checkpoint, prepare_out, restore
from demos.common.flags import (
    COUNT,
    FINITE,
    FRACTION,
    NONNEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    add_run_args,
    add_story_args,
    add_training_args,
    describe_args,
    make_parser,
    model_args,
    number,
    parse,
)
from demos.common.interrupts import EXIT_CODE, ctrl_c, is_interrupt, run
from demos.common.lm import LanguageModelRun
from demos.common.plots import plot_losses, pyplot, save_figure
from demos.common.training import (
    BEST,
    CHECKPOINT,
    DIVERGED,
    PLOT,
    Diverged,
    History,
    Stop,
    evaluate,
    forever,
    perplexity,
    read_lines,
    train,
)

__all__ = [
    "BEST", "BestModel", "CHECKPOINT", "COUNT", "Checkpoint", "DIVERGED", "Diverged", "EXIT_CODE",
    "FINITE", "FRACTION", "History", "LanguageModelRun", "NONNEGATIVE", "PLOT", "POSITIVE",
    "POSITIVE_INT", "Stop", "add_run_args", "add_story_args", "add_training_args", "ctrl_c",
    "describe_args", "evaluate", "forever", "is_interrupt", "make_parser", "model_args", "number",
    "parallel", "parse", "perplexity", "plot_losses", "prepare_out", "pyplot", "read_lines",
    "restore", "run", "save_figure", "train"
]
