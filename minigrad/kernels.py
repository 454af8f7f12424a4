"""Numba kernels: pure functions on NumPy arrays (never Tensors).

Every kernel is compiled with one set of options (:data:`OPTIONS`: ``cache=True`` and one
project-wide fastmath choice that keeps NaN/Inf semantics) — by :func:`kernel` for array
kernels, which callers hand C-contiguous 1-D or 2-D arrays so each compiles for few type
signatures, and by :func:`elementwise` for scalar functions that become NumPy ufuncs.
Every kernel has a plain-NumPy reference in ``tests/test_kernels.py``.

float32 uses fast vectorisable formulas for ``tanh``/``sigmoid`` (max abs error ~3e-7);
float64 — the dtype of gradient checks — stays exact.
"""

import numba
import numpy as np
from numba.extending import overload

# NOTE: no 'nnan'/'ninf' (they let LLVM assume NaN/Inf never happen) and no 'afn'
# (approximate libm calls would break float64 gradient checks).
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})


OPTIONS = {"cache": True, "fastmath": set(FASTMATH), "error_model": "numpy"}


def kernel(fn):
    """The decorator every array kernel is compiled with."""
    return numba.njit(**OPTIONS)(fn)


def elementwise(*signatures):
    """Compile a scalar function into a NumPy ufunc (any shape, broadcasting, ``out=``),
    with the same options as :func:`kernel`, on first use: see :class:`Ufunc`."""
    def wrap(fn):
        return Ufunc(fn, signatures)
    return wrap


class Ufunc:
    """A scalar kernel that becomes a NumPy ufunc on its first call.

    ``.ufunc()`` is the accessor for the NumPy ufunc itself (building it once); calling the
    object calls the ufunc.  NOTE: built lazily because Numba caches the compiled element
    functions but rebuilds each ufunc's loop wrapper in every process (~0.1 s per
    signature): building them all at import made ``import minigrad`` take over a second.
    """

    def __init__(self, fn, signatures):
        self.fn, self.signatures, self._ufunc = fn, list(signatures), None
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        # NOTE: each object has its own class so that, once built, a call goes to the ufunc
        # with no Python frame in between: a forwarding __call__ measured +0.1-0.2 µs per
        # call, +6-15 % of a recorded tanh/sigmoid op (benchmarks/bench_engine.py, §2).
        self.__class__ = type(fn.__name__, (Ufunc,), {})

    def ufunc(self):
        if self._ufunc is None:
            options = {k: v for k, v in OPTIONS.items() if k != "error_model"}  # njit-only
            self._ufunc = numba.vectorize(self.signatures, nopython=True, **options)(self.fn).ufunc
            type(self).__call__ = self._ufunc  # not a descriptor: called without self
        return self._ufunc

    def __call__(self, *args, **kwargs):  # the first call only: see __init__
        return self.ufunc()(*args, **kwargs)


# ---------------------------------------------------------------------------- elementwise

# Rational 13/6 approximation of tanh on [-7.9, 7.9] (the coefficients used by Eigen).
# It is a polynomial ratio, so LLVM vectorises it; libm's scalar tanh does not.
_A1, _A3, _A5 = 4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05
_A7, _A9 = 5.12229709037114e-08, -8.60467152213735e-11
_A11, _A13 = 2.00018790482477e-13, -2.76076847742355e-16
_B0, _B2 = 4.89352518554385e-03, 2.26843463243900e-03
_B4, _B6 = 1.18534705686654e-04, 1.19825839466702e-06
_TANH_CLAMP = 7.90531110763549805


@numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy")
def _tanh32(x):
    x = min(max(x, np.float32(-_TANH_CLAMP)), np.float32(_TANH_CLAMP))
    x2 = x * x
    p = np.float32(_A13)
    p = p * x2 + np.float32(_A11)
    p = p * x2 + np.float32(_A9)
    p = p * x2 + np.float32(_A7)
    p = p * x2 + np.float32(_A5)
    p = p * x2 + np.float32(_A3)
    p = p * x2 + np.float32(_A1)
    q = np.float32(_B6)
    q = q * x2 + np.float32(_B4)
    q = q * x2 + np.float32(_B2)
    q = q * x2 + np.float32(_B0)
    return x * p / q


def tanh(x):
    """Scalar tanh for use inside kernels: rational for float32, exact for float64."""
    return np.tanh(x)


