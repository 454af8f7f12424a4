"""PyTorch as the oracle for the Transformer layers (optional: skipped without torch).

``make test-oracle`` installs ``torch==2.13.0`` into the venv and runs this file with
``tests/test_torch_oracle.py``.  Every case builds a minigrad module in float64, moves its
weights into the same ``torch.nn`` module through ``models.interop.to_torch_state_dict``
(strict: every torch key filled), runs both on the same inputs and compares the outputs and
the gradients of one random projection of them w.r.t. every input and every parameter.  The
other direction (torch's initial weights read with ``load_torch_state_dict``) has its own test.
"""

import numpy as np
import pytest

import minigrad as mg
from models.interop import load_torch_state_dict, to_torch_state_dict

torch = pytest.importorskip("torch")
# Mixing a bool key-padding mask with a float attention mask is deprecated in torch (it still
# computes the same thing); minigrad accepts both kinds, so the cases mix them on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")

F64 = np.float64
TOL = dict(rtol=1e-9, atol=1e-11)
B, L, S, E, NHEAD = 3, 5, 4, 8, 2


def _sync(mod, tmod):
    """torch module <- minigrad weights, with wider values than the default initialisation
    (so that biases and LayerNorm's affine parameters are not 0 and 1 and every term shows)."""
    rng = np.random.default_rng(0)
    with mg.no_grad():
        for p in mod.parameters():
            p.data[...] = p.data + rng.uniform(-0.3, 0.3, p.shape)
    tmod = tmod.double()
    tmod.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(mod).items()})
    return tmod


def _compare(mod, tmod, arrays, fwd, tfwd):
    """fwd(mod, *tensors) and tfwd(tmod, *torch tensors) each return a tuple of outputs."""
    rng = np.random.default_rng(1)
    xs = [mg.tensor(a, requires_grad=a.dtype == F64) for a in arrays]
    txs = [torch.tensor(a, requires_grad=a.dtype == F64) for a in arrays]
    outs, touts = fwd(mod, *xs), tfwd(tmod, *txs)
    assert len(outs) == len(touts)
    loss, tloss = 0, 0
    for o, t in zip(outs, touts):
        np.testing.assert_allclose(o.data, t.detach().numpy(), **TOL)
        g = rng.standard_normal(o.shape)
        loss, tloss = loss + (o * mg.tensor(g)).sum(), tloss + (t * torch.tensor(g)).sum()
    loss.backward()
    tloss.backward()
    for i, (x, tx) in enumerate(zip(xs, txs)):
        if x.requires_grad:
            np.testing.assert_allclose(x.grad, tx.grad.numpy(), **TOL, err_msg=f"input {i}")
    tgrads = {n: p.grad for n, p in tmod.named_parameters()}
    grads = {n: p.grad for n, p in mod.named_parameters()}
    assert sorted(grads) == sorted(tgrads)
    for n, g in grads.items():
        np.testing.assert_allclose(g, tgrads[n].numpy(), **TOL, err_msg=n)


