"""The recurrence compiler's IR: a cell's ``forward(x_t, state)`` traced into equations.

``trace(cell, x_t, state)`` runs the forward once on example tensors and records every
primitive that :func:`minigrad.core.tensor.apply` runs — straight from the one primitive table —
as an :class:`Eqn` ``outs = prim[statics](ins)``.  The result, a :class:`Program`, prints like
a jaxpr, so the chapter's equations can be read in it.  Rewrites (:mod:`.rewrites`) turn it
into the form the code generator wants; :meth:`Program.run` evaluates any version of it with
ordinary tensor ops, which is how every rewrite is tested to preserve values.
"""

import sys

import numpy as np

from minigrad.core import ops
from minigrad.core.tensor import Tensor, apply

_tensor = sys.modules["minigrad.core.tensor"]  # the module (``minigrad.tensor`` is a function)


class TraceError(TypeError):
    """A cell's forward cannot be compiled; the message says why and what to do."""


class Var:
    """One value of the program.  ``kind``: 'param' | 'const' | 'x' | 'state' | 'tmp'.
    ``shape`` is per time step, with ``None`` for the batch axis."""

    __slots__ = ("name", "shape", "dtype", "kind", "value")

    def __init__(self, name, shape, dtype, kind, value=None):
        self.name, self.shape, self.dtype, self.kind, self.value = name, shape, dtype, kind, value

    def __repr__(self):
        dims = ",".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name}:{np.dtype(self.dtype).name.replace('float', 'f')}[{dims}]"


class Eqn:
    """``outs = prim(*args)``: each arg is a :class:`Var` or a static Python value."""

    __slots__ = ("prim", "args", "outs")

    def __init__(self, prim, args, outs):
        self.prim, self.args, self.outs = prim, list(args), list(outs)

    @property
    def ins(self):
        return [a for a in self.args if isinstance(a, Var)]

    def __repr__(self):
        outs = " ".join(map(repr, self.outs))
        if self.prim.scalar is not None:  # elementwise: literals stay in place (1 - Γu)
            return f"{outs} = {self.prim.name} " + " ".join(
                a.name if isinstance(a, Var) else _short(a) for a in self.args)
        statics = [_short(a) for a in self.args if not isinstance(a, Var)]
        name = self.prim.name + (f"[{', '.join(statics)}]" if statics else "")
        return f"{outs} = {name} {' '.join(a.name for a in self.ins)}"


def _short(v):
    if isinstance(v, slice):
        return ":" if v == slice(None) else f"{'' if v.start is None else v.start}:" \
            f"{'' if v.stop is None else v.stop}"
    if isinstance(v, tuple):
        return "(" + ",".join(_short(x) for x in v) + ")"
    if isinstance(v, np.ndarray):
        return f"array{v.shape}"
    if isinstance(v, (type, np.dtype)):
        return np.dtype(v).name
    return repr(v)


_SECTIONS = ("once per sequence: parameters only", "for all t at once: x<t> only (hoisted)",
             "the loop body: depends on the state")


class Program:
    """A traced step: ``params``/``consts`` (the same at every step), ``xs`` (x<t>), ``state``
    (the carried state), ``eqns`` in execution order and ``outs`` (the new state)."""

    def __init__(self, params, consts, xs, state, eqns, outs):
        self.params, self.consts, self.xs, self.state = params, consts, xs, state
        self.eqns, self.outs = eqns, outs

    @property
    def inputs(self):
        return self.params + self.consts + self.xs + self.state

    def __repr__(self):
        head = " ".join(map(repr, self.params + self.consts))
        ins = " ".join(map(repr, self.xs + self.state))
        lines = [f"{{ lambda {head} ; {ins} ."]
        level, section = getattr(self, "level", None), None
        for e in self.eqns:
            if level is not None and level[e.outs[0]] != section:
                section = level[e.outs[0]]
                lines.append(f"  # {_SECTIONS[section]}")
            lines.append(f"    {e!r}")
        lines.append(f"  in ({', '.join(v.name for v in self.outs)}) }}")
        return "\n".join(lines)

    def optimize(self):
        """The rewritten program (see :mod:`minigrad.compiler.rewrites`), printed in three
        sections: once per sequence, for all t at once, and the loop body."""
        from minigrad.compiler.rewrites import optimize
        return optimize(self)

    def copy(self, eqns=None, outs=None):
        return Program(self.params, self.consts, self.xs, self.state,
                       list(self.eqns) if eqns is None else eqns,
                       list(self.outs) if outs is None else outs)

    def run(self, env):
        """Evaluate with tensor ops: ``env`` maps input Vars to Tensors (or arrays)."""
        env = dict(env)
        for c in self.consts:
            env.setdefault(c, Tensor._result(c.value, None, 0))
        for e in self.eqns:
            out = apply(e.prim, *[env[a] if isinstance(a, Var) else a for a in e.args])
            for v, o in zip(e.outs, out if isinstance(out, tuple) else (out,)):
                env[v] = o
        return [env[v] for v in self.outs]


