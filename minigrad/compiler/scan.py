"""A cell compiled once per signature and run over a whole sequence as one tape node.

``compile_step(cell, x_t, state)`` traces the cell, rewrites the program and generates its
loops; calling the result on a sequence

1. runs the equations that depend only on parameters once, and those that depend only on
   the inputs for all T steps at once (the hoisted input projection), as ordinary tensor ops
   recorded on the tape, then
2. records **one** tape node for the loop: its forward is the generated forward loop and its
   VJP the generated reverse loop — BPTT, derived from the table's rules.

``scan(cell, xs, init)`` is the public entry point; :class:`models.layers.Recurrent` uses it.
"""

import weakref

import numpy as np

from minigrad import kernels
from minigrad.compiler import codegen
from minigrad.compiler.ir import TraceError, Var, trace
from minigrad.compiler.rewrites import INPUT, INVARIANT, batched_args, optimize
from minigrad.core import ops
from minigrad.core.autograd import OuterSum, given_vjps, no_grad
from minigrad.core.ops import Prim
from minigrad.core.tensor import Tensor, apply
from minigrad.kernels import blas

NJIT_LOOPS = True  # False: every compiled loop runs as Python (tests compare the two)


def prev_states(init, hist, reverse):
    """The state each step started from, in time order: (T, B, H)."""
    if reverse:
        return np.concatenate([hist[1:], init[None]])
    return np.concatenate([init[None], hist[:-1]])


def outer(lefts, grads):
    """Σ_t left_tᵀ dy_t as one deferred GEMM on the stacked steps."""
    return OuterSum(lefts.reshape(-1, lefts.shape[-1]), grads.reshape(-1, grads.shape[-1]))


def add_outer(dense, outers):
    total = outers[0]
    for o in outers[1:]:
        total = total.add(o)
    return total if dense is None else total.materialize() + dense


def vjp(prim, g, out, args, needs):
    """A generic equation's input cotangents, from the table (zeros for missing g)."""
    g = tuple(np.zeros_like(o) if gi is None else gi for gi, o in zip(g, out))
    g, out = (g[0], out[0]) if prim.nout == 1 else (g, out)
    vjps = prim.vjps or given_vjps(prim.vjp_all(g, out, *args))  # the walk's one convention
    gs = [vjps[i](g, out, *args) for i in needs]
    return [gi.materialize() if isinstance(gi, OuterSum) else gi for gi in gs]


