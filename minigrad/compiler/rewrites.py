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

import numpy as np

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
    eqns = []
    for e in prog.eqns:
        if e in first:
            eqns += _merge(prog, first[e])
        elif e not in merged:
            eqns.append(e)
    return dce(prog.copy(eqns=eqns))


def _merge(prog, group):
    """The equations of one merged GEMM and the column views that replace its members (the
    stacked weights: one copy each, made by :func:`layouts`)."""
    ws = [_left(m)[1] for m in group]
    W = prog.fresh((ws[0].shape[0], sum(w.shape[1] for w in ws)), ws[0].dtype)
    e = group[0]
    Y = prog.fresh(e.outs[0].shape[:-1] + W.shape[1:], e.outs[0].dtype)
    eqns = [Eqn(ops.CONCAT, [1, *ws], [W]),
            Eqn(e.prim, [e.args[0], W] if e.prim is ops.MATMUL else [W, e.args[1]], [Y])]
    col = 0
    for m, w in zip(group, ws):
        eqns.append(Eqn(ops.GETITEM, [Y, (Ellipsis, slice(col, col + w.shape[1]))], m.outs))
        col += w.shape[1]
    return eqns


def hoist(prog):
    """Stable order: invariant equations, then input-only ones, then the loop body."""
    stage = stages(prog)
    return prog.copy(eqns=sorted(prog.eqns, key=lambda e: stage[e.outs[0]]))


def layouts(prog):
    """Weights rearranged before the loop (transposes, splits, column or row slices, concats
    of parameters) -> one ``layout`` equation per stacked value read elsewhere: each piece is
    copied once, into contiguous memory, and the gradient goes back the same way (a GRU's 11
    equations before its loop become 3)."""
    return dce(prog.copy(eqns=relayout(prog, prog.params, [], prog.eqns, prog.outs + prog.ys)))


def relayout(prog, params, before, eqns, read):
    """``eqns``, where a value stacked from pieces of the 2-D ``params`` (through ``before``,
    then ``eqns``) is read by ``read`` or by another equation: made by one ``layout``."""
    pieces = {v: [(v, 0, v.shape[0], 0, v.shape[1], False, 0, 0)] for v in params
              if len(v.shape) == 2}
    for e in before + eqns:
        pieces.update(zip(e.outs, _pieces(e, pieces) or ()))
    read = set(read) | {a for e in eqns if not all(v in pieces for v in e.outs) for a in e.ins}
    out = []
    for e in eqns:
        stacked = [v for v in e.outs if v in read and len(pieces.get(v, ())) > 1]
        for v in stacked:
            srcs = list(dict.fromkeys(b[0] for b in pieces[v]))
            blocks = tuple((srcs.index(b[0]), *b[1:]) for b in pieces[v])
            out.append(Eqn(ops.LAYOUT, [(v.shape, blocks, _once(srcs, blocks)), *srcs], [v]))
        if len(stacked) < len(e.outs):  # (dce drops it where nothing else reads it)
            out.append(Eqn(e.prim, e.args, [prog.fresh(v.shape, v.dtype) if v in stacked
                                            else v for v in e.outs]))
    return out


def _pieces(e, pieces):
    """The pieces (source, r0, r1, c0, c1, transposed, i, j) of each output of a 2-D
    rearrangement of values made of pieces; None for any other equation."""
    ins = e.ins
    if not ins or any(a not in pieces for a in ins) or \
            any(len(v.shape) != 2 or None in v.shape for v in e.outs):
        return None
    a = ins[0]
    if e.prim is ops.LAYOUT:
        out = []
        for k, r0, r1, c0, c1, t, i, j in e.params["plan"][1]:
            for b in _window(pieces[ins[k]], r0, r1, c0, c1):
                b = _transposed(b) if t else b
                out.append((*b[:6], b[6] + i, b[7] + j))
        return [out]
    if e.prim is ops.TRANSPOSE and e.params["axes"] in (None, (1, 0)):
        return [[_transposed(b) for b in pieces[a]]]
    if e.prim is ops.CONCAT and e.params["axis"] in (0, 1, -1):
        rows, out, at = e.params["axis"] == 0, [], 0
        for x in ins:
            out += [(*b[:6], b[6] + at * rows, b[7] + at * (not rows)) for b in pieces[x]]
            at += x.shape[0 if rows else 1]
        return [out]
    if e.prim is ops.SPLIT and e.params["axis"] in (0, 1, -1):
        edges, rows = (0, *e.params["bounds"], a.shape[e.params["axis"]]), e.params["axis"] == 0
        return [_window(pieces[a], *((lo, hi, 0, a.shape[1]) if rows else (0, a.shape[0], lo, hi)))
                for lo, hi in zip(edges, edges[1:])]
    key = e.params.get("key") if e.prim is ops.GETITEM else None
    key = (key,) if isinstance(key, slice) else key
    if isinstance(key, tuple) and key[:1] == (Ellipsis,) and len(key) == 2:
        key = (slice(None), key[1])
    if isinstance(key, tuple) and 1 <= len(key) <= 2 and all(
            isinstance(k, slice) and k.step in (None, 1) for k in key):
        (r0, r1, _), (c0, c1, _) = [k.indices(n) for k, n in zip(key + (slice(None),), a.shape)]
        return [_window(pieces[a], r0, r1, c0, c1)]
    return None


def _transposed(piece):
    s, r0, r1, c0, c1, t, i, j = piece
    return s, r0, r1, c0, c1, not t, j, i


def _once(srcs, blocks):
    """Is each element of each source in one block at most?"""
    count = [np.zeros(s.shape, np.int64) for s in srcs]
    for k, r0, r1, c0, c1, *_ in blocks:
        count[k][r0:r1, c0:c1] += 1
    return tuple(bool((c <= 1).all()) for c in count)


def _window(pieces, a, b, c, d):
    """The pieces of rows a..b, columns c..d of a value made of ``pieces``."""
    out = []
    for s, r0, r1, c0, c1, t, i, j in pieces:
        h, w = (c1 - c0, r1 - r0) if t else (r1 - r0, c1 - c0)
        i0, i1, j0, j1 = max(i, a), min(i + h, b), max(j, c), min(j + w, d)
        if i0 >= i1 or j0 >= j1:
            continue
        rows, cols = (i0 - i, i1 - i), (j0 - j, j1 - j)
        if t:
            rows, cols = cols, rows
        out.append((s, r0 + rows[0], r0 + rows[1], c0 + cols[0], c0 + cols[1], t,
                    i0 - a, j0 - c))
    return out


# hoist before merging, so that every weight is defined before the first GEMM using it
REWRITES = (split_concat_matmul, gather_one_hot, hoist, merge_gemms, hoist, layouts)


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


__all__ = ["INPUT", "INVARIANT", "LOOP", "batched", "dce", "gather_one_hot", "hoist", "layouts",
           "merge_gemms", "optimize", "split_concat_matmul"]
