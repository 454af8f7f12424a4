"""A whole function compiled: ``step = mg.compile(fn)``, the way ``jax.jit`` compiles one.

``fn`` takes tensors (and arrays, and hashable Python values), in tuples (named ones too),
lists and dicts as deep as it likes, and returns them the same way — typically a loss. The
first call with a new signature (the arguments' shapes, dtypes and Python values, which of
them are one tensor or a parameter ``fn`` reads, grad mode, the ``training`` flags of the
modules ``fn`` reaches or calls) runs ``fn`` eagerly and traces it: every primitive it
applies becomes an equation (:class:`~minigrad.compiler.ir.Eqn`) of one straight-line
:class:`~minigrad.compiler.ir.Program`.
A recurrent layer's whole sequence is one equation, ``scan[Cell]``, compiled as ever.  The
second call traces again and compares.  From then on a call runs the equations on arrays —
no model Python, no tape of many nodes — and records **one** tape node, whose VJP runs the
table's VJPs in reverse order.  Both are generated Python, one call per equation and per
VJP with the walk unrolled (``print(step.program(...).source)``).  ``loss.backward()`` and
``opt.step()`` work as before.

The contract, as for ``jax.jit``: what ``fn`` computes must follow from its arguments and
the tensors it reads (parameters, buffers) through minigrad's operations.  A tensor that
``fn`` builds from NumPy data, a static value (an index array, a Python float) that differs
between the two traces, or a different sequence of operations means that the Python around
the operations depends on the data: ``fn`` then stays eager, with one
:class:`~minigrad.CompileFallbackWarning` saying what differed.  Value checks written in
Python run in the two traced calls only; checks inside a row (ids in range) run always.
A Python number read from outside ``fn`` is built in when traced (as in JAX): pass what
changes as an argument; tensors it reads (parameters) are read afresh at every call.
A parameter or layer re-assigned on a module ``fn`` reaches or calls (``model.fc =
nn.Linear(...)``) makes ``fn`` trace afresh, as ``torch.compile``'s guards do; a tensor held
elsewhere (a global name bound to a new tensor) is not seen: pass it as an argument.
Random draws are rows too (``dropout``), so a compiled call draws as the eager one does.

A whole training step compiles too, as with ``torch.compile``::

    @mg.compile
    def train_step(ids, lengths):
        loss, _ = model.loss(ids, lengths)  # (a LanguageModel)
        opt.zero_grad()
        loss.backward()
        mg.optim.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

``backward()``, ``zero_grad()``, the clipping functions and an optimizer's or a
scheduler's ``step()`` are *effects* (:func:`~minigrad.core.tensor.effect`): a trace
records each with its arguments, and a compiled call runs the equations, then replays them
in order (``print(train_step.program(ids, lengths))`` lists them after its equations) —
the same code as eagerly, so the same values.  An operation on a parameter after the first
effect (the forward after ``step()``), an effect that cannot be replayed (``retain_grad()``,
``mg.manual_seed()``, ``opt.lr = …``, ``DistributedOptimizer.synchronize(v)`` with values,
read in Python) or a returned Python number keeps the function eager, with the warning.
The one ``backward()`` of a loss the program computes needs no tape: the call runs the
program's backward itself and adds each input tensor's gradient to its ``.grad``, as the
walk would (as ``jax.value_and_grad`` inside ``jax.jit``; 2-6 % of min-char-rnn's step),
so the loss it returns has no graph left (``requires_grad`` is False).  A tensor argument
with a graph of its own (not a leaf) keeps the tape.
"""

import collections
import copy
import numbers
import operator
import warnings

import numpy as np

from minigrad import nn, threads
from minigrad.compiler import ir, whole
from minigrad.compiler.emit import Source
from minigrad.compiler.ir import TraceError, Var
from minigrad.compiler.scan import CompiledStep
from minigrad.core import ops, tensor
from minigrad.core.autograd import _deposit, deposit, is_grad_enabled
from minigrad.core.ops import Prim
from minigrad.core.tensor import Tensor, apply, tracing


