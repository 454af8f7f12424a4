"""Data-parallel training on MPI, with Horovod's shape: ``init``, ``rank``, ``size``,
``broadcast_parameters``, ``DistributedOptimizer`` (one fused ``Allreduce`` per step) and
``shard``.  MPI comes from ``mpi4py`` (``pip install 'minigrad[distributed]'`` brings it with
MPICH's ``mpiexec``); launch with ``mpiexec -n N python -m mpi4py script.py`` so that an
exception on one rank aborts the whole job instead of hanging the others.

In a single process everything here is a no-op (size 1, rank 0) and mpi4py is not even
imported, so the same script runs with and without ``mpiexec``::

    dist.init()
    model = build(seed=0)                               # the same seed on every rank ...
    dist.broadcast_parameters(model, agree={"data": digest})   # ... and checked, then made equal
    opt = dist.DistributedOptimizer(optim.Adam(model.parameters()), op="sum")
    for ids, lengths in batches:                        # every rank draws the same global batch
        n = lengths.sum()                               # tokens in the *global* batch
        mine, my_lengths = dist.shard(ids, lengths)     # this rank's rows
        loss = model.loss(mine, my_lengths, reduction="sum")[0] * (1.0 / n)
        opt.zero_grad(); loss.backward()
        (total,) = opt.synchronize(loss.item())         # one Allreduce: gradients and loss
        optim.clip_grad_norm_(model.parameters(), 5.0)  # on the summed gradient: as 1 process
        opt.step()

**Why N ranks train the same model as one process.** The mean loss over a global batch of B
rows is ``Σ_rows L / n`` (n tokens). Each rank computes ``Σ_{its rows} L / n`` — a sum over
its share, divided by the *global* count — so the Allreduce sum of the ranks' gradients is,
in exact arithmetic, the single-process gradient, however unevenly the tokens fall
(``op="average"``, Horovod's default, is right only when every rank's mean has the same
weight). Clipping then sees the global gradient. **Summation order:** within a rank, the
tape's order (each weight's gradient is one GEMM over that rank's rows); across ranks, MPI's
reduction order, which is fixed for a given N and message size, and every rank receives
bitwise the same sum (a test checks the replicas stay identical). One process instead sums
all rows in one GEMM, so N ranks and one process differ only by float32 rounding, ≈1e-7
relative per step. **Dropout** breaks the equality: one process draws one mask for the whole
batch, and no split of the rows draws the same numbers, so give each rank its own stream (the
demos seed it with the rank) and expect equality only at dropout 0.
"""

import math
import os
import sys
import time
import warnings

import numpy as np

from minigrad.core.tensor import effect

__all__ = ["DistributedOptimizer", "broadcast_object", "broadcast_parameters", "init", "rank",
           "shard", "size"]

_world = {"comm": None}
# Set by every common MPI launcher (MPICH/Hydra, Intel MPI, Slurm's PMI-2, PMIx, Open MPI).
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")


def init(comm=None):
    """Join the MPI job (``comm``, default ``MPI.COMM_WORLD``); return the communicator.

    Without a launcher (no ``mpiexec``, mpi4py not imported) this is a single process:
    nothing is imported and None is returned.  Under a launcher without mpi4py installed it
    raises ImportError saying what to install."""
    if comm is None:
        if "mpi4py.MPI" not in sys.modules and not any(v in os.environ for v in _LAUNCHER_VARS):
            _world["comm"] = None
            return None
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("distributed.init: started by an MPI launcher but mpi4py is not "
                              "installed: pip install 'minigrad[distributed]'") from None
        comm = MPI.COMM_WORLD
    _world["comm"] = comm
    if comm.Get_size() > 1 and "mpi4py.run" not in sys.modules:
        warnings.warn("distributed.init: running on several ranks without `python -m mpi4py`: "
                      "an exception on one rank will leave the others waiting forever; launch "
                      "with `mpiexec -n N python -m mpi4py ...`", RuntimeWarning, stacklevel=2)
    return comm


