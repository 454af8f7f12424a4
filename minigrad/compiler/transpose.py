"""The reverse of a loop body, derived as a program: BPTT as equations.

:func:`loop_body` cuts the loop body out of an optimized step; :func:`transpose` turns it
into its reverse, the way JAX transposes a scan body.  Walking the body's equations
backwards, each one hands its inputs their cotangents:

* an elementwise row's *rules* (:class:`minigrad.core.ops.Prim`) are run on symbols
  (:class:`Sym`), so they become equations of the reverse program, and broadcasting is
  undone by the one :func:`~minigrad.core.autograd.unbroadcast`;
* ``y = a @ W`` gives ``da = dy @ Wᵀ`` and ``dW = aᵀ dy``, a contribution summed over steps
  (lowered to one GEMM after the loop);
* column views of a value give pieces that a ``concat`` puts back together;
* any other row gets a ``vjp{i}[row]`` equation that calls its VJP (:func:`vjp_prim`).

The reverse body carries ∂L/∂state backwards: its inputs are the constants, the forward
values it reads (the *residuals*, found by liveness), this step's ∂L/∂(new state) from the
outputs (``ga``) and the cotangent carried from step t+1 (``da``); its outputs are the
cotangent carried to step t-1 (``da_prev``), per-step ``ys`` (∂L/∂ of the per-step inputs,
then ∂L/∂a<t> for ``retain_states``) and ``acc`` (∂L/∂ of each constant, summed over steps).
"""

from minigrad.compiler.ir import (
    INVARIANT,
    LOOP,
    Eqn,
    Program,
    TraceError,
    Var,
    column_range,
    stages,
)
from minigrad.compiler.rewrites import dce
from minigrad.core import ops
from minigrad.core.autograd import given_vjps, made, unbroadcast


class Sym:
    """A value of the program being built; arithmetic on it appends equations, so that a
    row's rule run on symbols writes the reverse program."""

    __slots__ = ("var", "b")

    def __init__(self, var, builder):
        self.var, self.b = var, builder

    shape = property(lambda self: self.var.shape)
    dtype = property(lambda self: self.var.dtype)

    def _op(self, prim, *args):
        shape = _broadcast([a.shape for a in args if isinstance(a, Sym)])
        return self.b.emit(prim, args, shape)

    __add__ = lambda self, o: self._op(ops.ADD, self, o)
    __radd__ = lambda self, o: self._op(ops.ADD, o, self)
    __sub__ = lambda self, o: self._op(ops.SUB, self, o)
    __rsub__ = lambda self, o: self._op(ops.SUB, o, self)
    __mul__ = lambda self, o: self._op(ops.MUL, self, o)
    __rmul__ = lambda self, o: self._op(ops.MUL, o, self)
    __truediv__ = lambda self, o: self._op(ops.DIV, self, o)
    __rtruediv__ = lambda self, o: self._op(ops.DIV, o, self)
    __neg__ = lambda self: self._op(ops.NEG, self)
    __pow__ = lambda self, p: self._op(ops.POW, self, p)
    __gt__ = lambda self, o: self._op(ops.GT, self, o)
    __ge__ = lambda self, o: self._op(ops.GE, self, o)
    __lt__ = lambda self, o: self._op(ops.LT, self, o)
    __le__ = lambda self, o: self._op(ops.LE, self, o)
    __abs__ = lambda self: self._op(ops.ABS, self)

    def emit(self, prim, *args):
        """``prim(*args)`` as an equation (how a rule calls another elementwise row)."""
        return self._op(prim, *args)

    def sum(self, axis, keepdims=False):
        shape = tuple(1 if i in axis else d for i, d in enumerate(self.shape) if keepdims or
                      i not in axis)
        return self.b.emit(ops.SUM, (self, axis, keepdims), shape)



def _broadcast(shapes):
    """NumPy's broadcast of per-step shapes (``None`` is the batch axis)."""
    n = max(map(len, shapes))
    out = []
    for dims in zip(*[(1,) * (n - len(s)) + tuple(s) for s in shapes]):
        big = [d for d in dims if d != 1]
        out.append(None if None in big else big[0] if big else 1)
    return tuple(out)


class Builder:
    """Appends equations to a program under construction, naming values from its supply."""

    def __init__(self, prog):
        self.prog, self.eqns = prog, []

    def emit(self, prim, args, shape, types=None):
        """Append ``prim(*args)``; its output has ``shape`` and the first symbol's dtype, or
        its outputs are ``types`` [(shape, dtype)]."""
        types = types or [(shape, next(a.dtype for a in args if isinstance(a, Sym)))]
        outs = [self.prog.fresh(s, d, prefix="d") for s, d in types]
        self.eqns.append(Eqn(prim, [a.var if isinstance(a, Sym) else a for a in args], outs))
        syms = [Sym(o, self) for o in outs]
        return syms[0] if shape is not None else syms

    def sym(self, v):
        return Sym(v, self)


