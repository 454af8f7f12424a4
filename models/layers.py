"""Recurrent layers: unroll a cell over time, both directions, deep stacks, heads.

Backpropagation through time is nowhere in this file: the forward pass is a plain Python
loop over time steps and the tape records it; ``loss.backward()`` walks it in reverse.

Shapes are batch-first: x is (B, T, I) floats, or (B, T) integer ids standing for one-hot
vectors of size I (a row lookup instead of a dense matmul).  Outputs are (B, T, H·D) with
D = 2 for bidirectional layers.  Final states follow PyTorch: (L·D, B, H), and for the LSTM
a pair (a_n, c_n) of that shape.
"""

import warnings

import numpy as np

import minigrad as mg
from minigrad import functional as F
from minigrad.compiler import TraceError, scan
from minigrad.core import ops
from minigrad.core.tensor import apply
from minigrad.data import check_ids, check_lengths
from minigrad.nn import Linear, Module, ModuleList, Parameter, Sequential, Tanh
from models.cells import CELLS, GRUCell, LSTMCell, RNNCell


def _check_input(name, x, input_size, dtype=None):
    """``x`` as a Tensor of (B, T, input_size) floats of ``dtype`` (the cell's) or (B, T) ids.

    NOTE: as PyTorch, a float input whose dtype differs from the model's is refused, not
    cast: float64 data would otherwise silently run the whole model in float64 (~3x slower).
    """
    if not isinstance(x, mg.Tensor):
        x = mg.tensor(x)
    integer = np.issubdtype(x.dtype, np.integer)
    want = 2 if integer else 3
    if x.ndim != want:
        raise ValueError(
            f"{name}: expected input of shape (B, T, {input_size}) (floats) or (B, T) "
            f"(integer ids), got shape {x.shape} with dtype {x.dtype}"
        )
    if not integer and x.shape[2] != input_size:
        raise ValueError(f"{name}: input feature size (dimension 2) is {x.shape[2]}, "
                         f"expected input_size={input_size}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: the input has no time steps (T = 0)")
    if integer:
        check_ids(name, x.data, input_size, size="input_size")
    elif dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: input has dtype {x.dtype} but the model is {np.dtype(dtype)}; "
                        f"convert the input (x.astype(np.{np.dtype(dtype)})) or build the model "
                        f"with dtype=np.{x.dtype}")
    return x


