"""Rewrites of a traced step, each small, named and tested to preserve values.

* :func:`split_concat_matmul` — ``concat([a, x]) @ W`` becomes ``a @ W[:H] + x @ W[H:]``
  (a matmul distributes over the concatenated axis);
* :func:`gather_one_hot` — ``one_hot(ids) @ W`` becomes ``W[ids]``, a row lookup;
* :func:`merge_gemms` — GEMMs (and lookups) that share their left operand become one on
  stacked weights, whose output columns the old results view;
* :func:`hoist` — orders the equations into what runs once per sequence (parameters only),
  what runs for all time steps at once (inputs only: the input projection of every gate is one
  GEMM) and the loop body (everything that depends on the carried state).

Elementwise fusion happens in :mod:`.codegen`, on the loop body this module leaves.
"""

import itertools

from minigrad.compiler.ir import Eqn, Var
from minigrad.core import ops

ELEMENTWISE = {"add", "sub", "mul", "div", "neg", "pow", "abs", "exp", "log", "clip", "tanh",
               "sigmoid", "relu"}
INVARIANT, INPUT, LOOP = 0, 1, 2  # what a value depends on: parameters, x<t>, the state


def _producers(prog):
    return {v: e for e in prog.eqns for v in e.outs}


_names = itertools.count(1)


def _fresh(prog, shape, dtype):
    return Var(f"r{next(_names)}", shape, dtype, "tmp")


def classify(prog):
    """Var -> INVARIANT | INPUT | LOOP: the latest thing it depends on."""
    level = {v: INVARIANT for v in prog.params + prog.consts}
    level.update({v: INPUT for v in prog.xs})
    level.update({v: LOOP for v in prog.state})
    for e in prog.eqns:
        lv = max((level[a] for a in e.ins), default=INVARIANT)
        if lv == INPUT and (_batched_args(e) is None or column_view(e)):
            lv = LOOP  # views are free in the loop; others cannot run for all t at once
        for v in e.outs:
            level[v] = lv
    return level


def _is_weight(prog, v, level):
    return level.get(v) == INVARIANT and len(v.shape) == 2


def dce(prog):
    """Drop equations whose outputs nobody reads."""
    live, kept = set(prog.outs), []
    for e in reversed(prog.eqns):
        if any(v in live for v in e.outs):
            kept.append(e)
            live.update(e.ins)
    return prog.copy(eqns=kept[::-1])


def split_concat_matmul(prog):
    """(a) ``concat(axis=-1, p_1..p_k) @ W`` -> ``Σ_i p_i @ W[rows_i]`` for an invariant W."""
    prod, level, eqns = _producers(prog), classify(prog), []
    for e in prog.eqns:
        left, right = (e.args + [None, None])[:2]
        c = prod.get(left) if e.prim is ops.MATMUL else None
        if c is None or c.prim is not ops.CONCAT or not _is_weight(prog, right, level) \
                or len(left.shape) != 2 or c.args[0] not in (1, -1) or len(c.ins) < 2:
            eqns.append(e)
            continue
        widths = [p.shape[1] for p in c.ins]
        rows = [_fresh(prog, (w, right.shape[1]), right.dtype) for w in widths]
        eqns.append(Eqn(ops.SPLIT, [right, tuple(itertools.accumulate(widths[:-1])), 0], rows))
        total = None
        for k, (p, r) in enumerate(zip(c.ins, rows)):
            term = _fresh(prog, e.outs[0].shape, e.outs[0].dtype)
            eqns.append(Eqn(ops.MATMUL, [p, r], [term]))
            if total is not None:
                s = e.outs[0] if k == len(c.ins) - 1 else _fresh(prog, term.shape, term.dtype)
                eqns.append(Eqn(ops.ADD, [total, term], [s]))
                term = s
            total = term
    return dce(prog.copy(eqns=eqns))


def gather_one_hot(prog):
    """(e) ``one_hot(ids, n) @ W`` -> ``W[ids]``: integer inputs are row lookups."""
    prod, level, eqns = _producers(prog), classify(prog), []
    for e in prog.eqns:
        o = prod.get(e.args[0]) if e.prim is ops.MATMUL else None
        if o is not None and o.prim is ops.ONE_HOT and _is_weight(prog, e.args[1], level):
            eqns.append(Eqn(ops.GETITEM, [e.args[1], o.args[0]], e.outs))
        else:
            eqns.append(e)
    return dce(prog.copy(eqns=eqns))


def _left(e):
    """The shared operand of a GEMM or lookup on an invariant weight (None otherwise)."""
    if e.prim is ops.MATMUL:
        return e.args[0], e.args[1]
    if e.prim is ops.GETITEM and isinstance(e.args[1], Var):  # W[ids]
        return e.args[1], e.args[0]
    return None, None


