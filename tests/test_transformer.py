"""The Transformer layers without torch: finite differences through whole layers, what the
masks do, dropout, the stacks' copies, positional embeddings, the models, and every error.

(``tests/test_torch_oracle_attention.py`` holds them to PyTorch when torch is installed.)
"""

import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from models.interop import load_torch_state_dict, to_torch_state_dict
from models.transformer import MaskedLM, TransformerLM

F64 = np.float64
B, L, S, E, H = 2, 4, 3, 6, 2


def rand(*shape, seed=0):
    return mg.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def causal(n):
    return np.triu(np.ones((n, n), bool), k=1)


# ---------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_gradients_by_finite_differences(norm_first, activation):
    mg.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 8, dropout=0.0, activation=activation,
                                       norm_first=norm_first, dtype=F64)
    pad = np.array([[False] * L, [False, False, True, True]])
    x = rand(B, L, E)
    assert mg.check_grads(lambda x, *ps: layer(x, src_mask=causal(L),
                                               src_key_padding_mask=pad),
                          x, *layer.parameters())


def test_decoder_stack_gradients_by_finite_differences():
    mg.manual_seed(0)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, 8, dropout=0.0, dtype=F64), 2,
                                norm=nn.LayerNorm(E, dtype=F64))
    x, mem = rand(B, L, E), rand(B, S, E, seed=1)
    assert mg.check_grads(lambda x, mem, *ps: dec(x, mem, tgt_is_causal=True), x, mem,
                          *dec.parameters())


# ---------------------------------------------------------------------------- masks

def test_masked_keys_get_exactly_zero_weight_and_rows_sum_to_one():
    mg.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    x = mg.randn(B, L, E)
    pad = np.array([[False] * L, [False, False, False, True]])
    out, w = mha(x, x, x, key_padding_mask=pad, attn_mask=causal(L),
                 average_attn_weights=False)
    assert out.shape == (B, L, E) and w.shape == (B, H, L, L)
    np.testing.assert_allclose(w.data.sum(-1), 1, rtol=1e-6)
    hidden = causal(L)[None, None] | pad[:, None, None, :]
    assert (w.data[np.broadcast_to(hidden, w.shape)] == 0).all()
    assert mha(x, x, x, need_weights=False)[1] is None
    avg = mha(x, x, x, key_padding_mask=pad, attn_mask=causal(L))[1]
    np.testing.assert_allclose(avg.data, w.data.mean(1), rtol=1e-6)


def test_is_causal_alone_builds_the_causal_mask():
    mg.manual_seed(0)
    mha, x = nn.MultiheadAttention(E, H), mg.randn(B, L, E)
    a, wa = mha(x, x, x, is_causal=True)
    b, wb = mha(x, x, x, attn_mask=causal(L))
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(wa.data, wb.data)


def test_a_float_mask_is_added_to_the_scores():
    """A float mask shifts the scores: -log 2 on one key halves its odds against the rest."""
    mg.manual_seed(0)
    q, k, v = (mg.randn(1, 1, 1, 4) for _ in range(3))
    k = mg.tensor(np.zeros((1, 1, 3, 4), np.float32))  # equal scores: uniform weights
    mask = np.array([-math.log(2), 0, 0], np.float32)
    out = mg.functional.scaled_dot_product_attention(q, k, mg.tensor(np.eye(3, 4)[None, None]
                                                                      .astype(np.float32)),
                                                     attn_mask=mask)
    np.testing.assert_allclose(out.data[0, 0, 0, :3], [0.2, 0.4, 0.4], rtol=1e-6)


@pytest.mark.parametrize("where", ["key_padding_mask", "attn_mask", "sdpa"])
def test_a_row_with_nothing_to_attend_to_is_an_error_not_nan(where):
    mg.manual_seed(0)
    mha, x = nn.MultiheadAttention(E, H), mg.randn(B, L, E)
    with pytest.raises(ValueError, match="every key is masked for query position"):
        if where == "key_padding_mask":
            mha(x, x, x, key_padding_mask=np.array([[False] * L, [True] * L]))
        elif where == "attn_mask":
            m = causal(L)
            m[2] = True
            mha(x, x, x, attn_mask=m)
        else:
            q = mg.randn(1, 1, L, E)
            mg.functional.scaled_dot_product_attention(q, q, q, attn_mask=np.zeros((L, L), bool))


