"""A cell compiled once per signature and run over a whole sequence as one tape node.

``compile_step(cell, x_t, state)`` traces the cell (:mod:`.ir`), rewrites it
(:mod:`.rewrites`), cuts out the loop body and derives its reverse (:mod:`.transpose`),
lowers both (:mod:`.lower`) and renders both with one emitter (:mod:`.emit`).  Calling the
result on a sequence records **one** tape node.  Its forward runs, on arrays, the equations
of the parameters once and those of x<t> for all t at once, then the forward loop; its VJP
runs the reverse loop (BPTT, derived), the loop GEMMs' weight gradients as one GEMM each
(:class:`~minigrad.core.autograd.OuterSum`), then the VJPs of the equations before the loop,
newest first (generated Python, :class:`~minigrad.compiler.emit.Source`: ``step.before``).

``scan(cell, xs, init)`` is the public entry point; :class:`models.layers.Recurrent` uses it.
"""

import glob
import os
import sys
import threading
import warnings
import weakref
from types import SimpleNamespace

import numba
import numpy as np
import tqdm

from minigrad import compile_cache, kernels, threads
from minigrad.compiler import rewrites
from minigrad.compiler.emit import Emitter, Source, kernel_modules
from minigrad.compiler.ir import (
    INVARIANT,
    LOOP,
    TraceError,
    Var,
    stages,
    trace,
    verify,
    with_lengths,
)
from minigrad.compiler.lower import Lowered
from minigrad.compiler.rewrites import batched, optimize
from minigrad.compiler.transpose import loop_body, transpose
from minigrad.core import ops
from minigrad.core.autograd import OuterSum, no_grad
from minigrad.core.ops import Prim
from minigrad.core.tensor import Tensor, apply, tracing
from minigrad.kernels import blas
from minigrad.kernels.jit import on_examples

NJIT_LOOPS = True  # False: every compiled loop runs as Python (tests compare the two)
BACKGROUND = True  # False: the Numba loops compile at the second call, in the caller's thread


