"""Name a Python function from its body: code2seq on the standard library's own source.

code2seq (Alon et al., ICLR 2019) predicts a Java method's name from its abstract syntax
tree.  Here the methods are the functions of the Python standard library installed with
the interpreter running this demo (``sysconfig.get_paths()["stdlib"]``): real code none
of us wrote, present wherever Python is, read with ``ast`` — nothing is downloaded.

* **The task.**  Each ``def`` (methods and nested functions included) is one example: the
  input is its body, the output its name as subtokens, ``get_file_name`` -> get, file,
  name.  Docstrings are dropped, and every token equal to the function's own name (the
  ``def`` itself, recursive calls, ``super().__init__``) reads ``<METHOD>``, so the name is
  never in the input.  Files under ``test``/``tests``/``idle_test``/``site-packages`` are
  skipped; a file that does not parse with this Python (a syntax error, a bad encoding,
  another version's syntax) is counted and skipped.
* **Train/test by file.**  A file's functions are all train or all held out, decided by a
  hash of (seed, its path), so the split depends only on the stdlib version.  An exact copy
  of a function already read is dropped (the codecs repeat the same methods), so no
  held-out function is a copy of a training one.
* **Path-contexts.**  A function is a bag of (leaf token, path of node types, leaf token)
  between pairs of its AST leaves, at most ``--max-length`` edges long and ``--max-width``
  siblings apart at the top (the paper's 8 and 2), e.g. ``self Name ↑Attribute ↑Call
  ↓Name open``.  Each step draws k of a function's contexts afresh (``--contexts``; the
  paper's 200), as the paper does.
* **The model** (:mod:`models.code2seq`): a bidirectional LSTM over each path's node
  types, leaf tokens as sums of subtoken embeddings, tanh of a fully connected layer;
  attention pooling starts an LSTM decoder that attends over the contexts at every step.
  One change from the paper, for a corpus ~50x smaller than its Java ones: leaves and names
  share one subtoken table, tied to the output layer (``--separate-vocab`` for the paper's
  two vocabularies), so a name subtoken starts out knowing what it meant in bodies.

    python -m demos.code2seq                 # the whole stdlib: ~15 minutes on 2 cores
    python -m demos.code2seq --quick         # 200 files, 400 small steps: ~30 s
    python -m demos.code2seq --resume --steps 5000

Reports precision, recall and F1 over subtokens on the held-out files (per subtoken,
case-insensitive, order-insensitive, as the paper), against a baseline that names every
function with the k most frequent training subtokens at its best k; prints held-out
predictions with the paths each predicted subtoken attended to most; writes
``code2seq.png`` (losses, and F1 against the baseline) and ``checkpoint.npz`` to ``--out``.
"""

import ast
import hashlib
import math
import os
import re
import sys
import sysconfig
import time
import tokenize
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np
from tqdm import tqdm

import minigrad as mg
from demos import common
from minigrad import distributed as dist
from minigrad.data import Vocab, pad_batch
from minigrad.optim import Adam
from models.code2seq import Code2Seq, PathContexts

