"""Figures: matplotlib without a display, and the loss curve every demo draws."""


import numpy as np


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: it is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=120):
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_losses(history, path, baseline=None, title="training loss", evals_label="held-out"):
    """Save the loss curve (raw and smoothed) as a PNG, with ``log V`` drawn as a line and
    ``history.evals`` as marked points."""
    plt = pyplot()
    steps = np.arange(1, len(history.losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, history.losses, color="tab:blue", alpha=0.25, lw=0.8, label="loss per step")
    ax.plot(steps, history.smoothed(), color="tab:blue", lw=2,
            label=f"mean over {history.window} steps (centred)")
    if history.evals:
        xs, ys = zip(*history.evals)
        ax.plot(xs, ys, "o-", color="tab:orange", ms=4, label=evals_label)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1,
                   label=f"uniform guess, log V = {baseline:.2f}")
    ax.set(xlabel="step", ylabel="cross-entropy per token (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
