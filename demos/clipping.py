"""Exploding gradients and the cure: the same unstable RNN trained with and without clipping.

A ReLU RNN whose recurrent matrix starts at W_aa = 1.2·I (the IRNN initialisation of Le et
al. 2015, W_aa = I, pushed just past the edge: spectral radius 1.2) learns a short tagging
task — repeat the previous symbol, y<t> = x<t-1>.  Along the units that stay active every
backward step multiplies the gradient by up to 1.2, so ∂L/∂W sums terms that grow like
1.2^T: a gradient thousands of times larger than usual.  Plain SGD at a fixed learning rate
then takes one enormous step, and the weights never come back.

Three runs from the same initial weights, the same batches and the same learning rate:

* no clipping — the gradient norm explodes by orders of magnitude and so does the loss;
  after the blow-up the weights are either non-finite (NaN/inf: reported, not crashed on)
  or every ReLU unit is dead, which pins the loss at log V (a constant prediction);
* ``clip_grad_norm_(params, 5)`` — the chapter's cure: rescale the whole gradient when its
  norm exceeds 5.  The step keeps its direction but its length is bounded, and training
  settles and learns;
* ``clip_grad_value_(params, 5)`` — min-char-rnn's ``np.clip(dparam, -5, 5)``: each
  element is clipped, so a step can still have norm 5·√(number of weights); here that is
  not enough.

The norm recorded every step is the one *before* clipping (``clip_grad_norm_`` returns it;
``grad_norm`` only measures).

    python -m demos.clipping               # ~6 s
    python -m demos.clipping --gain 1.0    # an IRNN at the edge: here all three runs learn

Writes ``clipping.png`` to ``--out``.
"""

import math
import os
import time

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos import common
from minigrad.optim import SGD, clip_grad_norm_, clip_grad_value_, grad_norm
from models.layers import RNN, SequenceTagger

VOCAB = 8
MODES = ("none", "norm", "value")
LABELS = {"none": "no clipping", "norm": "clip_grad_norm_(5)", "value": "clip_grad_value_(±5)"}
PLOT = "clipping.png"


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_story_args(parser, steps=600, hidden=64, batch=32, lr=0.2,
                           optimizer="SGD")
    parser.add_argument("--gain", type=common.POSITIVE, default=1.2,
                        help="initial W_aa = gain·I, its spectral radius (%(default)s)")
    parser.add_argument("--clip", type=common.POSITIVE, default=5.0,
                        help="max_norm and clip_value of the clipped runs (%(default)s)")
    parser.add_argument("--length", type=common.number(int, 2), default=20,
                        help="sequence length T (%(default)s)")
    common.add_run_args(parser, "runs/clipping", quick="a run of a few seconds (400 steps)")
    return common.parse(parser, argv, dict(steps=400))


def make_data(rng, batch, T):
    """x (B, T) ids; y<t> = x<t-1>; the first step has no target (mask False)."""
    x = rng.integers(0, VOCAB, size=(batch, T))
    y = np.zeros_like(x)
    y[:, 1:] = x[:, :-1]
    mask = np.ones((batch, T), dtype=bool)
    mask[:, 0] = False
    return x, y, mask


def make_model(args):
    rnn = RNN(VOCAB, args.hidden, nonlinearity="relu")
    W_a = rnn.layers[0].cell.W_a  # [W_aa : W_ax], (H, H + I)
    W_a.data[:, :args.hidden] = args.gain * np.eye(args.hidden, dtype=W_a.dtype)
    return SequenceTagger(rnn, VOCAB)


def run(mode, args):
    """Train one model; returns per-step pre-clip norms, applied-step norms and losses."""
    mg.manual_seed(args.seed)
    model = make_model(args)
    params = list(model.parameters())
    optimizer = SGD(params, lr=args.lr)
    rng = np.random.default_rng(args.seed)  # the same batches for every mode
    norms, applied, losses = [], [], []
    step_loss = mg.compile(lambda x, y, mask: mg.cross_entropy(model(x), y, mask=mask))
    nonfinite = None
    bar = tqdm(range(args.steps), desc=LABELS[mode], unit="step", dynamic_ncols=True,
               disable=args.no_progress)
    # NOTE: an exploding run overflows float32 on purpose; NumPy's warnings would only
    # repeat what the recorded norms and losses already say.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in bar:
            x, y, mask = make_data(rng, args.batch, args.length)
            loss = step_loss(x, y, mask)  # the whole step, one traced program
            optimizer.zero_grad()
            loss.backward()
            if mode == "norm":
                norm = clip_grad_norm_(params, args.clip)
            else:
                norm = grad_norm(params)
                if mode == "value":
                    clip_grad_value_(params, args.clip)
            applied.append(grad_norm(params) if mode != "none" else norm)
            norms.append(norm)
            losses.append(float(loss.data))
            if not (math.isfinite(losses[-1]) and math.isfinite(norm)):
                nonfinite = step + 1
                tqdm.write(f"  {LABELS[mode]}: non-finite loss/gradient at step {step + 1} "
                           f"(loss {losses[-1]}, norm {norm}); the weights are lost, stopping")
                break
            optimizer.step()
            bar.set_postfix(loss=f"{losses[-1]:.3g}", norm=f"{norm:.2g}", refresh=False)
    bar.close()
    return {"norms": np.array(norms), "applied": np.array(applied),
            "losses": np.array(losses), "nonfinite_step": nonfinite,
            "num_weights": sum(p.size for p in params), "model": model}


