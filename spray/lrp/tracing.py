"""Automatic canonisation by tracing: the user's model as a graph whose every operation has an LRP rule.

``canonize(model, x, composite, start)`` traces the model's forward with ``torch.fx`` into a new
``GraphModule`` (the user's model object is never modified) and rewrites that copy:

- a functional operation that needs a rule of its own becomes a leaf module of spray.lrp.functional
  (additions → :class:`Addition`, means/sums/average pooling → :class:`Pooling`, scaling by a constant →
  :class:`Scaling`, elementwise activations → :class:`Activation`, a product with a sigmoid gate →
  :class:`Gating`, layer and group normalisation → :class:`Normalization`; a concatenation with a
  constant and fused attention → spray.lrp.transformer's :class:`Concatenation` and
  :class:`ScaledDotProductAttention`), in-place ones (``+=``, ``x.add_()``, ``x.mul_()``) as their
  out-of-place equivalents with later uses of the modified tensor redirected. Its inputs are the
  relevance-carrying tensors only; constants (parameters, buffers, detached tensors, a class token, a mask)
  are fixed values of the module, and what its rule does not pass to the inputs is absorbed;
- operations whose gradient *is* their LRP rule (reshapes, views, permutes, indexing, concatenation, ReLU
  gating, max pooling, padding) stay functional: autograd carries relevance through them;
- a BatchNorm whose input is the output of a Linear/Conv used nowhere else is folded into a new copy of
  that layer, wherever the edge is (inside blocks, on downsample branches); an ``nn.Identity`` is
  registered under the BatchNorm's name, so module names keep their meaning;
- a leaf module that computes in place (``nn.ReLU(inplace=True)``) is replaced by a copy that does not;
- any other operation on input-dependent floating-point tensors is refused with an
  :class:`~spray.errors.UnsupportedLayerError` naming the graph node, the operation and the source line.

Leaf modules (those the composite has a rule for, by name, by type or by default) are not traced into, and
the engine hooks them as in an untraced model. A forward that ``torch.fx`` cannot trace (data- or
shape-dependent Python control flow, ...) yields ``None`` and an :class:`UntracedModelWarning`; the engine
then hooks the model itself (docs/lrp.md, "Tracing"). :class:`TraceCache` keeps an attributor's copies
while the model is unchanged.
"""

from __future__ import annotations

import copy
import operator
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_leaves

from spray.errors import UnsupportedLayerError
from spray.lrp.canonizers import foldable, folded_parameters
from spray.lrp.composites import Composite
from spray.lrp.functional import (
    Activation, Addition, Gating, Normalization, Pooling, Scaling, Slot, TracedOperation,
)
from spray.lrp.layers import AVGPOOL_LAYERS, MAXPOOL_LAYERS
from spray.lrp.transformer import (
    Concatenation,
    ScaledDotProductAttention,
    traceable_forward,
    wrap_multihead_attention,
)


#: torch.fx patches ``torch.nn.Module.__call__`` process-wide while it traces, which would capture the
#: forward of an attribution running in another thread (dask workers with several threads): LRP calls and
#: :func:`feature_layer` of one process run one at a time.
ONE_AT_A_TIME = threading.Lock()


class UntracedModelWarning(UserWarning):
    """The model's forward could not be traced; LRP hooks its modules only (functional additions unexplained)."""


# Operations whose gradient hands relevance on exactly as LRP does: moved (reshapes, indexing,
# concatenation, padding), routed to the winner (max pooling) or gated (ReLU; a unit it zeroes holds no
# relevance under any rule).
_ROUTING_FUNCTIONS = {
    operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.t, torch.squeeze,
    torch.unsqueeze, torch.unflatten, torch.movedim, torch.cat, torch.concat, torch.concatenate, torch.stack,
    torch.split, torch.chunk, torch.unbind, torch.narrow, torch.select, torch.flip, torch.roll, torch.clone, torch.relu,
    torch.relu_, F.relu, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.dropout, F.dropout1d, F.dropout2d, F.pad,
}
_ROUTING_METHODS = {
    "flatten", "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "squeeze", "unsqueeze",
    "unflatten", "movedim", "contiguous", "expand", "expand_as", "repeat", "split", "chunk", "unbind", "narrow",
    "select", "flip", "roll", "clone", "to", "type", "float", "double", "half", "relu", "relu_",
}