class Recurrent(Module):
    """Unrolls any cell over time:  a<t> = cell(x<t>, a<t-1>),  t = 1..T (or T..1).

    ``layer(x, state=None, lengths=None) -> (outputs (B, T, H), final_state)``.

    * ``compiled=True`` (default): the cell's ``forward`` is traced once per signature and
      compiled (:mod:`minigrad.compiler`): the input projection of all steps is hoisted out of
      the loop, GEMMs are merged, the gate math is one generated Numba kernel, and the whole
      sequence is one tape node whose backward (BPTT) is derived from the primitive table.
      A cell the compiler cannot handle runs eagerly, with a warning naming the cause.
      ``compiled=False``: the eager path — one tape entry per primitive per step, so BPTT is
      literally what the tape records (the teaching path; proven equal in the tests).
    * ``state``: the initial state — zeros if None, or a learned Parameter
      (``learn_initial_state=True``), or given: (B, H), or (a, c) for an LSTM.
    * ``lengths``: (B,) true lengths of a padded batch: each sequence's state stops
      updating after its own end, padded outputs are zero, the final state is each
      sequence's true last state.  With ``reverse=True`` each sequence starts at its own
      last element, never at padding.
    * ``retain_states=True`` keeps every a<t> in ``self.states`` (in time order), whose
      ``.grad`` after ``backward`` is ∂L/∂a<t>; :func:`gradient_flow` reads their norms.
    """

    def __init__(self, cell, reverse=False, learn_initial_state=False, compiled=True):
        super().__init__()
        for attr in ("input_size", "hidden_size", "forward"):
            if not hasattr(cell, attr):
                raise TypeError(f"Recurrent: a cell needs input_size, hidden_size and "
                                f"forward(x_t, state); {type(cell).__name__} has no {attr!r}")
        self.cell = cell
        self.reverse = bool(reverse)
        self.learn_initial_state = bool(learn_initial_state)
        self.compiled = bool(compiled)
        self.retain_states = False
        self.states = []
        if learn_initial_state:
            H = cell.hidden_size
            self.a0 = Parameter(np.zeros(H, dtype=_dtype(cell)))
            if _arity(cell) == 2:
                self.c0 = Parameter(np.zeros(H, dtype=_dtype(cell)))

    @property
    def hidden_size(self):
        return self.cell.hidden_size

    def extra_repr(self):
        return ", ".join(([f"reverse={self.reverse}"] if self.reverse else [])
                         + ([] if self.compiled else ["compiled=False"]))

    def initial_state(self, batch_size, state=None):
        cell, H, arity, dtype = self.cell, self.cell.hidden_size, _arity(self.cell), \
            _dtype(self.cell)
        if state is None:
            if not self.learn_initial_state:
                if hasattr(cell, "init_state"):
                    return cell.init_state(batch_size)
                zeros = tuple(mg.zeros(batch_size, H, dtype=dtype) for _ in range(arity))
                return zeros[0] if arity == 1 else zeros
            zero = mg.zeros(batch_size, H, dtype=dtype)
            return self.a0 + zero if arity == 1 else (self.a0 + zero, self.c0 + zero)
        name = type(cell).__name__
        if arity == 1 and isinstance(state, (tuple, list)):
            raise ValueError(f"{name}: the state must be a tensor a (B, H), got a tuple of "
                             f"{len(state)} (an LSTM's (a, c) pair?)")
        parts = (state,) if arity == 1 else tuple(state) \
            if isinstance(state, (tuple, list)) else None
        if parts is None or len(parts) != arity:
            raise ValueError(f"{name}: the state must be "
                             + ("a tensor a (B, H)" if arity == 1
                                else f"a tuple of {arity} (B, H) tensors, e.g. (a, c)"))
        out = []
        for p in parts:
            # NOTE: as for inputs, a float state of another dtype is refused, not cast: a
            # float64 state would run a float32 model in float64 (and eagerly).
            if isinstance(p, (mg.Tensor, np.ndarray)) and p.dtype != dtype:
                raise TypeError(f"{type(self).__name__}({name}): the initial state has dtype "
                                f"{p.dtype} but the model is {dtype}; convert the state "
                                f"(state.astype(np.{dtype})) or build the model with "
                                f"dtype=np.{p.dtype}")
            p = p if isinstance(p, mg.Tensor) else mg.tensor(np.asarray(p), dtype=dtype)
            if p.shape != (batch_size, H):
                raise ValueError(f"{name}: initial state has shape {p.shape}, "
                                 f"expected (B, H) = {(batch_size, H)}")
            out.append(p)
        return out[0] if arity == 1 else tuple(out)

    def forward(self, x, state=None, lengths=None, mask=None):
        """x (B, T, I) or (B, T) ids; ``lengths`` (B,), or instead ``mask`` (B, T), True
        where a step is real (a tensor: what a function compiled with ``mg.compile`` passes,
        as NumPy on the lengths would be data it cannot trace)."""
        cell = self.cell
        name = type(self).__name__
        x = _check_input(name, x, cell.input_size, _dtype(cell))
        B, T = x.shape[:2]
        state = self.initial_state(B, state)
        valid = _valid(name, lengths, mask, B, T)
        outputs = None
        if self.compiled and B > 0:  # an empty batch has nothing to compile
            try:
                outputs, final = self._compiled(x, state, valid)
            except TraceError as e:
                self.compiled = False
                # eager first: a cell that is wrong on both paths gets the eager path's error
                outputs, final = self._eager(x, state, valid)
                warnings.warn(_fallback_message(name, cell, x, state, e),
                              mg.CompileFallbackWarning, stacklevel=2)
        if outputs is None:
            outputs, final = self._eager(x, state, valid)
        if valid is not None:
            outputs = outputs * valid[:, :, None].astype(outputs.dtype)
        return outputs, final

    def _compiled(self, x, state, valid):
        """The whole sequence as one tape node (see :func:`minigrad.compiler.scan`)."""
        T = x.shape[1]
        xs = x.transpose(1, 0) if x.ndim == 2 else x.transpose(1, 0, 2)
        retain = None
        if self.retain_states:
            retain = [None] * T
        hist = scan(self.cell, xs, state, None if valid is None else valid.T, self.reverse,
                    retain)
        parts = (hist,) if isinstance(hist, mg.Tensor) else hist
        if retain is not None:
            for t in range(T):
                retain[t] = mg.Tensor(parts[0].data[t])
            self.states = retain
        last = 0 if self.reverse else T - 1
        final = tuple(h[last] for h in parts)
        return parts[0].transpose(1, 0, 2), final[0] if len(final) == 1 else final

    def _eager(self, x, state, valid):
        """The chapter's loop, one tape entry per primitive per step."""
        cell, T = self.cell, x.shape[1]
        if np.issubdtype(x.dtype, np.integer):  # ids stand for one-hot vectors
            x = F.one_hot(x, cell.input_size, dtype=_dtype(cell))
        outs = [None] * T
        self.states = []
        steps = range(T - 1, -1, -1) if self.reverse else range(T)
        for t in steps:
            new = cell(x[:, t], state)
            if t == steps[0]:  # a cell of the wrong shape fails here, not in a later matmul
                _check_state(cell, new, state)
            if valid is not None:  # past a sequence's end its state stays as it was
                new = _select(valid[:, t:t + 1], new, state)
            state = new
            a = state if isinstance(state, mg.Tensor) else state[0]
            if self.retain_states:
                self.states.append(a.retain_grad())
            outs[t] = a
        if self.reverse:
            self.states.reverse()
        return mg.stack(outs, axis=1), state


