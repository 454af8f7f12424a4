"""The gradient checker itself: it must pass correct gradients, catch a wrong one (and say
where), in both the full-Jacobian and the random-projection regime, refuse float32, and leave
its inputs as it found them.

Wrong gradients come from throw-away primitives (``ops.defprim`` + ``tensor.apply``) that are
removed from the primitive table after each test.
"""

import re

import numpy as np
import pytest

import minigrad as mg
from minigrad import gradcheck
from minigrad.core import ops
from minigrad.core.tensor import apply


@pytest.fixture
def defprim():
    """``ops.defprim`` for this test only: the primitives are unregistered afterwards."""
    made = []

    def make(name, *args, **kwargs):
        made.append(name)
        return ops.defprim(name, *args, **kwargs)

    try:
        yield make
    finally:
        for name in made:
            ops.PRIMITIVES.pop(name, None)


def cube_with_bad_element(bad_index, delta):
    """VJP of x**3 that is right except at one element, which is off by ``delta``."""
    def vjp(g, out, a):
        d = 3 * a * a
        d[bad_index] += delta
        return g * d
    return vjp


def numbers_in(message, label):
    return float(re.search(rf"{label} = ([-0-9.e+]+)", message).group(1))


# ----------------------------------------------------------------------------- passing

@pytest.mark.parametrize("f, shapes", [
    (lambda a: (a * a).sum(), [(3, 2)]),
    (lambda a, b: (a @ b).tanh(), [(3, 4), (4, 2)]),
    (lambda a: a.exp() / (1 + a * a), [(2, 3, 2)]),
    (lambda a: a.sigmoid().log(), [()]),
])
def test_passes_for_correct_gradients(f, shapes):
    rng = np.random.default_rng(1)
    xs = [mg.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    assert mg.check_grads(f, *xs) is True


def test_inputs_without_requires_grad_pass_through():
    x = mg.tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    targets = np.array([0, 2])
    scale = mg.tensor(np.array([2.0, 3.0, 4.0]))  # a constant tensor: not checked, not touched
    assert mg.check_grads(lambda z, t, s: mg.cross_entropy(z * s, t), x, targets, scale)
    assert scale.grad is None


# ----------------------------------------------------------------------------- catching

def test_catches_a_wrong_gradient_full_jacobian(defprim):
    bad = defprim("test_bad_cube", lambda a: a ** 3, cube_with_bad_element((1, 2), 0.5))
    x = mg.tensor(np.arange(1.0, 7.0).reshape(2, 3) / 4, requires_grad=True)
    with pytest.raises(mg.GradcheckError) as info:
        mg.check_grads(lambda a: apply(bad, a), x)
    msg = str(info.value)
    assert "input 0" in msg and "shape (2, 3)" in msg and "element (1, 2)" in msg
    true = 3 * x.data[1, 2] ** 2
    assert numbers_in(msg, "numeric") == pytest.approx(true, rel=1e-6)
    assert numbers_in(msg, "analytic d out\\[j\\] / d input") == pytest.approx(true + 0.5,
                                                                                rel=1e-6)


def test_names_the_input_that_is_wrong(defprim):
    def bad_mul_b(g, out, a, b):
        return g * a * 1.01  # 1% off

    bad = defprim("test_bad_mul", np.multiply, lambda g, out, a, b: g * b, bad_mul_b)
    a = mg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = mg.tensor(np.array([3.0, 4.0]), requires_grad=True)
    with pytest.raises(mg.GradcheckError, match=r"input 1 \(shape \(2,\).*element \(0,\)"):
        mg.check_grads(lambda x, y: apply(bad, x, y), a, b)


def test_catches_a_wrong_gradient_projected(defprim):
    n = 80  # 80 x 80 inputs and outputs: far past the full-Jacobian limit
    assert (n * n) ** 2 > gradcheck.FULL_JACOBIAN_MAX
    bad = defprim("test_bad_cube_big", lambda a: a ** 3, cube_with_bad_element((17, 42), 3.0))
    rng = np.random.default_rng(2)
    x = mg.tensor(rng.uniform(-1, 1, (n, n)), requires_grad=True)
    with pytest.raises(mg.GradcheckError, match=r"input 0 \(shape \(80, 80\).*element \(17, 42\)"):
        mg.check_grads(lambda a: apply(bad, a), x)


def test_projected_regime_passes_and_uses_few_evaluations():
    calls = []

    def f(a, w):
        calls.append(1)
        return (a @ w).tanh()

    rng = np.random.default_rng(3)
    a = mg.tensor(rng.standard_normal((40, 30)), requires_grad=True)
    w = mg.tensor(rng.standard_normal((30, 20)) / 5, requires_grad=True)
    assert mg.check_grads(f, a, w, n_projections=3)
    # out0, one backward, then 2 evaluations per projection per input: no element loop.
    assert len(calls) == 1 + 1 + 2 * 3 * 2


def test_full_regime_compares_every_jacobian_entry():
    calls = []

    def f(a):
        calls.append(1)
        return a * 2.0

    x = mg.tensor(np.ones((2, 3)), requires_grad=True)
    assert mg.check_grads(f, x)
    assert len(calls) == 1 + 6 + 2 * 6  # out0, one backward per output, 2 per input element


# ----------------------------------------------------------------------------- refusing

def test_refuses_float32():
    x = mg.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="input 0 has dtype float32.*float64"):
        mg.check_grads(lambda a: a * 2.0, x)