def summary(h, log_v):
    L, N = h["losses"], h["norms"]
    finite = np.isfinite(L)
    last = L[-20:]
    return {
        "max_norm": float(np.max(N[np.isfinite(N)])) if np.isfinite(N).any() else math.inf,
        "max_applied": float(np.max(h["applied"][np.isfinite(h["applied"])]))
        if np.isfinite(h["applied"]).any() else math.inf,
        "max_loss": float(np.max(L[finite])) if finite.any() else math.inf,
        "initial_loss": float(L[0]),
        "final_loss": float(np.mean(last)) if h["nonfinite_step"] is None else math.nan,
        "dead": h["nonfinite_step"] is None and abs(float(np.mean(last)) - log_v) < 0.02
        and float(np.std(last)) < 0.02,
    }


def plot(path, hist, args, log_v):
    plt = common.pyplot()

    colors = {"none": "tab:red", "norm": "tab:green", "value": "tab:orange"}
    # the value-clipped run may retrace the unclipped one exactly: draw it dashed on top
    style = {"none": dict(lw=2.2, alpha=0.8), "norm": dict(lw=1), "value": dict(lw=1.2, ls="--")}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for mode in MODES:
        h = hist[mode]
        steps = np.arange(1, len(h["norms"]) + 1)
        ax1.loglog(steps, h["norms"], color=colors[mode], label=LABELS[mode], **style[mode])
        ax2.loglog(steps, h["losses"], color=colors[mode], label=LABELS[mode], **style[mode])
        if h["nonfinite_step"] is not None:
            s = h["nonfinite_step"]
            for ax in (ax1, ax2):
                ax.axvline(s, color=colors[mode], ls=":", lw=1)
                ax.annotate("NaN/inf", (s, 1.0), color=colors[mode], fontsize=8,
                            xycoords=("data", "axes fraction"), va="top")
    ax1.axhline(args.clip, color="gray", ls="--", lw=1, label=f"max_norm = {args.clip:g}")
    ax1.set(xlabel="step (log scale: the explosion takes a few steps)",
            ylabel="gradient norm before clipping (log scale)",
            title="‖∇L‖ per step")
    ax2.axhline(log_v, color="gray", ls="--", lw=1, label=f"log V = {log_v:.2f} (constant guess)")
    ax2.set(xlabel="step (log scale)", ylabel="training loss (log scale)", title="loss per step")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"ReLU RNN, W_aa = {args.gain:g}·I at init, plain SGD lr {args.lr:g}: "
                 "exploding gradients with and without clipping")
    common.save_figure(fig, path, dpi=110)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_v = math.log(VOCAB)
    print("Exploding gradients: a ReLU RNN learns y<t> = x<t-1> over T = "
          f"{args.length} steps ({VOCAB} symbols; a constant guess costs log V = {log_v:.2f})")
    print(f"  W_aa = {args.gain:g}·I at init (spectral radius {args.gain:g}), hidden "
          f"{args.hidden}, plain SGD lr {args.lr:g}, batch {args.batch}, {args.steps} steps, "
          "identical initial weights and batches in every run")
    hist, stats = {}, {}
    t0 = time.perf_counter()
    for mode in MODES:
        hist[mode] = run(mode, args)
        stats[mode] = summary(hist[mode], log_v)
    seconds = time.perf_counter() - t0

    print(f"\n  {'run':22s} {'max ‖∇L‖':>10s} {'max step ‖g‖':>13s} {'max loss':>10s} "
          f"{'first loss':>10s} {'final loss':>10s}  outcome")
    for mode in MODES:
        s, h = stats[mode], hist[mode]
        if h["nonfinite_step"] is not None:
            outcome = f"NaN/inf at step {h['nonfinite_step']}"
        elif s["dead"]:
            outcome = "dead: stuck at log V"
        elif s["final_loss"] < 0.5 * log_v:
            outcome = "learned"
        else:
            outcome = "not learned"
        s["outcome"] = outcome
        final = "—" if math.isnan(s["final_loss"]) else f"{s['final_loss']:.3f}"
        print(f"  {LABELS[mode]:22s} {s['max_norm']:10.2e} {s['max_applied']:13.2e} "
              f"{s['max_loss']:10.2e} {s['initial_loss']:10.3f} {final:>10s}  {outcome}")
    print("  (max ‖∇L‖: before clipping; max step ‖g‖: the gradient SGD actually applied; "
          "final loss: mean of the last 20 steps)")

    none, norm = stats["none"], stats["norm"]
    first = hist["none"]["norms"][0]
    print("\nWhat to see:")
    print(f"  * The first gradient already has norm {first:.0f}; without clipping one SGD step "
          f"of length lr·‖∇L‖ = {args.lr * first:.0f} throws the weights far away: the "
          f"gradient norm reaches {none['max_norm']:.1e} and the loss {none['max_loss']:.1e}"
          + (", then both turn NaN/inf." if hist["none"]["nonfinite_step"] else "."))
    print(f"    Outcome without clipping: {none['outcome']}"
          + (" — every ReLU unit is off, the output is a constant guess, and the only "
             "gradient left (on the output bias) cannot revive them." if none["dead"] else "."))
    print(f"  * clip_grad_norm_ rescales every step to norm ≤ {args.clip:g} (same direction): "
          f"the loss goes {norm['initial_loss']:.2f} → {norm['final_loss']:.3f}.")
    print(f"  * clip_grad_value_(±{args.clip:g}) clips each element; with "
          f"{hist['value']['num_weights']} weights a step can still be "
          f"{args.clip:g}·√n long — max applied norm here {stats['value']['max_applied']:.1e}: "
          f"{stats['value']['outcome']}.")
    path = os.path.join(args.out, PLOT)
    plot(path, hist, args, log_v)
    print(f"  ({seconds:.1f} s; saved {path})")
    return {"histories": hist, "stats": stats, "log_v": log_v, "plot": path,
            "seconds": seconds}


if __name__ == "__main__":
    main()
