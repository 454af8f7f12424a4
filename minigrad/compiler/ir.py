"""The compiler's IR: a step of a recurrence as equations, printable and runnable.

``trace(cell, x_t, state)`` runs ``cell.forward`` once on example tensors and records every
primitive that :func:`minigrad.core.tensor.apply` runs — rows of the one table — as an
:class:`Eqn` ``outs = prim[params] ins``.  The result, a :class:`Program`, prints like a
jaxpr, so the chapter's equations can be read in it.  A program is a *scan body*:

* inputs: ``params`` and ``consts`` (the same at every step), ``xs`` (this step's slice of a
  per-step input), ``state`` (what the previous step carried);
* outputs: ``outs`` (what it carries to the next step), ``ys`` (per-step results) and ``acc``
  (contributions summed over all steps).

A traced cell has ``outs`` only (the new state).  Its reverse (:mod:`.transpose`) carries
∂L/∂state backwards and has all three.  :meth:`Program.run` evaluates any program with the
tensor ops (how every rewrite and the reverse program are tested), :func:`verify` checks its
contract, and :func:`stages` says what each value depends on (what can leave the loop).
"""

import numpy as np

from minigrad.core import ops
from minigrad.core.autograd import is_grad_enabled, set_grad_enabled
from minigrad.core.tensor import Tensor, apply, tracing


class TraceError(TypeError):
    """A cell's forward cannot be compiled; the message says why and what to do."""


class Var:
    """One value of a program.  ``kind``: 'param' | 'const' | 'x' | 'mask' | 'state' | 'tmp'.
    ``shape`` is per time step, with ``None`` for the batch axis."""

    __slots__ = ("name", "shape", "dtype", "kind", "value")

    def __init__(self, name, shape, dtype, kind="tmp", value=None):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.kind, self.value = kind, value

    def __repr__(self):
        dims = ",".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name}:{self.dtype.name.replace('float', 'f')}[{dims}]"


def _names(prim, n):
    """The argument names of ``prim`` for a call with ``n`` arguments (``*xs`` expanded)."""
    names = prim.args
    star = next((i for i, a in enumerate(names) if a.startswith("*")), None)
    if star is None:
        return names if len(names) == n else names + tuple(f"arg{i}" for i in range(len(names), n))
    many = n - len(names) + 1
    return names[:star] + (names[star][1:],) * many + names[star + 1:]


class Eqn:
    """``outs = prim(*args)``; each arg is a :class:`Var` or a static value, which the
    compiler reads by its name in the row (``params``)."""

    __slots__ = ("prim", "args", "outs")

    def __init__(self, prim, args, outs):
        self.prim, self.args, self.outs = prim, list(args), list(outs)

    @property
    def ins(self):
        return [a for a in self.args if isinstance(a, Var)]

    @property
    def params(self):
        return {n: a for n, a in zip(_names(self.prim, len(self.args)), self.args)
                if not isinstance(a, Var)}

    def replace(self, params):
        """The same equation with the static arguments ``params`` (by name)."""
        names = _names(self.prim, len(self.args))
        return Eqn(self.prim, [params.get(n, a) if not isinstance(a, Var) else a
                               for n, a in zip(names, self.args)], self.outs)

    def __repr__(self, used=None):
        outs = " ".join(repr(v) if used is None or v in used else "_" + repr(v)[len(v.name):]
                        for v in self.outs)
        if self.prim.elementwise:  # literals stay in place: (1 - Γu) prints "sub 1 t3"
            return f"{outs} = {self.prim.name} " + " ".join(
                a.name if isinstance(a, Var) else _short(a) for a in self.args)
        ps = ", ".join(f"{n}={_short(a)}" for n, a in zip(_names(self.prim, len(self.args)),
                                                           self.args) if not isinstance(a, Var))
        name = self.prim.name + (f"[{ps}]" if ps else "")
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
    return "..." if v is Ellipsis else repr(v)


