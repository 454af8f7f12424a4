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
from minigrad.kernels.numerics import exp_row, tanh

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
    return x * p / q


def erf(x):
    """Scalar erf for use inside kernels: rational for float32, exact for float64."""
    return math.erf(x)


@scalar_overload(erf)
def _erf_impl(x):
    if x == numba.float32:
        return lambda x: _erf32(x)
    return lambda x: math.erf(x)


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
    """VJP of :func:`gelu`: g·(Φ(x) + x·φ(x)), φ the standard normal density (from
    :func:`exp_row`, 256 elements at a time); or the derivative of the tanh form."""
    k = np.array([0.5, 1.0, _SQRT1_2, _SQRT_2_OVER_PI, _GELU_C, _INV_SQRT_2PI, 3.0],
                 dtype=x.dtype)
    half, one, s12, s2pi, c, inv, three = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
    out = np.empty_like(x)
    if tanh_form:
        for i in range(x.size):
            v = x[i]
            t = tanh(s2pi * (v + c * v * v * v))
            d = half * (one + t) + half * v * (one - t * t) * s2pi * (one + three * c * v * v)
            out[i] = g[i] * d
        return out
    buf = np.empty(256, dtype=x.dtype)
    ibuf = np.empty(256, dtype=np.int32)
    for start in range(0, x.size, 256):
        n = min(256, x.size - start)
        xs, b = x[start:start + n], buf[:n]
        for j in range(n):
            b[j] = -half * xs[j] * xs[j]
        exp_row(b, ibuf[:n])
        for j in range(n):
            v = xs[j]
            out[start + j] = g[start + j] * (half * (one + erf(v * s12)) + v * b[j] * inv)
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
