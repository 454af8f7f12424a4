"""One training step, three frameworks: minigrad, PyTorch and JAX, from the same weights.

The step is the same function everywhere: forward (ids as a one-hot input, or dense floats
at D) + a linear head at every time step + mean cross-entropy over all B·T tokens +
backward + an SGD update, float32.  ``make_step(framework, cfg, cell, ...)`` returns a
``step() -> loss`` (a Python float, read every step by all three).

* **minigrad** — the public API as a user writes it: ``LanguageModel`` (or
  ``SequenceTagger(LSTM(..., bidirectional=True))`` at D), ``mg.cross_entropy``,
  ``loss.backward()``, ``mg.optim.SGD.step()``, the whole step one ``mg.compile``d call (as
  JAX's is one ``jax.jit``); so whatever is minigrad's default is measured.
  The GRU is ``reset_after=True``: PyTorch's and JAX's function.
* **torch** — ``nn.RNN/GRU/LSTM`` (the LSTM is oneDNN's fused layer) + ``nn.Linear`` +
  ``F.cross_entropy`` + ``optim.SGD``; ids enter as one-hot floats (made once, outside the
  step), so torch's input projection is a GEMM: that is its API's choice.
* **JAX** — one ``jax.jit`` of ``value_and_grad`` over ``lax.scan``, the SGD update inside
  and the parameters donated; the input projection hoisted out of the scan (ids as a row
  gather, dense or lower-layer inputs as one GEMM over all T·B rows, both directions of a
  bidirectional layer in one GEMM), the head as one GEMM after the scan.

minigrad builds the weights (``mg.manual_seed(0)``) and writes them in PyTorch's layout
(``models.interop.to_torch_state_dict``); torch and JAX load that file.  Nothing here
imports minigrad, torch or JAX at module level: each runs in its own process.
"""

import math
from dataclasses import dataclass

import numpy as np

LR = 1.0  # large enough that 3 steps move the loss well past float32 noise (the check)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks acting on [a, x]: GEMM width G·H


@dataclass(frozen=True)
class Config:
    name: str
    V: int          # input size: the vocabulary (ids) or the features (dense, D)
    H: int
    B: int
    T: int
    layers: int = 1
    out: int = 0    # classes of the head; 0 means V (a language model)
    dense: bool = False
    bidirectional: bool = False
    cells: tuple = ("gru", "lstm")
    note: str = ""

    @property
    def classes(self):
        return self.out or self.V

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def describe(self):
        s = f"{'I' if self.dense else 'V'}{self.V} H{self.H} B{self.B} T{self.T}"
        if self.bidirectional:
            s = f"BiLSTM {s}, {self.classes} tags"
        if self.layers > 1:
            s += f", {self.layers} layers"
        return s + (f" ({self.note})" if self.note else "")


CONFIGS = {
    "A": Config("A", 65, 100, 1, 25, cells=("rnn", "gru", "lstm"), note="min-char-rnn"),
    "N": Config("N", 29, 128, 64, 10, note="the names demo"),
    "B": Config("B", 65, 128, 32, 64, cells=("rnn", "gru", "lstm")),
    "K": Config("K", 65, 128, 50, 50, layers=2, note="char-rnn defaults"),
    "C": Config("C", 65, 256, 64, 100, layers=2),
    "D": Config("D", 50, 64, 16, 40, out=17, dense=True, bidirectional=True, cells=("lstm",),
                note="a tagger"),
}


def data(cfg, seed=0):
    """``(x, y)``: (B, T) int64 ids or (B, T, V) float32 features; (B, T) int64 targets."""
    rng = np.random.default_rng(seed)
    if cfg.dense:
        x = rng.standard_normal((cfg.B, cfg.T, cfg.V)).astype(np.float32)
    else:
        x = rng.integers(0, cfg.V, (cfg.B, cfg.T))
    return x, rng.integers(0, cfg.classes, (cfg.B, cfg.T))


# ------------------------------------------------------------------------ the GEMM floor