class CompiledStep:
    """``cell.forward`` traced, rewritten, reversed and compiled for one signature.

    ``traced``: the cell's equations; ``program``: rewritten (three sections); ``body`` and
    ``reverse``: the loop body and its derived reverse (programs; ``print`` them);
    ``source``: the generated loops; ``kernel_source``: the generated modules (each kernel's,
    then the one that imports them and holds the loops); ``before.text``: the equations
    before the loop and their reverse, as Python; ``backward_kernels``: the backward loop's
    kernel modules, each with the signature its loop calls it with (a new one is compiled
    for it in a forked process meanwhile: :func:`_compile_ahead`).
    """

    def __init__(self, cell, x_t, state, masked=False):
        first = state if isinstance(state, Tensor) else state[0]
        self.name, self.dtype = type(cell).__name__, (x_t if x_t.dtype.kind == "f" else first).dtype
        self.masked = masked  # (a batch with lengths: padded steps keep the state)
        self.traced = trace(cell, x_t, state)
        self.program = optimize(with_lengths(self.traced) if masked else self.traced)
        stage = stages(self.program)
        self.pre = [e for e in self.program.eqns if stage[e.outs[0]] != LOOP]
        self.body = loop_body(self.program)
        self.reverse, self.dxs, self.dconsts = transpose(self.body)
        if rewrites.CHECK:  # the tests check the derived program's contract too
            verify(self.reverse)
        made = {v for e in self.body.eqns for v in e.outs} - set(self.body.outs)
        self.kept = [v for v in self.reverse.xs if v in made]  # residuals each step keeps
        self.fwd, self.rev = Lowered(self.body, self.kept), Lowered(self.reverse)
        for low in (self.fwd, self.rev):  # (the reverse's weights, stacked transposed)
            consts = [v for e in low.prologue for v in e.outs]  # (all read by the loop)
            low.prologue = rewrites.relayout(low.prog, self.program.params, self.pre,
                                             low.prologue, consts)
        self._emit()

    def __repr__(self):
        return f"{self.body!r}\n\n{self.reverse!r}\n\n{self.source}"

    def _emit(self):
        em, body, rev = Emitter(), self.body, self.reverse
        n = len(body.state)
        self.fbind = {**{v: (f"K{i}", None) for i, v in enumerate(self._consts(self.fwd))},
                      **{v: (f"X{i}", "t") for i, v in enumerate(body.xs)},
                      **{v: (f"S{i}", "t") for i, v in enumerate(self.kept)}}
        for i, (old, new) in enumerate(zip(body.state, body.outs)):
            self.fbind[old], self.fbind[new] = (f"H{i}", "t + r"), (f"H{i}", "t + 1 - r")
        residuals = {v: self.fbind[v] for v in rev.xs if v in self.fbind}
        self.rbind = {**{v: (f"K{i}", None) for i, v in enumerate(self._consts(self.rev))},
                      **residuals,
                      **{v: (f"G{i}", "t") for i, v in enumerate(rev.xs[-n:])},
                      **{v: (f"C{i}", None) for i, v in enumerate(rev.state)},
                      **{v: (f"N{i}", None) for i, v in enumerate(rev.outs)},
                      **{v: (f"A{i}", None) for i, v in enumerate(rev.acc)
                         if self.rev.sums[v]}}  # (an accumulator with terms in the loop)
        self.rbind.update({v: (f"Y{i}", "t") for i, v in enumerate(rev.ys[:-1])})
        self.rbind[rev.ys[-1]] = ("Z", "min(t, Z.shape[0] - 1)")
        stored = [g for _, pairs in _outers(self) for _, g in pairs] + [
            src for us in self.rev.colsums.values() for src, _, _ in us]
        stored = [v for v in dict.fromkeys(stored) if v not in self.rbind]
        self.rbind.update({v: (f"Y{len(rev.ys) - 1 + i}", "t") for i, v in enumerate(stored)})
        carry = [(f"C{i}", f"N{i}") for i in range(n)]
        loops = [em.loop("forward", self.fwd, self.fbind)]
        nf = len(em.kernels)  # (the forward's kernels; then the backward's)
        loops.append(em.loop("backward", self.rev, self.rbind, carry))
        drivers = [em.chunks("forward", self.fbind), em.chunks("backward", self.rbind, carry)]
        self.source, self.dims = "\n\n".join(loops), np.array(em.dims, np.int64)
        self._plan()
        generic = any(k == "generic" for low in (self.fwd, self.rev) for k, *_ in low.ops)
        numba_loops = not generic and blas.AVAILABLE and self.dtype == np.float32 and NJIT_LOOPS
        texts, src = kernel_modules(self.dtype, em.kernels, *((loops, drivers) if numba_loops
                                                              else ()))
        modules = [kernels.load_kernels(t) for t in texts]
        _announce(self, modules)
        dt = numba.from_dtype(self.dtype)  # (the backward's kernels, typed as its loop calls them)
        types = {"int": numba.int64, "row": dt[:, ::1], "vector": dt[::1]}
        self.backward_kernels = [(m, tuple(map(types.get, kinds)))
                                 for m, kinds in zip(modules[nf:], em.kinds[nf:])]
        self._ahead = _compile_ahead(self.backward_kernels, {m.__name__ for m in modules[:nf]})
        module, self.kernel_source = kernels.load_kernels(src), "\n\n".join(texts + [src])
        self._texts = texts + [src]
        ns = {"np": np, "DT": self.dtype.type, "gemm32p": blas.py_gemm_p, "pack32": blas.py_pack,
              **em.statics, **{k: getattr(module, k) for k in dir(module) if k[:5] == "fused"}}
        exec(compile(self.source, f"<compiled {self.name}>", "exec"), ns)
        self._forward, self._backward = ns["forward"], ns["backward"]
        self.njit, self._numba, self._sigs, self._compiling = False, None, {}, None
        self._drivers = {}  # compiled: <loop>_chunks, every chunk of rows in one call
        if numba_loops:  # the same loops compiled by Numba replace these when ready
            self._numba = module

    def _run(self, name, chunks, whole, head, args, env):
        """Run the forward or backward loop on every chunk of rows (``head``: T, back, r; a
        chunk's arrays are views of ``whole``'s): compiled, all chunks in one call on
        Numba's threads (``<name>_chunks``, :func:`threads.native`); else one call per chunk
        on minigrad's threads, as Python (bit for bit the same BLAS calls and kernels) until
        Numba has compiled the loops (:meth:`_start_compiling`).  Sets each chunk's
        ``carried`` values."""
        if self.native(len(chunks)):
            outs = [np.empty_like(whole[a]) for a, _ in args if a[0] == "C"]
            arrays = (threads.edges([c["rows"] for c in chunks]), *head, self.dims,
                      *self._arrays(args, whole, env), *outs)
            driver = self._drivers.get(name + "_chunks")
            if driver is not None:
                threads.run(driver, *arrays)
                for c in chunks:
                    c["carried"] = [o[c["rows"][0]:c["rows"][1]] for o in outs]
                return
            self._sigs.setdefault(name + "_chunks", tuple(map(numba.typeof, arrays)))
        threads.parallel(lambda c: c.update(carried=self._loop(
            name, c["rows"][1] - c["rows"][0], *head, self.dims,
            *self._arrays(args, c, env))), chunks)

    def native(self, n):
        """Do n chunks of rows run in one call on Numba's threads once compiled (not for a
        0-d sum: a chunk's part of it would be a scalar)?"""
        return n > 1 and self._numba is not None and threads.native() and \
            all(v.shape for v in self.reverse.acc if v in self.rbind)

    def _loop(self, name, *args):
        """Run the forward or backward loop on one chunk: as Python until compiled."""
        if self._numba is not None and name not in self._sigs:
            self._sigs[name] = tuple(numba.typeof(a) for a in args)
        return getattr(self, "_" + name)(*args)

    def _start_compiling(self):
        """Once both loops have run: compile them with Numba — in the background
        (``BACKGROUND``), so that no step waits for it — and use them when ready."""
        if self._numba is not None and self._compiling is None and \
                {"forward", "backward"} <= self._sigs.keys():
            # NOTE: not a daemon: Python waits for it at exit.  A daemon thread still inside
            # LLVM when the interpreter shut down crashed the process (a segfault or an LLVM
            # assertion, about 1 run in 6 of a short script).
            self._compiling = threading.Thread(target=self.compile_loops, daemon=False)
            if BACKGROUND:
                self._compiling.start()
                _COMPILING.add(self._compiling)
            else:
                self._compiling.run()

    def compile_loops(self):
        """Compile the Numba loops now (the background thread runs this) and use them; then
        the drivers of chunks, if chunks ran (they compile for longer: 3-8 s once per cell
        structure, then cached; meanwhile the compiled loops run on the Python pool, the
        same bits)."""
        sigs = dict(self._sigs)
        try:
            for n in ("forward", "backward"):
                getattr(self._numba, n).compile(sigs[n])
            self._forward, self._backward = self._numba.forward, self._numba.backward
            self.njit = True
            drivers = {n: sig for n, sig in sigs.items()
                       if n.endswith("_chunks") and n not in self._drivers}
            if drivers and (compile_cache.compile_elsewhere(self._texts, drivers) or 0) < 0:
                return  # (interrupted: Ctrl-C reached that process too)
            for n, sig in drivers.items():  # (from the disk cache, when that process ran)
                getattr(self._numba, n).compile(sig)
            self._drivers = {**self._drivers, **{n: getattr(self._numba, n) for n in drivers}}
        except Exception as e:  # NOTE: the Python loops are the same computation
            where = "chunks run on Python threads" if self.njit else "loops stay in Python"
            warnings.warn(f"{self.name}: the {where} ({type(e).__name__}: {e})", RuntimeWarning,
                          stacklevel=2)

    @staticmethod
    def _consts(low):
        return list(dict.fromkeys(low.prog.consts + [v for e in low.prologue for v in e.outs]))

    # -------------------------------------------------------------- the one tape node
    # Inputs: the cell's parameters, x (T, B, I) or ids (T, B), the initial state parts,
    # then the statics mask (T, B, 1) or None, reverse, retain, wants (which of params and
    # x require grad) and ctx (a dict the forward leaves its arrays in for the VJP).

    def _plan(self):
        """What each call does, decided once: the equations before the loop (batched over
        time where they run for all t), and each loop's arrays in signature order."""
        stage = stages(self.program)
        self.pre = [e if stage[e.outs[0]] == INVARIANT else batched(e) for e in self.pre]
        self.fargs, self.rargs = _arg_list(self.fbind), _arg_list(self.rbind)
        # the equations before the loop as Python (``before.text``): what the loops read
        made = {v for e in self.rev.prologue for v in e.outs}  # (the reverse's weights)
        self.before_outs = [*dict.fromkeys(v for v in [*self.dconsts, *self.dxs, *(
            v for a, v in self.fargs + self.rargs if a[0] in "KX"), *(
            v for e in self.rev.prologue for v in e.ins)] if v not in made)]
        self._befores = {}
        self.before = self._before_source(tuple(range(len(self.program.params) + 1)))[0]
        self.buffers = {a: v.shape[1:] for v, (a, _) in self.rbind.items() if a[0] in "YCN"}
        # a weight laid out of transposed blocks gets its outer product transposed, (gᵀa)ᵀ:
        # the layout's VJP then reads contiguous rows (a transposed copy from a row stride
        # of 2 KiB ran at 2.3 ns per element: 160 us of the names LSTM's step)
        laid = {e.outs[0]: e.args[0][1] for e in self.pre if e.prim is ops.LAYOUT}
        self.flipped = {c for c in self.dconsts if c in laid and all(b[5] for b in laid[c])}

    def _before_source(self, wants):
        """The equations before the loop as Python, differentiated for the inputs that want
        a gradient (``wants``: positions in params, x); made when first asked for.  (A
        tagger's dense x wants none: its projection's x-gradient, a GEMM, is not computed.)"""
        if wants not in self._befores:
            inputs, needs = [*self.program.params, *self.program.xs], []
            active = {inputs[i] for i in wants}
            for e in self.pre:
                needs.append([i for i, a in enumerate(e.args) if isinstance(a, Var) and
                              a in active and a.dtype.kind == "f" and e.prim.has_vjp(i)])
                active.update(e.outs if needs[-1] else ())
            src = Source(SimpleNamespace(
                eqns=self.pre + self.fwd.prologue, pairs=(), inputs=inputs, outs=self.before_outs,
                needs=needs + [[]] * len(self.fwd.prologue),
                folded={c: c.value for c in self.program.consts}))
            self._befores[wants] = (src, *src.compile(f"<{self.name}: before the loop>"))
        return self._befores[wants]

    def _fwd(self, *arrays):
        *arrays, mask, reverse, retain, wants, ctx = arrays
        n, r, dt = len(self.program.params), int(reverse), self.dtype
        params, x, init = arrays[:n], arrays[n], arrays[n + 1:]
        T, B = x.shape[0], init[0].shape[0]
        xs = ctx["before"] = (*params, *(x, mask)[:len(self.program.xs)], {})
        _, before, ctx["before_vjp"] = self._before_source(wants)
        env = ctx["env"] = dict(zip(self.before_outs, before(*xs)))
        self._start_compiling()
        full = ctx["full"] = {a: np.ascontiguousarray(env[v]) for a, v in self.fargs
                              if a[0] == "X"}
        for i, h in enumerate(init):
            full[f"H{i}"] = np.empty((T + 1, B) + h.shape[1:], dt)
            full[f"H{i}"][T if r else 0] = h
        for i, v in enumerate(self.kept):
            full[f"S{i}"] = np.empty((T, B) + v.shape[1:], dt)
        chunks = ctx["chunks"] = [_rows(full, rows, B) for rows in threads.batch_chunks(B)]
        self._run("forward", chunks, full, (T, r, r), self.fargs, env)
        return tuple(full[f"H{i}"][1 - r:T + 1 - r] for i in range(len(init)))

    def _vjp(self, g, out, *arrays):
        *arrays, mask, reverse, retain, _, ctx = arrays
        env, full, r, dt = ctx["env"], ctx["full"], int(reverse), self.dtype
        T, B = out[0].shape[:2]
        _run(self.rev.prologue, env)
        for i, v in enumerate(self.reverse.state):
            full[f"G{i}"] = np.zeros((T, B) + v.shape[1:], dt) if g[i] is None else \
                np.ascontiguousarray(g[i])
        for arg, shape in self.buffers.items():
            full[arg] = (np.zeros if arg[0] == "C" else np.empty)(
                (B,) + shape if arg[0] in "CN" else (T, B) + shape, dt)
        full["Z"] = np.empty((T if retain else 1, B) + self.reverse.state[0].shape[1:], dt)
        chunks = [_rows(full, c["rows"], B) for c in ctx["chunks"]]
        accs = {self.rbind[v][0]: np.zeros((len(chunks),) + v.shape, dt)
                for v in self.reverse.acc if v in self.rbind}  # (each chunk's own sums)
        for i, c in enumerate(chunks):
            c.update((a, x[i, ...]) for a, x in accs.items())  # (a 0-d sum stays an array)
        for wait in self._ahead:  # (kernels compiled in a forked process meanwhile)
            wait()
        self._ahead = ()
        self._run("backward", chunks, {**full, **accs}, (T, 1 - r, r), self.rargs, env)
        for t, ret in enumerate(retain or ()):
            ret.grad = full["Z"][t]
        sums = ctx["sums"] = {}  # the chunks' private sums, added in a fixed order
        for arg in (self.rbind[v][0] for v in self.reverse.acc if v in self.rbind):
            sums[arg] = chunks[0][arg]
            for c in chunks[1:]:
                sums[arg] = sums[arg] + c[arg]
        carried = [np.concatenate([c["carried"][i] for c in chunks]) for i in range(len(out))]
        return self._pre_vjp(ctx, self._loop_cotangents({**full, **sums}, r, T), carried)

    @staticmethod
    def _arrays(args, chunk, env):
        """A loop's arrays: a chunk's own; constants from the values before the loop, made
        contiguous once per call (kept beside them: a transposed view of the original, as
        the reverse's weight is, copies 5-8x faster than one of the copy).  NOTE: a weight
        read transposed cost BLAS 20-40 % per step at these sizes (benchmarks: 82 against 106
        GFLOP/s at 64x128x512); one copy is less."""
        for a, v in args:
            if a[0] == "K" and (v, "C") not in env:
                env[v, "C"] = np.ascontiguousarray(env[v])
        return [env[v, "C"] if a[0] == "K" else chunk[a] for a, v in args]

    def _stack(self, v, env, r, T, bind):
        """All steps' values of v, (T, B, n), in time order."""
        low = self.fwd if bind is self.fbind else self.rev
        b, c0 = low.base(v)
        arg, index = bind[b]
        full = env[arg]
        if arg[0] == "H":
            full = full[r:T + r] if index == "t + r" else full[1 - r:T + 1 - r]
        return full[..., c0:c0 + v.shape[-1]] if c0 or v.shape[-1] != b.shape[-1] else full

    def _loop_cotangents(self, env, r, T):
        """{Var: cotangent} of the loop's inputs: per-step ones from the reverse loop's
        outputs, constants' from its accumulators plus one GEMM per outer product and one
        sum per column sum."""
        rev, cot, sums = self.reverse, {}, {}
        for v, y in zip(self.dxs, rev.ys):
            cot[v] = env[self.rbind[y][0]]
        for (c, pairs), acc in zip(_outers(self), rev.acc):
            total = env[self.rbind[acc][0]] if acc in self.rbind else None
            for src, c0, n in self.rev.colsums[acc]:
                if src not in sums:  # every column of a kept value summed at once
                    full = self._stack(src, env, r, T, self.rbind)
                    sums[src] = full.reshape(-1, full.shape[-1]).sum(0)
                total = sums[src][c0:c0 + n] if total is None else total + sums[src][c0:c0 + n]
            for a, g in pairs:
                A, G = self._stack(a, env, r, T, self.fbind), self._stack(g, env, r, T,
                                                                        self.rbind)
                A, G = A.reshape(-1, A.shape[-1]), G.reshape(-1, G.shape[-1])
                product = OuterSum(G, A).materialize().T if c in self.flipped else \
                    OuterSum(A, G).materialize()
                total = product if total is None else total + product
            cot[c] = np.zeros(c.shape, self.dtype) if total is None else total
        return cot

    def _pre_vjp(self, ctx, cot, carried):
        """The reverse of the equations before the loop, from the loop's cotangents; returns
        the tape node's input gradients."""
        n = len(self.program.params)
        grads = ctx["before_vjp"](tuple(map(cot.get, self.before_outs)), None, *ctx["before"])
        return (*grads[:n + 1], *carried, None, None, None, None, None)

    # -------------------------------------------------------------- run a sequence
    def __call__(self, params, x_seq, init, mask=None, reverse=False, retain=None):
        """params: the cell's parameters (``named_parameters`` order); x_seq (T, B, I) or
        (T, B) ids; init: the state parts (B, H); mask: (T, B) bool (False = padding).
        Returns the state parts at every step, (T, B, H) each, as tensors: one tape node."""
        m = mask if mask is None or isinstance(mask, Tensor) else Tensor(np.asarray(mask))
        if m is not None:  # (T, B, 1) of 0/1, made with the table's rows (traceable)
            m = apply(ops.RESHAPE, apply(ops.ASTYPE, m, self.dtype), m.shape + (1,))
        if not hasattr(self, "prim"):
            self.prim = Prim(f"scan[{self.name}]", self._fwd, vjp_all=self._vjp, nout=None,
                             args="*arrays mask reverse retain wants ctx")
        wants = tuple(i for i, t in enumerate((*params, x_seq)) if t.requires_grad)
        return apply(self.prim, *params, x_seq, *init, m, bool(reverse), retain, wants, {})


