"""Which cell, how big, how fast?  A hyper-parameter sweep of the names language model.

Searches cell × hidden size × learning rate (log scale), each configuration trained with
``--seeds`` seeds for a fixed budget of ``--steps`` steps and scored by its held-out loss per
letter (the mean over its seeds; lower is better).  Optuna's ask/tell interface proposes the
configurations (TPE, seeded) and its SQLite storage keeps every trial, its settings and
curves in ``<out>/sweep.db``, so an interrupted sweep continues with ``--resume`` (trials that
were running are run again) and the database can be inspected with Optuna's tools.

The trials run in parallel on a ``concurrent.futures`` executor, one thread each (so N
workers use N cores and never oversubscribe them):

    python -m demos.sweep --workers 2                       # one machine: 2 processes
    mpiexec -n 5 python -m mpi4py -m demos.sweep            # MPI: rank 0 leads, 4 workers
    python -m demos.sweep --resume --trials 24              # continue up to 24 trials

Under ``mpiexec`` (``mpi4py.futures.MPICommExecutor``) rank 0 runs Optuna and the other ranks
train, on as many machines as the launcher spans (README: hostfile and Slurm).  With more
than one worker the order in which trials finish steers the sampler, so proposals after the
first ones vary from run to run; each trial itself is reproducible from its seed.

Prints a table of trials and writes ``sweep.png``: held-out loss per trial, and the best
configuration's curves.
"""

import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

import numpy as np

import minigrad as mg
from demos import common
from demos.names import HELD_OUT, load_names
from minigrad import distributed as dist
from minigrad.data import SequenceBatches, Vocab
from models.language_model import LanguageModel

DB, PLOT, STUDY = "sweep.db", "sweep.png", "names"
# Settings every trial of one study must share (a resumed sweep must keep them).
FIXED = ("steps", "batch", "seeds", "dropout", "clip", "cells", "hidden", "lr")


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("--trials", type=common.POSITIVE_INT, default=12,
                   help="configurations to try in all (with --resume: the total) (%(default)s)")
    p.add_argument("--steps", type=common.POSITIVE_INT, default=400,
                   help="Adam steps per run: the fixed budget of every trial (%(default)s)")
    p.add_argument("--seeds", type=common.POSITIVE_INT, default=1,
                   help="runs per configuration, with seeds --seed, --seed+1, ... "
                        "(%(default)s)")
    p.add_argument("--cells", default="rnn,gru,lstm", help="cells to try (%(default)s)")
    p.add_argument("--hidden", default="32,64,128", help="hidden sizes to try (%(default)s)")
    p.add_argument("--lr", type=common.POSITIVE, nargs=2, default=[1e-3, 3e-2],
                   metavar=("LOW", "HIGH"), help="learning-rate range, log scale (%(default)s)")
    p.add_argument("--batch", type=common.POSITIVE_INT, default=64, help="(%(default)s)")
    p.add_argument("--dropout", type=common.FRACTION, default=0.2, help="(%(default)s)")
    p.add_argument("--clip", type=common.POSITIVE, default=5.0, help="(%(default)s)")
    p.add_argument("--workers", type=common.POSITIVE_INT, default=cores(),
                   help="parallel trials on this machine, one core each (default: the cores "
                        "this process may use, %(default)s); under mpiexec: the ranks but 0")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep stored in --out up to --trials trials")
    p.add_argument("--force", action="store_true", help="replace a sweep already in --out")
    p.add_argument("--seed", type=common.COUNT, default=0, help="random seed (%(default)s)")
    p.add_argument("--out", default="runs/sweep",
                   help="output directory (%(default)s; with --quick: %(default)s-quick)")
    p.add_argument("--quick", action="store_true", help="a tiny sweep of a few seconds (tests)")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(out=p.get_default("out") + "-quick", trials=4, steps=40, cells="gru,lstm",
                       hidden="32", batch=32, dropout=0.0)
        args = p.parse_args(argv)
    args.cells = _choices(p, "--cells", args.cells, str, {"rnn", "gru", "lstm"})
    args.hidden = _choices(p, "--hidden", args.hidden, int)
    if args.lr[0] > args.lr[1]:
        p.error(f"argument --lr: LOW {args.lr[0]} is above HIGH {args.lr[1]}")
    return args