def loop_body(prog):
    """The loop body of an optimized step as a :class:`Program`: its constants (invariant
    values it reads), its per-step inputs, the state and the new state."""
    stage = stages(prog)
    loop = [e for e in prog.eqns if stage[e.outs[0]] == LOOP]
    made = {v for e in loop for v in e.outs}
    if any(v not in made for v in prog.outs):
        raise TraceError("a new state part does not depend on the previous state (or is "
                         "it unchanged); nothing to compile there")
    reads = list(dict.fromkeys(a for e in loop for a in e.ins if a not in made))
    consts = [a for a in reads if stage[a] == INVARIANT]
    xs = [a for a in reads if a not in consts and a not in prog.state]
    return Program([], consts, xs, prog.state, loop, prog.outs, names=prog.names)


def transpose(body):
    """The reverse program of a loop body (see the module docstring)."""
    b = Builder(body.copy())
    names = [s.name.replace("_prev", "") for s in body.state]
    carry = [Var("d" + n, s.shape, s.dtype, "state") for n, s in zip(names, body.state)]
    given = [Var("g" + n, s.shape, s.dtype, "x") for n, s in zip(names, body.state)]
    ct = _Cotangents(b, body)
    news = []
    for out, c, g in zip(body.outs, carry, given):
        news.append(b.sym(c) + b.sym(g))  # ∂L/∂a<t>: from later steps and from this one
        ct.add(out, news[-1])
    for e in reversed(body.eqns):
        gs = [ct.pop(v) for v in e.outs]
        if any(g is not None for g in gs):
            _transpose_eqn(b, ct, e, gs)
    diff = [v for v in body.xs if _needs(v)]
    # (a constant no rule reached — read under stop_gradient only — gets no gradient, as on
    # the tape: None, not a sum of zeros)
    wanted = [v for v in body.consts if _needs(v) and (v in ct.ct or v in ct.pieces)]
    outs = [ct.final(s) for s in body.state]
    ys = [ct.final(v) for v in diff] + [news[0].var]
    acc = [ct.final(v) for v in wanted]
    made = {v for e in b.eqns for v in e.outs}
    for v, n in zip(outs, names):
        if v in made and outs.count(v) == 1:
            v.name = f"d{n}_prev"  # ∂L/∂a<t-1>: what step t carries to step t-1
    rev = cse(dce(Program([], body.consts, given, carry, b.eqns, outs, ys, acc,
                          names=b.prog.names)))
    rev.xs = _residuals(rev, body) + given
    return rev, diff, wanted


def _residuals(rev, body):
    """Liveness: the forward values that the reverse program reads (which the forward loop
    keeps for every step)."""
    forward = set(body.xs + body.state + [v for e in body.eqns for v in e.outs])
    reads = [a for e in rev.eqns for a in e.ins] + rev.outs + rev.ys + rev.acc
    return list(dict.fromkeys(a for a in reads if a in forward))


class _Cotangents:
    """∂L/∂v for each value v, as contributions arrive: symbols are added, column pieces
    are kept until the whole value is needed (then one concat, zeros in the gaps)."""

    def __init__(self, b, body):
        self.b, self.body, self.ct, self.pieces = b, body, {}, {}

    def add(self, v, g):
        self.ct[v] = g if v not in self.ct else self.ct[v] + g

    def add_piece(self, v, c0, c1, g):
        self.pieces.setdefault(v, []).append((c0, c1, g))

    def pop(self, v):
        if v in self.pieces:
            self.add(v, self._assemble(v, self.pieces.pop(v)))
        return self.ct.pop(v, None)

    def final(self, v):
        g = self.pop(v)
        return (g if g is not None else self.b.emit(ops.ZEROS_LIKE, (self.b.sym(v),),
                                                     v.shape)).var

    def _assemble(self, v, pieces):
        width, b = v.shape[-1], self.b
        merged = {}
        for c0, c1, g in pieces:
            merged[c0, c1] = g if (c0, c1) not in merged else merged[c0, c1] + g
        spans, col, parts = sorted(merged), 0, []
        if any(s[0] < e[1] for e, s in zip(spans, spans[1:])):  # overlapping views: pad each
            total = None
            for (c0, c1), g in merged.items():
                full = self._pad(v, c0, c1, g)
                total = full if total is None else total + full
            return total
        for c0, c1 in spans + [(width, width)]:
            if c0 > col:
                parts.append(self._zeros(v, col, c0))
            if c1 > c0:
                parts.append(merged[c0, c1])
            col = c1
        if len(parts) == 1:
            return parts[0]
        return b.emit(ops.CONCAT, (1, *parts), v.shape)

    def _zeros(self, v, c0, c1):
        view = self.b.emit(ops.GETITEM, (self.b.sym(v), (Ellipsis, slice(c0, c1))),
                           v.shape[:-1] + (c1 - c0,))
        return self.b.emit(ops.ZEROS_LIKE, (view,), view.shape)

    def _pad(self, v, c0, c1, g):
        parts = ([self._zeros(v, 0, c0)] if c0 else []) + [g] + \
            ([self._zeros(v, c1, v.shape[-1])] if c1 < v.shape[-1] else [])
        return parts[0] if len(parts) == 1 else self.b.emit(ops.CONCAT, (1, *parts), v.shape)


