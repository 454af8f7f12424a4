"""Recurrent cells in the chapter's notation: RNN, GRU (simplified, full, reset-after), LSTM.

A cell is written once, as the chapter's equations: ``cell(x_t, state) -> new state``.
That one definition is what runs: a layer (:class:`models.layers.Recurrent`) compiles it
(trace → rewrite → generated Numba kernels, :mod:`minigrad.compiler`) or, with
``compiled=False``, unrolls it on the tape step by step.  No backward code anywhere.

**The cell protocol** (what any cell, built in or yours, provides): a :class:`Module` with
``input_size``, ``hidden_size`` and ``forward(x_t, state)``, where ``x_t`` is (B, I) and the
state is a (B, H) tensor — or a tuple of ``state_arity`` of them, whose first part a<t> is
what the layer emits.  Optional: ``state_arity`` (default 1), ``state_names`` (for the printed
IR), ``dtype`` (default: the parameters' dtype), ``init_state(B)`` (default: zeros).

A weight acting on ``[a<t-1>, x<t>]`` has shape ``(H, H + I)``: the first ``H`` columns act on
the state (``W_aa``), the last ``I`` on the input (``W_ax``).  Default init is PyTorch's
uniform(−1/√H, 1/√H) for every weight and bias.
"""

import numpy as np

import minigrad as mg
from minigrad import functional as F
from minigrad.nn import Module, Parameter, init

_NONLINEARITIES = ("tanh", "relu")


class RecurrentCell(Module):
    """What the built-in cells share: sizes, parameter creation, input and state checks."""

    state_arity = 1  # 1: the state is a<t> (B, H); 2: (a<t>, c<t>)
    state_names = ("a",)

    def __init__(self, input_size, hidden_size, dtype=np.float32):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, "
                                 f"got {v!r}")
        self.input_size, self.hidden_size, self.dtype = int(input_size), int(hidden_size), dtype

    def weight(self, gates=None, k=0):
        """A new (H, H + I) weight acting on [a<t-1>, x<t>]: gate ``k`` of ``gates`` gates
        stored side by side (``gates=None``: on its own).

        NOTE: the gates' weights live in one array, in the order the forward uses them
        (the order in which the compiler stacks them)."""
        H, I = self.hidden_size, self.input_size
        if gates is None:
            return self._param((H, H + I))
        if not hasattr(self, "_gates"):
            self._gates = np.zeros((gates * H, H + I), dtype=self.dtype)
        p = Parameter(np.zeros((0,), self.dtype))
        p.data = self._gates[k * H:(k + 1) * H]
        return init.rnn_uniform_(p, H)

    def bias(self):
        return self._param((self.hidden_size,))

    def _param(self, shape):
        return init.rnn_uniform_(Parameter(np.zeros(shape, dtype=self.dtype)), self.hidden_size)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"

    def init_state(self, batch_size):
        z = mg.zeros(batch_size, self.hidden_size, dtype=self.dtype)
        return z if self.state_arity == 1 else (z, mg.zeros(batch_size, self.hidden_size,
                                                             dtype=self.dtype))

    @staticmethod
    def output(state):
        """The hidden state a<t> that the layer emits."""
        return state if isinstance(state, mg.Tensor) else state[0]

    def _input(self, x_t):
        """x<t> as (B, I) floats: integer ids become the one-hot vectors they stand for."""
        if not isinstance(x_t, mg.Tensor):
            x_t = mg.tensor(x_t)
        if np.issubdtype(x_t.dtype, np.integer):
            return F.one_hot(x_t, self.input_size, dtype=self.dtype)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}({self.input_size}, {self.hidden_size}): "
                             f"x<t> has shape {x_t.shape}, expected (B, input_size) = "
                             f"(B, {self.input_size})")
        return x_t

    def _state(self, state):
        """Check the state's structure: a (B, H) tensor, or a tuple of ``state_arity``."""
        name, H = type(self).__name__, self.hidden_size
        if self.state_arity == 1:
            if isinstance(state, (tuple, list)):
                raise ValueError(f"{name}: the state is one tensor a<t-1> of shape (B, {H}), "
                                 f"got a tuple of {len(state)} (an LSTM's (a, c) pair?)")
            parts = (state,)
        elif not isinstance(state, (tuple, list)) or len(state) != self.state_arity:
            raise ValueError(f"{name}: the state is a pair (a<t-1>, c<t-1>) of (B, {H}) "
                             f"tensors, got {type(state).__name__}")
        else:
            parts = tuple(state)
        for p in parts:
            if not isinstance(p, mg.Tensor) or p.ndim != 2 or p.shape[1] != H:
                shape = getattr(p, "shape", type(p).__name__)
                raise ValueError(f"{name}: a state part has shape {shape}, expected (B, {H})")
        return parts[0] if self.state_arity == 1 else parts


