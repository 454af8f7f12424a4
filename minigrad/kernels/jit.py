"""The one place Numba's options live: every kernel in this package, and every kernel the
recurrence compiler generates, is compiled through :func:`kernel` (array kernels),
:func:`parallel` (a kernel whose ``prange`` runs on Numba's threads), :func:`inline` (scalar
helpers inlined into them), :func:`scalar_overload` (a Python scalar function given a Numba
body) or :func:`elementwise` (scalar functions as NumPy ufuncs).

Compiled code is kept on disk by :mod:`minigrad.compile_cache` (not by Numba's
``cache=True``, which keys a kernel on its own file only and would go on loading a kernel
whose inlined helper in another file has changed)."""

import contextlib
import dis
import threading

import numba
import numpy as np
from numba.extending import overload
from numba.np.ufunc.dufunc import DUFunc

from minigrad.compile_cache import cached

# NOTE: no 'nnan'/'ninf' (they let LLVM assume NaN/Inf never happen) and no 'afn'
# (approximate libm calls would break float64 gradient checks).
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})


# nogil: compiled recurrences run chunks of a batch on several threads at once
OPTIONS = {"fastmath": set(FASTMATH), "error_model": "numpy", "nogil": True}


def kernel(fn):
    """The decorator every array kernel is compiled with (cached on disk)."""
    return cached(numba.njit(**OPTIONS)(fn))


def parallel(fn):
    """An array kernel whose ``numba.prange`` loop runs on Numba's threads (cached on disk):
    how minigrad's threads run compiled work (:func:`minigrad.threads.native`)."""
    return cached(numba.njit(parallel=True, **OPTIONS)(fn))


def inline(fn):
    """A small helper inlined into the kernels that call it (same options, never cached on
    its own)."""
    return numba.njit(inline="always", fastmath=OPTIONS["fastmath"],
                      error_model=OPTIONS["error_model"])(fn)


def scalar_overload(fn, inline="never"):
    """Give the Python scalar function ``fn`` a Numba implementation (per argument type).
    NOTE: by default not inlined by Numba (that doubled the compile time of a generated
    kernel); LLVM inlines it, and the kernels run as fast."""
    return overload(fn, inline=inline, jit_options={"fastmath": OPTIONS["fastmath"]})


def elementwise(*signatures):
    """Compile a scalar function into a NumPy ufunc (any shape, broadcasting, ``out=``),
    with the same options as :func:`kernel`, on first use: see :class:`Ufunc`."""
    def wrap(fn):
        return Ufunc(fn, signatures)
    return wrap


class Ufunc:
    """A scalar kernel that becomes a NumPy ufunc on its first call.

    ``.ufunc()`` is the accessor for the NumPy ufunc itself (building it once); calling the
    object calls the ufunc.  NOTE: built lazily because Numba caches the compiled element
    functions but rebuilds each ufunc's loop wrapper in every process (~0.1 s per
    signature): building them all at import made ``import minigrad`` take over a second.
    """

    def __init__(self, fn, signatures):
        self.fn, self.signatures, self._ufunc = fn, list(signatures), None
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        # NOTE: each object has its own class so that, once built, a call goes to the ufunc
        # with no Python frame in between: a forwarding __call__ measured +0.1-0.2 µs per
        # call, +6-15 % of a recorded tanh/sigmoid op (benchmarks/bench_engine.py, §2).
        self.__class__ = type(fn.__name__, (Ufunc,), {})

    def ufunc(self):
        if self._ufunc is None:
            # numba.vectorize(signatures, ...), with the disk cache put in before it compiles
            vec = DUFunc(self.fn, targetoptions={"nopython": True,
                                                 "fastmath": OPTIONS["fastmath"]})
            cached(vec._dispatcher, "cache")
            for sig in self.signatures:
                vec.add(sig)
            vec.disable_compile()
            self._ufunc = ufunc = vec.build_ufunc().ufunc
            type(self).__call__ = ufunc  # not a descriptor: called without self
            if any(i.opname == "COMPARE_OP" for i in dis.get_instructions(self.fn)):
                # NOTE: compiled, a comparison with a NaN raises the CPU's 'invalid' flag,
                # which NumPy reports after the loop as a RuntimeWarning (its own comparisons
                # do not): a quiet NaN in must not warn (a relu rule, g * (out > 0)).
                def quiet(*args, **kwargs):
                    with np.errstate(invalid="ignore"):
                        return ufunc(*args, **kwargs)
                type(self).__call__ = staticmethod(quiet)
        return self._ufunc

    def __call__(self, *args, **kwargs):  # the first call only: see __init__
        if getattr(_EXAMPLES, "on", False) and not kwargs:
            try:  # (a cell traced on examples: its Python form, on arrays, is NumPy's)
                return self.fn(*args)
            except Exception:  # (a scalar helper NumPy cannot run: build the ufunc)
                pass
        self.ufunc()
        return type(self).__call__(*args, **kwargs)


_EXAMPLES = threading.local()


@contextlib.contextmanager
def on_examples():
    """In this thread, elementwise kernels whose ufunc is not built yet run as NumPy
    expressions instead of building it (0.1-0.9 s each: a GRU's sigmoid was 0.6 s of its
    first step): while the compiler traces and checks a cell on example inputs, whose
    values only have to be right, not fast."""
    was, _EXAMPLES.on = getattr(_EXAMPLES, "on", False), True
    try:
        yield
    finally:
        _EXAMPLES.on = was  # (nested: the outer one goes on)


