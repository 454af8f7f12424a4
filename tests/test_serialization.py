"""Tests for mg.save / mg.load: round trips, atomic writes, bad files, exact resumption."""

import json
import os
import zipfile

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn, optim, serialization


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def meta_entry(**overrides):
    meta = {"format": "minigrad-checkpoint", "version": 1, "tree": {"kind": "dict", "items": []}}
    meta.update(overrides)
    return np.array(json.dumps(meta))


# ------------------------------------------------------------------ round trips

def test_round_trip_of_a_nested_tree(tmp_path):
    obj = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.array([1.5, np.nan, -np.inf]),
        "i64": np.array([[1], [2]], dtype=np.int64),
        "bool": np.array([True, False]),
        "zero_d": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "tensor": mg.tensor([1.0, 2.0]),
        "np_scalar": np.float32(0.1),
        "int": 10, "float": 0.1, "nan": float("nan"), "str": "héllo / wörld", "none": None,
        "flag": True, "list": [1, 2.5, "x", None], "tuple": (0.9, 0.999),
        "int_keys": {0: {"a": np.ones(2)}, 7: "seven"},
        "nested": {"deeper": {"deepest": [np.arange(3), {"k": np.eye(2)}]}},
        "empty_dict": {}, "empty_list": [],
    }
    path = tmp_path / "ckpt.npz"
    mg.save(obj, path)
    out = mg.load(path)
    assert list(out) == list(obj)  # key order kept
    for k in ("f32", "f64", "i64", "bool", "zero_d", "empty"):
        assert out[k].dtype == obj[k].dtype and out[k].shape == obj[k].shape
        np.testing.assert_array_equal(out[k], obj[k])
    assert isinstance(out["tensor"], np.ndarray) and out["tensor"].dtype == np.float32
    assert type(out["np_scalar"]) is np.float32 and out["np_scalar"] == np.float32(0.1)
    assert out["int"] == 10 and type(out["int"]) is int
    assert out["float"] == 0.1 and np.isnan(out["nan"])
    assert out["str"] == "héllo / wörld" and out["none"] is None and out["flag"] is True
    assert out["list"] == [1, 2.5, "x", None] and out["tuple"] == (0.9, 0.999)
    assert list(out["int_keys"]) == [0, 7] and out["int_keys"][7] == "seven"
    np.testing.assert_array_equal(out["int_keys"][0]["a"], [1, 1])
    deep = out["nested"]["deeper"]["deepest"]
    np.testing.assert_array_equal(deep[0], [0, 1, 2])
    np.testing.assert_array_equal(deep[1]["k"], np.eye(2))
    assert out["empty_dict"] == {} and out["empty_list"] == []


def test_module_checkpoint_is_a_readable_npz(tmp_path):
    mg.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 2))
    opt = optim.Adam(model.parameters())
    path = tmp_path / "m.npz"
    mg.save(model, path)
    sd = mg.load(path)
    assert list(sd) == ["0.weight", "1.weight", "1.bias"]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(sd[k], v)
    mg.save({"model": model, "optim": opt, "step": 3}, path)
    with np.load(path) as z:  # plain NumPy can read it, without pickle
        assert "model/1.weight" in z.files and "__minigrad__" in z.files
        np.testing.assert_array_equal(z["model/1.bias"], model[1].bias.data)
    ck = mg.load(path)
    assert ck["step"] == 3 and ck["optim"]["type"] == "Adam"
    assert ck["optim"]["hyperparams"]["betas"] == (0.9, 0.999)


