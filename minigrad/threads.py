"""How many threads minigrad works with, and how it splits work across them.

``mg.set_num_threads(n)`` gives minigrad n threads.  It then keeps NumPy's BLAS at one
thread and splits its own work: a compiled recurrence runs the rows of its batch in
``n`` chunks at once (rows never interact, so no step needs a barrier; each chunk works
in its own rows of the shared (T, B, ...) arrays and keeps its own in-loop sums, added in a
fixed order), and a large GEMM — the loops' weight gradients after the loop among them —
runs in row blocks (:func:`dot`, :func:`dot_t`, each block through
:func:`minigrad.kernels.blas.dot`, partial sums added in a fixed order).  One
BLAS thread per chunk means never more busy threads than ``n``: BLAS's own worker threads
busy-wait between calls and, alternating with other threads, stalled them for milliseconds
(``shared/perf-notes.md``).

Compiled work is started on Numba's threads (:func:`native`: one ``prange`` over the chunks,
~2-20 µs to start here); Python work (the loops before Numba has compiled them, a
bidirectional layer's two directions) on a pool of Python threads (~120 µs a round trip).

Results are deterministic for a given thread count; across thread counts the weight
gradients differ in round-off only (the partial sums are added in another grouping).
Without a call, minigrad uses one thread of its own and leaves BLAS its default.
"""

import concurrent.futures
import os
import threading

import numba
import numpy as np
import threadpoolctl

from minigrad.kernels import blas
from minigrad.kernels.jit import parallel as _parallel_kernel

MIN_ROWS = 8  # a chunk of a batch has at least this many rows: smaller ones do not pay
MIN_FLOPS = 4e6  # a GEMM is split across threads in parts of at least this much work
_inside = threading.local()
_controller = None
_threads = 1
_pool = None
_native = None


def _blas():
    global _controller
    if _controller is None:
        _controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _controller


def set_num_threads(n):
    """Let minigrad use ``n`` threads (BLAS: one each; see the module docstring)."""
    global _threads, _pool
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    _blas().limit(limits=1 if n > 1 else n)
    if _pool is not None and n != _threads:
        _pool.shutdown(wait=True)
        _pool = None
    _threads = n


def get_num_threads():
    """The number of threads minigrad uses (``set_num_threads``; 1 by default)."""
    return _threads


