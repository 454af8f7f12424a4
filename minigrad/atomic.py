"""Atomic file writes: the one helper behind ``mg.save`` and ``Vocab.save``.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the target's
directory, flushes it to disk and moves it over ``path`` with ``os.replace``, so a reader
sees either the old file or the complete new one, never half of one.

A process killed in the middle (``kill -9``, a crash, a power cut) cannot clean up after
itself, so its temporary file stays behind.  Temporary files are named
``.minigrad-<pid>-<random>.tmp``; every write first sweeps the ones in its directory whose
process is gone (and unnamed ones of the older ``.minigrad-<random>.tmp`` / ``.vocab-``
style once they are an hour old), so orphans live only until the next save.

Pure standard library: :mod:`minigrad.data` uses it without the autodiff engine.
"""

import contextlib
import os
import re
import tempfile
import time

__all__ = ["atomic_write", "sweep_orphans"]

PREFIX = ".minigrad-"
_OURS = re.compile(r"^\.minigrad-(\d+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY = re.compile(r"^\.(minigrad|vocab)-[A-Za-z0-9_]+\.tmp$")
_LEGACY_AGE = 3600.0  # seconds; without a pid we cannot tell a live writer from an orphan


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, it is someone else's
        return True
    return True


def sweep_orphans(directory):
    """Remove our own temporary files left in ``directory`` by writers that died.

    Returns the names removed.  Never raises: sweeping is housekeeping, not the write.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _OURS.match(name)
        full = os.path.join(directory, name)
        try:
            if m:
                stale = not _alive(int(m.group(1)))
            elif _LEGACY.match(name):
                stale = now - os.path.getmtime(full) > _LEGACY_AGE
            else:
                continue
            if stale:
                os.unlink(full)
                removed.append(name)
        except OSError:
            continue
    return removed


def atomic_write(path, write, *, mode="wb", encoding=None, where="save"):
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that replaces ``path``.

    On any failure the target is untouched, the temporary file is removed and an OSError
    names the *target* (``where: could not write '<path>': <reason>``), never the
    temporary file.  Permissions are those a plain ``open()`` would give.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    sweep_orphans(directory)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=".tmp",
                                   dir=directory)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod_like_new_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            msg = f"{where}: could not write {path!r}: {e.strerror or e}"
            # OSError(errno, ...) picks the matching subclass (PermissionError, ...).
            raise (OSError(e.errno, msg) if e.errno else OSError(msg)) from e
        raise


def _chmod_like_new_file(path):
    # mkstemp creates the file readable by its owner only; give it the permissions a
    # plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)