INVARIANT, INPUT, LOOP = 0, 1, 2  # what a value depends on: nothing per step, x<t>, the state
_SECTIONS = ("once per sequence: parameters only", "for all t at once: x<t> only (hoisted)",
             "the loop body: depends on the state")


def stages(prog):
    """Var -> INVARIANT | INPUT | LOOP: the latest thing it depends on.  An equation of
    x<t> only runs for all t at once when its row says how to batch it over time (and column
    views stay in the loop, where they are free)."""
    stage = {v: INVARIANT for v in prog.params + prog.consts}
    stage.update({v: INPUT for v in prog.xs})
    stage.update({v: LOOP for v in prog.state})
    for e in prog.eqns:
        s = max((stage[a] for a in e.ins), default=INVARIANT)
        if s == INPUT and (e.prim.batch is None or e.prim.batch(e) is None or column_range(e)):
            s = LOOP
        stage.update((v, s) for v in e.outs)
    return stage


def column_range(e):
    """[(out, c0, c1)] if ``e`` takes column ranges of a per-step (B, n) value along its
    last axis (``getitem`` with a column slice, ``split`` along columns), else None: a view,
    free in a loop."""
    a = e.args[0] if e.args else None
    if not isinstance(a, Var) or len(a.shape) != 2 or a.shape[0] is not None:
        return None
    if e.prim is ops.GETITEM:
        key = e.params.get("key")
        if isinstance(key, tuple) and len(key) == 2 and key[0] in (Ellipsis, slice(None)) \
                and isinstance(key[1], slice) and key[1].step in (None, 1):
            return [(e.outs[0], *key[1].indices(a.shape[1])[:2])]
    if e.prim is ops.SPLIT and e.params["axis"] in (1, -1):
        bounds = (0, *e.params["bounds"], a.shape[1])
        return [(v, bounds[i], bounds[i + 1]) for i, v in enumerate(e.outs)]
    return None


class Program:
    """A scan body (see the module docstring).  Each program has its own name supply:
    :meth:`fresh` names new values ``{prefix}{n}``, never twice."""

    def __init__(self, params, consts, xs, state, eqns, outs, ys=(), acc=(), names=0):
        self.params, self.consts, self.xs, self.state, self.eqns, self.outs, self.ys, self.acc = \
            map(list, (params, consts, xs, state, eqns, outs, ys, acc))
        self.names = names

    @property
    def inputs(self):
        return self.params + self.consts + self.xs + self.state

    def fresh(self, shape, dtype, prefix="r", kind="tmp"):
        self.names += 1
        return Var(f"{prefix}{self.names}", shape, dtype, kind)

    def copy(self, **changes):
        return Program(**{**vars(self), **changes})  # (the fields are the arguments)

    def __repr__(self):
        head = " ".join(map(repr, self.params + self.consts))
        ins = " ".join(map(repr, self.state + self.xs))
        lines = [f"{{ lambda {head} ; {ins} ."]
        stage = stages(self)
        order = [stage[e.outs[0]] for e in self.eqns]
        sections = order == sorted(order) and len(set(order)) > 1
        section, used = None, {a for e in self.eqns for a in e.ins}
        used.update(self.outs + self.ys + self.acc)
        for e, s in zip(self.eqns, order):
            if sections and s != section:
                section = s
                lines.append(f"  # {_SECTIONS[s]}")
            lines.append(f"    {e.__repr__(used)}")  # an unused output prints as _
        outs = [", ".join(v.name for v in part) for part in (self.outs, self.ys, self.acc)]
        lines.append(f"  in ({' ; '.join(outs) if self.ys or self.acc else outs[0]}) }}")
        return "\n".join(lines)

    def optimize(self):
        """The rewritten program (:mod:`minigrad.compiler.rewrites`), printed in three
        sections: once per sequence, for all t at once, and the loop body."""
        from minigrad.compiler.rewrites import optimize
        return optimize(self)

    def run(self, env, everything=False):
        """Evaluate one step with tensor ops: ``env`` maps input Vars to Tensors or arrays.
        Returns the values of ``outs``, ``ys`` and ``acc``, in that order (``everything``:
        the dict of every value)."""
        env = dict(env)
        for c in self.consts:
            env.setdefault(c, Tensor._result(c.value, None, 0))
        for e in self.eqns:
            out = apply(e.prim, *[env[a] if isinstance(a, Var) else a for a in e.args])
            env.update(zip(e.outs, out if isinstance(out, tuple) else (out,)))
        return env if everything else [env[v] for v in self.outs + self.ys + self.acc]


