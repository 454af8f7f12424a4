"""Tests for minigrad.nn: Parameter, Module registration and state, layers, initialisers.

Values are compared with NumPy formulas written out here (``x @ W.T + b``, one-hot
products, QR facts), never with the code under test itself.
"""

import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
from minigrad import nn
from minigrad.nn import init


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.W_a = nn.Parameter(np.ones((2, 3), dtype=np.float32))
        self.b_a = nn.Parameter(np.zeros(2, dtype=np.float32))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.float32(2.0))
        self.cell = Cell()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        return self.head(x)


# ------------------------------------------------------------------ Parameter

def test_parameter_dtypes_and_flags():
    assert nn.Parameter([1.0, 2.0]).dtype == np.float32
    assert nn.Parameter(np.zeros(3)).dtype == np.float64  # float64 kept
    assert nn.Parameter([1, 2]).dtype == np.float32  # integers become float32
    p = nn.Parameter(np.zeros(3))
    assert p.requires_grad and p.is_leaf and isinstance(p, mg.Tensor)
    assert not nn.Parameter(np.zeros(3), requires_grad=False).requires_grad
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Parameter(np.array(["a"]))


def test_parameter_copies_data_and_ops_give_plain_tensors():
    a = np.zeros(3, dtype=np.float32)
    p = nn.Parameter(a)
    a[0] = 5
    assert p.data[0] == 0
    y = p * 2
    assert type(y) is mg.Tensor and y.requires_grad
    assert "Parameter containing" in repr(p)


# ------------------------------------------------------------------ Module registration

def test_named_parameters_dotted_names_in_assignment_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["encoder.scale", "encoder.cell.W_a", "encoder.cell.b_a",
                     "head.weight", "head.bias"]
    assert [n for n, _ in net.named_parameters(prefix="model")][0] == "model.encoder.scale"
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]
    assert net.num_parameters() == 1 + 6 + 2 + 6 + 3


def test_children_and_modules():
    net = Net()
    assert [n for n, _ in net.named_children()] == ["encoder", "head"]
    assert list(net.children()) == [net.encoder, net.head]
    assert list(net.modules()) == [net, net.encoder, net.encoder.cell, net.head]
    assert [n for n, _ in net.named_modules()] == ["", "encoder", "encoder.cell", "head"]


def test_reassignment_none_and_deletion():
    m = Cell()
    old = m.W_a
    m.W_a = nn.Parameter(np.zeros((2, 3)))  # reassigned: same slot, new object
    assert [n for n, _ in m.named_parameters()] == ["W_a", "b_a"]
    assert m.W_a is not old and dict(m.named_parameters())["W_a"] is m.W_a
    m.b_a = None  # slot kept, skipped by traversal
    assert m.b_a is None and [n for n, _ in m.named_parameters()] == ["W_a"]
    m.b_a = nn.Parameter(np.ones(2))
    assert [n for n, _ in m.named_parameters()] == ["W_a", "b_a"]
    del m.W_a  # deleting unregisters (assigning a plain value is refused, see below)
    assert [n for n, _ in m.named_parameters()] == ["b_a"]
    del m.b_a
    assert list(m.parameters()) == [] and not hasattr(m, "b_a")
    m.sub = Cell()
    m.sub = nn.Parameter(np.zeros(1))  # a module slot becomes a parameter
    assert list(m.children()) == [] and [n for n, _ in m.named_parameters()] == ["sub"]


def test_plain_tensor_over_parameter_is_refused():
    m = Cell()
    with pytest.raises(TypeError, match="cannot assign a Tensor to parameter 'W_a'"):
        m.W_a = m.W_a * 2


@pytest.mark.parametrize("value", [np.zeros((2, 3)), 3, "w"])
def test_plain_value_over_parameter_is_refused(value):
    # As PyTorch: an array (or anything but a Parameter or None) assigned to a parameter
    # attribute used to drop the parameter silently from parameters() and state_dict().
    m = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=f"cannot assign a {type(value).__name__} to parameter "
                                        r"'weight' of Linear \(nn.Parameter or None expected\)"):
        m.weight = value
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert list(m.state_dict()) == ["weight", "bias"]


def test_assigning_before_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter([1.0])

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


def test_shared_parameters_and_modules_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = self.a  # the same module twice
            self.c = nn.Linear(2, 2)
            self.c.weight = self.a.weight  # one parameter in two modules

    t = Tied()
    names = [n for n, _ in t.named_parameters()]
    assert names == ["a.weight", "a.bias", "c.bias"]
    assert t.num_parameters() == 4 + 2 + 2
    assert len(list(t.modules())) == 3


