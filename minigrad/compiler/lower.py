"""Lowering: a loop body — forward or reverse, the same way — becomes a schedule of ops.

* **views** — column ranges of a per-step (B, n) value (``getitem``/``split``): no code;
* **GEMMs** — a per-step value times a constant 2-D weight, through BLAS; ``v = y + GEMM``
  alone in its group becomes the GEMM adding into v's memory, where y was written first;
* **fused groups** — the elementwise equations of one row width N between two GEMMs, with
  the ``concat``s that lay their results side by side: one kernel each;
* **outer products** — an accumulated ``aᵀ g`` (a loop weight's gradient) is not computed
  per step: a and g are kept for every step and it becomes one GEMM after the loop;
* **column sums** — an accumulated sum over the batch (a bias's gradient) likewise: its
  operand is kept for every step (usually as columns of an outer product's g, at no cost)
  and summed once after the loop.  (Accumulating it in the kernel kept LLVM from
  vectorising the kernel: the LSTM's backward kernel took 2.9x as long.)
* **generic** — any other row, run with its forward (the loop then runs as Python).

Equations on constants only form the *prologue*, run once before the loop.  What is read
outside the op that makes it, bound by the caller or kept for every step gets memory.
"""

from itertools import accumulate

from minigrad.compiler.ir import INVARIANT, Eqn, Var, column_range, stages
from minigrad.core import ops


class Group:
    """One fused kernel: ``eqns`` in order on rows of width ``n``; ``ins`` are read from
    memory, ``outs`` written to it (set by :class:`Lowered`)."""

    def __init__(self, n, eqns):
        self.n, self.eqns, self.outs = n, eqns, []
        made = {v for e in eqns for v in e.outs}
        self.ins = list(dict.fromkeys(a for e in eqns for a in e.ins if a not in made))


