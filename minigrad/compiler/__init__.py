"""The recurrence compiler: a cell's equations, traced once and compiled to Numba.

``trace`` (the IR, printable), ``optimize`` (the rewrites), ``compile_step`` / ``scan`` (the
generated forward and reverse loops, one tape node per sequence).
"""

from minigrad.compiler.ir import Program, TraceError, trace
from minigrad.compiler.rewrites import optimize
from minigrad.compiler.scan import CompiledStep, compile_step, scan

__all__ = ["CompiledStep", "Program", "TraceError", "compile_step", "optimize", "scan", "trace"]
