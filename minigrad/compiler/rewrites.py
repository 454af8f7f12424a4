"""Rewrites of a traced step, each small, named and tested to preserve values.

* :func:`split_concat_matmul` — ``concat([a, x]) @ W`` becomes ``a @ W[:H] + x @ W[H:]``
  (a matmul distributes over the concatenated axis);
* :func:`gather_one_hot` — ``one_hot(ids) @ W`` becomes ``W[ids]``, a row lookup;
* :func:`merge_gemms` — GEMMs (and lookups) that share their left operand become one on
  stacked weights, whose output columns the old results view;
* :func:`hoist` — orders the equations by :func:`~minigrad.compiler.ir.stages`: what runs once
  per sequence (parameters only), what runs for all time steps at once (inputs only: the
  input projection of every gate is one GEMM) and the loop body (what depends on the state).

Every rewrite ends with :func:`dce`; ``CHECK = True`` (the tests set it) runs
:func:`~minigrad.compiler.ir.verify` after each one.  Elementwise fusion happens when the loop
body is lowered (:mod:`.lower`).
"""

from minigrad.compiler.ir import INPUT, INVARIANT, LOOP, Eqn, Var, stages, verify
from minigrad.core import ops

CHECK = False


def _producers(prog):
    return {v: e for e in prog.eqns for v in e.outs}


def _is_weight(v, stage):
    return stage.get(v) == INVARIANT and len(v.shape) == 2


def dce(prog):
    """Drop the equations whose outputs nobody reads."""
    live, kept = set(prog.outs + prog.ys + prog.acc), []
    for e in reversed(prog.eqns):
        if any(v in live for v in e.outs):
            kept.append(e)
            live.update(e.ins)
    return prog.copy(eqns=kept[::-1])


def split_concat_matmul(prog):
    """``concat(axis=-1, p_1..p_k) @ W`` -> ``Σ_i p_i @ W[rows_i]`` for an invariant W."""
    prod, stage, eqns = _producers(prog), stages(prog), []
    for e in prog.eqns:
        left, right = (e.args + [None, None])[:2]
        c = prod.get(left) if e.prim is ops.MATMUL else None
        if c is None or c.prim is not ops.CONCAT or not _is_weight(right, stage) \
                or len(left.shape) != 2 or c.params["axis"] not in (1, -1) or len(c.ins) < 2:
            eqns.append(e)
            continue
        widths = [p.shape[1] for p in c.ins]
        rows = [prog.fresh((w, right.shape[1]), right.dtype) for w in widths]
        bounds = tuple(sum(widths[:i + 1]) for i in range(len(widths) - 1))
        eqns.append(Eqn(ops.SPLIT, [right, bounds, 0], rows))
        total = None
        for k, (p, r) in enumerate(zip(c.ins, rows)):
            term = prog.fresh(e.outs[0].shape, e.outs[0].dtype)
            eqns.append(Eqn(ops.MATMUL, [p, r], [term]))
            if total is not None:
                s = e.outs[0] if k == len(c.ins) - 1 else prog.fresh(term.shape, term.dtype)
                eqns.append(Eqn(ops.ADD, [total, term], [s]))
                term = s
            total = term
    return dce(prog.copy(eqns=eqns))


def gather_one_hot(prog):
    """``one_hot(ids, n) @ W`` -> ``W[ids]``: integer inputs are row lookups."""
    prod, stage, eqns = _producers(prog), stages(prog), []
    for e in prog.eqns:
        o = prod.get(e.args[0]) if e.prim is ops.MATMUL else None
        if o is not None and o.prim is ops.ONE_HOT and _is_weight(e.args[1], stage):
            eqns.append(Eqn(ops.GETITEM, [e.args[1], o.args[0]], e.outs))
        else:
            eqns.append(e)
    return dce(prog.copy(eqns=eqns))


def _left(e):
    """(shared operand, weight) of a GEMM or a lookup (None, None otherwise)."""
    if e.prim is ops.MATMUL:
        return e.args[0], e.args[1]
    if e.prim is ops.GETITEM and isinstance(e.args[1], Var):  # W[ids]
        return e.args[1], e.args[0]
    return None, None


