"""minigrad.memory: freed blocks stay with the process (glibc), unless the user opts out."""

import os
import platform
import subprocess
import sys

import pytest

import minigrad as mg

PROBE = """
import os, numpy as np, minigrad as mg
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20
a = np.ones(20 << 18, np.float32)  # 20 MiB, touched
before = rss()
del a
print(mg.memory.kept, before - rss())
"""


def _freed(env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_block_stays_with_the_process_unless_the_user_opts_out():
    kept, returned = _freed({"MINIGRAD_MALLOC": "keep"})
    assert kept and returned < 5  # MiB handed back to the OS
    kept, returned = _freed({"MINIGRAD_MALLOC": "system"})
    assert not kept and returned >= 15  # glibc's default: the 20 MiB go back at once


@pytest.mark.parametrize("trim, mmap", [(1 << 20, 2 << 20), (0, 0), (1.5, 1)])
def test_bad_thresholds_are_refused(trim, mmap):
    with pytest.raises(ValueError, match="keep_freed_memory"):
        mg.memory.keep_freed_memory(trim=trim, mmap=mmap)
