"""Kernels of the Transformer primitives: GELU (exact and tanh form) and layer normalisation
rows, forward and backward.

As elsewhere, float32 uses vectorisable formulas (a clamped rational ``erf``, the rational
``tanh``, the polynomial ``exp`` of :func:`exp_row`) and float64 the exact functions, so
gradient checks stay exact.  Callers pass C-contiguous 1-D (GELU) or 2-D (rows) arrays.
"""

import math

import numba
import numpy as np

from minigrad.kernels.jit import inline, kernel, scalar_overload
from minigrad.kernels.numerics import _TANH_CLAMP, exp_row, tanh

_SQRT1_2, _SQRT_2_OVER_PI, _INV_SQRT_2PI = 0.7071067811865476, 0.7978845608028654, \
    0.3989422804014327
_GELU_C = 0.044715  # the tanh form: tanh(√(2/π)(x + 0.044715 x³))

# erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4] (Eigen's float32 coefficients; outside, erf is ±1 in
# float32).  Max abs error 4.2e-7 against math.erf (tests/test_kernels.py).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)


@inline
def _erf32(x):
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = np.float32(_ERF_P[0])
    for c in _ERF_P[1:]:
        p = p * x2 + np.float32(c)
    q = np.float32(_ERF_Q[0])
    for c in _ERF_Q[1:]:
        q = q * x2 + np.float32(c)
    return min(max(x * p / q, np.float32(-1.0)), np.float32(1.0))


def erf(x):
    """Scalar erf for use inside kernels: rational for float32, exact for float64."""
    return math.erf(x)


@scalar_overload(erf)
def _erf_impl(x):
    if x == numba.float32:
        return lambda x: _erf32(x)
    return lambda x: math.erf(x)


def sech2(u, t):
    """1 - tanh²(u) from t = tanh(u), for use inside kernels.  NOTE: in float32 the rational
    tanh saturates at 1 - 6e-8 beyond |u| = 7.9, where 1 - t² would stay ~1e-7 instead of
    falling to 0 (times GELU's chain factor ~x³, an error of 1e-5 at x = -6): 0 there."""
    return 1 - t * t


@scalar_overload(sech2)
def _sech2_impl(u, t):
    if t == numba.float32:
        return lambda u, t: np.float32(1) - t * t if abs(u) < np.float32(_TANH_CLAMP) \
            else np.float32(0)
    return lambda u, t: 1 - t * t