DEMO = "code2seq"
ARCH = ("cell", "hidden", "layers", "embed", "dropout", "separate_vocab")
METHOD = "<METHOD>"   # the function's own name wherever it occurs in its body
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MAX_SUBTOKENS = 5     # a leaf token is the sum of at most this many subtokens
MAX_STORED = 1000     # contexts kept per function (a seeded sample); k are drawn per step
SOURCE_VOCAB = 20000  # the most frequent leaf subtokens; the rest read <UNK>
NAME_LEN = 8          # predicted names stop after this many subtokens
# Fields that carry no token: the expression context (Load/Store), string kinds, type
# comments, f-string conversions, flags; operators are folded into their node's type.
SKIP_FIELDS = {"ctx", "kind", "type_comment", "conversion", "is_async", "level", "op", "ops"}
OPERATORS = (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.AugAssign)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SUBTOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    common.add_training_args(parser, steps=1500, lr=2e-3, batch=128, hidden=256,
                             out="runs/code2seq")
    parser.set_defaults(temperature=0.0)  # names are greedy unless asked otherwise
    parser.add_argument("--embed", type=common.POSITIVE_INT, default=64,
                        help="node-type, subtoken and name embedding size; the path LSTM's "
                             "size per direction (%(default)s)")
    parser.add_argument("--dropout", type=common.FRACTION, default=0.5,
                        help="dropout on each context's [token; path; token] (%(default)s)")
    parser.add_argument("--separate-vocab", action="store_true",
                        help="the paper's separate vocabularies for leaf and name subtokens; "
                             "default: one table, tied to the output layer (learns faster "
                             "on little data)")
    parser.add_argument("--contexts", type=common.POSITIVE_INT, default=50,
                        help="k: path-contexts sampled per function (%(default)s)")
    parser.add_argument("--max-length", type=common.POSITIVE_INT, default=8,
                        help="longest path, in edges (%(default)s)")
    parser.add_argument("--max-width", type=common.POSITIVE_INT, default=2,
                        help="widest path: sibling distance at the top node (%(default)s)")
    parser.add_argument("--max-files", type=common.COUNT, default=0,
                        help="read only this many stdlib files, a seeded choice; 0 = all")
    parser.add_argument("--test-fraction", type=common.FRACTION, default=0.2,
                        help="share of files held out (%(default)s)")
    parser.add_argument("--show", type=common.COUNT, default=8,
                        help="held-out predictions to print (%(default)s)")
    parser.add_argument("--eval-every", type=common.COUNT, default=0,
                        help="held-out loss and F1 every N steps (default: 8 times per run)")
    # --quick: ~30 s — 200 files, a smaller model, 64 functions of 25 contexts per step
    return common.parse(parser, argv, dict(hidden=128, embed=32, batch=64, contexts=25,
                                           steps=400, lr=3e-3, dropout=0.25, max_files=200,
                                           show=5, eval_every=100))


# ---------------------------------------------------------------------------- subtokens

def subtokens(name):
    """``get_file_name``, ``getFileName``, ``__get_file_name__`` -> ['get', 'file', 'name'];
    lowercase; digits are subtokens of their own (``b64encode`` -> b, 64, encode);
    ``<METHOD>`` stays whole."""
    return [METHOD] if name == METHOD else [s.lower() for s in _SUBTOKEN.findall(name)]


# ---------------------------------------------------------------------------- the AST

def node_type(node):
    """A node's type; an operator joins its node (``BinOp:Add``, ``Compare:Lt``)."""
    name = type(node).__name__
    if isinstance(node, OPERATORS):
        return f"{name}:{type(node.op).__name__}"
    if isinstance(node, ast.Compare):
        return f"{name}:{','.join(type(o).__name__ for o in node.ops)}"
    return name


def children(node, masked):
    """A node's children in source order: AST nodes, and (".field", token) leaves for the
    identifiers and constants it holds (``Attribute.attr`` -> ('.attr', 'path')); a
    constant's token is its ``repr`` (``'utf-8'``, ``32``, ``None``).  A token equal to
    ``masked`` (the function's name, as an identifier or a string) reads <METHOD>."""
    out = []
    for name, value in ast.iter_fields(node):
        if name in SKIP_FIELDS or (value is None and not isinstance(node, ast.Constant)):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, ast.AST):
                out.append(v)
            elif v is not None or isinstance(node, ast.Constant):
                token = repr(v) if isinstance(node, ast.Constant) or not isinstance(v, str) \
                    else v
                out.append(("." + name, METHOD if v == masked else token[:100]))
    return out


# ---------------------------------------------------------------------------- the corpus

