"""Size, honestly published: each layer of minigrad stays under a code-line budget.

Like tinygrad's line-count check, but tiered; the tiers (which files, which limit) are
defined once, in ``tools/linecount.py``, which also prints the README's table.  A code line
is a line of Python that is not blank, a comment or a docstring (counted with ``tokenize``).

Why these limits (code lines; today's counts in the README's table):

* **core ≤ 895** (tensor + autograd + ops): the engine must stay readable in one sitting —
  micrograd's engine is ~100 lines, autodidax's core ~600; ours also carries NumPy
  broadcasting, dtype rules, errors that name shapes, ``OuterSum``, and in each row what
  the compiler needs to know: argument names, the batching rule, the elementwise forward
  for one element and the derivative *rules* written once (the compiler runs them on
  symbols), with the comparison rows they are made of (~50 lines).  Tensor creation,
  ``where`` and ``addmm`` live in the library; the fused-cell rows are gone.  The
  Transformer's four fused rows (gelu, linear, layer_norm, attention: ~55 lines, each
  measured faster than its composition in ``benchmarks/bench_transformer.py``) raised the
  limit from 800; +5 for ``stop_gradient`` (JAX's: the row, ``Prim.has_vjp`` and
  ``detach`` applying it), what a ``no_grad`` block or ``detach`` is in a traced program:
  without it gradients flowed through them in compiled code, silently; +5 for the side
  effects a trace is told of (``backward()``, ``retain_grad()``), which keep a function
  eager.  880: +15 for the ``layout`` row (stacked weights laid out from pieces of
  parameters in one copy, and its gradient the same way back), made by the compiler's
  ``layouts`` rewrite.  890: +10 for side effects that a trace records *with their
  replay* (``effect(what, fn, *args)`` runs ``fn`` hidden from the trace): ``backward()``,
  ``zero_grad()``, clipping and the optimizers' and schedulers' ``step()``, so that a whole
  training step compiles (a scheduler's ``step()`` inside a compiled function had been
  skipped by its compiled calls, silently).  895: +8 for ``autograd.deposit`` (a compiled
  training step deposits the gradients of its own backward, no tape node) and ``made``,
  the one way to make a lazy OuterSum an array (the compiler's emitter and its transposer
  had their own copies, -3 there).
* **kernels ≤ 560**: the engine's (reductions, softmax and cross-entropy rows,
  gather/scatter, fast tanh/sigmoid/exp, the generated-kernel loader) within the earlier
  450, plus ~170 for the Transformer rows' kernels (a float32 erf, GELU, layer-norm rows,
  the attention softmax and its VJP), plus ~15 for the optimizer's one-pass kernels (Adam's
  update and a gradient norm's sum of squares: 13 array operations per parameter became
  one call, Adam + clipping 0.5 → 0.2 ms of the names demo's ~5 ms step), plus ~35 for
  choosing one BLAS for the loops' GEMMs and the large products outside them (MKL when
  installed on an Intel CPU: the names demo's LSTM step ~10 %, config B's ~22 % and K's
  ~17 % faster than with OpenBLAS): room for the compiler's shared runtime helpers, not for
  a second hand-fused cell.  575: +15 for ``parallel`` and the two products in blocks on
  Numba's threads (``blas.dot_blocks``, ``dot_t_blocks``): a Python pool's round trip
  cost ~120 µs, and a 2-thread weight gradient at N took as long as one thread's.
  590: +15 for ``on_examples`` (a kernel whose ufunc is not built runs as NumPy while the
  compiler runs a cell on examples: a new GRU's first step 2.1 -> 1.6-1.8 s, its sigmoid
  ufunc no longer built for the trace) and the lookup's bounds check and negative ids
  inside the gather kernel (three NumPy passes over the ids a call before).
  680: +90 for what a whole-step program (the ``whole`` tier) calls: the layout row's
  blocks copied and taken back by two kernels (a transposed block through OpenBLAS's
  ``omatcopy``: 3 µs for 100 x 100 where a Numba loop took 8 and the first loops 35), the
  ``aᵀg`` call the weight gradients' row blocks share with it, and a dozen short array
  helpers (``kernels/program.py``), each compiled once and cached: inlined into the
  generated step, NumPy's generic implementations (with their error messages) had made one
  step's compile 12-19 s; as calls, 5.
  710: +30 for a whole step with more than one thread (``kernels/program.py``): its GEMMs
  in row blocks on Numba's threads, their partial sums added in order, and the edges of a
  batch's chunks (2 threads, N LSTM 2.33 -> 1.9-2.1 ms, N GRU 1.79 -> 1.45-1.59, K LSTM
  22.5-22.9 -> 20.8-21.6 against the Python program it replaced there).
  750: +40 for a loop's weight packed once per call (``blas.pack32``, ``gemm32p``: OpenBLAS's
  own copy routines and micro-kernel, the bits of ``cblas_sgemm``, which repacked the weight
  at every step: a 32-row forward product 203 -> 165 µs, a backward one through a
  transposed weight 296 -> 160; C LSTM's step, medians, 1 thread 357/350 -> 331/337 ms,
  2 threads 191/192 -> 175/193; B LSTM 2 threads 10.9/8.2 -> 6.9/7.2).
* **attention ≤ 415** (``minigrad/attention.py``: the functional forms and mask rules;
  ``minigrad/transformer.py``: ``mg.nn``'s LayerNorm, GELU, MultiheadAttention, encoder and
  decoder layers and stacks, positional embeddings): ~400 today plus ~4 %.
* **cache ≤ 365**: the compile cache on disk and its command line (``python -m
  minigrad.cache``): the key (sources, library versions, CPU), the generated modules run
  from their text, Numba's files checked on load (checksums, keys), unusable directories
  and the private fallback, entries and pruning that tolerate other processes; ~345 today
  plus 5 %.  It is not kernel code, so it has a tier of its own rather than a raised kernels
  budget.  385: +20 for compiling in another process into the cache
  (``compile_elsewhere``): the chunks' drivers compile for 3-8 s, and in a background thread
  that compile held the GIL against the steps (the names demo's first 2-thread run: 1000
  steps in 22.2 s; in another process 15.5 s).  420: +35 for compiling in a forked copy
  of the process (``compile_forked``: it starts at once, where a fresh process spent 1.0-1.5
  s importing and starting LLVM), safely (not while another thread compiles, not under MPI,
  no zombie, bounded wait): a new cell's backward kernel compiles while its forward runs.
* **compiler ≤ 1220**: trace, IR and its contract (``verify``, ``stages``; ~220), four
  rewrites (~120), the reverse body derived as a program by transposition (~220), one
  lowering (~160) and one emitter (~145) for both loops, and the scan primitive (~300: one
  tape node, the batch in chunks on several threads, loops compiled in the background, the
  compile-time check against eager).  The previous compiler was 932 lines, with the
  reverse loop as generated text only and every elementwise derivative written twice; this
  one also prints and runs the reverse program, and checks its programs.  1200 was
  ~1180 plus 2 %; +10 for a correctness fix in the lowering (a column view of one whole
  part of a concat is that part: fused kernels had read such a view before writing it,
  and the reverse lost its memory — a user cell that slices a concat in its loop).  +10 for
  ``no_grad`` blocks in a traced cell (each value made in one passes a ``stop_gradient``;
  the cell is traced with gradients on, so the caller's mode does not count) and for a
  parameter no rule reaches (no gradient, as on the tape, instead of a sum of zeros that
  the loop left uninitialised), and for a compiled step's key with the cell's training flags
  and its parameters' dtypes (a step had run in the wrong mode, or on float64 weights).
  1265: +45 for the chunks of a batch run in one call on Numba's threads (a generated
  ``<loop>_chunks`` driver per loop, compiled after the loops): on the Python pool two
  threads had been no faster than one (N's LSTM 5.1 against 4.4 ms a step; now 3.5).
  1315: +50 for ``layouts`` (any chain of transposes, slices, splits and concats of
  weights before a loop becomes one ``layout`` equation per stacked value, the reverse
  loop's transposed weights too), which replaced the LSTM-only stacking in
  ``merge_gemms`` (-35): a GRU's 11 equations before its loop became 3, its step at
  min-char-rnn's size 0.62 -> 0.56 ms.
  1420: +110 for ``emit.Source``, straight-line programs rendered as Python (a forward;
  a backward with the walk unrolled, one call per VJP): ``mg.compile``'s programs (moved
  from the function tier) and a scan's equations before its loop, whose interpreter (the
  walk over the table's VJPs, -10) it replaced; min-char-rnn's RNN step 0.36 -> 0.26 ms.
  1425: +5 for a scan's equations before its loop differentiated only for the inputs that
  want a gradient (a tagger's dense x had its projection's x-gradient computed, a GEMM as
  large as the weight's, and dropped: D's step 3.59 -> 3.20 ms with one thread).
  1430: +5 for a chunks driver that calls its loop directly when the batch is one chunk
  (no parallel region started: the whole step with two threads at B < 16).
  1450: +20 for a new cell's backward kernels typed by the emitter and compiled in a
  forked process while the forward's compile here (``scan._compile_ahead``): a new cell's
  first step at K (char-rnn's defaults) 2.1 -> 1.1 s, at N 1.7 -> 1.15 s.
  1455: +5 for a loop's weights packed before its steps (see kernels, 750).
* **function ≤ 335**: ``mg.compile`` (a whole training step as one traced program and one
  tape node): the recorder, the two-trace check that names what differed, the program's
  forward and its reverse walk over the table's VJPs, the signature (shapes, grad mode,
  the modules' ``training`` flags), dead equations dropped, and two independent
  recurrences (a bidirectional layer's directions) paired to run at once (~35).  Its own
  tier: it is a client of the recurrence compiler (the scan is one of its equations), not
  part of it; ~247 plus 5 % was 260.  +25 for its guard (``_watch``): the modules a trace
  calls are watched, and a re-assigned parameter or layer drops the programs that captured
  the old one.  Without it a model reached through a global or an attribute ran its
  train-mode program after ``eval()``, and a replaced layer's old weights: silently wrong.
  (Dicts and named tuples in and out cost no line: they replaced the special case.)
  +5 for the rows without a VJP (stop_gradient) that the program's walk skips, +5 for
  a function that calls ``backward()`` or ``step()`` (it stays eager and says so: its
  compiled calls had silently skipped them — training stopped after two calls), +5 for
  the bound on traced signatures (a number changing every call had grown the cache by a
  trace per call, compiling nothing, silently), +10 for a returned Python number (a
  metric's ``.item()`` equal in the two traces had been returned by every compiled call),
  +6 for ``@mg.compile`` on a method (``__get__``: one per instance; it had been called
  without ``self``).  325: a bidirectional layer's directions run one after the other when
  each splits its batch on Numba's threads (D: 4.8 against 5.6 ms a step side by side).
  360: +35 for the whole training step (``zero_grad()``, ``backward()``, clipping,
  ``step()`` inside the function): the trace keeps the effects with their arguments as
  Vars, the two traces compare them, an operation on a parameter after the first one keeps
  the function eager, and a compiled call replays them after its equations (they had kept
  the function eager: the whole step of ``torch.compile`` users fell back).
  320: the program runs as generated Python (``program.source``, rendered by the
  compiler's ``emit.Source``) instead of interpreted (-55: the walk's dispatch, its dicts
  of values and cotangents); a tensor passed twice had got its gradient twice (tested).
  335: +15 for a training step's ``backward()`` without the tape (the call runs the
  program's backward and deposits the gradients itself: min-char-rnn's LSTM step 532 ->
  505 µs, RNN 260 -> 244).  340: +5 for the whole step's one call (a program's ``whole``,
  its outputs and gradients deposited, owned, without the program's backward); 342: +2
  for SGD's step skipped when the call took it.
* **whole ≤ 510** (``minigrad/compiler/whole.py``): a training step's program rendered
  once more, as one Numba function — its forward, then its reverse, every scan expanded
  (its before-program, the compiled loops called, its weight gradients and the
  before-program's VJPs), a layout's gradient blocks from two layouts written once into one
  array, ~25 rows' forms — and compiled in another process after 20 calls, then used
  while the batch is one chunk: min-char-rnn's step (config A, one thread) 0.27/0.44/0.55
  -> 0.11/0.23/0.28 ms for RNN/GRU/LSTM, the names demo's 3.5-4.1 -> 3.1-3.8.  Its own
  tier: a second way to run ``mg.compile``'s program, which the Python program stays the
  reference for (``tests/test_whole.py``).  Of the 435: dropout's draws made in Python and
  passed in (the random stream stays eager's), sizes passed as arguments so that one compile
  serves every batch and sequence length of a structure, one background compile at a time;
  455: +20 for SGD's update inside the call when a step's effects are exactly ``zero_grad()``,
  ``backward()``, ``step()`` of one plain SGD (A, one thread: RNN 111 -> 97 µs, GRU 226 ->
  195, LSTM 284 -> 235; its Python ``step()`` had cost 18 µs of the RNN's 111).
  480: +25 for more than one thread: a second function per step, each scan's loops called
  on the batch's chunks at once (each chunk's own sums added in order) and its GEMMs in row
  blocks — the whole step then runs with 2 threads too (figures under kernels); a separate
  one, since its parallel code compiled for 10-16 s longer (one thread keeps 21-35 s).
  495: +15 for a transpose of a transpose written as one (none when it undoes it: a layer's
  (B, T, H) output is the next layer's (T, B, H) input) and unread copies dropped: two
  layers copy four (T, B, H) arrays fewer (~1-2 % of K's step).  510: +15 for the head's
  product made on the (T, B, H) states and its narrower (T, B, V) result transposed when
  V < H (and its cotangent): the names demo's copies 58 -> 10 µs of its 2.7 ms.  (A loop's
  weight laid out with its rows 64 bytes apart, +6, gained while OpenBLAS packed it at every
  step; since a loop packs it once, level: deleted.)
* **library ≤ 1620**: nn, optim (five optimizers, clipping, schedules), functional, data
  (vocabularies, batching), serialization, the atomic write and gradcheck: ~1530 today
  (the fused-cell wrappers left ``functional.py``; runs that never lose work brought the
  one atomic write with its orphan sweep, bounded checkpoint loads and the one id-range
  rule) plus ~5 %, so a small addition fits but a second copy of a rule does not; +10 for
  the edit counter and the trace's record of called modules in ``nn.Module`` (mg.compile's
  guard).  1620: +5 for clipping and the schedulers' ``step()`` as replayable effects (a
  compiled training step replays them), +5 for ``mg.arange`` as a row with NumPy's argument
  forms and dtype (it had made a tensor from NumPy data: a function that called it stayed
  eager).
* **distributed ≤ 150**: ``init``/``rank``/``size``, ``shard``, ``broadcast_parameters`` with
  its check that every rank built the same model and data (the error names the mismatch),
  and ``DistributedOptimizer``'s one fused Allreduce (~135 today).  Its own tier, not the
  library's: it is optional (mpi4py), and the library's 5 % margin is for the library.
* the runtime (RNG, BLAS threads) and ``models/`` are counted and published, not budgeted.
"""