def test_forward_not_defined():
    with pytest.raises(NotImplementedError, match="Cell does not define forward"):
        Cell()(1)


def test_train_eval_recursive_and_zero_grad():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5)))
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net(mg.ones(1, 2)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------ state dicts

def test_state_dict_is_an_ordered_copy():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == [n for n, _ in net.named_parameters()]
    sd["head.weight"][...] = 7
    assert not np.any(net.head.weight.data == 7)


def test_load_state_dict_in_place_with_cast():
    net = Net()
    w = net.head.weight.data
    src = {k: np.full(v.shape, 0.5, dtype=np.float64) for k, v in net.state_dict().items()}
    src["head.bias"] = mg.tensor(np.array([1.0, 2.0, 3.0]))  # Tensors are accepted too
    result = net.load_state_dict(src)
    assert net.head.weight.data is w  # the same array: optimizers keep their references
    assert w.dtype == np.float32 and np.all(w == 0.5)
    assert np.array_equal(net.head.bias.data, [1, 2, 3])
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    sd = net.state_dict()
    del sd["encoder.scale"], sd["head.bias"]
    sd["head.weight"] = np.zeros((2, 3), dtype=np.float32)  # transposed shape
    sd["encoder.cell.W_a"] = sd["encoder.cell.W_a"] + 1  # valid: must still not be copied
    sd["decoder.W"] = np.zeros(2)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    assert "missing keys: ['encoder.scale', 'head.bias']" in msg
    assert "unexpected keys: ['decoder.W']" in msg
    assert "shape mismatch for 'head.weight': checkpoint (2, 3), model (3, 2)" in msg
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k])


def test_load_state_dict_non_strict():
    net = Net()
    sd = {"head.bias": np.ones(3), "extra": np.zeros(1)}
    res = net.load_state_dict(sd, strict=False)
    assert np.all(net.head.bias.data == 1)
    assert res.unexpected_keys == ["extra"] and "head.weight" in res.missing_keys
    with pytest.raises(ValueError, match="shape mismatch for 'head.bias'"):
        net.load_state_dict({"head.bias": np.ones(4)}, strict=False)
    with pytest.raises(ValueError, match="numeric array"):
        net.load_state_dict({"head.bias": np.array(["a", "b", "c"])}, strict=False)


def test_deepcopy_gives_independent_parameters():
    net = Net()
    twin = copy.deepcopy(net)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in net.named_parameters()]
    twin.head.weight.data[...] = 0
    assert not np.all(net.head.weight.data == 0)


# ------------------------------------------------------------------ repr

def test_repr_is_nested_like_pytorch():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.ModuleList([nn.Embedding(5, 2)]))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): Tanh()\n"
        "  (2): ModuleList(\n"
        "    (0): Embedding(5, 2)\n"
        "  )\n"
        ")"
    )
    assert repr(nn.Linear(2, 1, bias=False)) == "Linear(in_features=2, out_features=1, bias=False)"
    assert repr(nn.Embedding(5, 2, padding_idx=-1)) == "Embedding(5, 2, padding_idx=4)"


# ------------------------------------------------------------------ containers

def test_module_list():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    layers.append(nn.Tanh())
    assert len(layers) == 4
    assert layers[-1] is list(layers)[3] and isinstance(layers[3], nn.Tanh)
    assert [n for n, _ in layers.named_parameters()][:3] == ["0.weight", "0.bias", "1.weight"]
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    assert getattr(layers, "0") is layers[0]
    new = nn.ReLU()
    layers[0] = new
    assert layers[0] is new and [n for n, _ in layers.named_parameters()][0] == "1.weight"
    with pytest.raises(IndexError, match="index 4 is out of range for length 4"):
        layers[4]
    with pytest.raises(TypeError, match="expected a Module, got int"):
        layers.append(3)


def test_sequential_composes_in_order():
    mg.manual_seed(1)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid())
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    h = np.maximum(x @ seq[0].weight.data.T + seq[0].bias.data, 0)
    z = h @ seq[2].weight.data.T + seq[2].bias.data
    np.testing.assert_allclose(seq(mg.tensor(x)).data, 1 / (1 + np.exp(-z)), rtol=1e-5)
    np.testing.assert_allclose(nn.Tanh()(mg.tensor(x)).data, np.tanh(x), rtol=1e-6)


# ------------------------------------------------------------------ Linear

@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), fin=st.integers(1, 5),
       fout=st.integers(1, 4), seed=st.integers(0, 1000))