def stdlib_files(root):
    """The standard library's .py files as sorted '/'-separated paths relative to ``root``,
    without tests, installed packages or build-time leftovers."""
    files = []
    for here, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in names:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                files.append(os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/"))
    return sorted(files)


def file_hash(seed, path, salt):
    """A number in [0, 1) fixed by (seed, path, salt): the same on every machine."""
    h = hashlib.sha256(f"{seed}/{salt}/{path}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def split_files(files, seed, test_fraction):
    """(train files, held-out files): each file on its own, by a hash of (seed, path)."""
    held = [f for f in files if file_hash(seed, f, "split") < test_fraction]
    return [f for f in files if file_hash(seed, f, "split") >= test_fraction], held


def choose_files(files, seed, n):
    """``n`` files (all if n = 0 or more than there are), chosen by hash, in sorted order."""
    if not n or n >= len(files):
        return list(files)
    return sorted(sorted(files, key=lambda f: file_hash(seed, f, "choose"))[:n])


def parse_file(path):
    """``(its functions, None)`` — every ``def`` in the file, methods and nested ones
    included, with the docstrings of all functions and classes dropped (as comments are
    not in a Java AST; they often say what the name says) — or ``(None, why)`` if it cannot
    be read: a syntax error (e.g. another Python version's syntax), a bad encoding, a null
    byte, nesting too deep."""
    try:
        with tokenize.open(path) as f:  # honours PEP 263 encoding declarations
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OSError) as e:
        return None, type(e).__name__
    functions = []
    for node in ast.walk(tree):
        if isinstance(node, (*FUNCTIONS, ast.ClassDef)) and ast.get_docstring(node, False):
            node.body = node.body[1:]
        if isinstance(node, FUNCTIONS):
            functions.append(node)
    return functions, None


@dataclass
class Function:
    file: str
    name: str
    target: list        # the name's subtokens
    contexts: np.ndarray  # (n, 3) int32: (start token, path, end token) ids of the Corpus


class Corpus:
    """Functions whose path-contexts index corpus-wide tables of distinct leaf tokens and
    paths.  A path is stored as (up, top, down): ``up`` and ``down`` are *chains* — a leaf's
    node types from the leaf up to just below the top, each chain stored once — and ``top``
    is the lowest common ancestor's type; :meth:`path` spells it out."""

    def __init__(self):
        self.tokens, self.types, self.chains, self.paths = [], [], [], []
        self._ids = ({}, {}, {}, {})  # the same four tables, reversed: value -> id
        self.functions, self.failed, self.files = [], Counter(), 0
        self.duplicates, self._seen = 0, set()

    def _id(self, table, value):
        ids = self._ids[table]
        i = ids.get(value)
        if i is None:
            i = ids[value] = len(ids)
            (self.tokens, self.types, self.chains, self.paths)[table].append(value)
        return i

    def path(self, i):
        """Path ``i`` as node types with arrows: ``('Name', '↑Attribute', '↑Call', '↓Name')``
        — the start leaf's type, up (↑) to the top, down (↓) to the end leaf's type."""
        up, top, down = self.paths[i]
        return (*self._chain(up, "↑"), "↑" + self.types[top],
                *reversed(self._chain(down, "↓")))

    def _chain(self, c, arrow):
        out = []
        while c >= 0:
            c, t = self.chains[c]
            out.append(arrow + self.types[t])
        if arrow == "↑":  # the start leaf's own type has no arrow
            out[-1] = out[-1][1:]
        return out[::-1]

    def render(self, row):
        """A context as text: ``self Name ↑Attribute ↑Call ↓Name open``."""
        s, p, t = row
        return f"{self.tokens[s]} {' '.join(self.path(p))} {self.tokens[t]}"

    def contexts(self, fn, max_length=8, max_width=2):
        """Every path-context of a function's AST, start leaf before end leaf, as an
        (n, 5) array of (start token, up chain, top type, down chain, end token) ids.

        Leaves are tokens: a node holding one token and nothing else (``Name``,
        ``Constant``, an unannotated ``arg``) is the leaf itself; other tokens hang below
        their node as ``.field`` leaves.  A path runs from the start leaf up (↑) to the two
        leaves' lowest common ancestor and down (↓) to the end leaf, at most ``max_length``
        edges, its two branches at most ``max_width`` children apart at the top.
        """
        rows, token, kind, chain = [], partial(self._id, 0), partial(self._id, 1), \
            partial(self._id, 2)

        def leaf(typ, tok):
            return [(token(tok), chain((-1, kind(typ))), 1)]

        def visit(node):
            # -> [(token, chain, m)]: each leaf below `node` that can still be part of a
            # path, with its chain of m node types from the leaf up to `node` itself.
            kids, t = children(node, fn.name), kind(node_type(node))
            if len(kids) == 1 and isinstance(kids[0], tuple):
                return leaf(node_type(node), kids[0][1])
            parts = [leaf(*k) if isinstance(k, tuple) else visit(k) for k in kids]
            for i, left in enumerate(parts):
                for right in parts[i + 1:i + 1 + max_width]:
                    for s, up, m in left:
                        for e, down, n in right:
                            if m + n <= max_length:  # edges: m up to the top, n down
                                rows.append((s, up, t, down, e))
            return [(s, chain((c, t)), m + 1) for part in parts for s, c, m in part
                    if m < max_length - 1]

        visit(fn)
        return np.array(rows, dtype=np.int64).reshape(-1, 5)

    def add_file(self, root, rel, max_length, max_width, rng):
        """Parse one file and add its functions, each with at most MAX_STORED contexts (a
        sample drawn with ``rng``); a file that cannot be parsed is counted in ``failed``."""
        functions, error = parse_file(os.path.join(root, rel))
        if functions is None:
            self.failed[error] += 1
            return
        self.files += 1
        for fn in functions:
            # An exact copy of a function already read (codecs repeat the same methods) is
            # dropped, as in the paper's datasets: a held-out function is never a copy of a
            # training one.
            digest = hashlib.sha1(ast.dump(fn).encode()).digest()
            if digest in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(digest)
            target = subtokens(fn.name)
            try:
                rows = self.contexts(fn, max_length, max_width)
            except RecursionError:  # a pathologically deep expression
                continue
            if not target or not len(rows):
                continue
            if len(rows) > MAX_STORED:
                rows = rows[np.sort(rng.choice(len(rows), MAX_STORED, replace=False))]
            paths = [self._id(3, key) for key in map(tuple, rows[:, 1:4].tolist())]
            self.functions.append(Function(rel, fn.name, target, np.stack(
                [rows[:, 0], paths, rows[:, 4]], axis=1).astype(np.int32)))


def read_corpus(root, files, max_length, max_width, seed, progress=True):
    corpus = Corpus()
    for rel in tqdm(files, desc="parsing", unit="file", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, int(file_hash(seed, rel, "sample") * 2 ** 32)])
        corpus.add_file(root, rel, max_length, max_width, rng)
    return corpus


