"""Building blocks for models: Parameter, Module, containers, layers and initialisers.

A :class:`Module` holds :class:`Parameter` s and sub-modules as ordinary attributes; assigning
one registers it, in order, so ``parameters()``, ``state_dict()`` and ``repr`` find it without
any bookkeeping in the model.  Everything here is written with the public Tensor API: no
kernels, no backward code.

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(3, 8)
            self.out = nn.Linear(8, 1)

        def forward(self, x):
            return self.out(self.hidden(x).tanh())
"""

import math
from collections import namedtuple

import numpy as np

from minigrad import functional
from minigrad.core import ops
from minigrad.core import tensor as _tensor
from minigrad.core.autograd import no_grad
from minigrad.core.tensor import Tensor, _zero_grads, apply, as_array, effect
from minigrad.data import check_ids
from minigrad.random import get_rng

__all__ = [
    "GELU", "Dropout", "Embedding", "LayerNorm", "LearnedPositionalEmbedding", "Linear",
    "Module", "ModuleList", "MultiheadAttention", "Parameter", "ReLU", "Sequential", "Sigmoid",
    "SinusoidalPositionalEmbedding", "Tanh", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "TransformerEncoderLayer", "generate_square_subsequent_mask", "init",
]


# ------------------------------------------------------------------ Parameter

class Parameter(Tensor):
    """A Tensor that a :class:`Module` registers as one of its parameters.

    ``Parameter(data, requires_grad=True)``: float data keeps its dtype (float32 for Python
    floats, float64 arrays stay float64, as :func:`minigrad.tensor`); integer or boolean data
    becomes float32.  The data is copied.
    """

    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=False, dtype=dtype)
        if self.data.dtype.kind != "f":
            if dtype is not None or self.data.dtype.kind not in "biu":
                raise TypeError(f"Parameter: expected float32 or float64 data, got "
                                f"{self.data.dtype}")
            self.data = self.data.astype(np.float32)
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