def test_linear_value_and_gradient(lead, fin, fout, seed):
    mg.manual_seed(seed)
    lin = nn.Linear(fin, fout, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = mg.tensor(rng.standard_normal((*lead, fin)), requires_grad=True)
    u = rng.standard_normal((*lead, fout))
    y = lin(x)
    W, b = lin.weight.data, lin.bias.data
    np.testing.assert_allclose(y.data, x.data @ W.T + b, rtol=1e-12, atol=1e-12)
    (y * mg.tensor(u)).sum().backward()
    xs, us = x.data.reshape(-1, fin), u.reshape(-1, fout)
    np.testing.assert_allclose(lin.weight.grad, us.T @ xs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lin.bias.grad, us.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad, u @ W, rtol=1e-10, atol=1e-12)


def test_linear_gradcheck_and_init():
    mg.manual_seed(0)
    lin = nn.Linear(4, 3, dtype=np.float64)
    x = mg.randn(2, 4, dtype=np.float64, requires_grad=True)
    assert mg.check_grads(lambda x, w, b: lin(x), x, lin.weight, lin.bias)
    big = nn.Linear(64, 200)
    bound = 1 / math.sqrt(64)
    for p in (big.weight, big.bias):
        assert p.dtype == np.float32
        assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.9 * bound
    assert big.weight.shape == (200, 64) and big.bias.shape == (200,)
    assert nn.Linear(3, 2, bias=False).bias is None
    assert len(list(nn.Linear(3, 2, bias=False).parameters())) == 1


def test_linear_wrong_input_size():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 3\).*got shape "
                                         r"\(4, 5\)"):
        lin(mg.zeros(4, 5))
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Linear(0, 2)
    with pytest.raises(TypeError, match="expected a float input, got dtype int64"):
        lin(np.ones((2, 3), dtype=np.int64))


# ------------------------------------------------------------------ Embedding

@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), n=st.integers(1, 6),
       dim=st.integers(1, 4), seed=st.integers(0, 1000))
def test_embedding_equals_one_hot_matmul(shape, n, dim, seed):
    mg.manual_seed(seed)
    emb = nn.Embedding(n, dim, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, size=shape)  # repeats are likely: gradients must add up
    u = rng.standard_normal((*shape, dim))
    y = emb(mg.tensor(ids))
    (y * mg.tensor(u)).sum().backward()
    g_lookup = emb.weight.grad.copy()
    emb.zero_grad()
    y2 = mg.one_hot(ids.reshape(-1), n, dtype=np.float64) @ emb.weight
    (y2 * mg.tensor(u.reshape(-1, dim))).sum().backward()
    assert y.shape == (*shape, dim)
    np.testing.assert_allclose(y.data.reshape(-1, dim), y2.data, rtol=1e-12)
    np.testing.assert_allclose(g_lookup, emb.weight.grad, rtol=1e-10, atol=1e-12)


def test_embedding_bad_indices():
    emb = nn.Embedding(10, 3)
    with pytest.raises(IndexError, match=r"index 10 is out of range \(too large\): "
                                         r"expected 0..9 for num_embeddings=10"):
        emb(np.array([[1, 10], [2, 3]]))
    with pytest.raises(IndexError, match=r"index -1 is out of range \(negative\)"):
        emb(mg.tensor([0, -1]))
    with pytest.raises(TypeError, match="indices must be integers, got dtype float32"):
        emb(mg.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="indices must be integers, got dtype bool"):
        emb(np.array([True, False]))


def test_embedding_empty_and_odd_index_arrays():
    emb = nn.Embedding(4, 2)
    y = emb(np.zeros((0, 3), dtype=np.int64))
    assert y.shape == (0, 3, 2)
    y.sum().backward()
    np.testing.assert_array_equal(emb.weight.grad, np.zeros((4, 2)))
    emb.zero_grad()
    ids = (np.arange(8).reshape(2, 4) % 4)[:, ::2].astype(np.uint8)  # strided, unsigned
    emb(ids).sum().backward()
    counts = np.bincount(ids.ravel(), minlength=4)[:, None] * np.ones((1, 2))
    np.testing.assert_array_equal(emb.weight.grad, counts)
    assert emb(3).shape == (2,)  # a Python int gives one row


