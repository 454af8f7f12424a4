"""Recurrent cells in the chapter's notation: RNN, GRU (simplified, full, reset-after), LSTM.

Every cell has two ways to run one time step, equal in value and gradient (tested):

* ``cell(x_t, state)`` — the chapter's equations, written as plainly as on the page, with
  ``[a<t-1>, x<t>]`` concatenated and each gate's weight applied separately;
* ``cell.step(xp_t, state, R)`` — the fast path a layer uses: the input projection of all
  time steps is one matmul done before the loop (``xp``), all gates share one matmul per
  step on stacked weights (``R``, built once per forward), and the gate math is fused.

No backward code anywhere: the tape differentiates both.  A weight acting on
``[a<t-1>, x<t>]`` has shape ``(H, H + I)``: the first ``H`` columns act on the state
(``W_aa``), the last ``I`` on the input (``W_ax``).  Default init is PyTorch's
uniform(−1/√H, 1/√H) for every weight and bias; all are plain Parameters.
"""

import numpy as np

import minigrad as mg
from minigrad import functional as F
from minigrad.nn import Module, Parameter, init

_NONLINEARITIES = ("tanh", "relu")


class RecurrentCell(Module):
    """What every cell shares: sizes, parameter creation, the input projection.

    Subclasses define ``gates`` (names of the weight blocks that act on ``[a, x]``, in
    stacking order), ``forward`` (the chapter's equations), ``prepare`` and ``step``.
    """

    gates = ()
    state_arity = 1  # 1: the state is a<t> (B, H); 2: (a<t>, c<t>)

    def __init__(self, input_size, hidden_size, dtype=np.float32, gates=None):
        super().__init__()
        if gates is not None:
            self.gates = gates
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, "
                                 f"got {v!r}")
        self.input_size, self.hidden_size, self.dtype = int(input_size), int(hidden_size), dtype
        H, I = self.hidden_size, self.input_size
        for g in self.gates:
            setattr(self, f"W_{g}", self._param((H, H + I)))
            setattr(self, f"b_{g}", self._param((H,)))

    def _param(self, shape):
        return init.rnn_uniform_(Parameter(np.zeros(shape, dtype=self.dtype)), self.hidden_size)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"

    # ---------------------------------------------------------------- fast path
    def stacked(self):
        """All gates' weights and biases stacked (G·H rows), the weight split by what it
        acts on: W_state (G·H, H) on a<t-1>, W_in (G·H, I) on x<t>, and b (G·H,)."""
        if len(self.gates) == 1:
            g = self.gates[0]
            W, b = getattr(self, f"W_{g}"), getattr(self, f"b_{g}")
        else:
            W = mg.concat([getattr(self, f"W_{g}") for g in self.gates], axis=0)
            b = mg.concat([getattr(self, f"b_{g}") for g in self.gates], axis=0)
        # one split (its gradient is one concatenation) rather than two slices (two
        # zero-filled full-size gradients added together)
        W_state, W_in = mg.split(W, [self.hidden_size, self.input_size], axis=1)
        return W_state, W_in, b

    def project_inputs(self, x, W_in, b):
        """The input term of every gate for all time steps at once: (T, B, G·H).

        x: (T, B, I) float, or (T, B) integer token ids standing for one-hot vectors of size
        I — then the product with the one-hot is a row lookup (no dense matmul).
        """
        if np.issubdtype(x.dtype, np.integer):
            # one-hot rows pick one row of (W_inᵀ + b): add b to the small table, not to
            # every (t, b) row of the result
            return (W_in.T + b)[x]
        return x @ W_in.T + b

    def init_state(self, batch_size):
        z = mg.zeros(batch_size, self.hidden_size, dtype=self.dtype)
        return z if self.state_arity == 1 else (z, mg.zeros(batch_size, self.hidden_size,
                                                             dtype=self.dtype))

    @staticmethod
    def output(state):
        """The hidden state a<t> that the layer emits."""
        return state if isinstance(state, mg.Tensor) else state[0]

    def _input(self, x_t):
        """Integer ids become the one-hot vectors they stand for (reference path)."""
        if np.issubdtype(x_t.dtype, np.integer):
            return F.one_hot(x_t, self.input_size, dtype=self.dtype)
        return x_t

    @staticmethod
    def _state_weight(W_state):
        """W_aa^T as a contiguous (H, ·) array, built once per forward for BLAS."""
        return W_state.T.contiguous()


