"""``mg.compile``: a whole function (a training step) traced and run as one tape node.

The eager tape is the reference: compiled equals eager in float64, the loss and every
gradient, for the language model and seq2seq (``loss`` is compiled by default), a tagger
and a classifier, and a cell of the user's own; the Transformer LM's (float32) to the bit.
A function the compiler cannot follow says why, once, and runs eagerly; a compiled call
that silently ran eagerly fails these tests (``compiled_calls``)."""

import copy
import warnings

import numpy as np
import pytest

import minigrad as mg
from minigrad.nn import Module, Parameter, init
from models.language_model import LanguageModel
from models.layers import LSTM, Recurrent, SequenceClassifier, SequenceTagger

F64 = np.float64


def _f64(model):
    for p in model.parameters():
        p.data = p.data.astype(F64)
    return model


def _lm(compiled, **kw):
    mg.manual_seed(0)
    return _f64(LanguageModel(11, 7, dtype=F64, compiled=compiled, **kw))


def _grads(model):
    return [None if p.grad is None else p.grad.copy() for p in model.parameters()]


def _run(model, seed, call, *args, **kwargs):
    model.zero_grad()
    mg.manual_seed(seed)  # the same dropout draws on both paths
    out = call(*args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return out, _grads(model)


def _assert_same(got, want):
    (out_g, grads_g), (out_w, grads_w) = got, want
    flat_g, flat_w = _leaves(out_g), _leaves(out_w)
    assert len(flat_g) == len(flat_w)
    for g, w in zip(flat_g, flat_w):
        np.testing.assert_allclose(g.data, w.data, rtol=1e-10, atol=1e-12)
    for g, w in zip(grads_g, grads_w):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def _leaves(x):
    if isinstance(x, (tuple, list)):
        return [leaf for a in x for leaf in _leaves(a)]
    return [x]


@pytest.mark.parametrize("cell, layers, embedding_dim, padded, dropout", [
    ("lstm", 1, None, True, 0.0),
    ("gru", 2, None, False, 0.3),
    ("rnn", 1, 5, True, 0.0),
    ("lstm", 2, 5, True, 0.25),
])
def test_language_model_loss_is_compiled_and_equals_eager(cell, layers, embedding_dim, padded,
                                                           dropout):
    kw = dict(cell=cell, num_layers=layers, embedding_dim=embedding_dim, dropout=dropout)
    fast, ref = _lm(True, **kw), _lm(False, **kw)
    rng = np.random.default_rng(1)
    for step in range(4):  # traced, traced and compared, then compiled twice
        ids = rng.integers(3, 11, (4, 6))
        lengths = rng.integers(1, 7, 4) if padded else None
        _assert_same(_run(fast, step, fast.loss, ids, lengths),
                     _run(ref, step, ref.loss, ids, lengths))
    assert fast._step.compiled_calls == 2  # the last two ran the compiled program


@pytest.mark.parametrize("cell, bidirectional, attention, embedding_dim", [
    ("gru", False, False, None),
    ("lstm", True, True, 5),
    ("rnn", True, False, 5),
])
def test_seq2seq_loss_is_compiled_and_equals_eager(cell, bidirectional, attention,
                                                   embedding_dim):
    from models.seq2seq import Seq2Seq
    kw = dict(cell=cell, num_layers=2, bidirectional_encoder=bidirectional,
              attention=attention, embedding_dim=embedding_dim, dtype=F64)
    mg.manual_seed(0)
    fast = Seq2Seq(9, 10, 6, **kw)
    ref = Seq2Seq(9, 10, 6, compiled=False, **kw)
    ref.load_state_dict(fast.state_dict())
    rng = np.random.default_rng(2)
    for step in range(6):  # padded and unpadded sources: two signatures, each compiled
        src, tgt = rng.integers(3, 9, (3, 5)), rng.integers(3, 10, (3, 4))
        src_lengths = np.array([5, 2, 4]) if step % 2 else None
        tgt_lengths = rng.integers(1, 5, 3)
        _assert_same(_run(fast, step, fast.loss, src, src_lengths, tgt, tgt_lengths),
                     _run(ref, step, ref.loss, src, src_lengths, tgt, tgt_lengths))
    assert fast._step.compiled_calls == 2


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_transformer_lm_loss_is_compiled_and_equals_eager(dropout):
    from models.transformer import TransformerLM
    kw = dict(d_model=8, nhead=2, num_layers=2, dim_feedforward=16, max_len=8, dropout=dropout)
    mg.manual_seed(0)
    fast, ref = TransformerLM(11, **kw), TransformerLM(11, compiled=False, **kw)
    ref.load_state_dict(fast.state_dict())
    rng = np.random.default_rng(3)  # (float32, as the model is: the same operations run)
    for step in range(4):  # dropout in attention and feed-forward draws the same on both
        ids, lengths = rng.integers(3, 11, (4, 6)), rng.integers(1, 7, 4)
        _assert_same(_run(fast, step, fast.loss, ids, lengths),
                     _run(ref, step, ref.loss, ids, lengths))
    assert fast._step.compiled_calls == 2


@pytest.mark.parametrize("albert", [False, True])
def test_bert_loss_with_key_padding_is_compiled_and_equals_eager(albert):
    from models.transformer import MaskedLM
    kw = dict(d_model=8, nhead=2, num_layers=2, dim_feedforward=16, max_len=8, dropout=0.1)
    if albert:  # factorised embedding, one layer applied at every depth
        kw.update(embedding_dim=4, share_layers=True)
    mg.manual_seed(0)
    fast, ref = MaskedLM(11, **kw), MaskedLM(11, compiled=False, **kw)
    ref.load_state_dict(fast.state_dict())
    rng = np.random.default_rng(4)
    for step in range(4):  # the padding differs per call: a tensor, not a static
        ids = rng.integers(3, 11, (4, 6))
        pad = np.arange(6)[None, :] >= rng.integers(1, 7, 4)[:, None]
        targets = np.where(rng.random((4, 6)) < 0.4, ids, -1)
        targets[:, 0] = ids[:, 0]
        (lf, gf), (lr, gr) = (_run(m, step, m.loss, ids, targets, pad) for m in (fast, ref))
        np.testing.assert_allclose(lf.data, lr.data, rtol=1e-6)
        for g, w in zip(gf, gr):  # float32; a shared layer's gradients add in another order
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    assert fast._step.compiled_calls == 2
    with pytest.raises(ValueError, match="every key is masked"):  # checked on every call
        fast.loss(ids, targets, np.ones((4, 6), bool))
    ids[0, 0] = 11
    with pytest.raises(IndexError, match="MaskedLM.loss: input 11 is out of range"):
        fast.loss(ids, targets, pad)


def test_truncated_bptt_carries_the_state_through_the_compiled_loss():
    fast, ref = _lm(True, cell="lstm"), _lm(False, cell="lstm")
    rng = np.random.default_rng(2)
    states = [None, None]
    for _ in range(4):
        x, y = rng.integers(3, 11, (2, 5)), rng.integers(3, 11, (2, 5))
        got = _run(fast, 0, fast.loss, y, inputs=x, state=states[0])
        want = _run(ref, 0, ref.loss, y, inputs=x, state=states[1])
        _assert_same(got, want)
        states = [tuple(s.detach() for s in r[0][1]) for r in (got, want)]
    assert fast._step.compiled_calls == 1  # (the first call, without a state, is another)


class MinimalGatedUnit(Module):
    """A cell of the user's own: f = σ(W_f[a, x] + b_f); a~ = tanh(W_a[f * a, x] + b_a);
    a<t> = (1 - f) * a<t-1> + f * a~."""

    def __init__(self, input_size, hidden_size, dtype=F64):
        super().__init__()
        self.input_size, self.hidden_size, H, I = input_size, hidden_size, hidden_size, input_size
        self.W_f = init.rnn_uniform_(Parameter(np.zeros((H, H + I), dtype)), H)
        self.b_f = Parameter(np.zeros(H, dtype))
        self.W_a = init.rnn_uniform_(Parameter(np.zeros((H, H + I), dtype)), H)
        self.b_a = Parameter(np.zeros(H, dtype))

    def forward(self, x, a):
        f = (mg.concat([a, x], axis=1) @ self.W_f.T + self.b_f).sigmoid()
        a_tilde = (mg.concat([f * a, x], axis=1) @ self.W_a.T + self.b_a).tanh()
        return (1 - f) * a + f * a_tilde


def _models():
    mg.manual_seed(3)
    tagger = _f64(SequenceTagger(LSTM(4, 5, bidirectional=True, dtype=F64), 3))
    classifier = _f64(SequenceClassifier(LSTM(4, 5, num_layers=2, dtype=F64), 3))
    user = _f64(SequenceTagger(Recurrent(MinimalGatedUnit(4, 5)), 3))
    return {"tagger": tagger, "classifier": classifier, "user cell": user}


@pytest.mark.parametrize("name", ["tagger", "classifier", "user cell"])
def test_a_training_step_of_the_users_own_compiles_and_equals_eager(name):
    model = _models()[name]

    def step(x, y, mask):
        logits = model(x, mask=mask)
        return mg.cross_entropy(logits, y, mask=mask if logits.ndim == 3 else None)

    compiled = mg.compile(step)
    rng = np.random.default_rng(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.CompileFallbackWarning)
        for i in range(4):
            x = rng.standard_normal((3, 6, 4))
            lengths = rng.integers(1, 7, 3)
            mask = np.arange(6)[None, :] < lengths[:, None]
            y = rng.integers(0, 3, (3, 6) if name != "classifier" else (3,))
            got = _run(model, i, compiled, x, y, mask)
            want = _run(model, i, step, mg.tensor(x), mg.tensor(y), mg.tensor(mask))
            _assert_same(got, want)
    assert compiled.compiled_calls == 2
    assert "scan[" in repr(compiled.program(x, y, mask))


def test_numpy_on_the_data_runs_eagerly_with_one_warning_that_says_why():
    w = Parameter(np.ones(3))

    def fn(x):
        doubled = mg.tensor(x.data * 2.0)  # NumPy on the data: not an operation it can trace
        return (doubled * w).sum()

    compiled = mg.compile(fn)
    assert compiled.why is None
    with pytest.warns(mg.CompileFallbackWarning, match="from NumPy data") as caught:
        values = [float(compiled(np.full(3, float(i))).data) for i in range(4)]
    assert len(caught) == 1 and "from NumPy data" in compiled.why  # (the reason, kept)
    assert values == [0.0, 6.0, 12.0, 18.0]  # right on every call, eager after the check
    assert compiled.compiled_calls == 0


def test_python_branching_on_the_data_runs_eagerly():
    w = Parameter(np.ones(3))

    def fn(x):
        return (x * w).sum() if float(x.data[0]) > 0 else (x * w).exp().sum()

    compiled = mg.compile(fn)
    with pytest.warns(mg.CompileFallbackWarning, match="different sequence"):
        got = [float(compiled(np.array([s, 1.0, 2.0])).data) for s in (1.0, -1.0, -2.0, 3.0)]
    want = [float(fn(mg.tensor(np.array([s, 1.0, 2.0]))).data) for s in (1.0, -1.0, -2.0, 3.0)]
    assert got == want


@pytest.mark.parametrize("bad", [42, None, "loss"])
def test_compiling_something_that_is_not_callable_is_refused_at_once(bad):
    with pytest.raises(TypeError, match=rf"mg.compile: expected a function.*{type(bad).__name__}"):
        mg.compile(bad)


def test_a_static_value_read_off_the_data_runs_eagerly():
    w = Parameter(np.arange(1.0, 4.0))

    def fn(x):
        return (x * w)[int(np.argmax(x.data))]  # an index computed with NumPy from the data

    compiled = mg.compile(fn)
    xs = [np.array([3.0, 1.0, 2.0]), np.array([1.0, 5.0, 2.0]), np.array([0.0, 1.0, 9.0])]
    with pytest.warns(mg.CompileFallbackWarning, match="an argument of getitem differs"):
        assert [compiled(x).item() for x in xs] == [3.0, 10.0, 27.0]
    assert compiled.compiled_calls == 0


def test_a_new_shape_and_eval_mode_are_new_signatures():
    fast, ref = _lm(True, cell="gru", dropout=0.5), _lm(False, cell="gru", dropout=0.5)
    rng = np.random.default_rng(5)
    for shape in [(2, 4), (3, 5), (2, 4), (3, 5), (2, 4)]:
        for m in (fast, ref):
            m.train(shape != (3, 5))  # (3, 5) in eval mode: no dropout there
        ids = rng.integers(3, 11, shape)
        _assert_same(_run(fast, 7, fast.loss, ids), _run(ref, 7, ref.loss, ids))
    assert fast._step.compiled_calls == 1  # the fifth call: (2, 4) was traced twice before


def test_a_parameter_frozen_after_compiling_gets_no_gradient_and_unfrozen_gets_it_again():
    fast, ref = _lm(True, cell="lstm"), _lm(False, cell="lstm")
    ids = np.random.default_rng(6).integers(3, 11, (2, 4))
    for _ in range(3):
        _assert_same(_run(fast, 0, fast.loss, ids), _run(ref, 0, ref.loss, ids))
    for m in (fast, ref):
        m.out.weight.requires_grad = False
    for _ in range(3):
        got, want = _run(fast, 0, fast.loss, ids), _run(ref, 0, ref.loss, ids)
        assert fast.out.weight.grad is None
        _assert_same(got, want)
    fast.out.weight.requires_grad = ref.out.weight.requires_grad = True
    _assert_same(_run(fast, 0, fast.loss, ids), _run(ref, 0, ref.loss, ids))
    assert fast.out.weight.grad is not None


def _classifier():
    mg.manual_seed(3)
    return _f64(mg.nn.Sequential(mg.nn.Linear(4, 8, dtype=F64), mg.nn.Tanh(),
                                 mg.nn.Dropout(0.5), mg.nn.Linear(8, 2, dtype=F64)))


def test_a_model_reached_through_an_object_is_watched_for_eval_mode():
    # The function's closure holds no module (the model hangs off a plain object, as a
    # global would): the modules a trace calls are what the signature's flags come from.
    class Holder:
        model = _classifier()

    step = mg.compile(lambda x: Holder.model(x).sum())
    x = np.random.default_rng(0).standard_normal((16, 4))
    for _ in range(3):
        step(x)
    assert step.compiled_calls == 1
    Holder.model.eval()  # no dropout now: every call is the same number, eager's
    want = Holder.model(mg.tensor(x)).sum().item()
    got = [step(x).item() for _ in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert step.compiled_calls == 3  # traced twice in eval mode, then compiled again


@pytest.mark.parametrize("edit", ["layer", "parameter", "deleted bias", "prebuilt layer",
                                  "appended layer"])
def test_replacing_a_layer_or_parameter_after_compiling_traces_afresh(edit):
    ref, model = _classifier(), _classifier()
    spare = {}
    for m in (ref, model):  # built before compiling: no module is made after the calls
        mg.manual_seed(9)
        spare[m] = (mg.nn.Linear(8, 2, dtype=F64), mg.nn.Linear(2, 2, dtype=F64))
    step = mg.compile(lambda x: (model(x) ** 2).sum())
    x = np.random.default_rng(1).standard_normal((5, 4))
    for m in (ref, model):
        m.eval()
    for _ in range(3):
        step(x)
    assert step.compiled_calls == 1
    for m in (ref, model):  # the same edit on both
        mg.manual_seed(9)
        if edit == "layer":
            m[3] = mg.nn.Linear(8, 2, dtype=F64)
        elif edit == "parameter":
            m[0].weight = Parameter(np.random.default_rng(2).standard_normal((8, 4)))
        elif edit == "deleted bias":
            m[3].bias = None
        elif edit == "prebuilt layer":
            m[3] = spare[m][0]
        else:
            m.append(spare[m][1])
    for _ in range(3):  # the old weights are read by no call: eager's values and gradients
        _assert_same(_run(model, 0, step, x), _run(ref, 0, lambda x: (ref(x) ** 2).sum(), x))
    assert step.compiled_calls == 2


def test_dicts_and_named_tuples_in_and_out_compile_and_keep_their_types():
    # A batch as a dict, the result as a dict and as a named tuple (PyTorch habits): the
    # compiled calls give back the same containers with this call's values.
    import collections
    Out = collections.namedtuple("Out", "loss total")
    ref, model = _classifier(), _classifier()
    for m in (ref, model):
        m.eval()

    def loss(m, batch):
        y = m(batch["x"])
        return {"loss": ((y - batch["y"]) ** 2).sum()}, Out(y.mean(), y.sum())

    step = mg.compile(lambda batch: loss(model, batch))
    rng = np.random.default_rng(4)
    for _ in range(4):
        batch = {"x": rng.standard_normal((5, 4)), "y": rng.standard_normal((5, 2))}
        runs = []
        for m, fn in ((model, step), (ref, lambda b: loss(ref, b))):
            m.zero_grad()
            d, out = fn(batch)
            assert type(d) is dict and list(d) == ["loss"] and type(out) is Out
            d["loss"].backward()
            runs.append(((d["loss"], out.loss, out.total), _grads(m)))
        _assert_same(*runs)
    assert step.compiled_calls == 2


@pytest.mark.parametrize("cut", ["no_grad", "detach"])
def test_no_grad_blocks_and_detach_inside_a_compiled_function_stop_the_gradient(cut):
    # A value computed under no_grad (or detached) feeds the loss: no gradient flows back
    # through it on the tape, and none may in the compiled program (it had: wrong weight
    # gradients, silently); detach had made the function run eagerly.
    def loss(m, x):
        y = m(x)
        if cut == "no_grad":
            with mg.no_grad():
                w = m(x).tanh() * 2.0
        else:
            w = m(x).tanh().detach() * 2.0
        return (y * w).sum()

    ref, model = _classifier(), _classifier()
    for m in (ref, model):
        m.eval()
    step = mg.compile(lambda x: loss(model, x))
    x = np.random.default_rng(5).standard_normal((6, 4))
    for _ in range(4):
        _assert_same(_run(model, 0, step, x), _run(ref, 0, lambda x: loss(ref, x), x))
    assert step.compiled_calls == 2
    assert "stop_gradient" in repr(step.program(x))


@pytest.mark.parametrize("inside", ["backward", "step", "both"])
def test_a_function_that_calls_backward_or_step_compiles_and_replays_them(inside):
    # Had run eagerly (a compiled call ran the equations only: the weights had stopped
    # changing after two calls).  Now the calls are effects, replayed after the equations.
    ref, model = _classifier().eval(), _classifier().eval()
    opts = {m: mg.optim.SGD(m.parameters(), lr=0.05) for m in (ref, model)}
    x = np.random.default_rng(6).standard_normal((6, 4))

    def train(m, x):
        loss = (m(x) ** 2).sum()
        if inside != "step":
            opts[m].zero_grad()
            loss.backward()
        if inside != "backward":
            opts[m].step()  # ("step": the gradients of the previous call, backward outside)
        return loss

    step = mg.compile(lambda x: train(model, x))
    for _ in range(5):
        losses = []
        for m, fn in ((model, step), (ref, lambda x: train(ref, x))):
            losses.append(fn(x))
            if inside == "backward":
                opts[m].step()
            elif inside == "step":
                opts[m].zero_grad()
                losses[-1].backward()
        np.testing.assert_allclose(losses[0].data, losses[1].data, rtol=1e-12)
        for p, q in zip(model.parameters(), ref.parameters()):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-12)
    assert step.compiled_calls == 3
    assert "then SGD.step()" in repr(step.program(x)) or inside == "backward"


@pytest.mark.parametrize("cell, opt, clip", [("lstm", "adam", "norm"), ("gru", "sgd", "value")])
def test_a_whole_training_step_compiles_and_equals_eager(cell, opt, clip):
    # The language model's step with everything a user puts in it: zero_grad, backward,
    # clipping, the optimizer's and a scheduler's step, dropout (the same draws).
    models = [_lm(True, cell=cell, num_layers=2, dropout=0.2), _lm(False, cell=cell,
                                                                  num_layers=2, dropout=0.2)]
    make = {"adam": lambda ps: mg.optim.Adam(ps, lr=0.01),
            "sgd": lambda ps: mg.optim.SGD(ps, lr=0.5, momentum=0.9)}[opt]
    opts = [make(m.parameters()) for m in models]
    scheds = [mg.optim.StepLR(o, step_size=2, gamma=0.5) for o in opts]

    def train(k, ids, lengths):  # (traced, model.loss shifts and masks with rows)
        loss = models[k].loss(ids, lengths)[0]
        opts[k].zero_grad()
        loss.backward()
        if clip == "norm":
            mg.optim.clip_grad_norm_(models[k].parameters(), 0.05)  # (it clips every step)
        else:
            mg.optim.clip_grad_value_(models[k].parameters(), 1e-3)
        opts[k].step()
        scheds[k].step()
        return loss

    step = mg.compile(lambda ids, lengths: train(0, ids, lengths))
    rng = np.random.default_rng(3)
    for i in range(6):
        ids, lengths = rng.integers(3, 11, (4, 6)), rng.integers(1, 7, 4)
        mg.manual_seed(i)
        got = step(ids, lengths)
        mg.manual_seed(i)
        want = train(1, ids, lengths)
        np.testing.assert_allclose(got.data, want.data, rtol=1e-10)
        assert got.requires_grad == (i < 2) and want.requires_grad  # (compiled: no tape)
        assert opts[0].lr == opts[1].lr
        for p, q in zip(*(m.parameters() for m in models)):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12)
    assert step.compiled_calls == 4
    assert opts[0].lr == opts[1].lr < 0.2 * (0.01 if opt == "adam" else 0.5)
    shown = repr(step.program(ids, lengths))
    assert "scan[" in shown and shown.index("backward()") < shown.index(".step()")


