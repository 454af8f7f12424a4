"""Tests for minigrad.data: tokenising, Vocab, padding and the two batchers.

Every test compares against a value worked out by hand or an independent
reconstruction (e.g. the original stream rebuilt from BPTT chunks), never against the
code under test itself.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrad.data import BPTTBatches, SequenceBatches, Vocab, pad_batch, tokenize_words

SETTINGS = settings(deadline=None, max_examples=25)
DATA_DIR = Path(__file__).resolve().parent.parent / "demos" / "data"


# -- tokenize_words ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", ["hello", ",", "world", "!"]),
        ("Don't stop.", ["don't", "stop", "."]),
        ("a well-known cat", ["a", "well-known", "cat"]),
        ("Wait... what?!", ["wait", ".", ".", ".", "what", "?", "!"]),
        ("x; y: (z)", ["x", ";", "y", ":", "(", "z", ")"]),
        ("  spaced\tout\nlines  ", ["spaced", "out", "lines"]),
        ("it\u2019s", ["it\u2019s"]),
        ("'quoted'", ["'", "quoted", "'"]),
        ("end-", ["end", "-"]),
        ("3.14 is pi", ["3", ".", "14", "is", "pi"]),
        ("", []),
    ],
)
def test_tokenize_words(text, expected):
    assert tokenize_words(text) == expected


def test_tokenize_words_rejects_non_str():
    with pytest.raises(TypeError, match="expected a str"):
        tokenize_words(["not", "a", "string"])


# -- Vocab: construction and ordering --------------------------------------------------


def test_specials_have_fixed_ids():
    v = Vocab(["x", "y"])
    assert v.itos[:3] == ["<PAD>", "<UNK>", "<EOS>"]
    assert (v.pad_id, v.unk_id, v.eos_id) == (0, 1, 2)
    assert (Vocab.PAD, Vocab.UNK, Vocab.EOS) == ("<PAD>", "<UNK>", "<EOS>")
    assert v.stoi == {"<PAD>": 0, "<UNK>": 1, "<EOS>": 2, "x": 3, "y": 4}
    assert len(v) == 5


def test_constructor_keeps_specials_already_in_place():
    v = Vocab(["<PAD>", "<UNK>", "<EOS>", "a"], level="word")
    assert v.itos == ["<PAD>", "<UNK>", "<EOS>", "a"]
    assert v.level == "word"


@pytest.mark.parametrize(
    "tokens, match",
    [
        (["a", "<PAD>", "<UNK>", "<EOS>"], "special tokens must be at ids 0, 1, 2"),
        (["<PAD>", "<UNK>", "a"], "special tokens must be at ids 0, 1, 2"),
        (["a", "b", "a"], "duplicate token 'a'"),
    ],
)
def test_constructor_errors(tokens, match):
    with pytest.raises(ValueError, match=match):
        Vocab(tokens)


def test_constructor_rejects_bad_level_and_non_str_tokens():
    with pytest.raises(ValueError, match="level must be 'char' or 'word', got 'byte'"):
        Vocab(["a"], level="byte")
    with pytest.raises(TypeError, match="token 1 is a int"):
        Vocab(["a", 7])


def test_build_orders_by_count_then_alphabetically():
    # counts: a=3, b=2, c=2, d=1 -> a, then b/c tied (alphabetical), then d
    v = Vocab.build(["cab", "bca", "ad"], level="char")
    assert v.itos == ["<PAD>", "<UNK>", "<EOS>", "a", "b", "c", "d"]


def test_build_is_independent_of_text_order():
    texts = ["the cat sat", "a dog ran", "the dog sat"]
    v1 = Vocab.build(texts, level="word")
    v2 = Vocab.build(list(reversed(texts)), level="word")
    assert v1 == v2
    assert v1.itos[3:] == ["dog", "sat", "the", "a", "cat", "ran"]


def test_build_accepts_single_string_and_generator():
    v1 = Vocab.build("hello", level="char")
    v2 = Vocab.build((s for s in ["hel", "lo"]), level="char")
    assert v1 == v2
    assert v1.itos[3] == "l"  # the only character seen twice
    assert len(v1) == 3 + 4


def test_build_word_level_lowercases():
    v = Vocab.build(["The THE the"], level="word")
    assert v.itos == ["<PAD>", "<UNK>", "<EOS>", "the"]


def test_build_char_level_keeps_case():
    v = Vocab.build(["Aa"], level="char")
    assert "A" in v and "a" in v


def test_min_count_drops_rare_tokens_to_unk():
    v = Vocab.build(["a a a b b c"], level="word", min_count=2)
    assert v.itos[3:] == ["a", "b"]
    assert "c" not in v
    assert v.encode("a c b").tolist() == [3, v.unk_id, 4]


def test_max_size_counts_specials_and_keeps_most_frequent():
    v = Vocab.build(["a a a a b b b c c d"], level="word", max_size=5)
    assert len(v) == 5
    assert v.itos[3:] == ["a", "b"]
    assert v.encode("c d").tolist() == [v.unk_id, v.unk_id]


def test_max_size_larger_than_corpus_is_harmless():
    v = Vocab.build(["a b"], level="word", max_size=100)
    assert len(v) == 5


@pytest.mark.parametrize("texts", ["", [], ["", ""], ["   "]])
def test_build_empty_corpus_raises(texts):
    level = "word"
    with pytest.raises(ValueError, match="Vocab.build: empty corpus"):
        Vocab.build(texts, level=level)


def test_build_empty_corpus_raises_char_level():
    with pytest.raises(ValueError, match="Vocab.build: empty corpus"):
        Vocab.build(["", ""], level="char")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_build_bad_min_count(bad):
    with pytest.raises(ValueError, match=rf"min_count must be an int >= 1, got {bad!r}"):
        Vocab.build(["abc"], min_count=bad)


@pytest.mark.parametrize("bad", [3, 0, -5, 10.0])
def test_build_bad_max_size(bad):
    with pytest.raises(ValueError, match=rf"max_size must be None or an int >= 4.*got {bad!r}"):
        Vocab.build(["abc"], max_size=bad)


def test_build_bad_level_and_non_str_text():
    with pytest.raises(ValueError, match="Vocab.build: level must be"):
        Vocab.build(["abc"], level="sentence")
    with pytest.raises(TypeError, match="text 1 is a list"):
        Vocab.build(["abc", ["a", "b"]])


# -- Vocab: encode / decode ------------------------------------------------------------


def test_char_encode_decode_by_hand():
    v = Vocab(list("abc"))
    ids = v.encode("cab", add_eos=True)
    assert ids.dtype == np.int64
    assert ids.tolist() == [5, 3, 4, 2]
    assert v.decode(ids) == "cab"


def test_encode_unknown_char_is_unk():
    v = Vocab(list("ab"))
    assert v.encode("azb").tolist() == [3, 1, 4]
    assert v.decode(v.encode("azb")) == "a<UNK>b"


def test_unseen_word_maps_to_unk():
    v = Vocab.build(["the cat sat on the mat."], level="word")
    ids = v.encode("The zebra sat.")
    assert ids.tolist() == [v["the"], v.unk_id, v["sat"], v["."]]
    assert v.decode(ids) == "the <UNK> sat."


def test_encode_token_list_is_used_as_given():
    v = Vocab.build(["the cat"], level="word")
    # no lowercasing or splitting of an explicit token list
    assert v.encode(["the", "Cat", "cat"]).tolist() == [v["the"], v.unk_id, v["cat"]]


def test_encode_add_eos_and_empty():
    v = Vocab(list("ab"))
    assert v.encode("").tolist() == []
    assert v.encode("").dtype == np.int64
    assert v.encode("", add_eos=True).tolist() == [2]
    assert v.encode("ab", add_eos=True)[-1] == v.eos_id


def test_word_decode_spacing():
    v = Vocab.build(["hello , world ! ( a b ) c ; d : e ? 50 %"], level="word")
    text = "hello, world! (a b) c; d: e? 50%"
    assert v.decode(v.encode(text)) == text


def test_decode_stop_at_eos_and_skip_pad():
    v = Vocab(list("ab"))
    ids = [3, 0, 4, 2, 3]
    assert v.decode(ids) == "ab"
    assert v.decode(ids, stop_at_eos=False) == "ab<EOS>a"
    assert v.decode(ids, skip_pad=False) == "a<PAD>b"
    assert v.decode(ids, stop_at_eos=False, skip_pad=False) == "a<PAD>b<EOS>a"
    assert v.decode([]) == ""
    assert v.decode(np.array([2, 3])) == ""


def test_decode_errors():
    v = Vocab(list("ab"))
    with pytest.raises(ValueError, match="id 5 out of range for a vocabulary of size 5"):
        v.decode([3, 5])
    with pytest.raises(ValueError, match="id -1 out of range"):
        v.decode([-1])
    with pytest.raises(ValueError, match=r"expected a 1-D sequence of ids, got shape \(1, 2\)"):
        v.decode([[3, 4]])
    with pytest.raises(TypeError, match="ids must be integers, got dtype float64"):
        v.decode([3.0])


def test_word_decode_round_trip_by_hand():
    v = Vocab.build(["don't stop the well-known cat, please!"], level="word")
    assert v.decode(v.encode("Don't stop the well-known cat, please!", add_eos=True)) == (
        "don't stop the well-known cat, please!"
    )


@SETTINGS
@given(st.text(min_size=1, max_size=60))
def test_char_round_trip_property(text):
    v = Vocab.build([text], level="char")
    ids = v.encode(text, add_eos=True)
    assert len(ids) == len(text) + 1
    assert ids[-1] == v.eos_id
    assert (ids[:-1] >= 3).all()  # every character is known, none is a special
    assert v.decode(ids) == text


_WORD_ALPHABET = st.sampled_from(list("abcdefghij0123456789") + list(" .,!?;:'-()") + ["  "])


@SETTINGS
@given(st.lists(_WORD_ALPHABET, min_size=1, max_size=40).map("".join))
def test_word_round_trip_property(text):
    tokens = tokenize_words(text)
    if not tokens:
        return
    v = Vocab.build([text], level="word")
    ids = v.encode(text)
    assert (ids >= 3).all()
    # Spacing is normalised by decode, but the tokens must survive exactly.
    assert tokenize_words(v.decode(ids)) == tokens


@SETTINGS
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=30))
def test_unknown_chars_become_unk_property(chars):
    v = Vocab(["a", "b"])
    ids = v.encode(chars)
    expected = [{"a": 3, "b": 4}.get(c, 1) for c in chars]
    assert ids.tolist() == expected


# -- Vocab: container protocol ---------------------------------------------------------


def test_container_protocol():
    v = Vocab(["x", "y"], level="word")
    assert "x" in v and "<PAD>" in v and "z" not in v
    assert v["y"] == 4
    assert v["nope"] == v.unk_id
    with pytest.raises(TypeError, match=r"use vocab.itos\[i\]"):
        v[3]


def test_equality_and_repr():
    a = Vocab(["x", "y"], level="word")
    assert a == Vocab(["x", "y"], level="word")
    assert a != Vocab(["x", "y"], level="char")
    assert a != Vocab(["y", "x"], level="word")
    assert a != ["<PAD>", "<UNK>", "<EOS>", "x", "y"]
    r = repr(a)
    assert "level='word'" in r and "size=5" in r and "'x'" in r
    assert "..." in repr(Vocab(list("abcdefgh")))


# -- Vocab: save / load ----------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    v = Vocab.build(["Grüße, naïve café! don't"], level="word", min_count=1)
    path = tmp_path / "vocab.json"
    v.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {"format": "minigrad-vocab", "version": 1, "level": "word", "tokens": v.itos}
    w = Vocab.load(path)
    assert w == v and w.level == "word"
    assert Vocab.load(str(path)) == v
    # only the target is left: the temporary file was moved into place
    assert os.listdir(tmp_path) == ["vocab.json"]


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "v.json"
    Vocab(list("ab")).save(path)
    Vocab(list("xyz"), level="char").save(path)
    assert Vocab.load(path).itos[3:] == ["x", "y", "z"]
    assert sorted(os.listdir(tmp_path)) == ["v.json"]


def test_save_failure_leaves_no_temp_file(tmp_path):
    target = tmp_path / "is_a_dir"
    target.mkdir()
    with pytest.raises(OSError):
        Vocab(list("ab")).save(target)  # os.replace onto a directory fails
    assert os.listdir(tmp_path) == ["is_a_dir"]


_GOOD = {
    "format": "minigrad-vocab",
    "version": 1,
    "level": "char",
    "tokens": ["<PAD>", "<UNK>", "<EOS>", "a"],
}


@pytest.mark.parametrize(
    "content, match",
    [
        ("this is not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        (json.dumps({**_GOOD, "format": "torch-vocab"}), "format is 'torch-vocab'"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "tokens"}), "missing key.*tokens"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "format"}), "missing key.*format"),
        (json.dumps({**_GOOD, "version": 2}), "unsupported version 2"),
        (json.dumps({**_GOOD, "level": "byte"}), "level must be 'char' or 'word'"),
        (json.dumps({**_GOOD, "tokens": "abc"}), "must be a list of strings"),
        (json.dumps({**_GOOD, "tokens": ["<PAD>", "<UNK>", "<EOS>", 5]}), "list of strings"),
        (json.dumps({**_GOOD, "tokens": ["<UNK>", "<PAD>", "<EOS>", "a"]}), "special tokens"),
        (json.dumps({**_GOOD, "tokens": ["a", "b"]}), "special tokens"),
        (
            json.dumps({**_GOOD, "tokens": ["<PAD>", "<UNK>", "<EOS>", "a", "a"]}),
            "duplicate token 'a'",
        ),
    ],
)
def test_load_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad_vocab.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        Vocab.load(path)
    assert "bad_vocab.json" in str(info.value)
    assert "is not a minigrad vocab file" in str(info.value)


def test_load_good_reference_file(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_GOOD), encoding="utf-8")
    assert Vocab.load(path) == Vocab(["a"], level="char")


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Vocab.load(tmp_path / "nope.json")


# -- pad_batch -------------------------------------------------------------------------


def test_pad_batch_by_hand():
    ids, lengths, mask = pad_batch([[5, 6, 7], [8], np.array([9, 10])], pad_id=0)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64 and mask.dtype == bool
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]


def test_pad_batch_pad_id_and_dtype():
    ids, _, mask = pad_batch([[1], [2, 3]], pad_id=-1, dtype=np.int32)
    assert ids.dtype == np.int32
    assert ids.tolist() == [[1, -1], [2, 3]]
    assert mask.tolist() == [[True, False], [True, True]]


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=9), min_size=1, max_size=7))
def test_pad_batch_property(seqs):
    ids, lengths, mask = pad_batch(seqs, pad_id=99)
    assert ids.shape == (len(seqs), max(len(s) for s in seqs))
    assert mask.shape == ids.shape
    assert lengths.tolist() == [len(s) for s in seqs]
    assert mask.sum() == sum(len(s) for s in seqs)
    for b, s in enumerate(seqs):
        assert ids[b, : len(s)].tolist() == s
        assert (ids[b, len(s) :] == 99).all()
        assert mask[b, : len(s)].all() and not mask[b, len(s) :].any()


def test_pad_batch_errors():
    with pytest.raises(ValueError, match="pad_batch: empty list of sequences"):
        pad_batch([])
    with pytest.raises(ValueError, match="pad_batch: sequence 1 is empty"):
        pad_batch([[1, 2], []])
    with pytest.raises(ValueError, match=r"sequence 0 must be 1-D, got shape \(2, 2\)"):
        pad_batch([[[1, 2], [3, 4]]])
    with pytest.raises(TypeError, match="sequence 0 must hold integer ids, got dtype float64"):
        pad_batch([[1.5, 2.0]])


# -- BPTTBatches -----------------------------------------------------------------------


def test_bptt_by_hand():
    # 11 ids, 2 rows of 5 (id 10 dropped): rows [0..4] and [5..9]; 4 steps per row.
    chunks = list(BPTTBatches(np.arange(11), batch_size=2, seq_len=3))
    assert len(chunks) == 2
    (x0, y0), (x1, y1) = chunks
    assert x0.tolist() == [[0, 1, 2], [5, 6, 7]]
    assert y0.tolist() == [[1, 2, 3], [6, 7, 8]]
    assert x1.tolist() == [[3], [8]]  # the last chunk is shorter
    assert y1.tolist() == [[4], [9]]
    assert x0.dtype == np.int64 and y0.dtype == np.int64


@SETTINGS
@given(
    n=st.integers(2, 200),
    batch_size=st.integers(1, 8),
    seq_len=st.integers(1, 12),
)
def test_bptt_continuity_property(n, batch_size, seq_len):
    if n // batch_size < 2:
        with pytest.raises(ValueError, match="too short"):
            BPTTBatches(np.arange(n), batch_size, seq_len)
        return
    # ids are distinct, so each one tells where it came from in the stream
    stream = np.arange(1000, 1000 + n)
    batches = BPTTBatches(stream, batch_size, seq_len)
    chunks = list(batches)
    assert len(chunks) == len(batches) >= 1
    row_len = n // batch_size
    for k, (x, y) in enumerate(chunks):
        assert x.shape == y.shape
        assert x.shape[0] == batch_size
        assert 1 <= x.shape[1] <= seq_len
        if k < len(chunks) - 1:
            assert x.shape[1] == seq_len
        # y is the next token in the stream
        pos = x - 1000
        assert (stream[pos + 1] == y).all()
        # each row is a contiguous run within its own row of the stream
        assert (np.diff(x, axis=1) == 1).all()
        assert ((pos // row_len) == np.arange(batch_size)[:, None]).all()
        if k > 0:
            # row b of chunk k starts exactly where row b of chunk k-1 ended
            prev_x = chunks[k - 1][0]
            assert (x[:, 0] == prev_x[:, -1] + 1).all()
    # together the chunks cover every row's steps exactly once
    xs = np.concatenate([x for x, _ in chunks], axis=1)
    ys = np.concatenate([y for _, y in chunks], axis=1)
    rows = stream[: batch_size * row_len].reshape(batch_size, row_len)
    assert (xs == rows[:, :-1]).all()
    assert (ys == rows[:, 1:]).all()


def test_bptt_is_reiterable_and_returns_copies():
    b = BPTTBatches(list(range(20)), batch_size=2, seq_len=4)
    first = [x.copy() for x, _ in b]
    for x, _ in b:
        x[:] = -1  # a caller scribbling on a batch must not change the next epoch
    assert all((a == x).all() for a, (x, _) in zip(first, b))


def test_bptt_errors():
    with pytest.raises(ValueError, match="stream of 3 ids is too short for batch_size=2"):
        BPTTBatches([1, 2, 3], batch_size=2, seq_len=5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        BPTTBatches(np.arange(10), batch_size=0, seq_len=2)
    with pytest.raises(ValueError, match="seq_len must be an int >= 1, got 0"):
        BPTTBatches(np.arange(10), batch_size=2, seq_len=0)
    with pytest.raises(ValueError, match="ids is empty"):
        BPTTBatches([], batch_size=1, seq_len=1)
    with pytest.raises(ValueError, match="ids must be 1-D"):
        BPTTBatches(np.zeros((2, 5), dtype=int), batch_size=1, seq_len=1)
    with pytest.raises(TypeError, match="ids must hold integer ids"):
        BPTTBatches(np.zeros(10), batch_size=1, seq_len=1)


def test_bptt_minimum_stream():
    ((x, y),) = BPTTBatches([7, 8, 9, 10], batch_size=2, seq_len=5)
    assert x.tolist() == [[7], [9]] and y.tolist() == [[8], [10]]


# -- SequenceBatches -------------------------------------------------------------------


def _seqs(n):
    """n distinct sequences: sequence i is [i+3] * (1 + i % 4) followed by EOS=2."""
    return [np.array([i + 3] * (1 + i % 4) + [2]) for i in range(n)]


def _epoch_ids(batches):
    """The first id of every sequence yielded in one epoch, in order."""
    seen = []
    for ids, lengths, mask in batches:
        assert ids.shape == mask.shape and lengths.shape == (ids.shape[0],)
        assert ids.shape[1] == lengths.max()
        assert (mask.sum(axis=1) == lengths).all()
        for row, length in zip(ids, lengths):
            assert row[length - 1] == 2  # EOS at the true end, padding after
            assert (row[length:] == 0).all()
            seen.append(int(row[0]) - 3)
    return seen


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 8), (1, 1)])
def test_sequence_batches_cover_every_sequence_once(n, batch_size):
    sb = SequenceBatches(_seqs(n), batch_size, rng=np.random.default_rng(1))
    assert len(sb) == -(-n // batch_size)
    for _ in range(3):
        seen = _epoch_ids(sb)
        assert sorted(seen) == list(range(n))


def test_sequence_batches_reshuffle_each_epoch_and_are_deterministic():
    seqs = _seqs(30)
    a = SequenceBatches(seqs, 4, rng=np.random.default_rng(7))
    b = SequenceBatches(seqs, 4, rng=np.random.default_rng(7))
    a1, a2 = _epoch_ids(a), _epoch_ids(a)
    assert a1 != a2  # a new order every epoch (30! orders; equal would be a bug)
    assert a1 != list(range(30))
    assert (_epoch_ids(b), _epoch_ids(b)) == (a1, a2)
    c = SequenceBatches(seqs, 4, rng=np.random.default_rng(8))
    assert _epoch_ids(c) != a1


def test_sequence_batches_default_rng_is_seeded():
    seqs = _seqs(20)
    assert _epoch_ids(SequenceBatches(seqs, 3)) == _epoch_ids(SequenceBatches(seqs, 3))
    assert _epoch_ids(SequenceBatches(seqs, 3)) == _epoch_ids(SequenceBatches(seqs, 3, rng=0))


def test_sequence_batches_no_shuffle_keeps_order():
    sb = SequenceBatches(_seqs(7), 3, shuffle=False)
    assert _epoch_ids(sb) == list(range(7))
    sizes = [ids.shape[0] for ids, _, _ in sb]
    assert sizes == [3, 3, 1]


def test_sequence_batches_drop_last():
    sb = SequenceBatches(_seqs(10), 4, rng=np.random.default_rng(0), drop_last=True)
    assert len(sb) == 2
    batches = list(sb)
    assert [ids.shape[0] for ids, _, _ in batches] == [4, 4]
    seen = _epoch_ids(batches)
    assert len(set(seen)) == 8


def test_sequence_batches_errors():
    with pytest.raises(ValueError, match="SequenceBatches: empty list of sequences"):
        SequenceBatches([], 2)
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        SequenceBatches([[1, 2], []], 2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        SequenceBatches(_seqs(3), 0)
    with pytest.raises(ValueError, match="drop_last=True with 3 sequences and batch_size=4"):
        SequenceBatches(_seqs(3), 4, drop_last=True)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        SequenceBatches(_seqs(3), 2, rng=np.random.RandomState(0))


# -- bundled corpora -------------------------------------------------------------------


def test_bundled_names_corpus():
    names = (DATA_DIR / "names.txt").read_text(encoding="ascii").splitlines()
    assert 1000 <= len(names) <= 3000
    assert len(set(names)) == len(names)
    assert all(n.isascii() and n.isalpha() and n.islower() for n in names)
    assert names != sorted(names)  # shuffled
    v = Vocab.build(names, level="char")
    assert v.itos[3:] == sorted(v.itos[3:], key=lambda c: -sum(n.count(c) for n in names))
    assert len(v) == 3 + 26


def test_bundled_sentences_corpus():
    lines = (DATA_DIR / "sentences.txt").read_text(encoding="utf-8").splitlines()
    assert 2000 <= len(lines) <= 4000
    assert all(line[-1] in ".!?" for line in lines)
    v_all = Vocab.build(lines, level="word")
    v2 = Vocab.build(lines, level="word", min_count=2)
    assert 200 <= len(v_all) <= 1000
    assert len(v2) < len(v_all)  # some words are rare and become <UNK>
    ids = np.concatenate([v2.encode(line, add_eos=True) for line in lines])
    assert (ids == v2.unk_id).any()


def test_make_sentences_regenerates_the_file(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sentences", DATA_DIR / "make_sentences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "s.txt"
    module.main(["--out", str(out)])
    assert out.read_bytes() == (DATA_DIR / "sentences.txt").read_bytes()
    module.main(["--n", "5", "--seed", "1", "--out", str(out)])
    assert len(out.read_text().splitlines()) == 5


# -- special ids and the one id range rule ------------------------------------------------


def test_special_ids_are_defined_once():
    from minigrad.data import EOS_ID, PAD_ID, UNK_ID

    v = Vocab.build("abc")
    assert (PAD_ID, UNK_ID, EOS_ID) == (v.pad_id, v.unk_id, v.eos_id) == (0, 1, 2)
    assert [v.itos[i] for i in (PAD_ID, UNK_ID, EOS_ID)] == list(Vocab.SPECIALS)


@pytest.mark.parametrize("ids, match", [
    ([[3, -1, 9]], r"token id -1 is out of range \(negative\): expected 0\.\.4 for "
                   r"vocabulary size=5"),
    ([[3, 7, 9]], r"token id 9 is out of range \(too large\): expected 0\.\.4"),
])
def test_check_ids_names_the_bad_id(ids, match):
    from minigrad.data import check_ids

    with pytest.raises(IndexError, match=match):
        check_ids("where", np.array(ids), 5)
    ok = np.array([[0, 4]])
    assert check_ids("where", ok, 5) is ok
    assert check_ids("where", np.zeros((0, 3), dtype=np.int64), 5).shape == (0, 3)


def test_pad_batch_given_strings_says_strings_not_ids():
    with pytest.raises(TypeError, match=r"pad_batch: sequence 1 is a str \('bob'\): got "
                                        r"strings, not ids; encode text first"):
        pad_batch([[1, 2], "bob"])
    with pytest.raises(TypeError, match="strings, not ids"):
        pad_batch(["anna", "bob"])
