"""BPTT emerges from the tape: compare with a hand-written textbook BPTT in plain NumPy.

The references below write the backward equations out per time step, the way a course's
``rnn_backward``/``lstm_backward`` does; the models write none.  Same weights, same data,
gradients equal to float64 precision.
"""

import numpy as np
import pytest

import minigrad as mg
from minigrad.nn import Linear
from models.cells import LSTMCell, RNNCell
from models.layers import Recurrent


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def rnn_bptt_reference(x, y, W_aa, W_ax, b_a, W_ya, b_y):
    """Loss Σ_t CE(softmax(W_ya a<t> + b_y), y<t>) and its gradients, by hand."""
    B, T, _ = x.shape
    H = W_aa.shape[0]
    a = {-1: np.zeros((B, H))}
    p, loss = {}, 0.0
    for t in range(T):
        a[t] = np.tanh(x[:, t] @ W_ax.T + a[t - 1] @ W_aa.T + b_a)
        p[t] = _softmax(a[t] @ W_ya.T + b_y)
        loss -= np.log(p[t][np.arange(B), y[:, t]]).sum()
    g = {k: np.zeros_like(v) for k, v in
         dict(W_aa=W_aa, W_ax=W_ax, b_a=b_a, W_ya=W_ya, b_y=b_y).items()}
    da_next = np.zeros((B, H))
    for t in reversed(range(T)):
        dy = p[t].copy()
        dy[np.arange(B), y[:, t]] -= 1               # ∂L<t>/∂z_y<t>
        g["W_ya"] += dy.T @ a[t]
        g["b_y"] += dy.sum(0)
        da = dy @ W_ya + da_next                     # from the output and from a<t+1>
        dz = da * (1 - a[t] ** 2)                    # through tanh
        g["W_ax"] += dz.T @ x[:, t]
        g["W_aa"] += dz.T @ a[t - 1]
        g["b_a"] += dz.sum(0)
        da_next = dz @ W_aa
    return loss, g


def lstm_bptt_reference(x, y, W, b, W_ya, b_y):
    """The same for an LSTM; W[g] is (H, H+I) acting on [a<t-1>, x<t>], g in c,u,f,o."""
    B, T, _ = x.shape
    H = W["c"].shape[0]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    a, c = {-1: np.zeros((B, H))}, {-1: np.zeros((B, H))}
    cache, p, loss = {}, {}, 0.0
    for t in range(T):
        ax = np.concatenate([a[t - 1], x[:, t]], axis=1)
        ct = np.tanh(ax @ W["c"].T + b["c"])
        u, f, o = (sig(ax @ W[k].T + b[k]) for k in "ufo")
        c[t] = u * ct + f * c[t - 1]
        a[t] = o * np.tanh(c[t])
        cache[t] = ax, ct, u, f, o
        p[t] = _softmax(a[t] @ W_ya.T + b_y)
        loss -= np.log(p[t][np.arange(B), y[:, t]]).sum()
    gW = {k: np.zeros_like(v) for k, v in W.items()}
    gb = {k: np.zeros_like(v) for k, v in b.items()}
    g_ya, g_by = np.zeros_like(W_ya), np.zeros_like(b_y)
    da_next, dc_next = np.zeros((B, H)), np.zeros((B, H))
    for t in reversed(range(T)):
        ax, ct, u, f, o = cache[t]
        dy = p[t].copy()
        dy[np.arange(B), y[:, t]] -= 1
        g_ya += dy.T @ a[t]
        g_by += dy.sum(0)
        da = dy @ W_ya + da_next
        tc = np.tanh(c[t])
        dz = {"o": da * tc * o * (1 - o)}
        dc = dc_next + da * o * (1 - tc ** 2)
        dz["c"] = dc * u * (1 - ct ** 2)
        dz["u"] = dc * ct * u * (1 - u)
        dz["f"] = dc * c[t - 1] * f * (1 - f)
        dax = np.zeros_like(ax)
        for k in "cufo":
            gW[k] += dz[k].T @ ax
            gb[k] += dz[k].sum(0)
            dax += dz[k] @ W[k]
        da_next, dc_next = dax[:, :H], dc * f
    return loss, gW, gb, g_ya, g_by


def _tape_bptt(cell_class, seed, B, T, I, H, V, compiled):
    """The model side: a float64 layer + read-out, L = Σ_t CE, one ``backward()``; the
    layer compiled (one tape node, reverse loop derived) or eager (one node per op)."""
    rng = np.random.default_rng(seed)
    mg.manual_seed(seed)
    layer = Recurrent(cell_class(I, H, dtype=np.float64), compiled=compiled)
    head = Linear(H, V, dtype=np.float64)
    x = rng.standard_normal((B, T, I))
    y = rng.integers(0, V, (B, T))
    out, _ = layer(mg.tensor(x))
    loss = mg.cross_entropy(head(out), y, reduction="sum")
    loss.backward()
    return layer, head, x, y, loss


PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])


@PATHS
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rnn_tape_equals_textbook_bptt(seed, compiled):
    H = 5
    layer, head, x, y, loss = _tape_bptt(RNNCell, seed, B=3, T=7, I=4, H=H, V=6,
                                         compiled=compiled)

    W_a = layer.cell.W_a.data
    ref_loss, g = rnn_bptt_reference(x, y, W_a[:, :H], W_a[:, H:], layer.cell.b_a.data,
                                     head.weight.data, head.bias.data)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    dW_a = layer.cell.W_a.grad
    np.testing.assert_allclose(dW_a[:, :H], g["W_aa"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dW_a[:, H:], g["W_ax"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.cell.b_a.grad, g["b_a"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head.weight.grad, g["W_ya"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head.bias.grad, g["b_y"], rtol=1e-10, atol=1e-12)


@PATHS
@pytest.mark.parametrize("seed", [0, 1])
def test_lstm_tape_equals_textbook_bptt(seed, compiled):
    layer, head, x, y, loss = _tape_bptt(LSTMCell, seed, B=2, T=6, I=3, H=4, V=5,
                                         compiled=compiled)

    cell = layer.cell
    W = {k: getattr(cell, f"W_{k}").data for k in "cufo"}
    b = {k: getattr(cell, f"b_{k}").data for k in "cufo"}
    ref_loss, gW, gb, g_ya, g_by = lstm_bptt_reference(x, y, W, b, head.weight.data,
                                                       head.bias.data)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    for k in "cufo":
        np.testing.assert_allclose(getattr(cell, f"W_{k}").grad, gW[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(getattr(cell, f"b_{k}").grad, gb[k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head.weight.grad, g_ya, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head.bias.grad, g_by, rtol=1e-10, atol=1e-12)