class Lowered:
    """A body's schedule.  ``prologue``: equations of constants; ``ops``: ``("fused", Group)``,
    ``("gemm", Eqn, accumulate)`` or ``("generic", Eqn)`` in order; ``views``: Var -> (base,
    c0, c1); ``alias``: Var -> the Var whose memory it is written into; ``outers``: acc Var
    -> [(a, g)] after the loop; ``colsums``: acc Var -> [(kept Var, first column, width)]
    summed over steps and rows after the loop; ``sums``: acc Var -> per-step Vars added at
    every step; ``memory``: the Vars with memory of their own."""

    def __init__(self, prog, stored=()):
        stage, self.prog, self.stored = stages(prog), prog, set(stored)
        self.prologue = [e for e in prog.eqns if stage[e.outs[0]] == INVARIANT]
        self.consts = set(prog.consts) | {v for e in self.prologue for v in e.outs}
        self.views, self.alias, same, prod = {}, {}, {}, {v: e for e in prog.eqns for v in e.outs}
        body = [e for e in prog.eqns if stage[e.outs[0]] != INVARIANT and
                not self._view(e, same, prod)]
        body = [Eqn(e.prim, [same.get(a, a) if isinstance(a, Var) else a for a in e.args], e.outs)
                for e in body]  # (a view of one whole part of a concat is that part)
        self.ops = self._schedule(self._accumulators(body))
        self.outside = set(prog.outs + prog.ys) | set(stored) | {
            a for pairs in self.outers.values() for pair in pairs for a in pair}
        self.outside |= {v for vs in self.sums.values() for v in vs}
        self._colsum_sources()
        while self._fold_gemm_add():
            pass
        self._memory()

    def base(self, v):
        """(the Var whose memory holds v, v's first column in it)."""
        v = self.alias.get(v, v)
        if v not in self.views:
            return v, 0
        b, c0, _ = self.views[v]
        base, off = self.base(b)
        return base, off + c0

    def _view(self, e, same, prod):
        cols = column_range(e)
        bound = self.stored | set(self.prog.outs + self.prog.ys)
        if cols is not None and any(v in bound for v, _, _ in cols):
            return False  # a value the caller binds is copied (a generic getitem)
        cat = prod.get(e.args[0]) if e.args and isinstance(e.args[0], Var) else None
        ok = cat is not None and cat.prim is ops.CONCAT and cat.params["axis"] in (1, -1)
        ends = [0, *accumulate(p.shape[-1] for p in cat.ins)] if ok else []
        parts = dict(zip(zip(ends, ends[1:]), cat.ins)) if ok else {}  # {(c0, c1): part}
        for v, c0, c1 in cols or ():
            if (c0, c1) in parts:
                same[v] = same.get(parts[c0, c1], parts[c0, c1])
            self.views[v] = (e.args[0], c0, c1)
        return cols is not None

    def _accumulators(self, body):
        """Split each accumulated output into its terms (through the adds that only it
        reads): outer products, and per-step values; drop what only they needed."""
        prod = {v: e for e in body for v in e.outs}
        reads = [a for e in body for a in e.ins]
        self.outers, self.sums, self.colsums, drop = {}, {}, {}, set()
        for acc in self.prog.acc:
            self.outers[acc], self.sums[acc], self.colsums[acc], todo = [], [], [], [acc]
            while todo:
                v = todo.pop()
                e = prod.get(v)
                if e and e.prim is ops.ADD and len(e.ins) == 2 and (v is acc or reads.count(v)
                                                                     == 1):
                    todo += e.args
                elif e and e.prim is ops.MATMUL and _transposed(prod.get(e.args[0])):
                    self.outers[acc].append((prod[e.args[0]].args[0], e.args[1]))
                elif e and _batch_sum(e):
                    self.colsums[acc].append(e.args[0])
                elif not (e and e.prim is ops.ZEROS_LIKE):
                    self.sums[acc].append(v)
                    continue
                drop.add(e)
        live = set(self.prog.outs + self.prog.ys) | {v for vs in self.sums.values() for v in vs}
        live |= {a for pairs in self.outers.values() for pair in pairs for a in pair}
        live |= {u for us in self.colsums.values() for u in us}
        kept = []
        for e in reversed(body):
            if e not in drop and any(v in live for v in e.outs):
                kept.append(e)
                live.update(self.views[a][0] if a in self.views else a for a in e.ins)
        return kept[::-1]

    def _colsum_sources(self):
        """Where each column sum's operand is kept: as columns of a concat that is kept for
        every step anyway, or (otherwise) kept itself."""
        pieces = {}
        for _, op, *_ in self.ops:
            for e in _eqns(op):
                if e.prim is ops.CONCAT and e.outs[0] in self.outside:
                    widths = [a.shape[-1] for a in e.ins]
                    for i, a in enumerate(e.ins):
                        pieces.setdefault(a, (e.outs[0], sum(widths[:i])))
        for us in self.colsums.values():
            for i, u in enumerate(us):
                src, c0 = pieces.get(u, (u, 0))
                self.outside.add(src)
                us[i] = (src, c0, u.shape[-1])

    def _kind(self, e):
        out = e.outs[0]
        n = out.shape[-1] if len(out.shape) == 2 and out.shape[0] is None else None
        if e.prim is ops.CONCAT and n is not None and e.params["axis"] in (1, -1):
            widths = {a.shape for a in e.ins}
            if len(widths) == 1 and len(e.ins) == len(e.args) - 1 and \
                    next(iter(widths))[0] is None:
                return "fused", next(iter(widths))[1]
        if e.prim.elementwise and n is not None and all(
                shape_kind(a, n) and a.dtype == out.dtype for a in e.ins):
            return "fused", n
        if e.prim is ops.MATMUL and e.args[1] in self.consts and len(e.args[0].shape) == 2 \
                and len(e.args[1].shape) == 2 and e.args[0].shape[0] is None:
            return "gemm", None
        return "generic", None

    def _schedule(self, body):
        """Ops by level (GEMMs and generic rows upstream); fused groups first in a level."""
        level, placed = {}, []
        for e in body:
            kind, n = self._kind(e)
            at = max((level.get(self.base(a)[0], 0) for a in e.ins), default=0)
            level.update((v, at if kind == "fused" else at + 1) for v in e.outs)
            placed.append((at, kind, n, e))
        ops_ = []
        for L in sorted({p[0] for p in placed}):
            groups = {}
            for at, kind, n, e in placed:
                if at == L and kind == "fused":
                    groups.setdefault(n, []).append(e)
            ops_ += [("fused", Group(n, g)) for n, g in groups.items()]
            ops_ += [(kind, e, False) for at, kind, n, e in placed if at == L and kind != "fused"]
        return ops_

    def readers(self, v):
        """How many places read v: equations in the ops, and the outside."""
        n = sum(a is v for _, op, *_ in self.ops for e in _eqns(op) for a in e.ins)
        return n + (v in self.outside) + sum(b is v for b, _, _ in self.views.values())

    def _fold_gemm_add(self):
        for i, (kind, g, *_) in enumerate(self.ops):
            if kind != "fused" or len(g.eqns) != 1 or g.eqns[0].prim is not ops.ADD:
                continue
            e = g.eqns[0]
            for j, (k, gemm, *_) in enumerate(self.ops[:i]):
                y = gemm.outs[0] if k == "gemm" else None
                if y not in e.args or self.readers(y) != 1:
                    continue
                x = e.args[1] if e.args[0] is y else e.args[0]
                made = [v for _, op, *_ in self.ops[:j] for q in _eqns(op) for v in q.outs]
                if isinstance(x, Var) and x in made and self.readers(x) == 1 and \
                        x not in self.views and x not in self.alias and x not in self.outside:
                    self.alias[x] = self.alias[y] = e.outs[0]
                    self.ops[j] = ("gemm", gemm, True)
                    del self.ops[i]
                    return True
        return False

    def _memory(self):
        """What needs memory, and what each fused group writes."""
        readers = {}
        for _, op, *_ in self.ops:
            for e in _eqns(op):
                for a in e.ins:
                    readers.setdefault(self.base(a)[0], set()).add(id(op))
        self.memory = set()
        for kind, op, *_ in self.ops:
            for e in _eqns(op):
                for v in e.outs:
                    b = self.base(v)[0]
                    if kind != "fused" or b in self.outside or b is not v or \
                            readers.get(b, set()) - {id(op)}:
                        self.memory.add(b)
            if kind == "fused":
                op.outs = [v for e in op.eqns if e.prim is not ops.CONCAT
                           for v in e.outs if self.base(v)[0] in self.memory]


def _batch_sum(e):
    """A sum of a per-step (B, n) value over the batch."""
    return e.prim is ops.SUM and e.params["axis"] == (0,) and not e.params["keepdims"] and \
        len(e.args[0].shape) == 2 and e.args[0].shape[0] is None


def _transposed(e):
    return e is not None and e.prim is ops.TRANSPOSE and e.params["axes"] is None \
        and len(e.args[0].shape) == 2 and e.args[0].shape[0] is None


def _eqns(op):
    return op.eqns if isinstance(op, Group) else [op]


def shape_kind(v, n):
    """How a fused kernel of row width n reads v: a 'row' (B, n), a 'col' (B, 1), a 'vec'
    (n,) or a 'scalar'; None if it cannot."""
    s = v.shape
    if s == (None, n):
        return "row"
    if s == (None, 1) and n != 1:
        return "col"
    if s in ((n,), (1, n)) and n != 1:
        return "vec"
    return "scalar" if all(d == 1 for d in s) else None