class RNNCell(RecurrentCell):
    """Vanilla RNN cell:  a<t> = g(W_a [a<t-1>, x<t>] + b_a),  g = tanh or relu.

    Parameters: W_a (H, H+I) = [W_aa : W_ax], b_a (H,).  State: a (B, H).
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=np.float32):
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNNCell: unknown nonlinearity {nonlinearity!r}; expected one of "
                             f"{_NONLINEARITIES}")
        super().__init__(input_size, hidden_size, dtype)
        self.nonlinearity = nonlinearity
        self.W_a, self.b_a = self.weight(), self.bias()

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"

    def forward(self, x_t, a_prev):
        a_prev = self._state(a_prev)
        z = mg.concat([a_prev, self._input(x_t)], axis=1) @ self.W_a.T + self.b_a
        return z.tanh() if self.nonlinearity == "tanh" else z.relu()


class GRUCell(RecurrentCell):
    """Gated recurrent unit; the memory cell c<t> is also the output a<t>.

    ``full=False`` — the chapter's simplified GRU (update gate only)::

        c~<t> = tanh(W_c [c<t-1>, x<t>] + b_c)
        Γu    = σ(W_u [c<t-1>, x<t>] + b_u)
        c<t>  = Γu * c~<t> + (1 - Γu) * c<t-1>

    ``full=True`` (default) adds the relevance gate Γr, applied to c<t-1> *before* the
    matmul, as in the chapter and Cho et al. (2014)::

        Γr    = σ(W_r [c<t-1>, x<t>] + b_r)
        c~<t> = tanh(W_c [Γr * c<t-1>, x<t>] + b_c)

    ``reset_after=True`` (needs ``full=True``) is the PyTorch / cuDNN / Keras variant,
    ``c~<t> = tanh(W_cx x<t> + b_c + Γr * (W_cc c<t-1> + b_cc))``, with an extra recurrent
    bias ``b_cc`` (H,).  The two variants are different functions: no choice of weights maps
    one onto the other (Γr scales ``W_cc c`` after the product here, ``c`` before it there),
    so weights trained with one do not transfer to the other.

    Parameters: W_c, W_u (and W_r) of shape (H, H+I); b_c, b_u (and b_r, b_cc) of shape (H,).
    """

    state_names = ("c",)

    def __init__(self, input_size, hidden_size, full=True, reset_after=False,
                 dtype=np.float32):
        if reset_after and not full:
            raise ValueError("GRUCell: reset_after=True needs full=True (the simplified GRU "
                             "has no relevance gate)")
        super().__init__(input_size, hidden_size, dtype)
        self.full, self.reset_after = bool(full), bool(reset_after)
        n = 3 if full else 2  # stored in the order of use: u, r, c (full) or c, u
        self.W_c, self.b_c = self.weight(n, 2 if full else 0), self.bias()
        self.W_u, self.b_u = self.weight(n, 0 if full else 1), self.bias()
        if full:
            self.W_r, self.b_r = self.weight(n, 1), self.bias()
        if reset_after:
            self.b_cc = self.bias()
        self._equations = (self._reset_after if reset_after else
                           self._full if full else self._simplified)

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, full={self.full}, "
                f"reset_after={self.reset_after}")

    def forward(self, x_t, c_prev):
        return self._equations(self._input(x_t), self._state(c_prev))

    def _simplified(self, x_t, c_prev):
        cx = mg.concat([c_prev, x_t], axis=1)                       # [c<t-1>, x<t>]
        c_tilde = (cx @ self.W_c.T + self.b_c).tanh()
        G_u = (cx @ self.W_u.T + self.b_u).sigmoid()
        return G_u * c_tilde + (1 - G_u) * c_prev

    def _full(self, x_t, c_prev):
        cx = mg.concat([c_prev, x_t], axis=1)                       # [c<t-1>, x<t>]
        G_u = (cx @ self.W_u.T + self.b_u).sigmoid()
        G_r = (cx @ self.W_r.T + self.b_r).sigmoid()
        rcx = mg.concat([G_r * c_prev, x_t], axis=1)                # [Γr * c<t-1>, x<t>]
        c_tilde = (rcx @ self.W_c.T + self.b_c).tanh()
        return G_u * c_tilde + (1 - G_u) * c_prev

    def _reset_after(self, x_t, c_prev):
        H = self.hidden_size
        cx = mg.concat([c_prev, x_t], axis=1)                       # [c<t-1>, x<t>]
        G_u = (cx @ self.W_u.T + self.b_u).sigmoid()
        G_r = (cx @ self.W_r.T + self.b_r).sigmoid()
        W_cc, W_cx = self.W_c[:, :H], self.W_c[:, H:]
        c_tilde = (x_t @ W_cx.T + self.b_c + G_r * (c_prev @ W_cc.T + self.b_cc)).tanh()
        return G_u * c_tilde + (1 - G_u) * c_prev


class LSTMCell(RecurrentCell):
    """Long short-term memory cell (Hochreiter & Schmidhuber 1997)::

        c~<t> = tanh(W_c [a<t-1>, x<t>] + b_c)
        Γu    = σ(W_u [a<t-1>, x<t>] + b_u)            update gate
        Γf    = σ(W_f [a<t-1>, x<t>] + b_f)            forget gate
        Γo    = σ(W_o [a<t-1>, x<t>] + b_o)            output gate
        c<t>  = Γu * c~<t> + Γf * c<t-1>
        a<t>  = Γo * tanh(c<t>)

    The chapter prints ``a<t> = Γo * c<t>``; the standard LSTM (and this cell) applies tanh
    to the memory cell first.  ``peephole=True`` lets the gates see the memory cell
    elementwise (Gers & Schmidhuber 2000; TF's PeepholeLSTMCell): ``+ p_u * c<t-1>`` in Γu,
    ``+ p_f * c<t-1>`` in Γf and ``+ p_o * c<t>`` in Γo.  ``forget_bias`` initialises b_f
    (1.0 is a common choice that helps remembering early in training).

    Parameters: W_c, W_u, W_f, W_o (H, H+I); b_c, b_u, b_f, b_o (H,); p_u, p_f, p_o (H,).
    State: (a, c), each (B, H).
    """

    state_arity = 2
    state_names = ("a", "c")

    def __init__(self, input_size, hidden_size, peephole=False, forget_bias=0.0,
                 dtype=np.float32):
        super().__init__(input_size, hidden_size, dtype)
        self.peephole = bool(peephole)
        self.W_c, self.b_c = self.weight(4, 3), self.bias()  # stored in the order of use:
        self.W_u, self.b_u = self.weight(4, 0), self.bias()  # u, f, o, c
        self.W_f, self.b_f = self.weight(4, 1), self.bias()
        self.W_o, self.b_o = self.weight(4, 2), self.bias()
        if forget_bias:
            init.constant_(self.b_f, forget_bias)
        if peephole:
            self.p_u, self.p_f, self.p_o = self.bias(), self.bias(), self.bias()

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, peephole={self.peephole}"

    def forward(self, x_t, state):
        a_prev, c_prev = self._state(state)
        ax = mg.concat([a_prev, self._input(x_t)], axis=1)         # [a<t-1>, x<t>]
        z_u = ax @ self.W_u.T + self.b_u
        z_f = ax @ self.W_f.T + self.b_f
        z_o = ax @ self.W_o.T + self.b_o
        if self.peephole:
            z_u = z_u + self.p_u * c_prev
            z_f = z_f + self.p_f * c_prev
        c_tilde = (ax @ self.W_c.T + self.b_c).tanh()
        G_u, G_f = z_u.sigmoid(), z_f.sigmoid()
        c = G_u * c_tilde + G_f * c_prev
        if self.peephole:
            z_o = z_o + self.p_o * c
        G_o = z_o.sigmoid()
        a = G_o * c.tanh()
        return a, c


CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}
