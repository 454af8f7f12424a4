"""Recurrent cells and layers: gradient checks, fast path = chapter equations, masking,
bidirectional, deep stacks, truncated BPTT, errors, and learning."""

import numpy as np
import pytest
from conftest import CELL_OPTIONS, IDS
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from models.cells import GRUCell, LSTMCell, RNNCell
from models.layers import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    Recurrent,
    SequenceClassifier,
    SequenceTagger,
    deep_head,
    gradient_flow,
)

F64 = np.float64


sizes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))


def _x(rng, B, T, I):
    return mg.tensor(rng.standard_normal((B, T, I)), requires_grad=True)


def _loss_weights(rng, shape):
    return rng.standard_normal(shape)


def _run_layer(layer, x, **kw):
    out, final = layer(x, **kw)
    return out


# ------------------------------------------------------------------------ fast path = equations

@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_fast_path_equals_chapter_equations(name, cls, opts):
    """The layer's fused/stacked step gives the same states and gradients as cell(x, s)."""
    rng = np.random.default_rng(0)
    mg.manual_seed(0)
    B, T, I, H = 3, 5, 4, 6
    cell = cls(I, H, dtype=F64, **opts)
    x = rng.standard_normal((B, T, I))
    w = rng.standard_normal((B, T, H))

    layer = Recurrent(cell)
    xt = mg.tensor(x, requires_grad=True)
    out, _ = layer(xt)
    (out * w).sum().backward()
    fast = {n: p.grad.copy() for n, p in cell.named_parameters()}
    fast_x = xt.grad.copy()
    cell.zero_grad()

    xr = mg.tensor(x, requires_grad=True)
    state = cell.init_state(B)
    outs = []
    for t in range(T):
        state = cell(xr[:, t], state)
        outs.append(cell.output(state))
    ref = mg.stack(outs, axis=1)
    (ref * w).sum().backward()

    np.testing.assert_allclose(out.data, ref.data, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fast_x, xr.grad, rtol=1e-10, atol=1e-12)
    for n, p in cell.named_parameters():
        np.testing.assert_allclose(fast[n], p.grad, rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_float32_fast_path_close_to_float64(name, cls, opts, reverse):
    """float32 training path (fast tanh/sigmoid) stays close to exact float64, in value and
    in the gradients of every parameter and of the input, in both directions."""
    rng = np.random.default_rng(1)
    mg.manual_seed(1)
    cell64 = cls(5, 8, dtype=F64, **opts)
    cell32 = cls(5, 8, dtype=np.float32, **opts)
    cell32.load_state_dict(cell64.state_dict())
    x = rng.standard_normal((4, 12, 5))
    w = rng.standard_normal((4, 12, 8))
    results = {}
    for dtype, cell in ((F64, cell64), (np.float32, cell32)):
        xt = mg.tensor(x.astype(dtype), requires_grad=True)
        out, _ = Recurrent(cell, reverse=reverse)(xt)
        (out * mg.tensor(w.astype(dtype))).sum().backward()
        assert out.dtype == dtype and xt.grad.dtype == dtype
        results[dtype] = out.data, xt.grad, {n: p.grad for n, p in cell.named_parameters()}
    (o64, gx64, gp64), (o32, gx32, gp32) = results[F64], results[np.float32]
    np.testing.assert_allclose(o32, o64, atol=2e-5)
    # NOTE: gradients sum over B·T terms of float32 rounding: looser than the values.
    np.testing.assert_allclose(gx32, gx64, rtol=1e-4, atol=1e-4)
    for n, g in gp64.items():
        assert gp32[n].dtype == np.float32, n
        np.testing.assert_allclose(gp32[n], g, rtol=1e-4, atol=1e-4 * np.abs(g).max(),
                                   err_msg=n)


# ------------------------------------------------------------------------ gradient checks

@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
@given(sizes=sizes, seed=st.integers(0, 2**16))
def test_cell_gradcheck(name, cls, opts, sizes, seed):
    B, T, I, H = sizes
    rng = np.random.default_rng(seed)
    mg.manual_seed(seed)
    layer = Recurrent(cls(I, H, dtype=F64, **opts))
    x = _x(rng, B, T, I)
    mg.check_grads(lambda x, *ps: _run_layer(layer, x), x, *layer.parameters())


@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_cell_reference_path_gradcheck(name, cls, opts):
    rng = np.random.default_rng(3)
    mg.manual_seed(3)
    cell = cls(3, 4, dtype=F64, **opts)
    x = mg.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    s = cell.init_state(2)
    s = mg.tensor(rng.standard_normal((2, 4)), requires_grad=True) if cell.state_arity == 1 \
        else tuple(mg.tensor(rng.standard_normal((2, 4)), requires_grad=True) for _ in "ac")
    flat = (s,) if cell.state_arity == 1 else s

    def f(x, *args):
        st_ = args[0] if cell.state_arity == 1 else (args[0], args[1])
        return mg.concat([t.reshape(-1) for t in
                          ([cell(x, st_)] if cell.state_arity == 1 else list(cell(x, st_)))])
    mg.check_grads(f, x, *flat, *cell.parameters())


@given(sizes=sizes, seed=st.integers(0, 2**16), cell=st.sampled_from(["rnn", "gru", "lstm"]))
def test_bidirectional_gradcheck(sizes, seed, cell):
    B, T, I, H = sizes
    rng = np.random.default_rng(seed)
    mg.manual_seed(seed)
    cls = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}[cell]
    layer = Bidirectional(cls(I, H, dtype=F64), cls(I, H, dtype=F64))
    x = _x(rng, B, T, I)
    mg.check_grads(lambda x, *ps: _run_layer(layer, x), x, *layer.parameters())


