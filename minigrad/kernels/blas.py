"""GEMM from inside Numba: NumPy's own bundled OpenBLAS, called by symbol name.

One BLAS and one thread pool for the whole process (Numba's ``np.dot`` would go to SciPy's
OpenBLAS, a second pool: see ``shared/perf-notes.md``).  ``gemm32(a, b, c, beta)`` computes
``c = a @ b + beta * c`` in float32 (the training dtype) for row-major 2-D arrays whose
rows are contiguous (column slices of a C-contiguous array are fine: the leading dimension
is the row stride).  ``AVAILABLE`` is False on a NumPy build without the symbol; the
recurrence compiler then keeps its loops in Python, where ``py_gemm`` calls ``numpy.dot``.
"""

import glob
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types

from minigrad.kernels.jit import inline


def _load_openblas():
    """Make NumPy's bundled OpenBLAS symbols visible to Numba; True if they are."""
    here = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(here, "libscipy_openblas*.so*"))):
        try:
            llvm.load_library_permanently(path)
        except RuntimeError:
            continue
        if llvm.address_of_symbol("scipy_cblas_sgemm64_"):
            return True
    return False


# NOTE: called by symbol name (ExternalFunction), not through a ctypes pointer: a pointer
# is a "dynamic global" that stops Numba from caching the calling function on disk.
AVAILABLE = _load_openblas()
_i64, _i32, _p = types.int64, types.int32, types.intp
_sgemm = types.ExternalFunction("scipy_cblas_sgemm64_", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _p, _i64, _p, _i64, types.float32, _p,
    _i64))


@inline
def gemm32(a, b, c, beta):
    """c = a @ b + beta * c, float32 (row-major, no transposes)."""
    M, K = a.shape
    _sgemm(101, 111, 111, M, b.shape[1], K, np.float32(1.0), a.ctypes.data, a.strides[0] // 4,
           b.ctypes.data, b.strides[0] // 4, np.float32(beta), c.ctypes.data,
           c.strides[0] // 4)


@inline
def keep_rows(new, old, m):
    """Rows whose mask is 0 keep the old state (a sequence past its end)."""
    for b in range(new.shape[0]):
        if m[b, 0] == 0:
            new[b, :] = old[b, :]


@inline
def split_masked(d, bypass, m):
    """Rows past a sequence's end: their cotangent bypasses the step (into ``bypass``)."""
    for b in range(d.shape[0]):
        if m[b, 0] == 0:
            bypass[b, :] = d[b, :]
            d[b, :] = 0
        else:
            bypass[b, :] = 0


def py_gemm(a, b, c, beta):
    """The same as :func:`gemm32`, from Python (NumPy's BLAS), for any dtype."""
    if beta == 0 and c.flags.c_contiguous:
        np.dot(a, b, out=c)
    elif beta == 0:
        c[...] = np.dot(a, b)
    else:
        c += np.dot(a, b)


def py_keep_rows(new, old, m):
    np.copyto(new, old, where=m == 0)


def py_split_masked(d, bypass, m):
    np.multiply(d, m == 0, out=bypass)
    d *= m
