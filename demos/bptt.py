"""Backpropagation through time, made visible (chapter 14.3–14.4).

A vanilla RNN runs 3 time steps, one loss per step, summed: L = L<1> + L<2> + L<3>.  The
forward pass is the chapter's equations, one step at a time (``RNNCell``'s own forward):

    a<t> = tanh(W_a [a<t-1>, x<t>] + b_a),   ŷ<t> = softmax(W_ya a<t> + b_y),
    L<t> = −log ŷ<t>[y<t>]

Nobody writes BPTT here.  The demo shows where it comes from:

1. the tape as it was recorded — one line per primitive, in forward order, read from the
   ``Node`` objects themselves (``tensor._node``, ``node.prim.name``, ``node.parents``,
   ``node.seq``);
2. the order in which ``backward`` actually visits those nodes (each node's VJP is observed
   as the engine calls it): step 3 first, then 2, then 1 — time, reversed;
3. the tape's gradients beside the textbook's hand-derived formulas, in float64:

       ∂L/∂a<t>  = W_yaᵀ (ŷ<t> − y<t>)  +  W_aaᵀ [(1 − a<t+1>²) ⊙ ∂L/∂a<t+1>]
       ∂L/∂W_a   = Σ_t [(1 − a<t>²) ⊙ ∂L/∂a<t>] [a<t-1>, x<t>]ᵀ
       ∂L/∂b_a   = Σ_t (1 − a<t>²) ⊙ ∂L/∂a<t>,    ∂L/∂W_ya = Σ_t (ŷ<t> − y<t>) a<t>ᵀ

4. a picture of the unrolled graph, drawn from the recorded tape: forward edges in black,
   the gradient's path back in red, each node numbered in the order backward reached it.

    python -m demos.bptt            # prints everything, writes bptt_graph.png to --out
"""

import os

import numpy as np

import minigrad as mg
from demos import common
from minigrad.nn import Linear
from models.cells import RNNCell
from models.layers import Recurrent

PLOT = "bptt_graph.png"
F64 = np.float64


def parse_args(argv=None):
    parser = common.make_parser(__doc__)
    parser.add_argument("--steps", type=common.POSITIVE_INT, default=3,
                        help="time steps T (%(default)s)")
    parser.add_argument("--hidden", type=common.POSITIVE_INT, default=3,
                        help="hidden size H (%(default)s)")
    parser.add_argument("--inputs", type=common.POSITIVE_INT, default=2,
                        help="input size I (%(default)s)")
    parser.add_argument("--classes", type=common.POSITIVE_INT, default=4,
                        help="output classes (%(default)s)")
    parser.add_argument("--batch", type=common.POSITIVE_INT, default=1,
                        help="batch size B (%(default)s)")
    common.add_run_args(parser, "runs/bptt", quick="the same (this demo is already instant)")
    args = common.parse(parser, argv, {})
    return args


# ---------------------------------------------------------------------------- the tape

class _Spy:
    """Stands in for one node's primitive during ``backward`` and logs when the engine
    calls its VJP: the visiting order is observed, not recomputed."""

    def __init__(self, prim, seq, log):
        self._prim, self.name, self.nout, self.scalar = prim, prim.name, prim.nout, prim.scalar

        def logged(f):
            def vjp(*a):
                if not log or log[-1] != seq:
                    log.append(seq)
                return f(*a)
            return vjp

        self.vjps = tuple(logged(f) for f in prim.vjps)
        self.vjp_all = None if prim.vjp_all is None else logged(prim.vjp_all)


def tape_nodes(root):
    """Every node reachable from ``root``, in forward (recording) order."""
    nodes, stack, seen = [], [root._node], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(p._node for p in node.parents if isinstance(p, mg.Tensor))
    return sorted(nodes, key=lambda n: n.seq)


def _describe(p, names, base):
    """An input as the tape line shows it: a named leaf with its shape, '#seq' for the
    output of an earlier node (numbered from the tape's first), an array constant by its
    shape, a Python constant as is."""
    if isinstance(p, mg.Tensor):
        if p._node is not None:
            return f"#{p._node.seq - base}{shape_of(p)}"
        return names.get(id(p), "const") + str(shape_of(p))
    return f"array{shape_of(p)}" if hasattr(p, "shape") else repr(p)