def _announce(step, modules):
    """One line before a first compile of this cell's kernels (nothing when Numba's cache
    already has them)."""
    new = {m.__name__ for m in modules if not _cached(m)} - _ANNOUNCED
    if new:
        _ANNOUNCED.update(new)
        form = ", for batches with lengths" if step.masked else ""  # (two forms, two lines)
        tqdm.tqdm.write(f"minigrad: compiling {step.name}'s kernels ({step.dtype.name}{form}), "
                        "once: later runs load them from the cache", file=sys.stderr)


def _compile_ahead(kernels, forward):
    """Start compiling the backward loop's new kernels (``kernels``: [(module, signature)])
    in a forked copy of this process, while this one compiles the forward's (the module
    names ``forward``): a new cell's first step waits for one kernel's compile, not two.
    Returns the waits to call before the backward first runs."""
    new = [(m, sig) for m, sig in kernels if m.__name__ not in forward | _AHEAD.keys()
           and not _cached(m)]
    wait = compile_cache.compile_forked([(m.fused, sig) for m, sig in new])
    _AHEAD.update((m.__name__, wait) for m, _ in new if wait is not None)
    return {_AHEAD[m.__name__] for m, _ in kernels if m.__name__ in _AHEAD}


def _cached(module):
    """Does the disk cache hold a generated kernel module's compiled code?"""
    return bool(glob.glob(os.path.splitext(module.__file__)[0] + ".fused*.nbi"))