_MAX_POOLING = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                F.adaptive_max_pool3d}

#: Their result is a constant to LRP, as to autograd.
_DETACH = {torch.detach, "detach"}

#: What may stand between a gate and the product it gates (``s.view(b, c, 1, 1).expand_as(x)``, ``s[:, :, None]``).
_RESHAPES = {operator.getitem, torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze, "flatten", "view",
             "view_as", "reshape", "reshape_as", "unsqueeze", "squeeze", "expand", "expand_as"}
#: Gates: a product of two relevance-carrying factors one of which is a gate's output is a :class:`Gating`.
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", "sigmoid_"}
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)

_OPERATIONS: dict[Any, type[TracedOperation]] = {
    **dict.fromkeys([operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
                     torch.subtract, "add", "add_", "sub", "sub_", "subtract"], Addition),
    **dict.fromkeys([torch.mean, torch.sum, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, "mean", "sum"], Pooling),
    **dict.fromkeys([operator.mul, operator.imul, operator.truediv, operator.itruediv, operator.neg, torch.mul,
                     torch.multiply, torch.div, torch.divide, torch.neg, "mul", "mul_", "div", "div_", "neg",
                     "multiply", "divide"], Scaling),
    **dict.fromkeys([F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.relu6, F.hardtanh, F.softplus,
                     F.hardswish, F.mish, F.hardsigmoid, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, "sigmoid",
                     "sigmoid_", "tanh", "tanh_"], Activation),
    **dict.fromkeys([F.layer_norm, F.group_norm], Normalization),
    F.scaled_dot_product_attention: ScaledDotProductAttention,
}

#: Operations with several relevance-carrying inputs (the others are refused unless one input carries).
_MANY_INPUTS = {Addition, Concatenation, ScaledDotProductAttention}
_CONCATENATIONS = {torch.cat, torch.concat, torch.concatenate}

#: Normalisation modules traced into (unless the composite maps them by name or type), so that their
#: ``F.layer_norm`` / ``F.group_norm`` becomes a :class:`Normalization` wherever it is called: also inside a
#: subclass whose forward normalises another dimension (torchvision's channels-first ``LayerNorm2d``).
_TRACED_NORMS = (nn.LayerNorm, nn.GroupNorm)

_COMMUTATIVE = {operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_", "multiply"}

#: In-place operations and their out-of-place equivalents (a traced module's inputs must stay unmodified).
_OUT_OF_PLACE: dict[Any, Any] = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, "add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div",
    "sigmoid_": "sigmoid", "tanh_": "tanh",
}

#: Frames from these directories are not the user's code.
_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


@dataclass
class Traced:
    """A canonised copy of a model: ``module`` to run and hook, ``start`` the name (in ``module``) of the
    module whose output is the requested start, None for the model output or a start that never runs;
    ``folded`` maps each layer a BatchNorm was folded into to that BatchNorm's name."""

    module: fx.GraphModule
    start: str | None
    folded: dict[str, str]


class TraceCache:
    """The canonised copies of the last model an attributor explained, made once and reused while the model
    is as it was (:func:`model_state`): one trace per run, not per batch. One copy per start module, input
    kind (dtype, device, shape of a sample) and set of leaves (what the composite maps rules to)."""

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self._state: tuple = ()
        self._traces: dict[tuple, Traced | None] = {}

    def canonize(self, model: nn.Module, x: Tensor, composite: Composite, start: str | None) -> Traced | None:
        """:func:`canonize`'s result, from the cache where the model has not changed since it was made."""
        state = model_state(model)
        if model is not self._model or state != self._state:
            self._model, self._state, self._traces = model, state, {}
        key = (start, x.dtype, x.device, tuple(x.shape[1:]), _leaves(model, composite))
        if key not in self._traces:
            self._traces[key] = canonize(model, x, composite, start)
        return self._traces[key]