def shape_of(x):
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def run(args):
    """Build the 3-step RNN, record its tape, backward with a spy; return everything."""
    mg.manual_seed(args.seed)
    T, H, I, V, B = args.steps, args.hidden, args.inputs, args.classes, args.batch
    cell, head = RNNCell(I, H, dtype=F64), Linear(H, V, dtype=F64)
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(B, T, I))
    y = rng.integers(0, V, size=(B, T))
    names = {id(cell.W_a): "W_a", id(cell.b_a): "b_a", id(head.weight): "W_ya",
             id(head.bias): "b_y"}
    a = mg.zeros(B, H, dtype=F64)
    names[id(a)] = "a<0>"
    states, losses, named, step_of, last_seq = [a], [], [], {}, -1
    for t in range(1, T + 1):
        x_t = mg.tensor(x[:, t - 1])
        names[id(x_t)] = f"x<{t}>"
        a = cell(x_t, a).retain_grad()  # the chapter's equations, one step
        logits = head(a)
        loss_t = mg.cross_entropy(logits, y[:, t - 1], reduction="sum")
        names[id(a)], names[id(logits)], names[id(loss_t)] = f"a<{t}>", f"z<{t}>", f"L<{t}>"
        states.append(a)
        losses.append(loss_t)
        named += [a, logits, loss_t]
        for node in tape_nodes(loss_t):
            if node.seq > last_seq:
                step_of.setdefault(node.seq, t)
        last_seq = loss_t._node.seq
    L = losses[0]
    for loss_t in losses[1:]:
        L = L + loss_t
    names[id(L)] = "L"
    nodes = tape_nodes(L)
    # node.seq -> the name of the tensor it produced, when it has one
    labels = {t_._node.seq: names[id(t_)] for t_ in [*named, L]}
    forward = []
    for node in nodes:
        ins = [_describe(p, names, nodes[0].seq) for p in node.parents]
        outs = node.out if isinstance(node.out, tuple) else (node.out,)
        # (input position, producing node): the edges of the graph
        parents = [(i, p._node.seq) for i, p in enumerate(node.parents)
                   if isinstance(p, mg.Tensor) and p._node is not None]
        leaves = [names.get(id(p), "const") for p in node.parents
                  if isinstance(p, mg.Tensor) and p._node is None]
        forward.append({"seq": node.seq, "prim": node.prim.name, "step": step_of.get(node.seq),
                        "inputs": [shape_of(p) for p in node.parents], "in_names": ins,
                        "outputs": [shape_of(o) for o in outs], "parents": parents,
                        "leaves": leaves, "needs": list(node.needs),
                        "label": labels.get(node.seq, "")})
    visited = []
    for node in nodes:
        node.prim = _Spy(node.prim, node.seq, visited)
    L.backward()
    tape = {"W_a": cell.W_a.grad, "b_a": cell.b_a.grad, "W_ya": head.weight.grad,
            "b_y": head.bias.grad}
    da_tape = [s.grad for s in states[1:]]
    hand, terms = hand_bptt(x, y, cell.W_a.data, cell.b_a.data, head.weight.data,
                            head.bias.data)
    return {"forward": forward, "backward": visited, "tape": tape, "hand": hand,
            "terms": terms, "da_tape": da_tape, "loss": float(L.data), "T": T,
            "step_of": step_of, "model": (cell, head, x, y)}


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_bptt(x, y, W_a, b_a, W_ya, b_y):
    """The textbook's BPTT in NumPy: forward, then ∂L/∂a<t> from t = T down to 1."""
    B, T, _ = x.shape
    H = W_a.shape[0]
    W_aa = W_a[:, :H]
    a = [np.zeros((B, H))]
    dy = []
    for t in range(T):
        a.append(np.tanh(np.concatenate([a[t], x[:, t]], axis=1) @ W_a.T + b_a))
        d = _softmax(a[-1] @ W_ya.T + b_y)
        d[np.arange(B), y[:, t]] -= 1  # ŷ<t> − y<t>
        dy.append(d)
    da = [None] * (T + 1)
    terms = {"W_a": [], "b_a": [], "W_ya": [], "b_y": []}
    for t in range(T, 0, -1):
        da[t] = dy[t - 1] @ W_ya  # W_yaᵀ (ŷ<t> − y<t>), as a row per sequence
        if t < T:
            da[t] = da[t] + ((1 - a[t + 1] ** 2) * da[t + 1]) @ W_aa  # through W_aa
        dz = (1 - a[t] ** 2) * da[t]
        terms["W_a"].insert(0, dz.T @ np.concatenate([a[t - 1], x[:, t - 1]], axis=1))
        terms["b_a"].insert(0, dz.sum(0))
        terms["W_ya"].insert(0, dy[t - 1].T @ a[t])
        terms["b_y"].insert(0, dy[t - 1].sum(0))
    grads = {k: sum(v) for k, v in terms.items()}
    grads["da"] = da[1:]
    return grads, terms


# ---------------------------------------------------------------------------- printing