class _Recorder(ir.Recorder):
    """The cell tracer's recorder, with one difference: a tensor from outside the function
    is *captured* (read by reference at every call: parameters, buffers), not a constant."""

    def __init__(self, args):
        super().__init__({id(t): Var(f"x{i}", t.shape, t.dtype, "x")
                          for i, t in enumerate(args)}, batch=None)
        self.keep, self.captured, self.cvars = list(args), [], []
        self.modules = {}  # the modules called while tracing (their flags join the signature)

    def var_of(self, t):
        v = self.vars.get(id(t))
        if v is None:
            v = Var(f"c{len(self.captured)}", t.shape, t.dtype, "captured")
            self.vars[id(t)] = v
            self.captured.append(t)
            self.cvars.append(v)
            self.keep.append(t)
        return v


_Tree = collections.namedtuple("_Tree", "kind keys children")  # a container in a structure


def _flatten(x, leaves):
    """Nested tuples (named ones too), lists and dicts of tensors as (structure, leaves);
    arrays become tensors, other Python values are part of the structure (the signature)."""
    if isinstance(x, (tuple, list, dict)):
        keys, items = (tuple(x), x.values()) if isinstance(x, dict) else (None, x)
        return _Tree(type(x), keys, tuple(_flatten(a, leaves) for a in items))
    if isinstance(x, np.ndarray):
        x = Tensor._result(x, None, 0)
    if isinstance(x, Tensor):
        leaves.append(x)
        return Tensor
    return x


def _statics(tree):
    """The Python values in a structure."""
    if type(tree) is _Tree:
        return [x for t in tree.children for x in _statics(t)]
    return [] if tree is Tensor else [tree]


def _unflatten(tree, leaves):
    if type(tree) is not _Tree:
        return next(leaves) if tree is Tensor else tree
    items = [_unflatten(t, leaves) for t in tree.children]
    return tree.kind(zip(tree.keys, items)) if tree.keys is not None else \
        tree.kind(*items) if hasattr(tree.kind, "_fields") else tree.kind(items)


class _Trace:
    def __init__(self, fn, leaves, tree):
        with tracing(_Recorder(leaves)) as rec:
            self.result = fn(*_unflatten(tree, iter(leaves)))
        outs = []
        self.tree = _flatten(self.result, outs)
        self.eqns, self.captured, self.modules = rec.eqns, rec.captured, [*rec.modules.values()]
        # the side effects (backward(), an optimizer's step(), ...), their tensors as Vars
        self.effects = [(what, fn, _map(lambda a: rec.vars.get(id(a), a) if isinstance(
            a, Tensor) else a, args), at) for what, fn, args, at in rec.effects]
        self.problems = _problems(self.effects, self.eqns, self.tree)  # (see __call__)
        self.outs = [rec.vars.get(id(o)) for o in outs]
        self.inputs = [rec.vars[id(t)] for t in leaves] + rec.cvars
        self.wants = [t.requires_grad for t in list(leaves) + rec.captured]
        for e in self.eqns:  # NOTE: a row's per-call context holds that call's arrays
            e.args = [{} if isinstance(a, dict) else a for a in e.args]


def _map(f, x):
    """``f`` of every item of nested tuples and lists (an effect's arguments)."""
    return type(x)(_map(f, a) for a in x) if isinstance(x, (tuple, list)) else f(x)


def _vars(x):
    return [v for a in x for v in _vars(a)] if isinstance(x, (tuple, list)) else \
        [x] if isinstance(x, Var) else []


def _problems(effects, eqns, tree):
    """Why a trace cannot be a compiled program (empty: it can)."""
    why = [f"it calls {what}" for what, fn, _, _ in effects if fn is None] + [
        "it returns a Python number" for x in _statics(tree)
        if isinstance(x, (numbers.Number, np.generic))]
    if effects:  # the equations run first, then the effects: none may read what those change
        what, _, _, at = effects[0]
        late = [e for e in eqns[at:] if any(a.kind == "captured" for a in e.ins)]
        why += [f"it applies {e.prim.name} to a parameter after {what} (a compiled call "
                "runs the equations first, then the effects)" for e in late[:1]]
    return why


