"""Channel couplings read from the model's own computation: the generic adapter.

``trace_couplings`` runs one forward pass of a random input under a ``TorchFunctionMode`` that sees every torch
function the model calls (``F.conv2d``, ``F.batch_norm``, ``torch.add``, ``Tensor.view``, ...). It does not need
the model to be symbolically traceable: Python control flow runs as usual, as in Torch-Pruning's dependency graph
(which reads the autograd graph instead; ``docs/tracing.md`` compares the two and torch.fx).

Every dimension of every tensor computed from the input gets a *class*; an op that keeps a dimension's meaning
(an activation, a BatchNorm, a pooling over space, an elementwise add of two tensors, a flatten of ``[N, C, 1, 1]``)
joins the classes of its input and output dimensions (union-find). A conv or linear starts a new class for its
output channels (it is that class's *producer*) and is a *consumer* of its input channels' class. What else touches
a class decides what may be done with it:

- one producer, consumers that are plain convs / linears, and only per-element ops, pooling and the producer's own
  BatchNorm in between: a prunable group with closed-form compensation. ``relu_after_norm`` when the ops are
  exactly one ReLU after that norm; ``scale_commutes`` when every op commutes with a positive per-channel scale.
- a depthwise conv with its own BatchNorm, each BatchNorm followed by the same ReLU or ReLU6 and nothing else on
  the way (an inverted-residual expansion): a closed-form group whose fit is taken after the depthwise conv
  (``ChannelGroup.depthwise``).
- any other depthwise conv, further BatchNorm, or a squeeze-excite gate (a ``[N, C, 1, 1]`` tensor multiplied in)
  on the way: the group's channels can still be removed together (those modules are ``aligned``), but with no
  closed form (``closed_form=False``; only ``method="prune"`` removes them).
- anything else leaves the class whole, with the reason kept for the notes: several producers (a residual
  stream), a concat, a split, a reshape that mixes the channels with another dimension (attention heads), a norm
  over the channels (LayerNorm, GroupNorm), a grouped conv, a module called twice, the model's output, an op this
  tracer does not know.

Nothing is guessed: an op not listed here blocks every class it touches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from .base import ChannelGroup, Consumer, Layer, ModelSpec

__all__ = ["GraphAdapter", "trace_couplings", "ADAPTER_DOCS"]

ADAPTER_DOCS = "docs/models.md, section 'Your own model: state its couplings by module name'"

# per-element ops that commute with a positive per-channel scale (f(t x) = t f(x))
_HOMOGENEOUS = {"relu", "leaky_relu", "neg", "abs"}
# per-element ops that do not
_ELEMENTWISE = {
    "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "relu6", "hardtanh", "elu", "selu", "celu",
    "mish", "softplus", "exp", "erf", "sqrt", "rsqrt", "square", "log", "reciprocal", "clamp", "clip",
    "clamp_min", "clamp_max", "pow", "softsign", "tanhshrink", "logsigmoid", "sin", "cos", "sign", "floor",
    "round", "ceil", "quick_gelu",
}  # fmt: skip
# no change at all (in eval mode)
_IDENTITY = {
    "contiguous", "clone", "detach", "float", "to", "type_as", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "requires_grad", "cpu", "cuda",
}  # fmt: skip
_BINARY = {
    "add": "add", "radd": "add", "iadd": "add", "sub": "sub", "rsub": "sub", "isub": "sub", "subtract": "sub",
    "mul": "mul", "rmul": "mul", "imul": "mul", "multiply": "mul", "div": "div", "truediv": "div",
    "itruediv": "div", "true_divide": "div", "divide": "div", "maximum": "max", "minimum": "min",
}  # fmt: skip
_POOL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "avg_pool1d",
    "avg_pool2d", "max_pool1d", "max_pool2d", "interpolate",
}  # fmt: skip
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "nanmean"}
_COMMUTING = _HOMOGENEOUS | {"pool", "mean", "sum", "amax", "amin", "max", "min", "reshape", "mul_scalar"}
# a data tensor's value turned into a Python value: what an ``if`` on the data, or ``.item()``, calls
_VALUE_READS = {"bool", "item", "tolist", "int", "float", "index", "nonzero", "equal", "is_nonzero"}
_WEIGHT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass
class _Class:
    """What is known about one set of joined dimensions."""

    size: int
    producers: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def absorb(self, other: _Class) -> None:
        for name in ("producers", "gates", "consumers", "norms", "depthwise", "ops", "blocked"):
            getattr(self, name).extend(getattr(other, name))


class _Classes:
    """Union-find over dimension classes."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[_Class] = []

    def new(self, size: int, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.info.append(_Class(size, blocked=[blocked] if blocked else []))
        return len(self.parent) - 1

    def find(self, c: int) -> int:
        while self.parent[c] != c:
            self.parent[c] = self.parent[self.parent[c]]
            c = self.parent[c]
        return c

    def __getitem__(self, c: int) -> _Class:
        return self.info[self.find(c)]

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.info[a].absorb(self.info[b])
        return a


@dataclass
class Trace:
    """The outcome of ``trace_couplings``: the spec, plus why each would-be group was left whole."""

    spec: ModelSpec
    left_whole: Counter
    ops: Counter


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.classes = _Classes()
        self.dims: dict[int, list[int]] = {}  # id(tensor) -> class of each dimension, for tensors computed from data
        self.keep: list[torch.Tensor] = []  # keeps recorded tensors alive, so that ids stay unique
        self.owner: dict[int, tuple[str, str]] = {}  # id(parameter or buffer) -> (module name, attribute)
        for mname, module in model.named_modules():
            for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if p is not None:
                    self.owner.setdefault(id(p), (mname, pname))
        self.modules = dict(model.named_modules())
        self.calls: Counter = Counter()  # module name -> times its weight was used
        self.order: list[str] = []  # weight layers in the order of their first call
        self.produced_by: dict[int, str] = {}  # id(output tensor of a conv / linear) -> module name
        self.norm_of: dict[str, str] = {}  # producer -> the BatchNorm applied directly to its output
        self.norm_input: dict[str, int] = {}  # BatchNorm -> id of the producer output it read
        self.uses: Counter = Counter()  # id(tensor) -> times it was read by an op
        self.ops: Counter = Counter()
        self.module_stack: list[str] = []
        self.last_op = ""
        self.read_sizes: dict[int, set[int]] = {}  # a size the model's code read -> the classes it was read from
        self.value_reads: list[tuple[str, str]] = []  # (op, module) where the code read a data tensor's value
        self.derived: list[str] = []  # modules that ran a conv / linear on a weight no Conv2d / Linear owns

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def data_dims(self, t: Any) -> list[int] | None:
        return self.dims.get(id(t)) if isinstance(t, torch.Tensor) else None

    def register(self, t: torch.Tensor, dims: list[int]) -> None:
        self.dims[id(t)] = dims
        self.keep.append(t)

    def fresh(self, t: torch.Tensor, blocked: str | None = None) -> list[int]:
        dims = [self.classes.new(s, blocked) for s in t.shape]
        self.register(t, dims)
        return dims

    def block(self, dims: list[int] | None, reason: str) -> None:
        for c in dims or ():
            self.classes[c].blocked.append(reason)

    def mark(self, dims: list[int], op: str) -> None:
        for c in {self.classes.find(c) for c in dims}:
            self.classes.info[c].ops.append(op)

    def module_of(self, t: Any) -> str | None:
        owner = self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None
        return owner[0] if owner is not None else None

    # --- the mode ----------------------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func)).strip("_")
        tensors_in = [a for a in _flat((args, kwargs)) if isinstance(a, torch.Tensor)]
        data_in = [t for t in tensors_in if id(t) in self.dims]
        outs = [t for t in _flat(out) if isinstance(t, torch.Tensor)]
        weight_op = name in ("conv2d", "linear") and self.module_of(_arg(args, kwargs, 1, "weight")) is not None
        if not data_in and not weight_op:
            return out  # parameters, shapes, constants: not the data's path
        if name in ("get", "size") and data_in and self.shape_read(name, func, args, kwargs):
            return out
        if not outs and name != "setitem":
            if name in _VALUE_READS and data_in:  # the model's Python code looks at the data: it may branch on it
                self.value_reads.append((name, self.module_stack[-1] if self.module_stack else ""))
            return out  # .ndim, .item() and the like
        self.last_op = name
        self.ops[name] += 1
        for t in data_in:
            self.uses[id(t)] += 1
        try:
            self.dispatch(name, args, kwargs, data_in, outs)
        except Exception as e:  # noqa: BLE001 - an op whose arguments this tracer misread: block, never guess
            for t in data_in:
                self.block(self.dims[id(t)], f"{name} ({type(e).__name__})")
            for t in outs:
                if id(t) not in self.dims:
                    self.fresh(t, name)
        return out

    def shape_read(self, name: str, func, args, kwargs) -> bool:
        """``x.shape`` / ``x.size(d)`` read by the model's code: remember which classes' sizes were read. A size
        read and then written into a reshape of other dimensions (LambdaLayer: ``B, C, H, W = x.shape`` then
        ``out.reshape(B, C, H, W)`` with C made of heads x values) ties them, and ``reshape`` leaves them whole."""
        x = args[0]
        if name == "get" and getattr(getattr(func, "__self__", None), "__name__", None) != "shape":
            return False
        dims = self.dims.get(id(x))
        d = _arg(args, kwargs, 1, "dim") if name == "size" else None
        if dims is None or not isinstance(d, (int, type(None))):
            return True
        for i in range(x.ndim) if d is None else [d % x.ndim]:
            if x.shape[i] > 1:
                self.read_sizes.setdefault(int(x.shape[i]), set()).add(dims[i])
        return True

    def dispatch(self, name, args, kwargs, data_in, outs) -> None:  # noqa: C901 - one branch per op family
        x = args[0] if args else None
        if name in _IDENTITY or name in _HOMOGENEOUS or name in _ELEMENTWISE:
            if _is_dropout_in_training(name, args, kwargs):
                raise RuntimeError("dropout in training mode")
            src = self.data_dims(x) if self.data_dims(x) is not None else self.dims[id(data_in[0])]
            for t in outs:
                self.carry_same(t, src)
            if name not in _IDENTITY:
                self.mark(src, "relu6" if name == "hardtanh" and _hardtanh_bounds(args, kwargs) == (0, 6) else name)
        elif name in _BINARY:
            self.binary(_BINARY[name], args, kwargs, outs)
        elif name == "conv2d":
            self.conv(args, kwargs, outs[0])
        elif name == "linear":
            self.linear(args, kwargs, outs[0])
        elif name == "batch_norm":
            self.batch_norm(args, kwargs, outs[0])
        elif name in ("layer_norm", "rms_norm", "group_norm"):
            self.norm_over(name, args, kwargs, outs[0])
        elif name in _POOL or name.startswith(("adaptive_", "avg_pool", "max_pool")):
            self.pool(x, outs)
        elif name in _REDUCE:
            self.reduce(name, args, kwargs, outs)
        elif name in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"):
            self.reshape(x, outs[0], _target_shape(args, kwargs) if name in ("view", "reshape") else None)
        elif name in ("permute", "transpose", "swapaxes", "t", "movedim"):
            self.permute(name, args, kwargs, outs[0])
        elif name == "getitem":
            self.getitem(x, args[1], outs[0])
        elif name in ("cat", "concat", "concatenate"):
            self.cat(args, kwargs, outs[0])
        elif name in ("pad",):
            self.pad(x, outs[0])
        else:
            self.unknown(name, data_in, outs)

    def unknown(self, name: str, data_in, outs) -> None:
        for t in data_in:
            self.block(self.dims[id(t)], name)
        for t in outs:
            self.fresh(t, name)

    def carry_same(self, t: torch.Tensor, src: list[int]) -> None:
        if id(t) in self.dims and self.dims[id(t)] is not src:  # in place: the same tensor, joined
            for a, b in zip(self.dims[id(t)], src, strict=True):
                self.classes.union(a, b)
        elif id(t) not in self.dims:
            self.register(t, list(src))

    def binary(self, op: str, args, kwargs, outs) -> None:  # noqa: C901 - scalar, gate, broadcast, in place
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        da, db = self.data_dims(a), self.data_dims(b)
        if da is None and db is None:
            return
        if da is None:  # a constant first (2 * x, bias - x): make a the data operand
            a, b, da, db = b, a, db, da
        out = outs[0]
        if db is None:  # the other operand is a number or a constant tensor (a parameter, a buffer)
            const = b if isinstance(b, torch.Tensor) else None
            if const is not None and const.numel() > 1:
                # a learned per-channel tensor (layer scale, position embedding): these dims are not ours to slice
                for c, s in zip(reversed(da), reversed(const.shape), strict=False):
                    if s > 1:
                        self.classes[c].blocked.append(f"{op} with a constant tensor")
            self.carry_out(out, da, a)
            self.mark(da, f"{op}_scalar")
            return
        # two data tensors: join the dimensions they share, from the right (broadcasting)
        small_b = b.numel() < a.numel()
        if not small_b and a.numel() < b.numel():
            a, b, da, db = b, a, db, da
            small_b = True
        if small_b and op == "mul":  # a gate multiplied in (squeeze-excite): its producers are aligned
            for c in {self.classes.find(c) for c in db}:
                info = self.classes.info[c]
                info.gates.extend(info.producers)
                info.producers.clear()
        elif small_b:
            self.block(db, f"broadcast {op}")
        offset = a.ndim - b.ndim
        for i, s in enumerate(b.shape):
            if s == a.shape[offset + i]:
                self.classes.union(da[offset + i], db[i])
        self.carry_out(out, da, a)
        if op != "mul" or not small_b:
            self.mark(da, "add" if op in ("add", "sub") else op)

    def carry_out(self, out: torch.Tensor, src: list[int], like: torch.Tensor) -> None:
        if tuple(out.shape) == tuple(like.shape):
            self.carry_same(out, src)
        else:
            self.fresh(out, "broadcast")
            self.block(src, "broadcast")

    def conv(self, args, kwargs, out: torch.Tensor) -> None:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        groups = int(_arg(args, kwargs, 6, "groups", 1))
        name = self.module_of(w)
        module = self.modules.get(name) if name else None
        dx = self.data_dims(x)
        if dx is None:  # the first conv: its input is the image; only its output matters
            dx = self.fresh(x)
        self.block(dx[2:], "conv kernel")
        if not isinstance(module, nn.Conv2d) or module.weight is not w:
            self.derived.append((self.module_stack[-1] if self.module_stack else "") or "(top level)")
            self.block(dx[1:2], "conv with a derived weight")
            self.fresh(out, "conv with a derived weight")
            return
        self.count(name)
        d_out = [dx[0], *([0] * (out.ndim - 1))]
        c_in = x.shape[1]
        if groups == 1:
            self.classes[dx[1]].consumers.append(name)
            d_out[1] = self.classes.new(out.shape[1])
            self.classes[d_out[1]].producers.append(name)
        elif groups == c_in == out.shape[1]:  # depthwise: channel i in, channel i out
            self.classes[dx[1]].depthwise.append(name)
            d_out[1] = dx[1]
        else:
            self.block(dx[1:2], "grouped conv")
            d_out[1] = self.classes.new(out.shape[1], "grouped conv")
        for i in range(2, out.ndim):
            d_out[i] = self.classes.new(out.shape[i])
        self.register(out, d_out)
        self.produced_by[id(out)] = name

    def linear(self, args, kwargs, out: torch.Tensor) -> None:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        name = self.module_of(w)
        module = self.modules.get(name) if name else None
        dx = self.data_dims(x)
        if dx is None:
            dx = self.fresh(x)
        if not isinstance(module, nn.Linear) or module.weight is not w:
            self.derived.append((self.module_stack[-1] if self.module_stack else "") or "(top level)")
            self.block(dx[-1:], "linear with a derived weight")
            self.fresh(out, "linear with a derived weight")
            return
        self.count(name)
        self.classes[dx[-1]].consumers.append(name)
        c = self.classes.new(out.shape[-1])
        self.classes[c].producers.append(name)
        self.register(out, [*dx[:-1], c])
        self.produced_by[id(out)] = name

    def count(self, name: str) -> None:
        if not self.calls[name]:
            self.order.append(name)
        self.calls[name] += 1

    def batch_norm(self, args, kwargs, out: torch.Tensor) -> None:
        x = args[0]
        dx = self.dims[id(x)]
        refs = [_arg(args, kwargs, i, k) for i, k in ((3, "weight"), (1, "running_mean"))]
        name = next((self.module_of(r) for r in refs if self.module_of(r) is not None), None)
        training = bool(_arg(args, kwargs, 5, "training", False))
        module = self.modules.get(name) if name else None
        if module is None or training or getattr(module, "weight", None) is None:
            self.block(dx[1:2], "batch norm without running statistics or affine weights")
        else:
            self.count(name)
            self.classes[dx[1]].norms.append(name)
            if id(x) in self.produced_by:
                self.norm_of.setdefault(self.produced_by[id(x)], name)
                self.norm_input[name] = id(x)
        self.carry_same(out, dx)

    def norm_over(self, name: str, args, kwargs, out: torch.Tensor) -> None:
        x = args[0]
        dx = self.dims[id(x)]
        if name == "group_norm":
            self.block(dx[1:2], "group norm")
        else:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            k = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            self.block(dx[-k:], f"{name} over the channels")
        self.carry_same(out, dx)

    def pool(self, x: torch.Tensor, outs) -> None:
        dx = self.dims[id(x)]
        out = outs[0]
        self.block(dx[2:], "pooling window")
        self.register(out, [*dx[:2], *(self.classes.new(s) for s in out.shape[2:])])
        self.mark(dx[1:2], "pool")
        for extra in outs[1:]:  # pooling indices
            self.fresh(extra, "pooling indices")

    def reduce(self, name: str, args, kwargs, outs) -> None:
        x = args[0]
        dx = self.dims[id(x)]
        dim = _arg(args, kwargs, 1, "dim")
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        if dim is None or isinstance(dim, torch.Tensor):
            return self.unknown(f"{name} over all dimensions", [x], outs)
        dims = {d % x.ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        self.block([dx[d] for d in dims], f"{name} over the dimension")
        kept = [dx[d] for d in range(x.ndim) if d not in dims]
        out = outs[0]
        if keepdim:
            self.register(out, [dx[d] if d not in dims else self.classes.new(1) for d in range(x.ndim)])
        else:
            self.register(out, kept)
        self.mark(kept, name)
        for extra in outs[1:]:
            self.fresh(extra, "indices")

    def reshape(self, x: torch.Tensor, out: torch.Tensor, target: list | None) -> None:
        dx = self.dims[id(x)]
        mapping = _reshape_map(tuple(x.shape), tuple(out.shape))
        if target is not None and len(target) == out.ndim:
            find = self.classes.find
            for j, size in enumerate(target):
                if size <= 1:
                    continue
                read = {find(c) for c in self.read_sizes.get(size, ())}
                carried = find(dx[mapping[j]]) if j in mapping else None
                for c in read - {carried}:  # a size read elsewhere, written into this reshape
                    self.classes.info[c].blocked.append("its size is read and reused in a reshape")
                if carried is not None and carried not in read:
                    # written out, not read at run time: a constant of the module, which would not follow pruning
                    self.classes.info[carried].blocked.append("reshape to a fixed size")
        d_out = []
        for j, s in enumerate(out.shape):
            i = mapping.get(j)
            d_out.append(dx[i] if i is not None else self.classes.new(s, "reshape"))
        carried = set(mapping.values())
        self.block([c for i, c in enumerate(dx) if i not in carried and x.shape[i] > 1], "reshape")
        self.register(out, d_out)
        self.mark([dx[i] for i in carried], "reshape")

    def permute(self, name: str, args, kwargs, out: torch.Tensor) -> None:
        x = args[0]
        dx = self.dims[id(x)]
        n = x.ndim
        if name == "permute":
            order = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            order = [d % n for d in (order or kwargs.get("dims"))]
        elif name == "t":
            order = [1, 0] if n == 2 else list(range(n))
        elif name == "movedim":
            src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
            rest = [d for d in range(n) if d != src % n]
            rest.insert(dst % n, src % n)
            order = rest
        else:
            a, b = _arg(args, kwargs, 1, "dim0") % n, _arg(args, kwargs, 2, "dim1") % n
            order = list(range(n))
            order[a], order[b] = order[b], order[a]
        self.register(out, [dx[i] for i in order])

    def getitem(self, x: torch.Tensor, index: Any, out: torch.Tensor) -> None:
        dx = self.dims[id(x)]
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            k = index.index(Ellipsis)
            fill = x.ndim - (len(index) - 1 - sum(i is None for i in index))
            index = index[:k] + (slice(None),) * fill + index[k + 1 :]
        d_out: list[int] = []
        i = 0
        for item in index:
            if item is None:
                d_out.append(self.classes.new(1))
            elif isinstance(item, int):
                self.block(dx[i : i + 1], "indexing")
                i += 1
            elif isinstance(item, slice) and item == slice(None):
                d_out.append(dx[i])
                i += 1
            elif isinstance(item, slice):
                self.block(dx[i : i + 1], "slicing")
                d_out.append(self.classes.new(out.shape[len(d_out)], "slicing"))
                i += 1
            else:
                return self.unknown("advanced indexing", [x], [out])
        d_out.extend(dx[i:])
        if len(d_out) != out.ndim:
            return self.unknown("indexing", [x], [out])
        self.register(out, d_out)

    def cat(self, args, kwargs, out: torch.Tensor) -> None:
        tensors = args[0]
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.ndim
        d_out = [self.classes.new(s) for s in out.shape]
        for t in tensors:
            dt = self.data_dims(t)
            if dt is None:  # a constant joined in (ViT's class token): its other dimensions are not ours to slice
                for k, c in enumerate(d_out):
                    if k != dim and isinstance(t, torch.Tensor) and t.shape[k] > 1:
                        self.classes[c].blocked.append("concat with a constant")
                continue
            self.block(dt[dim : dim + 1], "concat")
            for k, c in enumerate(dt):
                if k != dim:
                    self.classes.union(d_out[k], c)
        self.classes[d_out[dim]].blocked.append("concat")
        self.register(out, d_out)

    def pad(self, x: torch.Tensor, out: torch.Tensor) -> None:
        dx = self.dims[id(x)]
        d_out = []
        for i, (a, b) in enumerate(zip(x.shape, out.shape, strict=True)):
            if a == b:
                d_out.append(dx[i])
            else:
                self.block(dx[i : i + 1], "padding")
                d_out.append(self.classes.new(b, "padding"))
        self.register(out, d_out)


def _arg(args, kwargs, i: int, key: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


def _flat(obj: Any) -> list:
    if isinstance(obj, (list, tuple)):
        return [x for o in obj for x in _flat(o)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _flat(o)]
    return [obj]


def _target_shape(args, kwargs) -> list | None:
    """The sizes a ``view`` / ``reshape`` asked for (``x.view(a, b)``, ``x.view((a, b))``, ``torch.reshape(x, s)``)."""
    rest = args[1:] if len(args) > 1 else (kwargs.get("shape") or kwargs.get("size") or ())
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = rest[0]
    sizes = [int(r) if isinstance(r, (int, torch.SymInt)) else None for r in rest]
    return None if any(r is None for r in sizes) else sizes


def _is_dropout_in_training(name: str, args, kwargs) -> bool:
    return "dropout" in name and bool(_arg(args, kwargs, 2, "training", False))


def _reshape_map(src: tuple[int, ...], dst: tuple[int, ...]) -> dict[int, int]:
    """Output dim -> input dim for the dimensions a reshape keeps whole (same size, nothing merged or split)."""
    mapping: dict[int, int] = {}
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] == 1 and (dst[j] != 1):
            i += 1
            continue
        if dst[j] == 1 and src[i] != 1:
            j += 1
            continue
        if src[i] == dst[j]:
            if src[i] != 1:
                mapping[j] = i
            i += 1
            j += 1
            continue
        # a merge or a split: skip to the next point where the products agree
        pi, pj = src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                pi *= src[i]
                i += 1
            else:
                pj *= dst[j]
                j += 1
    return mapping


def trace_couplings(model: nn.Module, input_size: tuple[int, ...] | None = None) -> Trace:
    """Run ``model`` on a random input and derive its ``ModelSpec`` (see the module docstring).

    A model whose code reads a tensor's value into Python (``if x.mean() > 0``, ``.item()``) may branch on data:
    one trace sees one path. It is traced again on another input; if the two runs differ, or a conv / linear was
    never called, the model is refused (an untraced branch would break on the widths chosen from the traced one).
    """
    from ..profile import default_input_size, input_device_dtype

    size = tuple(input_size) if input_size is not None else default_input_size(model)
    device, dtype = input_device_dtype(model)
    x = torch.randn(1, *size, device=device, dtype=dtype)
    rec, out = _record(model, x)
    for t in _flat(out):  # every tensor the model returns, in tuples, lists and dicts (ModelOutput) alike
        if isinstance(t, torch.Tensor) and id(t) in rec.dims:
            rec.block(rec.dims[id(t)], "model output")
    trace = _spec_from(model, rec)
    if rec.value_reads:
        _check_one_path(model, rec, trace, 3 * torch.randn(1, *size, device=device, dtype=dtype).abs() + 1)
    return trace


def _check_one_path(model: nn.Module, rec: _Recorder, trace: Trace, other: torch.Tensor) -> None:
    """Refuse a model whose data-dependent branches the trace cannot all have seen; note it otherwise."""
    where = ", ".join(sorted({f"{name} in {module or '(top level)'}" for name, module in rec.value_reads})[:3])
    again, _ = _record(model, other)
    uncalled = [n for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES) and n not in rec.calls]
    if _path(again) != _path(rec) or uncalled:
        what = f"{uncalled[0]} never ran" if uncalled and _path(again) == _path(rec) else "two inputs ran different ops"
        raise UnsupportedModelError(
            f"{type(model).__name__} branches on its data ({where}: a tensor's value read in Python) and one trace "
            f"cannot see every path ({what}); widths chosen on one path would break the others. Describe it with a "
            f"hand-written adapter instead: see {ADAPTER_DOCS}"
        )
    note = (
        f"the model reads tensor values in Python ({where}); two random inputs took the same path and every "
        "conv / linear ran, so the traced couplings are used"
    )
    trace.spec = replace(trace.spec, notes=(*trace.spec.notes, note))


def _path(rec: _Recorder) -> tuple:
    """What a trace ran: the weight layers in order, how often each module ran, and how often each op ran."""
    return tuple(rec.order), dict(rec.calls), dict(rec.ops)


def _record(model: nn.Module, x: torch.Tensor) -> tuple[_Recorder, Any]:
    """One forward pass of ``model`` on ``x`` under a recorder; (the recorder, the model's output)."""
    rec = _Recorder(model)
    hooks = _stack_hooks(model, rec)
    was_training = model.training
    model.eval()
    try:
        rec.fresh(x)
        with torch.no_grad(), rec:
            out = model(x)
    except Exception as e:
        where = rec.module_stack[-1] if rec.module_stack else "(top level)"
        kind = type(rec.modules.get(where, model)).__name__
        raise UnsupportedModelError(
            f"udfc_hub could not trace {type(model).__name__}: its forward pass on a random {tuple(x.shape)} input "
            f"stopped in module {where!r} ({kind}) after op {rec.last_op or '(none)'!r}: {type(e).__name__}: "
            f"{str(e)[:300]}. A hand-written adapter can describe such a model instead: see {ADAPTER_DOCS}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rec, out


def _stack_hooks(model: nn.Module, rec: _Recorder) -> list:
    hooks = []
    for name, module in model.named_modules():

        def pre(_m, _a, name=name):
            rec.module_stack.append(name)

        def post(_m, _a, _o):
            if rec.module_stack:
                rec.module_stack.pop()

        hooks.append(module.register_forward_pre_hook(pre))
        hooks.append(module.register_forward_hook(post))  # not on an exception: the stack shows where
    return hooks


def _spec_from(model: nn.Module, rec: _Recorder) -> Trace:  # noqa: C901 - the rules of the module docstring
    modules = rec.modules
    weight_layers = [n for n in rec.order if isinstance(modules[n], _WEIGHT_TYPES)]
    weight_layers += [n for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES) and n not in rec.calls]
    norm_inputs = rec.norm_input

    def own_norm(producer: str) -> str | None:
        norm = rec.norm_of.get(producer)
        if norm is None or rec.calls[norm] != 1 or rec.calls[producer] != 1:
            return None
        return norm if rec.uses[norm_inputs[norm]] == 1 else None  # the pre-norm output is read by nothing else

    layers = tuple(Layer(n, own_norm(n)) for n in weight_layers)
    groups: list[ChannelGroup] = []
    left: Counter = Counter()
    linear_fit: Counter = Counter()  # closed-form groups without a ReLU after their norm, by what lies between
    seen: set[int] = set()
    for c in range(len(rec.classes.parent)):
        root = rec.classes.find(c)
        if root in seen:
            continue
        seen.add(root)
        info = rec.classes.info[root]
        if not info.producers or not info.consumers:
            continue
        reason = _why_whole(info, rec, modules)
        if reason is not None:
            left[reason] += 1
            continue
        producer = info.producers[0]
        norm = own_norm(producer)
        extra_norms = [n for n in dict.fromkeys(info.norms) if n != norm]
        aligned = tuple(dict.fromkeys(extra_norms + info.depthwise + info.gates))
        ops = set(info.ops)
        dw = _depthwise_between(info, norm, rec)
        groups.append(
            ChannelGroup(
                producer=Layer(producer, norm),
                consumers=tuple(Consumer(n) for n in dict.fromkeys(info.consumers)),
                aligned=aligned,
                scale_commutes=not aligned and ops <= _COMMUTING,
                relu_after_norm=dw is not None or (norm is not None and not aligned and info.ops == ["relu"]),
                closed_form=dw is not None or not aligned,
                depthwise=dw,
                relu_cap=6.0 if dw is not None and info.ops[0] == "relu6" else None,
            )
        )
        if not groups[-1].relu_after_norm and groups[-1].closed_form:
            linear_fit[", ".join(sorted(ops)) or "no activation"] += 1
    position = {n: i for i, n in enumerate(weight_layers)}
    groups.sort(key=lambda g: position[g.producer.name])
    notes = []
    if left:
        notes.append(
            "channels left whole: "
            + ", ".join(f"{n} group(s): {reason}" for reason, n in sorted(left.items(), key=lambda kv: -kv[1]))
        )
    if linear_fit:
        notes.append(
            "compensated with the paper's linear fit (no ReLU after a BatchNorm, so no moment model): "
            + ", ".join(f"{n} group(s) with {what}" for what, n in linear_fit.most_common())
        )
    if rec.derived:
        shown = ", ".join(sorted(set(rec.derived))[:3])
        notes.append(
            f"{len(rec.derived)} conv / linear call(s) in {shown} use a weight that is no Conv2d / Linear module's "
            "own (F.conv2d(x, self.weight) and the like): their channels are left whole, and those weights are "
            "neither pruned nor quantized"
        )
    open_ = sum(not g.closed_form for g in groups)
    if open_:
        notes.append(
            f"{open_} group(s) pass through a gate, a further norm or a depthwise conv not between two BatchNorm + "
            "ReLU/ReLU6 pairs (no closed form): udfc, udfc+ and nm leave them whole; method='prune' removes them "
            "without compensation"
        )
    spec = ModelSpec(family=f"traced ({type(model).__name__})", layers=layers, groups=tuple(groups), notes=tuple(notes))
    return Trace(spec=spec, left_whole=left, ops=rec.ops)


def _why_whole(info: _Class, rec: _Recorder, modules: dict[str, nn.Module]) -> str | None:
    if info.blocked:
        return Counter(info.blocked).most_common(1)[0][0]
    if len(info.producers) > 1:
        return "several producers (a residual stream)"
    names = [*info.producers, *info.consumers, *info.gates, *info.depthwise, *info.norms]
    if any(rec.calls[n] != 1 for n in names):
        return "a module called more than once"
    for n in [*info.producers, *info.consumers, *info.gates]:
        m = modules[n]
        if not isinstance(m, _WEIGHT_TYPES) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            return f"{type(m).__name__} that udfc_hub cannot resize"
    return None


def _hardtanh_bounds(args, kwargs) -> tuple[float, float]:
    """``F.hardtanh``'s (min_val, max_val): (0, 6) is ``nn.ReLU6``."""
    return float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0))