def test_a_function_that_uses_a_parameter_after_step_runs_eagerly_and_says_so():
    # A compiled call runs the equations, then the effects: a forward after step() would
    # read the weights from before the step.
    ref, model = _classifier().eval(), _classifier().eval()
    opts = {m: mg.optim.SGD(m.parameters(), lr=0.05) for m in (ref, model)}
    x = np.random.default_rng(8).standard_normal((6, 4))

    def train(m, x):
        loss = (m(x) ** 2).sum()
        opts[m].zero_grad()
        loss.backward()
        opts[m].step()
        return loss, (m(x) ** 2).sum()  # the loss after the step

    step = mg.compile(lambda x: train(model, x))
    with pytest.warns(mg.CompileFallbackWarning, match=r"to a parameter after SGD\.zero_grad"):
        for _ in range(4):
            got, want = step(x), train(ref, x)
            np.testing.assert_allclose(got[1].data, want[1].data, rtol=1e-12)
    assert step.compiled_calls == 0


def test_a_function_that_returns_a_python_number_runs_eagerly_and_says_so():
    # A number read off the data (a metric's .item()) equal in the two traced calls had been
    # built into the program: every compiled call returned the traced call's number.
    model = _classifier().eval()
    step = mg.compile(lambda x: ((model(x) ** 2).sum(), float((model(x) > 0).data.sum())))
    rng = np.random.default_rng(9)
    with pytest.warns(mg.CompileFallbackWarning, match="returns a Python number"):
        for x in [np.ones((4, 4))] * 2 + [rng.standard_normal((4, 4)) for _ in range(3)]:
            assert step(x)[1] == float((model(mg.tensor(x)) > 0).data.sum())