def _check_state(cell, new, old):
    """Raise ValueError unless ``new`` has the structure, shapes and dtypes of ``old``."""
    olds = (old,) if isinstance(old, mg.Tensor) else tuple(old)
    news = (new,) if isinstance(new, mg.Tensor) else tuple(new) \
        if isinstance(new, (tuple, list)) else (new,)
    want = [(o.shape, o.dtype) for o in olds]
    got = [(getattr(n, "shape", None), getattr(n, "dtype", type(n).__name__)) for n in news]
    if got != want or not all(isinstance(n, mg.Tensor) for n in news):
        raise ValueError(f"{type(cell).__name__}.forward must return the new state as it "
                         f"was given: {len(want)} tensor(s) of shape and dtype "
                         f"{', '.join(f'{s} {d}' for s, d in want)}; it returned "
                         f"{', '.join(f'{s} {d}' for s, d in got)}")


def _fallback_message(name, cell, x, state, error):
    """Why a cell runs eagerly, blaming the cell only when it is the cause: when its
    forward traces to different equations on fresh inputs of other values and batch sizes
    (it branches on tensor values, computes with NumPy on ``.data`` or builds in a batch
    size), or does not trace at all.  Otherwise the compiler is at fault."""
    parts = (state,) if isinstance(state, mg.Tensor) else tuple(state)
    rng = np.random.default_rng(0)  # NOTE: never the user's generator (reproducibility)
    seen, who = set(), type(cell).__name__
    try:
        for B, sign in ((2, 1), (2, -1), (3, 1), (3, -1)):
            ids = x.dtype.kind in "iu"
            xt = mg.tensor(rng.integers(0, cell.input_size, B) if ids else
                           rng.standard_normal((B, x.shape[2])).astype(x.dtype))
            s = tuple(mg.tensor(sign * rng.standard_normal((B, p.shape[1])).astype(p.dtype))
                      for p in parts)
            prog = mg.trace(cell, xt, s[0] if len(s) == 1 else s)
            seen.add(repr(prog) + repr([c.value.tolist() for c in prog.consts]))
    except Exception:  # it does not trace on fresh inputs: the cell's own doing
        return f"{name}: running {who} eagerly: {error}"
    if len(seen) > 1:
        return f"{name}: running {who} eagerly: {error}"
    return (f"{name}: running {who} eagerly (the same values, slower): minigrad's compiler "
            f"failed on it although its forward traces to the same equations on fresh "
            f"inputs, so the cell is not the cause: this is a bug in minigrad, please report "
            f"it with this message ({str(error).split(';')[0]})")