def verify(prog):
    """Check a program's contract: single assignment, every value defined before it is
    read, known static parameters, and each equation's declared output shapes and dtypes
    (run on zeros, batch 2).  Raises AssertionError naming the equation."""
    defined = {v: _example(v) for v in prog.inputs}
    assert len(defined) == len(prog.inputs), "an input is listed twice"
    for e in prog.eqns:
        where = f"verify: {e!r}"
        unknown = set(e.params) - set(_names(e.prim, len(e.args)))
        assert not unknown, f"{where}: unknown parameters {unknown}"
        for a in e.ins:
            assert a in defined, f"{where}: {a.name} is read before it is defined"
        out = e.prim.fwd(*[defined[a] if isinstance(a, Var) else a for a in e.args])
        out = out if isinstance(out, tuple) else (out,)
        assert len(out) == len(e.outs), f"{where}: {len(out)} outputs, {len(e.outs)} declared"
        for v, o in zip(e.outs, out):
            assert v not in defined, f"{where}: {v.name} is assigned twice"
            assert _example(v).shape == np.shape(o) and v.dtype == np.asarray(o).dtype, \
                f"{where}: {v.name} is {np.shape(o)} {np.asarray(o).dtype}, declared {v!r}"
            defined[v] = np.asarray(o)
    for v in prog.outs + prog.ys + prog.acc:
        assert v in defined, f"verify: output {v.name} is never defined"
    return prog


def _example(v):
    shape = tuple(2 if d is None else d for d in v.shape)
    return v.value if v.value is not None else np.zeros(shape, v.dtype) \
        if v.dtype.kind in "iub" else np.full(shape, 0.5, v.dtype)


# ----------------------------------------------------------------------- tracing a cell

class Recorder:
    """What ``trace`` hands :func:`tracing`: every applied primitive becomes an equation."""

    def __init__(self, known, batch):
        self.vars, self.batch = known, batch  # id(tensor) -> Var
        self.keep = []  # the traced tensors stay alive, so their ids stay unique
        self.eqns, self.consts, self.count = [], [], 0
        self.grad = is_grad_enabled()  # (no_grad blocks inside count, not the caller's mode)
        self.effects = []  # what the traced code did besides computing (backward(), step())

    def var_of(self, t):
        v = self.vars.get(id(t))
        if v is None:  # a tensor made outside the trace: a constant of the step
            v = Var(f"k{len(self.consts)}", t.shape, t.dtype, "const", t.data)
            self.vars[id(t)] = v
            self.consts.append(v)
            self.keep.append(t)
        return v

    def __call__(self, prim, inputs, outputs):
        args = []
        for x in inputs:
            if isinstance(x, np.ndarray) and prim.elementwise:  # a mask given as an array
                x = Tensor._result(x, None, 0)
            args.append(self.var_of(x) if isinstance(x, Tensor) else x)
        # NOTE: a value gets the batch axis from its inputs, not from its size: the
        # sigmoid of a (2,) weight had been taken for a per-step value at the examples' B 2
        step = any(isinstance(a, Var) and a.shape[:1] == (None,) for a in args)
        outs = [Var(f"t{self.count + i}", _per_step(o.shape, self.batch) if step else o.shape,
                    o.dtype) for i, o in enumerate(outputs)]
        self.count += len(outs)
        self.keep += outputs
        self.eqns.append(Eqn(prim, args, outs))
        if self.grad and not is_grad_enabled() and prim is not ops.STOP_GRADIENT:
            # made under no_grad: no gradient flows back through it, as on the tape
            outs = [self._stopped(v) if v.dtype.kind == "f" else v for v in outs]
        self.vars.update((id(o), v) for o, v in zip(outputs, outs))

    def _stopped(self, v):
        w = Var(f"t{self.count}", v.shape, v.dtype)
        self.count += 1
        self.eqns.append(Eqn(ops.STOP_GRADIENT, [v], [w]))
        return w