import os
import textwrap

import pytest

from tools import linecount


@pytest.fixture(scope="module")
def measured():
    return linecount.measure()


@pytest.mark.parametrize("tier", [t for t, (_, _, limit) in linecount.TIERS.items()
                                  if limit is not None])
def test_tier_is_within_its_budget(measured, tier):
    limit = linecount.TIERS[tier][2]
    rows = measured[tier]
    code = sum(r[2] for r in rows)
    biggest = ", ".join(f"{p} {c}" for p, _, c in sorted(rows, key=lambda r: -r[2])[:3])
    assert code <= limit, f"{tier}: {code} code lines > budget {limit} (largest: {biggest})"


def test_no_compiler_function_is_longer_than_60_code_lines():
    """The compiler reads in pieces: lowering, rendering and the transpose are separate
    functions, none longer than 60 code lines (counted as the budgets count them)."""
    import ast
    longest = []
    for path in linecount.tier_files(["minigrad/compiler/**/*.py"]):
        with open(os.path.join(linecount.ROOT, path)) as f:
            source = f.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                text = "\n".join(lines[node.lineno - 1:node.end_lineno]) + "\n"
                longest.append((linecount.count(textwrap.dedent(text))[1], path, node.name))
    assert max(longest)[0] <= 60, max(longest)


