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

It is written with :func:`minigrad.atomic.atomic_write`: a temporary file in the target's
directory, moved into place with ``os.replace``, so an interrupted save never leaves a
half-written checkpoint (the old file stays intact), and temporary files of writers that
were killed are swept by the next save.  A failed save raises OSError naming the target.

``load`` trusts nothing in the file: nesting depth and every array's size are checked
against bounds and the file's own size *before* anything is allocated, so a crafted or
corrupted file gives ValueError, never RecursionError or MemoryError.
"""

import json
import math
import numbers
import os
import zipfile

import numpy as np

from minigrad.atomic import atomic_write
from minigrad.core.tensor import Tensor

__all__ = ["FORMAT", "VERSION", "load", "save"]

FORMAT = "minigrad-checkpoint"
VERSION = 1
META_KEY = "__minigrad__"
MAX_DEPTH = 100  # nesting of dicts/lists; a training checkpoint uses about 5
# Deflate cannot expand data more than ~1032:1, so a member can never honestly hold more.
_MAX_RATIO = 1100


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
    atomic_write(path, lambda f: _write_npz(f, arrays))


def _write_npz(f, arrays):
    """The ``np.savez`` format, written member by member (any key, even ``file``)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _has_state_dict(obj):
    return not isinstance(obj, type) and callable(getattr(obj, "state_dict", None))


def _where(path):
    return "/".join(str(p) for p in path) or "<top level>"


def _encode(obj, path, arrays):
    """The JSON tree for ``obj``; arrays are moved into ``arrays`` under flattened keys."""
    if len(path) > MAX_DEPTH:
        raise ValueError(f"save: nested deeper than {MAX_DEPTH} levels at {_where(path[:5])}/...")
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
    version, arrays whose shape/dtype disagree with the metadata, sizes the file cannot
    hold, or metadata nested deeper than ``MAX_DEPTH``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no checkpoint file at {path!r}")
    with open(path, "rb") as f:
        try:
            arrays = _read_npz(f, os.fstat(f.fileno()).st_size)
            meta = _read_meta(arrays.pop(META_KEY, None))
            used = set()
            out = _decode(meta["tree"], arrays, used, 0)
            extra = sorted(set(arrays) - used)
            if extra:
                raise _Bad(f"it holds arrays the metadata does not describe: {extra}")
            return out
        except _Bad as e:
            raise ValueError(f"load: {path!r} is not a valid minigrad checkpoint: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                RecursionError, MemoryError, EOFError, OSError, RuntimeError, NotImplementedError,
                zipfile.BadZipFile) as e:
            # NOTE: whatever a mutated file makes zipfile, json or numpy raise (a bad CRC is
            # BadZipFile, an encrypted flag RuntimeError, an unknown compression method
            # NotImplementedError) means the same thing to the caller: not a checkpoint.
            raise ValueError(f"load: {path!r} is not a valid minigrad checkpoint: unreadable "
                             f"or truncated ({type(e).__name__}: {e})") from None


def _read_npz(f, file_size):
    """Every ``<key>.npy`` member as an array, each size checked before it is allocated."""
    head = f.read(6)
    f.seek(0)
    if head.startswith(b"\x93NUMPY"):
        raise _Bad("it is a single .npy array, not an .npz archive")
    if head[:2] != b"PK":
        raise _Bad("unreadable or truncated (not an .npz/zip archive)")
    arrays = {}
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        if sum(i.compress_size for i in infos) > file_size:
            raise _Bad("its members claim more bytes than the file holds")
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise _Bad(f"unexpected member {info.filename!r} (not an .npy array)")
            with zf.open(info) as m:
                arrays[info.filename[:-4]] = _read_npy(m, info)
    return arrays


def _read_npy(m, info):
    fmt = np.lib.format
    version = fmt.read_magic(m)
    if version not in ((1, 0), (2, 0)):
        raise _Bad(f"array {info.filename!r}: unsupported .npy version {version}")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(m)
    if dtype.hasobject or dtype.kind not in "biufcU":  # U: the metadata string
        raise _Bad(f"array {info.filename!r} has dtype {dtype}; checkpoints hold numbers only")
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
    room = info.file_size - m.tell()  # the bytes left after the header
    if nbytes > min(room, max(info.compress_size, 1) * _MAX_RATIO):
        raise _Bad(f"array {info.filename!r} claims shape {shape} ({nbytes} bytes), more than "
                   f"its {info.file_size}-byte member holds")
    data = m.read(nbytes + 1)  # one byte more: reaching the end runs zipfile's CRC check
    if len(data) != nbytes:
        raise _Bad(f"array {info.filename!r}: {len(data)} bytes of data, its header says "
                   f"{nbytes}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.copy()


def _read_meta(raw):
    if raw is None:
        raise _Bad(f"no {META_KEY!r} metadata entry (a plain .npz, not written by mg.save)")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise _Bad(f"the {META_KEY!r} entry is not a string")
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError, RecursionError) as e:
        raise _Bad(f"the metadata is not valid JSON or nested too deeply ({e})") from None
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


def _decode(node, arrays, used, depth):
    if depth > MAX_DEPTH:
        raise _Bad(f"the metadata is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict) or "kind" not in node:
        raise _Bad(f"malformed metadata node {str(node)[:80]}")
    kind = node["kind"]
    if kind == "value":
        value = node.get("value")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise _Bad(f"malformed metadata value {str(value)[:80]}")
        return value
    if kind == "array":
        key = node.get("key")
        if not isinstance(key, str) or key not in arrays:
            raise _Bad(f"the array {str(key)[:80]!r} listed in the metadata is missing")
        arr = arrays[key]
        shape, dtype = tuple(node.get("shape", ())), node.get("dtype")
        if arr.shape != shape or arr.dtype.str != dtype:
            raise _Bad(f"array {key!r} has shape {arr.shape} and dtype {arr.dtype.str}, the "
                       f"metadata says shape {shape} and dtype {dtype}")
        used.add(key)
        return arr[()] if node.get("scalar") else arr
    items = node.get("items")
    if not isinstance(items, list):
        raise _Bad(f"metadata node of kind {str(kind)[:40]} has no list of items")
    if kind == "dict":
        out = {}
        for item in items:
            if not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool) \
                    or not isinstance(item[0], (str, int)):
                raise _Bad(f"malformed dict item {str(item)[:80]}")
            out[item[0]] = _decode(item[1], arrays, used, depth + 1)
        return out
    if kind in ("list", "tuple"):
        items = [_decode(v, arrays, used, depth + 1) for v in items]
        return tuple(items) if kind == "tuple" else items
    raise _Bad(f"unknown metadata node kind {str(kind)[:40]}")
