"""The compile cache on disk: where compiled code lives, what it is keyed by, what is trusted
on load, and how it is kept small.

Layout: ``<root>/<tag>/`` where ``<root>`` is ``$MINIGRAD_CACHE_DIR`` (default
``~/.cache/minigrad``) and ``<tag>`` hashes everything compiled code depends on besides its
own text: the source of every file of ``minigrad/kernels`` and ``minigrad/compiler`` (the
helpers a kernel calls or inlines) and of this file (the cache's formats), the Numba,
llvmlite, NumPy and Python versions, the CPU target and the BLAS choice (:func:`versions`).
So editing, upgrading or changing any of them starts a new directory and nothing stale is
ever loaded. Inside it are
the generated modules (``mg_<hash>.py``, named by the hash of their text) and Numba's index
(``.nbi``) and data (``.nbc``) files of every kernel: the package's own and the generated
ones (never beside the sources).

Nothing read back is trusted: every ``.nbi``/``.nbc`` payload is stored behind its SHA-256,
and a file that is cut short, changed or fails to unpickle is discarded and rebuilt with one
:class:`CacheWarning` naming it (:func:`load_kernels` does the same for the generated
modules' text). An unusable root gives one warning and a private fallback directory in the
temporary directory, reused by later runs, or, failing that, compilation in memory. Past a
size limit (``$MINIGRAD_CACHE_MAX_SIZE``, default 256M) the entries used least recently are
removed; every step tolerates another process removing files under it, so that is safe while
other processes use the cache. ``python -m minigrad.cache`` inspects and prunes it.
:func:`compile_elsewhere` compiles in another process into the cache, for this one to load.
"""

import atexit
import contextlib
import functools
import glob
import hashlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
import warnings

import llvmlite
import llvmlite.binding as llvm
import numba
import numpy as np
from numba.core import compiler_lock
from numba.core.caching import CompileResultCacheImpl, FunctionCache, IndexDataCacheFile
from numba.core.caching import _CacheLocator as CacheLocator
from numba.core.serialize import dumps

PACKAGE = os.path.dirname(os.path.abspath(__file__))  # .../minigrad
TAG_RE = re.compile(r"^[0-9a-f]{16}$")
DEFAULT_MAX_SIZE = 256 * 2**20
STALE_TMP = 3600.0  # seconds: a temporary file this old belongs to a writer that died


class CacheWarning(UserWarning):
    """The compile cache had a problem (a damaged file, an unusable directory); the run
    goes on, recompiling what it could not trust."""


def versions():
    """What the tag is made of: {name: value}."""
    h = hashlib.sha256()
    sources = [glob.glob(os.path.join(PACKAGE, d, "**", "*.py"), recursive=True)
               for d in ("kernels", "compiler")]
    for path in sorted([__file__, *sources[0], *sources[1]]):
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, PACKAGE).encode() + b"\0" + f.read() + b"\0")
    cfg = numba.config  # (the BLAS: compiled code calls its sgemm (kernels) by name; CPU's
    cpu = cfg.CPU_NAME or llvm.get_host_cpu_name()  # vendor is in the target's name)
    blas = f"{os.environ.get('MINIGRAD_BLAS', '').lower() or 'auto'}, MKL " + (
        "installed" if mkl_libraries() else "absent") + f", {os.environ.get('OPENBLAS_CORETYPE')}"
    features = cfg.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return {"minigrad kernels+compiler+cache": h.hexdigest()[:16], "numba": numba.__version__,
            "llvmlite": llvmlite.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "target": f"{llvm.get_process_triple()} {cpu}",
            "blas": blas,
            "cpu features": hashlib.sha256(features.encode()).hexdigest()[:16]}


def mkl_libraries():
    """MKL's runtime in this environment (the ``mkl`` package puts it in lib/)."""
    return sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))


@functools.cache
def tag():
    """This installation's cache directory name: a hash of :func:`versions`."""
    return hashlib.sha256(repr(sorted(versions().items())).encode()).hexdigest()[:16]