def test_one_tensor_passed_twice_and_two_tensors_are_different_signatures():
    # Traced as f(x, x), both arguments were one input: f(a, b) then read b twice.
    f = mg.compile(lambda a, b: (a * 2.0 + b).sum())
    x, a, b = (mg.tensor(np.full(3, v)) for v in (1.0, 1.0, 0.0))
    for _ in range(3):
        assert f(x, x).item() == 9.0
    for _ in range(3):
        assert f(a, b).item() == 6.0
    assert f(x, x).item() == 9.0 and f.compiled_calls == 3
    w = mg.tensor(np.ones(3), requires_grad=True)  # its gradient counted once, not twice
    for _ in range(4):
        w.grad = None
        f(w, w).backward()
        assert np.array_equal(w.grad, np.full(3, 3.0))
    assert f.compiled_calls == 5
    # and a parameter the function reads, passed as the argument too
    model, ones = _classifier().eval(), mg.tensor(np.ones((2, 4)))
    g = mg.compile(lambda w: (model(ones) * w).sum())
    w2 = mg.tensor(np.linspace(0, 1, 2), requires_grad=True)
    for w in [model[3].bias] * 3 + [w2] * 3:
        assert g(w).item() == pytest.approx((model(ones) * w).sum().item(), rel=1e-12)
    assert g.compiled_calls == 2


