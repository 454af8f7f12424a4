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


# ---------------------------------------------------------------------------- recurrent cells
# The pointwise part of a recurrent step, fused: one pass instead of ~15 kernel calls.
# Each is verified in the tests against the cell written with composed primitives.

# NOTE: each inner loop touches at most ~5 arrays.  LLVM vectorises a loop only after
# runtime checks that its arrays do not overlap, and gives up beyond a handful of them:
# one fused loop over all 15 row slices of an LSTM step ran 90x slower (45 ns/element,
# scalar divisions) than these short loops over L1-resident rows.

@kernel
def lstm_forward(z, c_prev, p):
    """LSTM gate math for one step.

    z: (B, 4H) pre-activations in the order [c~, Γu, Γf, Γo]; c_prev: (B, H);
    p: (3, H) peephole weights [p_u, p_f, p_o] (zeros for a plain LSTM).
        c~ = tanh(z_c)          Γu = σ(z_u + p_u*c<t-1>)     Γf = σ(z_f + p_f*c<t-1>)
        c<t> = Γu*c~ + Γf*c<t-1>     Γo = σ(z_o + p_o*c<t>)     a<t> = Γo*tanh(c<t>)
    Returns a (B, H), c (B, H) and acts (B, 5H) = [c~, Γu, Γf, Γo, tanh(c)] for the VJP.
    """
    B, H = c_prev.shape
    a = np.empty((B, H), dtype=z.dtype)
    c = np.empty((B, H), dtype=z.dtype)
    acts = np.empty((B, 5 * H), dtype=z.dtype)
    pu, pf, po = p[0], p[1], p[2]
    for b in range(B):
        zc, zu, zf, zo = z[b, :H], z[b, H:2 * H], z[b, 2 * H:3 * H], z[b, 3 * H:]
        cp, ab, cb = c_prev[b], a[b], c[b]
        s_c, s_u, s_f = acts[b, :H], acts[b, H:2 * H], acts[b, 2 * H:3 * H]
        s_o, s_t = acts[b, 3 * H:4 * H], acts[b, 4 * H:]
        for j in range(H):
            s_c[j] = tanh(zc[j])
        for j in range(H):
            s_u[j] = sigmoid(zu[j] + pu[j] * cp[j])
        for j in range(H):
            s_f[j] = sigmoid(zf[j] + pf[j] * cp[j])
        for j in range(H):
            cb[j] = s_u[j] * s_c[j] + s_f[j] * cp[j]
        for j in range(H):
            s_o[j] = sigmoid(zo[j] + po[j] * cb[j])
        for j in range(H):
            s_t[j] = tanh(cb[j])
        for j in range(H):
            ab[j] = s_o[j] * s_t[j]
    return a, c, acts


@kernel
def lstm_backward(ga, gc, acts, c_prev, c, p):
    """VJP of :func:`lstm_forward`: (dz (B, 4H), dc_prev (B, H), dp (3, H)).

    ga, gc: gradients w.r.t. a<t> and c<t> (zeros where none flowed).
    """
    B, H = c_prev.shape
    dz = np.empty((B, 4 * H), dtype=ga.dtype)
    dcp = np.empty((B, H), dtype=ga.dtype)
    dp = np.zeros((3, H), dtype=ga.dtype)
    dc = np.empty(H, dtype=ga.dtype)
    pu, pf, po = p[0], p[1], p[2]
    dpu, dpf, dpo = dp[0], dp[1], dp[2]
    for b in range(B):
        s_c, s_u, s_f = acts[b, :H], acts[b, H:2 * H], acts[b, 2 * H:3 * H]
        s_o, s_t = acts[b, 3 * H:4 * H], acts[b, 4 * H:]
        dzc, dzu, dzf, dzo = dz[b, :H], dz[b, H:2 * H], dz[b, 2 * H:3 * H], dz[b, 3 * H:]
        gab, gcb, cp, cb, dcpb = ga[b], gc[b], c_prev[b], c[b], dcp[b]
        for j in range(H):  # through a = Γo * tanh(c)
            dzo[j] = gab[j] * s_t[j] * s_o[j] * (1 - s_o[j])
        for j in range(H):
            dc[j] = gcb[j] + gab[j] * s_o[j] * (1 - s_t[j] * s_t[j]) + dzo[j] * po[j]
        for j in range(H):  # through c = Γu * c~ + Γf * c<t-1>
            dzc[j] = dc[j] * s_u[j] * (1 - s_c[j] * s_c[j])
        for j in range(H):
            dzu[j] = dc[j] * s_c[j] * s_u[j] * (1 - s_u[j])
        for j in range(H):
            dzf[j] = dc[j] * cp[j] * s_f[j] * (1 - s_f[j])
        for j in range(H):
            dcpb[j] = dc[j] * s_f[j] + dzu[j] * pu[j] + dzf[j] * pf[j]
        for j in range(H):
            dpu[j] += dzu[j] * cp[j]
        for j in range(H):
            dpf[j] += dzf[j] * cp[j]
        for j in range(H):
            dpo[j] += dzo[j] * cb[j]
    return dz, dcp, dp


@numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy")
def _gru_blend(c, u, c_tilde, c_prev):
    """c<t> = Γu * c~ + (1 - Γu) * c<t-1>, written into the row ``c``."""
    for j in range(c.size):
        c[j] = u[j] * c_tilde[j] + (1 - u[j]) * c_prev[j]


@kernel
def gru_update_forward(zc, u, c_prev):
    """c<t> = Γu * tanh(z_c) + (1 - Γu) * c<t-1>, all (B, H).  Returns (c, c~)."""
    B, H = c_prev.shape
    c = np.empty((B, H), dtype=zc.dtype)
    ct = np.empty((B, H), dtype=zc.dtype)
    for b in range(B):
        zb, ub, cp, cb, tb = zc[b], u[b], c_prev[b], c[b], ct[b]
        for j in range(H):
            tb[j] = tanh(zb[j])
        _gru_blend(cb, ub, tb, cp)
    return c, ct


@kernel
def gru_update_backward(gc, ct, u, c_prev):
    """VJP of :func:`gru_update_forward`: (dz_c, dΓu, dc<t-1>)."""
    B, H = c_prev.shape
    dzc = np.empty((B, H), dtype=gc.dtype)
    du = np.empty((B, H), dtype=gc.dtype)
    dcp = np.empty((B, H), dtype=gc.dtype)
    for b in range(B):
        g, tb, ub, cp = gc[b], ct[b], u[b], c_prev[b]
        dzb, dub, dcb = dzc[b], du[b], dcp[b]
        for j in range(H):
            dzb[j] = g[j] * ub[j] * (1 - tb[j] * tb[j])
        for j in range(H):
            dub[j] = g[j] * (tb[j] - cp[j])
        for j in range(H):
            dcb[j] = g[j] * (1 - ub[j])
    return dzc, du, dcp


@kernel
def gru_gates_forward(zur, c_prev):
    """Γu = σ(z_u), Γr = σ(z_r) from zur (B, 2H) = [z_u, z_r]; returns (Γu, Γr * c<t-1>, Γr)."""
    B, H = c_prev.shape
    u = np.empty((B, H), dtype=zur.dtype)
    rc = np.empty((B, H), dtype=zur.dtype)
    r = np.empty((B, H), dtype=zur.dtype)
    for b in range(B):
        zu, zr, cp = zur[b, :H], zur[b, H:], c_prev[b]
        ub, rcb, rb = u[b], rc[b], r[b]
        for j in range(H):
            ub[j] = sigmoid(zu[j])
        for j in range(H):
            rb[j] = sigmoid(zr[j])
        for j in range(H):
            rcb[j] = rb[j] * cp[j]
    return u, rc, r