def merge_gemms(prog):
    """(c) GEMMs / lookups with the same left operand -> one on ``concat(W_1..W_k, axis=1)``;
    each old result becomes a column view ``Y[:, c0:c1]`` of the merged one."""
    level, groups = classify(prog), {}
    for e in prog.eqns:
        left, w = _left(e)
        if left is not None and _is_weight(prog, w, level) and len(e.outs[0].shape) >= 1:
            groups.setdefault((e.prim, left, w.dtype), []).append(e)
    first = {g[0]: g for g in groups.values() if len(g) > 1}
    merged = {e for g in first.values() for e in g}
    prod, stacked, eqns = _producers(prog), {}, []
    for e in prog.eqns:
        if e in first:
            g = first[e]
            ws = [_left(m)[1] for m in g]
            width = sum(w.shape[1] for w in ws)
            W = _stacked_rows(prog, prod, ws, stacked, eqns)
            if W is None:
                W = _fresh(prog, (ws[0].shape[0], width), ws[0].dtype)
                eqns.append(Eqn(ops.CONCAT, [1, *ws], [W]))
            shape = e.outs[0].shape[:-1] + (width,)
            Y = _fresh(prog, shape, e.outs[0].dtype)
            eqns.append(Eqn(e.prim, [g[0].args[0], W] if e.prim is ops.MATMUL
                            else [W, g[0].args[1]], [Y]))
            col = 0
            for m, w in zip(g, ws):
                key = (Ellipsis, slice(col, col + w.shape[1]))
                eqns.append(Eqn(ops.GETITEM, [Y, key], m.outs))
                col += w.shape[1]
        elif e not in merged:
            eqns.append(e)
    return dce(prog.copy(eqns=eqns))


def _stacked_rows(prog, prod, ws, stacked, eqns):
    """``concat(axis=1, [split(W_i.T)[k] for i])`` is ``split(concat(axis=0, W_i).T)[k]``:
    the gates' weights stacked once, transposed once and split once into the state part and
    the input part, shared by both merged GEMMs (None if the pattern does not match)."""
    splits = [prod.get(w) for w in ws]
    if any(s is None or s.prim is not ops.SPLIT or s.args[2] != 0 for s in splits):
        return None
    ks = {s.outs.index(w) for s, w in zip(splits, ws)}
    bounds = {s.args[1] for s in splits}
    trans = [prod.get(s.args[0]) for s in splits]
    if len(ks) != 1 or len(bounds) != 1 or any(
            t is None or t.prim is not ops.TRANSPOSE or t.args[1] is not None for t in trans):
        return None
    Ws = tuple(t.args[0] for t in trans)
    key = (Ws, bounds.pop())
    if key not in stacked:
        n, dtype = sum(W.shape[0] for W in Ws), Ws[0].dtype
        cat, tr = _fresh(prog, (n, Ws[0].shape[1]), dtype), _fresh(prog, (Ws[0].shape[1], n),
                                                                  dtype)
        parts = [_fresh(prog, (o.shape[0], n), dtype) for o in splits[0].outs]
        eqns += [Eqn(ops.CONCAT, [0, *Ws], [cat]), Eqn(ops.TRANSPOSE, [cat, None], [tr]),
                 Eqn(ops.SPLIT, [tr, key[1], 0], parts)]
        stacked[key] = parts
    return stacked[key][ks.pop()]


def hoist(prog):
    """(b) Stable order: invariant equations, then input-only ones, then the loop body."""
    level = classify(prog)
    key = {e: level[e.outs[0]] for e in prog.eqns}
    new = prog.copy(eqns=sorted(prog.eqns, key=key.__getitem__))
    new.level = level
    return new


# hoist before merging, so every weight is defined before the first GEMM using it
REWRITES = (split_concat_matmul, gather_one_hot, hoist, merge_gemms, hoist)


def optimize(prog):
    global _names
    _names = itertools.count(1)  # the same cell gives the same names: the same kernel source
    for rewrite in REWRITES:
        prog = rewrite(prog)
    return prog


# ----------------------------------------------------------------- running for all t at once

_AXIS_FIRST = {"concat", "softmax", "log_softmax"}


def _batched_args(e):
    """The equation's arguments when its per-step inputs get a leading time axis, or None
    when that is not the same computation."""
    name = e.prim.name
    if name in ELEMENTWISE or name in ("one_hot", "contiguous"):
        return e.args
    if e.prim is ops.MATMUL:
        return e.args if len(e.args[1].shape) == 2 else None
    if e.prim is ops.GETITEM:
        a, key = e.args
        if isinstance(key, Var):
            return e.args  # W[ids]: any shape of ids
        key = key if isinstance(key, tuple) else (key,)
        if key[:1] == (Ellipsis,) or all(isinstance(k, (slice, int)) for k in key):
            return [a, key if key[:1] == (Ellipsis,) else (slice(None),) + key]
        return None
    if name in _AXIS_FIRST or name.startswith("split"):
        pos = 0 if name == "concat" else len(e.args) - 1 if name.startswith("split") else 1
        ax = e.args[pos]
        args = list(e.args)
        args[pos] = ax + 1 if ax >= 0 else ax
        return args
    return None


def batched_args(e):
    args = _batched_args(e)
    if args is None:
        raise AssertionError(f"internal: {e.prim.name} cannot be batched over time")
    return args


def column_view(e):
    """``[(out, c0, c1), ...]`` if ``e`` takes column ranges of a 2-D per-step value along
    its last axis (a free view for the code generator), else None."""
    a = e.args[0] if e.args else None
    if not isinstance(a, Var) or len(a.shape) != 2 or a.shape[0] is not None:
        return None
    if e.prim is ops.GETITEM and isinstance(e.args[1], tuple) and len(e.args[1]) == 2 \
            and e.args[1][0] in (Ellipsis, slice(None)) and isinstance(e.args[1][1], slice) \
            and e.args[1][1].step in (None, 1):
        c0, c1, _ = e.args[1][1].indices(a.shape[1])
        return [(e.outs[0], c0, c1)]
    if e.prim.name.startswith("split") and e.args[2] in (1, -1):
        bounds = (0, *e.args[1], a.shape[1])
        return [(v, bounds[i], bounds[i + 1]) for i, v in enumerate(e.outs)]
    return None
