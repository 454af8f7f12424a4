"""MPI programs that tests/test_distributed.py starts with ``mpiexec -n N python -m mpi4py``
(not collected by pytest: no ``test_`` prefix).

    python -m mpi4py tests/mpi_scenarios.py train --steps 50 --batch 12 --out result.npz
    python -m mpi4py tests/mpi_scenarios.py raise      # rank 1 raises at step 3
    python -m mpi4py tests/mpi_scenarios.py model      # rank 1 builds a different model
    python -m mpi4py tests/mpi_scenarios.py data       # rank 1 reads different data

:func:`train` is also imported by the tests, to compute the single-process reference in the
test process itself (``distributed=False``: a plain optimizer and the usual mean loss).
"""

import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigrad as mg  # noqa: E402
from minigrad import distributed as dist  # noqa: E402
from minigrad.data import SequenceBatches, Vocab  # noqa: E402
from models.language_model import LanguageModel  # noqa: E402

NAMES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos",
                     "data", "names.txt")


def build(hidden=32, names=400, seed=0, cell="lstm", dropout=0.0):
    """A small character language model and its data: the first ``names`` names."""
    with open(NAMES, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()][:names]
    vocab = Vocab.build(texts, level="char")
    mg.manual_seed(seed)
    model = LanguageModel(len(vocab), hidden, cell=cell, dropout=dropout, vocab=vocab)
    return model, [vocab.encode(t, add_eos=True) for t in texts]


def train(steps=50, batch=12, distributed=True, fail_at=None, clip=0.3, lr=1e-2,
          compiled=False, **build_args):
    """Train ``steps`` Adam steps; return the global losses, the pre-clip gradient norms,
    the final weights and a digest of them (to compare the replicas).  ``compiled``: the
    whole step as one ``mg.compile``d function (no losses or norms: Python numbers)."""
    model, data = build(**build_args)
    opt = mg.optim.Adam(model.parameters(), lr=lr)
    if distributed:
        digest = hashlib.sha256(b"".join(s.tobytes() for s in data)).hexdigest()[:16]
        dist.broadcast_parameters(model, agree={"data": digest, "batch": batch})
        opt = dist.DistributedOptimizer(opt, op="sum")
    if compiled:
        return _train_compiled(model, data, opt, steps, batch, clip)
    epochs = SequenceBatches(data, batch, rng=np.random.default_rng(1))  # 400 % 12: a short
    batches = (b for _ in range(steps) for b in epochs)                   # last batch, 4 rows
    losses, norms = [], []
    for step in range(1, steps + 1):
        ids, lengths, _ = next(batches)
        if step == fail_at and dist.rank() == 1:
            raise RuntimeError(f"planted failure on rank 1 at step {step}")
        if distributed:  # this rank's rows, as a share of the global batch's mean
            mine, my_lengths = dist.shard(ids, lengths)
            loss = model.loss(mine, my_lengths, reduction="sum")[0] * (1.0 / lengths.sum())
        else:
            loss = model.loss(ids, lengths)[0]
        opt.zero_grad()
        loss.backward()
        (value,) = opt.synchronize(loss.item()) if distributed else (loss.item(),)
        norms.append(mg.optim.clip_grad_norm_(model.parameters(), clip))
        opt.step()
        losses.append(value)
    weights = model.state_dict()
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights.values())).hexdigest()
    return {"losses": np.array(losses), "norms": np.array(norms), "weights": weights,
            "digest": digest}


def _train_compiled(model, data, opt, steps, batch, clip):
    @mg.compile
    def step(ids, lengths, scale):
        loss = model.loss(ids, lengths, reduction="sum")[0] * scale
        opt.zero_grad()
        loss.backward()
        if dist.size() > 1:
            opt.synchronize()  # (the global gradient is clipped)
        mg.optim.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss

    epochs = SequenceBatches(data, batch, rng=np.random.default_rng(1))
    batches = (b for _ in range(steps) for b in epochs)
    for _ in range(steps):
        ids, lengths, _ = next(batches)
        scale = np.array(1.0 / lengths.sum(), np.float32)  # (a tensor: not a signature)
        step(*(dist.shard(ids, lengths) if dist.size() > 1 else (ids, lengths)), scale)
    assert step.compiled_calls > steps // 2, step.compiled_calls  # (new shapes: traced)
    weights = model.state_dict()
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights.values())).hexdigest()
    return {"weights": weights, "digest": digest}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["train", "raise", "model", "data"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--out")
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args(argv)
    mg.set_num_threads(1)
    dist.init()
    odd = dist.rank() == 1  # the rank that misbehaves in the fault scenarios
    build_args = {"hidden": 33 if odd and args.scenario == "model" else 32,
                  "names": 399 if odd and args.scenario == "data" else 400}
    result = train(args.steps, args.batch, fail_at=3 if args.scenario == "raise" else None,
                   compiled=args.compiled, **build_args)
    comm = dist.init()  # the communicator again (None in a single process)
    digests = comm.allgather(result["digest"]) if comm is not None else [result["digest"]]
    if dist.rank() == 0 and args.out:
        np.savez(args.out, losses=result.get("losses", []), norms=result.get("norms", []),
                 digests=np.array(digests),
                 **{f"w/{k}": v for k, v in result["weights"].items()})


if __name__ == "__main__":
    main()