def _arity(cell):
    return getattr(cell, "state_arity", 1)


def _dtype(cell):
    dtype = getattr(cell, "dtype", None)
    if dtype is None:
        dtype = next((p.dtype for p in cell.parameters()), np.float32)
    return np.dtype(dtype)


def _valid(name, lengths, mask, B, T):
    """(B, T), True where a step is real, from ``lengths`` (an array) or ``mask`` (kept a
    tensor); None when every step is."""
    if lengths is not None and mask is not None:
        raise ValueError(f"{name}: pass lengths or mask, not both")
    if isinstance(lengths, mg.Tensor):  # t < length<b> with rows, so that mg.compile traces it
        check_lengths(name, lengths.data, B, T)
        return apply(ops.LT, mg.arange(T, dtype=lengths.dtype), lengths.reshape(B, 1))
    if lengths is not None:
        lengths = check_lengths(name, lengths, B, T)
        return np.arange(T)[None, :] < lengths[:, None]
    if mask is None:
        return None
    m = mask if isinstance(mask, mg.Tensor) else mg.tensor(np.asarray(mask))
    if m.shape != (B, T) or m.dtype.kind not in "bfiu":
        raise ValueError(f"{name}: mask has shape {m.shape} {m.dtype}, expected (B, T) = "
                         f"{(B, T)} of bool (True where a step is real)")
    return m


def _stack(parts):
    """(L, B, H) from L (B, H) tensors: one layer's is a view."""
    return parts[0].reshape((1,) + parts[0].shape) if len(parts) == 1 else mg.stack(parts)


def _select(mask, new, old):
    if isinstance(new, mg.Tensor):
        return mg.where(mask, new, old)
    return tuple(mg.where(mask, n, o) for n, o in zip(new, old))


class Bidirectional(Module):
    """Two independent cells, one reading left to right and one right to left:
    outputs ``[a→<t>, a←<t>]`` (B, T, 2H) and final states ``(state→, state←)``.

    A BRNN's prediction at time t sees the whole sequence — the past through a→ and the
    future through a←.  With ``lengths`` the backward direction starts at each sequence's
    own last element.
    """

    def __init__(self, forward_cell, backward_cell, learn_initial_state=False, compiled=True):
        super().__init__()
        if forward_cell.hidden_size != backward_cell.hidden_size or \
                forward_cell.input_size != backward_cell.input_size:
            raise ValueError("Bidirectional: both cells need the same input and hidden sizes")
        self.fwd = Recurrent(forward_cell, learn_initial_state=learn_initial_state,
                             compiled=compiled)
        self.bwd = Recurrent(backward_cell, reverse=True,
                             learn_initial_state=learn_initial_state, compiled=compiled)

    @property
    def hidden_size(self):
        return self.fwd.hidden_size

    def forward(self, x, state=None, lengths=None, mask=None):
        s_f, s_b = (None, None) if state is None else state
        out_f, fin_f = self.fwd(x, s_f, lengths, mask)
        out_b, fin_b = self.bwd(x, s_b, lengths, mask)
        return mg.concat([out_f, out_b], axis=2), (fin_f, fin_b)