def test_a_training_steps_backward_runs_without_the_tape_unless_an_input_has_a_graph():
    # A compiled call runs its loss's backward() itself, no tape node: each input tensor's
    # gradient added to its .grad as the walk would (accumulating, a tensor passed twice
    # once); an argument with a graph of its own keeps the tape, which goes on through it.
    def f(a, b):
        loss = (a * b * b).sum() * scale  # (scale 0-d: its gradient a NumPy scalar, made an
        loss.backward()                   # array as the tape makes it)
        return loss

    step, rng = mg.compile(f), np.random.default_rng(2)
    w, v = (mg.tensor(rng.standard_normal(3), requires_grad=True) for _ in range(2))
    scale = mg.tensor(np.array(1.0), requires_grad=True)
    for i in range(4):  # (no zero_grad: the gradients add up, as eagerly)
        scale.grad = None
        loss = step(w, v)
        assert loss.item() == pytest.approx(float((w.data * v.data ** 2).sum()), rel=1e-12)
        assert loss.requires_grad == (i < 2)  # the two traced calls are eager
        np.testing.assert_allclose(w.grad, (i + 1) * v.data ** 2, rtol=1e-12)
        np.testing.assert_allclose(v.grad, (i + 1) * 2 * w.data * v.data, rtol=1e-12)
        assert type(scale.grad) is np.ndarray and scale.grad.shape == ()
        assert scale.grad == pytest.approx(float((w.data * v.data ** 2).sum()), rel=1e-12)
    with pytest.raises(RuntimeError, match="training step, whose own backward"):
        loss.backward()  # (its backward ran inside the call: the loss has no graph left)
    for _ in range(3):
        w.grad = None
        step(w, w)
        np.testing.assert_allclose(w.grad, 3 * w.data ** 2, rtol=1e-12)
    for _ in range(3):
        w.grad = v.grad = None
        loss = step(w * 3.0, v)  # (w * 3 is no leaf: its graph goes on to w)
        assert loss.requires_grad
        np.testing.assert_allclose(w.grad, 3 * v.data ** 2, rtol=1e-12)
    assert step.compiled_calls == 2 + 1 + 3  # (w * 3 and v: the signature of w and v)