def gemms(cfg, cell):
    """The GEMMs of one training step that no implementation can avoid, as
    ``[(count, M, K, N, left_transposed)]`` (each ``count`` times ``(M, K) @ (K, N)``).

    Per layer and direction: the recurrent GEMM forward ``T × (B, H) @ (H, G·H)`` and its
    input gradient ``T × (B, G·H) @ (G·H, H)`` (one per time step: the recurrence forbids
    batching them), the weight gradient ``(H, B·T) @ (B·T, G·H)`` once; the input
    projection of layers ≥ 2 (forward, weight and input gradient) and of dense input at D
    (forward and weight gradient: data needs no gradient); the head (B·T, H·D) @ (H·D, C)
    with both gradients.  Ids are a row lookup (no GEMM; torch chooses a one-hot GEMM) and
    elementwise work is not counted, so the floor is a lower bound for any implementation.
    """
    G, H, BT, D = GATES[cell], cfg.H, cfg.B * cfg.T, cfg.directions
    out = []
    for layer in range(cfg.layers):
        n_in = cfg.V if layer == 0 else H * D
        for _ in range(D):
            out += [(cfg.T, cfg.B, H, G * H, False), (cfg.T, cfg.B, G * H, H, False),
                    (1, H, BT, G * H, True)]
            if layer > 0 or cfg.dense:
                out += [(1, BT, n_in, G * H, False), (1, n_in, BT, G * H, True)]
            if layer > 0:
                out.append((1, BT, G * H, n_in, False))
    C = cfg.classes
    out += [(1, BT, H * D, C, False), (1, H * D, BT, C, True), (1, BT, C, H * D, False)]
    return out


def gemm_flops(cfg, cell):
    """FLOPs of :func:`gemms` (2·M·K·N each)."""
    return sum(n * 2 * m * k * p for n, m, k, p, _ in gemms(cfg, cell))


def gemm_floor(cfg, cell):
    """``run() -> None``: the step's GEMMs alone, at their shapes, through ``numpy.dot``
    (NumPy's BLAS, the one minigrad calls) into preallocated outputs."""
    rng = np.random.default_rng(0)
    calls = []
    for n, m, k, p, transposed in gemms(cfg, cell):
        a = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
        a = a.T if transposed else a
        b = rng.standard_normal((k, p)).astype(np.float32)
        calls.append((n, a, b, np.empty((m, p), np.float32)))

    def run():
        for n, a, b, c in calls:
            for _ in range(n):
                np.dot(a, b, out=c)

    return run


# ------------------------------------------------------------------------ minigrad

def minigrad_model(cfg, cell, hidden=None, compiled=None):
    """minigrad's model for ``cfg``, built from ``mg.manual_seed(0)`` (``hidden`` overrides
    H; ``compiled=False`` asks for the eager path, None keeps the default)."""
    import minigrad as mg
    from models.language_model import LanguageModel
    from models.layers import LSTM, SequenceTagger

    mg.manual_seed(0)
    H = hidden or cfg.H
    opts = {} if compiled is None else {"compiled": compiled}
    if cfg.bidirectional:
        return SequenceTagger(LSTM(cfg.V, H, num_layers=cfg.layers, bidirectional=True, **opts),
                              cfg.classes)
    if cell == "gru":
        opts["reset_after"] = True  # PyTorch's and JAX's GRU
    return LanguageModel(cfg.V, H, cell=cell, num_layers=cfg.layers, **opts)


def minigrad_step(cfg, cell, weights_out=None, hidden=None, compiled=None):
    import minigrad as mg

    model = minigrad_model(cfg, cell, hidden, compiled)
    if weights_out:
        from models.interop import to_torch_state_dict

        np.savez(weights_out, **to_torch_state_dict(model))
    opt = mg.optim.SGD(model.parameters(), lr=LR)
    x, y = data(cfg)

    def train_step(x, y):  # as JAX's: the update inside the one call
        logits = model(x) if cfg.bidirectional else model(x)[0]
        loss = mg.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    if compiled is not False:  # the whole step traced once: its backward needs no tape
        train_step = mg.compile(train_step)
    return lambda: train_step(x, y).item()


