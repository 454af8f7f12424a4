"""Text and sequence tools: tokenising, vocabularies, padding and batching.

Everything a sequence model needs between raw text and integer arrays:

- `tokenize_words` splits text into lowercase words and punctuation tokens.
- `Vocab` maps tokens to ids and back (character or word level), with the special
  tokens `<PAD>` = 0, `<UNK>` = 1 and `<EOS>` = 2 (`PAD_ID`, `UNK_ID`, `EOS_ID`), and
  saves/loads itself as JSON.
- `check_ids` is the one range check for token ids (layers, embeddings, targets).
- `pad_batch` pads variable-length id sequences into one `(B, T)` array plus lengths
  and a mask.
- `BPTTBatches` cuts one long id stream into `(B, T)` chunks for truncated
  backpropagation through time, so a hidden state can be carried across chunks.
- `SequenceBatches` batches many short sequences (names, sentences), reshuffled
  every epoch from a seeded `numpy.random.Generator`.

The module is pure NumPy on purpose: it imports nothing else from minigrad but the
standard-library `atomic` helper, so it can be used (and tested) without the autodiff
engine.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from minigrad.atomic import atomic_write

__all__ = ["EOS_ID", "PAD_ID", "UNK_ID", "BPTTBatches", "SequenceBatches", "Vocab", "check_ids",
           "pad_batch", "tokenize_words"]

# The special ids, defined once: every Vocab has <PAD>, <UNK>, <EOS> at 0, 1, 2.
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


def check_ids(where, ids, n, what="token id", size="vocabulary size"):
    """The one range rule for integer ids: every id must be in ``0 .. n-1``.

    Raises IndexError naming ``where``, the offending id (the most negative one if any is
    negative, else the largest) and the valid range, e.g. ``Embedding: index -1 is out of
    range (negative): expected 0..9 for num_embeddings=10``.  ``ids``: an integer ndarray.
    """
    if ids.size == 0:
        return ids
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
        bad, kind = (lo, "negative") if lo < 0 else (hi, "too large")
        raise IndexError(f"{where}: {what} {bad} is out of range ({kind}): expected "
                         f"0..{n - 1} for {size}={n}")
    return ids


def check_lengths(where, lengths, B, T, what="lengths"):
    """The one rule for the true lengths of a padded batch: ``B`` integers in ``1 .. T``.

    Returns them as an int64 array; raises ValueError naming ``where`` and what was wrong
    (not integers, a different batch size, a length outside 1..T)."""
    lengths = np.asarray(getattr(lengths, "data", lengths))
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError(f"{where}: {what} must be {B} integers (one per sequence), got shape "
                         f"{lengths.shape} dtype {lengths.dtype}")
    if lengths.shape[0] != B:
        raise ValueError(f"{where}: batch sizes differ: {lengths.shape[0]} {what} for a batch "
                         f"of {B} sequences")
    if lengths.size and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"{where}: {what} must be in 1..{T} (T, the padded length), got min "
                         f"{lengths.min()} max {lengths.max()}")
    return lengths.astype(np.int64)

# A word is a run of letters/digits; an apostrophe or hyphen *between* two such runs
# stays inside it ("don't", "well-known"). Any other non-space character is a token
# of its own, so "end." -> ["end", "."] and "..." -> [".", ".", "."].
_TOKEN_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]|_")

# Word-level decoding glues these to the previous token ("hi ." -> "hi.") ...
_NO_SPACE_BEFORE = frozenset(".,!?;:%)]}\u2026")
# ... and these to the next one ("( a" -> "(a").
_NO_SPACE_AFTER = frozenset("([{")

_LEVELS = ("char", "word")
_FORMAT = "minigrad-vocab"
_VERSION = 1


def tokenize_words(text: str) -> list[str]:
    """Split `text` into lowercase word and punctuation tokens.

    Words keep inner apostrophes and hyphens; every other punctuation character is a
    token of its own::

        >>> tokenize_words("Don't stop, well-known cat!")
        ["don't", 'stop', ',', 'well-known', 'cat', '!']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize_words: expected a str, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