def _same(a, b):
    """Static arguments equal (arrays by value; a dict is a row's per-call context)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype and \
            np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and not a and not b
    return type(a) is type(b) and a == b


def _difference(t1, t2):
    """None if two traces are the same program, else what differs (for the warning)."""
    if len(t1.eqns) != len(t2.eqns) or t1.tree != t2.tree or \
            len(t1.effects) != len(t2.effects):
        return "the function applied a different sequence of operations"
    names = {}
    for e1, e2 in zip(t1.eqns, t2.eqns):
        if e1.prim is not e2.prim or len(e1.args) != len(e2.args):
            return f"{e1.prim.name} became {e2.prim.name}: the Python branches on the data"
        for a, b in zip(e1.args, e2.args):
            if isinstance(a, Var) != isinstance(b, Var) or \
                    (isinstance(a, Var) and names.get(a, a.name) != b.name) or \
                    (not isinstance(a, Var) and not _same(a, b)):
                return f"an argument of {e1.prim.name} differs between calls (a value " \
                       f"computed with NumPy or Python from the data: {_brief(a)})"
        names.update((v1, v2.name) for v1, v2 in zip(e1.outs, e2.outs))
    for (w1, f1, a1, at1), (w2, f2, a2, at2) in zip(t1.effects, t2.effects):
        if (w1, at1, f1) != (w2, at2, f2) or not _same(_named(a1, names), _named(a2, {})):
            return f"it calls {w1} differently between calls"
    for c1, c2 in zip(t1.captured, t2.captured):
        if c1 is not c2:
            return f"it builds a tensor of shape {c1.shape} {c1.dtype} from NumPy data: pass " \
                   "it as an argument, or make it with minigrad's operations"
    if any(v is None for v in t1.outs):
        return "it returns a tensor that no operation made"
    return None


def _named(x, names):
    """An effect's arguments, comparable: Vars by name, other tensors by identity."""
    return _map(lambda a: names.get(a, a.name) if isinstance(a, Var) else id(a)
                if isinstance(a, Tensor) else a, x)


def _brief(a):
    return f"an array of shape {a.shape}" if isinstance(a, np.ndarray) else repr(a)[:60]