@given(seed=st.integers(0, 2**16), cls=st.sampled_from([RNN, GRU, LSTM]),
       bidirectional=st.booleans())
def test_deep_stack_gradcheck(seed, cls, bidirectional):
    rng = np.random.default_rng(seed)
    mg.manual_seed(seed)
    layer = cls(3, 3, num_layers=2, bidirectional=bidirectional, dtype=F64)
    x = _x(rng, 2, 4, 3)

    def f(x, *ps):
        out, final = layer(x)
        a = final[0] if isinstance(final, tuple) else final
        return mg.concat([out.reshape(-1), a.reshape(-1)])
    mg.check_grads(f, x, *layer.parameters())


@given(seed=st.integers(0, 2**16), cell=st.sampled_from(["rnn", "gru", "lstm"]),
       bidirectional=st.booleans())
def test_lengths_masking_gradcheck(seed, cell, bidirectional):
    rng = np.random.default_rng(seed)
    mg.manual_seed(seed)
    cls = {"rnn": RNN, "gru": GRU, "lstm": LSTM}[cell]
    layer = cls(2, 3, bidirectional=bidirectional, dtype=F64)
    x = _x(rng, 3, 5, 2)
    lengths = rng.integers(1, 6, size=3)

    def f(x, *ps):
        out, final = layer(x, lengths=lengths)
        a = final[0] if isinstance(final, tuple) else final
        return mg.concat([out.reshape(-1), a.reshape(-1)])
    mg.check_grads(f, x, *layer.parameters())


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell])
def test_learned_initial_state_gradcheck(cls):
    rng = np.random.default_rng(5)
    mg.manual_seed(5)
    layer = Recurrent(cls(2, 3, dtype=F64), learn_initial_state=True)
    with mg.no_grad():  # move the learned state away from zero
        for p in (layer.a0, getattr(layer, "c0", layer.a0)):
            p.data[:] = rng.standard_normal(3)
    x = _x(rng, 2, 3, 2)
    mg.check_grads(lambda x, *ps: _run_layer(layer, x), x, *layer.parameters())
    out, _ = layer(x)
    out.sum().backward()
    assert np.abs(layer.a0.grad).sum() > 0


def test_deep_head_gradcheck():
    rng = np.random.default_rng(6)
    mg.manual_seed(6)
    head = deep_head(3, [4], 2, dtype=F64)
    layer = GRU(2, 3, num_layers=2, head=head, dtype=F64)
    x = _x(rng, 2, 3, 2)
    out, _ = layer(x)
    assert out.shape == (2, 3, 2)
    # the head is applied at every step to the top layer's outputs, with no recurrence
    a = x
    for lay in layer.layers:
        a, _ = lay(a)
    (W1, b1), (W2, b2) = [(m.weight.data, m.bias.data) for m in (head[0], head[2])]
    want = np.tanh(a.data @ W1.T + b1) @ W2.T + b2
    np.testing.assert_allclose(out.data, want, rtol=1e-12, atol=1e-13)
    mg.check_grads(lambda x, *ps: _run_layer(layer, x), x, *layer.parameters())