class _Recorder:
    """Installed as the tracer hook of ``apply`` while a forward is traced."""

    def __init__(self, known):
        self.vars = known  # id(tensor) -> Var
        self.keep = []     # keep traced tensors alive, so ids stay unique
        self.eqns, self.consts, self.count = [], [], 0

    def var_of(self, t):
        v = self.vars.get(id(t))
        if v is None:  # a tensor made outside the trace: a constant of the step
            v = Var(f"k{len(self.consts)}", t.shape, t.dtype, "const", t.data)
            self.vars[id(t)] = v
            self.consts.append(v)
            self.keep.append(t)
        return v

    def __call__(self, prim, inputs, outputs):
        args = [self.var_of(x) if isinstance(x, Tensor) else x for x in inputs]
        outs = []
        for o in outputs:
            v = Var(f"t{self.count}", _per_step(o.shape, self.batch), o.dtype, "tmp")
            self.count += 1
            self.vars[id(o)] = v
            self.keep.append(o)
            outs.append(v)
        self.eqns.append(Eqn(prim, args, outs))


def _per_step(shape, batch):
    return (None,) + tuple(shape[1:]) if len(shape) and shape[0] == batch else tuple(shape)


def state_names(cell, arity):
    names = getattr(cell, "state_names", None)
    if names and len(names) == arity:
        return tuple(names)
    return ("a",) if arity == 1 else tuple(f"s{i}" for i in range(arity))


def trace(cell, x_t, state):
    """Trace ``cell.forward(x_t, state)`` into a :class:`Program`.

    x_t: (B, I) floats or (B,) integer ids; state: a (B, H) tensor or a tuple of them.  The
    batch size B must be at least 2, so that batch axes can be told from constant ones.
    """
    x_t = x_t if isinstance(x_t, Tensor) else Tensor(x_t)
    parts = (state,) if isinstance(state, Tensor) else tuple(state)
    batch = x_t.shape[0]
    known, params = {}, []
    for name, p in cell.named_parameters():
        v = Var(name.replace(".", "_"), p.shape, p.dtype, "param")
        known[id(p)] = v
        params.append(v)
    xv = Var("x", _per_step(x_t.shape, batch), x_t.dtype, "x")
    known[id(x_t)] = xv
    svs = []
    for name, s in zip(state_names(cell, len(parts)), parts):
        v = Var(name + "_prev", _per_step(s.shape, batch), s.dtype, "state")
        known[id(s)] = v
        svs.append(v)
    rec = _Recorder(known)
    rec.batch = batch
    if _tensor._TRACER is not None:
        raise TraceError("trace: already tracing (a cell's forward may not compile another)")
    _tensor._TRACER = rec
    try:
        x_in = x_t
        if x_t.dtype.kind in "iu":  # ids stand for one-hot vectors (a lookup, once rewritten)
            x_in = apply(ops.ONE_HOT, x_t, cell.input_size, parts[0].dtype)
        new = cell(x_in, state if not isinstance(state, Tensor) else parts[0])
    finally:
        _tensor._TRACER = None
    new_parts = (new,) if isinstance(new, Tensor) else tuple(new) \
        if isinstance(new, (tuple, list)) else None
    if new_parts is None or len(new_parts) != len(parts) or \
            not all(isinstance(p, Tensor) for p in new_parts):
        raise TraceError(f"{type(cell).__name__}.forward must return the new state with the "
                         f"same structure as the state it was given ({len(parts)} tensor(s))")
    outs = []
    for p, s in zip(new_parts, parts):
        if p.shape != s.shape or p.dtype != s.dtype:
            raise TraceError(f"{type(cell).__name__}.forward: a new state part has shape "
                             f"{p.shape} {p.dtype}, but the state it replaces has {s.shape} "
                             f"{s.dtype}")
        outs.append(rec.var_of(p))
    return Program(params, rec.consts, [xv], svs, rec.eqns, outs)