class _Program:
    """One traced signature, run as one tape node."""

    def __init__(self, trace, name):
        self.effects, self.shown = trace.effects, len(trace.outs)
        used = [v for _, _, args, _ in trace.effects for v in _vars(args)  # (a loss, say)
                if v.kind == "tmp" and v not in trace.outs]
        self.outs = [*trace.outs, *dict.fromkeys(used)]
        self.tree, live, eqns = trace.tree, set(self.outs), []
        for e in reversed(trace.eqns):  # what no output needs is not run (a draw always is)
            if live.intersection(e.outs) or not e.ins:
                eqns.insert(0, e)
                live.update(e.ins)
        self.eqns, self.once, self.folded = [], [], {}  # what depends on no input: run once
        for e in eqns:  # (zeros, the ones of a mean's weights, their count; never a draw)
            if e.prim is ops.DROPOUT_SCALE or not set(e.ins) <= self.folded.keys() or \
                    any(isinstance(a, dict) for a in e.args) or set(e.outs) & set(self.outs):
                self.eqns.append(e)
                continue
            self.once.append(e)
            out = e.prim.fwd(*[self.folded[a] if isinstance(a, Var) else a for a in e.args])
            self.folded.update(zip(e.outs, out if e.prim.nout != 1 else (np.asarray(out),)))
        self.pairs = _pairs(self.eqns)
        self.refs = trace.captured  # read by reference at every call (parameters, buffers)
        self.inputs = trace.inputs  # the arguments' leaves, then the captured tensors
        self.guard = _guard(self.refs)
        active = {v for v, want in zip(self.inputs, trace.wants) if want}
        self.needs = []
        for e in self.eqns:
            need = [i for i, a in enumerate(e.args)
                    if isinstance(a, Var) and a in active and e.prim.has_vjp(i)]
            self.needs.append(need)
            if need:
                active.update(v for v in e.outs if v.dtype.kind == "f")
        source = Source(self, _both)  # the program as Python: ``print(program.source)``
        self.source, (forward, backward) = source.text, source.compile(f"<compiled {name}>")
        if self.pairs:  # (two threads: nothing on Numba's, see _both)
            forward, backward = (threads.on_python_pool(f, 2) for f in (forward, backward))
        self.prim = Prim(f"compiled[{name}]", forward, vjp_all=backward, nout=None)
        walks = [args for _, fn, args, _ in self.effects if fn is tensor._backward]
        self.walk = self.outs.index(walks[0][0]) if len(walks) == 1 and \
            walks[0][0] in self.outs and walks[0][1:] == (None, False) else None
        self.whole = whole.Whole(self, self.walk) if self.walk is not None else None  # one call

    def __call__(self, leaves):
        tensors, walk, fast = (*leaves, *self.refs), None, None
        if self.walk is None or not is_grad_enabled() or \
                any(t.requires_grad and t._node is not None for t in leaves):
            outs = apply(self.prim, *tensors, {})
        else:  # a training step: its one backward() needs no tape (see the module docstring)
            arrays, ctx = [t.data for t in tensors], {}
            fast = self.whole.run(arrays)
            data = self.prim.fwd(*arrays, ctx) if fast is None else fast[0]
            outs = [Tensor._result(o, None, 0) for o in data]
            walk = (lambda: self._backward(data, arrays, tensors, ctx)) if fast is None else \
                (lambda: [_deposit(tensors[i], g, True) for i, g in fast[1].items()
                          if tensors[i].requires_grad])
        if self.effects:  # replayed in order: the loss's backward(), then step(), ...
            values = {**dict(zip(self.inputs, tensors)), **dict(zip(self.outs, outs))}
            for _, fn, args, _ in self.effects:
                if walk is not None and fn is tensor._backward:
                    walk()
                elif fast is not None and self.whole.sgd is not None and fn == self.effects[2][1]:
                    pass  # (SGD's update: taken inside the call)
                else:
                    fn(*_map(lambda a: values[a] if isinstance(a, Var) else a, args))
        return _unflatten(self.tree, iter(outs[:self.shown]))

    def _backward(self, outs, arrays, tensors, ctx):
        """The step's loss.backward(): the program's backward from ones, each input tensor's
        gradient deposited as the tape's walk deposits a leaf's."""
        g = [None] * len(outs)
        g[self.walk] = np.ones_like(outs[self.walk])
        for t, gt in zip(tensors, self.prim.vjp_all(tuple(g), outs, *arrays, ctx)):
            if gt is not None and t.requires_grad:
                deposit(t, gt)

    def __repr__(self):
        ins = " ".join(map(repr, self.inputs))
        body = "\n".join([f"    {e!r}    # once, when compiled" for e in self.once] +
                         [f"    {e!r}" for e in self.eqns])
        shown = ", ".join(v.name for v in self.outs[:self.shown])
        then = "".join(f"\n  then {what}" + "".join(f" {v.name}" for v in _vars(args))
                       for what, _, args, _ in self.effects)
        return f"{{ lambda {ins} .\n{body}\n  in ({shown}) }}{then}"


def _both(step, batch, f1, f2):
    """``f1(), f2()`` (a pair of recurrences, or their VJPs).  With two threads, each on its
    own with its whole batch, the program's other work on the Python pool too (Numba's idle
    workers spin after each call and took the cores the pair's threads needed):
    faster than each splitting its batch on Numba's threads in turn (a tagger's step: D
    2.56 -> 2.31-2.38 ms, B32 H64 T100 10.3-13.9 -> 9.5-9.8, B64 H256 T50 with 2 layers
    288-290 -> 262-272; B64 H128 T40 level, 21.9-22.8 -> 20.9-22.2).  With more threads
    (not measured here), one after the other, each splitting its batch across all of them,
    unless it is too small to split."""
    n = threads.get_num_threads()
    if n < 2 or (n > 2 and step.native(len(threads.batch_chunks(batch)))):
        return f1(), f2()
    done = [None, None]
    threads.parallel(lambda i: done.__setitem__(i, (f1, f2)[i]()), (0, 1))
    return tuple(done)


