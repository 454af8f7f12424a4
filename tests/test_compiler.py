"""The recurrence compiler: compiled equals eager, every rewrite preserves values, a cell of
the user's own compiles, and a cell that cannot compile says why and runs eagerly."""

import os
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from minigrad.compiler import compile_step, rewrites
from minigrad.compiler.ir import Var, stages, verify
from minigrad.nn import Module, Parameter, init
from models.cells import GRUCell, LSTMCell, RNNCell
from models.layers import GRU, LSTM, RNN, Recurrent, gradient_flow

F64 = np.float64
CELLS = {
    "rnn-tanh": lambda I, H, **k: RNNCell(I, H, **k),
    "rnn-relu": lambda I, H, **k: RNNCell(I, H, nonlinearity="relu", **k),
    "gru-simplified": lambda I, H, **k: GRUCell(I, H, full=False, **k),
    "gru-full": lambda I, H, **k: GRUCell(I, H, **k),
    "gru-reset-after": lambda I, H, **k: GRUCell(I, H, reset_after=True, **k),
    "lstm": lambda I, H, **k: LSTMCell(I, H, **k),
    "lstm-peephole": lambda I, H, **k: LSTMCell(I, H, peephole=True, **k),
}


# ------------------------------------------------------------------ cells of the user's own

class MinimalGatedUnit(Module):
    """Zhou et al. (2016): one forget gate.  f = σ(W_f[a, x] + b_f);
    a~ = tanh(W_a[f * a, x] + b_a);  a<t> = (1 - f) * a<t-1> + f * a~."""

    def __init__(self, input_size, hidden_size, dtype=np.float32):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H, I = hidden_size, input_size
        self.W_f = init.rnn_uniform_(Parameter(np.zeros((H, H + I), dtype)), H)
        self.W_a = init.rnn_uniform_(Parameter(np.zeros((H, H + I), dtype)), H)
        self.b_f = Parameter(np.zeros(H, dtype))
        self.b_a = Parameter(np.zeros(H, dtype))

    def forward(self, x, a):
        f = (mg.concat([a, x], axis=1) @ self.W_f.T + self.b_f).sigmoid()
        a_tilde = (mg.concat([f * a, x], axis=1) @ self.W_a.T + self.b_a).tanh()
        return (1 - f) * a + f * a_tilde


class CoupledLSTM(LSTMCell):
    """An LSTM whose input and forget gates are coupled: Γu = 1 - Γf (a subclass that
    overrides ``forward``: what it writes is what runs)."""

    def forward(self, x, state):
        a, c = state
        ax = mg.concat([a, x], axis=1)
        G_f = (ax @ self.W_f.T + self.b_f).sigmoid()
        c = (1 - G_f) * (ax @ self.W_c.T + self.b_c).tanh() + G_f * c
        return (ax @ self.W_o.T + self.b_o).sigmoid() * c.tanh(), c


class SoftmaxRNN(RNNCell):
    """Rows with no rule of their own in the loop (softmax over the state, a sum): the
    reverse program calls their VJPs, and the loop runs as Python."""

    def forward(self, x, a):
        z = mg.concat([a, x], axis=1) @ self.W_a.T + self.b_a
        s = z.softmax(axis=1)
        return s * z.tanh() + 0.1 * (s * a).sum(axis=1, keepdims=True)


