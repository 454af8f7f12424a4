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

Results are deterministic for a given thread count; across thread counts the weight
gradients differ in round-off only (the partial sums are added in another grouping).
Without a call, minigrad uses one thread of its own and leaves BLAS its default.
"""

import concurrent.futures
import threading

import numpy as np
import threadpoolctl

from minigrad.kernels import blas

MIN_ROWS = 8  # a chunk of a batch has at least this many rows: smaller ones do not pay
MIN_FLOPS = 4e6  # a GEMM is split across threads in parts of at least this much work
_inside = threading.local()
_controller = None
_threads = 1
_pool = None


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
    parallel(lambda r: blas.dot(a[r[0]:r[1]], b, out=out[r[0]:r[1]]), rows)
    return out


def dot_t(a, g):
    """``aᵀ @ g`` (a sum over rows), as partial sums per thread added in a fixed order."""
    if _threads == 1 or getattr(_inside, "flag", False):
        return blas.dot(a.T, g)
    rows = _bounds(a.shape[0], 2.0 * a.shape[0] * a.shape[1] * g.shape[1])
    if len(rows) == 1:
        return blas.dot(a.T, g)
    parts = [None] * len(rows)
    parallel(lambda i: parts.__setitem__(i, blas.dot(a[slice(*rows[i])].T, g[slice(*rows[i])])),
             list(range(len(rows))))
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total