def print_tape(r):
    print("1. The tape as recorded (forward order; read from the Node objects)")
    print(f"   {'seq':>4s}  {'step':>4s}  {'primitive':<14s} {'inputs':<44s} -> output")
    base = r["forward"][0]["seq"]
    for n in r["forward"]:
        step = "Σ" if n["step"] is None else str(n["step"])
        ins = ", ".join(n["in_names"])
        outs = ", ".join(str(o) for o in n["outputs"])
        label = f"  = {n['label']}" if n["label"] else ""
        print(f"   {n['seq'] - base:4d}  {step:>4s}  {n['prim']:<14s} {ins:<44s} -> {outs}{label}")
    print("   (#k: the output of node k; const: a tensor computed without recording — step 1's "
          "[a<0>, x<1>] needs no gradient, so its concat is not on the tape)")


def print_backward(r):
    base = r["forward"][0]["seq"]
    by_seq = {n["seq"]: n for n in r["forward"]}
    print("\n2. The order in which backward visits the tape (each VJP observed as it runs)")
    line, current = [], object()
    for seq in r["backward"]:
        n = by_seq[seq]
        step = "Σ" if n["step"] is None else f"step {n['step']}"
        if step != current:
            if line:
                print("   " + " ".join(line))
            line, current = [f"{step}:"], step
        line.append(f"{n['prim']}#{seq - base}")
    print("   " + " ".join(line))
    steps = [by_seq[s]["step"] for s in r["backward"] if by_seq[s]["step"] is not None]
    order = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
    print("   steps in the order backward reached them: "
          + " -> ".join(map(str, order)) + "   (time, reversed: that is BPTT)")


def print_gradients(r):
    print("\n3. The tape's gradients beside the textbook's BPTT formulas (float64)")
    T, hand, tape = r["T"], r["hand"], r["tape"]
    print("   ∂L/∂a<t> = W_yaᵀ(ŷ<t> − y<t>) + W_aaᵀ[(1 − a<t+1>²) ⊙ ∂L/∂a<t+1>], t = T..1")
    for t in range(T, 0, -1):
        print(f"     t={t}  tape {np.array2string(r['da_tape'][t - 1][0], precision=15)}")
        print(f"           hand {np.array2string(hand['da'][t - 1][0], precision=15)}")
    print("   ∂L/∂W_a = Σ_t [(1 − a<t>²) ⊙ ∂L/∂a<t>] [a<t-1>, x<t>]ᵀ — per-step terms, first row:")
    for t in range(1, T + 1):
        print(f"     t={t}  {np.array2string(r['terms']['W_a'][t - 1][0], precision=6)}")
    print(f"   {'':6s}{'parameter':<10s}{'tape (first entry)':>24s}{'hand (first entry)':>24s}"
          f"{'max |tape − hand|':>20s}")
    for k in ("W_a", "b_a", "W_ya", "b_y"):
        diff = np.abs(tape[k] - hand[k]).max()
        print(f"   {'':6s}{k:<10s}{tape[k].flat[0]:24.17g}{hand[k].flat[0]:24.17g}{diff:20.2e}")
    worst = max_rel_diff(r)
    print(f"   largest relative difference over every gradient: {worst:.1e} "
          f"(float64 carries ~16 digits)")


def max_rel_diff(r):
    pairs = [(r["tape"][k], r["hand"][k]) for k in ("W_a", "b_a", "W_ya", "b_y")]
    pairs += list(zip(r["da_tape"], r["hand"]["da"]))
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in pairs)


def print_compiled_ir(r):
    """The same cell compiled: its traced equations, the rewritten program (what runs once,
    for all t at once, and in the loop), and the reverse loop derived from the primitive
    table — BPTT again, now generated rather than recorded, and equal to the tape's."""
    from minigrad.compiler import compile_step

    cell, head, x, y = r["model"]
    tape = {k: v.copy() for k, v in r["tape"].items()}
    cell.zero_grad()
    head.zero_grad()
    out, _ = Recurrent(cell)(mg.tensor(x))  # compiled: one tape node for the sequence
    mg.cross_entropy(head(out), y, reduction="sum").backward()
    grads = {"W_a": cell.W_a.grad, "b_a": cell.b_a.grad, "W_ya": head.weight.grad,
             "b_y": head.bias.grad}
    r["compiled_rel_diff"] = max(float(np.abs(grads[k] - tape[k]).max()
                                       / max(np.abs(tape[k]).max(), 1e-300)) for k in tape)
    B = 2
    x = mg.zeros(B, cell.input_size, dtype=F64)
    a = mg.zeros(B, cell.hidden_size, dtype=F64)
    step = compile_step(cell, x, a)
    print("\n4. The compiled step: the cell's forward traced into equations (mg.trace)")
    print(_indent(repr(step.traced)))
    print("\n   ... rewritten: weights stacked, the input term hoisted out of the loop")
    print(_indent(repr(step.program)))
    print("\n   ... its loop body, and the reverse body derived from it by the table's rules:")
    print("   BPTT as equations.  da is dL/da<t> carried back from step t+1, ga what this")
    print("   step's own loss adds; da_prev, an output, is what step t carries to step t-1;")
    print("   the acc outputs (after the second ';') are summed over all steps")
    print(_indent(repr(step.body)))
    print(_indent(repr(step.reverse)))
    print("\n   Both bodies are lowered and rendered by one emitter (generated Python here; the")
    print("   elementwise chain is one generated Numba kernel each way); the reverse loop:")
    print(_indent(step.source.split("\n\n\n")[1]))
    print(f"\n   Compiled (one tape node for the sequence) vs the tape above: gradients equal to "
          f"max relative difference {r['compiled_rel_diff']:.1e}")


