"""A character-level vanilla RNN in plain NumPy with hand-written BPTT: the reference
minigrad's RNN is measured against (``bench_rnn.py``, config A: V65 H100 B1 T25).

This is the algorithm of Karpathy's well-known ``min-char-rnn.py``, written afresh: one
sequence at a time (B = 1), column vectors, one-hot inputs multiplied densely, the loss
L = Σ_t −log p<t>[y<t>], backpropagation through time by hand, every gradient element
clipped to ±5, and Adagrad (``mem += g²; p −= lr·g/√(mem + 1e-8)``).  The hidden state is
carried from one training step to the next, as the original does.

It runs in float32 by default (what the benchmark compares) and in float64 for the test
that checks its gradients against minigrad's tape (``tests/test_min_char_rnn.py``).
"""

import numpy as np

PARAMS = ("Wxh", "Whh", "Why", "bh", "by")


class MinCharRNN:
    """h<t> = tanh(Wxh x<t> + Whh h<t-1> + bh);  p<t> = softmax(Why h<t> + by)."""

    def __init__(self, vocab_size, hidden_size, lr=0.1, clip=5.0, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        V, H = vocab_size, hidden_size
        self.V, self.H, self.lr, self.clip, self.dtype = V, H, lr, clip, np.dtype(dtype)
        self.Wxh = (rng.standard_normal((H, V)) * 0.01).astype(dtype)
        self.Whh = (rng.standard_normal((H, H)) * 0.01).astype(dtype)
        self.Why = (rng.standard_normal((V, H)) * 0.01).astype(dtype)
        self.bh = np.zeros((H, 1), dtype)
        self.by = np.zeros((V, 1), dtype)
        self.mem = {k: np.zeros_like(getattr(self, k)) for k in PARAMS}
        self.eye = np.eye(V, dtype=dtype)  # column i is the one-hot vector of id i

    def loss_and_grads(self, inputs, targets, hprev):
        """Forward over the sequence, then BPTT.

        inputs, targets: sequences of T integer ids; hprev: (H, 1) state before the first
        step.  Returns (loss, {name: gradient}, h<T>).
        """
        xs, hs, ps = {}, {-1: hprev}, {}
        loss = 0.0
        for t, (i, y) in enumerate(zip(inputs, targets)):
            xs[t] = self.eye[:, i:i + 1]
            hs[t] = np.tanh(self.Wxh @ xs[t] + self.Whh @ hs[t - 1] + self.bh)
            z = self.Why @ hs[t] + self.by
            # NOTE: the max shift keeps exp from overflowing; it cancels in the softmax.
            e = np.exp(z - z.max())
            ps[t] = e / e.sum()
            loss -= float(np.log(ps[t][y, 0]))
        g = {k: np.zeros_like(getattr(self, k)) for k in PARAMS}
        dh_next = np.zeros_like(hprev)
        for t in reversed(range(len(inputs))):
            dz = ps[t].copy()
            dz[targets[t]] -= 1  # ∂L<t>/∂z = p − onehot(y)
            g["Why"] += dz @ hs[t].T
            g["by"] += dz
            dh = self.Why.T @ dz + dh_next  # from the output at t and from step t+1
            draw = (1 - hs[t] * hs[t]) * dh  # back through tanh
            g["bh"] += draw
            g["Wxh"] += draw @ xs[t].T
            g["Whh"] += draw @ hs[t - 1].T
            dh_next = self.Whh.T @ draw
        return loss, g, hs[len(inputs) - 1]

    def step(self, inputs, targets, hprev):
        """One training step: gradients, clip to ±clip, Adagrad.  Returns (loss, h<T>)."""
        loss, grads, h = self.loss_and_grads(inputs, targets, hprev)
        for k in PARAMS:
            p, d, m = getattr(self, k), grads[k], self.mem[k]
            np.clip(d, -self.clip, self.clip, out=d)  # against exploding gradients
            m += d * d
            p -= self.lr * d / np.sqrt(m + 1e-8)
        return loss, h


if __name__ == "__main__":
    # A quick story: it learns a repeating string (loss falls well below log V per char).
    text = "hello world, hello recurrent networks. " * 8
    chars = sorted(set(text))
    ids = [chars.index(c) for c in text]
    net = MinCharRNN(len(chars), 64)
    h, T = np.zeros((64, 1), np.float32), 25
    for n in range(600):
        p = (n * T) % (len(ids) - T - 1)
        loss, h = net.step(ids[p:p + T], ids[p + 1:p + T + 1], h)
        if n % 100 == 0:
            print(f"step {n:4d}  loss per char {loss / T:.3f}  (log V = {np.log(len(chars)):.3f})")
