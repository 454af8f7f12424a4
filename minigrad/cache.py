"""``python -m minigrad.cache``: where the compile cache is, how big, what is in it; clear
it or prune it to a size.

    python -m minigrad.cache                  # where, size, entries (most recently used first)
    python -m minigrad.cache --max-size 100M  # remove the least recently used past 100 MiB
    python -m minigrad.cache --clear          # remove everything (it is rebuilt on demand)

The cache itself (keys, checks on load, automatic pruning) is
:mod:`minigrad.compile_cache`.  Removing entries is safe while other processes use the
cache: they recompile what they no longer find.
"""

import argparse
import os
import sys
import time

from minigrad import compile_cache as cache


def _mb(n):
    return f"{n / 2**20:.1f} MB"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minigrad.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--clear", action="store_true", help="remove every entry")
    what.add_argument("--max-size", metavar="SIZE", type=_size,
                      help="remove the least recently used entries until at most SIZE "
                           "(e.g. 100M, 1G) remain")
    args = parser.parse_args(argv)
    here = cache.directory()
    base = os.path.dirname(here) if here else cache.root()
    if args.clear or args.max_size is not None:
        removed = cache.prune(0 if args.clear else args.max_size, base)
        print(f"removed {len(removed)} entries ({_mb(sum(e['size'] for e in removed))}) "
              f"from {base}")
    items = sorted(cache.entries(base), key=lambda e: -e["used"])
    print(f"minigrad compile cache: {base}")
    print("  (set by $MINIGRAD_CACHE_DIR)" if os.environ.get("MINIGRAD_CACHE_DIR") and
          base == cache.root() else "  ($MINIGRAD_CACHE_DIR, default ~/.cache/minigrad)")
    print(f"  this installation: {here or 'in memory (no usable directory)'}")
    print("    keyed by " + ", ".join(f"{k} {v}" for k, v in list(cache.versions().items())[:4]))
    print("             " + ", ".join(f"{k} {v}" for k, v in list(cache.versions().items())[4:]))
    print(f"  size: {_mb(sum(e['size'] for e in items))} in {len(items)} entries; limit "
          f"{_mb(cache.limit())} ($MINIGRAD_CACHE_MAX_SIZE), least recently used removed first")
    if items:
        print(f"\n  {'last used':16s} {'size':>9s}  entry")
    for e in items:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["used"]))
        print(f"  {when:16s} {_mb(e['size']):>9s}  {e['name']}  ({e['what']}, {e['files']} "
              f"file{'s' if e['files'] != 1 else ''})")
    return 0


def _size(text):
    try:
        return cache.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