@kernel
def gru_gates_backward(gu, grc, u, r, c_prev):
    """VJP of :func:`gru_gates_forward`: (dzur (B, 2H), dc<t-1>)."""
    B, H = c_prev.shape
    dzur = np.empty((B, 2 * H), dtype=gu.dtype)
    dcp = np.empty((B, H), dtype=gu.dtype)
    for b in range(B):
        dzu, dzr = dzur[b, :H], dzur[b, H:]
        gub, grb, ub, rb, cp, dcb = gu[b], grc[b], u[b], r[b], c_prev[b], dcp[b]
        for j in range(H):
            dzu[j] = gub[j] * ub[j] * (1 - ub[j])
        for j in range(H):
            dzr[j] = grb[j] * cp[j] * rb[j] * (1 - rb[j])
        for j in range(H):
            dcb[j] = grb[j] * rb[j]
    return dzur, dcp


@kernel
def gru_reset_after_forward(xp, h, c_prev):
    """The reset-after GRU's gate math (PyTorch/cuDNN/Keras).

    xp: (B, 3H) input terms [x_c, x_u, x_r] (biases included); h: (B, 3H) state terms
    [W_cc c + b_cc, W_uc c, W_rc c]; c_prev: (B, H).
        Γu = σ(x_u + h_u)   Γr = σ(x_r + h_r)   c~ = tanh(x_c + Γr * h_c)
        c<t> = Γu * c~ + (1 - Γu) * c<t-1>
    Returns c (B, H) and acts (B, 3H) = [c~, Γu, Γr].
    """
    B, H = c_prev.shape
    c = np.empty((B, H), dtype=xp.dtype)
    acts = np.empty((B, 3 * H), dtype=xp.dtype)
    for b in range(B):
        xc, xu, xr = xp[b, :H], xp[b, H:2 * H], xp[b, 2 * H:]
        hc, hu, hr = h[b, :H], h[b, H:2 * H], h[b, 2 * H:]
        s_c, s_u, s_r = acts[b, :H], acts[b, H:2 * H], acts[b, 2 * H:]
        cp, cb = c_prev[b], c[b]
        for j in range(H):
            s_u[j] = sigmoid(xu[j] + hu[j])
        for j in range(H):
            s_r[j] = sigmoid(xr[j] + hr[j])
        for j in range(H):
            s_c[j] = tanh(xc[j] + s_r[j] * hc[j])
        _gru_blend(cb, s_u, s_c, cp)
    return c, acts


@kernel
def gru_reset_after_backward(gc, acts, h, c_prev):
    """VJP of :func:`gru_reset_after_forward`: (dxp (B, 3H), dh (B, 3H), dc<t-1>)."""
    B, H = c_prev.shape
    dxp = np.empty((B, 3 * H), dtype=gc.dtype)
    dh = np.empty((B, 3 * H), dtype=gc.dtype)
    dcp = np.empty((B, H), dtype=gc.dtype)
    for b in range(B):
        s_c, s_u, s_r = acts[b, :H], acts[b, H:2 * H], acts[b, 2 * H:]
        hc = h[b, :H]
        dxc, dxu, dxr = dxp[b, :H], dxp[b, H:2 * H], dxp[b, 2 * H:]
        dhc, dhu, dhr = dh[b, :H], dh[b, H:2 * H], dh[b, 2 * H:]
        g, cp, dcb = gc[b], c_prev[b], dcp[b]
        for j in range(H):
            dxc[j] = g[j] * s_u[j] * (1 - s_c[j] * s_c[j])
        for j in range(H):
            dxu[j] = g[j] * (s_c[j] - cp[j]) * s_u[j] * (1 - s_u[j])
        for j in range(H):
            dxr[j] = dxc[j] * hc[j] * s_r[j] * (1 - s_r[j])
        for j in range(H):
            dhc[j] = dxc[j] * s_r[j]
        for j in range(H):
            dhu[j] = dxu[j]
        for j in range(H):
            dhr[j] = dxr[j]
        for j in range(H):
            dcb[j] = g[j] * (1 - s_u[j])
    return dxp, dh, dcp
