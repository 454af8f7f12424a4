"""PyTorch as an independent oracle for every recurrent layer (optional: skipped without torch).

``make test-oracle`` installs the pinned CPU build (``torch==2.13.0``) into the venv and runs
this module; ``make test`` runs it only if torch happens to be installed.  Torch is never a
dependency of the package.

Each case builds a minigrad stack (``RNN`` tanh/relu, ``LSTM``, ``GRU(reset_after=True)``;
one or two layers, one or two directions, with or without ``lengths`` and a given initial
state) and the matching ``torch.nn`` module in float64, with torch's weights *computed from*
minigrad's (as torch tensors in minigrad's layout, so torch's autograd hands back gradients
in that layout), and compares outputs, final states and the gradients of one random
projection w.r.t. the input, the initial state and every parameter.

The weight map, per layer and direction (a minigrad weight is ``[W_·a : W_·x]``, (H, H+I)):

* RNN:  ``weight_ih = W_a[:, H:]``, ``weight_hh = W_a[:, :H]``, ``bias_ih = b_a``,
  ``bias_hh = 0``.
* LSTM: torch's gates are ``[i, f, g, o]`` = ``[Γu, Γf, c~, Γo]``; biases ``b_ih = [b_u, b_f,
  b_c, b_o]``, ``b_hh = 0``.
* GRU:  torch's gates are ``[r, z, n]`` with ``h' = (1 − z)·n + z·h``, minigrad's
  ``c = Γu·c~ + (1 − Γu)·c``, so ``z = 1 − Γu = σ(−z_u)``: the update gate's weights and
  bias are negated.  ``n = tanh(W_in x + b_in + r·(W_hn h + b_hn))`` is the reset-after
  ``c~`` with ``b_hn = b_cc``; ``b_ih = [b_r, −b_u, b_c]``, ``b_hh = [0, 0, b_cc]``.
* ``lengths`` ↔ ``pack_padded_sequence(..., enforce_sorted=False)``; padded outputs are 0 in
  both, and the final state is each sequence's own last state (for the backward direction,
  the state after reading from its own last element down to the first).
"""

import itertools

import numpy as np
import pytest

import minigrad as mg
from models.layers import GRU, LSTM, RNN

torch = pytest.importorskip("torch")

F64 = np.float64
KINDS = {
    "rnn-tanh": (RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "gru-reset-after": (GRU, {"full": True, "reset_after": True}),
}
SHAPES = [(1, False), (1, True), (2, False), (2, True)]  # (num_layers, bidirectional)


def _torch_weights(kind, P, H):
    """torch's (weight_ih, weight_hh, bias_ih, bias_hh) from minigrad-layout torch leaves."""
    def cols(W):
        return W[:, H:], W[:, :H]

    zero = torch.zeros(H, dtype=torch.float64)
    if kind.startswith("rnn"):
        W_ih, W_hh = cols(P["W_a"])
        return W_ih, W_hh, P["b_a"], zero
    if kind == "lstm":
        blocks = [cols(P[f"W_{g}"]) for g in "ufco"]  # torch's i, f, g, o
        return (torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks]),
                torch.cat([P[f"b_{g}"] for g in "ufco"]), torch.cat([zero] * 4))
    # GRU: torch's r, z, n with z = 1 − Γu
    (r_ih, r_hh), (u_ih, u_hh), (c_ih, c_hh) = (cols(P[f"W_{g}"]) for g in "ruc")
    return (torch.cat([r_ih, -u_ih, c_ih]), torch.cat([r_hh, -u_hh, c_hh]),
            torch.cat([P["b_r"], -P["b_u"], P["b_c"]]), torch.cat([zero, zero, P["b_cc"]]))


def _torch_module(kind, I, H, L, bidirectional):
    args = dict(num_layers=L, bidirectional=bidirectional, batch_first=True,
                dtype=torch.float64)
    if kind.startswith("rnn"):
        return torch.nn.RNN(I, H, nonlinearity=kind[4:], **args)
    return (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, **args)