class CompiledStep:
    """``cell.forward`` traced, rewritten and compiled for one signature."""

    def __init__(self, cell, x_t, state):
        self.traced = trace(cell, x_t, state)
        self.program = optimize(self.traced)
        self.plan = codegen.Plan(self.program)
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        self.dtype = parts[0].dtype
        loops, finish, kernel_source, njit = codegen.generate(self.plan, self.dtype)
        self.source = loops
        # NOTE: float32 (training) runs the loops compiled by Numba; float64 (gradient checks)
        # runs the same source as Python, sparing a Numba compile per checked cell.
        njit = njit and blas.AVAILABLE and self.dtype == np.float32 and NJIT_LOOPS
        self.njit = njit
        if njit:  # the same loops, compiled by Numba into the kernel module (cached on disk)
            kernel_source += ("\nfrom minigrad.kernels.blas import gemm32 as gemm, keep_rows, "
                              f"split_masked\n\n\n{loops}\n\nforward = kernel(forward)\n"
                              "backward = kernel(backward)\n")
        self.kernel_source = kernel_source
        ns = {"np": np, "DT": self.dtype.type, "outer": outer, "add_outer": add_outer,
              "prev_states": prev_states, "vjp": vjp, "gemm": blas.py_gemm,
              "keep_rows": blas.py_keep_rows, "split_masked": blas.py_split_masked}
        module = kernels.load_kernels(kernel_source)
        ns.update({k: getattr(module, k) for k in dir(module) if k.startswith("fused")})
        for j, (kind, op) in enumerate(self.plan.ops):
            if kind == "generic":
                ns[f"PRIM{j}"] = op.prim
                for i, a in enumerate(op.args):
                    if not isinstance(a, Var):
                        ns[f"A{j}_{i}"] = a
        exec(compile(loops + "\n\n" + finish, f"<compiled {type(cell).__name__}>", "exec"), ns)
        self._forward, self._backward = ns["forward"], ns["backward"]
        if njit:
            self._forward, self._backward = module.forward, module.backward
        self._finish = ns["finish"]
        self.n_state = len(parts)
        level = self.program.level
        self.pre = [e for e in self.program.eqns if level[e.outs[0]] in (INVARIANT, INPUT)]
        # outputs: the state parts at every step, then what the backward reads (auxiliary)
        self.prim = Prim(f"scan[{type(cell).__name__}]", self._fwd, vjp_all=self._vjp,
                         nout=None)

    def __repr__(self):
        return f"{self.program!r}\n\n{self.source}"

    # -------------------------------------------------------------- the one tape node
    # Inputs: the cell's parameters, x (T, B, I) or ids (T, B), the initial state parts; then
    # the statics mask, reverse, retain and ctx (a dict the forward leaves its values in).

    def _pre(self, params, x):
        """What runs before the loop, on arrays: equations of the parameters once, equations
        of x<t> for all t at once.  Returns every value, by Var."""
        prog = self.program
        env = dict(zip(prog.params, params))
        env.update((c, c.value) for c in prog.consts)
        env[prog.xs[0]] = x
        for e in self.pre:
            args = e.args if prog.level[e.outs[0]] == INVARIANT else batched_args(e)
            out = e.prim.fwd(*[env[a] if isinstance(a, Var) else a for a in args])
            env.update(zip(e.outs, out if isinstance(out, tuple) else (out,)))
        return env

    def _fwd(self, *arrays):
        *arrays, mask, reverse, retain, ctx = arrays
        n = len(self.program.params)
        params, x, init = arrays[:n], arrays[n], arrays[n + 1:]
        env = ctx["env"] = self._pre(params, x)
        xs = [np.ascontiguousarray(env[v]) for v in self.plan.xs]
        consts = [np.ascontiguousarray(env[v]) for v in self.plan.consts]
        init = [np.ascontiguousarray(i) for i in init]
        ctx["loop"] = (xs, consts, init, x.shape[0])
        masked = mask is not None
        m = mask if masked else np.zeros((0, 1, 1), self.dtype)
        out = self._forward(init[0].shape[0], x.shape[0], *xs, *consts, *init, m, masked,
                            reverse)
        return out

    def _vjp(self, g, out, *arrays):
        *arrays, mask, reverse, retain, ctx = arrays
        xs, consts, init, T = ctx["loop"]
        B = init[0].shape[0]
        G = [np.zeros_like(o) if gi is None else np.ascontiguousarray(gi)
             for gi, o in zip(g[:self.n_state], out)]
        masked = mask is not None
        m = mask if masked else np.zeros((0, 1, 1), self.dtype)
        R = np.empty_like(out[0]) if retain is not None else np.zeros((0, 1, 1), self.dtype)
        raw = self._backward(B, T, *G, *xs, *consts, *init, *out, m, masked, reverse, R,
                             retain is not None)
        grads = self._finish(raw, *xs, *consts, *init, *out, reverse)
        if retain is not None:
            for t, r in enumerate(retain):
                r.grad = R[t]
        # the reverse of the pre-loop equations: the table's VJPs, newest first
        prog, env = self.program, ctx["env"]
        cot = {v: gi.materialize() if isinstance(gi, OuterSum) else gi
               for v, gi in zip(self.plan.xs + self.plan.consts, grads)}
        for e in reversed(self.pre):
            gs = [cot.pop(v, None) for v in e.outs]
            if all(gi is None for gi in gs):
                continue
            args = e.args if prog.level[e.outs[0]] == INVARIANT else batched_args(e)
            vals = [env[a] if isinstance(a, Var) else a for a in args]
            needs = [i for i, a in enumerate(args) if isinstance(a, Var) and a.dtype.kind == "f"
                     and a.kind != "const"]
            outs = [env[v] for v in e.outs]
            for i, gi in zip(needs, vjp(e.prim, gs, outs, vals, needs)):
                cot[args[i]] = gi if args[i] not in cot else cot[args[i]] + gi
        init_grads = grads[len(self.plan.xs) + len(self.plan.consts):]
        x = prog.xs[0]
        return (*[cot.get(v) for v in prog.params], cot.get(x) if x.dtype.kind == "f" else None,
                *init_grads, None, None, None, None)

    # -------------------------------------------------------------- run a sequence
    def __call__(self, params, x_seq, init, mask=None, reverse=False, retain=None):
        """params: the cell's parameters (``named_parameters`` order); x_seq (T, B, I) or
        (T, B) ids; init: the state parts (B, H); mask: (T, B) bool (False = padding).
        Returns the state parts at every step, (T, B, H) each, as tensors: one tape node."""
        m = None if mask is None else np.ascontiguousarray(mask, dtype=self.dtype)[:, :, None]
        outs = apply(self.prim, *params, x_seq, *init, m, bool(reverse), retain, {})
        return outs[:self.n_state]


