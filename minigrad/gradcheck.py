"""The gradient checker: analytic gradients from the tape against central differences.

Only float64 is accepted: in float32 a central difference with a usable step size has
errors far above the tolerances needed to catch a wrong gradient.
"""

import numpy as np

from minigrad.core.autograd import no_grad
from minigrad.core.tensor import Tensor

FULL_JACOBIAN_MAX = 4096  # inputs·outputs up to which the whole Jacobian is compared


class GradcheckError(AssertionError):
    """Raised by :func:`check_grads` when an analytic gradient disagrees with the numeric one."""


def check_grads(f, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, n_projections=3, seed=0):
    """Check d f / d input for every input that requires grad.

    ``f(*inputs)`` must return a Tensor (any shape).  Inputs that do not require grad (such
    as integer targets) are passed through unchanged.  For small problems the full Jacobian
    is compared (one backward per output element, one pair of forwards per input element);
    otherwise ``<u, J v>`` for random ``u`` and ``v``, and on a mismatch the gradient of
    ``<u, f>`` element by element, to name the worst element.  Inputs are perturbed in place
    and restored; their ``.grad`` is left as it was.  Returns True or raises GradcheckError.
    """
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("check_grads: no input requires grad")
    for i in wrt:
        if inputs[i].dtype != np.float64:
            raise TypeError(
                f"check_grads: input {i} has dtype {inputs[i].dtype}; gradient checks need "
                "float64 (finite differences in float32 are too inexact) — use .double()"
            )
    saved = [inputs[i].grad for i in wrt]
    rng = np.random.default_rng(seed)
    try:
        with no_grad():
            out0 = _call(f, inputs)
        n_out = out0.size
        n_in = sum(inputs[i].data.size for i in wrt)
        if n_out * n_in <= FULL_JACOBIAN_MAX:
            _check_full(f, inputs, wrt, out0, eps, atol, rtol)
        else:
            u = rng.standard_normal(out0.shape)
            grads = _vjp(f, inputs, wrt, u)
            for i, g in zip(wrt, grads):
                _check_projected(f, inputs, i, g, u, rng, eps, atol, rtol, n_projections)
    finally:
        for i, g in zip(wrt, saved):
            inputs[i].grad = g
    return True


def _call(f, inputs):
    out = f(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"check_grads: f must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"check_grads: f returned dtype {out.dtype}; expected float64")
    return out.data.copy()


def _vjp(f, inputs, wrt, u):
    for i in wrt:
        inputs[i].grad = None
    out = f(*inputs)
    out.backward(u)
    return [np.zeros_like(inputs[i].data) if inputs[i].grad is None else inputs[i].grad.copy()
            for i in wrt]


def _numeric(f, inputs, x, k, eps, u=None):
    """Central difference of f (or of <u, f>) w.r.t. flat element k of x's data."""
    # NOTE: index x.data itself: reshape(-1) copies a non-contiguous array, and perturbing
    # a copy would silently leave the input unchanged.
    idx = np.unravel_index(k, x.shape)
    orig = x.data[idx]
    try:
        with no_grad():
            x.data[idx] = orig + eps
            hi = _call(f, inputs)
            x.data[idx] = orig - eps
            lo = _call(f, inputs)
    finally:
        x.data[idx] = orig
    d = (hi - lo) / (2 * eps)
    return d if u is None else float(np.sum(d * u))


def _check_full(f, inputs, wrt, out0, eps, atol, rtol):
    n_out = out0.size
    rows = []  # analytic Jacobian rows: one backward per output element
    for j in range(n_out):
        e = np.zeros(n_out)
        e[j] = 1.0
        rows.append(_vjp(f, inputs, wrt, e.reshape(out0.shape)))
    for pos, i in enumerate(wrt):
        x = inputs[i]
        for k in range(x.data.size):
            numeric = _numeric(f, inputs, x, k, eps).reshape(-1)
            analytic = np.array([rows[j][pos].reshape(-1)[k] for j in range(n_out)])
            _compare(i, x, k, analytic, numeric, atol, rtol, "d out[j] / d input")


def _check_projected(f, inputs, i, g, u, rng, eps, atol, rtol, n_projections):
    x = inputs[i]
    for _ in range(n_projections):
        v = rng.standard_normal(x.data.shape)
        orig = x.data.copy()
        try:
            with no_grad():
                x.data[...] = orig + eps * v
                hi = _call(f, inputs)
                x.data[...] = orig - eps * v
                lo = _call(f, inputs)
        finally:
            x.data[...] = orig
        numeric = float(np.sum((hi - lo) * u) / (2 * eps))
        analytic = float(np.sum(g * v))
        if not np.isclose(analytic, numeric, atol=atol * np.sqrt(v.size), rtol=rtol):
            # Locate the culprit: the gradient of <u, f> element by element.
            for k in range(x.data.size):
                num_k = _numeric(f, inputs, x, k, eps, u)
                _compare(i, x, k, np.array([g.reshape(-1)[k]]), np.array([num_k]),
                         atol, rtol, "d <u, out> / d input")
            raise GradcheckError(
                f"check_grads: input {i} (shape {x.shape}): projected gradient "
                f"<grad, v> = {analytic:.8g} but finite differences give {numeric:.8g}"
            )


def _compare(i, x, k, analytic, numeric, atol, rtol, what):
    bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
    if bad.any():
        err = np.abs(analytic - numeric)
        j = int(np.argmax(np.where(bad, err, -1)))
        elem = tuple(int(e) for e in np.unravel_index(k, x.shape))
        out_part = f" w.r.t. output element {j}" if analytic.size > 1 else ""
        raise GradcheckError(
            f"check_grads: input {i} (shape {x.shape}, dtype {x.dtype}) element {elem}"
            f"{out_part}: analytic {what} = {analytic[j]:.10g}, numeric = {numeric[j]:.10g} "
            f"(|diff| {err[j]:.3g}, atol {atol}, rtol {rtol})"
        )