#: The attributes every ``nn.Module`` has (hooks, the parameter and submodule tables, ``training``).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def model_state(model: nn.Module) -> tuple:
    """What a canonised copy of ``model`` depends on, cheap to compute and compare: per module its name,
    identity, class and forward, its own attributes (numbers, strings and tuples of them by value, other
    objects by identity) and its parameters and buffers by identity, storage, dtype, shape and version
    counter. PyTorch bumps a tensor's version counter on every in-place change (an optimizer step,
    ``load_state_dict``), so changed weights change the state: the folded BatchNorms are computed anew."""
    return tuple((name, id(module), type(module), type(module).forward,
                  tuple((key, _frozen_value(value)) for key, value in vars(module).items()
                        if key not in _MODULE_INTERNALS),
                  tuple((key, _frozen_value(t)) for table in (module._parameters, module._buffers)
                        for key, t in table.items()))
                 for name, module in model.named_modules(remove_duplicate=False))


def _frozen_value(value: Any) -> Any:
    """``value`` as :func:`model_state` compares it."""
    if value is None or isinstance(value, bool | int | str | bytes):
        return value
    if isinstance(value, float):
        return repr(value)  # nan == nan
    if isinstance(value, Tensor):
        return (id(value), value.data_ptr(), value._version, value.dtype, value.device, tuple(value.shape))
    if isinstance(value, tuple | list):
        return (type(value), tuple(map(_frozen_value, value)))
    return ("object", id(value))


def _leaves(model: nn.Module, composite: Composite) -> frozenset[int]:
    """The identities of the modules the composite has a rule for: the trace stops at them."""
    return frozenset(id(m) for name, m in model.named_modules()
                     if name and composite.rule(name, m, False) is not None)


def canonize(model: nn.Module, x: Tensor, composite: Composite, start: str | None) -> Traced | None:
    """The traced, rewritten copy of ``model`` for input ``x``, or None (with a warning) if fx cannot trace it.

    ``x`` (two of its samples) runs once through the copy to tell the relevance-carrying tensors from
    constants and other values (sizes, ...).
    A model that is a single leaf module needs no trace: None, without a warning.
    """
    if next(model.children(), None) is None:
        return None
    tracer = _Tracer(_leaves(model, composite))
    try:
        graph = tracer.trace(model)
    except UnsupportedLayerError:  # traced far enough to know: the model holds what LRP does not explain
        raise
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError...) on untraceable code
        warnings.warn(_untraced_message(model, exc), UntracedModelWarning, stacklevel=5)
        return None
    module = fx.GraphModule(model, graph, class_name=type(model).__name__)
    user = {id(m) for m in model.modules()}
    wrap_multihead_attention(module)
    carries = _carries(module, x[:2].clone())  # a clone: the model may modify its input in place
    replaced = _rewrite_operations(module, carries, user, {name for name, _ in model.named_modules()})
    # A module traced through (a LayerNorm) may end in an operation just replaced by its rule's module.
    outputs = {name: replaced.get(node, node) for name, node in tracer.outputs.items()}
    folded = _fold_batchnorms(module, user, outputs, start)
    _out_of_place(module, user)
    start_name = None if start is None else _start(module, outputs.get(start), start, user)
    module.graph.lint()
    module.recompile()
    return Traced(module, start_name, folded)


def feature_layer(model: nn.Module, x: Tensor) -> str | None:
    """The module whose output is the last feature map of ``model``'s forward, the one its head reads.

    In the traced forward, the head starts where a value of shape (B, C, *spatial) is read into one of
    fewer than three dimensions (``torch.flatten``, ``x.mean((2, 3))``); the feature map is the input of
    the last global pooling before that point (the average pooling to 1 × 1 of a ResNet, DenseNet or
    ConvNeXt), or the flattened map itself without one (a max pooling between blocks does not count). Through functional operations (DenseNet's ``F.relu``) the search
    goes back to the nearest module output; of the modules with that output (a ResNet's ``layer4`` and its
    last block ``layer4.1``, after the residual addition) the innermost is named. ``x``: a sample batch (one
    sample runs). None where fx cannot trace the forward or no module output is such a map.
    """
    tracer = _Tracer(set())
    with ONE_AT_A_TIME:
        try:
            graph = tracer.trace(model)
        except Exception:  # fx raises many types on untraceable code; the caller falls back
            return None
        module = fx.GraphModule(model, graph)
        values = _values(module, x[:1].clone())
    maps = [node for node in graph.nodes if isinstance(values.get(node), Tensor) and values[node].dim() >= 3]
    heads = [node for node in maps if any(isinstance(values.get(user), Tensor) and values[user].dim() < 3
                                          for user in node.users)]
    if not heads:
        return None
    before = maps[:maps.index(heads[-1]) + 1]
    # Global poolings only (output 1 × … × 1): a max pooling between blocks is not where the head starts.
    pools = [node for node in before if _is_pooling(module, node) and values[node][0, 0].numel() == 1]
    node = pools[-1].args[0] if pools else heads[-1]
    owners: dict[fx.Node, list[str]] = {}
    for name, output in tracer.outputs.items():
        if name:
            owners.setdefault(output, []).append(name)
    while node not in owners:
        inputs = [a for a in node.all_input_nodes if a in maps]
        if not inputs:
            return None
        node = inputs[0]
    return max(owners[node], key=lambda name: name.count("."))


