"""The C heap: freed memory is kept for the next training step, not handed back to the OS.

A training step allocates and frees the same few megabytes every time (the states of
every step, what each step keeps for the backward, the gradients).  glibc's defaults give
large blocks back to the kernel as soon as they are freed (``munmap``, or trimming the top
of the heap), so every step takes them again and pays a page fault for each 4 KiB touched:
on the names demo's LSTM step that was 12-17 % of the step (measured with py-spy and
``MALLOC_*`` variables; ``shared/perf-notes.md``).  :func:`keep_freed_memory` raises the two
thresholds instead: blocks below ``mmap`` bytes come from the heap, and up to ``trim``
bytes of free heap stay with the process.

``import minigrad`` calls it once (Linux with glibc; elsewhere nothing happens).  Set
``MINIGRAD_MALLOC=system`` before the import to keep your C library's defaults.  It
changes no value anywhere: the process only keeps what it freed, at most ``trim`` bytes
more than it would otherwise, for its next allocations.  (Peak memory is unchanged.)
"""

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
TRIM, MMAP = 128 << 20, 32 << 20  # 32 MiB is glibc's own largest dynamic mmap threshold
kept = False  # whether the thresholds were set (by the import, or a call)


def keep_freed_memory(trim=TRIM, mmap=MMAP):
    """Keep up to ``trim`` bytes of freed heap and serve blocks below ``mmap`` bytes from
    the heap (``mallopt``).  Returns False where the C library has no ``mallopt`` (macOS,
    musl, Windows): then nothing changes."""
    global kept
    if not (isinstance(trim, int) and isinstance(mmap, int) and 0 < mmap <= trim):
        raise ValueError(f"keep_freed_memory: need integers 0 < mmap <= trim, got mmap={mmap!r}, "
                         f"trim={trim!r}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
    return kept


if os.environ.get("MINIGRAD_MALLOC", "keep") != "system":
    keep_freed_memory()
