"""Recurrent layers against independent references: hand-computed numbers and plain NumPy.

The other model tests compare the layers' two paths (the chapter's equations and the fast
path) with each other, so a misreading of the specification made in both passes them.  The
references here are written straight from the published equations, share no code with
``models/`` and see the models only through the public API (``cell(x_t, state)``,
``Recurrent``, ``Bidirectional``, ``RNN``/``GRU``/``LSTM``, ``gradient_flow``):

* hand cases whose answer is a number on paper (peephole LSTM, reset-after GRU);
* a NumPy step per cell and option, unrolled forwards or backwards with ``lengths`` and a
  given initial state, for single layers and deep bidirectional stacks — values, and
  gradients against central differences *of the NumPy reference*;
* the per-step states a reverse layer keeps, and the direction in which its gradient decays.
"""

import numpy as np
import pytest
from conftest import CELL_OPTIONS, IDS

import minigrad as mg
from models.cells import GRUCell, LSTMCell, RNNCell
from models.layers import GRU, LSTM, RNN, Bidirectional, Recurrent, gradient_flow

F64 = np.float64



# ------------------------------------------------------------------------ NumPy references

def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _split(W, H):
    """W (H, H+I) = [W_·a : W_·x]: the block on the state, the block on the input."""
    return W[:, :H], W[:, H:]


def np_step(kind, opts, P, H, x, state):
    """One time step of the cell ``kind`` with parameters ``P`` (name -> array), written
    from the equations in the docstrings of ``models/cells.py`` (and PyTorch's GRU for
    ``reset_after``).  ``state`` is a (B, H) array, or a pair (a, c) for the LSTM."""
    if kind == "rnn":
        W_aa, W_ax = _split(P["W_a"], H)
        z = state @ W_aa.T + x @ W_ax.T + P["b_a"]
        return np.tanh(z) if opts.get("nonlinearity", "tanh") == "tanh" else np.maximum(z, 0)
    if kind == "gru":
        c = state
        W_uc, W_ux = _split(P["W_u"], H)
        W_cc, W_cx = _split(P["W_c"], H)
        G_u = _sigmoid(c @ W_uc.T + x @ W_ux.T + P["b_u"])
        if not opts.get("full", True):
            c_tilde = np.tanh(c @ W_cc.T + x @ W_cx.T + P["b_c"])
        else:
            W_rc, W_rx = _split(P["W_r"], H)
            G_r = _sigmoid(c @ W_rc.T + x @ W_rx.T + P["b_r"])
            if opts.get("reset_after", False):  # Γr scales the state term after the product
                c_tilde = np.tanh(x @ W_cx.T + P["b_c"] + G_r * (c @ W_cc.T + P["b_cc"]))
            else:  # Γr scales c<t-1> before the product (the chapter, Cho et al. 2014)
                c_tilde = np.tanh((G_r * c) @ W_cc.T + x @ W_cx.T + P["b_c"])
        return G_u * c_tilde + (1 - G_u) * c
    a, c = state
    z = {}
    for g in "cufo":
        W_ga, W_gx = _split(P[f"W_{g}"], H)
        z[g] = a @ W_ga.T + x @ W_gx.T + P[f"b_{g}"]
    peep = opts.get("peephole", False)
    c_tilde = np.tanh(z["c"])
    G_u = _sigmoid(z["u"] + (P["p_u"] * c if peep else 0))
    G_f = _sigmoid(z["f"] + (P["p_f"] * c if peep else 0))
    c_new = G_u * c_tilde + G_f * c
    G_o = _sigmoid(z["o"] + (P["p_o"] * c_new if peep else 0))  # sees c<t>, not c<t-1>
    return G_o * np.tanh(c_new), c_new


def np_layer(kind, opts, P, H, x, state, reverse=False, lengths=None):
    """Unroll ``np_step`` over x (B, T, I): (outputs (B, T, H), final state).  Past a
    sequence's end its state stays put and its output is zero; reversed, each sequence
    therefore starts at its own last valid step."""
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    out = np.zeros((B, T, H))
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = np_step(kind, opts, P, H, x[:, t], state)
        live = (t < lengths)[:, None]
        if kind == "lstm":
            state = tuple(np.where(live, n, s) for n, s in zip(new, state))
            out[:, t] = np.where(live, state[0], 0)
        else:
            state = np.where(live, new, state)
            out[:, t] = np.where(live, state, 0)
    return out, state


