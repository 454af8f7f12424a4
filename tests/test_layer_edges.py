"""Recurrent layers at their edges, on both paths: retained state gradients with ``lengths``,
states of the wrong dtype, an empty batch, a NaN input, a cell that returns the wrong shape,
and the warning a cell that cannot compile gets (``mg.CompileFallbackWarning``): counted in
the compiled-equals-eager comparison, an error everywhere a test does not expect it, and
blaming the cell only when the cell is the cause."""

import warnings

import numpy as np
import pytest
from conftest import CELL_OPTIONS, IDS

import minigrad as mg
import models.layers as layers
from models.cells import LSTMCell, RNNCell
from models.layers import GRU, LSTM, RNN, Bidirectional, Recurrent, gradient_flow

F64 = np.float64


def _run(cls, opts, compiled, x, lengths, reverse, given_state):
    mg.manual_seed(3)
    cell = cls(x.shape[2], 4, dtype=F64, **opts)
    layer = Recurrent(cell, reverse=reverse, compiled=compiled)
    layer.retain_states = True
    rng = np.random.default_rng(4)
    state = None
    if given_state:
        parts = [mg.tensor(rng.standard_normal((x.shape[0], 4)), requires_grad=True)
                 for _ in range(getattr(cell, "state_arity", 1))]
        state = parts[0] if len(parts) == 1 else tuple(parts)
    out, final = layer(mg.tensor(x), state, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    # the loss reads the outputs and the final state, so padded steps carry a gradient
    loss = (out * rng.standard_normal(out.shape)).sum()
    for f in finals:
        loss = loss + (f * rng.standard_normal(f.shape)).sum()
    loss.backward()
    return layer, [out.data, *[f.data for f in finals], *[p.grad for p in layer.parameters()],
                   *[a.grad for a in layer.states], gradient_flow(layer)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name,cls,opts", CELL_OPTIONS, ids=IDS)
def test_retained_state_gradients_with_lengths_are_the_same_on_both_paths(
        name, cls, opts, reverse, fallbacks):
    """∂L/∂a<t> (``layer.states[t].grad``, ``gradient_flow``) at every step, padded ones
    included, compiled and eager; and the compiled path really ran (no fallback)."""
    x = np.random.default_rng(5).standard_normal((3, 5, 2))
    lengths = np.array([5, 2, 1])
    compiled, got = _run(cls, opts, True, x, lengths, reverse, name.startswith("lstm"))
    _, want = _run(cls, opts, False, x, lengths, reverse, name.startswith("lstm"))
    assert fallbacks() == [] and compiled.compiled
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    # padded steps of the short sequences do carry a gradient (the final state reads them)
    states = np.stack(want[-1 - len(compiled.states):-1], axis=1)  # (B, T, H)
    pad = states[2, 0 if reverse else 1:4 if reverse else 5]
    assert np.abs(pad).min() > 0


# ------------------------------------------------------------------ the fallback warning

class UsesData(RNNCell):
    """Computes with NumPy on ``.data``: its trace bakes in the values of one input."""

    def forward(self, x, a):
        a = super().forward(x, a)
        return a * mg.tensor(1.0 + a.data.mean())


class Wide(RNNCell):
    """Returns a state twice as wide as the one it was given."""

    def forward(self, x, a):
        a = super().forward(x, a)
        return mg.concat([a, a], axis=1)


def test_an_unexpected_fallback_fails_the_test_suite():
    """pyproject.toml's ``filterwarnings``: a compiler bug cannot hide behind the eager path."""
    layer = Recurrent(UsesData(3, 4, dtype=F64))
    with pytest.raises(mg.CompileFallbackWarning, match="running UsesData eagerly"):
        layer(mg.randn(2, 5, 3, dtype=F64))


def test_the_fallback_blames_the_cell_when_its_trace_depends_on_values():
    layer = Recurrent(UsesData(3, 4, dtype=F64))
    x = mg.tensor(np.random.default_rng(1).standard_normal((2, 5, 3)))
    with pytest.warns(mg.CompileFallbackWarning) as record:
        out, _ = layer(x)
    (w,) = record
    assert "computes with NumPy on .data" in str(w.message) and "bug" not in str(w.message)
    eager, _ = Recurrent(layer.cell, compiled=False)(x)
    np.testing.assert_array_equal(out.data, eager.data)


def test_the_fallback_blames_the_compiler_when_the_cell_is_fine(monkeypatch):
    """A cell whose forward traces to the same equations on any input is not the cause of a
    failed compile: the warning says it is minigrad's bug, never "your cell branches"."""
    def broken_compiler(cell, *args, **kwargs):
        raise mg.TraceError(f"{type(cell).__name__}: the compiled step differs from the "
                            "cell's forward on fresh inputs (max difference 0.5); the forward "
                            "probably branches on tensor values")

    monkeypatch.setattr(layers, "scan", broken_compiler)
    layer = Recurrent(LSTMCell(3, 4, dtype=F64))
    with pytest.warns(mg.CompileFallbackWarning) as record:
        layer(mg.randn(2, 5, 3, dtype=F64))
    msg = str(record[0].message)
    assert "bug in minigrad" in msg and "the cell is not the cause" in msg
    assert "branches on tensor values" not in msg and "max difference 0.5" in msg


@pytest.mark.parametrize("compiled", [True, False])
def test_a_cell_returning_the_wrong_shape_gets_one_clear_error(compiled):
    """It used to warn, fall back, and crash in the eager path with an unrelated matmul
    error."""
    with pytest.raises(ValueError, match=r"Wide\.forward must return the new state as it was "
                                         r"given: 1 tensor\(s\) of shape and dtype \(2, 4\) "
                                         r"float64; it returned \(2, 8\) float64"):
        Recurrent(Wide(3, 4, dtype=F64), compiled=compiled)(mg.randn(2, 5, 3, dtype=F64))


# ------------------------------------------------------------------ dtypes of states

@pytest.mark.parametrize("make,state", [
    (lambda: Recurrent(RNNCell(3, 4)), lambda: mg.zeros(2, 4, dtype=F64)),
    (lambda: Recurrent(LSTMCell(3, 4)), lambda: (mg.zeros(2, 4), np.zeros((2, 4)))),
    (lambda: LSTM(3, 4, num_layers=2), lambda: (np.zeros((2, 2, 4)), np.zeros((2, 2, 4)))),
    (lambda: GRU(3, 4, bidirectional=True), lambda: mg.zeros(2, 2, 4, dtype=F64)),
    (lambda: Bidirectional(RNNCell(3, 4), RNNCell(3, 4)),
     lambda: (mg.zeros(2, 4, dtype=F64), mg.zeros(2, 4, dtype=F64))),
], ids=["rnn", "lstm-pair", "deep-lstm", "bigru", "bidirectional"])
def test_a_float64_state_for_a_float32_layer_is_refused(make, state):
    """As inputs are: it used to warn that the cell "probably branches on tensor values" and
    run the layer eagerly in float64 for the rest of its life."""
    layer = make()
    with pytest.raises(TypeError, match=r"Recurrent\(\w+Cell\): the initial state has dtype "
                                        r"float64 but the model is float32; convert the state "
                                        r"\(state\.astype\(np\.float32\)\) or build the model "
                                        r"with dtype=np\.float64"):
        layer(mg.randn(2, 5, 3), state())
    out, _ = layer(mg.randn(2, 5, 3))  # and the layer still compiles afterwards
    assert out.dtype == np.float32


# ------------------------------------------------------------------ edge inputs

@pytest.mark.parametrize("make", [lambda c: RNN(3, 4, compiled=c), lambda c: GRU(3, 4, compiled=c),
                                  lambda c: LSTM(3, 4, num_layers=2, bidirectional=True,
                                                 compiled=c)],
                         ids=["rnn", "gru", "deep-bilstm"])
def test_an_empty_batch_gives_empty_outputs_on_both_paths(make, capfd):
    """B = 0 used to make OpenBLAS print '** On entry to SGEMM parameter number 10 had an
    illegal value' on the compiled path."""
    results = []
    for compiled, lengths in ((True, None), (True, np.zeros(0, np.int64)), (False, None)):
        mg.manual_seed(0)
        layer = make(compiled)
        x = mg.tensor(np.zeros((0, 5, 3), np.float32), requires_grad=True)
        out, final = layer(x, lengths=lengths)
        out.sum().backward()
        a = final[0] if isinstance(final, tuple) else final
        results.append((out.shape, a.shape, x.grad.shape,
                        [float(np.abs(p.grad).sum()) for p in layer.parameters()]))
    assert results[0] == results[1] == results[2]
    D = 2 if results[0][0][2] == 8 else 1
    assert results[0][0] == (0, 5, 4 * D) and results[0][1][1] == 0
    assert set(results[0][3]) == {0.0}
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, F64])
@pytest.mark.parametrize("make", [lambda **k: RNN(3, 4, **k),
                                  lambda **k: RNN(3, 4, nonlinearity="relu", **k),
                                  lambda **k: GRU(3, 4, **k), lambda **k: LSTM(3, 4, **k)],
                         ids=["rnn-tanh", "rnn-relu", "gru", "lstm"])
def test_a_nan_input_propagates_quietly(make, dtype, compiled):
    """One NaN used to print dozens of 'invalid value encountered' RuntimeWarnings (the fast
    tanh's clamp raised the CPU's invalid flag); NumPy and PyTorch propagate NaN silently."""
    mg.manual_seed(0)
    layer = make(dtype=dtype, compiled=compiled)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(dtype)
    x[0, 1, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = layer(mg.tensor(x))
        loss = mg.cross_entropy(out.reshape(-1, 4), np.zeros(10, np.int64))
        loss.backward()
    assert np.isnan(out.data[0, 1:]).all() and np.isfinite(out.data[0, 0]).all()
    assert np.isfinite(out.data[1]).all()  # the other sequence is untouched
