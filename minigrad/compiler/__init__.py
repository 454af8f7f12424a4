"""The recurrence compiler: a cell's equations, traced once and compiled to Numba.

``trace`` (the IR, printable: :mod:`.ir`), ``optimize`` (the rewrites: :mod:`.rewrites`), the
reverse of a loop body derived as a program (:mod:`.transpose`), one lowering and one
emitter for both loops (:mod:`.lower`, :mod:`.emit`), and ``compile_step`` / ``scan`` (one tape
node per sequence: :mod:`.scan`); ``compile``, a whole function (a training step) as one
tape node (:mod:`.function`); ``wait`` for compiles running in the background."""

from minigrad.compiler.function import CompiledFunction, compile
from minigrad.compiler.ir import Program, TraceError, trace
from minigrad.compiler.rewrites import optimize
from minigrad.compiler.scan import CompiledStep, compile_step, scan, wait

__all__ = ["CompiledFunction", "CompiledStep", "Program", "TraceError", "compile", "compile_step",
           "optimize", "scan", "trace", "wait"]
