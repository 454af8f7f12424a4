"""The benchmark's numpy min-char-rnn reference computes what minigrad's tape computes.

``benchmarks/min_char_rnn.py`` is the hand-written BPTT that minigrad's vanilla RNN is timed
against; a speed ratio means something only if both do the same work.  Same weights, same
ids, same carried-in state: loss, every gradient, the final state and one clipped Adagrad
update agree with minigrad's ``Recurrent(RNNCell)`` + ``Linear`` + summed cross-entropy.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

import minigrad as mg
from minigrad.nn import Linear
from models.cells import RNNCell
from models.layers import Recurrent

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "min_char_rnn.py"
_spec = importlib.util.spec_from_file_location("min_char_rnn", _PATH)
mcr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mcr)

V, H, T = 7, 5, 6


def _pair(seed):
    """The reference (float64, weights large enough that tanh is not linear) and minigrad's
    model holding the same weights: W_a = [Whh : Wxh] (state columns first), b_a = bh."""
    ref = mcr.MinCharRNN(V, H, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for k in mcr.PARAMS:
        getattr(ref, k)[...] = rng.standard_normal(getattr(ref, k).shape) * 0.5
    layer = Recurrent(RNNCell(V, H, dtype=np.float64))
    head = Linear(H, V, dtype=np.float64)
    layer.cell.W_a.data[...] = np.concatenate([ref.Whh, ref.Wxh], axis=1)
    layer.cell.b_a.data[...] = ref.bh[:, 0]
    head.weight.data[...] = ref.Why
    head.bias.data[...] = ref.by[:, 0]
    return ref, layer, head


def _minigrad_loss(layer, head, inputs, targets, hprev):
    out, h_T = layer(mg.tensor(np.array([inputs])), mg.tensor(hprev.T.copy()))
    loss = mg.cross_entropy(head(out), np.array([targets]), reduction="sum")
    return loss, h_T


@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_the_tape(seed):
    ref, layer, head = _pair(seed)
    rng = np.random.default_rng(seed + 2)
    inputs, targets = rng.integers(0, V, T).tolist(), rng.integers(0, V, T).tolist()
    hprev = rng.standard_normal((H, 1)) * 0.5
    loss_ref, g, h_ref = ref.loss_and_grads(inputs, targets, hprev)

    loss, h_T = _minigrad_loss(layer, head, inputs, targets, hprev)
    loss.backward()
    W_a = layer.cell.W_a.grad
    np.testing.assert_allclose(loss.item(), loss_ref, rtol=1e-12)
    np.testing.assert_allclose(h_T.data, h_ref.T, rtol=1e-12, atol=1e-14)
    for ours, theirs in ((W_a[:, :H], g["Whh"]), (W_a[:, H:], g["Wxh"]),
                         (layer.cell.b_a.grad, g["bh"][:, 0]), (head.weight.grad, g["Why"]),
                         (head.bias.grad, g["by"][:, 0])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert np.abs(g["Whh"]).max() > 1e-3  # the recurrent gradient is not trivially zero


def test_clipped_adagrad_steps_match_minigrad_optimizer():
    ref, layer, head = _pair(3)
    ref.lr, ref.clip = 0.5, 0.05  # a small clip, so clipping really cuts elements
    # NOTE: min-char-rnn divides by √(mem + 1e-8), minigrad (PyTorch) by √mem + 1e-8; they
    # differ visibly only while mem ≈ 0, so both accumulators start at 0.01 here.
    for m in ref.mem.values():
        m[...] = 0.01
    rng = np.random.default_rng(4)
    inputs, targets = rng.integers(0, V, T).tolist(), rng.integers(0, V, T).tolist()
    hprev = np.zeros((H, 1))
    params = list(layer.parameters()) + list(head.parameters())
    opt = mg.optim.Adagrad(params, lr=0.5, initial_accumulator_value=0.01)
    before = layer.cell.W_a.data.copy()
    for _ in range(2):  # the second step sees the first step's weights and squares
        ref.step(inputs, targets, hprev)
        loss, _ = _minigrad_loss(layer, head, inputs, targets, hprev)
        opt.zero_grad()
        loss.backward()
        assert np.abs(layer.cell.W_a.grad).max() > 2 * ref.clip
        mg.optim.clip_grad_value_(params, ref.clip)
        opt.step()
    assert np.abs(layer.cell.W_a.data - before).max() > 0.1
    np.testing.assert_allclose(layer.cell.W_a.data, np.concatenate([ref.Whh, ref.Wxh], 1),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.cell.b_a.data, ref.bh[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(head.weight.data, ref.Why, rtol=1e-6, atol=1e-6)


def test_float32_stays_float32_and_learns():
    """The benchmark runs it in float32: no silent upcast, and it is a working trainer."""
    net = mcr.MinCharRNN(V, 16)
    ids = [i % V for i in range(40)]  # a repeating pattern: the next id is predictable
    h = np.zeros((16, 1), np.float32)
    first = None
    for n in range(150):
        p = n % 10
        loss, h = net.step(ids[p:p + T], ids[p + 1:p + T + 1], h)
        first = loss if first is None else first
    assert h.dtype == np.float32
    assert all(getattr(net, k).dtype == np.float32 for k in mcr.PARAMS)
    assert first > 0.9 * T * np.log(V) and loss < 0.2 * first