def _directions(layer, bidirectional):
    return (layer.fwd, layer.bwd) if bidirectional else (layer,)


CASES = list(itertools.product(KINDS, SHAPES, [False, True], [False, True]))


@pytest.mark.parametrize(
    "kind, shape, use_lengths, use_h0", CASES,
    ids=[f"{k}-L{s[0]}{'-bi' if s[1] else ''}{'-lengths' if n else ''}{'-h0' if h else ''}"
         for k, s, n, h in CASES])
def test_layer_matches_torch(kind, shape, use_lengths, use_h0):
    L, bidirectional = shape
    D = 2 if bidirectional else 1
    B, T, I, H = 3, 5, 4, 3
    lstm = kind == "lstm"
    rng = np.random.default_rng(CASES.index((kind, shape, use_lengths, use_h0)))
    cls, opts = KINDS[kind]
    mg.manual_seed(0)
    layer = cls(I, H, num_layers=L, bidirectional=bidirectional, dtype=F64, **opts)
    with mg.no_grad():  # wider than the default init, so that every term matters
        for p in layer.parameters():
            p.data[...] = rng.uniform(-0.7, 0.7, p.shape)

    x = rng.standard_normal((B, T, I))
    lengths = np.array([5, 2, 4]) if use_lengths else None
    h0 = [rng.standard_normal((L * D, B, H)) for _ in range(2 if lstm else 1)]
    w_out = rng.standard_normal((B, T, H * D))
    w_fin = [rng.standard_normal((L * D, B, H)) for _ in h0]

    # ---- minigrad
    xm = mg.tensor(x, requires_grad=True)
    h0m = [mg.tensor(h, requires_grad=True) for h in h0]
    state = (tuple(h0m) if lstm else h0m[0]) if use_h0 else None
    out, fin = layer(xm, state, lengths)
    fins = fin if lstm else (fin,)
    loss = (out * mg.tensor(w_out)).sum()
    for f, w in zip(fins, w_fin):
        loss = loss + (f * mg.tensor(w)).sum()
    loss.backward()

    # ---- torch, weights computed from leaves in minigrad's layout
    module = _torch_module(kind, I, H, L, bidirectional)
    leaves, weights = {}, {}
    for l, lay in enumerate(layer.layers):
        for d, rec in enumerate(_directions(lay, bidirectional)):
            P = {n: torch.tensor(p.data, requires_grad=True)
                 for n, p in rec.cell.named_parameters()}
            leaves[l, d] = P
            sfx = f"_l{l}" + ("_reverse" if d else "")
            for name, t in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               _torch_weights(kind, P, H)):
                weights[name + sfx] = t
    assert set(weights) == {n for n, _ in module.named_parameters()}
    xt = torch.tensor(x, requires_grad=True)
    h0t = [torch.tensor(h, requires_grad=True) for h in h0]
    inp = xt
    if use_lengths:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    hx = (tuple(h0t) if lstm else h0t[0]) if use_h0 else None
    out_t, fin_t = torch.func.functional_call(module, weights, (inp, hx))
    if use_lengths:
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=True,
                                                          total_length=T)
    fins_t = fin_t if lstm else (fin_t,)
    loss_t = (out_t * torch.tensor(w_out)).sum()
    for f, w in zip(fins_t, w_fin):
        loss_t = loss_t + (f * torch.tensor(w)).sum()
    loss_t.backward()

    # ---- values and gradients
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.data, out_t.detach().numpy(), **tol)
    for f, ft in zip(fins, fins_t):
        np.testing.assert_allclose(f.data, ft.detach().numpy(), **tol)
    assert loss.item() == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), **tol)
    if use_h0:
        for hm, ht in zip(h0m, h0t):
            np.testing.assert_allclose(hm.grad, ht.grad.numpy(), **tol)
    for (l, d), P in leaves.items():
        rec = _directions(layer.layers[l], bidirectional)[d]
        for n, p in rec.cell.named_parameters():
            np.testing.assert_allclose(p.grad, P[n].grad.numpy(), **tol,
                                       err_msg=f"layer {l} direction {d} {n}")