def _examples(cell, x_t, parts, batch, seed):
    """Random inputs of the signature of (x_t, parts) with another batch size."""
    rng = np.random.default_rng(seed)  # NOTE: never the user's generator (reproducibility)
    if x_t.dtype.kind in "iu":
        x = Tensor(rng.integers(0, cell.input_size, size=(batch,)).astype(x_t.dtype))
    else:
        x = Tensor(rng.standard_normal((batch, *x_t.shape[1:])).astype(x_t.dtype))
    s = tuple(Tensor(0.5 * rng.standard_normal((batch, *p.shape[1:])).astype(p.dtype))
              for p in parts)
    return x, s


_CACHE = weakref.WeakKeyDictionary()


def compile_step(cell, x_t, state):
    """The :class:`CompiledStep` of ``cell`` for the signature of ``x_t`` and ``state``
    (cached per cell and signature).  Raises :class:`TraceError` with the cause when the
    cell cannot be compiled, or when the compiled step does not reproduce ``cell(x_t, s)``
    on fresh inputs (Python control flow or NumPy on tensor values, a batch size built in)."""
    parts = (state,) if isinstance(state, Tensor) else tuple(state)
    key = (x_t.dtype.str, x_t.shape[1:], tuple((p.shape[1:], p.dtype.str) for p in parts))
    per_cell = _CACHE.setdefault(cell, {})
    if key not in per_cell:
        try:
            wrap = (lambda s: s[0]) if isinstance(state, Tensor) else tuple
            x2, s2 = _examples(cell, x_t, parts, 2, 0)
            step = CompiledStep(cell, x2, wrap(s2))
            _verify(step, cell, x_t, parts, wrap)
            per_cell[key] = step
        except TraceError as e:
            per_cell[key] = e
    hit = per_cell[key]
    if isinstance(hit, Exception):
        raise hit
    return hit


def _verify(step, cell, x_t, parts, wrap):
    xs, states = zip(*[_examples(cell, x_t, parts, 3, seed) for seed in (1, 2)])
    with no_grad():
        s = states[0]
        want = []
        for x in xs:
            if x.dtype.kind in "iu":
                x = Tensor(ops.ONE_HOT.fwd(x.data, cell.input_size, step.dtype))
            s = cell(x, wrap(s))
            s = (s,) if isinstance(s, Tensor) else tuple(s)
            want.append(s)
        x_seq = Tensor(np.stack([x.data for x in xs]))
        params = [p for _, p in cell.named_parameters()]
        got = step(params, x_seq, states[0])
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
    step = compile_step(cell, example, init)
    params = [p for _, p in cell.named_parameters()]
    hist = step(params, xs, parts, mask, reverse, retain)
    return hist[0] if isinstance(init, Tensor) else hist