def test_embedding_init_and_padding():
    mg.manual_seed(0)
    w = nn.Embedding(400, 50).weight.data
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02  # N(0, 1): 20 000 draws
    emb = nn.Embedding(4, 2, padding_idx=0)
    assert np.all(emb.weight.data[0] == 0)
    emb(np.array([0, 1, 0, 3])).sum().backward()
    np.testing.assert_array_equal(emb.weight.grad, [[0, 0], [1, 1], [0, 0], [1, 1]])
    with pytest.raises(ValueError, match="padding_idx 4 is out of range"):
        nn.Embedding(4, 2, padding_idx=4)


# ------------------------------------------------------------------ Dropout

def test_dropout_train_eval_and_reproducible():
    x = mg.ones(200, 100)
    drop = nn.Dropout(0.25)
    mg.manual_seed(3)
    y1 = drop(x).data
    mg.manual_seed(3)
    y2 = drop(x).data
    np.testing.assert_array_equal(y1, y2)
    kept = y1 != 0
    assert abs(kept.mean() - 0.75) < 0.02  # 20 000 Bernoulli draws
    np.testing.assert_allclose(y1[kept], 1 / 0.75, rtol=1e-6)  # inverted: scaled up
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)


# ------------------------------------------------------------------ init

def test_uniform_normal_constant_in_place_and_seeded():
    p = nn.Parameter(np.zeros((50, 40), dtype=np.float32))
    arr = p.data
    mg.manual_seed(5)
    assert init.uniform_(p, -0.3, 0.2) is p
    assert p.data is arr and p.dtype == np.float32
    assert p.data.min() >= -0.3 and p.data.max() <= 0.2 and p.data.min() < -0.29
    first = p.data.copy()
    mg.manual_seed(5)
    init.uniform_(p, -0.3, 0.2)
    np.testing.assert_array_equal(p.data, first)
    init.normal_(p, mean=3.0, std=0.5)
    assert abs(p.data.mean() - 3) < 0.03 and abs(p.data.std() - 0.5) < 0.03
    init.constant_(p, 1.0)
    assert np.all(p.data == 1)
    init.zeros_(p)
    assert np.all(p.data == 0)
    init.ones_(p)
    assert np.all(p.data == 1)
    with pytest.raises(TypeError, match="expected a Tensor"):
        init.zeros_(np.zeros(3))


def test_xavier_uniform_fans():
    p = nn.Parameter(np.zeros((20, 30)))
    init.xavier_uniform_(p, gain=2.0)
    bound = 2.0 * math.sqrt(6 / (30 + 20))  # fan_in = shape[1] = 30, fan_out = shape[0] = 20
    assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.95 * bound
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(nn.Parameter(np.zeros(3)))


@pytest.mark.parametrize("shape", [(6, 6), (3, 7), (7, 3), (4, 2, 3)])
def test_orthogonal(shape):
    p = nn.Parameter(np.zeros(shape))
    init.orthogonal_(p, gain=1.5)
    q = p.data.reshape(shape[0], -1) / 1.5
    if q.shape[0] <= q.shape[1]:  # rows orthonormal
        np.testing.assert_allclose(q @ q.T, np.eye(q.shape[0]), atol=1e-12)
    else:  # columns orthonormal
        np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)


def test_orthogonal_sign_correction_matches_a_hand_qr():
    p = nn.Parameter(np.zeros((4, 4)))
    mg.manual_seed(9)
    init.orthogonal_(p)
    a = np.random.default_rng(9).standard_normal((4, 4))
    q, r = np.linalg.qr(a)
    np.testing.assert_allclose(p.data, q * np.sign(np.diag(r)), atol=1e-12)
    # the sign correction makes R's diagonal positive: p^T a is upper triangular, positive
    np.testing.assert_array_less(0, np.diag(p.data.T @ a))


def test_rnn_uniform_and_forget_gate_bias():
    p = nn.Parameter(np.zeros((100, 100), dtype=np.float32))
    init.rnn_uniform_(p, hidden_size=25)
    assert np.abs(p.data).max() <= 0.2 and np.abs(p.data).max() > 0.19
    b_f = nn.Parameter(np.zeros(8, dtype=np.float32))
    init.constant_(b_f, 1.0)
    assert np.all(b_f.data == 1) and b_f.dtype == np.float32


# ------------------------------------------------------------------ learning

def test_mlp_learns_a_synthetic_regression():
    """A 2-16-1 tanh MLP fits y = sin(x0) + x1²/2 with Adam: the MSE falls by ≥ 90 %."""
    from minigrad import optim

    mg.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (256, 2)).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:] ** 2).astype(np.float32)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = mg.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = mg.tensor(x), mg.tensor(y)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = ((model(xt) - yt) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    assert isinstance(opt, optim.Optimizer)