def _pairs(eqns):
    """Put two recurrences that do not depend on each other (a bidirectional layer's two
    directions) side by side, moving what the second needs before the first; returns the
    first's positions.  With two threads each then runs on its own core with the whole
    batch, instead of both splitting it (no draw moves: the random stream stays eager's)."""
    pairs, k = set(), 0
    while True:
        loops = [i for i, e in enumerate(eqns) if isinstance(getattr(e.prim.fwd, "__self__",
                                                                     None), CompiledStep)]
        loops = [i for i in loops if i >= k]
        if len(loops) < 2:
            return pairs
        a, b = loops[:2]
        need, made = set(eqns[b].ins), {}
        for i in range(b - 1, a - 1, -1):
            if need.intersection(eqns[i].outs):
                made[i] = eqns[i]
                need.update(eqns[i].ins)
        if a in made or any(e.prim is ops.DROPOUT_SCALE for e in made.values()):
            k = a + 1
            continue
        rest = [e for i, e in enumerate(eqns[a + 1:b], a + 1) if i not in made]
        eqns[a:b + 1] = [*made.values()][::-1] + [eqns[a], eqns[b]] + rest
        pairs.add(a + len(made))
        k = a + len(made) + 2


def _modules(fn):
    """The modules ``fn`` reaches: itself, its ``self``, its closure and default arguments."""
    from minigrad.nn import Module
    found = [fn, getattr(fn, "__self__", None), *(getattr(fn, "__defaults__", None) or ())]
    found += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
              if c.cell_contents is not None] if not isinstance(fn, Module) else []
    return [m for m in found if isinstance(m, Module)]


SIGNATURES = 64  # traced per function at most (each new one costs two traced calls)


