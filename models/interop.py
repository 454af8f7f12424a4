"""Weights to and from PyTorch state dicts, as plain arrays (torch is never imported here).

``to_torch_state_dict(module)`` returns ``{torch name: numpy array}`` that
``torch_module.load_state_dict({k: torch.from_numpy(v) ...})`` accepts;
``load_torch_state_dict(module, sd)`` reads a torch ``state_dict()`` (tensors or arrays) into
a minigrad module in place.  Supported, with torch's names:

=====================================  ======================================================
minigrad                               torch
=====================================  ======================================================
``RNN/GRU/LSTM(I, H, num_layers=L,     ``nn.RNN/GRU/LSTM(I, H, num_layers=L, batch_first=True,
bidirectional=b)``                     bidirectional=b)``: ``weight_ih_l{k}[_reverse]``, ...
``Recurrent(cell)``                    a one-layer ``nn.RNN/GRU/LSTM`` (``..._l0``)
``Bidirectional(cell, cell)``          a one-layer bidirectional one (``_l0``, ``_l0_reverse``)
``RNNCell/GRUCell/LSTMCell``           ``nn.RNNCell/GRUCell/LSTMCell``: ``weight_ih``, ...
``nn.Linear``, ``nn.Embedding``        the same (``weight``, ``bias``)
``nn.LayerNorm``,                      the same: their parameters carry torch's names
``nn.MultiheadAttention``,             (``in_proj_weight``, ``out_proj.weight``, ``linear1``,
``nn.Transformer{En,De}coder[Layer]``  ``norm1``, ``layers.0.self_attn...``), so the rule
                                       below moves them as they are
any other module                       its children converted under their own names, its
                                       own parameters copied as they are
=====================================  ======================================================

The mapping, per cell (minigrad's weight acting on ``[a<t-1>, x<t>]`` is ``[W_aa : W_ax]``;
torch keeps ``weight_hh`` (state) and ``weight_ih`` (input) apart, with gate blocks stacked):

* LSTM: torch's gate order is i, f, g, o = Γu, Γf, c~, Γo.
* GRU: torch's order is r, z, n with ``h = (1 − z) * n + z * h_prev``, so z = 1 − Γu: since
  1 − σ(s) = σ(−s), the z block is minigrad's Γu block with weights and biases negated.  Only
  ``GRUCell(reset_after=True)`` computes torch's function (Γr multiplies ``W_cc c + b_cc``
  after the product); the chapter's reset-before GRU and the simplified GRU have no torch
  equivalent and raise.
* Biases: torch has two per gate (``bias_ih`` + ``bias_hh``) where minigrad has one, except
  the GRU's candidate, where ``b_hn`` sits inside Γr's product: that is ``b_cc``.  Exporting
  writes minigrad's bias into ``bias_ih`` and zeros into ``bias_hh``; importing adds them.
* Peephole LSTMs, a ``head`` on a stack and ``reverse=True`` on a lone ``Recurrent`` have
  no torch equivalent and raise.  torch's ``nonlinearity`` (RNN) is not in a state dict:
  build the minigrad ``RNN`` with the same one.
"""

import numpy as np

from minigrad.nn import Embedding, Linear
from models.cells import GRUCell, LSTMCell, RNNCell
from models.layers import Bidirectional, Recurrent, _Stack

# torch's gate blocks, top to bottom, as (minigrad gate, sign)
_TORCH_GATES = {RNNCell: (("a", 1),), LSTMCell: (("u", 1), ("f", 1), ("c", 1), ("o", 1)),
                GRUCell: (("r", 1), ("u", -1), ("c", 1))}


def _array(v):
    """A torch tensor (duck-typed: never imported) or anything array-like -> numpy."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _check_cell(cell, where):
    name = type(cell).__name__
    if isinstance(cell, GRUCell) and not (cell.full and cell.reset_after):
        variant = "reset_after=False" if cell.full else "full=False"
        raise ValueError(f"{where}: GRUCell({variant}) has no PyTorch equivalent; torch's "
                         "GRU is GRUCell(full=True, reset_after=True)")
    if isinstance(cell, LSTMCell) and cell.peephole:
        raise ValueError(f"{where}: LSTMCell(peephole=True) has no PyTorch equivalent "
                         "(torch's LSTM has no peephole weights p_u, p_f, p_o)")
    if type(cell) not in _TORCH_GATES:
        raise TypeError(f"{where}: cannot map a {name} to PyTorch; expected RNNCell, "
                        "GRUCell(reset_after=True) or LSTMCell")


def _cell_to_torch(cell, suffix, where):
    _check_cell(cell, where)
    H = cell.hidden_size
    ws = [(s * getattr(cell, f"W_{g}").data) for g, s in _TORCH_GATES[type(cell)]]
    bs = [(s * getattr(cell, f"b_{g}").data) for g, s in _TORCH_GATES[type(cell)]]
    bias_hh = np.zeros(len(bs) * H, dtype=cell.dtype)
    if isinstance(cell, GRUCell):
        bias_hh[2 * H:] = cell.b_cc.data  # b_hn: inside Γr's product, like b_cc
    return {f"weight_ih{suffix}": np.concatenate([w[:, H:] for w in ws]),
            f"weight_hh{suffix}": np.concatenate([w[:, :H] for w in ws]),
            f"bias_ih{suffix}": np.concatenate(bs), f"bias_hh{suffix}": bias_hh}


def _cell_from_torch(cell, sd, suffix, where, prefix):
    """{minigrad parameter name: array} for ``cell`` from torch's arrays in ``sd``."""
    _check_cell(cell, where)
    H, I = cell.hidden_size, cell.input_size
    gates = _TORCH_GATES[type(cell)]
    G = len(gates)
    keys = {k: prefix + k + suffix for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    missing = [v for v in keys.values() if v not in sd]
    if missing:
        raise KeyError(f"{where}: the torch state dict has no {missing} (has: {sorted(sd)})")
    arrs = {k: _array(sd[v]) for k, v in keys.items()}
    want = {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,),
            "bias_hh": (G * H,)}
    for k, shape in want.items():
        if arrs[k].shape != shape:
            raise ValueError(f"{where}: {keys[k]} has shape {arrs[k].shape}, expected {shape} "
                             f"for {type(cell).__name__}(input_size={I}, hidden_size={H}) "
                             f"({G} gate blocks of H rows)")
    out = {}
    for j, (g, s) in enumerate(gates):
        rows = slice(j * H, (j + 1) * H)
        out[f"W_{g}"] = s * np.concatenate([arrs["weight_hh"][rows], arrs["weight_ih"][rows]],
                                           axis=1)
        if isinstance(cell, GRUCell) and g == "c":
            out["b_c"], out["b_cc"] = arrs["bias_ih"][rows], arrs["bias_hh"][rows]
        else:
            out[f"b_{g}"] = s * (arrs["bias_ih"][rows] + arrs["bias_hh"][rows])
    return out, set(keys.values())


