"""The tape: graph nodes, grad mode and the one reverse walk that computes every gradient.

Every differentiable operation that runs while grad mode is on, with at least one input
that requires grad, records a :class:`Node`: the primitive, its inputs' arrays and its
output(s).  ``backward`` visits the nodes reachable from the root newest first — without
recursion, so a 100 000-op chain is fine — and calls each primitive's vector-Jacobian
product once; :func:`_accumulate` sums the gradients that meet at a node or a leaf.
:class:`OuterSum` is the one cotangent that is not an array: a weight gradient kept as
its factors until it is needed.
"""

import contextlib
import itertools
import math
from heapq import heappop, heappush

import numpy as np

from minigrad import kernels, threads


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
    by decreasing ``seq`` is a reverse topological order.  ``grads`` is ``None`` until the
    walk reaches the node; then it collects the incoming gradient of each output and
    ``owned`` is a bit mask of the slots whose array the walk allocated itself.
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
    node.grads = node.retained = None
    return node


_new = object.__new__
_ndarray = np.ndarray


class OuterSum:
    """A weight gradient Σ_i a_iᵀ g_i kept as its factors until it is needed.

    A recurrent weight is used by one matmul per time step, so its gradient is a sum of T
    small products.  Returned by the matmul VJPs and merged (not added) by
    :func:`_accumulate`, it becomes one GEMM on the stacked factors,
    ``[a_1; …; a_T]ᵀ [g_1; …; g_T]`` — the "weight gradient as one GEMM after the loop" of a
    hand-written BPTT, found by the tape.
    """

    __slots__ = ("lefts", "rights", "shape", "dtype")

    def __init__(self, a, g):  # a (N, K), g (N, M): a.T @ g of shape (K, M)
        self.lefts, self.rights = [a], [g]
        self.shape = (a.shape[1], g.shape[1])
        self.dtype = a.dtype if a.dtype == g.dtype else np.result_type(a, g)

    def add(self, other):
        self.lefts += other.lefts
        self.rights += other.rights
        return self

    def materialize(self):
        # np.dot hands transposed views to BLAS as they are and copies other strides itself.
        if len(self.lefts) == 1:
            return threads.dot_t(self.lefts[0], self.rights[0])
        return threads.dot_t(np.concatenate(self.lefts), np.concatenate(self.rights))


