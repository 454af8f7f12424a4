"""GEMM from inside Numba: one BLAS, called by symbol name.

Which (``NAME``): Intel's MKL when the ``mkl`` package is installed (``pip install
minigrad[mkl]``; ``make`` installs it) and the CPU is Intel's, else NumPy's own bundled
OpenBLAS; ``MINIGRAD_BLAS=mkl|openblas`` chooses.  On this project's Intel machine MKL ran the
recurrent step's GEMMs (B of 16-64 rows) 1.3-1.6x faster than OpenBLAS (the README's
Speed section).  MKL runs sequential: minigrad splits a batch over its own threads, one
GEMM thread each, and no second thread pool starts (Numba's ``np.dot`` would start SciPy's).
Either gives the same bits whatever the arrays' alignment (``tests/test_kernels.py`` checks
it), so runs are deterministic and loops run as Python and as Numba agree bit for bit.

``gemm32(a, b, c, beta)`` computes ``c = a @ b + beta * c`` in float32 (the training dtype)
for 2-D arrays whose rows are contiguous (column slices of a C-contiguous array are fine:
the leading dimension is the row stride); b may instead have contiguous columns (a
transposed weight, read as it is); ``gemm32p(a, b, p, c, beta)`` the same with
``p = pack32(b, rows)``, b packed once for all of a loop's steps (below).  ``AVAILABLE`` is
False on a NumPy build without the symbol; the recurrence compiler then keeps its loops in
Python, where ``py_gemm`` calls ``numpy.dot``.
"""

import ctypes
import glob
import os

import llvmlite.binding as llvm
import numpy as np
from numba import prange, types

from minigrad.compile_cache import mkl_libraries
from minigrad.kernels.jit import inline, parallel

_ARGS = [ctypes.c_int32] * 3 + [ctypes.c_int64] * 3 + [
    ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
    ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]  # (both take 64-bit sizes)
SYMBOLS = {"openblas": "scipy_cblas_sgemm64_", "mkl": "cblas_sgemm_64"}


def _libraries(name):
    """The shared libraries that may hold ``name``'s sgemm."""
    if name == "mkl":
        return mkl_libraries()
    here = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    return sorted(glob.glob(os.path.join(here, "libscipy_openblas*.so*")))


def _choose():
    name = os.environ.get("MINIGRAD_BLAS", "").lower()
    if name not in ("", "mkl", "openblas"):
        raise ValueError(f"MINIGRAD_BLAS={name!r}: expected 'mkl' or 'openblas'")
    if not name and _libraries("mkl") and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:  # (MKL on other vendors' CPUs is not measured)
            name = "mkl" if "GenuineIntel" in f.read(4096) else ""
    return name or "openblas"


def _load(name):
    """Make the BLAS's symbols visible to Numba; its sgemm for ctypes (None if absent)."""
    for path in _libraries(name):
        try:
            lib = ctypes.CDLL(path)
            llvm.load_library_permanently(path)
        except (OSError, RuntimeError):
            continue
        if llvm.address_of_symbol(SYMBOLS[name]):
            if name == "mkl":
                lib.MKL_Set_Threading_Layer(1)  # sequential (before MKL's first call)
            f = getattr(lib, SYMBOLS[name])
            f.restype, f.argtypes = None, _ARGS
            return f
    return None


# NOTE: Numba calls it by symbol name (ExternalFunction), not through a ctypes pointer: a
# pointer is a "dynamic global" that stops Numba from caching the calling function on disk.
NAME = _choose()
_SGEMM = _load(NAME)
if _SGEMM is None and NAME == "mkl":  # not installed (or too old): say so, use OpenBLAS
    import warnings
    warnings.warn("minigrad: MKL's cblas_sgemm_64 was not found (pip install 'mkl>=2024'): "
                  "using NumPy's OpenBLAS", RuntimeWarning, stacklevel=2)
    NAME, _SGEMM = "openblas", _load("openblas")
AVAILABLE = _SGEMM is not None
_i64, _i32, _p = types.int64, types.int32, types.intp
_sgemm = types.ExternalFunction(SYMBOLS[NAME], types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _p, _i64, _p, _i64, types.float32, _p,
    _i64))


# A blocked transposed copy (OpenBLAS's omatcopy; 3 us for 100 x 100 here, a Numba loop 8)
OMATCOPY = NAME == "openblas" and bool(llvm.address_of_symbol("scipy_cblas_somatcopy64_"))
_somatcopy = types.ExternalFunction("scipy_cblas_somatcopy64_", types.void(
    _i32, _i32, _i64, _i64, types.float32, _p, _i64, _p, _i64))


