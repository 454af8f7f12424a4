"""The whole training step as one Numba function (``minigrad.compiler.whole``) against the
Python program it replaces: the same losses, gradients and updated weights (float32, to
round-off), for language models of every cell and two layers, a bidirectional tagger on
dense inputs and a classifier; each test fails if the step silently stayed Python
(``whole.calls``).  Bad ids still get the Python program's error."""

import re

import numpy as np
import pytest

import minigrad as mg
from minigrad.compiler import whole
from minigrad.core import ops
from minigrad.kernels import loops, program
from models.language_model import LanguageModel
from models.layers import GRU, LSTM, SequenceClassifier, SequenceTagger

STEPS = 5


@pytest.fixture
def compile_at_first_call(monkeypatch):
    """The whole step compiled at a program's first call, in this thread."""
    monkeypatch.setattr(whole, "BACKGROUND", False)
    monkeypatch.setattr(whole, "AFTER", 1)


def _model(kind):
    mg.manual_seed(0)
    if kind == "tagger":
        return SequenceTagger(LSTM(4, 6, bidirectional=True), 3)
    if kind == "classifier":
        return SequenceClassifier(GRU(4, 6, num_layers=2), 3)
    cell, layers, *wide = kind.split("-")  # (wide: H 16 > V 9, the head's copies narrower;
    H = {"wide": 16, "big": 128}[wide[0]] if wide else 8  # big: the loops' weights packed)
    return LanguageModel(9, H, cell=cell, num_layers=int(layers),
                         **({"reset_after": True} if cell == "gru" else {}))


def _data(kind, i, B=3):
    rng = np.random.default_rng(i)
    if kind in ("tagger", "classifier"):
        x = rng.standard_normal((B, 5, 4)).astype(np.float32)
        return x, rng.integers(0, 3, (B, 5) if kind == "tagger" else (B,))
    return rng.integers(0, 9, (B, 5)), rng.integers(0, 9, (B, 5))


def _train(kind, after, B=3):
    """STEPS steps of a compiled SGD step (the whole step from call ``after`` of its
    program, or never): (losses, the program, the model)."""
    model = _model(kind)
    opt = mg.optim.SGD(model.parameters(), lr=0.5)

    @mg.compile
    def step(x, y):
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = mg.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    whole.AFTER, losses = after, []
    for i in range(STEPS):
        losses.append(step(*_data(kind, 0, B)).item() if i < STEPS - 1 else
                      step(*_data(kind, 1, B)).item())
    return losses, step.program(*_data(kind, 0, B)), model, step


@pytest.mark.parametrize("kind", ["rnn-1", "gru-1", "lstm-2", "lstm-2-wide", "lstm-2-big",
                                  "tagger", "classifier"])
def test_the_whole_step_equals_the_python_program(kind, compile_at_first_call):
    B = 16 if kind.endswith("big") else 3  # (16 x 128 x 512: blas.pack32 packs the weights)
    want, python, ref, _ = _train(kind, None, B)
    got, prog, model, _ = _train(kind, 1, B)
    assert python.whole.calls == 0 and python.whole.fn is None
    assert prog.whole.why is None and prog.whole.calls == STEPS - 3  # (2 traced, 1 compiles)
    assert prog.whole.sgd is not None and python.whole.sgd is not None  # (SGD inside the call)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6, err_msg=name)
    assert want[STEPS - 2] < want[0]  # (it trains: the same batch four times)


def test_one_layers_output_enters_the_next_without_a_copy():
    """(B, T, H) out of a layer, (T, B, H) into the next: the two transposes cancel, in the
    forward and in the reverse, so two layers copy no more than one does (ids, the head);
    with V < H the head's (T, B, V) product and its cotangent are copied, not the states."""
    def copies(kind):
        prog = _train(kind, None)[1]
        text = whole.render(prog.whole.prog, prog.whole.loss)[0]
        return text.count("transposed("), text

    one, text = copies("lstm-1")
    assert copies("lstm-2")[0] == one == 3, text
    n, text = copies("lstm-2-wide")  # (H > V: the head's product of the states, uncopied,
    last = re.findall(r"    (t\d+) = H\d+\[1:", text)[-2:]  # is transposed instead)
    assert n == 3 and any(f"= mm({h}, " in text for h in last), text


@pytest.fixture
def two_threads():
    mg.set_num_threads(2)
    yield
    mg.set_num_threads(1)


def test_with_two_threads_the_batch_runs_in_chunks_inside_the_one_call(
        compile_at_first_call, two_threads):
    """B = 17: two chunks of rows (8 and 9), each on one of Numba's threads, in each of two
    layers, every accumulator and carried value put together; against the Python program
    (which splits the same way).  One model: its parallel code compiles for ~40 s."""
    kind = "lstm-2-wide"  # (H 16 > V 9: the head transposes its product)
    assert program.parts(17, whole._split(2)).tolist() == [0, 8, 17]
    want, _, ref, _ = _train(kind, None, B=17)
    got, prog, model, _ = _train(kind, 1, B=17)
    assert prog.whole.why is None and prog.whole.calls == STEPS - 3
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6, err_msg=name)