def sigmoid(x):
    """Scalar σ(x) = 1 / (1 + e^-x) for use inside kernels, without overflow."""
    return 1 / (1 + np.exp(-x))


@overload(tanh, inline="always", jit_options={"fastmath": set(FASTMATH)})
def _tanh_impl(x):
    if x == numba.float32:
        return lambda x: _tanh32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid, inline="always", jit_options={"fastmath": set(FASTMATH)})
def _sigmoid_impl(x):
    if x == numba.float32:
        # σ(x) = (1 + tanh(x/2)) / 2 keeps the float32 path vectorisable.
        return lambda x: np.float32(0.5) + np.float32(0.5) * _tanh32(np.float32(0.5) * x)

    def exact(x):
        if x >= 0:
            return 1.0 / (1.0 + np.exp(-x))
        e = np.exp(x)  # NOTE: exp of a negative number cannot overflow
        return e / (1.0 + e)
    return exact


@elementwise("f4(f4)", "f8(f8)")
def tanh_forward(x):
    """tanh(x); a ufunc, so it takes any shape."""
    return tanh(x)


@elementwise("f4(f4)", "f8(f8)")
def sigmoid_forward(x):
    """σ(x); no overflow for any input."""
    return sigmoid(x)


@elementwise("f4(f4, f4)", "f8(f8, f8)")
def tanh_backward(g, y):
    """g * (1 - y²) where y = tanh(x): the VJP from the forward's output."""
    return g * (1 - y * y)


@elementwise("f4(f4, f4)", "f8(f8, f8)")
def sigmoid_backward(g, y):
    """g * y * (1 - y) where y = σ(x)."""
    return g * y * (1 - y)


@elementwise("f4(f4, f4)", "f8(f8, f8)")
def relu_backward(g, y):
    """g where y = relu(x) > 0, else 0."""
    return g if y > 0 else 0


# ---------------------------------------------------------------------------- reductions

@kernel
def sum_axis0(x):
    """(N, M) -> (M,): column sums (bias gradients, unbroadcasting leading axes)."""
    n, m = x.shape
    out = np.zeros(m, dtype=x.dtype)
    for i in range(n):
        out += x[i]
    return out