class CompiledFunction:
    """``mg.compile(fn)``: call it as ``fn``.  ``program(*args)`` is the traced program of
    that signature (print it), or None while it is not compiled yet; ``why``: why a
    signature last ran eagerly (None: none has)."""

    def __init__(self, fn, name=None):
        self.fn, self.name = fn, name or getattr(fn, "__qualname__", type(fn).__name__)
        self._cache, self._warned, self._modules, self.why = {}, False, None, None
        self._edits, self._layout = None, []
        self.compiled_calls = 0  # calls that ran the compiled program (the tests read it)

    def _key(self, args, kwargs):
        leaves = []
        tree = _flatten((args, tuple(sorted(kwargs.items()))), leaves)
        if self._edits != nn._EDITS[0]:  # some module was edited: the watched ones? (_watch)
            self._edits = nn._EDITS[0]
            if self._modules is not None and not _same_objects(_layout(self._modules),
                                                               self._layout):
                self._cache.clear()
                self._modules = None
        if self._modules is None:  # NOTE: found once; walking them cost ~25 us a call
            self._modules = []
            self._watch(_modules(self.fn))
        flags = tuple(m.training for m in self._modules)
        # NOTE: a tensor passed twice, or a parameter ``fn`` also reads, is one input of a
        # trace: which argument is which tensor is part of the signature
        seen = {}
        sig = tuple((t.shape, t.dtype.str, t.requires_grad, seen.setdefault(id(t), i),
                     self._params.get(id(t))) for i, t in enumerate(leaves))
        return (tree, sig, is_grad_enabled(), flags), leaves, tree

    def _watch(self, found):
        """Watch these modules and theirs (True if any is new): those ``fn`` reaches (its
        closure, ``self``, defaults), then those its traces call.  Their ``training`` flags
        are part of a signature; when one of their parameters or sub-modules is re-assigned
        (``model.fc = nn.Linear(...)``), every program, which captured the old ones, is
        dropped and ``fn`` traced afresh: ``torch.compile``'s guard."""
        known = set(map(id, self._modules))
        new = {id(m): m for mod in found for m in mod.modules() if id(m) not in known}
        self._modules += new.values()
        self._layout = _layout(self._modules)
        self._params = {id(x): i for i, x in enumerate(self._layout) if isinstance(x, Tensor)}
        return bool(new)

    def __call__(self, *args, **kwargs):
        try:
            key, leaves, tree = self._key(args, kwargs)
            hash(key)
        except TypeError:  # an unhashable Python argument: no signature to compile for
            return self.fn(*args, **kwargs)
        hit = self._cache.get(key)
        if isinstance(hit, _Program) and hit.guard == _guard(hit.refs):
            self.compiled_calls += 1
            return hit(leaves)
        call = _with_kwargs(self.fn)
        full = hit is None and len(self._cache) >= SIGNATURES  # (torch.compile's limit: 8)
        if full:
            self._fall_back(None, f"{SIGNATURES} signatures were traced already; a Python "
                            "number that changes between calls is part of the signature: "
                            "pass it as a tensor (mg.tensor(x))")
        if hit is False or full or tensor._TRACER is not None:  # eager, or in another's trace
            return call(*_unflatten(tree, iter(leaves)))
        try:
            trace = _Trace(call, leaves, tree)
        except TraceError as e:
            self._fall_back(key, str(e))
            return call(*_unflatten(tree, iter(leaves)))
        result, trace.result = trace.result, None  # (the cache keeps no arrays of a call)
        if trace.problems:  # NOTE: a compiled call would skip that, or repeat a stale value
            self._fall_back(key, f"{trace.problems[0]}; a compiled call runs the traced "
                            "equations, then replays backward(), zero_grad(), clipping and "
                            "step() (it would skip anything else, or return the traced number)")
            return result
        if self._watch(trace.modules):  # its signature now has their flags
            key = self._key(args, kwargs)[0]
        if isinstance(hit, _Trace):
            why = _difference(hit, trace)
            if why is None:
                self._cache[key] = _Program(trace, self.name)
            else:
                self._fall_back(key, why)
        else:
            self._cache[key] = trace
        return result

    def __get__(self, obj, cls=None):
        """``@mg.compile`` on a method: each instance gets its own (kept in the instance, so
        that it goes with it), ``self`` watched."""
        if obj is None:
            return self
        slot = f"_compiled_{id(self):x}"
        return obj.__dict__.get(slot) or obj.__dict__.setdefault(
            slot, CompiledFunction(self.fn.__get__(obj, cls), self.name))

    def __deepcopy__(self, memo):  # a copied model compiles its own (nothing cached)
        return CompiledFunction(copy.deepcopy(self.fn, memo), self.name)

    def __getstate__(self):
        return {"fn": self.fn, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["fn"], state["name"])

    def _fall_back(self, key, why):
        self.why = why
        if key is not None:
            self._cache[key] = False
        if not self._warned:
            self._warned = True
            warnings.warn(f"mg.compile({self.name}): runs eagerly (same values, slower): {why}",
                          _fallback_warning(), stacklevel=3)

    def program(self, *args, **kwargs):
        hit = self._cache.get(self._key(args, kwargs)[0])
        return hit if isinstance(hit, _Program) else None


def _guard(refs):
    """What a program assumed of the tensors it reads: a parameter frozen, or its data of
    another dtype or shape (``p.data = p.data.astype(...)``), is traced afresh."""
    return tuple((t.requires_grad, t.data.dtype, t.data.shape) for t in refs)


def _layout(modules):
    """What a program captured from these modules: their parameters and sub-modules."""
    return [x for m in modules for x in (m, *m._parameters.values(), *m._modules.values())]


def _same_objects(a, b):  # (by identity: a Tensor's == is elementwise)
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _with_kwargs(fn):
    return lambda args, kwargs: fn(*args, **dict(kwargs))


def _fallback_warning():
    import minigrad
    return minigrad.CompileFallbackWarning


def compile(fn):  # noqa: A001 - the public name, as torch.compile
    """``fn`` compiled per signature (see the module docstring); usable as a decorator."""
    if not callable(fn):
        raise TypeError(f"mg.compile: expected a function, a method or a module to compile, "
                        f"got {type(fn).__name__} {fn!r:.40}")
    return CompiledFunction(fn)
