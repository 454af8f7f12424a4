"""GEMM from inside Numba: NumPy's own bundled OpenBLAS, called by symbol name.

One BLAS and one thread pool for the whole process (Numba's ``np.dot`` would go to SciPy's
OpenBLAS, a second pool: see ``shared/perf-notes.md``).  ``gemm32(a, b, c, beta)`` computes
``c = a @ b + beta * c`` in float32 (the training dtype) for 2-D arrays whose rows are
contiguous (column slices of a C-contiguous array are fine: the leading dimension is the
row stride); b may instead have contiguous columns (a transposed weight, read as it is).
``AVAILABLE`` is False on a NumPy build without the symbol; the
recurrence compiler then keeps its loops in Python, where ``py_gemm`` calls ``numpy.dot``.
"""

import ctypes
import glob
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types

from minigrad.kernels.jit import inline


def _load_openblas():
    """Make NumPy's bundled OpenBLAS symbols visible to Numba; its sgemm for ctypes (None
    if there is none)."""
    here = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(here, "libscipy_openblas*.so*"))):
        try:
            llvm.load_library_permanently(path)
        except RuntimeError:
            continue
        if llvm.address_of_symbol("scipy_cblas_sgemm64_"):
            f = ctypes.CDLL(path).scipy_cblas_sgemm64_
            f.restype, f.argtypes = None, [ctypes.c_int32] * 3 + [ctypes.c_int64] * 3 + [
                ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]
            return f
    return None


# NOTE: Numba calls it by symbol name (ExternalFunction), not through a ctypes pointer: a
# pointer is a "dynamic global" that stops Numba from caching the calling function on disk.
_SGEMM = _load_openblas()
AVAILABLE = _SGEMM is not None
_i64, _i32, _p = types.int64, types.int32, types.intp
_sgemm = types.ExternalFunction("scipy_cblas_sgemm64_", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _p, _i64, _p, _i64, types.float32, _p,
    _i64))


@inline
def gemm32(a, b, c, beta):
    """c = a @ b + beta * c, float32; a and c row-major, b row- or column-major (a
    transposed view: BLAS reads it transposed, nothing is copied)."""
    M, K = a.shape
    tb, ldb = (111, b.strides[0] // 4) if b.strides[1] == 4 else (112, b.strides[1] // 4)
    _sgemm(101, 111, tb, M, b.shape[1], K, np.float32(1.0), a.ctypes.data, a.strides[0] // 4,
           b.ctypes.data, ldb, np.float32(beta), c.ctypes.data, c.strides[0] // 4)


def py_gemm(a, b, c, beta):
    """The same as :func:`gemm32`, from Python, for any dtype.  float32 makes the very same
    BLAS call (through ctypes), so that loops run as Python and as Numba agree bit for bit."""
    if a.dtype == np.float32 and _SGEMM is not None:
        M, K = a.shape
        tb, ldb = (111, b.strides[0] // 4) if b.strides[1] == 4 else (112, b.strides[1] // 4)
        _SGEMM(101, 111, tb, M, b.shape[1], K, 1.0, a.ctypes.data, a.strides[0] // 4,
               b.ctypes.data, ldb, beta, c.ctypes.data, c.strides[0] // 4)
    elif beta == 0 and c.flags.c_contiguous:
        np.dot(a, b, out=c)
    elif beta == 0:
        c[...] = np.dot(a, b)
    else:
        c += np.dot(a, b)