def _choices(parser, flag, text, kind, allowed=None):
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or (allowed and not set(values) <= allowed) or (kind is int and min(values) < 1):
        parser.error(f"argument {flag}: expected a comma-separated list of "
                     f"{'/'.join(sorted(allowed)) if allowed else 'positive integers'}, "
                     f"got {text!r}")
    return values


# ---------------------------------------------------------------- one run (in a worker)

def run_trial(cell, hidden, lr, seed, steps, batch, dropout, clip, evals=8):
    """Train one configuration with one seed on one thread; return its held-out curve
    ``[(step, loss)]``, the training losses, the final held-out loss (inf if it diverged)
    and the seconds it took."""
    mg.set_num_threads(1)  # one trial, one core: N workers never oversubscribe N cores
    t0 = time.perf_counter()
    names = load_names()
    train_names, held = names[:-HELD_OUT], names[-HELD_OUT:]
    vocab = Vocab.build(train_names, level="char")
    train_ids = [vocab.encode(t, add_eos=True) for t in train_names]
    held_ids = [vocab.encode(t, add_eos=True) for t in held]
    mg.manual_seed(seed)
    model = LanguageModel(len(vocab), hidden, cell=cell, dropout=dropout, vocab=vocab)
    opt = mg.optim.Adam(model.parameters(), lr=lr)
    batches = common.forever(SequenceBatches(train_ids, batch,
                                             rng=np.random.default_rng([seed, 0])))
    losses, curve, train_seconds = [], [(0, common.evaluate(model, held_ids))], 0.0
    for step in range(1, steps + 1):
        if step == 2:  # the first step compiles the cell on a cold worker: not speed
            t1 = time.perf_counter()
        ids, lengths, _ = next(batches)
        loss = model.loss(ids, lengths)[0]
        opt.zero_grad()
        loss.backward()
        norm = mg.optim.clip_grad_norm_(model.parameters(), clip)
        if not (math.isfinite(loss.item()) and math.isfinite(norm)):
            return {"curve": curve, "losses": losses, "held_out": math.inf,
                    "seconds": time.perf_counter() - t0, "diverged": step,
                    "steps_per_s": math.nan}
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // evals) == 0 or step == steps:
            t2 = time.perf_counter()
            curve.append((step, common.evaluate(model, held_ids)))
            train_seconds -= time.perf_counter() - t2
    train_seconds += time.perf_counter() - t1 if steps > 1 else math.nan
    return {"curve": curve, "losses": losses, "held_out": curve[-1][1],
            "seconds": time.perf_counter() - t0, "diverged": None,
            "steps_per_s": (steps - 1) / train_seconds}


# ---------------------------------------------------------------- the study (the leader)