def test_refuses_float32_output():
    x = mg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="f returned dtype float32"):
        mg.check_grads(lambda a: a.astype(np.float32), x)


def test_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="no input requires grad"):
        mg.check_grads(lambda a: a * 2.0, mg.tensor(np.ones(3)))


def test_f_must_return_a_tensor():
    x = mg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="f must return a Tensor"):
        mg.check_grads(lambda a: a.data * 2, x)


# ----------------------------------------------------------------------------- restoring

@pytest.mark.parametrize("n", [3, 80])  # full Jacobian and random projection
@pytest.mark.parametrize("correct", [True, False])
def test_restores_data_and_grad(defprim, n, correct):
    vjp = (lambda g, out, a: 3 * g * a * a) if correct else cube_with_bad_element((0, 1), 100.0)
    prim = defprim("test_cube", lambda a: a ** 3, vjp)
    rng = np.random.default_rng(4)
    x = mg.tensor(rng.uniform(-1, 1, (n, n)), requires_grad=True)
    y = mg.tensor(rng.uniform(-1, 1, (n, n)), requires_grad=True)
    before_x, before_y = x.data.copy(), y.data.copy()
    sentinel = np.full((n, n), 7.0)
    x.grad = sentinel
    if correct:
        mg.check_grads(lambda a, b: apply(prim, a) * b, x, y)
    else:
        with pytest.raises(mg.GradcheckError):
            mg.check_grads(lambda a, b: apply(prim, a) * b, x, y)
    np.testing.assert_array_equal(x.data, before_x)
    np.testing.assert_array_equal(y.data, before_y)
    assert x.grad is sentinel and y.grad is None


def test_restores_data_when_f_raises_midway():
    x = mg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    before = x.data.copy()

    def f(a):
        if not np.array_equal(a.data, before):  # blows up on the first perturbed input
            raise ArithmeticError("perturbed")
        return a * 2.0

    with pytest.raises(ArithmeticError):
        mg.check_grads(f, x)
    np.testing.assert_array_equal(x.data, before)


@pytest.mark.parametrize("n", [3, 80])
def test_non_contiguous_input(n):
    base = np.random.default_rng(5).uniform(-1, 1, (n, n))
    x = mg.tensor(base, requires_grad=True)
    x.data = x.data.T  # an F-ordered view: perturbing a flattened copy would do nothing
    assert not x.data.flags.c_contiguous
    w = mg.tensor(np.arange(n * n, dtype=np.float64).reshape(n, n) / n**2)
    assert mg.check_grads(lambda a: (a * w).tanh(), x)
    np.testing.assert_array_equal(x.data, base.T)