def test_file_mode_is_that_of_a_normal_file(tmp_path):
    path = tmp_path / "m.npz"
    mg.save({"a": np.zeros(1)}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------ what cannot be saved

def test_save_refuses_unsupported_content(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match="cannot save a set \\(at a/b\\)"):
        mg.save({"a": {"b": {1, 2}}}, path)
    with pytest.raises(TypeError, match="array at w has dtype object"):
        mg.save({"w": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(TypeError, match="dict keys must be str or int, got float"):
        mg.save({1.5: 1}, path)
    with pytest.raises(TypeError, match="expected a Module, an Optimizer or a dict, got list"):
        mg.save([np.zeros(1)], path)
    with pytest.raises(ValueError, match="two arrays would be stored under the key 'a/b'"):
        mg.save({"a/b": np.zeros(1), "a": {"b": np.ones(1)}}, path)
    assert not path.exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------------ atomic writes

@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "ckpt.npz"
    mg.save({"w": np.arange(3.0)}, path)
    before = path.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def dies_mid_way(fp, arr, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first array is fully written, the second half-way
            fp.write(b"\x93NUMPY partial")
            raise exc
        return real(fp, arr, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", dies_mid_way)
    with pytest.raises(type(exc)):
        mg.save({"w": np.zeros(1000), "v": np.ones(1000), "u": np.ones(5)}, path)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temp file left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(mg.load(path)["w"], np.arange(3.0))


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(serialization, "_write_npz", boom)
    with pytest.raises(OSError, match="no space left"):
        mg.save({"w": np.zeros(3)}, tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ bad files

@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.npz"
    mg.save({"w": np.arange(100, dtype=np.float32), "n": 3}, path)
    return path


@pytest.mark.parametrize("keep", [0, 1, 30, 0.5, -1])
def test_truncated_file(good_file, keep):
    data = good_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    good_file.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"good\.npz' is not a valid minigrad checkpoint: "
                                         "unreadable or truncated"):
        mg.load(good_file)


def test_corrupted_array_bytes_fail_the_crc(good_file):
    data = bytearray(good_file.read_bytes())
    # the float32 value 50.0 is stored somewhere in the archive: flip one of its bytes
    at = bytes(data).index(np.float32(50.0).tobytes())
    data[at + 2] ^= 0xFF
    good_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="BadZipFile.*CRC"):
        mg.load(good_file)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match=r"noise\.npz' is not a valid minigrad checkpoint"):
        mg.load(path)


def test_plain_npz_and_npy(tmp_path):
    path = tmp_path / "plain.npz"
    write_npz(path, w=np.zeros(3))
    with pytest.raises(ValueError, match="no '__minigrad__' metadata entry"):
        mg.load(path)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        mg.load(npy)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        mg.load(tmp_path / "missing.npz")


def test_newer_or_foreign_metadata(tmp_path):
    path = tmp_path / "m.npz"
    write_npz(path, __minigrad__=meta_entry(version=2))
    with pytest.raises(ValueError, match="format version 2, newer than this minigrad reads "
                                         r"\(up to 1\)"):
        mg.load(path)
    write_npz(path, __minigrad__=meta_entry(format="other"))
    with pytest.raises(ValueError, match="no 'minigrad-checkpoint' format tag"):
        mg.load(path)
    write_npz(path, __minigrad__=np.array("{not json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        mg.load(path)
    write_npz(path, __minigrad__=meta_entry(tree={"kind": "dict", "items": [["a", 5]]}))
    with pytest.raises(ValueError, match="malformed metadata"):
        mg.load(path)


def test_arrays_must_match_the_metadata(tmp_path):
    path = tmp_path / "m.npz"
    node = {"kind": "array", "key": "w", "shape": [3], "dtype": "<f4"}
    tree = {"kind": "dict", "items": [["w", node]]}
    write_npz(path, w=np.zeros(3, dtype=np.float64), __minigrad__=meta_entry(tree=tree))
    with pytest.raises(ValueError, match=r"array 'w' has shape \(3,\) and dtype <f8, the "
                                         r"metadata says shape \(3,\) and dtype <f4"):
        mg.load(path)
    write_npz(path, w=np.zeros(4, dtype=np.float32), __minigrad__=meta_entry(tree=tree))
    with pytest.raises(ValueError, match=r"has shape \(4,\)"):
        mg.load(path)
    write_npz(path, __minigrad__=meta_entry(tree=tree))
    with pytest.raises(ValueError, match="the array 'w' listed in the metadata is missing"):
        mg.load(path)
    write_npz(path, w=np.zeros(3, dtype=np.float32), x=np.ones(1),
              __minigrad__=meta_entry(tree=tree))
    with pytest.raises(ValueError, match=r"arrays the metadata does not describe: \['x'\]"):
        mg.load(path)
    with zipfile.ZipFile(path) as z:  # sanity: the file itself is a fine zip
        assert z.testzip() is None


# ------------------------------------------------------------------ models and resumption

class TinyLM(nn.Module):
    """Embedding -> tanh Linear -> dropout -> Linear over a 6-token vocabulary."""

    def __init__(self, hidden=8):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.hidden = nn.Linear(4, hidden)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, 6)

    def forward(self, ids):
        return self.out(self.drop(self.hidden(self.emb(ids)).tanh()))


IDS = np.random.default_rng(1).integers(0, 6, size=(10, 4, 5))  # 10 batches (B=4, T=5)


def train_steps(model, opt, sched, steps):
    for s in steps:
        x, y = IDS[s][:, :-1], IDS[s][:, 1:]
        opt.zero_grad()
        mg.cross_entropy(model(x), y).backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def fresh(seed):
    mg.manual_seed(seed)
    model = TinyLM()
    opt = optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    return model, opt, optim.StepLR(opt, step_size=3, gamma=0.5)


def test_resume_is_bit_for_bit(tmp_path):
    """10 steps straight == 5 steps, save, new process-like restart, load, 5 steps."""
    model_a, opt_a, sched_a = fresh(0)
    train_steps(model_a, opt_a, sched_a, range(10))

    model_b, opt_b, sched_b = fresh(0)
    train_steps(model_b, opt_b, sched_b, range(5))
    path = tmp_path / "ckpt.npz"
    mg.save({"model": model_b, "optim": opt_b, "sched": sched_b, "step": 5,
             "rng": mg.get_rng().bit_generator.state}, path)  # dropout's generator too

    model_c, opt_c, sched_c = fresh(123)  # different init and generator state
    mg.manual_seed(999)
    ck = mg.load(path)
    model_c.load_state_dict(ck["model"])
    opt_c.load_state_dict(ck["optim"])
    sched_c.load_state_dict(ck["sched"])
    mg.get_rng().bit_generator.state = ck["rng"]
    train_steps(model_c, opt_c, sched_c, range(ck["step"], 10))

    assert opt_c.lr == opt_a.lr
    for (name, a), (_, c) in zip(model_a.named_parameters(), model_c.named_parameters()):
        assert a.dtype == c.dtype == np.float32
        assert np.array_equal(a.data, c.data), name  # bit for bit
    for sa, sc in zip(opt_a.state, opt_c.state):
        assert sa["step"] == sc["step"] == 10
        assert np.array_equal(sa["exp_avg_sq"], sc["exp_avg_sq"])


def test_loading_into_a_different_architecture(tmp_path):
    path = tmp_path / "ckpt.npz"
    mg.save(TinyLM(hidden=8), path)
    other = TinyLM(hidden=16)
    other.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError) as info:
        other.load_state_dict(mg.load(path))
    msg = str(info.value)
    assert "missing keys: ['extra.weight', 'extra.bias']" in msg
    assert "shape mismatch for 'hidden.weight': checkpoint (8, 4), model (16, 4)" in msg
    assert "shape mismatch for 'out.weight': checkpoint (6, 8), model (6, 16)" in msg
    opt_sd = optim.Adam(TinyLM(hidden=8).parameters()).state_dict()
    mg.save({"optim": opt_sd}, path)
    with pytest.raises(ValueError, match=r"params\[1\]: saved \(8, 4\), here \(16, 4\)"):
        optim.Adam(TinyLM(hidden=16).parameters()).load_state_dict(mg.load(path)["optim"])


# ------------------------------------------------------------------ crafted files and faults

def nested(depth):
    """The JSON text of a metadata tree ``depth`` lists deep (built as text: json.dumps
    itself cannot go 5000 deep)."""
    return '{"kind": "list", "items": [' * depth + '{"kind": "value", "value": 1}' + "]}" * depth


@pytest.mark.parametrize("depth", [150, 5000])
def test_deeply_nested_metadata_is_a_value_error(tmp_path, depth):
    # 5000 levels used to raise a bare RecursionError from json / the decoder.
    path = tmp_path / "deep.npz"
    write_npz(path, __minigrad__=np.array(
        '{"format": "minigrad-checkpoint", "version": 1, "tree": ' + nested(depth) + "}"))
    with pytest.raises(ValueError, match="nested (too )?deep"):
        mg.load(path)
    deep = 0
    for _ in range(120):
        deep = [deep]
    with pytest.raises(ValueError, match="save: nested deeper than 100 levels"):
        mg.save({"x": deep}, tmp_path / "never.npz")


def write_npy_member(zf, name, shape, data=b"", dtype="<f8"):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with zf.open(name, "w") as m:
        np.lib.format.write_array_header_1_0(m, header)
        m.write(data)


@pytest.mark.parametrize("shape", [(10 ** 13,), (10 ** 7, 10 ** 7), (3,)])
def test_array_sizes_are_checked_before_allocating(tmp_path, shape):
    # A header claiming 10^13 elements used to raise a bare MemoryError.
    path = tmp_path / "huge.npz"
    node = {"kind": "array", "key": "w", "shape": list(shape), "dtype": "<f8"}
    with zipfile.ZipFile(path, "w") as zf:
        write_npy_member(zf, "w.npy", shape, data=b"\0" * 16)
        with zf.open("__minigrad__.npy", "w") as m:
            np.lib.format.write_array(m, meta_entry(tree=node))
    with pytest.raises(ValueError, match=r"array 'w.npy' claims shape .* more than its "
                                         r"\d+-byte member holds"):
        mg.load(path)


def test_fuzzed_files_give_a_checkpoint_or_a_value_error(tmp_path):
    """Random and mutated bytes: mg.load returns a tree or raises ValueError, nothing else."""
    from hypothesis import given
    from hypothesis import strategies as st

    good = tmp_path / "good.npz"
    mg.save({"model": nn.Linear(3, 2), "step": 7, "name": "x", "l": [1.5, None]}, good)
    original = good.read_bytes()
    path = tmp_path / "fuzz.npz"

    def check(data):
        path.write_bytes(data)
        try:
            out = mg.load(path)
        except ValueError:
            return
        assert isinstance(out, dict)

    @given(st.binary(max_size=600))
    def random_bytes(data):
        check(data)

    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                    min_size=1, max_size=8),
           st.integers(0, len(original)))
    def mutated(edits, cut):
        data = bytearray(original)
        for at, byte in edits:
            data[at] = byte
        check(bytes(data[:cut]) if cut < 40 else bytes(data))

    random_bytes()
    mutated()


def orphans(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


KILLED_MID_SAVE = r"""
import sys
import numpy as np
import minigrad as mg
path = sys.argv[1]
big = {"w": np.ones(25_000_000, dtype=np.float32)}  # 100 MB: each save takes a while
print("ready", flush=True)
while True:
    mg.save(big, path)
"""


def test_a_process_killed_mid_save_leaves_the_old_checkpoint_and_no_orphan(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "ckpt.npz"
    mg.save({"w": np.arange(4.0), "step": 1}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not orphans(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert orphans(tmp_path), "the child never started a save"
        proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup code runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert orphans(tmp_path)  # the killed writer's temp file is still there ...
    ckpt = mg.load(path)  # ... and the checkpoint is the old one or a complete new one
    assert ckpt.get("step") == 1 or ckpt["w"].shape == (25_000_000,)
    mg.save({"w": np.zeros(2), "step": 2}, path)  # the next save sweeps the orphan
    assert orphans(tmp_path) == []
    assert mg.load(path)["step"] == 2


def test_a_disk_full_mid_save_keeps_the_old_checkpoint_and_names_the_target(tmp_path,
                                                                           monkeypatch):
    import errno

    path = tmp_path / "ckpt.npz"
    mg.save({"w": np.arange(3.0)}, path)
    before = path.read_bytes()
    real = serialization._write_npz

    def fills_the_disk(f, arrays):
        f.write(b"PK\x03\x04" + b"\0" * 1000)  # part of a file is on disk ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(serialization, "_write_npz", fills_the_disk)
    with pytest.raises(OSError, match=r"save: could not write '.*ckpt\.npz': No space left"
                       ) as info:
        mg.save({"w": np.zeros(1000)}, path)
    assert info.value.errno == errno.ENOSPC and ".tmp" not in str(info.value)
    assert path.read_bytes() == before and orphans(tmp_path) == []
    monkeypatch.setattr(serialization, "_write_npz", real)
    np.testing.assert_array_equal(mg.load(path)["w"], np.arange(3.0))


def test_a_failed_fsync_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """The new file must be on disk before it replaces the old one: a save whose fsync fails
    (an I/O error, a disk gone) has not touched the checkpoint, whatever the order of calls
    a refactoring gives ``atomic_write``."""
    import errno

    from minigrad import atomic

    path = tmp_path / "ckpt.npz"
    mg.save({"step": 1, "w": np.arange(3.0)}, path)
    before = path.read_bytes()
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match=r"save: could not write '.*ckpt\.npz': Input/output"):
        mg.save({"step": 2, "w": np.zeros(1000)}, path)
    assert calls and path.read_bytes() == before and orphans(tmp_path) == []
    monkeypatch.undo()
    assert mg.load(path)["step"] == 1


def test_a_read_only_directory_names_the_target_not_a_temp_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"save: could not write '.*x\.npz'"):
            mg.save({"w": np.zeros(1)}, tmp_path / "x.npz")
    finally:
        tmp_path.chmod(0o700)


def test_orphans_of_dead_writers_are_swept_by_both_savers(tmp_path):
    from minigrad.atomic import sweep_orphans
    from minigrad.data import Vocab

    dead = tmp_path / ".minigrad-999999999-abc123.tmp"  # no such pid
    alive = tmp_path / f".minigrad-{os.getpid()}-live01.tmp"  # a save in progress: kept
    old = tmp_path / ".vocab-k2j4h1.tmp"  # the previous naming, an hour old
    other = tmp_path / "notes.tmp"  # not ours: never touched
    for p in (dead, alive, old, other):
        p.write_bytes(b"x")
    os.utime(old, (0, 0))
    Vocab.build("abc").save(tmp_path / "vocab.json")
    assert orphans(tmp_path) == sorted([alive.name, other.name])
    dead.write_bytes(b"x")
    mg.save({"w": np.zeros(1)}, tmp_path / "c.npz")
    assert orphans(tmp_path) == sorted([alive.name, other.name])
    assert sweep_orphans(tmp_path) == []