def test_with_two_threads_a_bidirectional_layer_stays_python(compile_at_first_call,
                                                              two_threads):
    """Its two directions run side by side on Python threads: faster than one call."""
    _, prog, _, _ = _train("tagger", 1, B=17)
    assert prog.whole.calls == 0 and prog.whole.fn is None


def _padded_steps(after, B=6):
    """The README's step: LanguageModel.loss on padded ids (its mask: rows), Adam, clipping."""
    whole.AFTER = after
    mg.manual_seed(0)
    model = LanguageModel(20, 16, cell="lstm")
    opt = mg.optim.Adam(model.parameters(), lr=0.02)

    @mg.compile
    def step(ids, lengths):
        loss, _ = model.loss(ids, lengths)
        opt.zero_grad()
        loss.backward()
        mg.optim.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        return loss

    ids = (np.arange(B)[:, None] * 3 + np.arange(9)) % 20
    lengths = np.resize([9, 4, 9, 7, 2, 9], B)
    losses = [step(ids, lengths).item() for _ in range(STEPS)]
    return losses, step.program(ids, lengths), model


@pytest.mark.parametrize("threads", [1, 2])
def test_a_padded_language_model_step_with_adam_and_clipping_is_one_call_too(
        threads, compile_at_first_call):
    """With two threads: B = 17 in two chunks, each with its rows' masks."""
    mg.set_num_threads(threads)
    try:
        want, _, ref = _padded_steps(None, 6 if threads == 1 else 17)
        got, prog, model = _padded_steps(1, 6 if threads == 1 else 17)
    finally:
        mg.set_num_threads(1)
    assert prog.whole.why is None and prog.whole.calls == STEPS - 3
    assert prog.whole.sgd is None  # (Adam's update and the clipping: replayed as Python)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=2e-6)
    assert want[-1] < want[0]


def test_a_bad_id_gets_the_python_programs_error_and_the_whole_step_goes_on(
        compile_at_first_call):
    *_, step = _train("gru-1", 1)
    prog = step.program(*_data("gru-1", 0))
    calls, (x, y) = prog.whole.calls, _data("gru-1", 0)
    bad = x.copy()
    bad[0, 0] = 9
    with pytest.raises(IndexError, match="9 is out of range"):
        step(bad, y)
    assert prog.whole.calls == calls
    step(x, y)
    assert prog.whole.calls == calls + 1