def _arg_list(bind):
    """[(argument, a Var bound to it)] of a loop, in its signature's order."""
    first = {}
    for v, (arg, _) in bind.items():
        first.setdefault(arg, v)
    return list(first.items())





def _rows(full, rows, B):
    """A chunk: rows b0..b1 of every (T, B, ...) array and (B, ...) buffer in ``full``."""
    b0, b1 = rows
    if b1 - b0 == B:
        return {"rows": rows, **full}  # the whole batch (one thread): no views to make
    return {"rows": rows, **{a: x[b0:b1] if a[0] in "CN" else x[:, b0:b1]
                             for a, x in full.items()}}


def _run(eqns, env):
    """Evaluate equations on arrays (the values before a loop)."""
    for e in eqns:
        out = e.prim.fwd(*[env[a] if isinstance(a, Var) else a for a in e.args])
        env.update(zip(e.outs, out if isinstance(out, tuple) else (out,)))


def _outers(step):
    """[(const, [(a, g)])]: the outer products of each accumulated output."""
    return [(c, step.rev.outers[acc]) for c, acc in zip(step.dconsts, step.reverse.acc)]


def _examples(cell, x_t, parts, batch, seed):
    """Random inputs of the signature of (x_t, parts) with another batch size."""
    rng = np.random.default_rng(seed)  # NOTE: never the user's generator (reproducibility)
    x = rng.integers(0, cell.input_size, size=(batch,)) if x_t.dtype.kind in "iu" else \
        rng.standard_normal((batch, *x_t.shape[1:]))
    return Tensor(x.astype(x_t.dtype)), tuple(
        Tensor(0.5 * rng.standard_normal((batch, *p.shape[1:])).astype(p.dtype)) for p in parts)