# ------------------------------------------------------------------------ masking semantics

@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_running_each_sequence_alone(cls, bidirectional):
    """A padded batch with lengths = each sequence run alone, unpadded."""
    rng = np.random.default_rng(7)
    mg.manual_seed(7)
    layer = cls(3, 4, bidirectional=bidirectional, dtype=F64)
    B, T = 3, 6
    lengths = np.array([6, 2, 4])
    x = rng.standard_normal((B, T, 3))
    x_padded = x.copy()
    for b, n in enumerate(lengths):
        x_padded[b, n:] = 99.0  # garbage in the padding must not leak anywhere
    out, final = layer(mg.tensor(x_padded), lengths=lengths)
    a_n = final[0] if isinstance(final, tuple) else final
    for b, n in enumerate(lengths):
        alone, fin = layer(mg.tensor(x[b:b + 1, :n]))
        fin_a = fin[0] if isinstance(fin, tuple) else fin
        np.testing.assert_allclose(out.data[b, :n], alone.data[0], rtol=1e-12, atol=1e-13)
        assert np.all(out.data[b, n:] == 0), "padded outputs must be zero"
        np.testing.assert_allclose(a_n.data[:, b], fin_a.data[:, 0], rtol=1e-12, atol=1e-13)


def test_padding_gets_no_gradient():
    rng = np.random.default_rng(8)
    layer = LSTM(2, 3, bidirectional=True, dtype=F64)
    x = mg.tensor(rng.standard_normal((2, 5, 2)), requires_grad=True)
    out, _ = layer(x, lengths=np.array([5, 3]))
    out.sum().backward()
    assert np.all(x.grad[1, 3:] == 0)
    assert np.all(x.grad[1, :3] != 0)


# ------------------------------------------------------------------------ truncated BPTT

def test_truncated_bptt_state_carries_and_gradient_stops():
    rng = np.random.default_rng(9)
    mg.manual_seed(9)
    layer = LSTM(2, 3, dtype=F64)
    x = rng.standard_normal((2, 8, 2))
    full, _ = layer(mg.tensor(x))

    x1 = mg.tensor(x[:, :4], requires_grad=True)
    out1, state = layer(x1)
    state = tuple(s.detach() for s in state)          # cut the graph at the boundary
    out2, _ = layer(mg.tensor(x[:, 4:]), state=state)
    # the state carried over: the two chunks reproduce the full run
    np.testing.assert_allclose(np.concatenate([out1.data, out2.data], axis=1), full.data,
                               rtol=1e-12, atol=1e-13)
    out2.sum().backward()
    assert x1.grad is None, "gradient crossed the detached chunk boundary"
    assert layer.layers[0].cell.W_c.grad is not None

    # without detach, the same loss does reach the first chunk
    x1b = mg.tensor(x[:, :4], requires_grad=True)
    _, state = layer(x1b)
    out2b, _ = layer(mg.tensor(x[:, 4:]), state=state)
    out2b.sum().backward()
    assert np.abs(x1b.grad).sum() > 0


@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_given_initial_state_is_used(cls, bidirectional):
    """h0 in the documented (L·D, B, H) layout: row l·D + d starts layer l, direction d
    (0 forward, 1 backward).  The stack equals its layers and directions run one by one
    from those rows, in value, final state and the gradient of each row of h0."""
    rng = np.random.default_rng(10)
    L, D, B, H = 2, 2 if bidirectional else 1, 4, 3
    layer = cls(2, H, num_layers=L, bidirectional=bidirectional, dtype=F64)
    x = rng.standard_normal((B, 3, 2))
    lstm = cls is LSTM
    h0_np = [rng.standard_normal((L * D, B, H)) for _ in range(2 if lstm else 1)]
    w = rng.standard_normal((B, 3, H * D))
    h0 = [mg.tensor(h, requires_grad=True) for h in h0_np]
    out, h_n = layer(mg.tensor(x), state=tuple(h0) if lstm else h0[0])
    (out * mg.tensor(w)).sum().backward()

    # by hand: every (layer, direction) from its own row, each row a separate leaf
    rows = [[mg.tensor(h[r], requires_grad=True) for h in h0_np] for r in range(L * D)]
    inp, finals = mg.tensor(x), []
    for l, lay in enumerate(layer.layers):
        dirs = (lay.fwd, lay.bwd) if bidirectional else (lay,)
        outs = []
        for d, rec in enumerate(dirs):
            s = rows[l * D + d]
            o, fin = rec(inp, tuple(s) if lstm else s[0])
            outs.append(o)
            finals.append(fin)
        inp = mg.concat(outs, axis=2) if bidirectional else outs[0]
    (inp * mg.tensor(w)).sum().backward()

    np.testing.assert_allclose(out.data, inp.data, rtol=1e-12, atol=1e-13)
    for k, h in enumerate(h_n if lstm else (h_n,)):
        want = np.stack([(f[k] if lstm else f).data for f in finals])
        np.testing.assert_allclose(h.data, want, rtol=1e-12, atol=1e-13)
    for k, h in enumerate(h0):
        want = np.stack([rows[r][k].grad for r in range(L * D)])
        np.testing.assert_allclose(h.grad, want, rtol=1e-12, atol=1e-13)
        assert np.abs(h.grad).min() > 0  # every row of h0 reaches the loss