class RNNCell(RecurrentCell):
    """Vanilla RNN cell:  a<t> = g(W_a [a<t-1>, x<t>] + b_a),  g = tanh or relu.

    Parameters: W_a (H, H+I) = [W_aa : W_ax], b_a (H,).  State: a (B, H).
    """

    gates = ("a",)

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=np.float32):
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNNCell: unknown nonlinearity {nonlinearity!r}; expected one of "
                             f"{_NONLINEARITIES}")
        super().__init__(input_size, hidden_size, dtype)
        self.nonlinearity = nonlinearity

    def _g(self, z):
        return z.tanh() if self.nonlinearity == "tanh" else z.relu()

    def forward(self, x_t, a_prev):
        ax = mg.concat([a_prev, self._input(x_t)], axis=1)  # [a<t-1>, x<t>]  (B, H+I)
        return self._g(ax @ self.W_a.T + self.b_a)

    def prepare(self, W_state):
        return self._state_weight(W_state)

    def step(self, xp_t, a_prev, W_aa_T):
        return self._g(mg.addmm(xp_t, a_prev, W_aa_T))


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

    def __init__(self, input_size, hidden_size, full=True, reset_after=False,
                 dtype=np.float32):
        if reset_after and not full:
            raise ValueError("GRUCell: reset_after=True needs full=True (the simplified GRU "
                             "has no relevance gate)")
        super().__init__(input_size, hidden_size, dtype,
                         gates=("c", "u", "r") if full else ("c", "u"))
        self.full, self.reset_after = bool(full), bool(reset_after)
        if reset_after:
            self.b_cc = self._param((hidden_size,))

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, full={self.full}, "
                f"reset_after={self.reset_after}")

    def forward(self, x_t, c_prev):
        x_t = self._input(x_t)
        cx = mg.concat([c_prev, x_t], axis=1)  # [c<t-1>, x<t>]
        G_u = (cx @ self.W_u.T + self.b_u).sigmoid()
        if not self.full:
            c_tilde = (cx @ self.W_c.T + self.b_c).tanh()
        elif not self.reset_after:
            G_r = (cx @ self.W_r.T + self.b_r).sigmoid()
            rcx = mg.concat([G_r * c_prev, x_t], axis=1)  # [Γr * c<t-1>, x<t>]
            c_tilde = (rcx @ self.W_c.T + self.b_c).tanh()
        else:
            H = self.hidden_size
            G_r = (cx @ self.W_r.T + self.b_r).sigmoid()
            W_cc, W_cx = self.W_c[:, :H], self.W_c[:, H:]
            c_tilde = (x_t @ W_cx.T + self.b_c + G_r * (c_prev @ W_cc.T + self.b_cc)).tanh()
        return G_u * c_tilde + (1 - G_u) * c_prev

    def prepare(self, W_state):
        H = self.hidden_size
        if not self.full or self.reset_after:
            R = self._state_weight(W_state)  # (H, G·H): every gate's state term in one matmul
            if self.reset_after:
                zero = mg.zeros(2 * H, dtype=self.dtype)
                return R, mg.concat([self.b_cc, zero])  # b_cc acts on the c~ block only
            return R
        # reset-before: Γu, Γr from one matmul; c~ needs Γr * c first, so a second one.
        W_cc, W_urc = mg.split(W_state, [H, 2 * H], axis=0)
        return self._state_weight(W_urc), self._state_weight(W_cc)

    def step(self, xp_t, c_prev, R):
        H = self.hidden_size
        if not self.full:
            z_c, z_u = mg.split(mg.addmm(xp_t, c_prev, R), H, axis=1)
            return F.gru_update(z_c, z_u.sigmoid(), c_prev)
        if self.reset_after:
            W_T, b_rec = R
            return F.gru_reset_after(xp_t, mg.addmm(b_rec, c_prev, W_T), c_prev)
        xp_c, xp_ur = mg.split(xp_t, [H, 2 * H], axis=1)
        G_u, rc = F.gru_gates(mg.addmm(xp_ur, c_prev, R[0]), c_prev)  # Γu, Γr * c<t-1>
        return F.gru_update(mg.addmm(xp_c, rc, R[1]), G_u, c_prev)


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

    gates = ("c", "u", "f", "o")
    state_arity = 2

    def __init__(self, input_size, hidden_size, peephole=False, forget_bias=0.0,
                 dtype=np.float32):
        super().__init__(input_size, hidden_size, dtype)
        self.peephole = bool(peephole)
        if forget_bias:
            init.constant_(self.b_f, forget_bias)
        if peephole:
            self.p_u = self._param((hidden_size,))
            self.p_f = self._param((hidden_size,))
            self.p_o = self._param((hidden_size,))

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, peephole={self.peephole}"

    def forward(self, x_t, state):
        a_prev, c_prev = state
        ax = mg.concat([a_prev, self._input(x_t)], axis=1)  # [a<t-1>, x<t>]
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

    def prepare(self, W_state):
        P = mg.stack([self.p_u, self.p_f, self.p_o]) if self.peephole else None
        return self._state_weight(W_state), P

    def step(self, xp_t, state, R):
        a_prev, c_prev = state
        W_aa_T, P = R
        return F.lstm_step(xp_t, a_prev, c_prev, W_aa_T, P)  # addmm + lstm_cell, one op


CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}