def _depthwise_between(info: _Class, norm: str | None, rec: _Recorder) -> Layer | None:
    """The depthwise conv and its BatchNorm when a class runs producer -> norm -> act -> depthwise -> norm -> act
    -> consumers, with one act (ReLU or ReLU6) both times and nothing else on the way: its fit has a closed form
    one conv later (``ChannelGroup.depthwise``)."""
    if norm is None or len(info.depthwise) != 1 or info.gates or info.ops not in (["relu"] * 2, ["relu6"] * 2):
        return None
    dw = info.depthwise[0]
    dw_norm = rec.norm_of.get(dw)
    if [n for n in dict.fromkeys(info.norms) if n != norm] != [dw_norm]:
        return None
    return Layer(dw, dw_norm)


class GraphAdapter:
    """The fallback adapter: any model whose forward pass can run on a random input (tried after the hand-written
    ones)."""

    family = "any model (channel couplings traced from its forward pass)"
    examples = "regnet*, resnext*, seresnet*, mobilenetv3*, densenet*, swin*, deit*, beit*, efficientvit*, ..."

    def matches(self, model: nn.Module) -> bool:
        return any(isinstance(m, _WEIGHT_TYPES) for m in model.modules())

    def describe(self, model: nn.Module) -> ModelSpec:
        return trace_couplings(model).spec