def test_a_method_decorated_with_compile_is_compiled_per_instance():
    # @mg.compile on forward, as with torch.compile: it had been called without self.
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.body = _classifier()

        def forward(self, x):
            return self.body(x).sum()

    class Compiled(Net):
        forward = mg.compile(Net.forward)

    x = np.random.default_rng(11).standard_normal((3, 4))
    nets = [Compiled(), Compiled()]
    refs = [Net(), Net()]
    for mode in (True, False):
        for net, ref in zip(nets, refs):
            net.train(mode), ref.train(mode)
            for _ in range(3):
                _assert_same(_run(net, 0, net, x), _run(ref, 0, ref, x))
    assert [net.forward.compiled_calls for net in nets] == [2, 2]  # (per mode: 2 traced, 1)
    import gc
    import weakref
    gone = weakref.ref(nets.pop())
    del net
    gc.collect()
    assert gone() is None  # (an instance's compiled method goes with it)


def test_retain_grad_inside_a_compiled_function_runs_it_eagerly():
    model = _classifier().eval()

    def f(x):
        h = model(x).tanh()
        h.retain_grad()
        return (h * h).sum(), h

    step = mg.compile(f)
    x = np.random.default_rng(7).standard_normal((3, 4))
    with pytest.warns(mg.CompileFallbackWarning, match=r"it calls retain_grad\(\)"):
        for _ in range(3):  # (compiled calls had left h.grad None)
            loss, h = step(x)
            loss.backward()
            np.testing.assert_allclose(h.grad, 2 * h.data, rtol=1e-12)


