"""Flags: one validated argparse number type, the flags every demo shares, and parsing
(with ``--quick`` defaults)."""

import argparse
import gc
import math

import minigrad as mg
from demos.common import parallel


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
    parser.add_argument("--early-stop", type=COUNT, default=0, metavar="N",
                        help="stop after N evaluations without a better held-out loss; 0 = "
                             "never (%(default)s)")
    parser.add_argument("--use-last", action="store_true",
                        help="sample and score with the last model, not the best one by "
                             "held-out loss (best.npz)")
    parser.add_argument("--distributed", action="store_true",
                        help="train data-parallel on the ranks of an MPI job: mpiexec -n N "
                             "python -m mpi4py -m demos.NAME --distributed (README)")
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
                        help="minigrad's threads, mg.set_num_threads (%(default)s: results "
                        "are deterministic per count, and idle threads busy-wait against "
                        "anything else running)")
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
    parallel.start(args)  # --distributed: join the MPI job
    if gc.get_freeze_count() == 0:
        mg.freeze_gc()
    return args


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