def _join_words(tokens: Sequence[str]) -> str:
    """Join word tokens with spaces, except around punctuation that hugs its neighbour."""
    parts: list[str] = []
    prev = None
    for tok in tokens:
        if parts and tok not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(tok)
        prev = tok
    return "".join(parts)


def _check_level(level: object, where: str) -> str:
    if level not in _LEVELS:
        raise ValueError(f"{where}: level must be 'char' or 'word', got {level!r}")
    return level  # type: ignore[return-value]


class Vocab:
    """A two-way mapping between tokens and integer ids.

    Ids 0, 1, 2 are always `<PAD>`, `<UNK>` and `<EOS>`; the corpus tokens follow.
    `level="char"` treats a string as a sequence of characters (case kept);
    `level="word"` tokenises it with `tokenize_words` (lowercased).

    Args:
        tokens: the tokens in id order. The three specials are prepended when none of
            them is present; if they are present they must already be at ids 0, 1, 2.
        level: "char" or "word".

    `itos` (id -> token list) and `stoi` (token -> id dict) are plain containers
    exposed for speed; treat them as read-only.
    """

    PAD = "<PAD>"
    UNK = "<UNK>"
    EOS = "<EOS>"
    SPECIALS = (PAD, UNK, EOS)

    def __init__(self, tokens: Iterable[str], level: str = "char") -> None:
        self.level = _check_level(level, "Vocab")
        tokens = list(tokens)
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise TypeError(
                    f"Vocab: token {i} is a {type(tok).__name__} ({tok!r}), expected str"
                )
        if not any(tok in self.SPECIALS for tok in tokens):
            tokens = [*self.SPECIALS, *tokens]
        elif tuple(tokens[:3]) != self.SPECIALS:
            raise ValueError(
                f"Vocab: special tokens must be at ids 0, 1, 2 as {list(self.SPECIALS)} "
                f"(or absent, to be prepended), got {tokens[:3]!r}"
            )
        stoi: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in stoi:
                raise ValueError(f"Vocab: duplicate token {tok!r} at ids {stoi[tok]} and {i}")
            stoi[tok] = i
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = stoi

    @classmethod
    def build(
        cls,
        texts: str | Iterable[str],
        level: str = "char",
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocab:
        """Build a vocabulary from a corpus.

        Args:
            texts: one string, or an iterable of strings (each a sequence: a name, a
                sentence, a document).
            level: "char" or "word".
            min_count: tokens seen fewer times are left out (they encode as `<UNK>`).
            max_size: the largest vocabulary size, *including* the three specials
                (so a 10 000-word dictionary holds 9 997 corpus words); the least
                frequent tokens beyond it are left out. None means no limit.

        Tokens are ordered by descending count, ties alphabetically (by code point),
        so the same corpus always gives the same ids.
        """
        _check_level(level, "Vocab.build")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"Vocab.build: min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 4
        ):
            raise ValueError(
                "Vocab.build: max_size must be None or an int >= 4 (it counts the 3 special "
                f"tokens), got {max_size!r}"
            )
        if isinstance(texts, str):
            texts = [texts]
        counts: Counter[str] = Counter()
        n_texts = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Vocab.build: text {i} is a {type(text).__name__}, expected str")
            counts.update(text if level == "char" else tokenize_words(text))
            n_texts += 1
        if not counts:
            raise ValueError(f"Vocab.build: empty corpus (no tokens in {n_texts} texts)")
        # Specials are ids 0-2 by construction; a corpus occurrence must not duplicate them.
        for special in cls.SPECIALS:
            counts.pop(special, None)
        kept = sorted(
            (tok for tok, c in counts.items() if c >= min_count),
            key=lambda tok: (-counts[tok], tok),
        )
        if max_size is not None:
            kept = kept[: max_size - len(cls.SPECIALS)]
        return cls(kept, level=level)

    # -- ids ---------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def tokenize(self, text: str) -> list[str]:
        """Split `text` the way this vocabulary does: characters or `tokenize_words`."""
        return list(text) if self.level == "char" else tokenize_words(text)

    def encode(self, text_or_tokens: str | Iterable[str], add_eos: bool = False) -> np.ndarray:
        """Map a string (tokenised per `level`) or a token list to ids.

        Token lists are looked up as given (no lowercasing). Unknown tokens become
        `unk_id`; `add_eos` appends `eos_id`.

        Returns:
            int64 array of shape (n_tokens,) or (n_tokens + 1,) with `add_eos`.
        """
        if isinstance(text_or_tokens, str):
            tokens: Iterable[str] = self.tokenize(text_or_tokens)
        else:
            tokens = text_or_tokens
        unk, stoi = self.unk_id, self.stoi
        ids = [stoi.get(tok, unk) for tok in tokens]
        if add_eos:
            ids.append(self.eos_id)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True, skip_pad: bool = True) -> str:
        """Map a 1-D sequence of ids back to text.

        Args:
            ids: shape (n,) integers in [0, len(self)).
            stop_at_eos: stop before the first `<EOS>`; otherwise it is written out.
            skip_pad: drop `<PAD>` ids; otherwise they are written out.

        Characters are joined with no separator; words with single spaces, except no
        space before closing punctuation (`.,!?;:)` ...) or after opening brackets.
        `<UNK>` is written as "<UNK>".
        """
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"Vocab.decode: expected a 1-D sequence of ids, got shape {arr.shape}")
        if arr.size == 0:
            return ""
        if arr.dtype.kind not in "iu":
            raise TypeError(f"Vocab.decode: ids must be integers, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= len(self.itos))
        if bad.any():
            raise ValueError(
                f"Vocab.decode: id {int(arr[bad][0])} out of range for a vocabulary of "
                f"size {len(self.itos)}"
            )
        tokens: list[str] = []
        for i in arr.tolist():
            if i == self.eos_id and stop_at_eos:
                break
            if i == self.pad_id and skip_pad:
                continue
            tokens.append(self.itos[i])
        return "".join(tokens) if self.level == "char" else _join_words(tokens)

    # -- container protocol --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        """The id of `token`, or `unk_id` if it is not in the vocabulary."""
        if not isinstance(token, str):
            # vocab[3] is almost always a mix-up with vocab.itos[3]; say so.
            raise TypeError(
                f"Vocab[...] maps a token (str) to its id, got {type(token).__name__}; "
                "use vocab.itos[i] for id -> token"
            )
        return self.stoi.get(token, self.unk_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.level == other.level and self.itos == other.itos

    __hash__ = None  # type: ignore[assignment]  # mutable containers inside; not hashable

    def __repr__(self) -> str:
        head = self.itos[:8]
        more = ", ..." if len(self.itos) > len(head) else ""
        shown = ", ".join(repr(t) for t in head)
        return f"Vocab(level={self.level!r}, size={len(self)}, tokens=[{shown}{more}])"

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON, atomically.

        The file is `{"format": "minigrad-vocab", "version": 1, "level": ...,
        "tokens": [...]}`. It is written with `minigrad.atomic.atomic_write` (a temporary
        file moved into place), so a crash never leaves a half-written file.
        """
        payload = {"format": _FORMAT, "version": _VERSION, "level": self.level, "tokens": self.itos}

        def write(f):
            json.dump(payload, f, ensure_ascii=False, indent=1)
            f.write("\n")

        atomic_write(path, write, mode="w", encoding="utf-8", where="Vocab.save")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """Read a vocabulary written by `save`.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a minigrad vocab file (not JSON, wrong
                "format" or "version", missing keys, bad level, specials not at ids
                0, 1, 2, duplicate or non-string tokens). The message names the file.
        """
        path = os.fspath(path)

        def fail(why: str) -> ValueError:
            return ValueError(f"Vocab.load: {path!r} is not a minigrad vocab file: {why}")

        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(f"not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("format", "version", "level", "tokens") if k not in data]
        if missing:
            raise fail(f"missing key(s) {missing}")
        if data["format"] != _FORMAT:
            raise fail(f"format is {data['format']!r}, expected {_FORMAT!r}")
        if data["version"] != _VERSION:
            raise fail(f"unsupported version {data['version']!r}, expected {_VERSION}")
        if data["level"] not in _LEVELS:
            raise fail(f"level must be 'char' or 'word', got {data['level']!r}")
        tokens = data["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise fail('"tokens" must be a list of strings')
        if tuple(tokens[:3]) != cls.SPECIALS:
            raise fail(
                f"special tokens must be {list(cls.SPECIALS)} at ids 0, 1, 2, got {tokens[:3]!r}"
            )
        seen: set[str] = set()
        for tok in tokens:
            if tok in seen:
                raise fail(f"duplicate token {tok!r}")
            seen.add(tok)
        return cls(tokens, level=data["level"])


# -- batching --------------------------------------------------------------------------


def _as_id_array(seq: object, where: str) -> np.ndarray:
    """A non-empty 1-D integer array, or a clear error saying which input was wrong."""
    if isinstance(seq, (str, bytes)):
        raise TypeError(f"{where} is a {type(seq).__name__} ({seq[:20]!r}): got strings, not "
                        "ids; encode text first with vocab.encode(text)")
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"{where} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{where} is empty")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where} must hold integer ids, got dtype {arr.dtype}")
    return arr


def pad_batch(
    seqs: Sequence[Sequence[int] | np.ndarray], pad_id: int = 0, dtype=np.int64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad 1-D id sequences of different lengths into one array.

    Args:
        seqs: B non-empty 1-D integer sequences.
        pad_id: the id written after the end of each shorter sequence.
        dtype: dtype of the returned ids.

    Returns:
        ids: (B, T) `dtype`, T = the longest length; row b is seqs[b] then `pad_id`.
        lengths: (B,) int64, the length of each sequence.
        mask: (B, T) bool, True at real tokens, False at padding.
    """
    if len(seqs) == 0:
        raise ValueError("pad_batch: empty list of sequences")
    arrays = [_as_id_array(s, f"pad_batch: sequence {i}") for i, s in enumerate(seqs)]
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    ids = np.full((len(arrays), int(lengths.max())), pad_id, dtype=dtype)
    for row, a in zip(ids, arrays):
        row[: a.shape[0]] = a
    mask = np.arange(ids.shape[1]) < lengths[:, None]
    return ids, lengths, mask


def _check_positive_int(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    return int(value)


class BPTTBatches:
    """Chunks of one long id stream for truncated backpropagation through time.

    The stream of N ids is cut into `batch_size` contiguous rows of L = N // batch_size
    ids each (the last N - batch_size * L ids are dropped). Chunk k holds columns
    [k * seq_len, k * seq_len + t) of every row, so row b of chunk k + 1 continues
    exactly where row b of chunk k stopped: carry the hidden state across chunks
    (detached) and it sees one unbroken text per row.

    Each item is `(x, y)`, two int64 arrays of shape (batch_size, t) with
    t = seq_len, except the last chunk which may be shorter (t >= 1). `y` is the
    next-token target: `y[b, j]` is the id that follows `x[b, j]` in the stream. Each
    row gives L - 1 (input, target) steps, since its last id has no target inside it.

    `len()` is the number of chunks; iterating again starts again from chunk 0.
    """

    def __init__(self, ids: Sequence[int] | np.ndarray, batch_size: int, seq_len: int) -> None:
        stream = _as_id_array(ids, "BPTTBatches: ids")
        self.batch_size = _check_positive_int(batch_size, "batch_size", "BPTTBatches")
        self.seq_len = _check_positive_int(seq_len, "seq_len", "BPTTBatches")
        row_len = stream.shape[0] // self.batch_size
        if row_len < 2:
            raise ValueError(
                f"BPTTBatches: a stream of {stream.shape[0]} ids is too short for "
                f"batch_size={self.batch_size}: each row needs at least 2 ids (one input "
                f"and its target), so at least {2 * self.batch_size} ids"
            )
        # (B, L): row b is the contiguous slice stream[b * L:(b + 1) * L].
        self.rows = (
            stream[: self.batch_size * row_len].astype(np.int64).reshape(self.batch_size, row_len)
        )

    @property
    def steps_per_row(self) -> int:
        """Number of (input, target) positions per row over one epoch: L - 1."""
        return self.rows.shape[1] - 1

    def __len__(self) -> int:
        return (self.steps_per_row + self.seq_len - 1) // self.seq_len

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        steps = self.steps_per_row
        for start in range(0, steps, self.seq_len):
            t = min(self.seq_len, steps - start)
            # Copies, so a caller that edits a batch in place cannot corrupt the stream.
            x = self.rows[:, start : start + t].copy()
            y = self.rows[:, start + 1 : start + 1 + t].copy()
            yield x, y

    def __repr__(self) -> str:
        return (
            f"BPTTBatches(batch_size={self.batch_size}, seq_len={self.seq_len}, chunks={len(self)})"
        )


class SequenceBatches:
    """Mini-batches of short, variable-length id sequences (names, sentences).

    Args:
        seqs: non-empty 1-D integer sequences, typically `vocab.encode(s, add_eos=True)`.
        batch_size: sequences per batch.
        shuffle: draw a new order every epoch (each `iter()`); otherwise keep the
            given order.
        rng: a `numpy.random.Generator` (or an int seed) used for shuffling. None
            means `numpy.random.default_rng(0)`, created once here, so the run is
            reproducible and successive epochs still get different orders.
        drop_last: drop the final batch if it has fewer than `batch_size` sequences.

    Each item is `pad_batch(batch)` with pad id 0: `(ids (B, T) int64, lengths (B,)
    int64, mask (B, T) bool)`, T = the longest sequence in that batch. Over one epoch
    every sequence appears exactly once (minus the dropped remainder with
    `drop_last`). `len()` is the number of batches per epoch.
    """

    def __init__(
        self,
        seqs: Sequence[Sequence[int] | np.ndarray],
        batch_size: int,
        shuffle: bool = True,
        rng: np.random.Generator | int | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(seqs) == 0:
            raise ValueError("SequenceBatches: empty list of sequences")
        # Validate everything now, so a bad sequence fails here and not mid-epoch.
        self.seqs = [
            _as_id_array(s, f"SequenceBatches: sequence {i}").astype(np.int64)
            for i, s in enumerate(seqs)
        ]
        self.batch_size = _check_positive_int(batch_size, "batch_size", "SequenceBatches")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if self.drop_last and len(self.seqs) < self.batch_size:
            raise ValueError(
                f"SequenceBatches: drop_last=True with {len(self.seqs)} sequences and "
                f"batch_size={self.batch_size} would yield no batch at all"
            )
        if rng is None:
            rng = np.random.default_rng(0)
        elif isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = np.random.default_rng(int(rng))
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(
                "SequenceBatches: rng must be a numpy.random.Generator, an int seed or "
                f"None, got {type(rng).__name__}"
            )
        self.rng = rng

    def __len__(self) -> int:
        n, b = len(self.seqs), self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        n = len(self.seqs)
        # The permutation is drawn when iteration starts, so each epoch gets a new one.
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for k in range(len(self)):
            batch = [self.seqs[i] for i in order[k * self.batch_size : (k + 1) * self.batch_size]]
            yield pad_batch(batch)

    def __repr__(self) -> str:
        return (
            f"SequenceBatches(n={len(self.seqs)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})"
        )
