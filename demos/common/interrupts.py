"""Ctrl-C as a request to stop, not an exception.

The first SIGINT only sets a flag, which the training loop reads between steps: the step in
flight finishes, the run writes its final checkpoint (atomically), prints its summary and
exits with code 130 (128 + SIGINT, what a shell reports after Ctrl-C).  A second SIGINT
exits at once with code 130 and saves nothing; the checkpoint on disk is the last complete
one, since every save is atomic.  (Python runs the handler between bytecodes: two signals
that arrive during one compiled call are seen as one.)

Why not ``KeyboardInterrupt``: it is raised wherever the signal lands.  Inside a Numba call
it comes back as ``SystemError: ... returned a result with an exception set``, which the old
loop did not catch (4 of 7 interrupts of a names run ended in a traceback with no final
save); inside a save or an optimizer step it would leave work half done.  Where such an
exception still arises (the handler cannot be installed outside the main thread),
:func:`is_interrupt` recognises it.
"""

import contextlib
import os
import signal
import sys
import threading

from minigrad import distributed as dist

EXIT_CODE = 130


class CtrlC:
    """The SIGINT handler: ``requested`` after the first Ctrl-C; the second exits."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            # NOTE: os.write and os._exit only: the handler may run in the middle of a print
            # (a buffered write would raise 'reentrant call') or of a save (whose temporary
            # file the next save sweeps away; the checkpoint itself is never partial).
            os.write(2, b"\ninterrupted again: exiting at once; the last complete checkpoint "
                        b"is kept\n")
            os._exit(EXIT_CODE)
        self.requested = True


@contextlib.contextmanager
def ctrl_c():
    """Within the block, Ctrl-C sets the yielded :class:`CtrlC`'s ``requested`` (nested
    blocks share the outer handler).  Outside the main thread no handler can be installed:
    the flag is never set, and :func:`is_interrupt` catches the exception instead."""
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, CtrlC):
        yield current
        return
    handler = CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGINT, current)


def is_interrupt(e):
    """``KeyboardInterrupt``, or the ``SystemError`` Numba wraps one in."""
    while isinstance(e, SystemError):
        e = e.__cause__ or e.__context__
    return isinstance(e, KeyboardInterrupt)


def run(main, argv=None):
    """A demo's entry point: ``main(argv)`` with Ctrl-C handled as above (exit code 130 after
    a clean stop) and running out of memory reported in one line instead of a traceback."""
    with ctrl_c():
        try:
            main(argv)
        except MemoryError as e:
            prog = os.path.basename(sys.argv[0]) if sys.argv[0] else "demo"
            raise SystemExit(f"{prog}: out of memory ({e}); choose a smaller --hidden, "
                             "--layers, --embed or --batch") from None
        handler = signal.getsignal(signal.SIGINT)  # --distributed installs its own
    # NOTE: under MPI only rank 0, which saves, sets the code: a rank leaving with a non-zero
    # code makes mpi4py abort the whole job, perhaps before rank 0's final save.
    if isinstance(handler, CtrlC) and handler.requested and dist.rank() == 0:
        sys.exit(EXIT_CODE)