def _transpose_eqn(b, ct, e, gs):
    """Hand each input of ``e`` its cotangent, given ``gs`` for its outputs."""
    views = column_range(e)
    if views is not None:
        for (_, c0, c1), g in zip(views, gs):
            if g is not None:
                ct.add_piece(e.args[0], c0, c1, g)
        return
    wants = [i for i, a in enumerate(e.args) if isinstance(a, Var) and _needs(a)]
    if e.prim.elementwise:
        args = [b.sym(a) if isinstance(a, Var) else a for a in e.args]
        for i in wants:
            rule = e.prim.rules[i] if i < len(e.prim.rules) else None
            if rule is not None:
                g = rule(gs[0], b.sym(e.outs[0]), *args)
                ct.add(e.args[i], unbroadcast(g, e.args[i].shape))
    elif e.prim is ops.MATMUL and len(e.args[1].shape) == 2 and e.args[1].shape[0] is not None:
        a, W = e.args
        if _needs(a):
            Wt = b.emit(ops.TRANSPOSE, (b.sym(W), None), W.shape[::-1])
            ct.add(a, b.emit(ops.MATMUL, (gs[0], Wt), a.shape))
        if _needs(W):
            at = b.emit(ops.TRANSPOSE, (b.sym(a), None), a.shape[::-1])
            ct.add(W, b.emit(ops.MATMUL, (at, gs[0]), W.shape))
    elif e.prim is ops.CONCAT and e.params["axis"] in (1, -1) and len(e.outs[0].shape) == 2:
        col = 0
        for a in e.ins:
            w = a.shape[1]
            if _needs(a):
                ct.add(a, b.emit(ops.GETITEM, (gs[0], (Ellipsis, slice(col, col + w))),
                                 a.shape))
            col += w
    elif wants:  # any other row: one equation that calls its VJPs
        g_all = [g if g is not None else b.emit(ops.ZEROS_LIKE, (b.sym(v),), v.shape)
                 for g, v in zip(gs, e.outs)]
        args = [b.sym(a) if isinstance(a, Var) else a for a in e.args]
        cts = b.emit(vjp_prim(e.prim, tuple(wants)), (len(e.outs), *g_all,
                                                      *map(b.sym, e.outs), *args),
                     None, [(e.args[i].shape, e.args[i].dtype) for i in wants])
        for i, g in zip(wants, cts):
            ct.add(e.args[i], g)


def _needs(v):
    """Does v get a cotangent?  Floats only, and not constants or masks."""
    return v.dtype.kind == "f" and v.kind not in ("const", "mask")


_VJPS = {}


def vjp_prim(prim, wants):
    """A row whose forward is ``prim``'s VJPs for the inputs ``wants``, for rows with no
    rule of their own: ``vjp[prim](nout, *g, *out, *args) -> (∂L/∂args[i] for i in wants)``."""
    if (prim, wants) not in _VJPS:
        def fwd(nout, *vals):
            g, out, args = vals[:nout], vals[nout:2 * nout], vals[2 * nout:]
            g, out = (g[0], out[0]) if prim.nout == 1 else (g, out)
            vjps = prim.vjps or given_vjps(prim.vjp_all(g, out, *args))
            cts = [vjps[i](g, out, *args) for i in wants]
            cts = tuple(map(made, cts))
            return cts if len(cts) > 1 else cts[0]
        _VJPS[prim, wants] = ops.Prim(f"vjp[{prim.name}]", fwd, args="nout *vals",
                                      nout=len(wants))
    return _VJPS[prim, wants]


def cse(prog):
    """Equations that compute the same thing from the same values become one."""
    seen, rename, eqns = {}, {}, []
    for e in prog.eqns:
        args = [rename.get(a, a) if isinstance(a, Var) else a for a in e.args]
        key = (e.prim, tuple(id(a) if isinstance(a, Var) else (type(a), repr(a)) for a in args))
        if key in seen:
            rename.update(zip(e.outs, seen[key].outs))
            continue
        seen[key] = e = Eqn(e.prim, args, e.outs)
        eqns.append(e)
    fix = lambda vs: [rename.get(v, v) for v in vs]
    return prog.copy(eqns=eqns, outs=fix(prog.outs), ys=fix(prog.ys), acc=fix(prog.acc))


__all__ = ["INVARIANT", "Builder", "Sym", "cse", "loop_body", "transpose", "vjp_prim"]