def _indent(text):
    return "\n".join("   " + line for line in text.splitlines())


# ---------------------------------------------------------------------------- the picture

def plot_graph(r, path):
    """The unrolled graph from the recorded nodes: one column per time step (the summing
    nodes in a last column), nodes stacked in recording order within a step."""
    plt = common.pyplot()
    fwd = r["forward"]
    T = r["T"]
    visit = {seq: i + 1 for i, seq in enumerate(r["backward"])}
    rows, pos = {}, {}
    for n in fwd:
        col = T + 1 if n["step"] is None else n["step"]
        rows[col] = rows.get(col, 0) + 1
        pos[n["seq"]] = (col * 3.2, -rows[col])
    fig, ax = plt.subplots(figsize=(11, 0.55 * max(rows.values()) + 2))
    for n in fwd:
        x1, y1 = pos[n["seq"]]
        for i, p in n["parents"]:
            x0, y0 = pos[p]
            ax.annotate("", (x1 - 0.05, y1 + 0.12), (x0 + 0.05, y0 - 0.12),
                        arrowprops=dict(arrowstyle="-|>", color="black", lw=0.9,
                                        shrinkA=9, shrinkB=9, connectionstyle="arc3,rad=0.0"))
            if i in n["needs"]:  # the gradient flows back along this edge
                ax.annotate("", (x0 + 0.28, y0 - 0.12), (x1 + 0.28, y1 + 0.12),
                            arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=0.9,
                                            ls="--", shrinkA=9, shrinkB=9,
                                            connectionstyle="arc3,rad=-0.15"))
    for n in fwd:
        x1, y1 = pos[n["seq"]]
        leaves = [lf for lf in n["leaves"] if lf != "const"]
        text = n["prim"] + (f" → {n['label']}" if n["label"] else "")
        ax.text(x1, y1, text, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc="#e8f0fe" if n["step"] else "#fde8e8",
                          ec="gray"))
        if leaves:
            ax.text(x1 - 1.0, y1, ", ".join(leaves) + " →", ha="right", va="center",
                    fontsize=7, color="dimgray")
        if n["seq"] in visit:
            ax.text(x1 + 0.95, y1 + 0.25, str(visit[n["seq"]]), color="tab:red", fontsize=7,
                    ha="left", va="bottom")
    for t in range(1, T + 2):
        ax.text(t * 3.2, 0.3, f"step {t}" if t <= T else "L = Σ L<t>", ha="center",
                fontsize=10, weight="bold")
    ax.plot([], [], color="black", lw=1, label="forward (recorded edge)")
    ax.plot([], [], color="tab:red", ls="--", lw=1,
            label="backward: gradient flow; red number = order backward visited the node")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8,
              frameon=False)
    ax.set_xlim(1.2, (T + 1) * 3.2 + 1.6)
    ax.set_ylim(-max(rows.values()) - 0.8, 0.8)
    ax.axis("off")
    ax.set_title("BPTT: the unrolled RNN as recorded on the tape "
                 f"({len(fwd)} nodes; drawn from the Node objects)")
    common.save_figure(fig, path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"BPTT made visible: a vanilla RNN, T = {args.steps}, I = {args.inputs}, "
          f"H = {args.hidden}, {args.classes} classes, B = {args.batch}, float64; "
          "L = Σ_t L<t>\n")
    r = run(args)
    print_tape(r)
    print_backward(r)
    print_gradients(r)
    print_compiled_ir(r)
    path = os.path.join(args.out, PLOT)
    plot_graph(r, path)
    print(f"\nSaved {path}")
    r["plot"] = path
    r["max_rel_diff"] = max_rel_diff(r)
    return r


if __name__ == "__main__":
    main()