def open_study(args):
    """The Optuna study in ``<out>/sweep.db``: new, or with ``--resume`` the stored one
    (its fixed settings checked; trials left running by an interrupted sweep are failed and
    queued again)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, DB)
    fixed = {k: getattr(args, k) for k in FIXED}
    if os.path.exists(path) and not args.resume:
        if not args.force:
            raise SystemExit(f"--out {args.out} already holds a sweep ({path}); continue it "
                             "with --resume, or use another --out, or --force to replace it")
        os.remove(path)
    if args.resume and not os.path.exists(path):
        raise SystemExit(f"--resume: no sweep at {path}; run once without --resume first")
    storage = f"sqlite:///{os.path.abspath(path)}"
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="minimize",
                                load_if_exists=args.resume)
    if not args.resume:
        study.set_user_attr("fixed", fixed)
    elif study.user_attrs.get("fixed") != fixed:
        saved = study.user_attrs.get("fixed", {})
        diff = ", ".join(f"--{k} {saved.get(k)} -> {v}" for k, v in fixed.items()
                         if saved.get(k) != v)
        raise SystemExit(f"--resume: the sweep in {path} used other settings ({diff}); its "
                         "trials would not be comparable. Use the same flags or another --out")
    for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):
        study.enqueue_trial(t.params)  # interrupted: run it again, then fail the stale one
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    # A seed per session, so a resumed sweep does not propose the first session's points again.
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))
    return study


def ask(study, args):
    trial = study.ask()
    trial.suggest_categorical("cell", args.cells)
    trial.suggest_categorical("hidden", args.hidden)
    trial.suggest_float("lr", args.lr[0], args.lr[1], log=True)
    return trial


def sweep(args, executor, workers):
    """Keep ``workers`` runs in flight until ``--trials`` trials are finished; tell Optuna
    each trial's mean held-out loss when all its seeds are done."""
    import optuna

    study = open_study(args)
    done = len([t for t in study.trials if "runs" in t.user_attrs])  # told: complete or diverged
    print(f"Sweep of the names language model: {args.trials} trials ({done} done), "
          f"{args.seeds} seed(s) x {args.steps} steps each")
    print(f"  space:   cell in {','.join(args.cells)} x hidden in "
          f"{','.join(map(str, args.hidden))} x lr in [{args.lr[0]}, {args.lr[1]}] (log scale)")
    print(f"  workers: {workers}, 1 thread each; storage: {os.path.join(args.out, DB)} (Optuna, "
          "SQLite)")
    todo, running, results = args.trials - done, {}, {}
    try:
        while todo > 0 or running:
            while todo > 0 and len(running) < workers:
                trial, todo = ask(study, args), todo - 1
                results[trial.number] = []
                for s in range(args.seeds):
                    future = executor.submit(run_trial, seed=args.seed + s, steps=args.steps,
                                             batch=args.batch, dropout=args.dropout,
                                             clip=args.clip, **trial.params)
                    running[future] = trial
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                trial = running.pop(future)
                results[trial.number].append(future.result())
                if len(results[trial.number]) == args.seeds:
                    _tell(study, trial, results.pop(trial.number), optuna)
    except KeyboardInterrupt:
        for future in running:
            future.cancel()
        print(f"interrupted: the finished trials are stored in {os.path.join(args.out, DB)};"
              " continue with --resume", file=sys.stderr)
        raise SystemExit(130) from None
    return report(study, args)


def _tell(study, trial, runs, optuna):
    value = float(np.mean([r["held_out"] for r in runs]))
    trial.set_user_attr("runs", [{**r, "losses": r["losses"][::5]} for r in runs])
    p = trial.params
    if math.isfinite(value):
        study.tell(trial, value)
        what = f"held-out {value:.3f}"
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        what = "diverged"
    print(f"trial {trial.number:3d}  {p['cell']:4s} hidden {p['hidden']:4d}  lr {p['lr']:.4f}"
          f"  {what}  ({sum(r['seconds'] for r in runs):.1f} s)", flush=True)


# ---------------------------------------------------------------- the report