def root():
    return os.environ.get("MINIGRAD_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "minigrad")


def directory():
    """This installation's cache directory (created), or None: compile in memory."""
    return _resolve(root())


def warn(message):
    warnings.warn(message, CacheWarning, stacklevel=3)


@functools.cache
def _resolve(base):
    path = os.path.join(base, tag())
    problem = _usable(path)
    if problem is None:
        return path
    fallback = os.path.join(tempfile.gettempdir(), f"minigrad-cache-{os.getuid()}")
    if _usable(os.path.join(fallback, tag()), private=fallback) is None:
        warn(f"minigrad: the compile cache {base} is not usable ({problem}); compiled code is "
             f"cached in {fallback} instead. Set MINIGRAD_CACHE_DIR to a writable directory.")
        return os.path.join(fallback, tag())
    warn(f"minigrad: the compile cache {base} is not usable ({problem}), nor is {fallback}; "
         "compiling in memory, so every run compiles again. Set MINIGRAD_CACHE_DIR to a "
         "writable directory.")
    return None


def _usable(path, private=None):
    """None if ``path`` is a writable directory (created if need be; ``private``: a parent
    that must be ours and closed to others, as a shared temporary directory is not), or
    the reason it is not."""
    try:
        if private is not None:
            os.makedirs(private, mode=0o700, exist_ok=True)
            st = os.lstat(private)
            if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(private):
                return f"{private} is not a private directory of this user"
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        os.utime(path)  # the directory's time is its last use (pruning: oldest first)
    except OSError as e:
        return e.strerror or str(e)
    return None


def write_text(path, text):
    """Write ``path`` so that a reader sees the old file, the whole new one or none."""
    tmp = f"{path}.tmp.{uuid.uuid4().hex[:16]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        _unlink(tmp)  # gone already after the replace


# --------------------------------------------------------------------------- generated modules

def module_name(source):
    """A generated module's name: ``mg_<hash of its text>``."""
    return "mg_" + hashlib.sha1(source.encode()).hexdigest()[:16]


def load_kernels(source):
    """The module made of ``source``, a generated kernel module (once per process), written
    as ``mg_<hash of its text>.py`` in the cache, where Numba keeps its machine code.

    The file is for people (to read, and for tracebacks): what runs is always the text
    minigrad generated, never the file's.  A file whose text differs (damaged, or edited by
    hand) is rewritten, with one warning naming it."""
    name = module_name(source)
    with _LOADING:
        if name in sys.modules:
            return sys.modules[name]
        where = directory()
        path = os.path.join(where or tag(), name + ".py")
        if where is not None:
            _keep(path, source)
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module  # before it runs: Numba's cached code refers to it by name
        try:
            exec(compile(source, path, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
        return module


_LOADING = threading.RLock()  # one thread at a time: another must not see a half-run module


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
            warn(f"minigrad: discarded the damaged compile-cache file {path} ({why}); "
                       "writing it again")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, source)
    except OSError as e:  # e.g. removed or made read-only by someone else meanwhile
        warn_once(path, f"minigrad: could not write {path} ({e.strerror or e}); the "
                        "generated code runs from memory")


# --------------------------------------------------------------------------- Numba's files

class Damaged(Exception):
    """A cache file that cannot be trusted: ``path``, and ``why``."""

    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _read(path):
    with open(path, "rb") as f:
        blob = f.read()
    data = blob[32:]
    if hashlib.sha256(data).digest() != blob[:32]:
        raise Damaged(path, "its checksum does not match: cut short or changed")
    try:
        return pickle.loads(data)
    except Exception as e:
        raise Damaged(path, f"it does not unpickle: {type(e).__name__}: {e}") from e


class _Files(IndexDataCacheFile):
    """Numba's index and data files, each payload stored behind its SHA-256; a data file
    also holds its key (signature, target, code hash), so one copied over another fails."""

    def save(self, key, data):
        super().save(key, (key, data))

    def load(self, key):
        name = self._load_index().get(key)
        if name is None:
            return None
        try:
            saved, data = self._load_data(name)
        except FileNotFoundError:  # removed by a pruning process since the index was read
            return None
        if saved != key:
            raise Damaged(self._data_path(name), "it holds another kernel's code")
        return data

    def _dump(self, obj):
        data = dumps(obj)
        return hashlib.sha256(data).digest() + data

    def _load_index(self):
        try:
            version, stamp, overloads = _read(self._index_path)
        except FileNotFoundError:  # not compiled yet, or removed by a pruning process
            return {}
        return overloads if (version, stamp) == (self._version, self._source_stamp) else {}

    def _save_index(self, overloads):
        with self._open_for_write(self._index_path) as f:
            f.write(self._dump((self._version, self._source_stamp, overloads)))

    def _load_data(self, name):
        return _read(self._data_path(name))


class _Locator(CacheLocator):
    """Every kernel goes to the tagged directory, whichever file defines it."""

    def __init__(self, py_func, py_file):
        self._py_file, self._lineno = py_file, py_func.__code__.co_firstlineno

    def ensure_cache_path(self):
        os.makedirs(self.get_cache_path(), exist_ok=True)

    def get_cache_path(self):
        return directory()

    def get_source_stamp(self):
        return tag()

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file)


class _Impl(CompileResultCacheImpl):
    _locator_classes = [_Locator]


class KernelCache(FunctionCache):
    """Numba's per-function cache, in the tagged directory, checked on load: anything that
    fails to load is discarded (one warning naming the file) and compiled again."""

    _impl_class = _Impl

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _Files(self._cache_path, self._impl.filename_base, tag())

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as e:
            files = self._cache_file
            path = getattr(e, "path", files._index_path)
            why = getattr(e, "why", f"{type(e).__name__}: {e}")
            warn(f"minigrad: discarded the damaged compile-cache file {path} ({why}); "
                 "compiling it again")
            for p in glob.glob(os.path.join(glob.escape(self._cache_path),
                                            glob.escape(self._impl.filename_base) + ".*")):
                _unlink(p)
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as e:  # e.g. a full disk, a directory gone read-only: not fatal
            warn_once(self._cache_path, f"minigrad: could not write to the compile cache "
                      f"{self._cache_path} ({getattr(e, 'strerror', None) or e}); the "
                      "compiled code is used from memory")
            return
        prune(limit())


_WARNED = set()


def warn_once(key, message):
    if key not in _WARNED:
        _WARNED.add(key)
        warn(message)


def compile_elsewhere(texts, sigs):
    """Compile ``sigs`` ({name: Numba signature}) of the generated module ``texts[-1]`` (after
    the modules ``texts[:-1]`` it imports) in a fresh Python process, into the disk cache,
    from which the caller then loads them.  NOTE: a compile holds the GIL for seconds; in a
    background thread it took the GIL from the steps running meanwhile (the names demo's
    first two-thread run: 1000 steps in 22 s against 8.9 for one thread).  It inherits the
    environment: the BLAS it chooses, and so its cache directory, are this one's.  Returns the
    process's exit code (None: no disk cache, or no process; < 0: killed by a signal)."""
    if directory() is None:
        return None
    path = os.pathsep.join([os.path.dirname(PACKAGE), os.environ.get("PYTHONPATH", "")])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from minigrad.compile_cache import _compile; _compile()"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path})
        _RUNNING.add(proc)  # (killed if this process exits first: no process outlives it)
        proc.communicate(pickle.dumps((texts, sigs)))
        _RUNNING.discard(proc)
        return proc.returncode
    except (OSError, subprocess.SubprocessError):
        return None


_RUNNING = set()


def compile_forked(jobs):
    """Compile ``jobs`` ([(dispatcher, signature)]) into the disk cache in a forked copy of
    this process (Numba, LLVM and the modules already loaded: it starts at once) while this
    one goes on.  Returns a function that waits for it (at most ``FORK_TIMEOUT`` s), or None
    where it does not fork: ``FORK`` off, no disk cache, one CPU in this process's affinity,
    not Linux, MPI or JAX loaded (their threads), or another thread compiling (the copy
    would inherit its locks held)."""
    if not (jobs and FORK and sys.platform == "linux" and directory() is not None and
            len(os.sched_getaffinity(0)) > 1 and not {"mpi4py.MPI", "jax"} & sys.modules.keys()):
        return None
    locks = [compiler_lock.global_compiler_lock._lock, llvm.ffi.lib._lock._lock]
    held = [lock for lock in locks if lock.acquire(blocking=False)]
    try:
        with warnings.catch_warnings():  # (Python 3.12's, for any threads: the copy only compiles)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork() if len(held) == len(locks) else None
    except OSError:  # (no memory for the copy)
        pid = None
    finally:
        for lock in held:
            lock.release()
    if pid == 0:  # the copy: compile, write the cache, exit (none of this process's exit code)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C is the parent's to handle)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            for dispatcher, sig in jobs:
                dispatcher.compile(sig)
        finally:
            os._exit(0)
    if pid is None:
        return None
    _FORKED[pid] = reaper = threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True)
    reaper.start()  # (no zombie, even if nobody waits)
    # (then the cache has them, or this process compiles them: a copy still running is killed)
    return lambda: reaper.join(FORK_TIMEOUT) or reaper.is_alive() and os.kill(pid, signal.SIGKILL)