# ------------------------------------------------------------------------ torch

def torch_step(cfg, cell, weights):
    import torch

    sd = dict(np.load(weights))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
            self.rnn = layer(cfg.V, cfg.H, num_layers=cfg.layers, batch_first=True,
                             bidirectional=cfg.bidirectional)
            self.out = torch.nn.Linear(cfg.H * cfg.directions, cfg.classes)

        def forward(self, x):
            return self.out(self.rnn(x)[0])

    model = Model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    # NOTE: torch adds two biases (bias_ih + bias_hh) where minigrad has one, so plain SGD
    # would move their sum twice as far.  bias_hh stays at its zeros, except the GRU's
    # candidate block b_hn (inside Γr's product: minigrad's b_cc), which learns.
    for name, p in model.rnn.named_parameters():
        if name.startswith("bias_hh"):
            if cell == "gru":
                keep = torch.zeros_like(p)
                keep[2 * cfg.H:] = 1
                p.register_hook(lambda g, keep=keep: g * keep)
            else:
                p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x_np, y_np = data(cfg)
    x = torch.from_numpy(x_np)
    if not cfg.dense:
        x = torch.nn.functional.one_hot(x, cfg.V).float()
    y = torch.from_numpy(y_np).reshape(-1)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, cfg.classes), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


# ------------------------------------------------------------------------ JAX

def jax_step(cfg, cell, weights):
    import jax
    import jax.numpy as jnp
    from jax import lax

    # one bias per gate, as minigrad (see torch_step): bias_hh is dropped (its zeros), the
    # GRU keeps its candidate block b_hn, which sits inside Γr's product
    H, L, D = cfg.H, cfg.layers, cfg.directions
    params = {}
    for k, v in np.load(weights).items():
        if k.startswith("rnn.bias_hh"):
            if cell == "gru":
                params[k.replace("bias_hh", "bias_hn")] = jnp.asarray(v[2 * H:])
        else:
            params[k] = jnp.asarray(v)
    suffixes = ["", "_reverse"][:D]

    def recurrence(p, s, xp, reverse):
        """One direction of one layer: xp (T, B, G·H) is the hoisted input term."""
        w = p[f"rnn.weight_hh_{s}"].T                       # (H, G·H)
        B = xp.shape[1]

        def rnn(h, x):
            h = jnp.tanh(x + h @ w)
            return h, h

        def gru(h, x):  # reset after, PyTorch's gate order r, z, n
            hp = h @ w
            r = jax.nn.sigmoid(x[:, :H] + hp[:, :H])
            z = jax.nn.sigmoid(x[:, H:2 * H] + hp[:, H:2 * H])
            n = jnp.tanh(x[:, 2 * H:] + r * (hp[:, 2 * H:] + p[f"rnn.bias_hn_{s}"]))
            h = (1 - z) * n + z * h
            return h, h

        def lstm(carry, x):  # gate order i, f, g, o
            h, c = carry
            g = x + h @ w
            i, f = jax.nn.sigmoid(g[:, :H]), jax.nn.sigmoid(g[:, H:2 * H])
            c = f * c + i * jnp.tanh(g[:, 2 * H:3 * H])
            h = jax.nn.sigmoid(g[:, 3 * H:]) * jnp.tanh(c)
            return (h, c), h

        h0 = jnp.zeros((B, H), xp.dtype)
        body, init = {"rnn": (rnn, h0), "gru": (gru, h0), "lstm": (lstm, (h0, h0))}[cell]
        return lax.scan(body, init, xp, reverse=reverse)[1]  # (T, B, H)

    def loss_fn(p, x, y):
        inp = x  # (T, B) ids, or (T, B, F) floats
        for layer in range(L):
            names = [f"l{layer}{s}" for s in suffixes]
            # the input term of every direction's gates, hoisted out of the scan
            w_in = jnp.concatenate([p[f"rnn.weight_ih_{s}"] for s in names])   # (D·G·H, F)
            bias = jnp.concatenate([p[f"rnn.bias_ih_{s}"] for s in names])
            if layer == 0 and not cfg.dense:
                xp = jnp.take(w_in.T, inp, axis=0) + bias                    # row gather
            else:
                xp = inp @ w_in.T + bias                                      # one GEMM
            xp = jnp.split(xp, D, axis=-1)
            outs = [recurrence(p, s, xp[d], d == 1) for d, s in enumerate(names)]
            inp = outs[0] if D == 1 else jnp.concatenate(outs, axis=-1)
        logits = inp @ p["out.weight"].T + p["out.bias"]                       # (T, B, C)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    def update(p, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        return jax.tree_util.tree_map(lambda a, da: a - LR * da, p, g), loss

    update = jax.jit(update, donate_argnums=0)
    x_np, y_np = data(cfg)
    x = jnp.asarray(np.swapaxes(x_np, 0, 1).astype(np.float32 if cfg.dense else np.int32))
    y = jnp.asarray(y_np.T.astype(np.int32))
    state = [params]

    def step():
        state[0], loss = update(state[0], x, y)
        return float(loss)

    return step