@kernel
def sum_axis1(x):
    """(N, M) -> (N,): row sums."""
    n, m = x.shape
    out = np.empty(n, dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for i in range(n):
        s = zero
        for j in range(m):
            s += x[i, j]
        out[i] = s
    return out


# ---------------------------------------------------------------------------- softmax family
# Row kernels work on one row at a time in a scratch buffer: ``x - max`` into it, exp in
# place (:func:`exp_row`), then one more pass.  Each loop stays short enough to vectorise.

_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so k·ln2 is exact in float32
_EXP_LO = -87.3  # below this float32 exp underflows; clamped (gives ~1e-38, not 0)
_E1, _E2, _E3 = 1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3  # Cephes expf
_E4, _E5, _E6 = 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1


def exp_row(v, ibuf):
    """v[:] = exp(v) in place on a 1-D array; ``ibuf`` is int32 scratch of the same size.

    For use inside kernels.  float64 is exact; float32 uses a vectorisable polynomial with
    relative error < 1e-7 on [-87, 88] (the kernels only call it on x - max <= 0).
    """
    for j in range(v.size):
        v[j] = np.exp(v[j])


@overload(exp_row, inline="always", jit_options={"fastmath": set(FASTMATH)})
def _exp_row_impl(v, ibuf):
    if v.dtype != numba.float32:
        def exact(v, ibuf):
            for j in range(v.size):
                v[j] = np.exp(v[j])
        return exact

    def fast(v, ibuf):
        # exp(x) = 2^k · exp(r), k = round(x / ln 2), |r| <= ln2 / 2: a polynomial for exp(r)
        # and 2^k built from its exponent bits — all vectorisable (libm's expf is not).
        for j in range(v.size):
            x = max(v[j], np.float32(_EXP_LO))
            k = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))
            r = x - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)
            p = np.float32(_E1)
            p = p * r + np.float32(_E2)
            p = p * r + np.float32(_E3)
            p = p * r + np.float32(_E4)
            p = p * r + np.float32(_E5)
            p = p * r + np.float32(_E6)
            v[j] = p * r * r + r + np.float32(1)
            ibuf[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
        scale = ibuf.view(np.float32)
        for j in range(v.size):
            v[j] *= scale[j]
    return fast


@numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy")
def _row_max(x):
    m = x[0]
    for j in range(1, x.size):
        m = max(m, x[j])
    return m


@numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy")
def _row_logsumexp(xi, buf, ibuf):
    """log Σ_j exp(x_j), shifted by the row max; ``buf``/``ibuf`` are scratch rows."""
    m = _row_max(xi)
    for j in range(xi.size):
        buf[j] = xi[j] - m
    exp_row(buf, ibuf)
    return m + np.log(buf.sum())


@kernel
def log_softmax_rows(x):
    """(N, V) -> (N, V): x - logsumexp(x) per row, shifted by the row max for stability."""
    n, v = x.shape
    out = np.empty_like(x)
    buf = np.empty(v, dtype=x.dtype)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        xi, oi = x[i], out[i]
        lse = _row_logsumexp(xi, buf, ibuf)
        for j in range(v):
            oi[j] = xi[j] - lse
    return out


@kernel
def softmax_rows(x):
    """(N, V) -> (N, V): exp(x - max) / Σ exp(x - max) per row."""
    n, v = x.shape
    out = np.empty_like(x)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        xi, oi = x[i], out[i]
        m = _row_max(xi)
        for j in range(v):
            oi[j] = xi[j] - m
        exp_row(oi, ibuf)
        r = 1 / oi.sum()
        for j in range(v):
            oi[j] *= r
    return out


@kernel
def softmax_backward_rows(g, y):
    """VJP of softmax from its output y: y * (g - Σ g·y) per row."""
    n, v = g.shape
    out = np.empty_like(g)
    zero = np.zeros(1, dtype=g.dtype)[0]
    for i in range(n):
        s = zero
        for j in range(v):
            s += g[i, j] * y[i, j]
        for j in range(v):
            out[i, j] = y[i, j] * (g[i, j] - s)
    return out


@kernel
def log_softmax_backward_rows(g, y):
    """VJP of log-softmax from its output y: g - exp(y) * Σ g per row."""
    n, v = g.shape
    out = np.empty_like(g)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        gi, oi = g[i], out[i]
        s = gi.sum()
        oi[:] = y[i]
        exp_row(oi, ibuf)
        for j in range(v):
            oi[j] = gi[j] - oi[j] * s
    return out


@kernel
def cross_entropy_rows(x, t, w):
    """Per-row softmax cross-entropy with integer targets.

    x: (N, V) logits, t: (N,) int targets, w: (N,) row weights (0 masks a row).
    Returns (loss (N,), lse (N,)) with loss_i = w_i (logsumexp(x_i) - x_i[t_i]);
    lse is saved for the backward pass.
    """
    n, v = x.shape
    loss = np.empty(n, dtype=x.dtype)
    lse = np.empty(n, dtype=x.dtype)
    buf = np.empty(v, dtype=x.dtype)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        xi = x[i]
        lse[i] = _row_logsumexp(xi, buf, ibuf)
        loss[i] = w[i] * (lse[i] - xi[t[i]]) if w[i] != 0 else 0
    return loss, lse


@kernel
def cross_entropy_backward_rows(g, x, t, w, lse):
    """VJP of :func:`cross_entropy_rows` w.r.t. x: g_i w_i (softmax(x_i) - onehot(t_i))."""
    n, v = x.shape
    out = np.empty_like(x)
    ibuf = np.empty(v, dtype=np.int32)
    for i in range(n):
        c = g[i] * w[i]
        oi = out[i]
        if c == 0:
            oi[:] = 0
            continue
        xi, li = x[i], lse[i]
        for j in range(v):
            oi[j] = xi[j] - li
        exp_row(oi, ibuf)
        for j in range(v):
            oi[j] *= c
        oi[t[i]] -= c
    return out


# ---------------------------------------------------------------------------- gather / scatter

@kernel
def gather_rows(w, idx):
    """(N, D), (K,) ints -> (K, D): out[k] = w[idx[k]] (an embedding lookup)."""
    k, d = idx.size, w.shape[1]
    out = np.empty((k, d), dtype=w.dtype)
    for i in range(k):
        r = idx[i]
        for j in range(d):  # an explicit loop: a row-slice assignment ran at 0.4x NumPy
            out[i, j] = w[r, j]
    return out


@kernel
def scatter_add_rows(out, idx, g):
    """out[idx[k]] += g[k] for every k, in place; repeated indices accumulate."""
    for i in range(idx.size):
        out[idx[i]] += g[i]
    return out