@inline
def _copy_rows(dst, i, j, src, r0, c0, h, w, add):
    for r in range(h):  # (row views: the inner loops vectorise)
        d, s = dst[i + r, j:j + w], src[r0 + r, c0:c0 + w]
        if add:
            for c in range(w):
                d[c] += s[c]
        else:
            for c in range(w):
                d[c] = s[c]


@inline
def copy_block(dst, i, j, src, r0, c0, h, w, t, add):
    """``dst[i:i+h, j:j+w]`` = (or +=) ``src[r0:, c0:]``'s h x w block, or its w x h block
    transposed if t; float32, dst row-major, src row- or column-major."""
    if t and src.strides[0] == 4:  # (a column-major block transposed: its rows)
        _copy_rows(dst, i, j, src.T, c0, r0, h, w, add)
    elif not t:
        _copy_rows(dst, i, j, src, r0, c0, h, w, add)
    elif OMATCOPY and not add:
        _somatcopy(101, 112, w, h, np.float32(1.0), src[r0:, c0:].ctypes.data,
                   src.strides[0] // 4, dst[i:, j:].ctypes.data, dst.strides[0] // 4)
    else:
        for r in range(h):
            d = dst[i + r, j:j + w]
            for c in range(w):
                d[c] = d[c] + src[r0 + c, c0 + r] if add else src[r0 + c, c0 + r]


@inline
def gemm32(a, b, c, beta):
    """c = a @ b + beta * c, float32; a and c row-major, b row- or column-major (a
    transposed view: BLAS reads it transposed, nothing is copied)."""
    M, K = a.shape
    tb, ldb = (111, b.strides[0] // 4) if b.strides[1] == 4 else (112, b.strides[1] // 4)
    _sgemm(101, 111, tb, M, b.shape[1], K, np.float32(1.0), a.ctypes.data, a.strides[0] // 4,
           b.ctypes.data, ldb, np.float32(beta), c.ctypes.data, c.strides[0] // 4)


@inline
def gemm_tn32(a, g, c):
    """c = aᵀ @ g, float32 (a sum over rows: a weight's gradient; all row-major)."""
    _sgemm(101, 112, 111, a.shape[1], g.shape[1], a.shape[0], np.float32(1.0), a.ctypes.data,
           a.strides[0] // 4, g.ctypes.data, g.strides[0] // 4, np.float32(0.0),
           c.ctypes.data, c.strides[0] // 4)


# A loop's weight packed once (NumPy's OpenBLAS, on its own SkylakeX kernels): cblas_sgemm
# repacks its b at every call, a quarter of a (32 x 256) @ (256 x 1024) step here and half of
# a (32 x 1024) @ (1024 x 256) one (b a transposed view).  gemm32p runs OpenBLAS's own copy
# and micro-kernel on blocks of k as its driver does (448 long; the last two balanced), so
# the bits are cblas_sgemm's: except for small products (at most 100^3 multiply-adds, or one
# row: OpenBLAS's other kernels), which keep calling it, as does a multi-threaded BLAS.
_core = llvm.address_of_symbol("scipy_openblas_get_corename64_")
CORE = ctypes.CFUNCTYPE(ctypes.c_char_p)(_core)() if _core else None  # (OpenBLAS's kernels)
PACKED = NAME == "openblas" and CORE == b"SkylakeX" and bool(
    llvm.address_of_symbol("sgemm_kernel_SKYLAKEX"))
Q = 448  # (OpenBLAS's SGEMM_DEFAULT_Q for SkylakeX)
_itcopy, _incopy, _oncopy = [types.ExternalFunction(f"sgemm_{k}copy_SKYLAKEX", types.intc(
    _i64, _i64, _p, _i64, _p)) for k in ("it", "in", "on")]
_kernel = types.ExternalFunction("sgemm_kernel_SKYLAKEX", types.intc(
    _i64, _i64, _i64, types.float32, _p, _p, _p, _i64))
_blas_threads = types.ExternalFunction("scipy_openblas_get_num_threads64_", types.intc())


@inline
def _k_block(rest):
    """The length of OpenBLAS's next block of k, ``rest`` left."""
    return Q if rest >= 2 * Q else (rest // 2 + 15) // 16 * 16 if rest > Q else rest


@inline
def pack32(b, rows):
    """``b`` (K x N, float32, row-major or a transposed view of one) packed for every
    ``gemm32p(a, b, p, c, beta)`` with ``rows`` rows of a; empty where gemm32 is used."""
    K, N = b.shape
    p = np.empty(K * N + 64 if PACKED and rows > 1 and rows * K * N > 1000000 and
                 _blas_threads() == 1 else 0, np.float32)
    k0 = 0
    while p.size and k0 < K:
        kc = _k_block(K - k0)
        if b.strides[1] == 4:
            _itcopy(kc, N, b[k0:].ctypes.data, b.strides[0] // 4, p[k0 * N:].ctypes.data)
        else:
            _incopy(kc, N, b[k0:].ctypes.data, b.strides[1] // 4, p[k0 * N:].ctypes.data)
        k0 += kc
    return p


@inline
def gemm32p(a, b, p, c, beta):
    """:func:`gemm32` with ``p = pack32(b, rows)``: its bits, b read packed (beta 0, 1)."""
    if p.size == 0 or beta != 0.0 and beta != 1.0:
        return gemm32(a, b, c, beta)
    (M, K), N, k0 = a.shape, b.shape[1], 0
    for i in range(M if beta == 0.0 else 0):
        c[i] = 0.0
    s = np.empty(min(K, Q) * M + 64, np.float32)
    while k0 < K:
        kc = _k_block(K - k0)
        _oncopy(kc, M, a[:, k0:].ctypes.data, a.strides[0] // 4, s.ctypes.data)
        _kernel(N, M, kc, np.float32(1.0), p[k0 * N:].ctypes.data, s.ctypes.data,
                c.ctypes.data, c.strides[0] // 4)
        k0 += kc


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


def py_pack(b, rows):
    """:func:`pack32` for loops run as Python: nothing (their gemm is cblas_sgemm's)."""


def py_gemm_p(a, b, p, c, beta):
    py_gemm(a, b, c, beta)


BIG = 1 << 20  # multiply-adds; below, MKL's larger cost per call outweighs its speed


def dot(a, b, out=None):
    """``a @ b`` for 2-D arrays (into ``out``, C-contiguous, if given): float32 products of
    at least ``BIG`` multiply-adds of C- or F-contiguous operands through MKL when it is the
    loops' BLAS (the head, its gradients, the weight gradients after a loop: 15-20 % faster
    than NumPy's OpenBLAS here); everything else through ``numpy.dot``."""
    if NAME != "mkl" or not a.dtype == b.dtype == np.float32 or \
            a.shape[0] * a.shape[1] * b.shape[1] < BIG or \
            not all(x.flags.c_contiguous or x.flags.f_contiguous for x in (a, b)):
        return np.dot(a, b, out=out)
    out = np.empty((a.shape[0], b.shape[1]), np.float32) if out is None else out
    (ta, lda), (tb, ldb) = [(111, x.shape[1]) if x.flags.c_contiguous else (112, x.shape[0])
                            for x in (a, b)]
    _SGEMM(101, ta, tb, a.shape[0], b.shape[1], a.shape[1], 1.0, a.ctypes.data, lda,
           b.ctypes.data, ldb, 0.0, out.ctypes.data, out.strides[0] // 4)
    return out


@parallel
def dot_blocks(a, b, out, edges):
    """Blocks of rows of ``a @ b`` on Numba's threads, ``out[e0:e1] = a[e0:e1] @ b`` (e =
    ``edges``), each :func:`gemm32`, the very call :func:`dot` makes for it (the same bits;
    with OpenBLAS, ``numpy.dot`` makes it: ``tests/test_compiler.py`` checks).
    float32; a and out C-contiguous, b C- or F-contiguous."""
    for c in prange(edges.size - 1):
        gemm32(a[edges[c]:edges[c + 1]], b, out[edges[c]:edges[c + 1]], 0.0)


@parallel
def dot_t_blocks(a, b, parts, edges):
    """The partial sums of ``aᵀ b`` over blocks of rows on Numba's threads, ``parts[c] =
    a[e0:e1].T @ b[e0:e1]``, each the very call :func:`dot` makes for it.  float32, all
    C-contiguous."""
    for c in prange(edges.size - 1):
        e0, e1 = edges[c], edges[c + 1]
        gemm_tn32(a[e0:e1], b[e0:e1], parts[c])
