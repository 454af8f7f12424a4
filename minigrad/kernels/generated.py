"""Generated kernels: the recurrence compiler's kernels and loops, written as a module file
``mg_<hash of its text>.py`` in the compile cache (:mod:`minigrad.compile_cache`), where
Numba keeps their machine code between processes.

The file is for people (to read, and for tracebacks): what runs is always the text minigrad
generated, never the file's.  A file whose text differs (damaged, or edited by hand) is
rewritten, with one warning naming it."""

import hashlib
import os
import sys
import types

from minigrad import compile_cache as cache


def load_kernels(source):
    """The module made of ``source`` (once per process), its kernels cached on disk."""
    name = "mg_" + hashlib.sha1(source.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    where = cache.directory()
    path = os.path.join(where or cache.tag(), name + ".py")
    if where is not None:
        _keep(path, source)
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module  # before running it: Numba's cached code refers to it by name
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _keep(path, source):
    """Make the file hold ``source`` (its time is its last use: pruning goes oldest first)."""
    try:
        with open(path, encoding="utf-8") as f:
            same = f.read() == source
    except FileNotFoundError:
        same = None
    except (OSError, ValueError) as e:  # unreadable, or not UTF-8
        same, why = False, str(e)
    else:
        why = "its text differs from the code minigrad generated"
    try:
        if same:
            os.utime(path)
            return
        if same is False:
            cache.warn(f"minigrad: discarded the damaged compile-cache file {path} ({why}); "
                       "writing it again")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cache.write_text(path, source)
    except OSError as e:  # e.g. removed or made read-only by someone else meanwhile
        cache.warn_once(path, f"minigrad: could not write {path} ({e.strerror or e}); the "
                        "generated code runs from memory")