_CACHE = weakref.WeakKeyDictionary()
_COMPILING = weakref.WeakSet()
_AHEAD = {}  # a kernel module's name -> the wait for its forked compile
_ANNOUNCED = set()  # the kernel modules a compile was announced for


def wait():
    """Wait until every compile running in the background has finished (benchmarks call
    this before they time steps)."""
    for t in list(_COMPILING):
        t.join()


def compile_step(cell, x_t, state, masked=False, params=None):
    """The :class:`CompiledStep` of ``cell`` for the signature of ``x_t`` and ``state``
    (cached per cell and signature; ``masked``: with a lengths mask).  Raises
    :class:`TraceError` with the cause when the cell cannot be compiled, or when the
    compiled step does not reproduce ``cell(x_t, s)`` on fresh inputs (Python control flow
    or NumPy on tensor values, a batch size built in).  ``params``: the cell's parameters,
    when the caller has them already."""
    parts = (state,) if isinstance(state, Tensor) else tuple(state)
    key = (x_t.dtype.str, x_t.shape[1:], tuple((p.shape[1:], p.dtype.str) for p in parts),
           masked, tuple(m.training for m in cell.modules()),  # (a forward may read it)
           tuple((p.data.dtype, p.data.shape) for p in params or cell.parameters()))
    per_cell = _CACHE.setdefault(cell, {})
    if key not in per_cell:
        with tracing(None):  # a function being traced (mg.compile) sees the scan, not this
            per_cell[key] = _compile(cell, x_t, state, parts, masked)
    hit = per_cell[key]
    if isinstance(hit, Exception):
        raise hit
    return hit


