"""code2seq: path extraction, the corpus (split by file, parse failures), subtokens, the
metric, the model's gradients and padding, and the demo's claim on its --quick run.

The expected paths of the hand-written function are spelled out from its AST by hand; the
gradient check runs the whole model (path LSTM, subtoken sums, pooling, attention decoder)
in float64 against finite differences.
"""

import ast
import sys
import textwrap

import numpy as np
import pytest

import minigrad as mg
from demos import code2seq as demo
from models.code2seq import Code2Seq, PathContexts

F64 = np.float64


def contexts_of(source, **limits):
    """The rendered path-contexts of the first function in ``source``."""
    fn = next(n for n in ast.walk(ast.parse(textwrap.dedent(source)))
              if isinstance(n, demo.FUNCTIONS))
    corpus = demo.Corpus()
    rows = corpus.contexts(fn, **limits)
    return [f"{corpus.tokens[s]} {' '.join(corpus.path(corpus._id(3, (u, t, d))))} "
            f"{corpus.tokens[e]}" for s, u, t, d, e in rows]


# ------------------------------------------------------------------ path-contexts

OPEN = """
def read(self):
    return open(self.path)
"""


def test_path_contexts_of_a_tiny_function_exactly():
    """FunctionDef[.name, arguments[arg self], Return[Call[Name open, Attribute[Name self,
    .attr path]]]]: every pair of leaves whose top children are at most 2 apart."""
    assert sorted(contexts_of(OPEN)) == sorted([
        "self Name ↑Attribute ↓.attr path",
        "open Name ↑Call ↓Attribute ↓Name self",
        "open Name ↑Call ↓Attribute ↓.attr path",
        "<METHOD> .name ↑FunctionDef ↓arguments ↓arg self",
        "<METHOD> .name ↑FunctionDef ↓Return ↓Call ↓Name open",
        "<METHOD> .name ↑FunctionDef ↓Return ↓Call ↓Attribute ↓Name self",
        "<METHOD> .name ↑FunctionDef ↓Return ↓Call ↓Attribute ↓.attr path",
        "self arg ↑arguments ↑FunctionDef ↓Return ↓Call ↓Name open",
        "self arg ↑arguments ↑FunctionDef ↓Return ↓Call ↓Attribute ↓Name self",
        "self arg ↑arguments ↑FunctionDef ↓Return ↓Call ↓Attribute ↓.attr path",
    ])


def test_path_length_and_width_limits():
    # at most 4 edges (5 node types): exactly the 5 short ones of the 10 above remain
    full, limited = contexts_of(OPEN), contexts_of(OPEN, max_length=4)
    assert limited == [c for c in full if len(c.split()) - 3 <= 4] and len(limited) == 5
    assert "<METHOD> .name ↑FunctionDef ↓Return ↓Call ↓Name open" in limited
    # width 1: the def's name (child 0) no longer pairs with the body (child 2)
    narrow = contexts_of(OPEN, max_width=1)
    assert len(narrow) == 7 and not any(c.startswith("<METHOD>") and "Return" in c
                                        for c in narrow)


def test_operators_join_their_node_and_the_own_name_is_masked():
    """A recursive call reads <METHOD>, as do the def and the name as a string; other names
    stay, and constants read as their repr."""
    found = contexts_of("""
        def fact(n):
            log('fact', n, "facts")
            return n * fact(n - 1) if n > 1 else 1
        """)
    tokens = {w for c in found for w in (c.split()[0], c.split()[-1])}
    assert {"<METHOD>", "n", "1", "'facts'", "log"} <= tokens
    assert not {"fact", "'fact'"} & tokens
    assert "n Name ↑BinOp:Mult ↓Call ↓Name <METHOD>" in found
    assert "n Name ↑Compare:Gt ↓Constant 1" in found
    assert "log Name ↑Call ↓Constant <METHOD>" in found


