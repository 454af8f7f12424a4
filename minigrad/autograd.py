"""The tape: graph nodes, grad mode and the one reverse walk that computes every gradient.

Every differentiable operation that runs while grad mode is on, with at least one input
that requires grad, records a :class:`Node`: the primitive, its inputs' arrays and its
output(s).  ``backward`` sorts the nodes reachable from the root in reverse topological
order — without recursion, so a 100 000-op chain is fine — and calls each primitive's
vector-Jacobian product once, accumulating into leaves' ``.grad`` with ``+=``.
"""

import contextlib
import heapq
import itertools

import numpy as np

from minigrad.ops import OuterSum


class _GradMode:
    enabled = True


def is_grad_enabled():
    """True when new operations are recorded on the tape."""
    return _GradMode.enabled


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager / decorator that turns recording on or off."""

    def __init__(self, mode):
        self.mode = bool(mode)
        # A stack, not one slot: a decorated function may call itself (re-entering this
        # same instance), and each exit must restore what its own enter saw.
        self.prev = []

    def __enter__(self):
        self.prev.append(_GradMode.enabled)
        _GradMode.enabled = self.mode

    def __exit__(self, *exc):
        _GradMode.enabled = self.prev.pop()


class no_grad(set_grad_enabled):
    """``with mg.no_grad():`` or ``@mg.no_grad()``: record nothing (inference, updates)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Turn recording back on inside a ``no_grad`` block."""

    def __init__(self):
        super().__init__(True)


class Node:
    """One recorded primitive application.

    ``args`` are the primitive's inputs as arrays (or Python constants), ``parents`` the
    inputs as given (Tensors or constants), ``needs`` the positions of the inputs whose
    gradient is wanted, ``out`` the output array (a tuple for multi-output primitives), ``seq`` a
    creation counter: a node's inputs are always older than the node, so processing nodes
    by decreasing ``seq`` is a reverse topological order.  During ``backward``, ``grads``
    collects the incoming gradient of each output and ``owned`` is a bit mask of the slots
    whose array the walk allocated itself (safe to ``+=`` into).
    """

    __slots__ = ("prim", "args", "needs", "parents", "out", "seq", "grads", "owned",
                 "retained")


_counter = itertools.count()


def record(prim, args, needs, parents, out):
    """Create the tape entry for one primitive application."""
    node = _new(Node)
    node.prim = prim
    node.args = args
    node.needs = needs
    node.parents = parents
    node.out = out
    node.seq = next(_counter)
    node.retained = None
    return node


_new = object.__new__


def _freed(node):
    return RuntimeError(
        f"backward: trying to backward through the graph a second time (through "
        f"'{node.prim.name}'); its saved arrays were freed after the first backward. "
        "Pass retain_graph=True to the first backward if you need to call it twice."
    )


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf), contracted with ``grad``, into every leaf's ``.grad``.

    One pass over a heap keyed by ``-seq``: a node is popped only after every node that
    consumed its outputs (all newer) has passed its gradient on.
    """
    data = root.data
    if grad is None:
        if data.size != 1:
            raise RuntimeError(
                f"backward: grad can be implicitly created only for a scalar output, but "
                f"the tensor has shape {data.shape}; call t.backward(grad) with a gradient "
                f"array of shape {data.shape}, or reduce first (e.g. t.sum().backward())."
            )
        grad = np.ones_like(data)
    else:
        grad = np.asarray(getattr(grad, "data", grad))
        if grad.shape != data.shape:
            raise ValueError(
                f"backward: gradient has shape {grad.shape} but the tensor has shape "
                f"{data.shape}; they must match."
            )
        grad = grad.astype(data.dtype, copy=False)
    if not root.requires_grad:
        raise RuntimeError(
            "backward: the tensor does not require grad and has no graph (was it computed "
            "under no_grad, or from inputs none of which has requires_grad=True?)."
        )
    node = root._node
    if node is None:  # a leaf: d root / d root = grad
        _accumulate_leaf(root, grad)
        return
    if node.parents is None:
        raise _freed(node)
    node.grads = [None] * node.prim.nout
    node.owned = 0
    node.grads[root._idx] = grad
    heap = [(-node.seq, node)]
    seen = {node}
    pending = {}  # leaf id -> (leaf, OuterSum): formed once, after the walk
    push, pop = heapq.heappush, heapq.heappop
    ndarray = np.ndarray
    while heap:
        node = pop(heap)[1]
        prim = node.prim
        grads = node.grads
        node.grads = None
        for j, gj in enumerate(grads):
            if type(gj) is OuterSum:
                grads[j] = gj.materialize()
        g = grads[0] if prim.nout == 1 else tuple(grads)
        if node.retained is not None:
            for j, t in node.retained.items():
                if grads[j] is not None:
                    _accumulate_leaf(t, grads[j])
        args, out, parents = node.args, node.out, node.parents
        if not retain_graph:
            node.args = node.parents = node.out = node.retained = None
        if g is None:
            continue
        if prim.vjp_all is not None:
            all_grads = prim.vjp_all(g, out, *args)
        vjps = prim.vjps
        for i in node.needs:
            x = parents[i]
            gi = all_grads[i] if prim.vjp_all is not None else vjps[i](g, out, *args)
            if gi is None:
                continue
            xd = x.data
            deferred = type(gi) is OuterSum
            if deferred:
                if gi.dtype != xd.dtype:
                    gi, deferred = gi.materialize().astype(xd.dtype), False
            elif type(gi) is not ndarray or gi.dtype != xd.dtype:
                gi = np.asarray(gi, dtype=xd.dtype)
            if gi.shape != xd.shape:
                raise RuntimeError(
                    f"internal error: VJP of '{prim.name}' returned shape "
                    f"{gi.shape} for an input of shape {xd.shape}"
                )
            parent = x._node
            if parent is None:  # a leaf
                if deferred:
                    prev = pending.get(id(x))
                    pending[id(x)] = (x, gi if prev is None else prev[1].add(gi))
                elif x.grad is None:
                    x.grad = gi.copy()
                else:
                    x.grad += gi
                continue
            if parent not in seen:
                if parent.parents is None:
                    raise _freed(parent)
                seen.add(parent)
                parent.grads = [None] * parent.prim.nout
                parent.owned = 0
                push(heap, (-parent.seq, parent))
            j = x._idx
            cur = parent.grads[j]
            if cur is None:
                parent.grads[j] = gi  # an OuterSum is fresh from its VJP: ours to extend
            elif type(cur) is OuterSum and deferred:
                cur.add(gi)
            else:
                if type(cur) is OuterSum:
                    cur, parent.owned = cur.materialize(), parent.owned | 1 << j
                if deferred:
                    gi = gi.materialize()
                if parent.owned >> j & 1:
                    cur += gi
                    parent.grads[j] = cur
                else:
                    parent.grads[j] = cur + gi
                    parent.owned |= 1 << j
    for x, gsum in pending.values():
        _accumulate_leaf(x, gsum.materialize())


def _accumulate_leaf(t, g):
    if t.grad is None:
        t.grad = np.array(g, dtype=t.data.dtype, copy=True)
    else:
        t.grad += g