class _Leaf:
    """A leaf's gradient slot during one walk, summed like a node's output slot."""

    __slots__ = ("grads", "owned")

    def __init__(self):
        self.grads, self.owned = [None], 0


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf), contracted with ``grad``, into every leaf's ``.grad``.

    Nodes come off a heap keyed by ``-seq``: a node is popped only after every node that
    consumed its outputs (all newer) has passed its gradient on, so its VJP runs once.
    """
    leaves, heap = {}, []  # leaf -> _Leaf slot; (-seq, node) for nodes reached, not yet run
    _accumulate(root, _seed(root, grad), None, leaves, heap)
    try:
        while heap:
            node = heappop(heap)[1]
            prim, grads, node.grads = node.prim, node.grads, None
            for j, gj in enumerate(grads):
                if type(gj) is OuterSum:
                    grads[j] = gj.materialize()
            if node.retained is not None:
                for j, t in node.retained.items():
                    _deposit(t, grads[j])
            args, out, parents = node.args, node.out, node.parents
            if not retain_graph:
                node.args = node.parents = node.out = node.retained = None
            g = grads[0] if prim.nout == 1 else tuple(grads)
            if g is None:
                continue
            vjps = prim.vjps or given_vjps(prim.vjp_all(g, out, *args))
            for i in node.needs:
                gi = vjps[i](g, out, *args)
                if gi is not None:
                    if prim.scalar is not None:  # an elementwise rule: undo broadcasting
                        gi = unbroadcast(gi, args[i].shape)
                    _accumulate(parents[i], gi, prim, leaves, heap)
    finally:
        for _, node in heap:  # only after an error: forget the half-summed gradients
            node.grads = None
    for x, slot in leaves.items():
        _deposit(x, slot.grads[0], slot.owned)


def _seed(root, grad):
    """The gradient the walk starts from: ones for a scalar root, else ``grad``, checked."""
    data = root.data
    if grad is None and data.size != 1:
        raise RuntimeError(
            f"backward: grad can be implicitly created only for a scalar output, but the tensor "
            f"has shape {data.shape}; call t.backward(grad) with a gradient array of shape "
            f"{data.shape}, or reduce first (e.g. t.sum().backward()).")
    grad = np.ones_like(data) if grad is None else np.asarray(grad)
    if grad.shape != data.shape:
        raise ValueError(f"backward: gradient has shape {grad.shape} but the tensor has shape "
                         f"{data.shape}; they must match.")
    if not root.requires_grad:
        raise RuntimeError("backward: the tensor does not require grad and has no graph (made "
                           "under no_grad, or from inputs none of which requires grad? or by an "
                           "mg.compile'd training step, whose own backward() already ran?)")
    return grad


def _accumulate(x, g, prim, leaves, heap):
    """Add the cotangent ``g`` (from ``prim``'s VJP, or the seed) into ``x``'s slot.

    The one place gradients meet: a node output's slot (the node goes on the heap when its
    first gradient arrives) or a leaf's slot in ``leaves``.  The first array is kept as
    given (a VJP may return a view of its own ``g``); the first sum allocates, later ones
    add in place.  OuterSums merge their factors until an array has to be added to them.
    """
    xd = x.data
    if type(g) is OuterSum:
        if g.dtype != xd.dtype:
            g = g.materialize().astype(xd.dtype)
    elif type(g) is not _ndarray or g.dtype != xd.dtype:
        g = np.asarray(g, dtype=xd.dtype)
    if g.shape != xd.shape:
        raise RuntimeError(f"internal error: VJP of '{prim.name}' returned shape {g.shape} "
                           f"for an input of shape {xd.shape}")
    slot, j = x._node, x._idx
    if slot is None:
        slot = leaves.get(x) or leaves.setdefault(x, _Leaf())
    elif slot.grads is None:
        if slot.parents is None:
            raise _freed(slot)
        slot.grads = [None] * (1 if slot.prim.nout == 1 else len(slot.out))
        slot.owned = 0
        heappush(heap, (-slot.seq, slot))
    cur = slot.grads[j]
    if cur is None:
        slot.grads[j] = g
    elif type(cur) is OuterSum and type(g) is OuterSum:
        cur.add(g)
    else:
        g = made(g)
        if slot.owned >> j & 1:
            cur += g
        else:  # the first sum allocates; from then on the slot's array is ours to add into
            total = made(cur) + g
            # NOTE: the sum of two 0-d arrays is a NumPy scalar, which `+=` cannot update
            slot.grads[j] = total if type(total) is _ndarray else np.asarray(total)
            slot.owned |= 1 << j


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``, undoing NumPy broadcasting (the only place this happens).

    Leading axes that broadcasting added are summed away, and so are axes where ``shape``
    has size 1 but ``g`` does not.  ``g`` may also be one of the compiler's symbols (it has
    ``shape`` and ``sum``): the reverse program's reductions come from here too.
    """
    if g.shape == shape:
        return g
    lead = len(g.shape) - len(shape)
    if type(g) is _ndarray and lead > 0 and g.shape[lead:] == shape and g.size \
            and g.flags.c_contiguous and (g.dtype == np.float32 or g.dtype == np.float64):
        # The common case — a bias gradient — as one column-sum kernel, no temporaries.
        return kernels.sum_axis0(g.reshape(-1, math.prod(shape))).reshape(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=ones, keepdims=True) if ones else g


def given_vjps(grads):
    """Per-input VJPs from a ``vjp_all`` row's results: input ``i`` is handed ``grads[i]``."""
    return [lambda *_, gi=gi: gi for gi in grads]


def made(g):
    """``g`` as an array: an OuterSum is made (an array or None is as given)."""
    return g.materialize() if type(g) is OuterSum else g


def deposit(t, g):
    """A leaf's finished gradient ``g`` added to ``t.grad`` by the walk's rules (made an
    array in t's dtype, as :func:`_accumulate` makes it; one given is copied, not kept): for
    a caller that ran the VJPs itself, as a compiled training step does.  (Not through
    ``_accumulate``'s slots: those cost a 12-input step 7 µs, a quarter of what it saves.)"""
    owned = type(g) is OuterSum
    g = g.materialize() if owned else g
    if type(g) is not _ndarray or g.dtype != t.data.dtype:  # (a NumPy scalar: an array)
        g, owned = np.array(g, dtype=t.data.dtype), True
    _deposit(t, g, owned)


def _deposit(t, g, owned=False):
    """Add a finished gradient to ``t.grad`` (a leaf, or a non-leaf that retains its grad)."""
    if type(g) is OuterSum:
        g, owned = g.materialize(), True
    if t.grad is None:
        t.grad = g if owned else g.copy()
    else:
        t.grad += g


def _freed(node):
    return RuntimeError(
        f"backward: trying to backward through the graph a second time (through "
        f"'{node.prim.name}'); its saved arrays were freed after the first backward. "
        "Pass retain_graph=True to the first backward if you need to call it twice."
    )