FORK = True  # False: never compile in a forked process (compile_forked returns None)
FORK_TIMEOUT = 120.0
_FORKED = {}  # pid -> the thread that waits for it


@atexit.register
def _stop_compiles():  # (no process outlives this one)
    for proc in list(_RUNNING):
        proc.kill()
    for pid, reaper in list(_FORKED.items()):
        if reaper.is_alive():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _compile():  # (the process compile_elsewhere starts)
    texts, sigs = pickle.load(sys.stdin.buffer)
    for text in texts[:-1]:
        load_kernels(text)
    module = load_kernels(texts[-1])
    for name, sig in sigs.items():
        getattr(module, name).compile(sig)


def cached(dispatcher, attr="_cache"):
    """Give a Numba dispatcher (``attr='cache'`` for a ufunc's) the checked disk cache."""
    if directory() is not None:
        setattr(dispatcher, attr, KernelCache(dispatcher.py_func))
    return dispatcher


# --------------------------------------------------------------------------- size and pruning

def parse_size(text):
    """'256M', '2G', '500k', '1000' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"expected a size such as 256M or 2G, got {text!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def limit():
    text = os.environ.get("MINIGRAD_CACHE_MAX_SIZE")
    try:
        return DEFAULT_MAX_SIZE if text is None else parse_size(text)
    except ValueError as e:
        warn_once("size", f"minigrad: MINIGRAD_CACHE_MAX_SIZE: {e}; using "
                  f"{DEFAULT_MAX_SIZE >> 20}M")
        return DEFAULT_MAX_SIZE


def _unlink(path):
    with contextlib.suppress(OSError):  # gone already: another process pruned it
        os.unlink(path)


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:  # gone already: another process pruned it
        return None


def entries(base=None):
    """What the cache under ``base`` (default :func:`root`) holds, as dicts with ``name``,
    ``what``, ``paths`` (to remove), ``files``, ``size`` (bytes) and ``used`` (last use,
    seconds since the epoch).  This installation's directory is split into its generated
    modules and the package's own kernels; another installation's directory (an older
    minigrad, other library versions) is one entry; so is a stale temporary file."""
    base = root() if base is None else base
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(base, name)
        if name == tag():
            out += _split(path)
        elif TAG_RE.match(name) or name == "kernels":  # "kernels": before the tagged layout
            out.append(_entry(name + "/", "another installation", list(_walk(path)), [path],
                              _mtime(path)))
    return out


def _walk(path):
    for dirpath, _, files in os.walk(path):
        yield from (os.path.join(dirpath, f) for f in files)


def _split(path):
    groups = {}
    for f in _walk(path):
        name = os.path.basename(f)
        key = name if ".tmp." in name else name.split(".")[0] if name.startswith("mg_") else ""
        groups.setdefault(key, []).append(f)
    out = []
    for key, files in sorted(groups.items()):
        if ".tmp." in key:  # a write in flight (left alone), or one whose writer died
            e = _entry(key, "stale temporary file", files)
            out += [e] if time.time() - e["used"] > STALE_TMP else []
        elif key:
            out.append(_entry(f"{tag()}/{key}", "a generated recurrence", files))
        else:  # compiled at first use, then used by every run: its time is the directory's
            out.append(_entry(f"{tag()}/ (package kernels)", "minigrad's own kernels", files,
                              used=_mtime(path)))
    return out


def _entry(name, what, files, remove=None, used=None):
    times = [t for t in map(_mtime, files) if t is not None]
    size = 0
    for f in files:
        with contextlib.suppress(OSError):
            size += os.path.getsize(f)
    return {"name": name, "what": what, "paths": remove or files, "files": len(times),
            "size": size, "used": used or max(times, default=0)}


def prune(max_size, base=None):
    """Remove entries, least recently used first, until the cache is at most ``max_size``
    bytes.  Returns the entries removed."""
    items = sorted(entries(base), key=lambda e: e["used"])
    total = sum(e["size"] for e in items)
    removed = []
    for e in items:
        if total <= max_size:
            break
        for p in e["paths"]:
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                _unlink(p)
        total -= e["size"]
        removed.append(e)
    return removed