def vocab_from_counts(counts, min_count=1, max_size=None):
    """A Vocab of the tokens seen ``min_count`` times, most frequent first (ties by name)."""
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return Vocab(kept[:max_size], level="word")


def build_vocabs(corpus, train, separate=False):
    """(node types, leaf subtokens, name subtokens) from the training functions only; the
    last two are one vocabulary unless ``separate``."""
    rows = np.concatenate([f.contexts for f in train])
    tok_count = np.bincount(rows[:, [0, 2]].ravel(), minlength=len(corpus.tokens))
    path_count = np.bincount(rows[:, 1], minlength=len(corpus.paths))
    nodes, subs = Counter(), Counter()
    for i in np.flatnonzero(path_count):
        for t in corpus.path(i):
            nodes[t] += int(path_count[i])
    for i in np.flatnonzero(tok_count):
        for s in subtokens(corpus.tokens[i])[:MAX_SUBTOKENS]:
            subs[s] += int(tok_count[i])
    names = Counter(s for f in train for s in f.target)
    if not separate:
        shared = vocab_from_counts(subs + names, 2, SOURCE_VOCAB)
        return vocab_from_counts(nodes), shared, shared
    return (vocab_from_counts(nodes), vocab_from_counts(subs, 2, SOURCE_VOCAB),
            vocab_from_counts(names, 2))