# ------------------------------------------------------------------------ shapes and heads

@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
def test_stack_shapes(cls):
    """A 3-layer bidirectional stack: shapes, and the values of its layers run one by one
    (layer l reads layer l-1's outputs; finals in (layer, direction) order)."""
    mg.manual_seed(15)
    layer = cls(5, 7, num_layers=3, bidirectional=True, dtype=F64)
    x = mg.randn(2, 4, 5, dtype=F64)
    out, final = layer(x)
    assert out.shape == (2, 4, 14)
    finals = final if isinstance(final, tuple) else (final,)
    for f in finals:
        assert f.shape == (6, 2, 7)
    inp, by_hand = x, []
    for lay in layer.layers:
        inp, (fin_f, fin_b) = lay(inp)
        by_hand += [fin_f, fin_b]
    np.testing.assert_allclose(out.data, inp.data, rtol=1e-12, atol=1e-13)
    for k, f in enumerate(finals):
        want = [(s[k] if isinstance(s, tuple) else s).data for s in by_hand]
        np.testing.assert_allclose(f.data, np.stack(want), rtol=1e-12, atol=1e-13)


def test_integer_input_equals_one_hot():
    rng = np.random.default_rng(11)
    mg.manual_seed(11)
    layer = LSTM(6, 4, dtype=F64)
    ids = rng.integers(0, 6, (3, 5))
    out_ids, _ = layer(mg.tensor(ids))
    out_ids.sum().backward()
    g_ids = layer.layers[0].cell.W_u.grad.copy()
    layer.zero_grad()
    out_oh, _ = layer(mg.one_hot(ids, 6, dtype=F64))
    out_oh.sum().backward()
    np.testing.assert_allclose(out_ids.data, out_oh.data, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_ids, layer.layers[0].cell.W_u.grad, rtol=1e-10, atol=1e-12)