def test_a_number_that_changes_every_call_stops_tracing_after_a_bound_and_says_so():
    # Each new Python number is a new signature, traced twice and never reused: the cache
    # had grown by one trace per call, silently.  Passed as a tensor, it compiles once.
    from minigrad.compiler import function
    model = _classifier().eval()
    x = np.random.default_rng(8).standard_normal((3, 4))
    step = mg.compile(lambda x, s: (model(x) * s).sum())
    with pytest.warns(mg.CompileFallbackWarning, match="signatures were traced already"):
        for i in range(function.SIGNATURES + 10):
            got = step(x, i / 7).item()
    assert len(step._cache) == function.SIGNATURES
    np.testing.assert_allclose(got, (model(mg.tensor(x)) * ((i) / 7)).sum().item(), rtol=1e-12)
    step = mg.compile(lambda x, s: (model(x) * s).sum())
    for i in range(5):
        np.testing.assert_allclose(step(x, np.array(i / 7)).item(),
                                   (model(mg.tensor(x)) * (i / 7)).sum().item(), rtol=1e-12)
    assert step.compiled_calls == 3


def test_parameters_given_another_dtype_are_traced_afresh_not_run_in_the_old_program(capfd):
    # float32 parameters made float64 after compiling: the compiled program had run the
    # float32 loops on them (MKL: "Parameter 11 was incorrect", and a loss came back) where
    # the eager step refuses the mix of float64 weights and a float32 state.
    ids = np.random.default_rng(12).integers(3, 11, (4, 6))
    lms = []
    for compiled in (True, False):
        mg.manual_seed(0)
        lms.append(LanguageModel(11, 8, cell="lstm", compiled=compiled))
    for _ in range(3):
        lms[0].loss(ids)
    errors = []
    for lm in lms:
        for p in lm.parameters():
            p.data = p.data.astype(F64)
        with pytest.raises(ValueError, match="must return the new state") as caught:
            lm.loss(ids)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "MKL ERROR" not in capfd.readouterr().err