def test_dropout_drops_weights_while_training_only():
    """Training: each weight is 0 or P/(1-p) (inverted dropout, as torch's need_weights);
    eval: P itself, the same on every call."""
    mg.manual_seed(0)
    mha, x = nn.MultiheadAttention(E, H, dropout=0.5), mg.randn(B, L, E)
    _, w = mha(x, x, x, average_attn_weights=False)
    mha.eval()
    a, p = mha(x, x, x, average_attn_weights=False)
    b, _ = mha(x, x, x)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(p.data.sum(-1), 1, rtol=1e-6)
    dropped = w.data == 0
    assert 0.2 < dropped.mean() < 0.8
    np.testing.assert_allclose(w.data[~dropped], 2 * p.data[~dropped], rtol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_and_sequence_first_inputs_give_the_batched_answer(batch_first):
    mg.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    q, kv = mg.randn(B, L, E), mg.randn(B, S, E)
    ref = nn.MultiheadAttention(E, H)
    ref.load_state_dict(mha.state_dict())
    want, w = ref(q, kv, kv)
    args = (q, kv, kv) if batch_first else (q.transpose(0, 1), kv.transpose(0, 1),
                                            kv.transpose(0, 1))
    out, w2 = mha(*args)
    np.testing.assert_allclose((out if batch_first else out.transpose(0, 1)).data, want.data,
                               rtol=1e-5, atol=1e-6)
    one, w1 = mha(q[1], kv[1], kv[1])
    assert one.shape == (L, E) and w1.shape == (L, S)
    np.testing.assert_allclose(one.data, want.data[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("build, match", [
    (lambda: nn.MultiheadAttention(6, 4), "divisible by num_heads"),
    (lambda: nn.MultiheadAttention(6, 2, dropout=1.0), r"dropout must be in \[0, 1\)"),
    (lambda: nn.MultiheadAttention(6, 2, add_bias_kv=True), "add_bias_kv"),
    (lambda: nn.LayerNorm(0), "positive integer"),
    (lambda: nn.LayerNorm(4, eps=0), "eps must be > 0"),
    (lambda: nn.GELU("fast"), "approximate must be 'none' or 'tanh'"),
    (lambda: nn.TransformerEncoderLayer(6, 2, activation="tanh"), "activation must be"),
])
def test_bad_arguments_are_refused_when_building(build, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        build()


def test_bad_inputs_fail_early_with_the_shapes():
    mg.manual_seed(0)
    mha, x = nn.MultiheadAttention(E, H), mg.randn(B, L, E)
    cases = [
        (lambda: mha(mg.randn(B, L, E + 1), x, x), ValueError, r"\(·, ·, 6\).*\(2, 4, 7\)"),
        (lambda: mha(x.double(), x, x), TypeError, "float64 but the module is float32"),
        (lambda: mha(mg.tensor(np.zeros((B, L, E), np.int64)), x, x), TypeError, "float input"),
        (lambda: mha(x, mg.randn(B + 1, S, E), mg.randn(B + 1, S, E)), ValueError, "batch"),
        (lambda: mha(x, x, x, key_padding_mask=np.zeros((B, L + 1), bool)), ValueError,
         r"key_padding_mask must have shape \(B, S\) = \(2, 4\)"),
        (lambda: mha(x, x, x, attn_mask=np.zeros((L, L + 1), bool)), ValueError,
         r"attn_mask must have shape \(L, S\) = \(4, 4\) or \(B·num_heads, L, S\)"),
        (lambda: mha(x, x, x, attn_mask=np.zeros((L, L), np.int64)), TypeError,
         "mask must be bool or float"),
        (lambda: mha(x[0], x, x), ValueError, "all be batched"),
        (lambda: nn.LayerNorm((3, E))(x), ValueError, r"does not end with normalized_shape"),
        (lambda: mg.functional.layer_norm(x, E, weight=mg.ones(E + 1)), ValueError,
         "weight has shape"),
        (lambda: mg.functional.linear(x, mg.ones(3, E + 1)), ValueError, r"\(\.\.\., I\)"),
        (lambda: mg.functional.linear(x, mg.ones(3, E).double()), TypeError,
         "must share one float dtype"),
        (lambda: mg.functional.scaled_dot_product_attention(x, x, mg.randn(B, L + 1, E)),
         ValueError, "expected query"),
        (lambda: mg.functional.scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3),
                                                                                       bool)),
         ValueError, "does not broadcast"),
        (lambda: nn.SinusoidalPositionalEmbedding(E, max_len=3)(x), ValueError,
         r"positions 0..3 are beyond max_len=3"),
        (lambda: TransformerLM(7, 8, 2, 1, 16, max_len=3).loss(np.zeros((2, 4), np.int64)),
         ValueError, "max_len=3"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


# ---------------------------------------------------------------------------- modules

def test_stacks_copy_the_layer_as_torch_does():
    """Independent parameters that start equal (PyTorch deep-copies the layer too)."""
    mg.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 8), 3)
    a, b = enc.layers[0].linear1.weight, enc.layers[2].linear1.weight
    assert a is not b and np.array_equal(a.data, b.data)
    assert len(list(enc.parameters())) == 3 * len(list(enc.layers[0].parameters()))


def test_positional_embeddings():
    pe = nn.SinusoidalPositionalEmbedding(6, max_len=10, dtype=F64)
    x = mg.tensor(np.zeros((2, 4, 6)))
    y = pe(x, offset=3).data[0]
    pos, i = np.arange(3, 7)[:, None], np.arange(3)[None, :]
    np.testing.assert_allclose(y[:, 0::2], np.sin(pos / 10000 ** (2 * i / 6)), atol=1e-15)
    np.testing.assert_allclose(y[:, 1::2], np.cos(pos / 10000 ** (2 * i / 6)), atol=1e-15)
    assert list(dict(pe.named_parameters())) == []  # fixed: nothing to learn
    learned = nn.LearnedPositionalEmbedding(10, 6, dtype=F64)
    out = learned(x, offset=2)
    out.sum().backward()
    np.testing.assert_array_equal(out.data[1], learned.weight.data[2:6])
    assert learned.weight.grad[2:6].tolist() == np.full((4, 6), 2.0).tolist()
    assert not learned.weight.grad[[0, 1, 6, 7, 8, 9]].any()


def test_transformer_names_are_torchs_and_round_trip():
    mg.manual_seed(0)
    layer = nn.TransformerDecoderLayer(E, H, 8)
    sd = to_torch_state_dict(layer)
    assert sorted(sd) == sorted(
        [f"{a}.{p}" for a in ("self_attn", "multihead_attn") for p in
         ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]
        + [f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3")
           for p in ("weight", "bias")])
    assert sd["self_attn.in_proj_weight"].shape == (3 * E, E)
    mg.manual_seed(1)
    other = nn.TransformerDecoderLayer(E, H, 8)
    load_torch_state_dict(other, sd)
    for (n, p), (_, q) in zip(layer.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    sep = nn.MultiheadAttention(E, H, kdim=4, vdim=5, bias=False)
    assert sorted(to_torch_state_dict(sep)) == ["k_proj_weight", "out_proj.weight",
                                                "q_proj_weight", "v_proj_weight"]


# ---------------------------------------------------------------------------- models

def test_transformer_lm_feeds_one_token_at_a_time_like_the_whole_sequence():
    mg.manual_seed(0)
    lm = TransformerLM(9, 8, 2, 2, 16).eval()
    ids = np.random.default_rng(0).integers(0, 9, (2, 5))
    full, _ = lm(ids)
    logits, state = lm(ids[:, :2])
    for t in range(2, 5):
        logits, state = lm(ids[:, t:t + 1], state)
        np.testing.assert_allclose(logits.data[:, 0], full.data[:, t], rtol=1e-5, atol=1e-6)
    assert len(lm.sample(3, max_len=6, seed=0)) == 3
    maps = lm.attention_maps(ids)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 5, 5)
    assert (maps[1][..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0).all()


def test_causality_the_past_does_not_see_the_future():
    mg.manual_seed(0)
    lm = TransformerLM(9, 8, 2, 2, 16)
    a = np.array([[3, 4, 5, 6]])
    b = np.array([[3, 4, 8, 1]])
    np.testing.assert_array_equal(lm(a)[0].data[:, :2], lm(b)[0].data[:, :2])
    assert not np.allclose(lm(a)[0].data[:, 2:], lm(b)[0].data[:, 2:])


def test_albert_shares_layers_and_factorises_the_embedding():
    kw = dict(d_model=32, nhead=2, num_layers=4, dim_feedforward=64, dropout=0.0)
    mg.manual_seed(0)
    bert = MaskedLM(500, **kw)
    albert = MaskedLM(500, embedding_dim=8, share_layers=True, **kw)
    layer = sum(p.size for p in bert.encoder.layers[0].parameters())
    V, Hd, Ed, P = 500, 32, 8, 64  # vocabulary, hidden, ALBERT's embedding size, positions
    # embeddings (tokens, positions, LayerNorm) + [E→H] + layers + head (H→E, LayerNorm) + bias
    assert bert.num_parameters() == V * Hd + P * Hd + 2 * Hd + 4 * layer + Hd * Hd + Hd \
        + 2 * Hd + V
    assert albert.num_parameters() == V * Ed + P * Ed + 2 * Ed + Ed * Hd + Hd + layer \
        + Hd * Ed + Ed + 2 * Ed + V
    ids = np.random.default_rng(0).integers(3, 500, (2, 7))
    targets = np.full((2, 7), -1)
    targets[0, 2], targets[1, 5] = ids[0, 2], ids[1, 5]
    loss = albert.loss(ids, targets)
    loss.backward()
    assert albert.layer.linear1.weight.grad is not None
    logits = albert(ids)
    want = -(logits.log_softmax(-1).data[[0, 1], [2, 5], [ids[0, 2], ids[1, 5]]]).mean()
    assert float(loss.data) == pytest.approx(float(want), rel=1e-5)