def report(study, args):
    """Print the table of trials (best first) and draw ``sweep.png``; return the rows."""
    rows = []
    for t in study.trials:
        if not t.state.is_finished() or "runs" not in t.user_attrs:
            continue
        runs = t.user_attrs["runs"]
        held = [r["held_out"] for r in runs]
        rows.append({"trial": t.number, **t.params, "held_out": float(np.mean(held)),
                     "spread": float(np.std(held)), "runs": runs,
                     "steps_per_s": float(np.mean([r["steps_per_s"] for r in runs])),
                     "state": t.state.name.lower()})
    rows.sort(key=lambda r: (r["held_out"], r["trial"]))
    print(f"\n{'trial':>5s}  {'cell':4s} {'hidden':>6s} {'lr':>8s}  {'held-out':>8s} "
          f"{'± (seeds)':>9s} {'steps/s':>8s}  state   (steps/s: training alone, after the "
          "first step)")
    for r in rows:
        held = f"{r['held_out']:8.3f}" if math.isfinite(r["held_out"]) else "     inf"
        spread = f"{r['spread']:9.3f}" if len(r["runs"]) > 1 else f"{'—':>9s}"
        print(f"{r['trial']:5d}  {r['cell']:4s} {r['hidden']:6d} {r['lr']:8.4f}  {held} "
              f"{spread} {r['steps_per_s']:8.0f}  "
              f"{'diverged' if r['state'] == 'fail' else r['state']}")
    if not rows:
        return {"rows": rows, "best": None, "plot": None}
    best = rows[0]
    log_v = math.log(len(Vocab.build(load_names()[:-HELD_OUT], level="char")))
    print(f"\nBest: {best['cell']} hidden {best['hidden']} lr {best['lr']:.4f}: held-out "
          f"{best['held_out']:.3f} nats per letter after {args.steps} steps (trial "
          f"{best['trial']}; a uniform guess costs log V = {log_v:.3f})")
    plot = os.path.join(args.out, PLOT)
    draw(rows, best, plot, args)
    print(f"Saved {plot} and {os.path.join(args.out, DB)}")
    return {"rows": rows, "best": best, "plot": plot}


def draw(rows, best, path, args):
    plt = common.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"rnn": "tab:green", "gru": "tab:orange", "lstm": "tab:blue"}
    sizes = {h: 30 + 60 * i for i, h in enumerate(sorted(args.hidden))}
    for r in rows:
        if math.isfinite(r["held_out"]):
            left.scatter(r["trial"], r["held_out"], s=sizes.get(r["hidden"], 40),
                         color=colors[r["cell"]], alpha=0.8, edgecolor="k", lw=0.5)
    done = sorted((r["trial"], r["held_out"]) for r in rows if math.isfinite(r["held_out"]))
    if done:
        xs, ys = zip(*done)
        left.step(xs, np.minimum.accumulate(ys), where="post", color="gray", lw=1,
                  label="best so far")
    for cell in args.cells:
        left.scatter([], [], color=colors[cell], label=cell)
    left.set(xlabel="trial (size: hidden " + ", ".join(map(str, sorted(args.hidden))) + ")",
             ylabel="held-out loss per letter (nats)",
             title=f"{len(rows)} trials, {args.steps} steps each")
    left.grid(alpha=0.3)
    left.legend()
    for i, run in enumerate(best["runs"]):
        xs, ys = zip(*run["curve"])
        right.plot(xs, ys, "o-", ms=3, color="tab:orange", alpha=0.9,
                   label="held-out" if i == 0 else None)
        losses = np.asarray(run["losses"])
        right.plot(1 + 5 * np.arange(len(losses)), losses, color="tab:blue", alpha=0.4,
                   lw=0.8, label="training (every 5th step)" if i == 0 else None)
    right.set(xlabel="step", ylabel="loss per letter (nats)",
              title=f"best: {best['cell']} hidden {best['hidden']} lr {best['lr']:.4f}")
    right.grid(alpha=0.3)
    right.legend()
    common.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    # Trials are submitted as ``demos.sweep.run_trial`` (this module imported by name, even
    # when it runs as __main__), so every worker — a spawned process or an MPI rank — finds
    # it by import.
    from demos import sweep as this

    comm = dist.init()
    if comm is not None and comm.Get_size() > 1:
        from mpi4py.futures import MPICommExecutor

        with MPICommExecutor(comm, root=0) as executor:
            if executor is not None:  # rank 0 leads; the other ranks train until it is done
                return this.sweep(args, executor, comm.Get_size() - 1)
        return None
    if args.workers > cores():
        raise SystemExit(f"--workers {args.workers}: this process may use {cores()} cores; "
                         "a trial uses one, so more workers would only slow every trial down")
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as executor:
        return this.sweep(args, executor, args.workers)


if __name__ == "__main__":
    main()