def np_stack(kind, opts, cell_params, H, x, h0, bidirectional, lengths=None):
    """A deep (optionally bidirectional) stack.  ``cell_params[l][d]`` are the parameters of
    layer l, direction d; ``h0`` follows the documented (L·D, B, H) layout (a pair of them
    for the LSTM), row l·D + d for layer l, direction d (0 forward, 1 backward).
    Returns (top outputs (B, T, H·D), finals as a list in the same L·D order)."""
    D = 2 if bidirectional else 1
    finals = []
    for l, per_dir in enumerate(cell_params):
        outs = []
        for d, P in enumerate(per_dir):
            row = l * D + d
            s0 = (h0[0][row], h0[1][row]) if kind == "lstm" else h0[row]
            o, fin = np_layer(kind, opts, P, H, x, s0, reverse=d == 1, lengths=lengths)
            outs.append(o)
            finals.append(fin)
        x = np.concatenate(outs, axis=2)
    return x, finals


def _params(cell):
    return {n: p.data.astype(F64) for n, p in cell.named_parameters()}


def _kind(cls):
    return {RNNCell: "rnn", GRUCell: "gru", LSTMCell: "lstm"}[cls]


def _randomize(module, rng, scale=0.6):
    """Weights away from the default init so every term (peepholes, b_cc) matters."""
    with mg.no_grad():
        for p in module.parameters():
            p.data[...] = rng.uniform(-scale, scale, p.shape)


def _state(kind, rng, B, H):
    if kind == "lstm":
        return tuple(rng.standard_normal((B, H)) for _ in "ac")
    return rng.standard_normal((B, H))


def _as_tensors(state, dtype=F64):
    if isinstance(state, tuple):
        return tuple(mg.tensor(s.astype(dtype)) for s in state)
    return mg.tensor(state.astype(dtype))