# ------------------------------------------------------------------------ min-char-rnn

def minchar_step(framework, cfg, weights):
    """The min-char-rnn algorithm (config A, vanilla RNN) in minigrad or in the plain-NumPy
    reference ``min_char_rnn.py``: summed cross-entropy, every gradient element clipped to
    ±5, Adagrad lr 0.1, the final state carried (detached) into the next step.  minigrad
    writes its initial weights, the reference starts from them."""
    x, y = data(cfg)
    if framework == "numpy min-char-rnn":
        from min_char_rnn import MinCharRNN

        sd = np.load(weights)
        ref = MinCharRNN(cfg.V, cfg.H)
        ref.Wxh[...], ref.Whh[...] = sd["rnn.weight_ih_l0"], sd["rnn.weight_hh_l0"]
        ref.bh[:, 0] = sd["rnn.bias_ih_l0"] + sd["rnn.bias_hh_l0"]
        ref.Why[...], ref.by[:, 0] = sd["out.weight"], sd["out.bias"]
        inputs, targets, h = x[0].tolist(), y[0].tolist(), [np.zeros((cfg.H, 1), np.float32)]

        def ref_step():
            loss, h[0] = ref.step(inputs, targets, h[0])
            return loss

        return ref_step
    import minigrad as mg
    from models.interop import to_torch_state_dict

    model = minigrad_model(cfg, "rnn")
    np.savez(weights, **to_torch_state_dict(model))
    params = list(model.parameters())
    opt = mg.optim.Adagrad(params, lr=0.1)
    state = [None]

    def step():
        logits, final = model(x, state[0])
        loss = mg.cross_entropy(logits, y, reduction="sum")
        opt.zero_grad()
        loss.backward()
        mg.optim.clip_grad_value_(params, 5.0)
        opt.step()
        state[0] = final.detach()
        return loss.item()

    return step


# ------------------------------------------------------------------------ dispatch

FRAMEWORKS = ("minigrad", "torch", "jax")
MODULES = {"torch": "torch", "jax": "jax"}  # the package each peer needs


def make_step(framework, cfg, cell, weights, hidden=None, compiled=None):
    """``step() -> loss`` for ``framework``; minigrad *writes* ``weights``, peers read it."""
    if framework == "minigrad":
        return minigrad_step(cfg, cell, weights, hidden, compiled)
    if framework.endswith("min-char-rnn"):
        return minchar_step(framework, cfg, weights)
    return {"torch": torch_step, "jax": jax_step}[framework](cfg, cell, weights)


def disagreement(ref, other):
    """Largest relative difference between two loss sequences (inf if either is not finite)."""
    ref, other = np.asarray(ref, np.float64), np.asarray(other, np.float64)
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(other))):
        return math.inf
    return float(np.max(np.abs(ref - other) / np.maximum(np.abs(ref), 1e-12)))