@kernel
def gelu(x, tanh_form):
    """GELU(x) = x·Φ(x) = ½x(1 + erf(x/√2)) on a 1-D array; ``tanh_form``: PyTorch's
    ``approximate='tanh'``, ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    k = np.array([0.5, 1.0, _SQRT1_2, _SQRT_2_OVER_PI, _GELU_C], dtype=x.dtype)
    half, one, s12, s2pi, c = k[0], k[1], k[2], k[3], k[4]
    out = np.empty_like(x)
    if tanh_form:
        for i in range(x.size):
            v = x[i]
            out[i] = half * v * (one + tanh(s2pi * (v + c * v * v * v)))
    else:
        for i in range(x.size):
            out[i] = half * x[i] * (one + erf(x[i] * s12))
    return out


@kernel
def gelu_backward(g, x, tanh_form):
    """VJP of :func:`gelu`: g·(Φ(x) + x·φ(x)), φ the standard normal density (through
    :func:`exp_row`); or the derivative of the tanh form."""
    k = np.array([0.5, 1.0, _SQRT1_2, _SQRT_2_OVER_PI, _GELU_C, _INV_SQRT_2PI, 3.0],
                 dtype=x.dtype)
    half, one, s12, s2pi, c, inv, three = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    out = np.empty_like(x)
    if tanh_form:
        for i in range(x.size):
            v = x[i]
            u = s2pi * (v + c * v * v * v)
            t = tanh(u)
            d = half * (one + t) + half * v * sech2(u, t) * s2pi * (one + three * c * v * v)
            out[i] = g[i] * d
        return out
    for i in range(x.size):
        out[i] = -half * x[i] * x[i]
    exp_row(out, np.empty(x.size, dtype=np.int32))
    for i in range(x.size):
        v = x[i]
        out[i] = g[i] * (half * (one + erf(v * s12)) + v * out[i] * inv)
    return out


@kernel
def layer_norm_rows(x, w, b, eps):
    """(N, D) -> y (N, D), mean (N,), rstd (N,): y = (x - μ)·rstd·w + b per row, with
    rstd = 1/√(σ² + eps) and σ² the biased variance (as PyTorch)."""
    n, d = x.shape
    y = np.empty_like(x)
    mean = np.empty(n, dtype=x.dtype)
    rstd = np.empty(n, dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for i in range(n):
        xi, yi = x[i], y[i]
        m = xi.sum() / d
        s = zero
        for j in range(d):  # two passes: Σ(x - μ)² does not cancel like Σx² - dμ²
            s += (xi[j] - m) * (xi[j] - m)
        r = 1 / np.sqrt(s / d + eps)
        for j in range(d):
            yi[j] = (xi[j] - m) * r * w[j] + b[j]
        mean[i], rstd[i] = m, r
    return y, mean, rstd


@kernel
def layer_norm_backward_rows(g, x, w, mean, rstd):
    """VJP of :func:`layer_norm_rows`: with x̂ = (x - μ)·rstd and ĝ = g·w,
    dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)); dw = Σ_rows g·x̂, db = Σ_rows g."""
    n, d = x.shape
    dx = np.empty_like(x)
    dw = np.zeros(d, dtype=x.dtype)
    db = np.zeros(d, dtype=x.dtype)
    xh = np.empty(d, dtype=x.dtype)
    gh = np.empty(d, dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    for i in range(n):
        m, r, gi = mean[i], rstd[i], g[i]
        s1, s2 = zero, zero
        for j in range(d):
            xh[j] = (x[i, j] - m) * r
            gh[j] = gi[j] * w[j]
            s1 += gh[j]
            s2 += gh[j] * xh[j]
        for j in range(d):
            dw[j] += gi[j] * xh[j]
            db[j] += gi[j]
        s1, s2 = s1 / d, s2 / d
        for j in range(d):
            dx[i, j] = r * (gh[j] - s1 - xh[j] * s2)
    return dx, dw, db


@kernel
def attention_softmax(s, mask, drop, scale):
    """Attention weights from the scores s = q kᵀ (B, H, L, S), in place: P = softmax(s·scale
    + mask) per row, ``mask`` (B or 1, H or 1, L or 1, S) additive with a finite entry in
    every row; masked keys (-inf) get exactly 0.  Returns (A, P) with A = P·drop (``drop``
    like P; None: A is P)."""
    B, H, L, S = s.shape
    a = s if drop is None else np.empty_like(s)
    ibuf = np.empty(S, dtype=np.int32)
    zero, low = np.zeros(1, dtype=s.dtype)[0], s.dtype.type(-80.0)
    for b in range(B):
        for h in range(H):
            mk = mask[min(b, mask.shape[0] - 1), min(h, mask.shape[1] - 1)]
            for i in range(L):
                mi, pi = mk[min(i, mk.shape[0] - 1)], s[b, h, i]
                top = -np.inf
                for j in range(S):
                    pi[j] = pi[j] * scale + mi[j]
                    top = max(top, pi[j])
                for j in range(S):  # NOTE: clamped so that no exp is denormal (~100x slower)
                    pi[j] = max(pi[j] - top, low)
                exp_row(pi, ibuf)
                total = zero
                for j in range(S):
                    if mi[j] == -np.inf:
                        pi[j] = zero
                    total += pi[j]
                r = 1 / total
                for j in range(S):
                    pi[j] *= r
                if drop is not None:
                    for j in range(S):
                        a[b, h, i, j] = pi[j] * drop[b, h, i, j]
    return a, s


@kernel
def attention_softmax_backward(da, p, drop, scale):
    """VJP of :func:`attention_softmax` w.r.t. the scores, in place on dA (B, H, L, S):
    with dP = dA·drop (dA when ``drop`` is None), dS = P·(dP - Σ_j P dP)·scale."""
    B, H, L, S = p.shape
    zero = np.zeros(1, dtype=p.dtype)[0]
    for b in range(B):
        for h in range(H):
            for i in range(L):
                d, pi = da[b, h, i], p[b, h, i]
                if drop is not None:
                    for j in range(S):
                        d[j] *= drop[b, h, i, j]
                dot = zero
                for j in range(S):
                    dot += pi[j] * d[j]
                for j in range(S):
                    d[j] = pi[j] * (d[j] - dot) * scale
    return da
