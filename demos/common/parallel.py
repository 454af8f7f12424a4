"""``--distributed``: a demo trained data-parallel on MPI ranks (:mod:`minigrad.distributed`).

    mpiexec -n 2 python -m mpi4py -m demos.names --distributed

Every rank runs the whole demo with the same flags, data and seed.  Each step every rank
draws the same global batch, takes its rows (``dist.shard``) and computes their loss as a
share of the global batch's mean (Σ over its rows / tokens in the whole batch), so that one
``Allreduce`` — of the gradients, the loss and a stop flag, fused in one buffer — gives
every rank the single-process gradient and loss.  Decisions (divergence, Ctrl-C, early
evaluation results) are therefore the same on every rank, at the same step.

Rank 0 alone writes: it checks ``--out`` and reads the checkpoint (sent to the others, so no
shared file system is needed), prints, draws and saves; the other ranks' standard output
goes to /dev/null (their errors still reach stderr).  With dropout, each rank draws its
masks from its own stream (seed, start step, rank): the run is reproducible for a given
number of ranks, but equals the single-process run only without dropout (one process draws
one mask for the whole batch, in an order no split of the rows reproduces).
"""

import hashlib
import os
import signal
import sys

import numpy as np

import minigrad as mg
from demos.common.interrupts import CtrlC
from minigrad import distributed as dist

_ctrl_c = CtrlC()  # the run's Ctrl-C flag: the training loop's too (interrupts.ctrl_c)


def start(args):
    """For a ``--distributed`` run: join the MPI job, silence ranks other than 0, and turn
    Ctrl-C (mpiexec forwards it to every rank) into a request that all ranks agree on in
    the next step's Allreduce, so they all stop after the same step."""
    if not getattr(args, "distributed", False):
        return
    dist.init()
    if dist.size() > args.batch:
        raise SystemExit(f"--batch {args.batch}: each of the {dist.size()} ranks needs at least "
                         "one row of every batch; use a larger --batch or fewer ranks")
    if dist.rank() > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        args.no_progress = True
    signal.signal(signal.SIGINT, _ctrl_c)


def primary():
    """True on the rank that prints, draws and saves (rank 0; the only one without MPI)."""
    return dist.rank() == 0


def digest(*things):
    """A short fingerprint of data (lists of arrays or strings), for ranks to compare."""
    h = hashlib.sha256()
    for thing in things:
        for x in thing if isinstance(thing, (list, tuple)) else [thing]:
            h.update(x.tobytes() if isinstance(x, np.ndarray) else repr(x).encode())
    return h.hexdigest()[:16]


def distribute(args, model, optimizer, start_step, **agree):
    """Under ``--distributed``: check that every rank built the same model from the same
    data and flags, make the weights equal (``broadcast_parameters``), give each rank its own
    dropout stream, and wrap the optimizer.  Returns ``(optimizer, sync)``: ``sync(loss)
    -> (global loss, stop)`` is the training loop's hook (None without ``--distributed``)."""
    if not getattr(args, "distributed", False):
        return optimizer, None
    dist.broadcast_parameters(model, agree={**{k: getattr(args, k) for k in (
        "seed", "batch", "steps", "lr", "clip")}, "start step": start_step, **agree})
    if dist.size() > 1:
        mg.manual_seed([args.seed, start_step, dist.rank()])
    optimizer = dist.DistributedOptimizer(optimizer, op="sum")

    def sync(loss):
        total, stop = optimizer.synchronize(loss, _ctrl_c.requested)
        return total, stop > 0

    return optimizer, sync


def lm_loss(model, ids, lengths):
    """This rank's share of a language model's mean loss per token over the global batch:
    Σ over its rows / tokens in the whole batch (the whole mean in a single process)."""
    n = float(lengths.sum())
    ids, lengths = dist.shard(ids, lengths)
    return model.loss(ids[:, :lengths.max()], lengths, reduction="sum")[0] * (1.0 / n)
