"""The import direction is one-way: a small import graph read from the sources with ``ast``.

The layers (which file is in which) are the tiers of ``tools/linecount.py``.  Rules:

* the kernels import no Tensor code: nothing from minigrad but other kernels and the compile
  cache, which imports nothing from minigrad;
* the core (tensor, autograd, ops) imports nothing from the library (nn, optim, functional,
  data, serialization, gradcheck) nor the compiler, and the compiler nothing from the library;
* ``minigrad`` never imports ``models`` or ``demos``; ``models`` never imports ``demos``.

Every import counts, including ones inside functions (a lazy import is still a dependency).
"""

import ast
import functools
import os

import pytest

from tools import linecount

ROOT = linecount.ROOT


def module_name(path):
    """'minigrad/ops.py' -> 'minigrad.ops'; 'minigrad/kernels/__init__.py' -> 'minigrad.kernels'."""
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, root=ROOT):
    """The absolute names a file imports (``from a import b`` gives ``a.b``)."""
    with open(os.path.join(root, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module_name(path).rsplit(".", 1)[0] if not path.endswith("__init__.py") \
        else module_name(path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def files(*dirs):
    for d in dirs:
        for dirpath, _, names in os.walk(os.path.join(ROOT, d)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(dirpath, name), ROOT)
                    yield path.replace(os.sep, "/")


@functools.lru_cache
def tier_files(tier):
    return frozenset(linecount.tier_files(linecount.TIERS[tier][1]))


@functools.lru_cache
def tier_of(module):
    """The tier of the file that defines ``module`` (or of its longest known prefix)."""
    parts = module.split(".")
    while parts:
        for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
            for tier in linecount.TIERS:
                if candidate in tier_files(tier):
                    return tier
        parts.pop()
    return None


def within(name, *prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(rule_files, forbidden):
    bad = []
    for path in sorted(rule_files):
        bad += [f"{path} imports {name}" for name in sorted(imports(path)) if forbidden(name)]
    return bad


def test_kernels_import_no_tensor_code():
    assert violations(tier_files("kernels"), lambda n: within(n, "minigrad")
                      and tier_of(n) not in ("kernels", "cache")) == []
    assert violations({"minigrad/compile_cache.py"}, lambda n: within(n, "minigrad")) == []


def test_core_does_not_import_the_library():
    assert violations(tier_files("core"), lambda n: tier_of(n) == "library") == []


def test_the_compiler_sits_between_the_core_and_the_library():
    """The core does not know the compiler (it only offers ``apply``'s tracer hook); the
    compiler uses the core and the kernels, never the library."""
    assert violations(tier_files("core"), lambda n: tier_of(n) == "compiler") == []
    assert violations(tier_files("compiler"), lambda n: tier_of(n) == "library") == []


def test_minigrad_never_imports_models_or_demos():
    assert violations(files("minigrad"), lambda n: within(n, "models", "demos")) == []


def test_models_never_import_demos():
    assert violations(files("models"), lambda n: within(n, "demos")) == []


@pytest.mark.parametrize("source, expected", [
    ("import numpy as np\nfrom minigrad import ops, kernels\n",
     {"numpy", "minigrad.ops", "minigrad.kernels"}),
    ("def f():\n    from minigrad.nn import Module\n", {"minigrad.nn.Module"}),
    ("from . import ops\nfrom .tensor import Tensor\n", {"minigrad.ops", "minigrad.tensor.Tensor"}),
])
def test_the_import_graph_sees_every_import(tmp_path, source, expected):
    """The checker itself: absolute, lazy and relative imports are all found."""
    (tmp_path / "minigrad").mkdir()
    (tmp_path / "minigrad" / "probe.py").write_text(source)
    assert imports("minigrad/probe.py", root=str(tmp_path)) == expected


def test_a_forbidden_import_is_reported():
    """...and the rules see through ``from minigrad import nn`` to the library tier."""
    assert tier_of("minigrad.nn") == "library" and tier_of("minigrad.nn.Module") == "library"
    assert tier_of("minigrad.kernels") == "kernels" and tier_of("minigrad.core.ops") == "core"