def _is_pooling(module: nn.Module, node: fx.Node) -> bool:
    """``node`` pools: an average or max pooling module, function or method, a mean or sum over dimensions."""
    if node.op == "call_module":
        return isinstance(module.get_submodule(node.target), AVGPOOL_LAYERS + MAXPOOL_LAYERS)
    return node.op in ("call_function", "call_method") and (
        _OPERATIONS.get(node.target) is Pooling or node.target in _MAX_POOLING)


class _Tracer(fx.Tracer):
    """fx tracing that stops at modules with an LRP rule and records each module's first output node."""

    def __init__(self, leaves: set[int] | frozenset[int]) -> None:
        super().__init__()
        self.record_stack_traces = True  # UnsupportedLayerError names the user's source line
        self.leaves = leaves
        self.outputs: dict[str, fx.Node] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.leaves:
            return True
        return (not isinstance(m, _TRACED_NORMS) and traceable_forward(m) is None
                and super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        out = super().call_module(m, traceable_forward(m) or forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs.setdefault(self.path_of_module(m), out.node)
        return out


def _values(module: fx.GraphModule, x: Tensor) -> dict[fx.Node, Any]:
    """Every node's value in one run on ``x``."""
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        Recorder(module).run(x)
    return values


def _carries(module: fx.GraphModule, x: Tensor) -> set[fx.Node]:
    """From one run on ``x``: the nodes whose value holds a floating-point tensor that depends on the input
    (they carry relevance)."""
    values = _values(module, x)
    carries: set[fx.Node] = set()
    for node in module.graph.nodes:
        floating = any(isinstance(v, Tensor) and v.is_floating_point() for v in tree_leaves(values.get(node)))
        detached = node.op in ("call_function", "call_method") and node.target in _DETACH  # a constant
        if floating and not detached and (node.op == "placeholder"
                                          or any(a in carries for a in node.all_input_nodes)):
            carries.add(node)
    return carries


def _rewrite_operations(module: fx.GraphModule, carries: set[fx.Node], user: set[int],
                        taken: set[str]) -> dict[fx.Node, fx.Node]:
    """Replace every functional operation on relevance-carrying tensors by its leaf module, or refuse it;
    returns each replaced (erased) node's replacement."""
    taken |= {name for name, _ in module.named_modules()}
    replaced: dict[fx.Node, fx.Node] = {}
    for node in list(module.graph.nodes):
        if node not in carries or node.op not in ("call_function", "call_method"):
            continue
        # A concatenation with a constant (a class token) is a module: the constant absorbs its slice's relevance.
        constant = _concatenates_a_constant(node, carries)
        if not constant and node.target in (_ROUTING_FUNCTIONS if node.op == "call_function" else _ROUTING_METHODS):
            continue
        kind = Concatenation if constant else _OPERATIONS.get(node.target)
        if kind is None:
            raise UnsupportedLayerError(_no_rule(node, "LRP has no rule for it"))
        operands: list[fx.Node] = []  # with repeats: ``h * h`` has two factors
        fx.node.map_arg((node.args, node.kwargs), operands.append)
        inputs = [a for a in operands if a in carries]
        gates = [a for a in inputs if _is_gate(module, a)] if node.target in _COMMUTATIVE else []
        if len(inputs) == 2 and len(gates) == 1:
            kind = Gating
        elif kind not in _MANY_INPUTS and (len(inputs) != 1 or (inputs[0] is not node.args[0]
                                                                and node.target not in _COMMUTATIVE)):
            raise UnsupportedLayerError(_no_rule(node, "LRP explains it only when one factor (the numerator, "
                                                       "the first argument) depends on the input, as in a scaling "
                                                       "by a constant, or when one of two such factors is a "
                                                       "sigmoid gate (x * torch.sigmoid(...))"))
        call = replaced[node] = _replace(module, node, kind, _name(module, node, user, taken), carries)
        if kind is Gating:
            module.get_submodule(call.target).gate = call.args.index(gates[0])
        carries.add(call)
    return replaced


def _concatenates_a_constant(node: fx.Node, carries: set[fx.Node]) -> bool:
    """``node`` is a ``torch.cat`` of relevance-carrying tensors with a constant one (a class token)."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    return (node.target in _CONCATENATIONS and isinstance(tensors, list | tuple)
            and any(isinstance(t, fx.Node) and t not in carries for t in tensors))


def _is_gate(module: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is a sigmoid's output, maybe reshaped (``.view(b, c, 1, 1).expand_as(x)``): a gate in (0, 1)."""
    while node.op in ("call_function", "call_method") and node.target in _RESHAPES:
        node = node.args[0]
    if node.op != "call_module":
        return node.op in ("call_function", "call_method") and node.target in _GATE_FUNCTIONS
    called = module.get_submodule(node.target)
    return isinstance(called, _GATE_MODULES) or (isinstance(called, Activation)
                                                 and called.function in _GATE_FUNCTIONS)


def _replace(module: fx.GraphModule, node: fx.Node, kind: type[TracedOperation], name: str,
             carries: set[fx.Node]) -> fx.Node:
    """``node`` → a call of a new ``kind`` module ``name`` (returned); the relevance-carrying tensors become its
    inputs, other values (sizes, constants, parameters such as a layer scale) keywords, so that rules share
    relevance among the inputs only and a constant absorbs its share."""
    graph, inputs, values = module.graph, [], {}

    def slot(arg: fx.Node) -> Slot:
        if arg in carries:
            inputs.append(arg)
            return Slot(index=len(inputs) - 1)
        key = f"value{len(values)}"
        values[key] = arg
        return Slot(key=key)

    args, kwargs = fx.node.map_arg((node.args, node.kwargs), slot)
    kwargs = {**kwargs, "inplace": False} if "inplace" in kwargs else kwargs
    function = _OUT_OF_PLACE.get(node.target, node.target)
    modified = node.args[0] if (function is not node.target or node.kwargs.get("inplace")) else None
    module.add_submodule(name, kind(function, args, kwargs, _describe(node)))
    with graph.inserting_before(node):
        call = graph.call_module(name, tuple(inputs), values)
    call.meta = node.meta
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    if isinstance(modified, fx.Node):  # later reads of the tensor modified in place read the result
        for later in _after(call):
            later.replace_input_with(modified, call)
    return call


def _fold_batchnorms(module: fx.GraphModule, user: set[int], outputs: dict[str, fx.Node],
                     start: str | None) -> dict[str, str]:
    """Fold each BatchNorm into the Linear/Conv whose output only it reads: a new copy of the layer, and an
    ``nn.Identity`` registered in the BatchNorm's place, so that its name stays valid. The identity is called
    only where it is the ``start`` module; elsewhere the BatchNorm's call leaves the graph (and ``outputs``,
    the first output node of each module, names the layer's output instead), as a call of an identity would
    only copy the activation. Returns {layer: BatchNorm folded into it}."""
    folded: dict[str, str] = {}
    calls: dict[str, int] = {}
    for node in module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(module.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or producer.op != "call_module" or len(producer.users) != 1:
            continue
        layer, norm = module.get_submodule(producer.target), module.get_submodule(node.target)
        if calls[producer.target] != 1 or calls[node.target] != 1 or not foldable(layer, norm):
            continue
        if _owned_by_user(module, producer.target, user) or _owned_by_user(module, node.target, user):
            continue
        merged = _copy(layer)
        merged.weight, merged.bias = folded_parameters(layer, norm)
        module.add_submodule(producer.target, merged)
        module.add_submodule(node.target, nn.Identity())
        folded[producer.target] = node.target
        if node.target != start:
            node.replace_all_uses_with(producer)
            for name in [name for name, output in outputs.items() if output is node]:
                outputs[name] = producer
            module.graph.erase_node(node)
    return folded


def _out_of_place(module: fx.GraphModule, user: set[int]) -> None:
    """Replace each leaf module that computes in place (``nn.ReLU(inplace=True)``) by a copy that does not:
    the engine runs a module on leaves of its inputs, which an in-place module could only modify in a copy."""
    for target in {node.target for node in module.graph.nodes if node.op == "call_module"}:
        called = module.get_submodule(target)
        if getattr(called, "inplace", None) is True and not _owned_by_user(module, target, user):
            replacement = _copy(called)
            replacement.inplace = False
            module.add_submodule(target, replacement)


def _copy(layer: nn.Module) -> nn.Module:
    """A new module object like ``layer`` that shares its parameters and buffers."""
    return copy.deepcopy(layer, {id(t): t for t in [*layer.parameters(), *layer.buffers()]})


def _start(module: fx.GraphModule, output: fx.Node | None, start: str, user: set[int]) -> str | None:
    """The name of the module whose output is ``start``'s: itself if it runs as a leaf, else a new tap."""
    if any(n.op == "call_module" and n.target == start for n in module.graph.nodes):
        return start
    if output is None:
        return None
    name = _free(f"{start}.output", {n for n, _ in module.named_modules()}, module, user)
    module.add_submodule(name, nn.Identity())
    with module.graph.inserting_after(output):
        tap = module.graph.call_module(name, (output,))
    output.replace_all_uses_with(tap, delete_user_cb=lambda user_node: user_node is not tap)
    return name


def _name(module: fx.GraphModule, node: fx.Node, user: set[int], taken: set[str]) -> str:
    """``<innermost user module>.<operation>`` (e.g. ``layer1.0.add``), unique."""
    stack = node.meta.get("nn_module_stack") or {}
    owner = list(stack.values())[-1][0] if stack else ""
    base = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
    base = _OUT_OF_PLACE.get(base, base).strip("_")
    return _free(f"{owner}.{base}" if owner else base, taken, module, user)


def _free(name: str, taken: set[str], module: fx.GraphModule, user: set[int]) -> str:
    """``name`` or ``name_1``, ... not yet taken; at the root (dots → underscores) where a container on its
    path is the user's own module (adding to it would modify the user's model)."""
    if _owned_by_user(module, name, user):
        name = name.replace(".", "_")
    candidate, count = name, 0
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    taken.add(candidate)
    return candidate


def _owned_by_user(module: fx.GraphModule, name: str, user: set[int]) -> bool:
    """A container on the path of ``name`` inside ``module`` is one of the user's module objects."""
    parent: nn.Module = module
    for item in name.split(".")[:-1]:
        parent = getattr(parent, item, None)
        if parent is None:
            return False
        if id(parent) in user:
            return True
    return False


def _after(node: fx.Node) -> Iterator[fx.Node]:
    node = node.next
    while node.op != "root":
        yield node
        node = node.next


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return f"{node.op} {target}"


def _source(stack_trace: str | None) -> str:
    """``file:line: code`` of the innermost user frame in an fx stack trace, or '' if none."""
    # A frame's code line is missing when the file is no longer readable as it was: never take the next
    # frame's header for it.
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n(?:[ \t]+(?!File ")(\S.*))?', stack_trace or "")
    user_frames = [f for f in frames if not f[0].startswith(_LIBRARY_DIRS)]
    if not user_frames:
        return ""
    path, line, code = user_frames[-1]
    return f" at {path}:{line}" + (f": `{code.strip()}`" if code else "")


def _no_rule(node: fx.Node, why: str) -> str:
    return (f"graph node {node.name!r} ({_describe(node)}){_source(node.stack_trace)}: {why}. Compute it in "
            f"a module of your own and map a rule to that module's type via the composite, e.g. "
            f"EpsilonPlusFlat(types={{MyOp: spray.lrp.Pass()}}) (docs/lrp.md, 'Tracing')")


def _untraced_message(model: nn.Module, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_LIBRARY_DIRS)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}: `{(frames[-1].line or '').strip()}`" if frames else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"torch.fx cannot trace the forward of {type(model).__qualname__}{where} ({reason}); LRP falls back "
            f"to hooks on its modules, which leave functional additions and BatchNorm outside nn.Sequential "
            f"unexplained (docs/lrp.md, 'Tracing')")