def batch_chunks(B, allowed=True):
    """The rows of a batch of B as ``[(b0, b1), ...]``: one chunk per thread, each of at
    least ``MIN_ROWS`` rows (one chunk when ``allowed`` is False)."""
    allowed = allowed and not getattr(_inside, "flag", False)  # (a thread of its own already)
    n = max(1, min(_threads, B // MIN_ROWS)) if allowed else 1
    bounds = [B * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def parallel(fn, items):
    """``fn(item)`` for every item, at once on minigrad's threads (the first in this
    thread); returns when all are done, re-raising the first error.  Inside such a call
    (a chunk's own GEMMs) the items run one after the other."""
    global _pool
    if len(items) == 1 or getattr(_inside, "flag", False):
        for item in items:
            fn(item)
        return
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(_threads - 1, "minigrad")
    futures = [_pool.submit(_flagged, fn, item) for item in items[1:]]
    try:
        _flagged(fn, items[0])
    finally:
        for f in futures:
            f.result()


def native():
    """Do minigrad's threads start compiled work as Numba's (OpenMP's or TBB's pool)?  Not
    when Numba has only its 'workqueue' layer, whose every start costs ~175 µs: compiled
    work then runs on the Python pool, as Python work does; nor inside
    :func:`on_python_pool`."""
    global _native
    if getattr(_inside, "python", False):
        return False
    if _native is None:
        try:
            _probe(np.zeros(2))
            _native = numba.threading_layer() != "workqueue" and os.getpid()
        except Exception:  # noqa: BLE001 - no threading layer could be loaded
            _native = False
    return _native == os.getpid()  # NOTE: GNU OpenMP kills a forked child that starts it


def on_python_pool(fn, threads=None):
    """``fn`` with all its parallel work on the Python pool, none on Numba's threads (when
    minigrad has ``threads`` threads, if given): for a program whose Python threads run two
    recurrences side by side.  Numba's (OpenMP's) workers spin for a while after each call
    and took the cores those threads needed (a tagger at B32 H64 T100 with a head GEMM split
    on them: 18 against 9.7 ms a step)."""
    def run(*args):
        if threads not in (None, _threads):
            return fn(*args)
        was, _inside.python = getattr(_inside, "python", False), True
        try:
            return fn(*args)
        finally:
            _inside.python = was
    return run


@_parallel_kernel
def _probe(x):
    for i in numba.prange(x.size):
        x[i] += 1.0


def run(kernel, *args):
    """``kernel(*args)``, a :func:`~minigrad.kernels.parallel` kernel, on ``n`` of Numba's
    threads (the count is per calling thread in Numba)."""
    numba.set_num_threads(min(_threads, numba.config.NUMBA_NUM_THREADS))
    return kernel(*args)


def edges(rows):
    """[(b0, b1), ...] as the int64 array of their edges, a native kernel's argument."""
    return np.array([rows[0][0], *(b1 for _, b1 in rows)], np.int64)


def _flagged(fn, item):
    _inside.flag = True
    try:
        fn(item)
    finally:
        _inside.flag = False


def _bounds(n, work):
    """Row ranges of n rows for a product of ``work`` FLOPs: one per thread when it pays."""
    k = max(1, min(_threads, n // MIN_ROWS, int(work // MIN_FLOPS)))
    edges = [n * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


def dot(a, b):
    """``a @ b`` for 2-D float arrays, its rows split across minigrad's threads."""
    if _threads == 1 or getattr(_inside, "flag", False):  # (most calls: no split to plan)
        return blas.dot(a, b)
    rows = _bounds(a.shape[0], 2.0 * a.shape[0] * a.shape[1] * b.shape[1])
    if len(rows) == 1:
        return blas.dot(a, b)
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    if _native_blocks(a, b, rows, a.flags.c_contiguous and (b.flags.c_contiguous or
                                                            b.flags.f_contiguous)):
        run(blas.dot_blocks, a, b, out, edges(rows))
    else:
        parallel(lambda r: blas.dot(a[r[0]:r[1]], b, out=out[r[0]:r[1]]), rows)
    return out


def dot_t(a, g):
    """``aᵀ @ g`` (a sum over rows), as partial sums per thread added in a fixed order."""
    if _threads == 1 or getattr(_inside, "flag", False):
        return blas.dot(a.T, g)
    rows = _bounds(a.shape[0], 2.0 * a.shape[0] * a.shape[1] * g.shape[1])
    if len(rows) == 1:
        return blas.dot(a.T, g)
    if _native_blocks(a, g, rows, a.flags.c_contiguous and g.flags.c_contiguous):
        parts = np.empty((len(rows), a.shape[1], g.shape[1]), np.float32)
        run(blas.dot_t_blocks, a, g, parts, edges(rows))
    else:
        parts = [None] * len(rows)
        parallel(lambda i: parts.__setitem__(i, blas.dot(a[slice(*rows[i])].T,
                                                         g[slice(*rows[i])])),
                 list(range(len(rows))))
    total = parts[0] + parts[1]  # (a new array: not a view of the blocks' parts)
    for p in parts[2:]:
        total += p
    return total


def _native_blocks(a, b, rows, layout):
    """Can :func:`blas.dot_blocks` make each block's call :func:`blas.dot` makes (the loops'
    BLAS's float32 GEMM on C- or F-contiguous operands, every block at least ``blas.BIG``)?"""
    n = min(r1 - r0 for r0, r1 in rows) * (a.size // a.shape[0]) * b.shape[1]
    return blas.AVAILABLE and layout and n >= blas.BIG and \
        a.dtype == b.dtype == np.float32 and native()