# ------------------------------------------------------------------ Module

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
_EDITS = [0]  # bumped when any module's parameters or sub-modules are re-assigned: the cheap
#               first check of mg.compile's guard (a program captured the old ones)


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, assign Parameters and sub-Modules as
    attributes, and define ``forward``; ``module(x)`` calls ``forward(x)``.  Parameters and
    sub-modules are stored as plain attributes (fast to read in a time loop) and also in
    ordered registries that ``parameters()`` and friends walk.  Assigning ``None`` to a
    registered name keeps the slot (``bias=False``); assigning anything else that is not a
    Parameter/Module unregisters it — except a plain Tensor over a Parameter, which is
    almost always a bug (``self.W = self.W - lr * g``) and raises TypeError.
    """

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = {}
        d["_modules"] = {}
        d["training"] = True

    # ------------------------------------------------------------ attribute registration
    def __setattr__(self, name, value):
        d = self.__dict__
        params, mods = d.get("_parameters"), d.get("_modules")
        if params is None:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(
                    f"cannot assign {type(value).__name__} {name!r} before Module.__init__(); "
                    f"call super().__init__() first in {type(self).__name__}.__init__"
                )
        elif isinstance(value, Parameter):
            mods.pop(name, None)
            params[name] = value
            _EDITS[0] += 1
        elif isinstance(value, Module):
            params.pop(name, None)
            mods[name] = value
            _EDITS[0] += 1
        elif value is None and name in params:
            params[name] = None
            _EDITS[0] += 1
        elif value is None and name in mods:
            mods[name] = None
            _EDITS[0] += 1
        elif name in params:
            # As PyTorch: replacing a parameter by anything but a Parameter (or None) would
            # silently drop it from parameters() and state_dict().
            raise TypeError(
                f"cannot assign a {type(value).__name__} to parameter {name!r} of "
                f"{type(self).__name__} (nn.Parameter or None expected): wrap it in "
                f"nn.Parameter(...), or update the values in place with "
                f"`{name}.data[...] = ...`"
            )
        elif name in mods:
            del mods[name]
            _EDITS[0] += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        d = self.__dict__
        for reg in ("_parameters", "_modules"):
            if name in d.get(reg, ()):
                del d[reg][name]
                _EDITS[0] += 1
        object.__delattr__(self, name)

    def __getattr__(self, name):
        # Only reached when normal lookup fails: children registered under names that are
        # not identifiers ("0", "1", ... in ModuleList).
        d = self.__dict__
        for reg in ("_parameters", "_modules"):
            if name in d.get(reg, ()):
                return d[reg][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if _tensor._TRACER is not None:  # mg.compile watches the modules a trace calls
            getattr(_tensor._TRACER, "modules", {})[id(self)] = self
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix="", _seen=None):
        """``(dotted name, module)`` for this module and every descendant, each once."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """Direct sub-modules as ``(name, module)``, in assignment order."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix=""):
        """``(dotted name, parameter)``: own parameters first, then each child's, in
        assignment order; a parameter shared by several modules appears once (first name)."""
        seen = set()
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self):
        """Total number of scalar parameters (shared ones counted once)."""
        return sum(p.data.size for p in self.parameters())

    def zero_grad(self):
        effect(f"{type(self).__name__}.zero_grad()", _zero_grads, list(self.parameters()))

    def train(self, mode=True):
        """Set training mode (dropout active) on this module and every descendant."""
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------ state
    def state_dict(self):
        """``{dotted name: copy of the parameter's array}`` in ``named_parameters`` order."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the parameters, in place (optimizers keep working).

        Values are cast to each parameter's dtype.  Every problem is collected before anything
        is copied, and reported in one ValueError: missing keys and unexpected keys (only when
        ``strict``), shape mismatches and non-numeric values (always).  Returns
        ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got "
                            f"{type(state).__name__}")
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        pairs = []
        for name, p in own.items():
            if name not in state:
                continue
            value = state[name]
            arr = np.asarray(value.data if isinstance(value, Tensor) else value)
            if arr.dtype.kind not in "biuf":
                problems.append(f"{name!r}: expected a numeric array, got dtype {arr.dtype}")
            elif arr.shape != p.data.shape:
                problems.append(f"shape mismatch for {name!r}: checkpoint {arr.shape}, "
                                f"model {p.data.shape}")
            else:
                pairs.append((p, arr))
        if problems:
            raise ValueError(
                f"load_state_dict: the state does not fit {type(self).__name__}:\n  "
                + "\n  ".join(problems)
            )
        with no_grad():
            for p, arr in pairs:
                p.data[...] = arr
        return _IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ printing
    def extra_repr(self):
        """The text inside this module's parentheses in ``repr`` (override in layers)."""
        return ""

    def __repr__(self):
        lines = [line for line in self.extra_repr().split("\n") if line]
        for name, m in self._modules.items():
            lines.append(f"({name}): " + repr(m).replace("\n", "\n  "))
        head = type(self).__name__
        if not self._modules:
            return f"{head}({self.extra_repr()})"
        return head + "(\n  " + "\n  ".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, registered as children ``"0"``, ``"1"``, ... (``layers.0.weight``)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.append: expected a Module, got "
                            f"{type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        _EDITS[0] += 1
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def _index(self, i):
        n = len(self._modules)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers or slices, got "
                            f"{type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__}: index {i} is out of range for length {n}")
        return str(int(i) % n)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)(list(self._modules.values())[i])
        return self._modules[self._index(i)]

    def __setitem__(self, i, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: expected a Module, got "
                            f"{type(module).__name__}")
        self._modules[self._index(i)] = module
        _EDITS[0] += 1

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """``Sequential(m1, m2, ...)(x) == m2(m1(x))...``; children named ``"0"``, ``"1"``, ..."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


# ------------------------------------------------------------------ layers

def _positive_int(owner, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {v!r}")
    return int(v)


def _as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


class Linear(Module):
    """``y = x @ weight.T + bias`` for ``x`` of shape ``(..., in_features)``.

    weight (out_features, in_features) and bias (out_features,) start uniform in
    ±1/√in_features, as PyTorch's default.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features = _positive_int("Linear", "in_features", in_features)
        self.out_features = _positive_int("Linear", "out_features", out_features)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = init.uniform_(
            Parameter(np.zeros((self.out_features, self.in_features), dtype=dtype)), -bound, bound)
        self.bias = (init.uniform_(Parameter(np.zeros(self.out_features, dtype=dtype)),
                                   -bound, bound) if bias else None)

    def forward(self, x):
        x = _as_tensor(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input of shape (..., {self.in_features}) "
                             f"(in_features={self.in_features}), got shape {x.shape}")
        if x.dtype.kind != "f":
            raise TypeError(f"Linear: expected a float input, got dtype {x.dtype} (token ids? "
                            "look them up with nn.Embedding first)")
        if x.dtype != self.weight.dtype:
            # NOTE: as PyTorch: no silent promotion (float64 data would make the rest of the
            # model run in float64, ~3x slower) and no silent downcast either.
            raise TypeError(f"Linear: input has dtype {x.dtype} but the layer's weight is "
                            f"{self.weight.dtype}; convert the input "
                            f"(x.astype(np.{self.weight.dtype})) or build the layer with "
                            f"dtype=np.{x.dtype}")
        if x.ndim == 1:  # a single vector: matmul needs a row
            y = x.reshape(1, self.in_features) @ self.weight.T
            y = y.reshape(self.out_features)
        else:
            y = x @ self.weight.T
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Embedding(Module):
    """A lookup table: integer ids of any shape ``(...)`` -> rows ``(..., embedding_dim)``.

    ``weight`` (num_embeddings, embedding_dim) starts N(0, 1).  The result equals
    ``one_hot(idx, num_embeddings) @ weight`` in value and gradient, without the dense
    product (repeated ids add their gradients).  With ``padding_idx`` that row starts at zero
    and never receives a gradient, as in PyTorch.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings = _positive_int("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("Embedding", "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                 f"num_embeddings={self.num_embeddings}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = init.normal_(
            Parameter(np.zeros((self.num_embeddings, self.embedding_dim), dtype=dtype)))
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, idx):
        ids = as_array(idx)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got dtype {ids.dtype}")
        check_ids("Embedding", ids, self.num_embeddings, what="index", size="num_embeddings")
        if not isinstance(idx, Tensor):
            idx = Tensor(ids)
        out = apply(ops.GETITEM, self.weight, idx)  # the ids as a tensor: mg.compile traces it
        if self.padding_idx is not None:
            # Zeroing the padded positions also zeroes the gradient they send to that row.
            pad = self.padding_idx
            keep = apply(ops.LT, idx, pad) + apply(ops.GT, idx, pad)
            out = out * keep.astype(self.weight.dtype)[..., None]
        return out

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Dropout(Module):
    """Inverted dropout (``mg.dropout``) while training; the identity after ``eval()``."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        return functional.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Tanh(Module):
    def forward(self, x):
        return x.tanh()


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Sigmoid(Module):
    def forward(self, x):
        return x.sigmoid()


