"""One random generator for everything random in minigrad (init, dropout, sampling)."""

import numpy as np

_state = {"rng": np.random.default_rng(0)}


def manual_seed(seed):
    """Reseed minigrad's generator: the same seed makes a whole run reproducible."""
    from minigrad.core.tensor import effect  # (the core imports this module)
    effect("manual_seed()")  # mg.compile: the draws are rows, run before a replay could be
    _state["rng"] = np.random.default_rng(seed)
    return _state["rng"]


def get_rng():
    """The current ``numpy.random.Generator``."""
    return _state["rng"]
