"""The recurrence compiler: a cell's equations, traced once and compiled to Numba."""

from minigrad.compiler.ir import Program, TraceError, trace
from minigrad.compiler.rewrites import optimize

try:
    from minigrad.compiler.scan import CompiledStep, compile_step, scan
except ImportError:  # TEMP during the rewrite
    CompiledStep = compile_step = scan = None

__all__ = ["CompiledStep", "Program", "TraceError", "compile_step", "optimize", "scan", "trace"]
