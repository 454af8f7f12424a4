"""Optimizers, gradient clipping and learning-rate schedules.

An optimizer holds a list of parameters and updates their arrays **in place** from their
``.grad`` (parameters whose grad is None are skipped), with exactly PyTorch's update rules —
so a model trained here and one trained with ``torch.optim`` from the same start follow the
same path up to float rounding.  ``state_dict``/``load_state_dict`` make training resumable
bit for bit (see :mod:`minigrad.serialization`).

    opt = optim.Adam(model.parameters(), lr=1e-3)
    for x, y in batches:
        opt.zero_grad()
        loss = mg.cross_entropy(model(x), y)
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

NOTE: every update runs in the parameter's dtype: hyper-parameters are kept as Python
floats, which NumPy treats as "weak" scalars (a float32 array stays float32).
"""

import math
import numbers

import numpy as np

from minigrad import kernels
from minigrad.core.autograd import no_grad
from minigrad.core.tensor import Tensor, _zero_grads, effect

__all__ = [
    "SGD", "Adagrad", "Adam", "AdamW", "LambdaLR", "Optimizer", "RMSprop", "StepLR",
    "clip_grad_norm_", "clip_grad_value_", "grad_norm",
]


def _number(owner, name, v, lo=0.0, hi=math.inf, hi_open=False):
    """``v`` as a Python float, checked to lie in [lo, hi] (or [lo, hi))."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):  # lr=inf would turn every weight into inf/NaN on the first step
        raise ValueError(f"{owner}: {name} must be a finite number, got {v}")
    if not (lo <= v <= hi) or (hi_open and v == hi):
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{owner}: {name} must be in {interval}, got {v}")
    return v


def _param_list(owner, params):
    """Materialise ``params`` once (it may be a generator) and check every item."""
    if isinstance(params, Tensor):
        raise TypeError(f"{owner}: params must be an iterable of Parameters, got a single "
                        f"{type(params).__name__}; pass [tensor] or model.parameters()")
    if isinstance(params, dict) or hasattr(params, "named_parameters"):
        raise TypeError(f"{owner}: params must be an iterable of Parameters, got "
                        f"{type(params).__name__}; pass model.parameters()")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{owner}: params must be an iterable of Parameters, got "
                        f"{type(params).__name__}") from None
    return params


def _check_params(owner, params):
    """The checks an optimizer makes on its parameter list (see :class:`Optimizer`)."""
    from minigrad.nn import Parameter  # nn imports nothing from here; keep layers one-way

    params = _param_list(owner, params)
    if not params:
        raise ValueError(f"{owner}: got an empty parameter list (did the model register its "
                         "Parameters? was a parameters() generator already used up?)")
    first = {}
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: params[{i}] is a {type(p).__name__}, expected a "
                            "Parameter (or a Tensor with requires_grad=True)")
        if not p.is_leaf:
            raise ValueError(f"{owner}: params[{i}] (shape {p.shape}) is not a leaf tensor: it "
                             "was computed from others, so updating it in place would be "
                             "lost; optimize the leaves it came from")
        if not p.requires_grad and not isinstance(p, Parameter):
            raise ValueError(f"{owner}: params[{i}] is a {type(p).__name__} of shape {p.shape} "
                             "with requires_grad=False; it would never get a gradient")
        if id(p) in first:
            raise ValueError(f"{owner}: params[{i}] is the same tensor as params[{first[id(p)]}] "
                             f"(shape {p.shape}); each parameter may appear only once")
        first[id(p)] = i
    return params


class Optimizer:
    """Base class: a parameter list, a learning rate ``lr`` (mutable) and per-parameter state.

    ``params`` is any iterable of Parameters (or leaf Tensors with requires_grad=True).  A
    non-Tensor, a non-leaf, a plain Tensor without requires_grad, a duplicate or an empty
    list is refused with a message naming the position.  A Parameter with
    ``requires_grad=False`` is accepted (it is frozen: it never gets a gradient, so ``step``
    skips it).  Subclasses list their hyper-parameters in ``_hyper`` and their state arrays
    in ``_state_arrays``, extend ``_set_hyper`` (check all, then set) and implement
    ``_update(p, g, state)``.
    """

    _hyper = ("lr",)
    _state_arrays = ()
    _needs_step = False  # True: the per-parameter state also holds a "step" count

    def __init__(self, params, lr, **hyper):
        self.params = _check_params(type(self).__name__, params)
        self._set_hyper(lr=lr, **hyper)
        self.state = [{} for _ in self.params]

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        effect(f"{type(self).__name__}.lr = ...")  # (mg.compile would replay a traced rate)
        self._lr = _number(type(self).__name__, "lr", value)

    def zero_grad(self):
        """Set every parameter's ``.grad`` to None (the next backward starts afresh)."""
        effect(f"{type(self).__name__}.zero_grad()", _zero_grads, self.params)

    def step(self):
        """One update of every parameter that has a gradient, in place on ``p.data`` (inside
        an ``mg.compile``d function: replayed after its equations at every call)."""
        effect(f"{type(self).__name__}.step()", self._step)

    def _step(self):
        with no_grad():
            for p, state in zip(self.params, self.state):
                if p.grad is not None:
                    self._update(p, p.grad, state)

    def _update(self, p, g, state):
        raise NotImplementedError

    # ------------------------------------------------------------ state
    def hyperparams(self):
        return {name: getattr(self, name) for name in self._hyper}

    def state_dict(self):
        """``{"type", "hyperparams", "param_shapes", "state"}``; ``state`` maps a parameter's
        index to copies of its state arrays and its ``"step"`` count (if it has one yet)."""
        return {
            "type": type(self).__name__,
            "hyperparams": self.hyperparams(),
            "param_shapes": [list(p.shape) for p in self.params],
            "state": {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                          for k, v in st.items()}
                      for i, st in enumerate(self.state) if st},
        }

    def load_state_dict(self, sd):
        """Restore hyper-parameters and state; everything is checked before anything changes."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(sd, dict) or not {"type", "hyperparams", "param_shapes",
                                            "state"} <= sd.keys():
            raise ValueError(f"{owner}: expected a dict from Optimizer.state_dict() with keys "
                             "'type', 'hyperparams', 'param_shapes' and 'state'")
        if sd["type"] != type(self).__name__:
            raise ValueError(f"{owner}: the state was saved by a {sd['type']} optimizer")
        shapes = [tuple(s) for s in sd["param_shapes"]]
        mine = [p.shape for p in self.params]
        if len(shapes) != len(mine):
            raise ValueError(f"{owner}: the state is for {len(shapes)} parameters, this "
                             f"optimizer has {len(mine)}")
        bad = [f"params[{i}]: saved {s}, here {m}"
               for i, (s, m) in enumerate(zip(shapes, mine)) if s != m]
        if bad:
            raise ValueError(f"{owner}: parameter shapes differ: " + "; ".join(bad))
        hyper = dict(sd["hyperparams"])
        if set(hyper) != set(self._hyper):
            raise ValueError(f"{owner}: expected hyper-parameters {sorted(self._hyper)}, got "
                             f"{sorted(hyper)}")
        new_state = [{} for _ in self.params]
        expected = set(self._state_arrays) | ({"step"} if self._needs_step else set())
        for key, st in sd["state"].items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise ValueError(f"{owner}: state for parameter {key}, but there are only "
                                 f"{len(self.params)}")
            if set(st) != expected:
                raise ValueError(f"{owner}: state of params[{i}] has keys {sorted(st)}, "
                                 f"expected {sorted(expected)}")
            p = self.params[i]
            for k in self._state_arrays:
                arr = np.asarray(st[k])
                if arr.shape != p.shape:
                    raise ValueError(f"{owner}: state {k!r} of params[{i}] has shape "
                                     f"{arr.shape}, the parameter {p.shape}")
                new_state[i][k] = arr.astype(p.dtype, copy=True)
            if self._needs_step:
                new_state[i]["step"] = int(st["step"])
        self._set_hyper(**hyper)  # validates all of them before setting any
        self.state = new_state

    def _set_hyper(self, lr):
        """Check every hyper-parameter, then set them all (subclasses extend this)."""
        self.lr = lr

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum and L2 weight decay (PyTorch):

        g = grad + weight_decay·p
        buf = g (first step), else momentum·buf + (1 − dampening)·g
        g = g + momentum·buf (nesterov) or buf (momentum > 0)
        p -= lr·g
    """

    _hyper = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        super().__init__(params, lr, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=weight_decay)

    def _set_hyper(self, lr, momentum, dampening, nesterov, weight_decay):
        _number("SGD", "lr", lr)
        momentum = _number("SGD", "momentum", momentum)
        dampening = _number("SGD", "dampening", dampening, hi=1.0)
        weight_decay = _number("SGD", "weight_decay", weight_decay)
        nesterov = bool(nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def _update(self, p, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adagrad(Optimizer):
    """Adagrad (PyTorch's form): ``sum += g²;  p -= lr·g / (√sum + eps)``.

    min-char-rnn writes ``p -= lr·g / √(mem + 1e-8)``; the two differ by at most about
    1e-8 relative to the step once ``mem`` is past its first tiny values — the same update
    for every practical purpose.  ``initial_accumulator_value`` starts ``sum``.
    """

    _hyper = ("lr", "eps", "initial_accumulator_value", "weight_decay")
    _state_arrays = ("sum",)
    _needs_step = True

    def __init__(self, params, lr=1e-2, eps=1e-8, initial_accumulator_value=0.0,
                 weight_decay=0.0):
        super().__init__(params, lr, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value)

    def _set_hyper(self, lr, eps, initial_accumulator_value, weight_decay):
        checked = [_number("Adagrad", k, v) for k, v in (
            ("lr", lr), ("eps", eps), ("initial_accumulator_value", initial_accumulator_value),
            ("weight_decay", weight_decay))]
        self.lr, self.eps, self.initial_accumulator_value, self.weight_decay = checked

    def _update(self, p, g, state):
        if not state:
            state["step"] = 0
            state["sum"] = np.full_like(p.data, self.initial_accumulator_value)
        state["step"] += 1
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        acc = state["sum"]
        acc += g * g
        p.data -= self.lr * g / (np.sqrt(acc) + self.eps)


class RMSprop(Optimizer):
    """RMSprop (PyTorch, not centred):

        sq = alpha·sq + (1 − alpha)·g²
        buf = momentum·buf + g / (√sq + eps);  p -= lr·buf      (momentum > 0)
        p -= lr·g / (√sq + eps)                                  (otherwise)
    """

    _hyper = ("lr", "alpha", "eps", "momentum", "weight_decay")
    _state_arrays = ("square_avg", "momentum_buffer")
    _needs_step = True

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr, alpha=alpha, eps=eps, momentum=momentum,
                         weight_decay=weight_decay)

    def _set_hyper(self, lr, alpha, eps, momentum, weight_decay):
        checked = [_number("RMSprop", "lr", lr), _number("RMSprop", "alpha", alpha, hi=1.0)]
        checked += [_number("RMSprop", k, v) for k, v in (
            ("eps", eps), ("momentum", momentum), ("weight_decay", weight_decay))]
        self.lr, self.alpha, self.eps, self.momentum, self.weight_decay = checked

    def _update(self, p, g, state):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            state["momentum_buffer"] = np.zeros_like(p.data)
        state["step"] += 1
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        sq = state["square_avg"]
        sq *= self.alpha
        sq += (1.0 - self.alpha) * (g * g)
        scaled = g / (np.sqrt(sq) + self.eps)
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += scaled
            scaled = buf
        p.data -= self.lr * scaled


class Adam(Optimizer):
    """Adam (PyTorch); ``weight_decay`` is L2, added to the gradient:

        g = grad + weight_decay·p
        m = β1·m + (1 − β1)·g;   v = β2·v + (1 − β2)·g²
        p -= lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + eps)
    """

    _hyper = ("lr", "betas", "eps", "weight_decay")
    _state_arrays = ("exp_avg", "exp_avg_sq")
    _needs_step = True
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _set_hyper(self, lr, betas, eps, weight_decay):
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(_number(owner, f"betas[{i}]", b, hi=1.0, hi_open=True)
                      for i, b in enumerate(betas))
        checked = [_number(owner, k, v) for k, v in
                   (("lr", lr), ("eps", eps), ("weight_decay", weight_decay))]
        self.lr, self.eps, self.weight_decay = checked
        self.betas = betas

    def _update(self, p, g, state):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        b1, b2 = self.betas
        if self.weight_decay:
            if self._decoupled:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        m, v, step_size = state["exp_avg"], state["exp_avg_sq"], self.lr / (1.0 - b1 ** t)
        if _fused(p.data, g, m, v):  # one pass (a Numba kernel), not 13 array operations
            f = p.data.dtype.type
            kernels.adam_update(*(a.reshape(-1) for a in (p.data, g, m, v)), *map(f, (
                b1, 1.0 - b1, b2, 1.0 - b2, step_size, math.sqrt(1.0 - b2 ** t), self.eps)))
            return
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = np.sqrt(v)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += self.eps
        p.data -= step_size * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch): ``p *= 1 − lr·weight_decay`` before the
    Adam step, and the decay never enters ``m`` or ``v``."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# ------------------------------------------------------------------ gradient clipping