def _comm():
    """The communicator if there are several ranks, else None (everything is a no-op)."""
    comm = _world["comm"]
    return comm if comm is not None and comm.Get_size() > 1 else None


def rank():
    """This process's rank, 0..size()-1 (0 in a single process)."""
    return _world["comm"].Get_rank() if _world["comm"] is not None else 0


def size():
    """The number of ranks (1 in a single process)."""
    return _world["comm"].Get_size() if _world["comm"] is not None else 1


def broadcast_object(obj, root=0):
    """``root``'s ``obj`` on every rank (pickled; for small things such as a checkpoint)."""
    comm = _comm()
    return obj if comm is None else comm.bcast(obj, root=root)


def _named(params):
    """[(name, tensor)] from a Module, a {name: tensor} dict or a list of tensors."""
    if hasattr(params, "named_parameters"):
        return list(params.named_parameters())
    if isinstance(params, dict):
        return list(params.items())
    return [(f"params[{i}]", p) for i, p in enumerate(params)]


def _disagreements(every, root):
    """What each rank's (parameter list, ``agree`` dict) gets wrong against the root's."""
    (want, want_agree), problems = every[root], []
    for r, (have, agree) in enumerate(every):
        if len(have) != len(want):
            problems.append(f"rank {r} has {len(have)} parameter tensors "
                            f"({sum(math.prod(s) for _, s, _ in have):,} values), rank {root} "
                            f"has {len(want)} ({sum(math.prod(s) for _, s, _ in want):,})")
        else:
            problems += [f"parameter {w[0]!r} is {h[1]} {h[2]} on rank {r} but {w[1]} {w[2]} "
                         f"on rank {root}" + (f" (named {h[0]!r} there)" if h[0] != w[0] else "")
                         for h, w in zip(have, want) if h != w][:3]
        for key in sorted(set(agree) | set(want_agree)):
            if agree.get(key) != want_agree.get(key):
                problems.append(f"{key!r} is {agree.get(key)!r} on rank {r} but "
                                f"{want_agree.get(key)!r} on rank {root}")
    return problems


def broadcast_parameters(params, root=0, agree=None):
    """Copy ``root``'s parameters to every rank, in place, after checking that all ranks
    built the same model.

    ``params``: a Module, a ``{name: tensor}`` dict or a list of tensors.  ``agree``: an
    optional dict of small values every rank must agree on (a digest of the training data,
    the seed, the batch size...).  A rank whose parameter names, shapes or dtypes, or whose
    ``agree`` values, differ from the root's makes *every* rank raise ValueError naming the
    ranks and the mismatch — before any training step, instead of a hang or a silently wrong
    sum later.  One ``Bcast`` per dtype of one flat buffer.  A no-op in a single process.
    """
    named = _named(params)
    comm = _comm()
    if comm is None:
        return
    mine = ([(n, tuple(p.shape), str(p.dtype)) for n, p in named], dict(agree or {}))
    problems = _disagreements(comm.allgather(mine), root)
    if problems:
        raise ValueError(f"broadcast_parameters: the {comm.Get_size()} ranks did not build the "
                         "same model and data (every rank must run the same program with the "
                         "same flags and data): " + "; ".join(problems))
    for dtype in sorted({p.dtype.str for _, p in named}):
        group = [p for _, p in named if p.dtype.str == dtype]
        buf = np.concatenate([p.data.ravel() for p in group])
        comm.Bcast(buf, root=root)
        offset = 0
        for p in group:
            p.data[...] = buf[offset:offset + p.data.size].reshape(p.shape)
            offset += p.data.size


