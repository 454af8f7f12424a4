"""Line counts of minigrad by layer: the README's table, and the budget the tests enforce.

A *code line* is a line that holds Python code: blank lines, comments and docstrings (any
statement that is a bare string) do not count.  Lines are classified with the standard
library's ``tokenize``, so a ``#`` inside a string or a line inside a multi-line expression
is counted correctly.

:data:`TIERS` is the one place that says which files make up which layer and how big each
layer may be; ``tests/test_budget.py`` checks every limit and that every file of the
package belongs to exactly one tier.  When files move, update the globs here.

    python tools/linecount.py            # print the README's line-count table
    python tools/linecount.py --write    # ... and replace it in README.md
"""

import argparse
import glob
import io
import os
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what it is, globs relative to the repository root, code-line limit or None).
# Why each limit is what it is: tests/test_budget.py.
TIERS = {
    "core": ("the autodiff core: Tensor, tape, primitive table",
             ["minigrad/tensor.py", "minigrad/autograd.py", "minigrad/ops.py",
              "minigrad/core/**/*.py"], 895),
    "kernels": ("Numba kernels: pure functions on arrays",
                ["minigrad/kernels.py", "minigrad/kernels/**/*.py"], 750),
    "cache": ("the compile cache: keys, checks on load, directories, pruning, command line",
              ["minigrad/compile_cache.py", "minigrad/cache.py"], 420),
    "compiler": ("the recurrence compiler: trace, IR, rewrites, transpose, lower, emit",
                 [f"minigrad/compiler/{m}.py" for m in ("__init__", "ir", "rewrites",
                                                        "transpose", "lower", "emit", "scan")],
                 1455),
    "function": ("mg.compile: a whole function (a training step) traced, one tape node",
                 ["minigrad/compiler/function.py"], 342),
    "whole": ("a training step's program as one generated Numba function",
              ["minigrad/compiler/whole.py"], 510),
    "library": ("nn, optim, functional, data, serialization, gradcheck",
                ["minigrad/__init__.py", "minigrad/nn.py", "minigrad/optim.py",
                 "minigrad/functional.py", "minigrad/data.py", "minigrad/serialization.py",
                 "minigrad/gradcheck.py", "minigrad/atomic.py", "minigrad/creation.py",
                 "minigrad/lib/**/*.py"],
                1620),
    "attention": ("Transformer layers (mg.nn) and their functional forms",
                  ["minigrad/attention.py", "minigrad/transformer.py"], 415),
    "distributed": ("data-parallel training on MPI (mpi4py), Horovod's shape",
                    ["minigrad/distributed.py"], 150),
    "runtime": ("process-wide settings: the random generator, threads, the C heap",
                ["minigrad/random.py", "minigrad/threads.py", "minigrad/memory.py"], None),
    "models": ("cells, layers, language model, seq2seq (uses the library)",
               ["models/**/*.py"], None),
}

_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
             tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}


def count(source):
    """(all lines, code lines) of Python source text."""
    code = set()
    statement = []  # the tokens of the current logical line (code tokens only)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NEWLINE or tok.type == tokenize.ENDMARKER:
            # A statement that is a single string is a docstring (or a string used as one).
            if not (len(statement) == 1 and statement[0].type == tokenize.STRING):
                for t in statement:
                    code.update(range(t.start[0], t.end[0] + 1))
            statement = []
        elif tok.type not in _NOT_CODE:
            statement.append(tok)
    return len(source.splitlines()), len(code)


def tier_files(globs, root=ROOT):
    """The files matched by ``globs`` (relative to ``root``), sorted, without duplicates."""
    found = set()
    for pattern in globs:
        for path in glob.glob(os.path.join(root, pattern), recursive=True):
            if os.path.isfile(path):
                found.add(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def measure(root=ROOT):
    """{tier: [(path, lines, code), ...]} for every tier."""
    out = {}
    for name, (_, globs, _limit) in TIERS.items():
        rows = []
        for path in tier_files(globs, root):
            with open(os.path.join(root, path), encoding="utf-8") as f:
                rows.append((path, *count(f.read())))
        out[name] = rows
    return out


def _n(x):
    return f"{x:,}".replace(",", " ")


def table(root=ROOT):
    """The README's markdown table: one row per file, a total row per tier."""
    lines = ["| layer | file | lines | code | budget |", "|---|---|---:|---:|---:|"]
    for name, rows in measure(root).items():
        what, _, limit = TIERS[name]
        lines += [f"| {name} | `{path}` | {_n(n)} | {_n(code)} | |" for path, n, code in rows]
        total, code = sum(r[1] for r in rows), sum(r[2] for r in rows)
        budget = "—" if limit is None else f"≤ {_n(limit)}"
        lines.append(f"| **{name}** | {what} | **{_n(total)}** | **{_n(code)}** | {budget} |")
    return "\n".join(lines)


BEGIN, END = "<!-- linecount: begin -->", "<!-- linecount: end -->"


def readme_table(readme_text):
    """The table between the README's markers (None when the markers are missing)."""
    if BEGIN not in readme_text or END not in readme_text:
        return None
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true",
                   help="replace the table between the markers in README.md")
    args = p.parse_args(argv)
    text = table()
    print(text)
    if args.write:
        path = os.path.join(ROOT, "README.md")
        with open(path, encoding="utf-8") as f:
            readme = f.read()
        if readme_table(readme) is None:
            sys.exit(f"linecount: {path} has no {BEGIN} ... {END} markers")
        head, rest = readme.split(BEGIN, 1)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
