"""Checkpoints: ``mg.save(obj, path)`` and ``mg.load(path)``.

``obj`` is a Module (its ``state_dict`` is saved), an Optimizer or LR schedule (likewise),
or a nested dict of those, NumPy arrays, Tensors, Python scalars, strings, None and
lists/tuples of them — so a training checkpoint is one call::

    mg.save({"model": model, "optim": opt, "step": 10}, "ckpt.npz")
    ckpt = mg.load("ckpt.npz")
    model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optim"])

The file is an ordinary ``.npz`` (readable with ``np.load``, never with pickle): each array
under its flattened key (``model/encoder.cell.W_a``, ``optim/state/0/exp_avg``) plus one
entry, ``__minigrad__``, holding JSON metadata: a format tag, a format version, the tree of
dicts/lists with every non-array leaf, and each array's key, shape and dtype.  ``load``
returns the same tree (Modules and optimizers come back as their state dicts, Tensors as
arrays, tuples as tuples, dict keys keep their int/str type).

It is written to a temporary file in the target's directory and moved into place with
``os.replace``, so an interrupted save never leaves a half-written checkpoint: the old file
(if any) stays intact and the temporary file is removed.
"""

import contextlib
import json
import numbers
import os
import tempfile
import zipfile
import zlib

import numpy as np

from minigrad.tensor import Tensor

__all__ = ["FORMAT", "VERSION", "load", "save"]

FORMAT = "minigrad-checkpoint"
VERSION = 1
META_KEY = "__minigrad__"


# ------------------------------------------------------------------ save

def save(obj, path):
    """Write ``obj`` (Module, Optimizer, schedule or nested dict) to ``path`` atomically.

    The file is written exactly at ``path`` (no suffix is added).  Unsupported leaves (e.g.
    an object array, a set, a function) raise TypeError naming where they are, before
    anything is written.
    """
    path = os.fspath(path)
    if not (isinstance(obj, dict) or _has_state_dict(obj)):
        raise TypeError(f"save: expected a Module, an Optimizer or a dict, got "
                        f"{type(obj).__name__}")
    arrays = {}
    tree = _encode(obj, [], arrays)
    meta = {"format": FORMAT, "version": VERSION, "tree": tree}
    arrays[META_KEY] = np.array(json.dumps(meta, allow_nan=True))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".minigrad-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        _chmod_like_new_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_npz(f, arrays):
    """The ``np.savez`` format, written member by member (any key, even ``file``)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _chmod_like_new_file(path):
    # mkstemp creates the file readable by its owner only; give it the permissions a
    # plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def _has_state_dict(obj):
    return not isinstance(obj, type) and callable(getattr(obj, "state_dict", None))


def _where(path):
    return "/".join(str(p) for p in path) or "<top level>"


def _encode(obj, path, arrays):
    """The JSON tree for ``obj``; arrays are moved into ``arrays`` under flattened keys."""
    if _has_state_dict(obj):
        obj = obj.state_dict()
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, (np.ndarray, np.generic)) and not isinstance(obj, np.str_):
        arr = np.asarray(obj)
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"save: array at {_where(path)} has dtype {arr.dtype}; only "
                            "numeric and boolean arrays can be saved")
        key = _where(path)
        if key in arrays or key == META_KEY:
            raise ValueError(f"save: two arrays would be stored under the key {key!r} (a dict "
                             "key contains '/'); rename one")
        arrays[key] = arr
        node = {"kind": "array", "key": key, "shape": list(arr.shape), "dtype": arr.dtype.str}
        if isinstance(obj, np.generic):
            node["scalar"] = True
        return node
    if obj is None or isinstance(obj, (bool, str)):
        return {"kind": "value", "value": obj}
    if isinstance(obj, numbers.Integral):
        return {"kind": "value", "value": int(obj)}
    if isinstance(obj, numbers.Real):
        return {"kind": "value", "value": float(obj)}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"save: dict keys must be str or int, got {type(k).__name__} "
                                f"{k!r} at {_where(path)}")
            items.append([k, _encode(v, [*path, k], arrays)])
        return {"kind": "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        return {"kind": "tuple" if isinstance(obj, tuple) else "list",
                "items": [_encode(v, [*path, i], arrays) for i, v in enumerate(obj)]}
    raise TypeError(f"save: cannot save a {type(obj).__name__} (at {_where(path)}); leaves "
                    "must be arrays, Tensors, numbers, strings, None or lists of them")


# ------------------------------------------------------------------ load

class _Bad(Exception):
    """Internal: the file is not a valid checkpoint (turned into ValueError with the path)."""


def load(path):
    """Read a checkpoint written by :func:`save` and return its tree (arrays as ndarrays).

    Raises FileNotFoundError if there is no file, and ValueError naming the file and the
    problem if it is not a valid minigrad checkpoint: truncated or corrupted (zip CRC
    checks), not an ``.npz``, an ``.npz`` without minigrad metadata, a newer format
    version, or arrays whose shape/dtype disagree with the metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no checkpoint file at {path!r}")
    try:
        arrays = _read_npz(path)
        meta = _read_meta(arrays.pop(META_KEY, None))
        used = set()
        try:
            out = _decode(meta["tree"], arrays, used)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _Bad(f"malformed metadata ({type(e).__name__}: {e})") from None
        extra = sorted(set(arrays) - used)
        if extra:
            raise _Bad(f"it holds arrays the metadata does not describe: {extra}")
        return out
    except _Bad as e:
        raise ValueError(f"load: {path!r} is not a valid minigrad checkpoint: {e}") from None


def _read_npz(path):
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise _Bad("it is a single .npy array, not an .npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        # NOTE: a corrupted byte inside an array is caught by the zip CRC check
        # (BadZipFile); random bytes make np.load refuse to unpickle (ValueError).
        raise _Bad(f"unreadable or truncated ({type(e).__name__}: {e})") from None


def _read_meta(raw):
    if raw is None:
        raise _Bad(f"no {META_KEY!r} metadata entry (a plain .npz, not written by mg.save)")
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError) as e:
        raise _Bad(f"the metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _Bad(f"the metadata has no {FORMAT!r} format tag")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise _Bad(f"bad format version {version!r}")
    if version > VERSION:
        raise _Bad(f"it has format version {version}, newer than this minigrad reads "
                   f"(up to {VERSION}); upgrade minigrad")
    if "tree" not in meta:
        raise _Bad("the metadata has no 'tree'")
    return meta


def _decode(node, arrays, used):
    if not isinstance(node, dict) or "kind" not in node:
        raise _Bad(f"malformed metadata node {node!r}")
    kind = node["kind"]
    if kind == "value":
        return node.get("value")
    if kind == "array":
        key = node.get("key")
        if key not in arrays:
            raise _Bad(f"the array {key!r} listed in the metadata is missing")
        arr = arrays[key]
        shape, dtype = tuple(node.get("shape", ())), node.get("dtype")
        if arr.shape != shape or arr.dtype.str != dtype:
            raise _Bad(f"array {key!r} has shape {arr.shape} and dtype {arr.dtype.str}, the "
                       f"metadata says shape {shape} and dtype {dtype}")
        used.add(key)
        return arr[()] if node.get("scalar") else arr
    if kind == "dict":
        return {k: _decode(v, arrays, used) for k, v in node["items"]}
    if kind in ("list", "tuple"):
        items = [_decode(v, arrays, used) for v in node["items"]]
        return tuple(items) if kind == "tuple" else items
    raise _Bad(f"unknown metadata node kind {kind!r}")