class ViewsCell(Module):
    """Column views of a step's GEMM that overlap (z) or leave columns unread (y), and a
    concat that feeds no GEMM: their reverses pad with zeros, fill gaps and slice."""

    def __init__(self, input_size, hidden_size, dtype=np.float32):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H, I = hidden_size, input_size
        self.W = init.rnn_uniform_(Parameter(np.zeros((H + I, 2 * H + 2), dtype)), H)
        self.V = init.rnn_uniform_(Parameter(np.zeros((H, 2 * H + 1), dtype)), H)

    def forward(self, x, a):
        H = self.hidden_size
        z = mg.concat([a, x], axis=1) @ self.W
        p, q = z[:, :H].tanh(), z[:, H // 2:H // 2 + H].sigmoid()  # overlapping columns
        y = a @ self.V  # column H is never read: its cotangent is a gap of zeros
        u = mg.concat([p * y[:, :H].tanh(), y[:, H + 1:2 * H + 1]], axis=1)
        return q * u[:, :H] + (1 - q) * u[:, H:].tanh()


class ScaledCell(Module):
    """One gain, shape (1,) or () (``"scaled-0d"``), on the whole pre-activation: its
    gradient is a sum over every element of every step, accumulated in the reverse loop
    (where each step's term had been written over the running sum: a wrong gradient, found
    by this cell; a 0-d gain made the compiler fail)."""

    def __init__(self, input_size, hidden_size, dtype=np.float32, shape=(1,)):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H, I = hidden_size, input_size
        self.W = init.rnn_uniform_(Parameter(np.zeros((H + I, H), dtype)), H)
        self.gain = Parameter(np.full(shape, 0.7, dtype))

    def forward(self, x, a):
        return (mg.concat([a, x], axis=1) @ self.W * self.gain).tanh()


class NamesCell(Module):
    """Parameters named like the generated Python's own names (``np``, ``g``, ``dW`` beside
    ``W``, whose cotangent is ``dW`` there): the programs before and after the loop must
    keep each value apart from every other and from their helpers."""

    def __init__(self, input_size, hidden_size, dtype=np.float32):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H, I = hidden_size, input_size
        self.W = init.rnn_uniform_(Parameter(np.zeros((I, H), dtype)), H)
        self.dW = init.rnn_uniform_(Parameter(np.zeros((H, H), dtype)), H)
        self.np, self.g = Parameter(np.full(H, 0.5, dtype)), Parameter(np.full(H, 0.9, dtype))

    def forward(self, x, a):
        return ((x @ self.W + a @ self.dW) * self.g).tanh() * self.np.sigmoid()


class Branchy(RNNCell):
    """Python control flow on a tensor's value: cannot be traced into a fixed program."""

    def forward(self, x, a):
        a = super().forward(x, a)
        return a * 2.0 if float(a.data.sum()) > 0 else a


CELLS.update({"mgu": MinimalGatedUnit, "coupled-lstm": lambda I, H, **k: CoupledLSTM(I, H, **k),
              "softmax-rnn": lambda I, H, **k: SoftmaxRNN(I, H, **k), "views": ViewsCell,
              "scaled": ScaledCell, "scaled-0d": lambda I, H, **k: ScaledCell(I, H, shape=(), **k),
              "names": NamesCell})


# ------------------------------------------------------------------ compiled = eager

def _both_paths(make_layer, x, state=None, lengths=None, seed=0):
    """Outputs, final states and every gradient (parameters, input, initial state) of the
    same layer run compiled and eager on the same loss."""
    results = []
    for compiled in (True, False):
        mg.manual_seed(seed)
        layer = make_layer(compiled)
        xt = mg.tensor(x, requires_grad=x.dtype.kind == "f")
        st_ = None
        if state is not None:
            st_ = tuple(mg.tensor(s, requires_grad=True) for s in state)
        out, final = layer(xt, st_ if st_ is None or len(st_) > 1 else st_[0], lengths)
        finals = final if isinstance(final, tuple) else (final,)
        finals = [f for part in finals for f in (part if isinstance(part, tuple) else (part,))]
        rng = np.random.default_rng(99)
        loss = (out * rng.standard_normal(out.shape)).sum()
        for f in finals:
            loss = loss + (f * rng.standard_normal(f.shape)).sum()
        loss.backward()
        grads = [p.grad for p in layer.parameters()]
        grads += [xt.grad] if xt.requires_grad else []
        grads += [s.grad for s in (st_ or ())]
        results.append(([out.data] + [f.data for f in finals], grads))
    (v1, g1), (v2, g2) = results
    for a, b in zip(v1 + g1, v2 + g2):
        if a is None or b is None:  # a parameter the forward never reads (CoupledLSTM's W_u)
            assert a is None and b is None
            continue
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    return results


@pytest.mark.parametrize("name", CELLS)
@given(size=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4),
                      st.integers(1, 4)),
       reverse=st.booleans(), masked=st.booleans(), given_state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_compiled_equals_eager_for_every_cell(name, size, reverse, masked, given_state, seed):
    """Values and every gradient, float64, both directions, with and without lengths and
    a given initial state."""
    B, T, I, H = size
    rng = np.random.default_rng(seed)
    cell = CELLS[name](I, H, dtype=F64)
    arity = getattr(cell, "state_arity", 1)
    x = rng.standard_normal((B, T, I))
    state = [rng.standard_normal((B, H)) for _ in range(arity)] if given_state else None
    lengths = rng.integers(1, T + 1, B) if masked else None
    _both_paths(lambda compiled: Recurrent(cell, reverse=reverse, compiled=compiled), x, state,
                lengths)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_the_backward_kernels_are_typed_ahead_as_their_loop_calls_them(name, dtype):
    """A new cell's backward kernels compile in a forked process while its forward runs
    (``compile_cache.compile_forked``), for the signatures the emitter gives them: these
    must be the ones the backward loop then calls them with, with and without lengths."""
    from minigrad.compiler.scan import _CACHE

    cell = CELLS[name](3, 4, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(dtype)
    for lengths in (None, np.array([5, 2])):
        out, _ = Recurrent(cell, compiled=True)(mg.tensor(x), None, lengths)
        (out * out).sum().backward()
    steps = list(_CACHE[cell].values())
    assert len(steps) == 2 and all(s.backward_kernels for s in steps)
    for step in steps:
        for module, sig in step.backward_kernels:
            assert module.fused.signatures == [sig], (module.__name__, step.kernel_source)


@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
def test_compiled_equals_eager_for_deep_bidirectional_stacks(cls):
    """Dropout between layers, learned initial states and lengths, on both paths."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 4))
    _both_paths(lambda compiled: cls(4, 5, num_layers=2, bidirectional=True, dropout=0.3,
                                     learn_initial_state=True, compiled=compiled, dtype=F64),
                x, lengths=np.array([6, 4, 1]))


def test_compiled_equals_eager_on_integer_ids():
    """(B, T) ids stand for one-hot rows: a lookup on the compiled path."""
    ids = np.random.default_rng(2).integers(0, 7, (3, 5))
    _both_paths(lambda compiled: LSTM(7, 4, compiled=compiled, dtype=F64), ids)


def test_an_input_that_wants_no_gradient_gets_none_computed():
    """A tagger's dense features (data, no requires_grad): the compiled step runs the
    equations before the loop without x's cotangent (the input projection's x-gradient is a
    GEMM as large as its weight's), and every parameter's gradient is still eager's."""
    x = np.random.default_rng(4).standard_normal((3, 5, 6))
    grads = []
    for compiled in (False, True):
        mg.manual_seed(4)
        layer = LSTM(6, 4, compiled=compiled, dtype=F64)
        xt = mg.tensor(x)
        layer(xt)[0].tanh().sum().backward()
        assert xt.grad is None
        grads.append([p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    step = next(iter(sys.modules["minigrad.compiler.scan"]._CACHE[layer.layers[0].cell].values()))
    ran = [src.text for wants, (src, *_) in step._befores.items()]
    n = len(step.program.params)
    assert list(step._befores) == [tuple(range(n + 1)), tuple(range(n))]  # all; then not x
    assert "_matmul_vjp[0]" in ran[0] and "_matmul_vjp[0]" not in ran[1]
    assert "_matmul_vjp[1]" in ran[1]  # (the weight's: still there)


@pytest.mark.parametrize("name", ["lstm", "gru-full", "rnn-tanh"])
def test_compiled_path_gradchecks(name):
    """Finite differences on the compiled path itself (not only agreement with eager)."""
    mg.manual_seed(3)
    layer = Recurrent(CELLS[name](3, 4, dtype=F64))
    x = mg.tensor(np.random.default_rng(3).standard_normal((2, 4, 3)), requires_grad=True)
    mg.check_grads(lambda x, *ps: layer(x, lengths=np.array([4, 2]))[0].tanh().sum(),
                   x, *layer.parameters())


@pytest.mark.parametrize("B,I,H", [(4, 5, 6), (16, 32, 128)])
def test_float32_compiled_close_to_float64_eager(B, I, H):
    """The second call: its loops in Numba (at 16 x 128 x 512 their GEMMs read the weights
    packed, ``blas.gemm32p``; the first call's, in Python, call cblas_sgemm)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, 8, I))
    outs = []
    for dtype, compiled in ((np.float32, True), (F64, False)):
        mg.manual_seed(4)
        layer = LSTM(I, H, peephole=True, dtype=dtype, compiled=compiled)
        for _ in range(2):
            layer.zero_grad()
            xt = mg.tensor(x.astype(dtype), requires_grad=True)
            out, _ = layer(xt)
            (out * out).sum().backward()
        outs.append([out.data, xt.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_retained_states_and_gradient_flow_agree(reverse):
    """‖∂L/∂a<t>‖ is the same whether BPTT is recorded step by step or derived."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 3))
    flows, states = [], []
    for compiled in (True, False):
        mg.manual_seed(5)
        layer = Recurrent(GRUCell(3, 4, dtype=F64), reverse=reverse, compiled=compiled)
        layer.retain_states = True
        out, _ = layer(mg.tensor(x))
        (out[:, 0] if reverse else out[:, -1]).sum().backward()
        flows.append(gradient_flow(layer))
        states.append(np.stack([a.data for a in layer.states], axis=1))
        np.testing.assert_allclose(states[-1], out.data)  # time order
    np.testing.assert_allclose(flows[0], flows[1], rtol=1e-10, atol=1e-14)
    assert flows[0][0 if reverse else -1] > flows[0][-1 if reverse else 0]


def test_truncated_bptt_on_the_compiled_path():
    rng = np.random.default_rng(6)
    mg.manual_seed(6)
    layer = Recurrent(LSTMCell(3, 4, dtype=F64))
    x = mg.tensor(rng.standard_normal((2, 6, 3)), requires_grad=True)
    out1, state = layer(x[:, :3])
    state = tuple(s.detach() for s in state)
    out2, _ = layer(x[:, 3:], state)
    out2.sum().backward()
    assert np.all(x.grad[:, :3] == 0) and np.any(x.grad[:, 3:] != 0)


# ------------------------------------------------------------------ a new cell for free

@pytest.mark.parametrize("name", ["mgu", "coupled-lstm"])
def test_a_cell_of_your_own_compiles_and_learns_nothing_by_hand(name):
    """Written with the tensor API only, no kernel: it compiles (one tape node per sequence)
    and equals its own forward unrolled by hand."""
    mg.manual_seed(7)
    cell = CELLS[name](3, 5, dtype=F64)
    layer = Recurrent(cell)
    x = mg.tensor(np.random.default_rng(7).standard_normal((2, 4, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        out, _ = layer(x)
    assert layer.compiled
    state = tuple(mg.zeros(2, 5, dtype=F64) for _ in range(getattr(cell, "state_arity", 1)))
    state = state[0] if len(state) == 1 else state
    for t in range(4):
        state = cell(x[:, t], state)
        a = state if isinstance(state, mg.Tensor) else state[0]
        np.testing.assert_allclose(out.data[:, t], a.data, rtol=1e-12)
    scans = {n.prim.name for n in [out._node.parents[0]._node]}
    assert any(s.startswith("scan[") for s in scans)


def test_a_subclass_runs_its_own_forward():
    """The bug this compiler fixes: a subclass overriding forward used to run the parent's
    fast path (off by up to 0.067)."""
    _both_paths(lambda compiled: Recurrent(CoupledLSTM(3, 4, dtype=F64), compiled=compiled),
                np.random.default_rng(8).standard_normal((2, 5, 3)))


class TrainOnly(RNNCell):
    """A forward that reads ``self.training`` (a step damped while training only)."""

    def forward(self, x, a):
        a = super().forward(x, a)
        return a * 0.5 if self.training else a


def test_a_cell_that_reads_its_training_flag_is_compiled_per_mode():
    # The step compiled in training mode had been reused in eval mode (no key for the flag).
    x = mg.tensor(np.random.default_rng(10).standard_normal((2, 5, 3)))
    layers = []
    for compiled in (True, False):
        mg.manual_seed(10)
        layers.append(Recurrent(TrainOnly(3, 4, dtype=F64), compiled=compiled))
    for mode in (True, False, True, False):
        fast, ref = (layer.train(mode)(x)[0] for layer in layers)
        np.testing.assert_allclose(fast.data, ref.data, rtol=1e-12)
    assert layers[0].compiled


def test_a_cell_that_cannot_compile_warns_and_runs_eagerly():
    mg.manual_seed(9)
    cell = Branchy(3, 4, dtype=F64)
    layer = Recurrent(cell)
    x = mg.tensor(np.random.default_rng(9).standard_normal((2, 5, 3)))
    with pytest.warns(UserWarning, match="running Branchy eagerly.*compiled=False"):
        out, _ = layer(x)
    assert not layer.compiled
    eager, _ = Recurrent(cell, compiled=False)(x)
    np.testing.assert_array_equal(out.data, eager.data)


def test_a_module_without_the_cell_protocol_gets_a_clear_error():
    with pytest.raises(TypeError, match="needs input_size, hidden_size and forward"):
        Recurrent(mg.nn.Linear(3, 4))


# ------------------------------------------------------------------ the IR and its rewrites

def _traced(name="lstm", I=3, H=4):
    cell = CELLS[name](I, H, dtype=F64)
    rng = np.random.default_rng(10)
    parts = [mg.tensor(rng.standard_normal((2, H)))
             for _ in range(getattr(cell, "state_arity", 1))]
    return cell, mg.trace(cell, mg.tensor(rng.standard_normal((2, I))),
                          parts[0] if len(parts) == 1 else tuple(parts))


def _run(prog, cell, seed=11, B=3):
    """Evaluate a (rewritten) program with tensor ops on fresh inputs."""
    rng = np.random.default_rng(seed)
    env = {v: p for v, (_, p) in zip(prog.params, cell.named_parameters())}
    for v in prog.xs + prog.state:
        env[v] = mg.tensor(rng.standard_normal((B,) + v.shape[1:]))
    return [o.data for o in prog.run(env)]


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("rewrite", rewrites.REWRITES, ids=lambda r: r.__name__)
def test_every_rewrite_preserves_values(name, rewrite):
    cell, prog = _traced(name)
    before = _run(prog, cell)
    for r in rewrites.REWRITES[:rewrites.REWRITES.index(rewrite)]:
        prog = r(prog)
    before_step = _run(prog, cell)
    after = _run(rewrite(prog), cell)
    for a, b, c in zip(before, before_step, after):
        np.testing.assert_allclose(b, a, rtol=1e-12)
        np.testing.assert_allclose(c, a, rtol=1e-12)


def test_split_concat_matmul_leaves_no_concat_feeding_a_matmul():
    _, prog = _traced("lstm")
    assert any(e.prim.name == "concat" for e in prog.eqns)
    out = rewrites.split_concat_matmul(prog)
    assert not any(e.prim.name == "concat" for e in out.eqns)
    assert sum(e.prim.name == "matmul" for e in out.eqns) == 8  # 4 gates × [a, x]


def test_gather_one_hot_turns_the_input_matmul_into_a_lookup():
    cell = LSTMCell(6, 4, dtype=F64)
    prog = mg.trace(cell, mg.tensor(np.array([1, 5])), (mg.zeros(2, 4, dtype=F64),) * 2)
    assert any(e.prim.name == "one_hot" for e in prog.eqns)
    out = rewrites.gather_one_hot(rewrites.split_concat_matmul(prog))
    assert not any(e.prim.name == "one_hot" for e in out.eqns)
    lookups = [e for e in out.eqns if e.prim.name == "getitem" and isinstance(e.args[1], Var)]
    assert len(lookups) == 4


def test_merge_gemms_leaves_one_gemm_on_the_state_and_one_on_the_input():
    _, prog = _traced("lstm")
    out = prog.optimize()
    level = stages(out)
    gemms = [e for e in out.eqns if e.prim.name == "matmul"]
    assert [level[e.outs[0]] for e in gemms] == [rewrites.INPUT, rewrites.LOOP]
    assert gemms[0].outs[0].shape == (None, 16) and gemms[1].outs[0].shape == (None, 16)


@pytest.mark.parametrize("name", ["lstm", "gru-reset-after", "lstm-peephole"])
def test_stacked_weights_are_one_layout_each(name):
    """The gates' weights side by side, transposed, split into the state's rows and the
    input's: one ``layout`` each (one copy, contiguous), and the reverse loop's transposed
    weight too — no chain of transposes, splits and concats is left around the loop."""
    cell, lstm = CELLS[name](3, 5, dtype=F64), "lstm" in name
    step = compile_step(cell, mg.zeros(2, 3, dtype=F64), _parts(2, 5, 2 if lstm else 1))
    assert [e.prim.name for e in step.pre] == ["layout", "layout", "matmul"]
    assert [e.prim.name for e in step.rev.prologue] == ["layout"]
    assert step.rev.prologue[0].outs[0].shape == ((4 if lstm else 3) * 5, 5)


def test_reset_before_gru_keeps_two_gemms_in_the_loop():
    """Γr * c<t-1> must exist before c~'s GEMM: the Γu/Γr GEMMs merge, c~'s cannot."""
    _, prog = _traced("gru-full")
    out = prog.optimize()
    loop = [e for e in out.eqns if e.prim.name == "matmul"
            and stages(out)[e.outs[0]] == rewrites.LOOP]
    assert len(loop) == 2


def test_hoist_orders_invariant_then_input_then_loop():
    _, prog = _traced("gru-reset-after")
    out = prog.optimize()
    levels = [stages(out)[e.outs[0]] for e in out.eqns]
    assert levels == sorted(levels)
    text = repr(out)
    for header in ("once per sequence", "for all t at once", "the loop body"):
        assert header in text


def test_the_printed_ir_reads_like_the_chapter():
    cell, prog = _traced("gru-simplified")
    text = repr(prog)
    assert text.count("sigmoid") == 1 and text.count("tanh") == 1
    assert "sub 1 " in text          # (1 - Γu)
    assert "W_c" in text and "W_u" in text and "c_prev" in text


def test_the_compiled_step_shows_its_derived_reverse_program():
    """``print(step)``: the loop body, its reverse (BPTT as equations: da_prev, what step t
    carries to step t-1, is an output) and the generated loops."""
    cell = CELLS["lstm"](3, 4, dtype=F64)
    step = compile_step(cell, mg.zeros(2, 3, dtype=F64), _parts(2, 4, 2))
    text = repr(step.reverse)
    assert text.startswith("{ lambda") and "da_prev" in text and "dc_prev" in text
    assert step.reverse.outs[0].name == "da_prev" and step.reverse.state[0].name == "da"
    assert "def backward" in step.source and "def forward" in step.source
    # one GEMM and one fused kernel per step forward; one kernel and one GEMM back
    fwd, bwd = step.source.split("def backward")
    assert fwd.count("gemm32p(") == 1 and fwd.count("fused") == 1
    assert bwd.count("gemm32p(") == 1 and bwd.count("fused") == 1
    assert "@kernel" in step.kernel_source


def test_liveness_keeps_the_five_gate_activations_of_an_lstm():
    """What each step keeps for the backward is what the reverse program reads."""
    step = compile_step(CELLS["lstm"](3, 4, dtype=F64), mg.zeros(2, 3, dtype=F64),
                        _parts(2, 4, 2))
    ops_of = {v: e.prim.name for e in step.body.eqns for v in e.outs}
    assert sorted(ops_of[v] for v in step.kept) == ["sigmoid"] * 3 + ["tanh"] * 2


def _parts(B, H, n, rng=None):
    rng = rng or np.random.default_rng(0)
    parts = tuple(mg.tensor(rng.standard_normal((B, H))) for _ in range(n))
    return parts[0] if n == 1 else parts


def _interpreted_loop(step, env, G, T, reverse):
    """The loop run by the interpreter (``Program.run``): the body forward step by step,
    keeping every value, then the *reverse program* backwards.  Returns the cotangents of
    the loop's inputs and the carried cotangent of the initial state."""
    body, rev = step.body, step.reverse
    order = range(T - 1, -1, -1) if reverse else range(T)
    consts = {c: env[c] for c in body.consts}
    state, seen = [env[f"H{i}"][T if reverse else 0] for i in range(len(body.state))], {}
    for t in order:
        vals = body.run({**consts, **{x: env[x][t] for x in body.xs},
                         **dict(zip(body.state, state))}, everything=True)
        seen[t] = {v: np.asarray(mg.as_array(val)) for v, val in vals.items()}
        state = [seen[t][v] for v in body.outs]
    carry = [np.zeros_like(s) for s in state]
    ys = {v: np.zeros_like(env[v]) for v in step.dxs}
    acc = {c: 0 for c in step.dconsts}
    given = rev.xs[-len(body.state):]
    for t in reversed(list(order)):
        inputs = {**{c: env[c] for c in rev.consts}, **{v: seen[t][v] for v in rev.xs
                                                       if v not in given},
                  **{g: G[i][t] for i, g in enumerate(given)}, **dict(zip(rev.state, carry))}
        out = [mg.as_array(o) for o in rev.run(inputs)]
        carry, y, a = out[:len(rev.outs)], out[len(rev.outs):-len(rev.acc) or None], \
            out[len(out) - len(rev.acc):]
        for v, val in zip(step.dxs, y):
            ys[v][t] = val
        for c, val in zip(step.dconsts, a):
            acc[c] = acc[c] + val
    return {**ys, **acc}, carry


@pytest.mark.parametrize("masked", [False, True], ids=["", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["", "reverse"])
@pytest.mark.parametrize("name", CELLS)
def test_the_reverse_program_equals_the_generated_loop_and_the_tape(name, reverse, masked):
    """The reverse program, evaluated step by step by the interpreter, gives the generated
    reverse loop's cotangents, and through the equations before the loop, the eager tape's
    gradients (every cell, a user cell with a two-part state, lengths, both directions)."""
    rng = np.random.default_rng(20)
    B, T, I, H = 3, 4, 3, 5
    mg.manual_seed(20)
    cell = CELLS[name](I, H, dtype=F64)
    n = getattr(cell, "state_arity", 1)
    step = compile_step(cell, mg.zeros(2, I, dtype=F64), _parts(2, H, n), masked=masked)
    verify(step.reverse)
    params = [p.data for _, p in cell.named_parameters()]
    x, init = rng.standard_normal((T, B, I)), [rng.standard_normal((B, H)) for _ in range(n)]
    lengths = np.array([4, 2, 1])
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(F64)[:, :, None] if masked \
        else None
    G = [rng.standard_normal((T, B, H)) for _ in range(n)]
    ctx, wants = {}, tuple(range(len(params) + 1))  # (every parameter and x)
    out = step._fwd(*params, x, *init, mask, reverse, None, wants, ctx)
    env, r = ctx["env"], int(reverse)
    step._vjp(tuple(G), out, *params, x, *init, mask, reverse, None, wants, ctx)  # fills ctx
    generated = step._loop_cotangents({**ctx["full"], **ctx["sums"]}, r, T)
    env.update((f"H{i}", ctx["full"][f"H{i}"]) for i in range(n))
    interpreted, carry = _interpreted_loop(step, env, G, T, reverse)
    for v in generated:
        np.testing.assert_allclose(interpreted[v], generated[v], rtol=1e-10, atol=1e-12)
    grads = step._pre_vjp(ctx, interpreted, carry)
    # the eager tape: the same cell unrolled step by step, every state part at every step
    ps = [p for _, p in cell.named_parameters()]
    xt, st = mg.tensor(x, requires_grad=True), [mg.tensor(i, requires_grad=True) for i in init]
    state, loss = st[0] if n == 1 else tuple(st), 0
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = cell(xt[t], state)
        new = (new,) if n == 1 else tuple(new)
        if masked:
            old = (state,) if n == 1 else state
            new = tuple(mg.where(mask[t] > 0, a, b) for a, b in zip(new, old))
        loss = loss + sum((part * G[i][t]).sum() for i, part in enumerate(new))
        state = new[0] if n == 1 else new
    loss.backward()
    want = [p.grad for p in ps] + [xt.grad] + [s.grad for s in st]
    for got, w in zip(grads, want):
        if w is None:  # a parameter the forward never reads (CoupledLSTM's W_u)
            assert got is None or not np.any(got)
            continue
        np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["lstm-peephole", "gru-full", "mgu"])
def test_numba_loops_equal_the_same_loops_in_python_bit_for_bit(name, threads, monkeypatch):
    """float32 runs the generated loops as Python first and as Numba once compiled (in the
    background): the same source, the same kernels and the same BLAS calls, so the switch
    changes no bit — values, every gradient and ∂L/∂a<t>, masked, reversed, in chunks."""
    import sys

    from minigrad import compile_cache
    from minigrad import threads as threads_module
    scan_module = sys.modules["minigrad.compiler.scan"]
    mg.set_num_threads(threads)
    ran, elsewhere = [], []
    real_run, real_elsewhere = threads_module.run, compile_cache.compile_elsewhere
    monkeypatch.setattr(threads_module, "run", lambda k, *a: ran.append(k.__name__) or
                        real_run(k, *a))
    monkeypatch.setattr(compile_cache, "compile_elsewhere", lambda *a: elsewhere.append(
        real_elsewhere(*a)) or elsewhere[-1])
    try:
        mg.manual_seed(12)
        layer = Recurrent(CELLS[name](3, 4), reverse=True)
        layer.retain_states = True
        x = mg.tensor(np.random.default_rng(12).standard_normal((17, 6, 3)).astype(np.float32),
                      requires_grad=True)
        results = []
        for _ in range(2):
            for p in [x, *layer.parameters()]:
                p.grad = None
            out, _ = layer(x, lengths=np.arange(17) % 6 + 1)
            (out * out).sum().backward()
            step = next(s for s in scan_module._CACHE[layer.cell].values() if s.dims.size)
            results.append((step.njit, [out.data, x.grad, *(p.grad for p in layer.parameters()),
                                        *(a.grad for a in layer.states)]))
            step.compile_loops()
        assert [r[0] for r in results] == [False, True]
        for a, b in zip(results[0][1], results[1][1]):
            np.testing.assert_array_equal(a, b)
        # compiled, two threads run every chunk in one call on Numba's threads (no fallback;
        # without an OpenMP or TBB layer for Numba, the Python pool runs them, as before)
        native = threads == 2 and threads_module.native()
        assert set(ran) == ({"forward_chunks", "backward_chunks"} if native else set())
        # the drivers compiled in another process (a compile here holds the GIL for seconds)
        assert elsewhere == ([0] if native and compile_cache.directory() else [])
    finally:
        mg.set_num_threads(1)


# ------------------------------------------------------------------ every row, compiled

def _u_v(a, x):
    """Two state-dependent operands."""
    return a + x, a * 0.5 - x


# Each differentiable elementwise row, with state-dependent operands in every position and
# a (H,) parameter in one (broadcasting undone in the loop).  A new row must add a line.
ROW_CASES = {
    "add": lambda u, v, p: u + v + p,
    "sub": lambda u, v, p: u - v - p,
    "mul": lambda u, v, p: u * v * p,
    "div": lambda u, v, p: u / (v * v + 1.0) + v / (p * p + 1.0),
    "neg": lambda u, v, p: -u,
    "pow": lambda u, v, p: u ** 3 * 0.1,
    "abs": lambda u, v, p: abs(u),
    "exp": lambda u, v, p: (0.3 * u).exp(),
    "log": lambda u, v, p: (u * u + 0.5).log(),
    "clip": lambda u, v, p: u.clip(-0.5, 0.5) + v.clip(min=0.1) + v.clip(max=0.2),
    "tanh": lambda u, v, p: u.tanh(),
    "sigmoid": lambda u, v, p: u.sigmoid(),
    "relu": lambda u, v, p: u.relu(),
    "where": lambda u, v, p: mg.where(np.array([True, False, True, True]), u, v),
    "stop_gradient": lambda u, v, p: u * v.detach() + _no_grad(lambda: (v * p).tanh()) * u,
}


def _no_grad(f):
    with mg.no_grad():
        return f()


class RowCell(Module):
    """a<t> = 0.5 · row(u, v, p) with u, v made from a<t-1> and x<t>."""

    def __init__(self, row, dtype):
        super().__init__()
        self.input_size = self.hidden_size = 4
        self.row = row
        self.p = Parameter(np.linspace(0.5, 1.5, 4).astype(dtype))

    def forward(self, x, a):
        return 0.5 * ROW_CASES[self.row](*_u_v(a, x), self.p)


def test_every_differentiable_elementwise_row_has_a_compiled_case():
    rows = {p.name for p in mg.ops.PRIMITIVES.values() if p.elementwise and any(p.rules)}
    assert rows - set(ROW_CASES) == set(), "elementwise rows without a compiled case"


@pytest.mark.parametrize("dtype", [F64, np.float32])
@pytest.mark.parametrize("row", ROW_CASES)
def test_every_elementwise_row_is_differentiated_the_same_compiled(row, dtype):
    """Values and gradients of a compiled cell made of the row (float64: the generated loops
    in Python; float32: in Numba) against the eager tape in float64."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 5, 4))
    results = []
    for dt, compiled in ((dtype, True), (F64, False)):
        cell = RowCell(row, dt)
        layer = Recurrent(cell, compiled=compiled)
        xt = mg.tensor(x.astype(dt), requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to eager
            out, _ = layer(xt, lengths=np.array([5, 3, 2]))
        (out * np.cos(np.arange(4))).sum().backward()
        assert layer.compiled == compiled
        results.append([out.data, xt.grad, cell.p.grad])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=2e-3, atol=2e-4)
    for got, want in zip(*results):
        if want is None:  # a unary row's case does not read p
            assert got is None
            continue
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("dtype", [F64, np.float32])
@pytest.mark.parametrize("prim", [p for p in mg.ops.PRIMITIVES.values() if p.elementwise],
                         ids=lambda p: p.name)
def test_every_elementwise_rows_scalar_form_is_its_forward(prim, dtype):
    """The text a fused kernel is made of, compiled by Numba, equals the row's forward
    (comparisons at ties too)."""
    import numba

    from minigrad.compiler.emit import lit
    from minigrad.kernels import sigmoid, tanh

    names = [a for a in prim.args]
    statics = {"pow": {"p": 3.0}, "clip": {"lo": -0.5, "hi": 0.5}}.get(prim.name, {})
    tensors = [a for a in names if a not in statics]
    expr = prim.scalar(*[lit(statics[a]) if a in statics else a for a in names])
    ns = {"np": np, "DT": np.dtype(dtype).type, "ONE": dtype(1), "ZERO": dtype(0),
          "tanh": tanh, "sigmoid": sigmoid}
    exec(f"def f({', '.join(tensors)}):\n    return {expr}", ns)
    f = numba.njit(ns["f"])
    rng = np.random.default_rng(22)
    vals = [rng.uniform(0.1, 2.0, 12).astype(dtype) for _ in tensors]
    if len(vals) > 1:
        vals[1][:4] = vals[0][:4]  # ties
    want = prim.fwd(*[statics.get(a) if a in statics else vals[tensors.index(a)]
                      for a in names])
    got = np.array([f(*[v[i] for v in vals]) for i in range(12)])
    np.testing.assert_allclose(got, np.asarray(want, dtype), rtol=1e-6 if dtype == np.float32
                               else 1e-14)


# ------------------------------------------------------------------ every core busy

@pytest.fixture
def two_threads():
    mg.set_num_threads(2)
    yield
    mg.set_num_threads(1)


@pytest.mark.parametrize("name", ["lstm-peephole", "gru-full", "mgu", "scaled", "scaled-0d"])
def test_the_batch_split_across_threads_equals_eager(name, two_threads, monkeypatch):
    """With two threads a compiled layer runs its batch in two chunks at once (each in its
    rows of the shared arrays, with its own in-loop sums); values, every gradient and the
    retained ∂L/∂a<t> equal the eager tape, with lengths, in both directions."""
    import sys

    scan_module = sys.modules["minigrad.compiler.scan"]
    chunks = []
    real = scan_module.CompiledStep._fwd

    def spy(self, *arrays):
        out = real(self, *arrays)
        chunks.append((arrays[-1]["chunks"][-1]["rows"][1], len(arrays[-1]["chunks"])))
        return out
    monkeypatch.setattr(scan_module.CompiledStep, "_fwd", spy)
    rng = np.random.default_rng(23)
    x, lengths = rng.standard_normal((19, 6, 3)), rng.integers(1, 7, 19)
    for reverse in (False, True):
        _both_paths(lambda compiled, r=reverse: Recurrent(CELLS[name](3, 4, dtype=F64), reverse=r,
                                               compiled=compiled), x, lengths=lengths)
    # the split ran (no silent single chunk); the compile-time check uses a batch of 3
    assert {n for B, n in chunks if B == 19} == {2}
    flows = []
    for compiled in (True, False):
        mg.manual_seed(23)
        layer = Recurrent(CELLS[name](3, 4, dtype=F64), compiled=compiled)
        layer.retain_states = True
        out, _ = layer(mg.tensor(x), lengths=lengths)
        (out * out).sum().backward()
        flows.append(np.stack([a.grad for a in layer.states]))
    np.testing.assert_allclose(flows[0], flows[1], rtol=1e-10, atol=1e-13)


def test_two_threads_hold_no_more_memory_than_one(monkeypatch):
    """The chunks work in their own rows of one (T, B, ...) array per value: nothing is
    copied per chunk or stitched back together, so a training step's peak NumPy memory with
    two threads is one thread's (it had been 1.45x at the benchmark's config C)."""
    import tracemalloc

    from minigrad import threads
    split = []
    real = threads.batch_chunks
    monkeypatch.setattr(threads, "batch_chunks", lambda *a: split.append(real(*a)) or split[-1])
    x = mg.tensor(np.random.default_rng(26).standard_normal((32, 40, 16)).astype(np.float32))
    peaks = []
    for n in (1, 2):
        mg.set_num_threads(n)
        try:
            mg.manual_seed(26)
            layer = LSTM(16, 64)
            for _ in range(2):  # (the first calls compile and check)
                out, _ = layer(x)
                (out * out).sum().backward()
            sys.modules["minigrad.compiler.scan"].wait()  # (tracemalloc sees every thread)
            tracemalloc.start()
            out, _ = layer(x)
            (out * out).sum().backward()
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        finally:
            mg.set_num_threads(1)
    assert len(split[-1]) == 2  # the batch of 32 ran in two chunks
    assert peaks[1] <= 1.05 * peaks[0], peaks


def test_threads_split_a_batch_into_chunks_of_at_least_eight_rows(two_threads):
    from minigrad import threads
    assert threads.batch_chunks(15) == [(0, 15)]
    assert threads.batch_chunks(16) == [(0, 8), (8, 16)]
    assert threads.batch_chunks(64, allowed=False) == [(0, 64)]
    with pytest.raises(ValueError, match="positive integer"):
        mg.set_num_threads(0)


# ------------------------------------------------------------------ compiled once per structure

@pytest.mark.parametrize("name", ["lstm", "gru-full", "mgu"])
def test_a_new_hidden_or_input_size_reuses_the_compiled_code(name):
    """Sizes are run-time arguments (``D``): the same cell at other sizes generates the same
    source, so its compiled kernels and loops are reused, not compiled again."""
    steps = []
    for I, H in ((3, 5), (7, 9), (2, 11)):
        cell = CELLS[name](I, H)  # float32: the loops run in Numba
        parts = tuple(mg.zeros(2, H) for _ in range(getattr(cell, "state_arity", 1)))
        steps.append(compile_step(cell, mg.zeros(2, I), parts if len(parts) > 1 else parts[0],
                                  masked=True))
    assert steps[0].kernel_source == steps[1].kernel_source == steps[2].kernel_source
    assert steps[0]._numba is steps[1]._numba is steps[2]._numba  # one module, compiled once
    assert [list(s.dims) for s in steps][1] != list(steps[0].dims)


def test_a_kernel_the_same_as_another_layers_is_compiled_once(capfd):
    """A deep stack's layers run different loops (the first reads ids, the next vectors) with
    the same kernels; each kernel is a module named by its text (values named by first use),
    so the second layer uses the first's compiled kernels, and the compile is announced once."""
    from models.language_model import LanguageModel
    mg.manual_seed(25)
    lm = LanguageModel(11, 7, cell="gru", num_layers=2)  # float32: Numba kernels
    loss, _ = lm.loss(np.random.default_rng(25).integers(3, 11, (4, 5)))
    loss.backward()
    cache = sys.modules["minigrad.compiler.scan"]._CACHE
    steps = [next(iter(cache[layer.cell].values())) for layer in lm.rnn.layers]
    assert steps[0].source != steps[1].source
    kernels = [{n: getattr(s._numba, n) for n in dir(s._numba) if n.startswith("fused")}
               for s in steps]
    assert len(kernels[0]) == 4 and kernels[0] == kernels[1]
    assert capfd.readouterr().err.count("compiling GRUCell's kernels") <= 1


def test_a_first_compile_says_which_form_of_a_cell_it_is(capfd, monkeypatch):
    """A cell compiles a plain form and, for batches with lengths, a masked one (the names
    demo meets both): each first compile's line says which, so two lines are not one twice."""
    scan = sys.modules["minigrad.compiler.scan"]
    monkeypatch.setattr(scan, "_cached", lambda module: False)
    capfd.readouterr()
    for masked in (True, False):
        monkeypatch.setattr(scan, "_ANNOUNCED", set())
        compile_step(LSTMCell(3, 4), mg.zeros(2, 3), (mg.zeros(2, 4), mg.zeros(2, 4)),
                     masked=masked)
    lines = capfd.readouterr().err.strip().split("\n")
    assert lines == [f"minigrad: compiling LSTMCell's kernels (float32{form}), once: later runs "
                     "load them from the cache" for form in (", for batches with lengths", "")]


def test_large_products_are_split_across_threads(two_threads, monkeypatch):
    """A large GEMM runs in row blocks, a weight gradient as partial sums per thread added
    in a fixed order: the same numbers as one call (to round-off), every time the same."""
    from minigrad import threads
    calls = []
    real = threads.parallel
    monkeypatch.setattr(threads, "parallel", lambda fn, items: calls.append(len(items))
                        or real(fn, items))
    rng = np.random.default_rng(24)
    a, b, g = rng.standard_normal((600, 300)), rng.standard_normal((300, 50)), \
        rng.standard_normal((600, 50))
    np.testing.assert_allclose(threads.dot(a, b), a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(threads.dot_t(a, g), a.T @ g, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(threads.dot_t(a, g), threads.dot_t(a, g))
    assert calls == [2, 2, 2, 2]
    x = mg.tensor(a, requires_grad=True)
    w = mg.tensor(b, requires_grad=True)
    (x @ w).sum().backward()  # the matmul row and its weight gradient go through them
    np.testing.assert_allclose(w.grad, a.T @ np.ones((600, 50)), rtol=1e-12, atol=1e-12)


def test_large_float32_products_run_on_numbas_threads_with_the_same_bits(two_threads,
                                                                           monkeypatch):
    """float32 products split into blocks start on Numba's threads (``threads.native``:
    ~2-20 µs against ~120 µs for the Python pool's round trip); each block is the very BLAS
    call the pool makes (MKL's, or OpenBLAS's through ``numpy.dot``), so the numbers are the
    same bits."""
    from minigrad import threads
    rng = np.random.default_rng(27)
    a, g = (rng.standard_normal(s).astype(np.float32) for s in ((600, 128), (600, 512)))
    b = np.asfortranarray(rng.standard_normal((128, 300)).astype(np.float32))
    if not threads.native():
        pytest.skip("Numba has no OpenMP or TBB threading layer here (the Python pool serves)")
    ran, real = [], threads.run
    monkeypatch.setattr(threads, "run", lambda k, *x: ran.append(k.__name__) or real(k, *x))
    native = [threads.dot(a, b), threads.dot(a, g[:, :128].T.copy()), threads.dot_t(a, g)]
    assert ran == ["dot_blocks", "dot_blocks", "dot_t_blocks"]
    monkeypatch.setattr(threads, "_native", False)
    pool = [threads.dot(a, b), threads.dot(a, g[:, :128].T.copy()), threads.dot_t(a, g)]
    assert len(ran) == 3
    for x, y, want in zip(native, pool, [a @ b, a @ g[:, :128].T, a.T @ g]):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-3)


def test_threads_are_numbas_wherever_numba_can_start_openmp():
    """``threads.native()`` is True wherever Numba's OpenMP layer loads (probed in a fresh
    process), so the fast path cannot silently become the Python pool."""
    import subprocess

    from minigrad import threads
    probe = ("import numba, numpy as np\n@numba.njit(parallel=True)\ndef f(x):\n"
             "    for i in numba.prange(x.size): x[i] += 1\nf(np.zeros(2))\n"
             "print(numba.threading_layer())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "NUMBA_THREADING_LAYER": "omp"}, check=False)
    if done.returncode != 0:
        pytest.skip("Numba's OpenMP layer does not load here: " + done.stderr[-200:])
    assert done.stdout.strip() == "omp"
    assert threads.native()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_with_two_threads_is_not_killed(two_threads):
    """GNU OpenMP (Numba's threads here) kills a forked child that starts it ('fork() called
    from a process already using GNU OpenMP'): a child uses the Python pool instead."""
    from minigrad import threads
    a, g = np.ones((600, 128), np.float32), np.ones((600, 512), np.float32)
    threads.dot_t(a, g)  # (the parent's threads started)
    with warnings.catch_warnings():  # (JAX, if an earlier test loaded it, warns on any fork)
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if threads.dot_t(a, g)[0, 0] == 600.0 else 1)
    assert os.waitpid(pid, 0)[1] == 0


EXIT_EARLY = """
import numpy as np, minigrad as mg
from models.layers import GRU
layer = GRU(5, 24)
x = mg.tensor(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))
for _ in range(2):  # the second call starts compiling the Numba loops in the background
    out, _ = layer(x)
    out.sum().backward()
"""


def test_a_script_that_ends_while_the_loops_compile_exits_cleanly(tmp_path):
    """Python waits for the background compile at exit: a daemon thread killed inside LLVM at
    shutdown crashed the process (segfault or LLVM assertion, ~1 run in 6), and its work was
    lost.  The compiled loops are then in the cache for the next run."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "MINIGRAD_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", EXIT_EARLY], env=env, capture_output=True,
                          text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-2000:]
    saved = {p.name.split(".")[1].split("-")[0] for p in tmp_path.rglob("mg_*.nbi")}
    assert {"forward", "backward"} <= saved, saved


NO_UFUNC = """
import numpy as np
from minigrad import kernels
from models.language_model import LanguageModel
lm = LanguageModel(11, 8, cell="gru")
ids = np.random.default_rng(0).integers(0, 11, (2, 5))
for _ in range(3):
    loss, _ = lm.loss(ids, None)
    loss.backward()
print(kernels.sigmoid_forward._ufunc is None, kernels.tanh_forward._ufunc is None)
"""


def test_a_compiled_models_first_steps_build_no_ufunc_for_its_cell():
    """The compiler traces and checks a cell on examples, where its elementwise rows run as
    NumPy expressions: a compiled GRU's first steps build no ufunc (its sigmoid's had cost
    0.6 s of a new cell's first step; the compiled loops never call it)."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", NO_UFUNC], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["True", "True"]
