"""Fast-math numerics: float32 ``tanh``/``sigmoid``/``exp`` as vectorisable formulas (max
abs error ~3e-7), exact in float64 (the dtype of gradient checks); the activations and
their VJPs as NumPy ufuncs."""

import numba
import numpy as np

from minigrad.kernels.jit import elementwise, kernel, scalar_overload

_F32 = numba.float32


# Rational 13/6 approximation of tanh on [-7.9, 7.9] (the coefficients used by Eigen).
# It is a polynomial ratio, so LLVM vectorises it; libm's scalar tanh does not.
_A1, _A3, _A5 = 4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05
_A7, _A9 = 5.12229709037114e-08, -8.60467152213735e-11
_A11, _A13 = 2.00018790482477e-13, -2.76076847742355e-16
_B0, _B2 = 4.89352518554385e-03, 2.26843463243900e-03
_B4, _B6 = 1.18534705686654e-04, 1.19825839466702e-06
_TANH_CLAMP = 7.90531110763549805


@kernel  # (cached: compiled once, not in every process; not inline="always": see the NOTE)
def _tanh32(x):
    # NOTE: a NaN must not reach the clamp: min/max raise the CPU's 'invalid' flag on a
    # quiet NaN, which NumPy reports as a RuntimeWarning on every call (IEEE tanh(NaN) is a
    # quiet NaN).  So NaN lanes are replaced by 0 first (== is a quiet comparison) and put
    # back at the end: selects, which vectorise.  (Numba warns about these selects when a
    # function is inlined into another inlined one; LLVM inlines this one anyway.)
    number = x == x
    xc = min(max(x if number else np.float32(0), np.float32(-_TANH_CLAMP)),
             np.float32(_TANH_CLAMP))
    x2 = xc * xc
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
    return xc * p / q if number else x


def tanh(x):
    """Scalar tanh for use inside kernels: rational for float32, exact for float64."""
    return np.tanh(x)


def sigmoid(x):
    """Scalar σ(x) = 1 / (1 + e^-x) for use inside kernels, without overflow."""
    return 1 / (1 + np.exp(-x))


@scalar_overload(tanh)
def _tanh_impl(x):
    if x == _F32:
        return lambda x: _tanh32(x)
    return lambda x: np.tanh(x)


@scalar_overload(sigmoid)
def _sigmoid_impl(x):
    if x == _F32:
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


@scalar_overload(exp_row, inline="always")  # NOTE: its float32 tail needs it
def _exp_row_impl(v, ibuf):
    if v.dtype != _F32:
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