class _Stack(Module):
    """A deep RNN: layer l reads a[l-1]<t> (the layer below at the same t) and its own
    a[l]<t-1>; any layer may be bidirectional; optional dropout between layers and an
    optional per-time-step head (no horizontal connections) on top."""

    cell_class = None

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dropout=0.0, learn_initial_state=False, head=None, compiled=True,
                 **cell_options):
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise ValueError(f"{name}: num_layers must be a positive integer, got {num_layers!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bidirectional, self.dropout = num_layers, bidirectional, dropout
        self.layers = ModuleList()
        D = 2 if bidirectional else 1
        for l in range(num_layers):
            n_in = input_size if l == 0 else hidden_size * D
            cells = [self.cell_class(n_in, hidden_size, **cell_options) for _ in range(D)]
            self.layers.append(Bidirectional(*cells, learn_initial_state, compiled)
                               if bidirectional else
                               Recurrent(cells[0], learn_initial_state=learn_initial_state,
                                         compiled=compiled))
        self.head = head

    def _split_state(self, state, B):
        """(L·D, B, H) [or a pair of them] -> per layer: state, or (fwd, bwd) states."""
        if state is None:
            return [None] * self.num_layers
        lstm = self.cell_class.state_arity == 2
        D = 2 if self.bidirectional else 1
        want = (self.num_layers * D, B, self.hidden_size)
        parts = state if lstm else (state,)
        if lstm and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ValueError(f"{type(self).__name__}: the state must be a pair (a_0, c_0)")
        if not lstm and isinstance(state, (tuple, list)):
            raise ValueError(f"{type(self).__name__}: the state is one tensor h_0 of shape "
                             f"{want}, got a tuple of {len(state)} (an LSTM's (a, c) pair?)")
        first = self.layers[0]
        dtype = (first.fwd if isinstance(first, Bidirectional) else first).cell.dtype
        # NumPy arrays keep their dtype, so that each layer refuses a wrong one (as tensors)
        parts = [p if isinstance(p, mg.Tensor) else mg.tensor(p) if isinstance(p, np.ndarray)
                 else mg.tensor(p, dtype=dtype) for p in parts]
        for p in parts:
            if p.shape != want:
                raise ValueError(f"{type(self).__name__}: initial state has shape {p.shape}, "
                                 f"expected (num_layers·directions, B, H) = {want}")
        slices = [mg.unstack(p, 0) if want[0] > 1 else (p.reshape(want[1:]),) for p in parts]
        per = [tuple(s[i] for s in slices) if lstm else slices[0][i] for i in range(want[0])]
        if self.bidirectional:
            return [(per[2 * l], per[2 * l + 1]) for l in range(self.num_layers)]
        return per

    def forward(self, x, state=None, lengths=None, mask=None):
        x = x if isinstance(x, mg.Tensor) else mg.tensor(x)
        states = self._split_state(state, x.shape[0])
        finals = []
        out = x
        for l, layer in enumerate(self.layers):
            out, fin = layer(out, states[l], lengths, mask)
            finals.extend(fin if self.bidirectional else [fin])
            if self.dropout and l < self.num_layers - 1:
                out = F.dropout(out, self.dropout, self.training)
        if self.head is not None:
            out = self.head(out)
        if self.cell_class.state_arity == 2:
            final = (_stack([f[0] for f in finals]), _stack([f[1] for f in finals]))
        else:
            final = _stack(finals)
        return out, final

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}")


class RNN(_Stack):
    """Stacked vanilla RNN layers (cell options: ``nonlinearity='tanh'|'relu'``)."""

    cell_class = RNNCell


class GRU(_Stack):
    """Stacked GRU layers (cell options: ``full=True``, ``reset_after=False``)."""

    cell_class = GRUCell


class LSTM(_Stack):
    """Stacked LSTM layers (cell options: ``peephole=False``, ``forget_bias=0.0``)."""

    cell_class = LSTMCell


LAYERS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def make_layer(cell, *args, **kwargs):
    """``make_layer('lstm', 10, 32, num_layers=2)`` — a stacked layer by cell name."""
    if cell not in LAYERS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(LAYERS)}")
    return LAYERS[cell](*args, **kwargs)