def test_every_package_file_is_in_exactly_one_tier():
    """A file that moves or is added must be counted somewhere, and only once."""
    owners = {}
    for tier, (_, globs, _) in linecount.TIERS.items():
        for path in linecount.tier_files(globs):
            owners.setdefault(path, []).append(tier)
    for package in ("minigrad", "models"):
        for dirpath, _, files in os.walk(os.path.join(linecount.ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(dirpath, name), linecount.ROOT)
                    path = path.replace(os.sep, "/")
                    assert len(owners.get(path, [])) == 1, \
                        f"{path} is in tiers {owners.get(path, [])}: add it to exactly one " \
                        "tier in tools/linecount.py"


@pytest.mark.parametrize("source, expected", [
    ("x = 1\n", (1, 1)),
    ("\n# a comment\nx = 1  # trailing\n\n", (4, 1)),
    ('"""Module doc.\n\nMore."""\n\ndef f():\n    """Doc."""\n    return 1\n', (7, 2)),
    ('s = """a\nb"""\n', (2, 2)),  # a multi-line string that is code, not a docstring
    ("x = (1,\n     # inside\n     2)\n", (3, 2)),
    ('y = "# not a comment"\n', (1, 1)),
])
def test_code_lines_are_counted_with_tokenize(source, expected):
    assert linecount.count(source) == expected


def test_readme_table_is_the_generated_one():
    with open(os.path.join(linecount.ROOT, "README.md"), encoding="utf-8") as f:
        published = linecount.readme_table(f.read())
    assert published is not None, "README.md lacks the linecount markers"
    assert published == linecount.table(), \
        "README.md's line-count table is stale: run `python tools/linecount.py --write`"