def merge_gemms(prog):
    """GEMMs / lookups with the same left operand -> one on ``concat(W_1..W_k, axis=1)``;
    each old result becomes a column view ``Y[..., c0:c1]`` of the merged one."""
    stage, groups = stages(prog), {}
    for e in prog.eqns:
        left, w = _left(e)
        if left is not None and _is_weight(w, stage) and len(e.outs[0].shape) >= 1:
            groups.setdefault((e.prim, left, w.dtype), []).append(e)
    first = {g[0]: g for g in groups.values() if len(g) > 1}
    merged = {e for g in first.values() for e in g}
    prod, eqns = _producers(prog), []
    keys = [k for k in (_stack_key(prod, [_left(m)[1] for m in g]) for g in first.values()) if k]
    stacked = {k: None for k, _ in keys  # W_i stacked once only where each part of it is used
               if len({j for k2, j in keys if k2 == k}) == len(k[1]) + 1}
    for e in prog.eqns:
        if e in first:
            eqns += _merge(prog, prod, first[e], stacked)
        elif e not in merged:
            eqns.append(e)
    return dce(prog.copy(eqns=eqns))


def _merge(prog, prod, group, stacked):
    """The equations of one merged GEMM and the column views that replace its members."""
    eqns, ws = [], [_left(m)[1] for m in group]
    width = sum(w.shape[1] for w in ws)
    W = _stacked_rows(prog, prod, ws, stacked, eqns)
    if W is None:
        W = prog.fresh((ws[0].shape[0], width), ws[0].dtype)
        eqns.append(Eqn(ops.CONCAT, [1, *ws], [W]))
    e = group[0]
    Y = prog.fresh(e.outs[0].shape[:-1] + (width,), e.outs[0].dtype)
    eqns.append(Eqn(e.prim, [e.args[0], W] if e.prim is ops.MATMUL else [W, e.args[1]], [Y]))
    col = 0
    for m, w in zip(group, ws):
        eqns.append(Eqn(ops.GETITEM, [Y, (Ellipsis, slice(col, col + w.shape[1]))], m.outs))
        col += w.shape[1]
    return eqns


def _stack_key(prod, ws):
    """((W_1..W_n, bounds), k) when every w_i is part k of ``split(W_i.T, bounds)``."""
    splits = [prod.get(w) for w in ws]
    if any(s is None or s.prim is not ops.SPLIT or s.params["axis"] != 0 for s in splits):
        return None
    parts = {(s.params["bounds"], s.outs.index(w)) for s, w in zip(splits, ws)}
    trans = [prod.get(s.args[0]) for s in splits]
    if len(parts) != 1 or any(t is None or t.prim is not ops.TRANSPOSE or
                              t.params["axes"] is not None for t in trans):
        return None
    bounds, k = parts.pop()
    return (tuple(t.args[0] for t in trans), bounds), k


def _stacked_rows(prog, prod, ws, stacked, eqns):
    """``concat(axis=1, [split(W_i.T)[k] for i])`` is ``split(concat(axis=0, W_i).T)[k]``:
    the gates' weights stacked once, transposed once and split once into the state part and
    the input part, when both merged GEMMs use them (an LSTM's); else None (a GRU's r * a
    makes its two GEMMs stack different gates: stacking both would copy unused halves)."""
    found = _stack_key(prod, ws)
    if found is None or found[0] not in stacked:
        return None
    (Ws, bounds), k = found
    if stacked[Ws, bounds] is None:
        n, dtype = sum(W.shape[0] for W in Ws), Ws[0].dtype
        cat, tr = prog.fresh((n, Ws[0].shape[1]), dtype), prog.fresh((Ws[0].shape[1], n), dtype)
        parts = [prog.fresh((o.shape[0], n), dtype) for o in prod[ws[0]].outs]
        eqns += [Eqn(ops.CONCAT, [0, *Ws], [cat]), Eqn(ops.TRANSPOSE, [cat, None], [tr]),
                 Eqn(ops.SPLIT, [tr, bounds, 0], parts)]
        stacked[Ws, bounds] = parts
    return stacked[Ws, bounds][k]


def hoist(prog):
    """Stable order: invariant equations, then input-only ones, then the loop body."""
    stage = stages(prog)
    return prog.copy(eqns=sorted(prog.eqns, key=lambda e: stage[e.outs[0]]))


# hoist before merging, so that every weight is defined before the first GEMM using it
REWRITES = (split_concat_matmul, gather_one_hot, hoist, merge_gemms, hoist)


def optimize(prog):
    """All the rewrites, in order (each one checked by ``verify`` when ``CHECK`` is set)."""
    for rewrite in REWRITES:
        prog = rewrite(prog)
        if CHECK:
            verify(prog)
    return prog


def batched(e):
    """``e`` with the static parameters its row gives for inputs with a leading time axis."""
    params = e.prim.batch(e) if e.prim.batch is not None else None
    if params is None:
        raise AssertionError(f"internal: {e.prim.name} cannot be batched over time")
    return e.replace(params)


__all__ = ["INPUT", "INVARIANT", "LOOP", "batched", "dce", "gather_one_hot", "hoist",
           "merge_gemms", "optimize", "split_concat_matmul"]