def test_tagger_reads_every_time_step():
    """ŷ<t> = W_y a<t> + b_y at every t (and padded steps give just b_y)."""
    mg.manual_seed(16)
    tagger = SequenceTagger(GRU(3, 5, bidirectional=True, dtype=F64), 4)
    x, lengths = mg.randn(2, 6, 3, dtype=F64), np.array([6, 2])
    logits = tagger(x, lengths=lengths)
    assert logits.shape == (2, 6, 4)
    a, _ = tagger.rnn(x, lengths=lengths)
    want = a.data @ tagger.out.weight.data.T + tagger.out.bias.data
    np.testing.assert_allclose(logits.data, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_reads_the_top_layer_at_each_sequence_end(cls, bidirectional):
    """Many-to-one on a 2-layer stack with ``lengths``: the logits are the head applied to
    the *top* layer's [a→ at each sequence's last valid step, a← at step 0]."""
    mg.manual_seed(17)
    H = 5
    clf = SequenceClassifier(cls(3, H, num_layers=2, bidirectional=bidirectional, dtype=F64), 2)
    x, lengths = mg.randn(3, 6, 3, dtype=F64), np.array([6, 2, 4])
    logits = clf(x, lengths=lengths)
    assert logits.shape == (3, 2)
    top, _ = clf.rnn(x, lengths=lengths)  # (B, T, H·D): the top layer's outputs
    rows = np.arange(3)
    last = top.data[rows, lengths - 1, :H]
    if bidirectional:
        last = np.concatenate([last, top.data[:, 0, H:]], axis=1)
    want = last @ clf.out.weight.data.T + clf.out.bias.data
    np.testing.assert_allclose(logits.data, want, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------ gradient flow

@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradient_flow_shows_vanishing_gradients(reverse):
    """With small recurrent weights ‖∂L/∂a<t>‖ for a loss on the last step decays backwards.
    For a reverse layer the last step is t = 1: its norms, read in time order, mirror."""
    mg.manual_seed(12)
    cell = RNNCell(4, 16, dtype=F64)
    with mg.no_grad():
        cell.W_a.data *= 0.5
    layer = Recurrent(cell, reverse=reverse)
    layer.retain_states = True
    out, _ = layer(mg.randn(2, 20, 4, dtype=F64))
    out[:, 0 if reverse else -1].sum().backward()
    norms = gradient_flow(layer)
    for t in range(20):  # states are kept in time order, whatever the direction
        np.testing.assert_array_equal(layer.states[t].data, out.data[:, t])
    norms = norms[::-1] if reverse else norms
    assert norms.shape == (20,)
    assert norms[-1] > 0
    assert norms[0] < 1e-3 * norms[-1]
    assert np.all(np.diff(norms[:-1]) > 0), "norms should grow towards the loss"


# ------------------------------------------------------------------------ bad input

def test_bad_input_errors():
    layer = LSTM(3, 4)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, T, 3\)"):
        layer(mg.randn(2, 3))
    with pytest.raises(ValueError, match="feature size .dimension 2. is 5, expected input_size=3"):
        layer(mg.randn(2, 6, 5))
    too_long = r"lengths must be in 1\.\.6 \(T, the padded length\), got min 2 max 7"
    with pytest.raises(ValueError, match=too_long):
        layer(mg.randn(2, 6, 3), lengths=np.array([7, 2]))
    with pytest.raises(ValueError, match=r"lengths must be in 1\.\.6 .*got min 0 max 2"):
        layer(mg.randn(2, 6, 3), lengths=np.array([0, 2]))
    with pytest.raises(ValueError, match="batch sizes differ: 1 lengths for a batch of 2"):
        layer(mg.randn(2, 6, 3), lengths=np.array([3]))
    with pytest.raises(ValueError, match="lengths must be 2 integers"):
        layer(mg.randn(2, 6, 3), lengths=np.array([3.0, 2.0]))
    with pytest.raises(ValueError, match=r"initial state has shape \(1, 5, 4\), expected"):
        layer(mg.randn(2, 6, 3), state=(mg.zeros(1, 5, 4), mg.zeros(1, 5, 4)))
    with pytest.raises(ValueError, match="state must be a pair"):
        layer(mg.randn(2, 6, 3), state=mg.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"state has shape \(3, 4\), expected \(B, H\)"):
        Recurrent(RNNCell(3, 4))(mg.randn(2, 6, 3), state=mg.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'"):
        RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="reset_after=True needs full=True"):
        GRUCell(3, 4, full=False, reset_after=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'peepholes'"):
        LSTM(3, 4, peepholes=True)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        LSTMCell(3, 0)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        GRU(3, 4, num_layers=0)


# ------------------------------------------------------------------------ learning

@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_learns_to_remember_the_first_token(cls):
    """Many-to-one: the label is the first of 8 random bits — it must be carried 7 steps."""
    mg.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SequenceClassifier(cls(2, 16), 2)
    opt = mg.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        bits = rng.integers(0, 2, (32, 8))
        loss = mg.cross_entropy(model(mg.tensor(bits)), bits[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    bits = rng.integers(0, 2, (256, 8))
    with mg.no_grad():
        acc = (model(mg.tensor(bits)).data.argmax(1) == bits[:, 0]).mean()
    assert acc > 0.95, f"accuracy {acc:.2f} (chance is 0.5)"


# ------------------------------------------------------------------------ fused primitives

# ------------------------------------------------------------------------ heads over wrappers

WRAPPERS = {
    "recurrent": lambda cls, I, H: Recurrent(cls.cell_class(I, H)),
    "bidirectional": lambda cls, I, H: Bidirectional(cls.cell_class(I, H),
                                                     cls.cell_class(I, H)),
    "stack": lambda cls, I, H: cls(I, H),
    "bidirectional stack": lambda cls, I, H: cls(I, H, bidirectional=True),
    "deep bidirectional stack": lambda cls, I, H: cls(I, H, num_layers=2, bidirectional=True),
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
def test_every_wrapper_inside_every_head(cls, wrapper):
    """SequenceClassifier(Bidirectional(cell, cell), n) used to crash (a Linear shape error
    for GRU/RNN cells, "cannot make a tensor from tuple" for LSTM cells).  The classifier's
    last state is checked against the wrapper's own outputs: a→ at each sequence's last
    step and a← at its first."""
    mg.manual_seed(3)
    I, H, C, T = 3, 4, 5, 6
    rnn = WRAPPERS[wrapper](cls, I, H)
    D = 2 if "bidirectional" in wrapper else 1
    x, lengths = mg.randn(2, T, I), np.array([T, 2])
    tagger = SequenceTagger(rnn, C)
    assert tagger(x, lengths=lengths).shape == (2, T, C)
    clf = SequenceClassifier(rnn, C)
    logits = clf(x, lengths=lengths)
    assert logits.shape == (2, C)
    with mg.no_grad():
        outputs = rnn(x, lengths=lengths)[0].data  # (B, T, D·H)
    last = outputs[np.arange(2), lengths - 1, :H]
    if D == 2:
        last = np.concatenate([last, outputs[:, 0, H:]], axis=1)
    expected = last @ clf.out.weight.data.T + clf.out.bias.data
    np.testing.assert_allclose(logits.data, expected, rtol=1e-5, atol=1e-6)
    logits.sum().backward()  # and it trains: every parameter gets a gradient
    assert all(p.grad is not None for p in clf.parameters())


def test_float64_input_to_a_float32_model_is_refused():
    # As PyTorch: float64 data used to run the whole float32 model in float64, ~3x slower.
    x64 = np.random.default_rng(0).normal(size=(2, 5, 3))
    for model in (LSTM(3, 4), Recurrent(GRUCell(3, 4)), SequenceTagger(RNN(3, 4), 2)):
        with pytest.raises(TypeError, match="input has dtype float64 but the model is float32"):
            model(x64)
        model(x64.astype(np.float32))  # the fix the message suggests works
    with pytest.raises(TypeError, match="Linear: input has dtype float64 but the layer's "
                                        "weight is float32"):
        mg.nn.Linear(3, 2)(x64)
    with pytest.raises(TypeError, match="input has dtype float32 but the model is float64"):
        LSTM(3, 4, dtype=F64)(x64.astype(np.float32))


def test_token_ids_out_of_range_name_the_bad_id():
    layer = GRU(5, 4)
    with pytest.raises(IndexError, match=r"token id -2 is out of range \(negative\): expected "
                                         r"0\.\.4 for input_size=5"):
        layer(np.array([[1, -2, 3]]))  # the message used to name the largest id, 3
    with pytest.raises(IndexError, match=r"token id 9 is out of range \(too large\)"):
        layer(np.array([[1, 9, 3]]))


def test_a_state_of_the_wrong_structure_or_input_size_names_the_cell():
    """An (a, c) pair given to a GRU, and an LSTMCell(8, 16) given 7 input features, used to
    fail deep inside NumPy or matmul without naming the cell or the expected size."""
    gru, x = GRU(3, 4), mg.randn(2, 5, 3)
    pair = (mg.zeros(1, 2, 4), mg.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"GRU: the state is one tensor h_0 of shape \(1, 2, 4\), "
                                         r"got a tuple of 2"):
        gru(x, pair)
    with pytest.raises(ValueError, match=r"GRUCell: the state must be a tensor a \(B, H\), "
                                         r"got a tuple of 2 \(an LSTM's \(a, c\) pair\?\)"):
        Recurrent(GRUCell(3, 4))(x, (mg.zeros(2, 4), mg.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"GRUCell: the state is one tensor"):
        GRUCell(3, 4)(mg.randn(2, 3), (mg.zeros(2, 4), mg.zeros(2, 4)))
    cell = LSTMCell(8, 16)
    with pytest.raises(ValueError, match=r"LSTMCell\(8, 16\): x<t> has shape \(2, 7\), "
                                         r"expected \(B, input_size\) = \(B, 8\)"):
        cell(mg.randn(2, 7), (mg.zeros(2, 16), mg.zeros(2, 16)))
    with pytest.raises(ValueError, match=r"LSTMCell: the state is a pair"):
        cell(mg.randn(2, 8), mg.zeros(2, 16))
