"""How many threads BLAS may use for minigrad's matrix products.

minigrad's GEMMs run in NumPy's OpenBLAS, whose worker threads busy-wait between calls: on
a 2-core machine that is also running other work, a spinning worker can starve the main
thread and make small recurrent GEMMs many times slower.  ``mg.set_num_threads(1)`` avoids
that (the tests and the demos use it); the default leaves OpenBLAS's own choice (all
cores), which is fastest for large matrices on an idle machine.
"""

import threadpoolctl

_controller = None


def _blas():
    global _controller
    if _controller is None:
        _controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _controller


def set_num_threads(n):
    """Let every BLAS library loaded in the process (NumPy's, SciPy's) use ``n`` threads."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    _blas().limit(limits=n)


def get_num_threads():
    """The largest thread count among the loaded BLAS libraries."""
    return max((lib.num_threads for lib in _blas().lib_controllers), default=1)