def test_docstrings_are_dropped(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('def get_name(self):\n    """Return the name."""\n    return self.x\n')
    (fn,), error = demo.parse_file(str(path))
    assert error is None and not any(isinstance(n, ast.Constant) for n in ast.walk(fn))


# ------------------------------------------------------------------ subtokens

@pytest.mark.parametrize("name, expected", [
    ("get_file_name", ["get", "file", "name"]),
    ("getFileName", ["get", "file", "name"]),
    ("__init__", ["init"]),
    ("__get_file_name__", ["get", "file", "name"]),
    ("_private", ["private"]),
    ("HTTPServer", ["http", "server"]),
    ("parseHTTPResponse2", ["parse", "http", "response", "2"]),
    ("b64encode", ["b", "64", "encode"]),
    ("_", []),
    ("<METHOD>", ["<METHOD>"]),
])
def test_subtokens(name, expected):
    assert demo.subtokens(name) == expected


def test_scores_are_per_subtoken_order_and_case_insensitive():
    # get-file-name vs [name, get]: 2 right, 0 wrong, 1 missed; file vs open_file: 1/1, 1/2
    p, r, f1 = demo.scores([["name", "Get"], ["file"]], [["get", "file", "name"],
                                                          ["open", "file"]])
    assert (p, r) == (1.0, 3 / 5) and f1 == pytest.approx(2 * 0.6 / 1.6)
    assert demo.scores([[]], [["x"]]) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ the corpus

def test_split_is_by_file_deterministic_and_independent_of_other_files():
    files = [f"pkg/mod{i}.py" for i in range(200)]
    train, held = demo.split_files(files, 0, 0.2)
    assert sorted(train + held) == sorted(files) and not set(train) & set(held)
    assert 20 < len(held) < 60
    assert demo.split_files(files, 0, 0.2) == (train, held)
    assert demo.split_files(files, 1, 0.2)[1] != held  # another seed, another split
    # a file's side depends on its own path only: removing other files changes nothing
    assert demo.split_files(files[::3], 0, 0.2)[1] == [f for f in held if f in files[::3]]


def test_stdlib_files_skip_tests_and_installed_packages(tmp_path):
    for rel in ("a.py", "pkg/b.py", "test/c.py", "pkg/tests/d.py", "idlelib/idle_test/e.py",
                "site-packages/f.py", "pkg/notes.txt", "_sysconfigdata__linux.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert demo.stdlib_files(str(tmp_path)) == ["a.py", "pkg/b.py"]


def test_files_that_do_not_parse_are_counted_and_skipped(tmp_path):
    files = {
        "good.py": "def get_name(self):\n    return self.name\n",
        "py2.py": "def show(x):\n    print x\n",                 # another version's syntax
        "broken.py": "def f(:\n",                                # a syntax error
        "latin1.py": b"def f():\n    return '\xe9'\n",          # not UTF-8, no declaration
        "nul.py": b"def f():\n    return 1\x00\n",               # a null byte
        "declared.py": b"# -*- coding: latin-1 -*-\ndef caf\xe9(x):\n    return x + 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    corpus = demo.read_corpus(str(tmp_path), sorted(files), 8, 2, 0, progress=False)
    assert corpus.files == 2 and sum(corpus.failed.values()) == 4
    assert set(corpus.failed) <= {"SyntaxError", "UnicodeDecodeError", "ValueError"}
    assert sorted(f.name for f in corpus.functions) == ["café", "get_name"]
    assert all(len(f.contexts) and f.contexts.dtype == np.int32 for f in corpus.functions)


# ------------------------------------------------------------------ the model

def tiny_batch(seed=0, B=3, k=4, n_nodes=9, n_sub=8):
    """A PathContexts batch with paths of different lengths and a function with padding."""
    rng = np.random.default_rng(seed)
    lengths = np.array([3, 1, 4, 2])
    paths = np.zeros((4, 4), dtype=np.int64)
    for i, n in enumerate(lengths):
        paths[i, :n] = rng.integers(3, n_nodes, n)
    tokens = np.array([[3, 4, 0], [5, 0, 0], [6, 7, 3], [1, 0, 0]])  # <UNK> is a subtoken
    index = np.stack([rng.integers(0, 4, (B, k)), rng.integers(0, 4, (B, k)),
                      rng.integers(0, 4, (B, k))], axis=2)
    valid = np.ones((B, k), dtype=bool)
    valid[1, 2:] = False
    return PathContexts(paths, lengths, tokens, index, valid)


def tiny_model(cell="lstm", **kw):
    mg.manual_seed(0)
    return Code2Seq(9, 8, 6, hidden_size=3, node_dim=2, path_hidden=2, subtoken_dim=2,
                    target_dim=2, cell=cell, dtype=F64, **kw)


NAMES = np.array([[3, 4, 2], [5, 2, 0], [2, 0, 0]]), np.array([3, 2, 1])


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 2)])
def test_loss_gradients_match_finite_differences(cell, layers):
    model = tiny_model(cell, num_layers=layers)
    batch = tiny_batch()
    params = model.parameters()
    mg.check_grads(lambda *ps: model.loss(batch, *NAMES), *params)


def test_padding_contexts_change_nothing():
    """Junk in the padded slots, or more padding, leaves the loss and every gradient as is."""
    model = tiny_model()
    batch = tiny_batch()

    def run(b):
        model.zero_grad()
        loss = model.loss(b, *NAMES)
        loss.backward()
        return float(loss.data), [p.grad.copy() for p in model.parameters()]

    ref = run(batch)
    junk = batch.index.copy()
    junk[1, 2:] = [[3, 3, 3], [2, 1, 0]]
    wider = PathContexts(batch.paths, batch.path_lengths, batch.tokens,
                         np.concatenate([junk, np.zeros((3, 2, 3), np.int64)], axis=1),
                         np.concatenate([batch.valid, np.zeros((3, 2), bool)], axis=1))
    for b in (batch._replace(index=junk), wider):
        loss, grads = run(b)
        assert loss == pytest.approx(ref[0], rel=1e-12)
        for g, g0 in zip(grads, ref[1]):
            np.testing.assert_allclose(g, g0, rtol=1e-10, atol=1e-12)
    assert (model.pool_weights[1, 2:] == 0).all() and (model.alignments[1, :, 2:] == 0).all()