def _grads(owner, params):
    if isinstance(params, Tensor):
        params = [params]
    params = _param_list(owner, params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: params[{i}] is a {type(p).__name__}, expected a Tensor")
    return [p.grad for p in params if p.grad is not None]


def grad_norm(params, norm_type=2.0):
    """The global norm of all gradients at once (as if concatenated into one vector), of
    order ``norm_type`` = 2, 1 or ``inf``, as a Python float; 0.0 with no gradients.
    Parameters whose grad is None are skipped.  NaN or inf gradients give a non-finite norm.
    """
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) \
            or float(norm_type) not in (1.0, 2.0, math.inf):
        raise ValueError(f"grad_norm: norm_type must be 1, 2 or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    grads = _grads("grad_norm", params)
    # NOTE: accumulate in float64 — a float32 sum of squares over millions of entries loses
    # digits (and overflows past 3e38 where the float64 total is still finite).  Not np.dot:
    # a float64 BLAS dot of a few thousand elements stalls on thread start-up (~80 µs).
    if not grads:
        return 0.0
    if norm_type == 2.0:
        return math.sqrt(sum(kernels.sum_squares(g.reshape(-1)) if _fused(g) else
                             float(np.square(g.astype(np.float64)).sum()) for g in grads))
    if norm_type == 1.0:
        return sum(float(np.abs(g).sum(dtype=np.float64)) for g in grads)
    return max(float(np.abs(g).max()) if g.size else 0.0 for g in grads)


def _fused(*arrays):
    """The fused kernels take these: C-contiguous float32 or float64 arrays of one dtype."""
    return all(a.flags.c_contiguous and a.dtype == arrays[0].dtype for a in arrays) and \
        arrays[0].dtype in (np.float32, np.float64)


def clip_grad_norm_(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    The norm is :func:`grad_norm`'s (``norm_type`` 2, 1 or ``inf``).  If the total exceeds
    ``max_norm`` (a finite positive number) every gradient is multiplied in place by
    ``max_norm / (total + 1e-6)``.  Parameters whose grad is None are skipped; with no
    gradients at all the norm is 0.  Returns the norm *before* clipping, as a Python float.

    A non-finite total (a NaN or inf gradient) raises RuntimeError if ``error_if_nonfinite``,
    else it is returned and the gradients are left exactly as they were (scaling could only
    spread the NaN); check the returned value to skip such a step.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) \
            or not 0 < float(max_norm) < math.inf:
        raise ValueError(f"clip_grad_norm_: max_norm must be a finite positive number, got "
                         f"{max_norm!r}")
    params = [params] if isinstance(params, Tensor) else _param_list("clip_grad_norm_", params)
    return effect("clip_grad_norm_()", _clip_norm, params, max_norm, norm_type,
                  error_if_nonfinite)


def _clip_norm(params, max_norm, norm_type, error_if_nonfinite):
    total = grad_norm(params, norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {float(norm_type)} "
                               f"of the gradients is {total}; gradients were left unchanged")
        return total
    if total > max_norm:
        coef = float(max_norm) / (total + 1e-6)
        for g in _grads("clip_grad_norm_", params):
            g *= coef
    return total


def clip_grad_value_(params, clip_value):
    """Clip every gradient element to [−clip_value, clip_value] in place (min-char-rnn's
    ``np.clip(dparam, -5, 5, out=dparam)``).  Parameters whose grad is None are skipped."""
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) \
            or not 0 < float(clip_value) < math.inf:
        raise ValueError(f"clip_grad_value_: clip_value must be a finite positive number, got "
                         f"{clip_value!r}")
    params = [params] if isinstance(params, Tensor) else _param_list("clip_grad_value_", params)
    effect("clip_grad_value_()", _clip_value, params, float(clip_value))