class Tables:
    """The corpus tables as id arrays: node types per path, subtokens per token."""

    def __init__(self, corpus, node_vocab, sub_vocab, max_length):
        self.path_nodes = np.zeros((len(corpus.paths), max_length + 1), dtype=np.int64)
        self.path_lengths = np.zeros(len(corpus.paths), dtype=np.int64)
        for i in range(len(corpus.paths)):
            p = corpus.path(i)
            self.path_lengths[i] = len(p)
            self.path_nodes[i, :len(p)] = node_vocab.encode(list(p))
        self.token_subtokens = np.zeros((len(corpus.tokens), MAX_SUBTOKENS), dtype=np.int64)
        for i, tok in enumerate(corpus.tokens):
            ids = sub_vocab.encode(subtokens(tok)[:MAX_SUBTOKENS])
            self.token_subtokens[i, :len(ids)] = ids

    def batch(self, contexts, k):
        return PathContexts.gather(contexts, self.path_nodes, self.path_lengths,
                                   self.token_subtokens, k)


def sample(contexts, k, rng):
    """k contexts drawn without replacement (all of them if there are no more than k)."""
    return contexts if len(contexts) <= k else contexts[rng.choice(len(contexts), k, False)]


def encode_names(functions, name_vocab):
    tgt, lengths, _ = pad_batch([name_vocab.encode(f.target, add_eos=True) for f in functions])
    return tgt, lengths


def batches(train, name_vocab, batch_size, k, rng):
    """Endless training batches: random functions, each with k of its contexts drawn
    afresh — (contexts, names (B, T), name lengths (B,)); :meth:`Tables.batch` turns the
    contexts (of one rank's rows, under --distributed) into the model's input."""
    while True:
        picks = [train[i] for i in rng.integers(0, len(train), batch_size)]
        yield ([sample(f.contexts, k, rng) for f in picks], *encode_names(picks, name_vocab))


# ---------------------------------------------------------------------------- evaluation