def test_gather_stores_each_path_and_token_once():
    path_nodes = np.array([[3, 4, 0], [5, 0, 0], [3, 5, 6]])
    path_lengths = np.array([2, 1, 3])
    token_subtokens = np.array([[3, 0], [4, 5], [6, 0]])
    contexts = [np.array([[0, 2, 1], [1, 2, 0]]), np.array([[2, 0, 2]])]
    b = PathContexts.gather(contexts, path_nodes, path_lengths, token_subtokens, k=3)
    assert b.valid.tolist() == [[True, True, False], [True, False, False]]
    assert len(b.paths) == 2 and len(b.tokens) == 3 and b.paths.shape[1] == 3
    for f, rows in enumerate(contexts):  # every context points at its own path and tokens
        for j, (s, p, t) in enumerate(rows):
            i = b.index[f, j]
            assert (b.tokens[i[0]] == token_subtokens[s]).all()
            assert (b.paths[i[1]] == path_nodes[p]).all() and b.path_lengths[i[1]] == \
                path_lengths[p]
            assert (b.tokens[i[2]] == token_subtokens[t]).all()


def test_predict_is_greedy_decoding_of_the_same_model():
    """predict's names are the argmax of the teacher-forced logits on its own output."""
    model = tiny_model()
    batch = tiny_batch()
    names, beta = model.predict(batch, max_len=4)
    assert beta.shape[0] == 3 and beta.shape[2] == 4
    for i, name in enumerate(names):
        assert 1 not in name and 0 not in name
        z, valid, state = model.encode(batch)
        tgt_in = np.concatenate([[2], name])[None].repeat(3, axis=0)
        logits, _ = model.decode(tgt_in, state, z, valid)
        want = logits.data[i].copy()
        want[:, :2] = -np.inf
        greedy = want.argmax(axis=1)
        assert list(greedy[:len(name)]) == list(name)
        if len(name) < 4:
            assert greedy[len(name)] == 2  # it stopped at <EOS>


def test_bad_batches_fail_clearly():
    model = tiny_model()
    batch = tiny_batch()
    with pytest.raises(TypeError, match="PathContexts"):
        model.encode(tuple(batch))
    paths = batch.paths.copy()
    paths[2, 1] = 9
    with pytest.raises(IndexError, match="node-type id 9 is out of range"):
        model.encode(batch._replace(paths=paths))
    valid = batch.valid.copy()
    valid[0] = False
    with pytest.raises(ValueError, match="at least one valid path-context"):
        model.encode(batch._replace(valid=valid))
    with pytest.raises(ValueError, match="unknown cell"):
        Code2Seq(9, 8, 6, cell="transformer")


# ------------------------------------------------------------------ the demo

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("code2seq")
    return out, demo.main(["--quick", "--no-progress", "--out", str(out)])


def test_quick_run_names_held_out_functions_better_than_the_baseline(quick_run):
    """On functions from files it never trained on, --quick's F1 over subtokens is clearly
    above always answering the most frequent training subtokens, even at the baseline's own
    best k on the held-out set (seeds 0-3: F1 0.105, 0.116, 0.125, 0.110 against 0.068,
    0.075, 0.068, 0.083: 1.32-1.83x)."""
    out, r = quick_run
    f1, base = r["scores"][2], r["baseline"]["scores"][2]
    assert f1 > 1.25 * base and f1 > base + 0.02, (f1, base)
    assert r["held_out_loss"] < 0.8 * r["initial_loss"]
    held_files = {f.file for f in r["held"]}
    assert held_files and not held_files & {f.file for f in r["train"]}
    assert r["version"] == ".".join(map(str, sys.version_info[:3]))
    assert r["files"] + sum(r["failed"].values()) == 200 and len(r["train"]) > 2000
    with open(r["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_run_resumes_where_it_stopped(tmp_path):
    """--resume continues from the checkpoint: same vocabularies (saved in it), the losses so
    far kept, the F1 curve carried on."""
    flags = ["--quick", "--no-progress", "--max-files", "30", "--show", "0", "--out",
             str(tmp_path)]
    first = demo.main([*flags, "--steps", "10", "--eval-every", "5"])
    again = demo.main([*flags, "--steps", "15", "--eval-every", "5", "--resume"])
    assert again["start_step"] == 10 and again["step"] == 15
    assert again["losses"][:10] == first["losses"]
    assert [s for s, _ in again["f1"]] == [0, 5, 10, 15]
    with pytest.raises(SystemExit, match="already holds"):
        demo.main([*flags, "--steps", "5"])  # a shorter fresh run would overwrite it