# ------------------------------------------------------------------ initialisers

def _check_tensor(fn, t):
    if not isinstance(t, Tensor):
        raise TypeError(f"init.{fn}: expected a Tensor, got {type(t).__name__}")


def _fill(t, values):
    with no_grad():
        t.data[...] = values
    return t


class init:
    """In-place initialisers (``nn.init.xavier_uniform_(layer.weight)``), as ``torch.nn.init``.

    Each overwrites ``t.data`` (keeping its dtype and array object, so optimizers holding
    the parameter keep working), draws from ``mg.get_rng()`` and returns ``t``.
    A forget-gate bias of 1 is ``init.constant_(cell.b_f, 1.0)``.
    """

    def __init__(self):
        raise TypeError("nn.init is a namespace of functions, not a class to instantiate")

    @staticmethod
    def uniform_(t, a=0.0, b=1.0):
        _check_tensor("uniform_", t)
        return _fill(t, get_rng().uniform(a, b, t.shape))

    @staticmethod
    def normal_(t, mean=0.0, std=1.0):
        _check_tensor("normal_", t)
        return _fill(t, get_rng().normal(mean, std, t.shape))

    @staticmethod
    def constant_(t, value):
        _check_tensor("constant_", t)
        return _fill(t, value)

    @staticmethod
    def zeros_(t):
        return init.constant_(t, 0.0)

    @staticmethod
    def ones_(t):
        return init.constant_(t, 1.0)

    @staticmethod
    def xavier_uniform_(t, gain=1.0):
        """Glorot: uniform(±gain·√(6 / (fan_in + fan_out))), fan_in = shape[1],
        fan_out = shape[0] (times the product of any further axes, as PyTorch)."""
        _check_tensor("xavier_uniform_", t)
        if t.ndim < 2:
            raise ValueError(f"init.xavier_uniform_: needs a tensor with at least 2 dimensions "
                             f"(fan in and fan out), got shape {t.shape}")
        receptive = math.prod(t.shape[2:])
        fan_in, fan_out = t.shape[1] * receptive, t.shape[0] * receptive
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return init.uniform_(t, -bound, bound)

    @staticmethod
    def orthogonal_(t, gain=1.0):
        """A (semi-)orthogonal matrix times ``gain``: the rows are orthonormal if there are
        fewer rows than columns, else the columns.  Tensors with more than two axes are
        flattened to (shape[0], rest)."""
        _check_tensor("orthogonal_", t)
        if t.ndim < 2:
            raise ValueError(f"init.orthogonal_: needs a tensor with at least 2 dimensions, "
                             f"got shape {t.shape}")
        rows = t.shape[0]
        cols = t.data.size // rows
        a = get_rng().standard_normal((rows, cols))
        if rows < cols:
            a = a.T
        q, r = np.linalg.qr(a)
        # NOTE: QR is unique only up to the signs of R's diagonal; fixing them makes q
        # uniformly (Haar) distributed instead of biased by the algorithm.
        d = np.sign(np.diag(r))
        d[d == 0] = 1.0
        q = q * d
        if rows < cols:
            q = q.T
        return _fill(t, gain * q.reshape(t.shape))

    @staticmethod
    def rnn_uniform_(t, hidden_size):
        """uniform(±1/√hidden_size): PyTorch's default for every RNN/GRU/LSTM weight and bias."""
        hidden_size = _positive_int("init.rnn_uniform_", "hidden_size", hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        return init.uniform_(t, -bound, bound)


# The Transformer layers (mg.nn.LayerNorm, ...) live in minigrad/transformer.py, which builds
# on the classes above: imported last, so that file finds them defined.
from minigrad.attention import generate_square_subsequent_mask  # noqa: E402
from minigrad.transformer import (  # noqa: E402
    GELU,
    LayerNorm,
    LearnedPositionalEmbedding,
    MultiheadAttention,
    SinusoidalPositionalEmbedding,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