# --------------------------------------------------------------------------- heads: RNN types

def deep_head(in_features, hidden_sizes, out_features, dtype=np.float32):
    """A small MLP applied at every time step, with no horizontal connections."""
    layers, n = [], in_features
    for h in hidden_sizes:
        layers += [Linear(n, h, dtype=dtype), Tanh()]
        n = h
    layers.append(Linear(n, out_features, dtype=dtype))
    return Sequential(*layers)


def _rnn_dtype(rnn):
    """The dtype of a wrapped recurrent layer's parameters (the head matches it)."""
    return next((p.dtype for p in rnn.parameters()), np.dtype(np.float32))


def _out_features(rnn):
    D = 2 if getattr(rnn, "bidirectional", False) or isinstance(rnn, Bidirectional) else 1
    return rnn.hidden_size * D


class SequenceTagger(Module):
    """Many-to-many with T_x = T_y (e.g. named-entity tagging): ŷ<t> = W_y a<t> + b_y at
    every t.  Returns logits (B, T, C); train with ``mg.cross_entropy(logits, y, mask)``."""

    def __init__(self, rnn, num_classes):
        super().__init__()
        self.rnn = rnn
        self.out = Linear(_out_features(rnn), num_classes, dtype=_rnn_dtype(rnn))

    def forward(self, x, lengths=None, mask=None):
        outputs, _ = self.rnn(x, lengths=lengths, mask=mask)
        return self.out(outputs)


class SequenceClassifier(Module):
    """Many-to-one (e.g. sentiment from a sentence): one prediction from the last state.

    With ``lengths`` the last state is each sequence's true last state; for a bidirectional
    top layer it is ``[a→<T_x>, a←<1>]``.  Returns logits (B, C).
    """

    def __init__(self, rnn, num_classes):
        super().__init__()
        self.rnn = rnn
        self.out = Linear(_out_features(rnn), num_classes, dtype=_rnn_dtype(rnn))

    def forward(self, x, lengths=None, mask=None):
        _, final = self.rnn(x, lengths=lengths, mask=mask)
        if isinstance(self.rnn, Bidirectional):  # (state→, state←), each a or (a, c)
            last = mg.concat([_hidden(final[0]), _hidden(final[1])], axis=1)
        elif isinstance(self.rnn, _Stack):  # (L·D, B, H), or a pair of them for an LSTM
            a = _hidden(final)
            last = mg.concat([a[-2], a[-1]], axis=1) if self.rnn.bidirectional else a[-1]
        else:  # a Recurrent layer: a (B, H), or (a, c)
            last = _hidden(final)
        return self.out(last)


def _hidden(state):
    """The hidden state a of a final state: ``a`` itself, or the ``a`` of an LSTM's (a, c)."""
    return state[0] if isinstance(state, tuple) else state


# --------------------------------------------------------------------------- gradient flow

def gradient_flow(layer):
    """‖∂L/∂a<t>‖ for every t of the last run of a :class:`Recurrent` layer, as an array (T,).

    Usage: ``layer.retain_states = True``; run the model; ``loss.backward()``;
    ``gradient_flow(layer)``.  A vanishing gradient shows as norms that decay
    geometrically from the last steps back to the first.  For an LSTM this is the gradient
    w.r.t. the hidden state a<t> only, not the memory cell c<t>.
    """
    if not isinstance(layer, Recurrent):
        raise TypeError(f"gradient_flow: expected a Recurrent layer, got {type(layer).__name__}")
    if not layer.states:
        raise RuntimeError("gradient_flow: set layer.retain_states = True before the forward pass")
    return np.array([0.0 if a.grad is None else float(np.linalg.norm(a.grad.astype(np.float64)))
                     for a in layer.states])


__all__ = ["CELLS", "GRU", "LSTM", "RNN", "Bidirectional", "GRUCell", "LSTMCell", "RNNCell",
           "Recurrent", "SequenceClassifier", "SequenceTagger", "deep_head", "gradient_flow",
           "make_layer"]