def _layers(module, where):
    """``[(torch suffix, minigrad name prefix, cell)]`` for a recurrent module, or None."""
    if isinstance(module, _Stack):
        if module.head is not None:
            raise ValueError(f"{where}: a stack with a deep head has no single torch module; "
                             "convert the stack without it and the head's Linear layers apart")
        out = []
        for l, layer in enumerate(module.layers):
            out += [(s.replace("_l0", f"_l{l}"), f"layers.{l}.{p}", c)
                    for s, p, c in _layers(layer, where)]
        return out
    if isinstance(module, Bidirectional):
        return [("_l0", "fwd.cell.", module.fwd.cell), ("_l0_reverse", "bwd.cell.",
                                                         module.bwd.cell)]
    if isinstance(module, Recurrent):
        if module.reverse:
            raise ValueError(f"{where}: a lone Recurrent(reverse=True) has no torch module; "
                             "use Bidirectional or reverse the input")
        return [("_l0", "cell.", module.cell)]
    if type(module) in _TORCH_GATES:
        return [("", "", module)]
    return None


def _check_plain(module, where):
    if isinstance(module, Recurrent) and module.learn_initial_state:
        raise ValueError(f"{where}: a learned initial state (a0, c0) has no place in a torch "
                         "RNN's state dict; pass it as h0 to torch instead")


def to_torch_state_dict(module, prefix=""):
    """``{torch parameter name: numpy array}`` for ``module`` (see the module docs).

    Arrays are fresh copies in the module's dtype; ``torch.from_numpy`` makes tensors.
    """
    where = f"to_torch_state_dict({prefix.rstrip('.') or type(module).__name__})"
    for m in module.modules():
        _check_plain(m, where)
    layers = _layers(module, where)
    if layers is not None:
        out = {}
        for suffix, _, cell in layers:
            out.update({prefix + k: v for k, v in _cell_to_torch(cell, suffix, where).items()})
        return out
    if isinstance(module, (Linear, Embedding)):
        return {prefix + k: v for k, v in module.state_dict().items()}
    out = {prefix + k: p.data.copy() for k, p in module._parameters.items() if p is not None}
    for name, child in module.named_children():
        out.update(to_torch_state_dict(child, f"{prefix}{name}."))
    return out


def load_torch_state_dict(module, sd):
    """Copy a torch ``state_dict()`` (tensors or arrays) into ``module`` in place.

    Strict: every torch key must be used and every parameter filled, and shapes must fit;
    all problems are reported before anything is copied.  Returns ``module``.
    """
    if not isinstance(sd, dict):
        raise TypeError(f"load_torch_state_dict: expected a dict of tensors or arrays, got "
                        f"{type(sd).__name__}")
    ours, used = _collect(module, sd, "")
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise ValueError(f"load_torch_state_dict({type(module).__name__}): unexpected torch "
                         f"keys {unexpected}; expected {sorted(used)}")
    module.load_state_dict(ours)  # shape-checked, all or nothing, cast to the dtype
    return module


def _collect(module, sd, prefix):
    """(minigrad state dict for ``module``, the torch keys it used)."""
    where = f"load_torch_state_dict({prefix.rstrip('.') or type(module).__name__})"
    for m in module.modules():
        _check_plain(m, where)
    layers = _layers(module, where)
    if layers is not None:
        ours, used = {}, set()
        for suffix, name_prefix, cell in layers:
            part, keys = _cell_from_torch(cell, sd, suffix, where, prefix)
            ours.update({name_prefix + k: v for k, v in part.items()})
            used |= keys
        return ours, used
    ours, used = {}, set()
    for k in module._parameters:
        if module._parameters[k] is not None and prefix + k in sd:
            ours[k] = _array(sd[prefix + k])
            used.add(prefix + k)
    for name, child in module.named_children():
        part, keys = _collect(child, sd, f"{prefix}{name}.")
        ours.update({f"{name}.{k}": v for k, v in part.items()})
        used |= keys
    return ours, used


__all__ = ["load_torch_state_dict", "to_torch_state_dict"]
