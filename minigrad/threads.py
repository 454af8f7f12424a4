"""How many threads minigrad works with, and how it splits work across them.

``mg.set_num_threads(n)`` gives minigrad n threads.  It then keeps NumPy's BLAS at one
thread and splits its own work: a compiled recurrence runs the rows of its batch in
``n`` chunks at once (rows never interact, so no step needs a barrier; each chunk has its
own weight-gradient buffers, summed in a fixed order).  One BLAS thread per chunk means
never more busy threads than ``n``: BLAS's own worker threads busy-wait between calls and,
alternating with other threads, stalled them for milliseconds (``shared/perf-notes.md``).

Results are deterministic for a given thread count; across thread counts the weight
gradients differ in round-off only (the chunks' sums are added in another grouping).
Without a call, minigrad uses one thread of its own and leaves BLAS its default.
"""

import concurrent.futures

import threadpoolctl

MIN_ROWS = 8  # a chunk of a batch has at least this many rows: smaller ones do not pay
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
    n = max(1, min(_threads, B // MIN_ROWS)) if allowed else 1
    bounds = [B * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def parallel(fn, items):
    """``fn(item)`` for every item, at once on minigrad's threads (the first in this
    thread); returns when all are done, re-raising the first error."""
    global _pool
    if len(items) == 1:
        fn(items[0])
        return
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(_threads - 1, "minigrad")
    futures = [_pool.submit(fn, item) for item in items[1:]]
    try:
        fn(items[0])
    finally:
        for f in futures:
            f.result()