def _per_step(shape, batch):
    return (None,) + tuple(shape[1:]) if len(shape) and shape[0] == batch else tuple(shape)


def state_names(cell, arity):
    names = getattr(cell, "state_names", None)
    if names and len(names) == arity:
        return tuple(names)
    return ("a",) if arity == 1 else tuple(f"s{i}" for i in range(arity))


def trace(cell, x_t, state):
    """Trace ``cell.forward(x_t, state)`` into a :class:`Program`.

    x_t: (B, I) floats or (B,) integer ids (they stand for one-hot rows); state: a (B, H)
    tensor or a tuple of them.  B must be at least 2, so that batch axes can be told from
    the others.
    """
    x_t = x_t if isinstance(x_t, Tensor) else Tensor(x_t)
    parts = (state,) if isinstance(state, Tensor) else tuple(state)
    batch, known, params = x_t.shape[0], {}, []
    for name, p in cell.named_parameters():
        known[id(p)] = v = Var(name.replace(".", "_"), p.shape, p.dtype, "param")
        params.append(v)
    known[id(x_t)] = xv = Var("x", _per_step(x_t.shape, batch), x_t.dtype, "x")
    svs = []
    for name, s in zip(state_names(cell, len(parts)), parts):
        known[id(s)] = v = Var(name + "_prev", _per_step(s.shape, batch), s.dtype, "state")
        svs.append(v)
    with set_grad_enabled(True), tracing(Recorder(known, batch)) as rec:  # (see Recorder)
        x_in = x_t
        if x_t.dtype.kind in "iu":  # ids stand for one-hot vectors (a lookup, once rewritten)
            x_in = apply(ops.ONE_HOT, x_t, cell.input_size, parts[0].dtype)
        new = cell(x_in, state if not isinstance(state, Tensor) else parts[0])
    new_parts = (new,) if isinstance(new, Tensor) else tuple(new) \
        if isinstance(new, (tuple, list)) else None
    if new_parts is None or len(new_parts) != len(parts) or \
            not all(isinstance(p, Tensor) for p in new_parts):
        raise TraceError(f"{type(cell).__name__}.forward must return the new state with the "
                         f"same structure as the state it was given ({len(parts)} tensor(s))")
    for p, s in zip(new_parts, parts):
        if p.shape != s.shape or p.dtype != s.dtype:
            raise TraceError(f"{type(cell).__name__}.forward: a new state part has shape "
                             f"{p.shape} {p.dtype}, but the state it replaces has {s.shape} "
                             f"{s.dtype}")
    outs = [rec.var_of(p) for p in new_parts]
    return Program(params, rec.consts, [xv], svs, rec.eqns, outs, names=rec.count)


def with_lengths(prog):
    """Padding as equations: with a mask m<t> (B, 1), 1 for a real step and 0 past a
    sequence's end, each new state part is ``where(m<t>, new, old)`` — the state stays as it
    was.  Its reverse comes out of the same derivation (∂L/∂old gets (1 - m) of the
    cotangent).  This is the one place that says how padding is handled."""
    dtype = prog.state[0].dtype
    m = Var("m", (None, 1), dtype, "mask")
    eqns, outs = list(prog.eqns), []
    for new, old in zip(prog.outs, prog.state):
        kept = prog.fresh(new.shape, new.dtype, prefix=old.name.replace("_prev", ""))
        eqns.append(Eqn(ops.WHERE, [m, new, old], [kept]))
        outs.append(kept)
    return prog.copy(xs=prog.xs + [m], eqns=eqns, outs=outs)