def _inputs(*shapes, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _kpm(kind, b=B, s=S):
    """A key-padding mask (b, s): bool (True = padding) or float (-inf / a soft penalty)."""
    pad = np.zeros((b, s), bool)
    pad[0, -1] = pad[1, -2:] = True
    return pad if kind == "bool" else np.where(pad, -np.inf, -0.5 * np.arange(s) / s)


def _causal(kind, l=L, s=S):
    m = np.triu(np.ones((l, s), bool), k=1)
    return m if kind == "bool" else np.where(m, -np.inf, 0.0)


# ---------------------------------------------------------------------------- LayerNorm, GELU

@pytest.mark.parametrize("shape, affine, bias", [((E,), True, True), ((L, E), True, True),
                                                 ((E,), False, True), ((E,), True, False)])
def test_layer_norm(shape, affine, bias):
    mod = mg.nn.LayerNorm(shape, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=F64)
    tmod = _sync(mod, torch.nn.LayerNorm(shape, eps=1e-3, elementwise_affine=affine, bias=bias))
    _compare(mod, tmod, _inputs((B, L, E)), lambda m, x: (m(x),), lambda m, x: (m(x),))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    mod = mg.nn.GELU(approximate)
    x = _inputs((B, L, E))[0] * 3
    _compare(mod, torch.nn.GELU(approximate), [x], lambda m, x: (m(x),), lambda m, x: (m(x),))


# ---------------------------------------------------------------------------- attention

MHA_CASES = {
    "plain": {},
    "kpm-bool": {"key_padding_mask": "bool"},
    "kpm-float": {"key_padding_mask": "float"},
    "causal-bool": {"attn_mask": "bool"},
    "causal-float+kpm": {"attn_mask": "float", "key_padding_mask": "bool"},
    "mask-3d": {"attn_mask": "3d"},
    "per-head-weights": {"average_attn_weights": False},
    "no-bias": {"bias": False},
    "seq-first": {"batch_first": False},
    "unbatched": {"unbatched": True},
}


def _masks(case, l, s):
    kw = {}
    if "key_padding_mask" in case:
        kw["key_padding_mask"] = _kpm(case["key_padding_mask"], s=s)
    if case.get("attn_mask") == "3d":
        rng = np.random.default_rng(3)
        m = rng.uniform(-2, 0, (B * NHEAD, l, s))
        m[:, :, 0] = 0  # the first key stays visible in every row
        kw["attn_mask"] = np.where(rng.random(m.shape) < 0.3, -np.inf, m)
    elif "attn_mask" in case:
        kw["attn_mask"] = _causal(case["attn_mask"], l, s)
    return kw


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("name", MHA_CASES)
def test_multihead_attention(name, cross):
    """Values, gradients through both outputs (the attention weights too), every mask kind."""
    case = MHA_CASES[name]
    first = case.get("batch_first", True)
    mod = mg.nn.MultiheadAttention(E, NHEAD, bias=case.get("bias", True), batch_first=first,
                                   dtype=F64)
    tmod = _sync(mod, torch.nn.MultiheadAttention(E, NHEAD, bias=case.get("bias", True),
                                                  batch_first=first))
    s = S if cross else L
    kw = _masks(case, L, s)
    avg = case.get("average_attn_weights", True)

    def shape(n):
        return (n, E) if case.get("unbatched") else (B, n, E) if first else (n, B, E)

    arrays = _inputs(shape(L), shape(s))
    if case.get("unbatched"):
        kw = {k: v[0] if k == "key_padding_mask" else v for k, v in kw.items()}

    def fwd(m, q, kv=None, t=lambda a: a):
        k = kv if cross else q
        return m(q, k, k, need_weights=True, average_attn_weights=avg,
                 **{n: t(v) for n, v in kw.items()})

    _compare(mod, tmod, arrays if cross else arrays[:1], fwd,
             lambda m, q, kv=None: fwd(m, q, kv, torch.tensor))


def test_multihead_attention_kdim_vdim():
    mod = mg.nn.MultiheadAttention(E, NHEAD, kdim=5, vdim=3, dtype=F64)
    tmod = _sync(mod, torch.nn.MultiheadAttention(E, NHEAD, kdim=5, vdim=3, batch_first=True))
    kpm = _kpm("bool")
    _compare(mod, tmod, _inputs((B, L, E), (B, S, 5), (B, S, 3)),
             lambda m, q, k, v: m(q, k, v, key_padding_mask=kpm),
             lambda m, q, k, v: m(q, k, v, key_padding_mask=torch.tensor(kpm)))


@pytest.mark.parametrize("shapes", [(B, NHEAD), (B,), ()], ids=["4d", "3d", "2d"])
@pytest.mark.parametrize("kw", ["plain", "mask", "causal", "scale"])
def test_scaled_dot_product_attention(kw, shapes):
    rng = np.random.default_rng(4)
    mask = rng.random((*shapes, L, S)) < 0.7
    mask[..., 0] = True  # bool here means *may attend*, as torch's
    kw = {"plain": {}, "mask": {"attn_mask": mask}, "causal": {"is_causal": True},
          "scale": {"scale": 0.3}}[kw]
    tkw = {k: torch.tensor(v) if k == "attn_mask" else v for k, v in kw.items()}
    _compare(mg.nn.Module(), torch.nn.Module(),
             _inputs((*shapes, L, E), (*shapes, S, E), (*shapes, S, 3)),
             lambda m, *qkv: (mg.functional.scaled_dot_product_attention(*qkv, **kw),),
             lambda m, *qkv: (torch.nn.functional.scaled_dot_product_attention(*qkv, **tkw),))


# ---------------------------------------------------------------------------- layers, stacks

LAYER_CASES = [(norm_first, act, masked) for norm_first in (False, True)
               for act in ("relu", "gelu") for masked in (False, True)]
LAYER_IDS = [f"{'pre' if n else 'post'}-{a}{'-masked' if m else ''}" for n, a, m in LAYER_CASES]


def _layer_args(norm_first, act):
    return dict(dim_feedforward=16, dropout=0.0, activation=act, norm_first=norm_first,
                batch_first=True)


@pytest.mark.parametrize("norm_first, act, masked", LAYER_CASES, ids=LAYER_IDS)
def test_encoder_layer(norm_first, act, masked):
    args = _layer_args(norm_first, act)
    mod = mg.nn.TransformerEncoderLayer(E, NHEAD, dtype=F64, **args)
    tmod = _sync(mod, torch.nn.TransformerEncoderLayer(E, NHEAD, **args))
    kw = dict(src_mask=_causal("float", L, L), src_key_padding_mask=_kpm("bool", s=L)) \
        if masked else {}
    _compare(mod, tmod, _inputs((B, L, E)), lambda m, x: (m(x, **kw),),
             lambda m, x: (m(x, **{k: torch.tensor(v) for k, v in kw.items()}),))


@pytest.mark.parametrize("norm_first, act, masked", LAYER_CASES, ids=LAYER_IDS)
def test_decoder_layer(norm_first, act, masked):
    args = _layer_args(norm_first, act)
    mod = mg.nn.TransformerDecoderLayer(E, NHEAD, dtype=F64, **args)
    tmod = _sync(mod, torch.nn.TransformerDecoderLayer(E, NHEAD, **args))
    kw = dict(tgt_mask=_causal("bool", L, L), memory_key_padding_mask=_kpm("float")) \
        if masked else {}
    _compare(mod, tmod, _inputs((B, L, E), (B, S, E)), lambda m, x, mem: (m(x, mem, **kw),),
             lambda m, x, mem: (m(x, mem, **{k: torch.tensor(v) for k, v in kw.items()}),))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_stacks(norm_first):
    """Two-layer encoder (causal) and decoder stacks with a final LayerNorm each."""
    args = _layer_args(norm_first, "gelu")
    enc = mg.nn.TransformerEncoder(mg.nn.TransformerEncoderLayer(E, NHEAD, dtype=F64, **args), 2,
                                   norm=mg.nn.LayerNorm(E, dtype=F64))
    tenc = _sync(enc, torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(E, NHEAD,
                                                                                   **args),
                                                  2, norm=torch.nn.LayerNorm(E),
                                                  enable_nested_tensor=False))
    mask = _causal("float", L, L)
    _compare(enc, tenc, _inputs((B, L, E)), lambda m, x: (m(x, mask=mask, is_causal=True),),
             lambda m, x: (m(x, mask=torch.tensor(mask), is_causal=True),))
    dec = mg.nn.TransformerDecoder(mg.nn.TransformerDecoderLayer(E, NHEAD, dtype=F64, **args), 2,
                                   norm=mg.nn.LayerNorm(E, dtype=F64))
    tdec = _sync(dec, torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(E, NHEAD,
                                                                                   **args),
                                                  2, norm=torch.nn.LayerNorm(E)))
    kpm = _kpm("bool")
    _compare(dec, tdec, _inputs((B, L, E), (B, S, E)),
             lambda m, x, mem: (m(x, mem, tgt_mask=mask, memory_key_padding_mask=kpm),),
             lambda m, x, mem: (m(x, mem, tgt_mask=torch.tensor(mask),
                                  memory_key_padding_mask=torch.tensor(kpm)),))


def test_torch_weights_load_into_minigrad():
    """The other direction: torch's own initial weights, read with load_torch_state_dict,
    give torch's outputs (encoder and decoder stacks, pre-norm, GELU)."""
    torch.manual_seed(0)
    args = _layer_args(True, "gelu")
    tenc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(E, NHEAD, **args), 2,
                                       enable_nested_tensor=False).double()
    tdec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(E, NHEAD, **args),
                                       2).double()
    enc = mg.nn.TransformerEncoder(mg.nn.TransformerEncoderLayer(E, NHEAD, dtype=F64, **args), 2)
    dec = mg.nn.TransformerDecoder(mg.nn.TransformerDecoderLayer(E, NHEAD, dtype=F64, **args), 2)
    load_torch_state_dict(enc, tenc.state_dict())
    load_torch_state_dict(dec, tdec.state_dict())
    x, mem = _inputs((B, L, E), (B, S, E))
    with torch.no_grad():
        want = tdec(torch.tensor(x), tenc(torch.tensor(mem))).numpy()
    np.testing.assert_allclose(dec(mg.tensor(x), enc(mg.tensor(mem))).data, want, **TOL)