def _clip_value(params, c):
    for g in _grads("clip_grad_value_", params):
        np.clip(g, -c, c, out=g)


# ------------------------------------------------------------------ learning-rate schedules

class _LRScheduler:
    """Sets ``optimizer.lr`` from the epoch count ``last_epoch`` (0 at construction;
    each ``step()`` adds one) and the learning rate the optimizer had at construction."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._set()

    def _lr_at(self, epoch):
        raise NotImplementedError

    def _set(self):
        self.optimizer.lr = self._last_lr = self._lr_at(self.last_epoch)

    def step(self):
        effect(f"{type(self).__name__}.step()", self._advance)

    def _advance(self):
        self.last_epoch += 1
        self._set()

    def get_last_lr(self):
        """The learning rate set by the latest ``step`` (or the constructor), a float."""
        return self._last_lr

    def state_dict(self):
        return {"type": type(self).__name__, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch, **self._extra_state()}

    def _extra_state(self):
        return {}

    def load_state_dict(self, sd):
        """Restore the epoch count and base rate, and set the optimizer's lr accordingly."""
        owner = f"{type(self).__name__}.load_state_dict"
        expected = {"type", "base_lr", "last_epoch", *self._extra_state()}
        if not isinstance(sd, dict) or set(sd) != expected:
            raise ValueError(f"{owner}: expected a dict with keys {sorted(expected)}")
        if sd["type"] != type(self).__name__:
            raise ValueError(f"{owner}: the state was saved by a {sd['type']}")
        self.base_lr = _number(owner, "base_lr", sd["base_lr"])
        self.last_epoch = int(sd["last_epoch"])
        for k in self._extra_state():
            setattr(self, k, sd[k])
        self._set()

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


class StepLR(_LRScheduler):
    """``lr = base_lr · gamma ** (epoch // step_size)``: decay by ``gamma`` every
    ``step_size`` calls of ``step()``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) \
                or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _number("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)

    def _extra_state(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class LambdaLR(_LRScheduler):
    """``lr = base_lr · lr_lambda(epoch)``.  The function itself is not saved by
    ``state_dict`` — recreate the scheduler with it, then load the epoch count."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be callable, got "
                            f"{type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def _lr_at(self, epoch):
        return self.base_lr * float(self.lr_lambda(epoch))