def scores(predicted, actual):
    """Precision, recall and F1 over subtokens, as the paper: a predicted subtoken is right
    if the true name has it (order-insensitive, case-insensitive, each at most once), and
    the counts add up over all functions before dividing."""
    tp = fp = fn = 0
    for p, a in zip(predicted, actual):
        p, a = {s.lower() for s in p}, {s.lower() for s in a}
        tp, fp, fn = tp + len(p & a), fp + len(p - a), fn + len(a - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def baseline(train, held, max_k=10):
    """Name every function with the k most frequent training subtokens, at the k (1..max_k)
    that scores the best F1 on the held-out functions themselves (an optimistic baseline).
    Returns (k, subtokens, (precision, recall, F1))."""
    common_ = [s for s, _ in sorted(Counter(s for f in train for s in f.target).items(),
                                    key=lambda kv: (-kv[1], kv[0]))[:max_k]]
    actual = [f.target for f in held]
    best = max(range(1, len(common_) + 1),
               key=lambda k: scores([common_[:k]] * len(held), actual)[2])
    return best, common_[:best], scores([common_[:best]] * len(held), actual)


class HeldOut:
    """The held-out functions with one fixed draw of k contexts each (seeded), in batches."""

    def __init__(self, functions, tables, name_vocab, k, seed, batch_size=256):
        rng = np.random.default_rng([seed, 7])
        self.functions, self.name_vocab = functions, name_vocab
        self.contexts = [sample(f.contexts, k, rng) for f in functions]
        self.parts, self.last = [], None
        for i in range(0, len(functions), batch_size):
            part = functions[i:i + batch_size]
            self.parts.append((tables.batch(self.contexts[i:i + batch_size], k),
                               *encode_names(part, name_vocab)))

    @mg.no_grad()
    def loss(self, model):
        """Mean cross-entropy per name subtoken (nats, <EOS> included), in eval mode."""
        was = model.training
        model.eval()
        total = sum(float(model.loss(b, t, n, reduction="sum").data) for b, t, n in self.parts)
        model.train(was)
        return total / sum(int(n.sum()) for _, _, n in self.parts)

    def predict(self, model, temperature=0.0, rng=None):
        """(names as subtoken lists, attention β per function (steps, k))."""
        names, betas = [], []
        for b, _, _ in self.parts:
            ids, beta = model.predict(b, NAME_LEN, temperature, rng)
            names += [[self.name_vocab.itos[i] for i in row] for row in ids]
            betas += list(beta)
        return names, betas

    def scores(self, model):
        """(precision, recall, F1); the names and attention stay in ``last``."""
        self.last = self.predict(model)
        return scores(self.last[0], [f.target for f in self.functions])


def show_predictions(corpus, held, names, betas, n):
    """n held-out functions, evenly spaced through the held-out files: file and true name,
    the prediction with a mark per subtoken (✓ in the true name), and for each predicted
    subtoken the path-context it attended to most."""
    for j in np.linspace(0, len(names) - 1, n).round().astype(int) if n else []:
        f, name, beta, rows = held.functions[j], names[j], betas[j], held.contexts[j]
        marks = " ".join(s + ("✓" if s in f.target else "") for s in name) or "(nothing)"
        print(f"  {f.file}: def {f.name}  ->  {marks}")
        for t, s in enumerate([*name, "<EOS>"][:len(beta)]):
            i = int(np.argmax(beta[t]))
            print(f"      {s:>10} <- β {beta[t][i]:.2f}: {corpus.render(rows[i])}")


def plot(history, f1s, base_f1, path, title):
    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = np.arange(1, len(history.losses) + 1)
    a.plot(steps, history.losses, color="tab:blue", alpha=0.2, lw=0.8)
    a.plot(steps, history.smoothed(), color="tab:blue", lw=2, label="training (smoothed)")
    if history.evals:
        a.plot(*zip(*history.evals), "o-", color="tab:orange", ms=4, label="held-out files")
    a.set(xlabel="step", ylabel="cross-entropy per name subtoken (nats)", title=title)
    a.grid(alpha=0.3)
    a.legend()
    if f1s:
        xs, ys = zip(*f1s)
        for j, (label, color) in enumerate((("precision", "tab:green"), ("recall", "tab:red"),
                                            ("F1", "black"))):
            b.plot(xs, [y[j] for y in ys], "o-", color=color, ms=3, lw=2 if j == 2 else 1,
                   label=f"code2seq {label}")
    b.axhline(base_f1, color="gray", ls="--", label=f"most frequent subtokens, F1 {base_f1:.2f}")
    top = max([base_f1, *(v for _, y in f1s for v in y)])
    b.set(xlabel="step", ylabel="over subtokens, held-out functions", ylim=(0, 1.3 * top),
          title="naming functions in files never trained on")
    b.grid(alpha=0.3)
    b.legend()
    common.save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    ckpt = common.prepare_out(args, DEMO)
    mg.manual_seed(args.seed)
    root = sysconfig.get_paths()["stdlib"]
    version = ".".join(map(str, sys.version_info[:3]))
    files = choose_files(stdlib_files(root), args.seed, args.max_files)
    train_files, test_files = split_files(files, args.seed, args.test_fraction)
    t0 = time.perf_counter()
    corpus = read_corpus(root, files, args.max_length, args.max_width, args.seed,
                         not args.no_progress)
    held_set = set(test_files)
    train = [f for f in corpus.functions if f.file not in held_set]
    held = [f for f in corpus.functions if f.file in held_set]
    if not train or not held:
        raise SystemExit(f"code2seq.py: {len(train)} training and {len(held)} held-out "
                         "functions; read more files (--max-files) or change --test-fraction")
    if ckpt:
        node_vocab, sub_vocab, name_vocab = (Vocab(v, level="word")
                                             for v in ckpt["meta"]["vocab"])
    else:
        node_vocab, sub_vocab, name_vocab = build_vocabs(corpus, train, args.separate_vocab)
    tables = Tables(corpus, node_vocab, sub_vocab, args.max_length)
    k = args.contexts
    held_out = HeldOut(held, tables, name_vocab, k, args.seed)
    read_seconds = time.perf_counter() - t0

    arch = common.model_args(args, ARCH, ckpt)
    E = arch["embed"]
    model = Code2Seq(len(node_vocab), len(sub_vocab),
                     len(name_vocab) if arch["separate_vocab"] else None, arch["hidden"],
                     node_dim=E, path_hidden=E, subtoken_dim=E, target_dim=E,
                     cell=arch["cell"], num_layers=arch["layers"], dropout=arch["dropout"])
    optimizer = Adam(model.parameters(), lr=args.lr)
    history = common.restore(ckpt, model, optimizer) if ckpt else common.History()
    optimizer.lr = args.lr
    start = len(history.losses)
    optimizer, sync = common.parallel.distribute(args, model, optimizer, start, data=(
        common.parallel.digest([f.contexts for f in train])))
    f1s = [tuple(x) for x in ckpt["meta"].get("f1", [])] if ckpt else []
    checkpoint = common.Checkpoint(args.out, DEMO, model, optimizer, arch, args,
                                   vocab=[node_vocab.itos, sub_vocab.itos, name_vocab.itos])
    checkpoint.meta["f1"] = f1s  # held-out (step, (P, R, F1)): saved with every checkpoint
    stream = batches(train, name_vocab, args.batch, k,
                     np.random.default_rng([args.seed, 3, start]))
    log_v = math.log(len(name_vocab))
    base_k, base_names, base = baseline(train, held)

    n_ctx = [len(f.contexts) for f in corpus.functions]
    print(f"code2seq: name Python functions from their syntax trees (Python {version}'s "
          f"standard library, {root})")
    skipped = ", ".join(f"{n} {e}" for e, n in sorted(corpus.failed.items())) or "none"
    print(f"  corpus: {len(files)} files ({len(train_files)} train / {len(test_files)} held "
          f"out, split by file), {corpus.files} parsed (unreadable with this Python: "
          f"{skipped}); {len(corpus.functions)} functions ({corpus.duplicates} exact copies "
          f"dropped): {len(train)} train, {len(held)} held out; read in {read_seconds:.1f} s")
    print(f"  paths:  up to {args.max_length} edges, width {args.max_width}; "
          f"{sum(n_ctx):,} path-contexts stored (median {int(np.median(n_ctx))} per "
          f"function, at most {MAX_STORED}), {len(corpus.paths):,} distinct paths; k = {k} "
          "sampled per function")
    subs = (f"{len(sub_vocab)} leaf and {len(name_vocab)} name subtokens"
            if arch["separate_vocab"] else f"{len(sub_vocab)} subtokens shared by leaves and "
            "names, one embedding table tied to the output layer")
    print(f"  vocab:  {len(node_vocab)} node types, {subs} (with <PAD> <UNK> <EOS>); "
          f"log V = {log_v:.2f}")
    print(f"  model:  {arch['cell'].upper()} path encoder and decoder, embed {E}, hidden "
          f"{arch['hidden']}, {model.num_parameters():,} parameters; Adam lr {args.lr}, "
          f"clip {args.clip}, batch {args.batch}, {args.steps} steps")
    if start:
        print(f"  resumed from step {start} (recent loss {history.recent():.3f})")
    max_loss = common.DIVERGED * log_v
    if not start:
        history.evals.append((0, held_out.loss(model)))
        f1s.append((0, held_out.scores(model)))
        checkpoint.save_first(history)

    def report(step, hist):
        held_loss = held_out.loss(model)
        if not held_loss <= max_loss:
            raise common.Diverged(step, f"the held-out loss is {held_loss:.4g}")
        hist.evals.append((step, held_loss))
        f1s.append((step, held_out.scores(model)))
        p, r, f1 = f1s[-1][1]
        tqdm.write(f"step {step:5d}  loss {hist.recent():.3f}  held-out {held_loss:.3f}  "
                   f"precision {p:.3f} recall {r:.3f} F1 {f1:.3f}")

    def loss_fn(batch):
        if not sync:
            return model.loss(tables.batch(batch[0], k), *batch[1:])
        # this rank's functions, as a share of the whole batch's mean per name subtoken
        contexts, names, lengths = dist.shard(*batch)
        return model.loss(tables.batch(contexts, k), names, lengths, reduction="sum") * (
            1.0 / float(batch[2].sum()))

    t1 = time.perf_counter()
    common.train(model, optimizer, loss_fn, stream, args.steps,
                 history=history, clip=args.clip, sync=sync,
                 every=args.eval_every or max(1, args.steps // 8), on_every=report,
                 desc=arch["cell"], progress=not args.no_progress, checkpoint=checkpoint,
                 save_every=args.save_every, max_loss=max_loss)
    seconds = time.perf_counter() - t1
    if f1s[-1][0] != len(history.losses) or held_out.last is None:  # stopped early, or resumed
        history.evals.append((len(history.losses), held_out.loss(model)))    # with no steps
        f1s.append((len(history.losses), held_out.scores(model)))
    path = checkpoint.save_final(history)

    names, betas = held_out.last
    precision, recall, f1 = f1s[-1][1]
    print("\nHeld-out functions (files never trained on), each predicted subtoken with the "
          "path-context it attended to most (β):")
    show_predictions(corpus, held_out, names, betas, args.show)
    samples = []
    if args.temperature > 0:
        samples, _ = HeldOut([held[0]] * 5, tables, name_vocab, k, args.seed).predict(
            model, args.temperature, np.random.default_rng(args.seed))
        print(f"\nSampled at temperature {args.temperature}: def {held[0].name} -> "
              + ", ".join("_".join(s) for s in samples))
    plot_path = os.path.join(args.out, "code2seq.png")
    if common.parallel.primary():  # rank 0 alone draws under --distributed
        plot(history, f1s, base[2], plot_path,
             f"code2seq on Python {version}'s stdlib: {arch['cell']} {arch['hidden']}")
    held_loss = history.evals[-1][1]
    print(f"\nLoss per name subtoken (nats): initial {history.losses[0]:.3f} (log V = "
          f"{log_v:.3f}) -> final {history.recent():.3f}, held-out {held_loss:.3f}, after "
          f"{len(history.losses)} steps ({len(history.losses) - start} in {seconds:.1f} s)")
    print(f"Held-out subtokens ({len(held)} functions):  code2seq precision {precision:.3f}  "
          f"recall {recall:.3f}  F1 {f1:.3f}")
    print(f"  baseline, always {' '.join(base_names)!r} (the {base_k} most frequent training "
          f"subtokens, its best k): precision {base[0]:.3f}  recall {base[1]:.3f}  "
          f"F1 {base[2]:.3f}")
    print(f"Saved {plot_path} and {path}")
    return {"version": version, "files": corpus.files, "failed": dict(corpus.failed),
            "duplicates": corpus.duplicates,
            "train": train, "held": held, "scores": (precision, recall, f1),
            "baseline": {"k": base_k, "names": base_names, "scores": base},
            "predictions": names, "f1": f1s, "initial_loss": history.losses[0],
            "held_out_loss": held_loss, "log_v": log_v, "losses": history.losses,
            "start_step": start, "step": len(history.losses), "samples": samples,
            "model": model, "corpus": corpus, "checkpoint": path, "plot": plot_path,
            "seconds": seconds}


if __name__ == "__main__":
    main()