# ------------------------------------------------------------------------ hand cases

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_peephole_lstm_output_gate_sees_the_new_memory_cell(dtype):
    """Zero weights, p_o = 1, (a, c) = (0, 2): c<1> = σ(0)·tanh(0) + σ(0)·2 = 1 and
    a<1> = σ(0 + p_o·c<1>)·tanh(c<1>) = σ(1)·tanh(1) ≈ 0.5568.  Γo reading c<t-1> = 2
    instead gives σ(2)·tanh(1) ≈ 0.6708."""
    cell = LSTMCell(3, 2, peephole=True, dtype=dtype)
    with mg.no_grad():
        for p in cell.parameters():
            p.data[...] = 0
        cell.p_o.data[...] = 1
    a0, c0 = np.zeros((1, 2), dtype), np.full((1, 2), 2.0, dtype)
    expected = _sigmoid(1.0) * np.tanh(1.0)
    assert expected == pytest.approx(0.5568, abs=1e-4)
    tol = 1e-12 if dtype == np.float64 else 1e-6

    a1, c1 = cell(mg.tensor(np.zeros((1, 3), dtype)), (mg.tensor(a0), mg.tensor(c0)))
    np.testing.assert_allclose(c1.data, 1.0, atol=tol)
    np.testing.assert_allclose(a1.data, expected, atol=tol)

    # the layer (whatever path it takes) from the same state
    out, (a_n, c_n) = Recurrent(cell)(mg.tensor(np.zeros((1, 1, 3), dtype)),
                                      (mg.tensor(a0), mg.tensor(c0)))
    np.testing.assert_allclose(out.data[0, 0], expected, atol=tol)
    np.testing.assert_allclose(c_n.data, 1.0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reset_after_gru_gates_the_recurrent_bias(dtype):
    """b_r = −30 (Γr ≈ 1e-13), b_cc = 1, everything else zero, c<0> = 0: PyTorch's
    c~ = tanh(W_cx x + b_c + Γr ⊙ (W_cc c + b_cc)) ≈ 0, so |c<1>| < 1e-6.  With b_cc
    outside Γr, c~ = tanh(1) and c<1> = 0.5·tanh(1) ≈ 0.38."""
    cell = GRUCell(3, 2, reset_after=True, dtype=dtype)
    with mg.no_grad():
        for p in cell.parameters():
            p.data[...] = 0
        cell.b_r.data[...] = -30
        cell.b_cc.data[...] = 1
    x = np.ones((2, 1, 3), dtype)  # any input: its weights are zero
    c1 = cell(mg.tensor(x[:, 0]), mg.zeros(2, 2, dtype=dtype))
    assert np.abs(c1.data).max() < 1e-6
    out, c_n = Recurrent(cell)(mg.tensor(x))
    assert np.abs(out.data).max() < 1e-6 and np.abs(c_n.data).max() < 1e-6

    # and the bias does act when the gate is open: Γr = 1 gives c<1> = 0.5·tanh(1)
    with mg.no_grad():
        cell.b_r.data[...] = 30
    out, _ = Recurrent(cell)(mg.tensor(x))
    np.testing.assert_allclose(out.data, 0.5 * np.tanh(1.0), rtol=1e-6)


# ------------------------------------------------------------------------ cells and layers

@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_cell_step_equals_numpy_reference(name, cls, opts):
    """``cell(x_t, state)`` — the chapter's equations — against the NumPy step."""
    rng = np.random.default_rng(20)
    B, I, H = 3, 4, 5
    cell = cls(I, H, dtype=F64, **opts)
    _randomize(cell, rng)
    kind = _kind(cls)
    x, s = rng.standard_normal((B, I)), _state(kind, rng, B, H)
    got = cell(mg.tensor(x), _as_tensors(s))
    ref = np_step(kind, opts, _params(cell), H, x, s)
    for g, r in zip(got if kind == "lstm" else (got,), ref if kind == "lstm" else (ref,)):
        np.testing.assert_allclose(g.data, r, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_layer_equals_numpy_reference_values_and_gradients(name, cls, opts, reverse):
    """A Recurrent layer (either direction, a given initial state, padded ``lengths``)
    against the NumPy unroll: outputs and final state in float64, float32 close to them,
    and the gradient of a random projection of the outputs w.r.t. every parameter, the
    input and the initial state equal to central differences of the NumPy reference."""
    rng = np.random.default_rng(21)
    B, T, I, H = 3, 5, 2, 3
    kind = _kind(cls)
    cell = cls(I, H, dtype=F64, **opts)
    _randomize(cell, rng)
    x = rng.standard_normal((B, T, I))
    s0 = _state(kind, rng, B, H)
    lengths = np.array([5, 2, 4])
    u = rng.standard_normal((B, T, H))
    layer = Recurrent(cell, reverse=reverse)

    xt, st = mg.tensor(x, requires_grad=True), _as_tensors(s0)
    for s in (st if kind == "lstm" else (st,)):
        s.requires_grad_(True)
    out, fin = layer(xt, st, lengths)
    ref_out, ref_fin = np_layer(kind, opts, _params(cell), H, x, s0, reverse, lengths)
    np.testing.assert_allclose(out.data, ref_out, rtol=1e-12, atol=1e-13)
    for f, r in zip(fin if kind == "lstm" else (fin,), ref_fin if kind == "lstm" else
                    (ref_fin,)):
        np.testing.assert_allclose(f.data, r, rtol=1e-12, atol=1e-13)

    (out * mg.tensor(u)).sum().backward()

    def ref_loss(P, x, s0):
        return float((np_layer(kind, opts, P, H, x, s0, reverse, lengths)[0] * u).sum())

    P0 = _params(cell)
    eps = 1e-6
    grads = {n: p.grad for n, p in cell.named_parameters()}
    # one random direction over everything at once, then every parameter on its own
    dirs = {n: rng.standard_normal(v.shape) for n, v in P0.items()}
    dx = rng.standard_normal(x.shape)
    ds = tuple(rng.standard_normal((B, H)) for _ in range(2 if kind == "lstm" else 1))

    def shifted(h):
        P = {n: v + h * dirs[n] for n, v in P0.items()}
        s = tuple(si + h * di for si, di in zip(s0 if kind == "lstm" else (s0,), ds))
        return ref_loss(P, x + h * dx, s if kind == "lstm" else s[0])

    numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
    s_grads = [s.grad for s in (st if kind == "lstm" else (st,))]
    analytic = (sum(float((grads[n] * dirs[n]).sum()) for n in P0)
                + float((xt.grad * dx).sum())
                + sum(float((g * d).sum()) for g, d in zip(s_grads, ds)))
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    for n in P0:
        def along(h, n=n):
            return ref_loss({**P0, n: P0[n] + h * dirs[n]}, x, s0)
        num_n = (along(eps) - along(-eps)) / (2 * eps)
        assert float((grads[n] * dirs[n]).sum()) == pytest.approx(num_n, rel=1e-6, abs=1e-8), n

    # float32 (the training dtype, approximate tanh/sigmoid) stays close to the reference
    cell32 = cls(I, H, dtype=np.float32, **opts)
    cell32.load_state_dict({n: v.astype(np.float32) for n, v in cell.state_dict().items()})
    out32, _ = Recurrent(cell32, reverse=reverse)(mg.tensor(x.astype(np.float32)),
                                                  _as_tensors(s0, np.float32), lengths)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.data, ref_out, atol=2e-5)


# ------------------------------------------------------------------------ deep stacks

@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
def test_deep_bidirectional_stack_with_initial_state_equals_numpy(cls):
    """A 2-layer bidirectional stack with h0 in the documented (L·D, B, H) layout (row
    l·D + d) and ``lengths``: outputs and every final state against the NumPy stack."""
    rng = np.random.default_rng(22)
    B, T, I, H, L = 3, 4, 2, 3, 2
    stack = cls(I, H, num_layers=L, bidirectional=True, dtype=F64)
    _randomize(stack, rng)
    kind = {RNN: "rnn", GRU: "gru", LSTM: "lstm"}[cls]
    x = rng.standard_normal((B, T, I))
    lengths = np.array([4, 1, 3])
    h0 = (tuple(rng.standard_normal((L * 2, B, H)) for _ in "ac") if kind == "lstm"
          else rng.standard_normal((L * 2, B, H)))
    out, final = stack(mg.tensor(x), _as_tensors(h0), lengths)

    cell_params = [[_params(layer.fwd.cell), _params(layer.bwd.cell)] for layer in stack.layers]
    ref_out, ref_finals = np_stack(kind, {}, cell_params, H, x, h0, True, lengths)
    np.testing.assert_allclose(out.data, ref_out, rtol=1e-12, atol=1e-13)
    if kind == "lstm":
        for k in range(2):
            np.testing.assert_allclose(final[k].data, np.stack([f[k] for f in ref_finals]),
                                       rtol=1e-12, atol=1e-13)
    else:
        np.testing.assert_allclose(final.data, np.stack(ref_finals), rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------ reverse layers

def _small_rnn(rng, I, H):
    cell = RNNCell(I, H, dtype=F64)
    _randomize(cell, rng, scale=0.5 / np.sqrt(H))  # contracting: gradients vanish
    return cell


def test_reverse_layer_keeps_states_in_time_order_and_gradient_decays_forwards():
    """For a right-to-left layer, ``layer.states[t]`` is a<t> (== outputs[:, t]) for every
    t, and a loss on a<1> (the reverse layer's *last* step) has ‖∂L/∂a<t>‖ largest at t = 1,
    decaying geometrically towards t = T."""
    rng = np.random.default_rng(23)
    T = 12
    layer = Recurrent(_small_rnn(rng, 3, 8), reverse=True)
    layer.retain_states = True
    out, _ = layer(mg.tensor(rng.standard_normal((2, T, 3))))
    assert len(layer.states) == T
    for t in range(T):
        np.testing.assert_array_equal(layer.states[t].data, out.data[:, t], err_msg=f"t={t}")
    out[:, 0].sum().backward()
    norms = gradient_flow(layer)
    assert norms[0] > 0
    assert norms[-1] < 1e-3 * norms[0]
    assert np.all(np.diff(norms[1:]) < 0), "norms should shrink away from the loss at t = 1"


def test_bidirectional_states_are_in_time_order_in_both_directions():
    rng = np.random.default_rng(24)
    T, H = 6, 4
    bi = Bidirectional(_small_rnn(rng, 3, H), _small_rnn(rng, 3, H))
    bi.fwd.retain_states = bi.bwd.retain_states = True
    out, _ = bi(mg.tensor(rng.standard_normal((2, T, 3))))
    for t in range(T):
        np.testing.assert_array_equal(bi.fwd.states[t].data, out.data[:, t, :H])
        np.testing.assert_array_equal(bi.bwd.states[t].data, out.data[:, t, H:])
    # a loss on the middle step: the forward direction's gradient lives at t <= 3 only,
    # the backward direction's at t >= 3 only
    out[:, 3].sum().backward()
    f, b = gradient_flow(bi.fwd), gradient_flow(bi.bwd)
    assert np.all(f[4:] == 0) and np.all(f[:4] > 0)
    assert np.all(b[:3] == 0) and np.all(b[3:] > 0)