def _compile(cell, x_t, state, parts, masked):
    """A new :class:`CompiledStep`, verified, or the TraceError that says why not."""
    try:
        wrap = (lambda s: s[0]) if isinstance(state, Tensor) else tuple
        x2, s2 = _examples(cell, x_t, parts, 2, 0)
        with on_examples():  # (the cell's forward on examples: no ufunc built for it)
            step = CompiledStep(cell, x2, wrap(s2), masked)
            _verify(step, cell, x_t, parts, wrap)
        return step
    except TraceError as e:
        return e
    except Exception as e:  # NOTE: a compiler bug must not cost the user's run
        return TraceError(
            f"{type(cell).__name__}: the compiler failed ({type(e).__name__}: {e}); "
            "please report it — run the cell with compiled=False meanwhile")


def _verify(step, cell, x_t, parts, wrap):
    xs, states = zip(*[_examples(cell, x_t, parts, 3, seed) for seed in (1, 2)])
    with no_grad():
        s, want = states[0], []
        for x in xs:
            if x.dtype.kind in "iu":
                x = Tensor(ops.ONE_HOT.fwd(x.data, cell.input_size, step.dtype))
            s = cell(x, wrap(s))
            s = (s,) if isinstance(s, Tensor) else tuple(s)
            want.append(s)
        x_seq = Tensor(np.stack([x.data for x in xs]))
        params = [p for _, p in cell.named_parameters()]
        mask = np.ones((len(xs), 3), bool) if step.program.xs[1:] else None
        got = step(params, x_seq, states[0], mask)
    tol = 1e-9 if step.dtype == np.float64 else 2e-4
    for t in range(len(xs)):
        for w, h in zip(want[t], got):
            if not np.allclose(w.data, h.data[t], rtol=tol, atol=tol):
                raise TraceError(
                    f"{type(cell).__name__}: the compiled step differs from the cell's forward "
                    f"on fresh inputs (max difference {np.abs(w.data - h.data[t]).max():.3g}); "
                    "the forward probably branches on tensor values, computes with NumPy on "
                    ".data, or builds in a batch size — run it with compiled=False")


def scan(cell, xs, init, mask=None, reverse=False, retain=None):
    """Run ``cell`` over a time-major sequence as one tape node.

    xs: (T, B, I) floats or (T, B) integer ids (tensors); init: a (B, H) tensor or a tuple
    of them; mask: (T, B) bool, False where a sequence has ended (its state is kept);
    ``reverse``: run t = T..1.  Returns the state at every step, (T, B, H) (a tuple of them
    for a tuple state).  ``retain``: a list of T tensors whose ``.grad`` the backward fills
    with ∂L/∂a<t> (the first state part).
    """
    parts = (init,) if isinstance(init, Tensor) else tuple(init)
    example = Tensor._result(xs.data[0], None, 0)
    params = [p for _, p in cell.named_parameters()]
    step = compile_step(cell, example, init, masked=mask is not None, params=params)
    hist = step(params, xs, parts, mask, reverse, retain)
    return hist[0] if isinstance(init, Tensor) else hist