def test_ids_out_of_range_are_refused_on_a_compiled_call():
    lm = _lm(True, cell="rnn")
    ids = np.random.default_rng(7).integers(3, 11, (2, 4))
    for _ in range(3):
        lm.loss(ids)
    assert lm._step.compiled_calls == 1
    bad = ids.copy()
    bad[1, 2] = 11
    with pytest.raises(IndexError, match="11 is out of range"):
        lm.loss(bad)

    # a function of the user's own: the row itself checks the targets
    logits_w = Parameter(np.zeros((4, 3)))
    step = mg.compile(lambda x, y: mg.cross_entropy(x @ logits_w, y))
    x = np.ones((2, 4))
    for _ in range(3):
        step(x, np.array([0, 2]))
    assert step.compiled_calls == 1
    with pytest.raises(IndexError, match="target 3 is out of range"):
        step(x, np.array([0, 3]))


def test_the_compiled_program_prints_the_step_and_a_copied_model_compiles_its_own():
    lm = _lm(True, cell="lstm")
    ids = np.random.default_rng(8).integers(3, 11, (2, 4))
    for _ in range(2):
        lm.loss(ids)
    text = repr(lm._step.program(ids, ids, None, None, "mean"))
    for part in ("scan[LSTMCell]", "matmul", "cross_entropy", "full[shape=(2,7)"):
        assert part in text, text
    twin = copy.deepcopy(lm)
    for p in twin.parameters():
        p.data = p.data * 0.5
    for _ in range(3):
        a, b = float(twin.loss(ids)[0].data), float(lm.loss(ids)[0].data)
        assert a != b  # the copy reads its own parameters
    assert twin._step.compiled_calls == 1


def test_a_bidirectional_layers_two_directions_run_at_once_and_equal_eager():
    mg.manual_seed(9)
    tagger = _f64(SequenceTagger(LSTM(4, 5, num_layers=2, bidirectional=True, dropout=0.3,
                                      dtype=F64), 3))

    def step(x, y, mask):
        return mg.cross_entropy(tagger(x, mask=mask), y, mask=mask)

    compiled = mg.compile(step)
    rng = np.random.default_rng(10)
    before = mg.get_num_threads()
    mg.set_num_threads(2)
    try:
        for i in range(4):
            x, y = rng.standard_normal((16, 6, 4)), rng.integers(0, 3, (16, 6))
            mask = np.arange(6)[None, :] < rng.integers(1, 7, 16)[:, None]
            got = _run(tagger, i, compiled, x, y, mask)
            want = _run(tagger, i, step, mg.tensor(x), mg.tensor(y), mg.tensor(mask))
            _assert_same(got, want)  # (the dropout draws, too: no draw was moved)
    finally:
        mg.set_num_threads(before)
    program = compiled.program(x, y, mask)
    assert compiled.compiled_calls == 2
    assert len(program.pairs) == 2  # each layer's directions side by side
    assert all(program.eqns[k].prim.name == program.eqns[k + 1].prim.name == "scan[LSTMCell]"
               for k in program.pairs)


