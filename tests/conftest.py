"""Test configuration: hypothesis profiles (small shapes, no deadline: JIT compile time),
the list of built-in cells the model tests share, and the ``fallbacks`` fixture."""

import os
import sys
import warnings

import pytest
from hypothesis import HealthCheck, settings

import minigrad as mg
from minigrad.compiler import rewrites, whole
from models.cells import GRUCell, LSTMCell, RNNCell

# Every rewrite's result is checked by ir.verify (single assignment, shapes, dtypes).
rewrites.CHECK = True
# No background compiles in tests: a compiled step's Numba loops compile at its second call.
sys.modules["minigrad.compiler.scan"].BACKGROUND = False
# Nor a whole step's (seconds each): tests/test_whole.py compiles them, at a first call.
whole.AFTER = None
# Tests use small matrices: one BLAS thread avoids busy-waiting workers (see threads.py).
mg.set_num_threads(1)
# The test process opts in, as the demos do: full collections skip Numba's ~10⁵ objects.
mg.freeze_gc()

settings.register_profile(
    "default", deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=15)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=200)
_default = "ci" if os.environ.get("CI") else "default"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))

# Every built-in cell and option, shared by the model tests: (id, class, options).
CELL_OPTIONS = [
    ("rnn-tanh", RNNCell, {"nonlinearity": "tanh"}),
    ("rnn-relu", RNNCell, {"nonlinearity": "relu"}),
    ("gru-simplified", GRUCell, {"full": False}),
    ("gru-full", GRUCell, {"full": True}),
    ("gru-reset-after", GRUCell, {"full": True, "reset_after": True}),
    ("lstm", LSTMCell, {}),
    ("lstm-peephole", LSTMCell, {"peephole": True}),
]
IDS = [c[0] for c in CELL_OPTIONS]


@pytest.fixture
def fallbacks():
    """Count the layers that fell back to eager during a test: ``assert fallbacks() == []``.

    A compiled-equals-eager test must, because a layer that fell back equals eager
    trivially.  Inside, ``mg.CompileFallbackWarning`` is recorded instead of raised (as
    ``pyproject.toml`` makes it everywhere else); other warnings go on to pytest."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in caught
                       if issubclass(w.category, mg.CompileFallbackWarning)]
    for w in caught:
        if not issubclass(w.category, mg.CompileFallbackWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