def test_a_float64_step_stays_python_and_says_why(compile_at_first_call):
    mg.manual_seed(0)
    lm = LanguageModel(9, 8, cell="gru", dtype=np.float64)
    for p in lm.parameters():
        p.data = p.data.astype(np.float64)
    opt = mg.optim.SGD(lm.parameters(), lr=0.1)

    @mg.compile
    def step(x, y):
        loss = mg.cross_entropy(lm(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for _ in range(4):
        step(*_data("gru-1", 0))
    prog = step.program(*_data("gru-1", 0))
    assert prog.whole.calls == 0 and prog.whole.why


# ------------------------------------------------------------ its kernels against NumPy

def _plan(rng, shapes, transposed):
    """A layout of random blocks of the arrays of ``shapes`` side by side, each once."""
    blocks, col, rows = [], 0, 0
    for k, (h, w) in enumerate(shapes):
        r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        r1, c1 = rng.integers(r0 + 1, h + 1), rng.integers(c0 + 1, w + 1)
        t = bool(transposed[k])
        bh, bw = (c1 - c0, r1 - r0) if t else (r1 - r0, c1 - c0)
        blocks.append((k, int(r0), int(r1), int(c0), int(c1), t, 0, col))
        col, rows = col + bw, max(rows, bh)
    return (rows, col), blocks


@pytest.mark.parametrize("seed", range(6))
def test_layout_kernels_equal_the_layout_row(seed):
    rng = np.random.default_rng(seed)
    shapes = [tuple(rng.integers(2, 40, 2)) for _ in range(3)]
    xs = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
    shape, blocks = _plan(rng, shapes, rng.integers(0, 2, 3))
    plan = (shape, tuple(blocks), (True,) * 3)
    covered = np.zeros(shape, bool)  # (the row leaves the rest of its array unwritten)
    for _, r0, r1, c0, c1, t, i, j in blocks:
        covered[i:i + (c1 - c0 if t else r1 - r0), j:j + (r1 - r0 if t else c1 - c0)] = True
    want = ops._layout(plan, *xs)
    got = loops.put_blocks(np.zeros(shape, np.float32), np.array(blocks, np.int64), xs)
    np.testing.assert_array_equal(got[covered], want[covered])
    for g in (rng.standard_normal(shape).astype(np.float32),) * 1 + (
            np.asfortranarray(rng.standard_normal(shape).astype(np.float32)),):
        ref = ops._layout_vjp(g, None, plan, *xs)[1:]
        gs = tuple(np.zeros(s, np.float32) for s in shapes)
        loops.take_blocks(gs, np.array(blocks, np.int64), g, False)
        for a, b in zip(gs, ref):
            np.testing.assert_array_equal(a, b)
        loops.take_blocks(gs, np.array(blocks, np.int64), g, True)  # (added: twice)
        for a, b in zip(gs, ref):
            np.testing.assert_array_equal(a, 2 * b)


def test_gemm_and_array_helpers_equal_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 7, 5)).astype(np.float32)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    g = rng.standard_normal((2, 7, 6)).astype(np.float32)
    one, split = (1, 8, 4e6), (2, 2, 1.0)  # (threads, rows, FLOPs): never, always split
    kinds = [(program.mm, program.mm_tn, ()), (program.mm_split, program.mm_tn_split, (one,)),
             (program.mm_split, program.mm_tn_split, (split,))]  # (split: blocks of 7 and 7
    for mm, mm_tn, sp in kinds:  # rows, 3 and 4)
        for b in (w.T, np.ascontiguousarray(w.T), rng.standard_normal((5, 12)).astype(
                np.float32)[:, ::2]):  # (column-major, row-major, neither)
            np.testing.assert_allclose(mm(a, b, *sp), a @ b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mm(a.transpose(1, 0, 2), w.T, *sp),
                                   a.transpose(1, 0, 2) @ w.T, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mm_tn(a, g, *sp), a.reshape(-1, 5).T @ g.reshape(-1, 6),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mm_tn(a[0], g[0], *sp), a[0].T @ g[0], rtol=1e-5,
                                   atol=1e-5)
    assert program.parts(14, split, 2.0).tolist() == [0, 7, 14]
    assert program.parts(14, split, 1.5).tolist() == [0, 14]  # (too little work to split)
    assert program.parts(3, split).tolist() == [0, 3]  # (fewer rows than two parts' 2 each)
    np.testing.assert_array_equal(program.added(g), g[0] + g[1])
    np.testing.assert_allclose(program.colsum(g, 6), g.reshape(-1, 6).sum(0), rtol=1e-5)
    np.testing.assert_allclose(program.colsum(g, 1)[0], g.sum(), rtol=1e-5)
    assert program.ids_ok(np.array([0, 4]), 5) and not program.ids_ok(np.array([0, 5]), 5)
    assert not program.ids_ok(np.array([-1]), 5) and program.ids_ok(np.zeros(0, int), 5)
    h = np.zeros((3, 2, 4), np.float32)
    program.put(h, 2, np.ones((2, 4), np.float32))
    assert h[2].sum() == 8 and h[:2].sum() == 0
    np.testing.assert_array_equal(program.transposed(a, (1, 0, 2)), a.transpose(1, 0, 2))
    np.testing.assert_array_equal(program.flat(a.transpose(1, 0, 2), 5),
                                  a.transpose(1, 0, 2).reshape(-1, 5))



BACKGROUND_RUN = """
import numpy as np, minigrad as mg, minigrad.compiler
from minigrad.compiler import whole
from models.language_model import LanguageModel
whole.AFTER = 2
mg.manual_seed(0)
model = LanguageModel(9, 8, cell="rnn", num_layers=1)  # (as _train's "rnn-1": its compile
opt = mg.optim.SGD(model.parameters(), lr=0.5)         # is on disk when this test runs)

@mg.compile
def step(x, y):
    out = model(x)
    loss = mg.cross_entropy(out[0], y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss

rng = np.random.default_rng(0)
x, y = rng.integers(0, 9, (3, 5)), rng.integers(0, 9, (3, 5))
losses = [step(x, y).item() for _ in range(4)]
minigrad.compiler.wait()
losses += [step(x, y).item() for _ in range(4)]
w = step.program(x, y).whole
print(w.calls, w.why, losses[0] > losses[-1])
"""


def test_a_whole_step_compiled_by_another_process_runs_in_a_fresh_one():
    """The path a user meets: compiled in the background (another process, into the disk
    cache), loaded, then called — with one thread, in a process that never started Numba's
    threads (a function holding parallel code crashed at its first call there)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", BACKGROUND_RUN], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["4", "None", "True"], out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_the_compiled_split_is_the_python_programs(n_threads):
    """``program.parts`` (inside a whole function) splits rows as ``threads.batch_chunks``
    (a batch) and ``threads._bounds`` (a GEMM) do for the Python program: the same rule
    written twice (compiled code cannot call the Python one), and a compiled step's sums are
    the Python program's only while the two agree."""
    from minigrad import threads
    mg.set_num_threads(n_threads)
    try:
        sp = whole._split(n_threads)
        for n in range(70):
            chunks = threads.batch_chunks(n)
            assert program.parts(n, sp).tolist() == [0] + [b for _, b in chunks]
            for work in (1e6, 4e6, 9e6, 2e8):
                blocks = threads._bounds(n, work)
                assert program.parts(n, sp, work).tolist() == [0] + [b for _, b in blocks]
    finally:
        mg.set_num_threads(1)