def test_with_two_threads_a_layers_directions_run_side_by_side_and_equal_eager(monkeypatch):
    """float32, two threads, compiled loops: a bidirectional layer's two directions run at
    once, each on its own thread with its whole batch (16 rows: Numba's threads could have
    split it), forward and backward, and nothing of the program starts on Numba's threads
    (their workers spin after a call and took the cores the two threads need); equal to
    eager, and deterministic."""
    import sys

    from minigrad import threads
    ran, real, real_parallel = [], threads.run, threads.parallel
    monkeypatch.setattr(threads, "run", lambda k, *a: ran.append(k.__name__) or real(k, *a))
    monkeypatch.setattr(threads, "parallel",
                        lambda fn, items: ran.append(len(items)) or real_parallel(fn, items))
    mg.manual_seed(28)
    tagger = SequenceTagger(LSTM(4, 5, bidirectional=True), 3)
    rng = np.random.default_rng(28)
    x, y = rng.standard_normal((16, 6, 4)).astype(np.float32), rng.integers(0, 3, (16, 6))
    compiled = mg.compile(lambda x, y: mg.cross_entropy(tagger(x), y))
    mg.set_num_threads(2)
    try:
        for i in range(3):
            got = _run(tagger, i, compiled, x, y)
            sys.modules["minigrad.compiler.scan"].wait()  # (the loops, then the drivers)
        ran.clear()
        got = [_run(tagger, 3, compiled, x, y) for _ in range(2)]
        assert all(type(r) is int for r in ran), ran  # (a kernel's name: run on Numba's)
        assert sorted(ran) == [1] * 8 + [2] * 4  # a pair (2), each scan one chunk (1)
        mg.manual_seed(28)  # the same weights, the tape's BPTT
        eager = SequenceTagger(LSTM(4, 5, bidirectional=True, compiled=False), 3)
        want = _run(eager, 3, lambda x, y: mg.cross_entropy(eager(x), y), mg.tensor(x),
                    mg.tensor(y))
    finally:
        mg.set_num_threads(1)
    for a, b in zip(got[0][1], got[1][1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got[0][0].data, want[0].data, rtol=1e-5)
    for a, b in zip(got[0][1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_manual_seed_inside_a_compiled_function_runs_it_eagerly_and_says_so():
    # Replayed after the equations, a reseed would come after the dropout draws it seeds:
    # the compiled calls had drawn other masks than eager, silently.
    model = _classifier()  # (training: dropout)
    x = np.random.default_rng(12).standard_normal((6, 4))

    def f(x):
        mg.manual_seed(7)
        return model(x).sum()

    step = mg.compile(f)
    with pytest.warns(mg.CompileFallbackWarning, match=r"it calls manual_seed\(\)"):
        for _ in range(4):
            mg.manual_seed(1)  # (another stream: only the call inside decides the draws)
            got = step(x)
            assert got.item() == pytest.approx(f(x).item(), rel=1e-12)
    assert step.compiled_calls == 0


def test_zeros_ones_and_arange_inside_a_compiled_function_are_rows():
    # mg.arange had made a tensor from NumPy data: the function fell back to eager.
    f = mg.compile(lambda x: (x * mg.arange(1, 7, 2).astype(F64) + mg.ones(3, dtype=F64)
                              + mg.arange(3.0)).sum())
    for k in range(4):
        x = mg.tensor(np.full(3, float(k)))
        assert f(x).item() == pytest.approx(9.0 * k + 3.0 + 3.0)
    assert f.compiled_calls == 2
    assert [e.prim.name for e in f.program(x).once].count("arange") == 2
    for args in [(0.5, 3, 0.5), (0, 2.5), (np.int32(4),), (3, 0, -1)]:  # NumPy's dtype too
        want = np.arange(*args)
        assert mg.arange(*args).dtype == want.dtype
        np.testing.assert_array_equal(mg.arange(*args).data, want)
    assert mg.arange(4, dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="arange"):
        mg.arange()
    with pytest.raises(ZeroDivisionError):  # (a step of 0 had become 1)
        mg.arange(0, 5, 0)


def test_setting_the_learning_rate_inside_a_compiled_function_runs_it_eagerly():
    # A rate computed in Python from a counter outside: replayed, the traced rate would be
    # set at every call (the schedule stopped after two calls, silently).
    model = _classifier().eval()
    opt, count = mg.optim.SGD(model.parameters(), lr=0.1), [0]
    x = np.random.default_rng(13).standard_normal((6, 4))

    def train(x):
        count[0] += 1
        opt.lr = 0.1 / count[0]
        loss = (model(x) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step = mg.compile(train)
    with pytest.warns(mg.CompileFallbackWarning, match=r"it calls SGD\.lr = \.\.\."):
        for _ in range(4):
            step(x)
    assert opt.lr == pytest.approx(0.1 / 4) and step.compiled_calls == 0


@pytest.mark.parametrize("kind", ["eager-lm", "transformer"])
def test_a_whole_training_step_over_other_models_compiles(kind):
    # model.loss given the step's tensors: a LanguageModel that does not compile its own
    # loss, and the Transformer LM (the same Autoregressive.loss), both traced whole.
    from models.transformer import TransformerLM

    def make():
        mg.manual_seed(0)
        m = _lm(False, cell="gru") if kind == "eager-lm" else TransformerLM(
            11, 8, nhead=2, num_layers=1, max_len=8, compiled=False)
        return m, mg.optim.SGD(m.parameters(), lr=0.1)

    (m1, o1), (m2, o2) = make(), make()

    def train(m, opt, ids, lengths):
        loss = m.loss(ids, lengths)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step = mg.compile(lambda ids, lengths: train(m1, o1, ids, lengths))
    rng = np.random.default_rng(4)
    for _ in range(5):
        ids, lengths = rng.integers(3, 11, (3, 6)), rng.integers(1, 7, 3)
        got, want = step(ids, lengths), train(m2, o2, ids, lengths)
        np.testing.assert_allclose(got.data, want.data, rtol=1e-6)
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-7)
    assert step.compiled_calls == 3


def test_a_compiled_program_is_python_source_with_only_the_vjps_it_needs():
    # The program runs as two generated functions; what needs no cotangent (an input
    # without requires_grad, a frozen tensor) has no VJP call in them, and a broadcast is
    # undone only where shapes differ.
    rng = np.random.default_rng(3)
    w = mg.tensor(rng.standard_normal(3), requires_grad=True)
    b = mg.tensor(rng.standard_normal((2, 3)))  # frozen
    f = mg.compile(lambda x: ((x * w + b) * x).sum())
    x = mg.tensor(rng.standard_normal((2, 3)))
    for _ in range(4):
        w.grad = None
        f(x).backward()
        assert np.allclose(w.grad, (x.data * x.data).sum(0), rtol=1e-12)
    assert f.compiled_calls == 2
    source = f.program(x).source
    assert "def forward(" in source and "def backward(" in source
    assert "mul_vjp[1](" in source and "mul_vjp[0](" in source  # w, and x*w + b's factor
    assert source.count("mul_vjp[0](") == 1  # ... not x's own
    assert "add_vjp[1](" not in source  # b is frozen
    assert source.count("unbroadcast(") == 1  # w (3,) against (2, 3)
