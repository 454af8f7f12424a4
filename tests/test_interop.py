"""Weights between minigrad and PyTorch (``models/interop.py``).

Without torch: round trips, the gate/bias mapping against torch's published equations
written in NumPy, and every error.  With torch installed (never a dependency: those tests
``importorskip`` it): the same model in both frameworks, float64, gives the same outputs,
final states and gradients (input and every weight), both directions of the transfer.
"""

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from models.cells import GRUCell, LSTMCell, RNNCell
from models.interop import load_torch_state_dict, to_torch_state_dict
from models.layers import GRU, LSTM, RNN, Bidirectional, Recurrent, deep_head

F64 = np.float64
B, T, I, H = 3, 5, 4, 6


def make(kind, **kw):
    cls = {"rnn": RNN, "gru": GRU, "lstm": LSTM}[kind]
    if kind == "gru":
        kw.setdefault("reset_after", True)
    return cls(I, H, dtype=F64, **kw)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_round_trip_copies_every_parameter():
    for kind in ("rnn", "gru", "lstm"):
        mg.manual_seed(0)
        a = make(kind, num_layers=2, bidirectional=True)
        mg.manual_seed(1)
        b = make(kind, num_layers=2, bidirectional=True)
        load_torch_state_dict(b, to_torch_state_dict(a))
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_array_equal(p.data, q.data, err_msg=f"{kind} {n}")


def test_torch_names_and_shapes():
    mg.manual_seed(0)
    sd = to_torch_state_dict(make("lstm", num_layers=2, bidirectional=True))
    assert sorted(sd) == sorted(f"{w}_l{l}{r}" for w in ("weight_ih", "weight_hh", "bias_ih",
                                                          "bias_hh")
                                for l in (0, 1) for r in ("", "_reverse"))
    assert sd["weight_ih_l0"].shape == (4 * H, I) and sd["weight_ih_l1"].shape == (4 * H, 2 * H)
    assert sd["weight_hh_l1_reverse"].shape == (4 * H, H) and sd["bias_hh_l0"].dtype == F64
    cell = to_torch_state_dict(RNNCell(I, H))
    assert sorted(cell) == ["bias_hh", "bias_ih", "weight_hh", "weight_ih"]


