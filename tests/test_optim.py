"""Tests for minigrad.optim: update rules, state, clipping, schedules and bad input.

Each optimizer is checked twice: a first (and second) step worked out by hand on
f(p) = p² from p = 1 (so g = 2p), and a few steps on a small quadratic against a NumPy
re-implementation written here from the published formulas (Adam in its paper's
bias-corrected m̂/v̂ form, which is algebraically equal to PyTorch's).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from minigrad import nn, optim

# ------------------------------------------------------------------ helpers


def scalar_steps(make_opt, n):
    """Minimise f(p) = p² from p = 1 with ``n`` steps; returns p after each step."""
    p = nn.Parameter(np.array([1.0]))
    opt = make_opt([p])
    out = []
    for _ in range(n):
        opt.zero_grad()
        (p * p).sum().backward()
        opt.step()
        out.append(p.data[0])
    return out


C = [np.array([1.0, 2.0, 0.5]), np.array([[3.0, 0.1], [1.0, 2.0]])]
T = [np.array([0.5, -1.0, 2.0]), np.array([[0.0, 1.0], [-2.0, 0.3]])]
P0 = [np.array([1.0, 0.0, -1.0]), np.array([[0.2, -0.4], [1.5, 0.0]])]


def quad_grads(ps):
    """Gradient of sum(c * (p - t)²) written by hand: 2c(p - t)."""
    return [2 * c * (p - t) for p, c, t in zip(ps, C, T)]


def run_minigrad(make_opt, n=3):
    params = [nn.Parameter(p.copy()) for p in P0]
    opt = make_opt(params)
    for _ in range(n):
        opt.zero_grad()
        loss = sum(((p - mg.tensor(t)) ** 2 * mg.tensor(c)).sum() for p, c, t in zip(params, C, T))
        loss.backward()
        opt.step()
    return [p.data for p in params]


def run_reference(update, n=3):
    ps = [p.copy() for p in P0]
    states = [{} for _ in ps]
    for t in range(1, n + 1):
        for i, g in enumerate(quad_grads(ps)):
            ps[i] = update(ps[i], g, states[i], t)
    return ps


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ hand-computed first steps

def test_sgd_by_hand():
    assert scalar_steps(lambda ps: optim.SGD(ps, lr=0.1), 2) == pytest.approx([0.8, 0.64])
    # momentum 0.9: buf = 2 -> p = 0.8; g = 1.6, buf = 1.8 + 1.6 = 3.4 -> p = 0.46
    assert scalar_steps(lambda ps: optim.SGD(ps, 0.1, momentum=0.9), 2) == pytest.approx(
        [0.8, 0.46])
    # dampening 0.5 (not applied on the first step): buf = 0.9·2 + 0.5·1.6 = 2.6 -> 0.54
    assert scalar_steps(lambda ps: optim.SGD(ps, 0.1, momentum=0.9, dampening=0.5), 2) == \
        pytest.approx([0.8, 0.54])
    # nesterov: g + 0.9·buf = 2 + 1.8 = 3.8 -> p = 0.62
    assert scalar_steps(lambda ps: optim.SGD(ps, 0.1, momentum=0.9, nesterov=True), 1) == \
        pytest.approx([0.62])
    # L2 weight decay 0.5: g = 2 + 0.5 -> p = 0.75
    assert scalar_steps(lambda ps: optim.SGD(ps, 0.1, weight_decay=0.5), 1) == \
        pytest.approx([0.75])


def test_adagrad_by_hand():
    # sum = 4 -> p = 1 - 0.1·2/(2 + 1e-8); then g = 1.8, sum = 7.24
    p1 = 1 - 0.1 * 2 / (2 + 1e-8)
    p2 = p1 - 0.1 * (2 * p1) / (math.sqrt(4 + (2 * p1) ** 2) + 1e-8)
    assert scalar_steps(lambda ps: optim.Adagrad(ps, lr=0.1), 2) == pytest.approx(
        [p1, p2], rel=1e-14)
    assert p1 == pytest.approx(0.9) and p2 == pytest.approx(0.9 - 0.18 / math.sqrt(7.24))
    # initial_accumulator_value 5: sum = 9, p = 1 - 0.1·2/3
    assert scalar_steps(lambda ps: optim.Adagrad(ps, 0.1, initial_accumulator_value=5), 1) == \
        pytest.approx([1 - 0.2 / 3])


def test_rmsprop_by_hand():
    # sq = 0.01·4 = 0.04 -> p = 1 - 0.01·2/0.2 = 0.9
    assert scalar_steps(lambda ps: optim.RMSprop(ps, lr=0.01), 1) == pytest.approx([0.9])
    # momentum 0.5: buf = 10 -> p = 0.9; g = 1.8, sq = 0.0396 + 0.0324 -> buf = 5 + 1.8/√0.072
    buf2 = 5 + 1.8 / (math.sqrt(0.99 * 0.04 + 0.01 * 1.8 ** 2) + 1e-8)
    assert scalar_steps(lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5), 2) == \
        pytest.approx([0.9, 0.9 - 0.01 * buf2])


def test_adam_and_adamw_by_hand():
    # the first Adam step moves by lr·g/(|g| + eps) ≈ lr whatever the gradient's size
    assert scalar_steps(lambda ps: optim.Adam(ps, lr=0.1), 1) == pytest.approx([0.9])
    # AdamW: p·(1 - lr·wd) first, then the same step: 1·(1 - 0.1·0.5) - 0.1 = 0.85
    assert scalar_steps(lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.5), 1) == \
        pytest.approx([0.85])
    # Adam's L2 decay enters the gradient, so the first step is still ≈ lr
    assert scalar_steps(lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.5), 1) == \
        pytest.approx([0.9])


# ------------------------------------------------------------------ multi-step references

def ref_sgd(lr, momentum=0.0, dampening=0.0, nesterov=False, wd=0.0):
    def update(p, g, s, t):
        g = g + wd * p
        if momentum:
            s["b"] = g.copy() if t == 1 else momentum * s["b"] + (1 - dampening) * g
            g = g + momentum * s["b"] if nesterov else s["b"]
        return p - lr * g
    return update


def ref_adagrad(lr, eps=1e-8, init=0.0, wd=0.0):
    def update(p, g, s, t):
        g = g + wd * p
        s["G"] = s.get("G", np.full_like(p, init)) + g ** 2
        return p - lr * g / (np.sqrt(s["G"]) + eps)
    return update


def ref_rmsprop(lr, alpha=0.99, eps=1e-8, momentum=0.0, wd=0.0):
    def update(p, g, s, t):
        g = g + wd * p
        s["v"] = alpha * s.get("v", 0 * p) + (1 - alpha) * g ** 2
        step = g / (np.sqrt(s["v"]) + eps)
        if momentum:
            s["b"] = momentum * s.get("b", 0 * p) + step
            step = s["b"]
        return p - lr * step
    return update


def ref_adam(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    def update(p, g, s, t):
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        s["m"] = b1 * s.get("m", 0 * p) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0 * p) + (1 - b2) * g ** 2
        m_hat, v_hat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return update


CASES = {
    "sgd": (lambda ps: optim.SGD(ps, 0.05), ref_sgd(0.05)),
    "sgd-momentum-wd": (lambda ps: optim.SGD(ps, 0.05, momentum=0.8, dampening=0.1,
                                             weight_decay=0.2),
                        ref_sgd(0.05, 0.8, 0.1, wd=0.2)),
    "sgd-nesterov": (lambda ps: optim.SGD(ps, 0.05, momentum=0.7, nesterov=True),
                     ref_sgd(0.05, 0.7, nesterov=True)),
    "adagrad": (lambda ps: optim.Adagrad(ps, 0.3, initial_accumulator_value=0.1,
                                         weight_decay=0.05),
                ref_adagrad(0.3, init=0.1, wd=0.05)),
    "rmsprop": (lambda ps: optim.RMSprop(ps, 0.01, alpha=0.9, eps=1e-6, weight_decay=0.1),
                ref_rmsprop(0.01, 0.9, 1e-6, wd=0.1)),
    "rmsprop-momentum": (lambda ps: optim.RMSprop(ps, 0.01, momentum=0.9),
                         ref_rmsprop(0.01, momentum=0.9)),
    "adam": (lambda ps: optim.Adam(ps, 0.1, betas=(0.8, 0.9), weight_decay=0.1),
             ref_adam(0.1, 0.8, 0.9, wd=0.1)),
    "adamw": (lambda ps: optim.AdamW(ps, 0.1, weight_decay=0.3),
              ref_adam(0.1, wd=0.3, decoupled=True)),
}


@pytest.mark.parametrize("name", CASES)
def test_three_steps_match_reference(name):
    make_opt, update = CASES[name]
    assert_same(run_minigrad(make_opt, 3), run_reference(update, 3))


def test_adagrad_matches_min_char_rnn_form():
    """min-char-rnn: mem += g²; p -= lr·g/√(mem + 1e-8): the same update to ~1e-8."""
    ours = run_minigrad(lambda ps: optim.Adagrad(ps, 0.1), 5)

    def mcr(p, g, s, t):
        s["mem"] = s.get("mem", 0 * p) + g * g
        return p - 0.1 * g / np.sqrt(s["mem"] + 1e-8)

    for a, b in zip(ours, run_reference(mcr, 5)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------ mechanics

@pytest.mark.parametrize("name", CASES)
def test_updates_in_place_float32_and_grad_untouched(name):
    make_opt = CASES[name][0]
    p = nn.Parameter(np.array([1.0, -2.0, 3.0], dtype=np.float32))
    frozen = nn.Parameter(np.ones(2, dtype=np.float32))  # never gets a gradient
    arr = p.data
    opt = make_opt([p, frozen])
    (p * p).sum().backward()
    g = p.grad.copy()
    opt.step()
    assert p.data is arr and p.dtype == np.float32
    assert not np.array_equal(p.data, [1.0, -2.0, 3.0])
    np.testing.assert_array_equal(p.grad, g)  # weight decay must not write into .grad
    np.testing.assert_array_equal(frozen.data, [1, 1])
    assert opt.state[1] == {}
    for v in opt.state[0].values():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32
    opt.zero_grad()
    assert p.grad is None


def test_lr_is_mutable_and_checked():
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1)
    opt.lr = 0.25
    (p * p).sum().backward()
    opt.step()
    assert p.data[0] == pytest.approx(0.5)
    assert type(opt.lr) is float
    with pytest.raises(ValueError, match="lr must be in"):
        opt.lr = -1
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        optim.SGD([p], 0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0.0, 1.0\)"):
        optim.Adam([p], betas=(0.9, 1.0))


# ------------------------------------------------------------------ bad parameter lists

def test_optimizer_given_a_non_parameter():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match=r"params\[1\] is a str, expected a Parameter"):
        optim.SGD([p, "weight"], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] is a ndarray"):
        optim.Adam([np.zeros(3)])


def test_optimizer_refuses_bad_lists():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=r"params\[1\] is a Tensor of shape \(3,\) with "
                                         "requires_grad=False"):
        optim.SGD([p, mg.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    model = nn.Linear(2, 2)
    gen = model.parameters()
    optim.SGD(gen, lr=0.1)
    with pytest.raises(ValueError, match="used up"):
        optim.SGD(gen, lr=0.1)  # the generator is exhausted
    with pytest.raises(ValueError, match=r"params\[2\] is the same tensor as params\[0\]"):
        optim.SGD([p, nn.Parameter(np.zeros(1)), p], lr=0.1)
    with pytest.raises(TypeError, match="got a single Parameter"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match=r"got Linear; pass model.parameters\(\)"):
        optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\].*not a leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="params must be an iterable"):
        optim.SGD(3, lr=0.1)
    # a plain Tensor that requires grad is fine
    optim.SGD([mg.zeros(2, requires_grad=True)], lr=0.1)


# ------------------------------------------------------------------ optimizer state

@pytest.mark.parametrize("name", CASES)
def test_state_dict_resumes_exactly(name):
    make_opt = CASES[name][0]

    def loss_of(params):
        return sum(((p - mg.tensor(t)) ** 2 * mg.tensor(c)).sum()
                   for p, c, t in zip(params, C, T))

    def steps(params, opt, n):
        for _ in range(n):
            opt.zero_grad()
            loss_of(params).backward()
            opt.step()

    a = [nn.Parameter(p.copy()) for p in P0]
    opt_a = make_opt(a)
    steps(a, opt_a, 5)
    b = [nn.Parameter(p.copy()) for p in P0]
    opt_b = make_opt(b)
    steps(b, opt_b, 2)
    sd = opt_b.state_dict()
    c = [nn.Parameter(p.data.copy()) for p in b]
    opt_c = make_opt(c)
    opt_c.lr = 123.0  # overwritten by the load
    opt_c.load_state_dict(sd)
    assert opt_c.lr == opt_b.lr
    for arrays in sd["state"].values():  # the state dict holds copies
        for v in arrays.values():
            if isinstance(v, np.ndarray):
                v += 1000
    steps(c, opt_c, 3)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x.data, y.data)


def test_state_dict_contents():
    p, q = nn.Parameter(np.ones(3)), nn.Parameter(np.ones((2, 2)))
    opt = optim.Adam([p, q], lr=0.01)
    (p * p).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["type"] == "Adam" and sd["param_shapes"] == [[3], [2, 2]]
    assert sd["hyperparams"] == {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8,
                                 "weight_decay": 0.0}
    assert list(sd["state"]) == [0]  # q had no gradient: no state yet
    assert sd["state"][0]["step"] == 1
    np.testing.assert_allclose(sd["state"][0]["exp_avg"], 0.1 * 2 * np.ones(3))


def test_load_state_dict_errors_leave_optimizer_unchanged():
    p = nn.Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.01)
    (p * p).sum().backward()
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="saved by a Adam optimizer"):
        optim.SGD([p], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="state is for 1 parameters, this optimizer has 2"):
        optim.Adam([p, nn.Parameter(np.ones(1))]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"params\[0\]: saved \(3,\), here \(4,\)"):
        optim.Adam([nn.Parameter(np.ones(4))]).load_state_dict(sd)
    other = optim.Adam([p], lr=0.5)
    bad = dict(sd, hyperparams=dict(sd["hyperparams"], betas=(0.9, 2.0)))
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        other.load_state_dict(bad)
    assert other.lr == 0.5 and other.state == [{}]
    bad = dict(sd, state={0: dict(sd["state"][0], exp_avg=np.zeros(2))})
    with pytest.raises(ValueError, match="state 'exp_avg' of params\\[0\\] has shape"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="expected a dict from Optimizer.state_dict"):
        other.load_state_dict({"lr": 1})


# ------------------------------------------------------------------ gradient clipping

def grads_params(*grads):
    ps = []
    for g in grads:
        p = nn.Parameter(np.zeros_like(np.asarray(g, dtype=np.float64)))
        p.grad = np.array(g, dtype=np.float64)
        ps.append(p)
    return ps


def test_clip_grad_norm_by_hand():
    ps = grads_params([3.0, 4.0], [[12.0]])  # global 2-norm 13, 1-norm 19, inf-norm 12
    ps.append(nn.Parameter(np.zeros(2)))  # grad None: skipped
    total = optim.clip_grad_norm_(ps, 6.5)
    assert total == 13.0 and type(total) is float
    coef = 6.5 / (13 + 1e-6)
    np.testing.assert_allclose(ps[0].grad, [3 * coef, 4 * coef], rtol=1e-15)
    np.testing.assert_allclose(ps[1].grad, [[12 * coef]], rtol=1e-15)
    assert ps[2].grad is None

    ps = grads_params([3.0, -4.0], [12.0])
    assert optim.clip_grad_norm_(ps, 19.5, norm_type=1) == 19.0  # below: untouched
    np.testing.assert_array_equal(ps[0].grad, [3, -4])
    assert optim.clip_grad_norm_(ps, 6.0, norm_type=math.inf) == 12.0
    np.testing.assert_allclose(ps[1].grad, [12 * 6 / (12 + 1e-6)], rtol=1e-15)
    assert optim.clip_grad_norm_(grads_params([3.0, 4.0])[0], 100.0) == 5.0  # one tensor
    assert optim.clip_grad_norm_([nn.Parameter(np.zeros(1))], 1.0) == 0.0


@given(st.lists(st.lists(st.floats(-100, 100), min_size=1, max_size=5), min_size=1,
                max_size=4),
       st.floats(0.01, 50), st.sampled_from([1.0, 2.0, math.inf]))
def test_clip_grad_norm_property(grads, max_norm, norm_type):
    ps = grads_params(*grads)
    flat = np.concatenate([np.asarray(g) for g in grads])
    expected = np.linalg.norm(flat, ord=norm_type)
    total = optim.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    assert total == pytest.approx(expected, rel=1e-12, abs=1e-12)
    after = np.concatenate([p.grad for p in ps])
    if expected > max_norm:
        assert np.linalg.norm(after, ord=norm_type) <= max_norm
        np.testing.assert_allclose(after * (expected + 1e-6), flat * max_norm, rtol=1e-12,
                                   atol=1e-9)
    else:
        np.testing.assert_array_equal(after, flat)


def test_clip_grad_norm_nonfinite():
    ps = grads_params([1.0, np.nan], [2.0])
    assert math.isnan(optim.clip_grad_norm_(ps, 1.0))
    np.testing.assert_array_equal(ps[1].grad, [2.0])  # left as they were
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is nan"):
        optim.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    ps = grads_params([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="is inf"):
        optim.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_float32_overflow_safe():
    ps = [nn.Parameter(np.zeros(2, dtype=np.float32))]
    ps[0].grad = np.array([3e30, 4e30], dtype=np.float32)  # squares overflow float32
    assert optim.clip_grad_norm_(ps, 1.0) == pytest.approx(5e30, rel=1e-6)
    assert ps[0].grad.dtype == np.float32
    np.testing.assert_allclose(ps[0].grad, [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1"])
def test_clip_grad_norm_bad_max_norm(bad):
    ps = grads_params([1.0])
    with pytest.raises(ValueError, match="max_norm must be a finite positive number"):
        optim.clip_grad_norm_(ps, bad)
    with pytest.raises(ValueError, match="norm_type must be 1, 2 or inf"):
        optim.clip_grad_norm_(ps, 1.0, norm_type=3)


def test_clip_grad_value():
    ps = grads_params([-7.0, 2.0, 5.5], [[-1.0, 6.0]])
    ps.append(nn.Parameter(np.zeros(1)))
    optim.clip_grad_value_(ps, 5)
    np.testing.assert_array_equal(ps[0].grad, [-5.0, 2.0, 5.0])
    np.testing.assert_array_equal(ps[1].grad, [[-1.0, 5.0]])
    assert ps[2].grad is None
    for bad in (0, math.inf, math.nan):
        with pytest.raises(ValueError, match="clip_value must be a finite positive number"):
            optim.clip_grad_value_(ps, bad)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.RMSprop, optim.Adam,
                                 optim.AdamW])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_optimizers_reject_a_non_finite_lr(cls, bad):
    # lr=inf used to be accepted and turned every weight into inf/NaN at the first step.
    with pytest.raises(ValueError, match=f"{cls.__name__}: lr must be a finite number"):
        cls([nn.Parameter(np.zeros(2))], lr=bad)
    opt = cls([nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        opt.lr = bad  # a schedule or a resumed run sets it later


def test_grad_norm_is_the_norm_clip_grad_norm_reports():
    ps = grads_params([3.0, 4.0], [[12.0]])
    assert optim.grad_norm(ps) == 13.0 and optim.grad_norm(ps, 1) == 19.0
    assert optim.grad_norm(ps, math.inf) == 12.0
    np.testing.assert_array_equal(ps[0].grad, [3.0, 4.0])  # measuring changes nothing
    assert optim.clip_grad_norm_(ps, 1.0) == 13.0


# ------------------------------------------------------------------ schedules

def test_step_lr():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = [sched.get_last_lr()]
    for _ in range(5):
        sched.step()
        lrs.append(sched.get_last_lr())
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert opt.lr == 0.25
    sd = sched.state_dict()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched2 = optim.StepLR(opt2, step_size=2, gamma=0.5)
    sched2.load_state_dict(sd)
    assert opt2.lr == 0.25 and sched2.last_epoch == 5
    sched.step()
    sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr() == 0.125
    with pytest.raises(ValueError, match="step_size must be a positive integer"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="saved by a StepLR"):
        optim.LambdaLR(opt, lambda e: 1.0).load_state_dict(
            {"type": "StepLR", "base_lr": 1.0, "last_epoch": 1})


def test_lambda_lr():
    opt = optim.Adam([nn.Parameter(np.zeros(1))], lr=0.1)
    sched = optim.LambdaLR(opt, lambda e: 1 / (e + 1))
    assert opt.lr == 0.1
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx(0.1 / 3) and opt.lr == sched.get_last_lr()
    sched2 = optim.LambdaLR(optim.Adam([nn.Parameter(np.zeros(1))], lr=0.1),
                            lambda e: 1 / (e + 1))
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 2 and sched2.optimizer.lr == pytest.approx(0.1 / 3)
    with pytest.raises(TypeError, match="lr_lambda must be callable"):
        optim.LambdaLR(opt, 0.5)
    with pytest.raises(TypeError, match="expected an Optimizer, got list"):
        optim.StepLR([], 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_and_the_gradient_norm_run_fused_kernels_equal_to_the_array_path(monkeypatch,
                                                                             dtype):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 7)).astype(dtype)
    grads = [rng.standard_normal((5, 7)).astype(dtype) for _ in range(5)]

    def run():
        p = nn.Parameter(w0.copy())
        opt, norms = optim.AdamW([p], lr=0.1, weight_decay=0.01), []
        for g in grads:
            p.grad = g.copy()
            norms.append(optim.clip_grad_norm_([p], 3.0))
            opt.step()
        return p.data, norms

    calls = []
    for name in ("adam_update", "sum_squares"):  # a silent fallback would fail the count
        real = getattr(mg.kernels, name)
        monkeypatch.setattr(mg.kernels, name, lambda *a, real=real: calls.append(1) or real(*a))
    fast, fast_norms = run()
    assert len(calls) == 10
    monkeypatch.setattr(optim, "_fused", lambda *arrays: False)  # the NumPy expressions
    slow, slow_norms = run()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(fast, slow, rtol=tol, atol=tol)
    np.testing.assert_allclose(fast_norms, slow_norms, rtol=1e-12)