def shard(*arrays):
    """This rank's rows of each array of a global batch (all with the same first dimension
    B): rows ``rank·B//size`` to ``(rank+1)·B//size``, so shares differ by at most one row and
    their concatenation in rank order is the global batch.  One array in, one out; several
    in, a tuple out.  The whole arrays in a single process."""
    B = {len(a) for a in arrays}
    if len(B) != 1:
        raise ValueError(f"shard: the arrays of one batch must have the same number of rows, "
                         f"got {[len(a) for a in arrays]}")
    B, r, n = B.pop(), rank(), size()
    if n > B:
        raise ValueError(f"shard: a global batch of {B} rows cannot give each of {n} ranks a "
                         f"row; use a batch of at least {n}")
    out = arrays if n == 1 else tuple(a[r * B // n:(r + 1) * B // n] for a in arrays)
    return out[0] if len(out) == 1 else out


class DistributedOptimizer:
    """Wrap an optimizer so that every step uses the gradients of all ranks.

    ``step()`` first calls :meth:`synchronize` (unless it was called since the last step):
    every parameter's gradient, a flag per parameter (has it a gradient on this rank?) and
    any extra scalars go into **one flat buffer**, reduced by **one** ``Allreduce``; the
    gradients then point into it, summed (``op="sum"``) or averaged over ranks
    (``op="average"``, Horovod's default).  A parameter with no gradient on any rank keeps
    ``grad=None`` (so it is skipped, as in one process).  Everything else — ``lr``,
    ``state_dict``, ``load_state_dict``, ``zero_grad`` — is the wrapped optimizer's, so a
    checkpoint saved here loads into a plain optimizer and back.  ``allreduce_seconds`` adds
    up the time spent in ``Allreduce``.  In a single process ``synchronize`` does nothing.
    """

    def __init__(self, optimizer, op="average"):
        if op not in ("average", "sum"):
            raise ValueError(f"DistributedOptimizer: op must be 'average' or 'sum', got {op!r}")
        self.__dict__.update(optimizer=optimizer, op=op, allreduce_seconds=0.0, _synced=False)

    def __getattr__(self, name):  # only reached for names not set here: the wrapped ones
        return getattr(self.__dict__["optimizer"], name)

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    def synchronize(self, *values):
        """Sum (or average) the gradients over all ranks, in place, and return the sums of
        ``values`` (floats, e.g. each rank's share of the loss) as a tuple — in the same
        Allreduce.  Call it between ``backward()`` and clipping; ``step()`` then skips it.
        (In an ``mg.compile``d step it is replayed when it has no ``values``: they are read
        in Python, and a compiled call would sum the traced ones.)"""
        if values:  # (a trace cannot replay these: read in Python)
            effect("DistributedOptimizer.synchronize() with values")
            return self._sync(*values)
        return effect("DistributedOptimizer.synchronize()", self._sync)

    def _sync(self, *values):
        self._synced = True
        comm = _comm()
        if comm is None:
            return tuple(float(v) for v in values)
        from mpi4py import MPI

        params = self.optimizer.params
        sizes = [p.data.size for p in params]
        n = sum(sizes)
        buf = np.empty(n + len(params) + len(values), np.result_type(*(p.dtype for p in params)))
        # a fresh buffer each step: the gradients below are views into it
        if n:
            np.concatenate([np.zeros(s, buf.dtype) if p.grad is None else p.grad.ravel()
                            for p, s in zip(params, sizes)], out=buf[:n])
        buf[n:n + len(params)] = [p.grad is not None for p in params]
        buf[n + len(params):] = values
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        if self.op == "average":
            buf[:n] *= 1.0 / comm.Get_size()
        offset = 0
        for p, s, present in zip(params, sizes, buf[n:n + len(params)]):
            g = buf[offset:offset + s].reshape(p.shape)
            p.grad = None if not present else g if g.dtype == p.dtype else g.astype(p.dtype)
            offset += s
        return tuple(float(v) for v in buf[n + len(params):])

    def step(self):
        """Synchronize (if not done since the last step), then the wrapped optimizer's step
        (inside an ``mg.compile``d function: both replayed at every call)."""
        effect("DistributedOptimizer.step()", self._step)

    def _step(self):
        if not self._synced:
            self._sync()
        self._synced = False
        self.optimizer.step()

    def zero_grad(self):
        self.optimizer.zero_grad()

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, op={self.op!r}, ranks={size()})"