def test_gru_mapping_follows_torch_equations():
    """torch's GRU (r, z, n; h = (1 − z) n + z h) computed in NumPy on the exported arrays
    equals minigrad's reset-after cell: z = 1 − Γu, b_hn = b_cc."""
    mg.manual_seed(0)
    cell = GRUCell(I, H, reset_after=True, dtype=F64)
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(B, I)), rng.normal(size=(B, H))
    sd = to_torch_state_dict(cell)
    gi = x @ sd["weight_ih"].T + sd["bias_ih"]
    gh = h @ sd["weight_hh"].T + sd["bias_hh"]
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    want = (1 - z) * n + z * h
    got = cell(mg.tensor(x), mg.tensor(h)).data
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_lstm_mapping_follows_torch_equations():
    """torch's LSTM (i, f, g, o) in NumPy, from a torch-side state dict with *both* biases
    non-zero, equals minigrad's cell after loading it."""
    rng = np.random.default_rng(1)
    sd = {"weight_ih": rng.normal(size=(4 * H, I)), "weight_hh": rng.normal(size=(4 * H, H)),
          "bias_ih": rng.normal(size=4 * H), "bias_hh": rng.normal(size=4 * H)}
    cell = load_torch_state_dict(LSTMCell(I, H, dtype=F64), sd)
    x, h, c = rng.normal(size=(B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    g = x @ sd["weight_ih"].T + sd["bias_ih"] + h @ sd["weight_hh"].T + sd["bias_hh"]
    i, f, gg, o = sigmoid(g[:, :H]), sigmoid(g[:, H:2 * H]), np.tanh(g[:, 2 * H:3 * H]), \
        sigmoid(g[:, 3 * H:])
    c_want = f * c + i * gg
    a, c_got = cell(mg.tensor(x), (mg.tensor(h), mg.tensor(c)))
    np.testing.assert_allclose(c_got.data, c_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.data, o * np.tanh(c_want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module, match", [
    (GRU(I, H), "GRUCell\\(reset_after=False\\) has no PyTorch equivalent"),
    (GRUCell(I, H, full=False), "GRUCell\\(full=False\\) has no PyTorch equivalent"),
    (LSTM(I, H, peephole=True), "peephole=True\\) has no PyTorch equivalent"),
    (LSTM(I, H, head=deep_head(H, [4], 2)), "deep head has no single torch module"),
    (Recurrent(RNNCell(I, H), reverse=True), "reverse=True\\) has no torch module"),
    (RNN(I, H, learn_initial_state=True), "learned initial state"),
], ids=["gru-reset-before", "gru-simplified", "peephole", "head", "reverse", "initial-state"])
def test_no_torch_equivalent_is_a_clear_error(module, match):
    with pytest.raises(ValueError, match=match):
        to_torch_state_dict(module)
    with pytest.raises(ValueError, match=match):
        load_torch_state_dict(module, {})


def test_load_errors_name_the_key_and_shapes():
    sd = to_torch_state_dict(RNN(I, H, num_layers=2))
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(6, 4\), expected \(6, 6\)"):
        load_torch_state_dict(RNN(I, H, num_layers=2), {**sd, "weight_ih_l1": np.zeros((H, I))})
    with pytest.raises(KeyError, match="no \\['bias_hh_l1'\\]"):
        load_torch_state_dict(RNN(I, H, num_layers=2),
                              {k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match="unexpected torch keys \\['extra'\\]"):
        load_torch_state_dict(RNN(I, H, num_layers=2), {**sd, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="missing keys: \\['bias'\\]"):
        load_torch_state_dict(nn.Linear(3, 2), {"weight": np.zeros((2, 3))})
    with pytest.raises(TypeError, match="expected a dict"):
        load_torch_state_dict(nn.Linear(3, 2), [np.zeros((2, 3))])


# ------------------------------------------------------------------ against torch itself

def _torch():
    return pytest.importorskip("torch")


def _to_torch(sd):
    torch = _torch()
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def _grads_as_torch(module):
    """minigrad's gradients in torch's layout: the mapping is linear in the weights, so map
    a copy whose parameters hold the gradients.  d/d bias_hh equals d/d bias_ih except on
    the GRU's n block, which is b_cc's own gradient."""
    saved = {n: p.data.copy() for n, p in module.named_parameters()}
    for _, p in module.named_parameters():
        p.data[...] = p.grad
    g = to_torch_state_dict(module)
    for n, p in module.named_parameters():
        p.data[...] = saved[n]
    for k in [k for k in g if "bias_hh" in k]:
        ih = g[k.replace("bias_hh", "bias_ih")].copy()
        if isinstance(module, GRU):
            ih[2 * H:] = g[k][2 * H:]
        g[k] = ih
    return g


CONFIGS = [(kind, layers, bidir) for kind in ("rnn", "gru", "lstm")
           for layers, bidir in ((1, False), (2, True))]


@pytest.mark.parametrize("kind, layers, bidir", CONFIGS,
                         ids=[f"{k}-L{l}{'-bi' if b else ''}" for k, l, b in CONFIGS])
def test_same_outputs_and_gradients_as_torch(kind, layers, bidir):
    torch = _torch()
    mg.manual_seed(0)
    ours = make(kind, num_layers=layers, bidirectional=bidir)
    theirs = getattr(torch.nn, kind.upper())(I, H, num_layers=layers, bidirectional=bidir,
                                            batch_first=True).double()
    theirs.load_state_dict(_to_torch(to_torch_state_dict(ours)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, I))
    w_out = rng.normal(size=(B, T, H * (2 if bidir else 1)))  # a loss that weighs every output

    xm = mg.tensor(x, requires_grad=True)
    out, fin = ours(xm)
    h_n = fin[0] if kind == "lstm" else fin
    ((out * mg.tensor(w_out)).sum() + (h_n * h_n).sum()).backward()

    xt = torch.tensor(x, requires_grad=True)
    out_t, fin_t = theirs(xt)
    h_t = fin_t[0] if kind == "lstm" else fin_t
    ((out_t * torch.from_numpy(w_out)).sum() + (h_t * h_t).sum()).backward()

    np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(h_n.data, h_t.detach().numpy(), rtol=1e-11, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(fin[1].data, fin_t[1].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours_g = _grads_as_torch(ours)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours_g[name], p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_torch_trained_weights_load_into_minigrad(kind):
    """torch's own init, both biases non-zero (as after training): same outputs here."""
    torch = _torch()
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind.upper())(I, H, num_layers=2, bidirectional=True,
                                            batch_first=True).double()
    ours = load_torch_state_dict(make(kind, num_layers=2, bidirectional=True),
                                 theirs.state_dict())
    x = np.random.default_rng(1).normal(size=(B, T, I))
    np.testing.assert_allclose(ours(x)[0].data, theirs(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=1e-11, atol=1e-12)
    back = to_torch_state_dict(ours)  # and back again: the same function in torch
    fresh = getattr(torch.nn, kind.upper())(I, H, num_layers=2, bidirectional=True,
                                           batch_first=True).double()
    fresh.load_state_dict(_to_torch(back))
    np.testing.assert_allclose(fresh(torch.from_numpy(x))[0].detach().numpy(),
                               ours(x)[0].data, rtol=1e-11, atol=1e-12)


def test_a_whole_model_with_embedding_and_linear():
    """Children are converted under their own names: Embedding -> LSTM -> Linear."""
    torch = _torch()

    class Ours(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, I, dtype=F64)
            self.rnn = LSTM(I, H, dtype=F64)
            self.out = nn.Linear(H, 3, dtype=F64)

        def forward(self, ids):
            return self.out(self.rnn(self.emb(ids))[0])

    class Theirs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, I)
            self.rnn = torch.nn.LSTM(I, H, batch_first=True)
            self.out = torch.nn.Linear(H, 3)

        def forward(self, ids):
            return self.out(self.rnn(self.emb(ids))[0])

    torch.manual_seed(0)
    theirs = Theirs().double()
    ours = load_torch_state_dict(Ours(), theirs.state_dict())
    ids = np.random.default_rng(0).integers(0, 10, size=(B, T))
    np.testing.assert_allclose(ours(ids).data, theirs(torch.from_numpy(ids)).detach().numpy(),
                               rtol=1e-11, atol=1e-12)
    assert sorted(to_torch_state_dict(ours)) == sorted(theirs.state_dict())
    cell = Bidirectional(LSTMCell(I, H), LSTMCell(I, H))
    assert sorted(to_torch_state_dict(cell)) == sorted(
        torch.nn.LSTM(I, H, bidirectional=True).state_dict())
