"""The LRP engine: attach a composite's rules to a model, run one forward and one backward pass, detach.

The model is first traced into a canonised copy (spray.lrp.tracing): functional additions, means and
scalings become modules with rules, BatchNorm is folded wherever it follows a Linear/Conv. A model that
cannot be traced is hooked as it is, with BatchNorm folded inside ``nn.Sequential`` only.

Every leaf module gets a pre-hook (it runs on detached leaves of its inputs, so its graph serves its rule
only) and a forward hook that wraps its output in :class:`_Relay`, an autograd function that is the
identity forward and calls the layer's rule backward. Autograd therefore carries *relevance* from layer
to layer; the functional operations left between modules see relevance as a gradient, which is right for
reshapes, views, indexing, concatenation, max pooling and ReLU-type gating (and wrong for additions and
scalings, which is why tracing turns those into modules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spray._layout import layer_layout
from spray.errors import BadInputError, UnsupportedLayerError
from spray.lrp.canonizers import fold_batchnorm
from spray.lrp.composites import Composite
from spray.lrp.layers import LINEAR_LAYERS
from spray.lrp.rules import Rule
from spray.lrp.tracing import ONE_AT_A_TIME, Traced, TraceCache
from spray.lrp.transformer import refuse_untraced_attention


class LRP:
    """Layer-wise relevance propagation with a composite's rules; an attributor (docs/architecture.md).

    The model is left as found: its modules are never replaced or modified (tracing works on a copy whose
    new layers are new objects), hooks are removed, ``training`` and ``requires_grad`` flags restored, no
    ``.grad`` written. During the attribution the model runs in eval mode. The traced copy of the last model
    explained is kept and reused until that model changes (:class:`~spray.lrp.tracing.TraceCache`).
    """

    def __init__(self, composite: Composite) -> None:
        self.composite = composite
        self._traces = TraceCache()

    def __getstate__(self) -> dict[str, Any]:
        return {"composite": self.composite}  # a trace is made where it is used (dask workers)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["composite"])

    @property
    def name(self) -> str:
        """The composite's name, e.g. ``"epsilon_plus_flat"``."""
        return self.composite.name

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (epsilon, gamma, bounds, user rule maps)."""
        return self.composite.params()

    def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Explain output ``target`` (B,) for input ``x`` (B, ...): returns (relevance like x, logits (B, K)).

        The initial relevance is the target logit (one-hot); without biases the relevance sums to it.
        """
        return self._propagate(model, x, None, _one_hot_logit(target, x))

    def balance(self, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, list[Balance]]:
        """:meth:`attribute`, and each module's relevance balance in the order the backward pass met them.

        Per sample, a module receives ``Balance.out`` at its output and passes ``Balance.into`` to its
        inputs; a conserving rule keeps them equal, a bias or stabiliser absorbs the difference
        (spray.lrp.accounting finds where relevance is created or destroyed).
        """
        ledger: list[Balance] = []
        relevance, logits = self._propagate(model, x, None, _one_hot_logit(target, x), ledger)
        return relevance, logits, ledger

    def relevance(self, model: nn.Module, x: Tensor, start: str | None,
                  initial: Callable[[Tensor], Tensor]) -> Tensor:
        """Relevance of ``x`` (same shape) when LRP starts at the output of module ``start``.

        ``start``: a name from ``model.named_modules()`` (its first call in the forward pass counts), or
        None for the model output. ``initial(activation) -> Tensor`` of the activation's shape gives the
        starting relevance, e.g. ``lambda a: a.clamp(min=0) * v`` for ClArC.
        """
        return self._propagate(model, x, start, initial)[0]

    def latent(self, model: nn.Module, x: Tensor, target: Tensor, layer: str) -> Latent:
        """Explain output ``target`` (B,) for input ``x`` (B, ...) as :meth:`attribute` does, and keep what
        reaches the output of module ``layer`` (named as in ``model.named_modules()``; its first call counts).

        ``Latent.relevance`` has the activation's shape, (B, C, *spatial) for a feature map: CRP's latent
        relevance ``R_{c,h,w}`` (Achtibat et al. 2023); its sum over the spatial axes is the channel relevance
        ``R_c``. Σ R_latent = Σ R_input + what the modules below ``layer`` absorb (spray.lrp.accounting).
        """
        explained = _one_hot_logit(target, x)
        kept: list[Tensor] = []
        relevance, logits = self._propagate(model, x, None, explained, tap=(layer, kept.append))
        # A layer the explained output does not depend on receives no relevance: its hook never runs.
        activation, reached = kept[0], (kept[1] if len(kept) > 1 else torch.zeros_like(kept[0]))
        return Latent(reached, activation, relevance, logits)

    def conditional(self, model: nn.Module, x: Tensor, target: Tensor, layer: str, channels: Tensor) -> Tensor:
        """Input relevance of output ``target`` (B,) restricted to ``channels`` of ``layer``'s output:
        CRP's conditional heatmap, what the chosen concepts contribute to the explanation of ``x``.

        ``channels``: (B, C) weights (a 0/1 mask keeps the chosen channels; C as spray._layout reads the layer:
        a transformer block's D features) or (C,) for every sample; the
        relevance reaching each channel of ``layer`` is multiplied by its weight before it travels on. With
        all weights 1 it is :meth:`attribute`'s relevance; masks of a partition of the channels give heatmaps
        that sum to it.
        """
        weights = torch.as_tensor(channels)
        layout = layer_layout(model, layer)  # channels of a transformer's tokens are their last axis

        def gate(output: Tensor) -> Tensor:
            relevance = layout.canonical(output)
            w = weights.to(relevance.device, relevance.dtype)
            w = w.expand(len(relevance), -1) if w.dim() == 1 else w
            if w.shape != relevance.shape[:2]:
                raise BadInputError(f"channels must have shape ({relevance.shape[1]},) or ({len(relevance)}, "
                                    f"{relevance.shape[1]}) for layer {layer!r}, got {tuple(weights.shape)}")
            return layout.restore(relevance * w.reshape(*w.shape, *[1] * (relevance.dim() - 2)), output)

        return self._propagate(model, x, None, _one_hot_logit(target, x), tap=(layer, None), gate=gate)[0]

    def trace_record(self, model: nn.Module, x: Tensor) -> dict[str, Any]:
        """What this attributor makes of ``model`` for inputs like ``x`` (B, ...; one sample runs), JSON-able:
        ``rules`` pairs each hooked module of the canonised copy (qualified name, in forward order) with the
        repr of the rule the composite gives it, ``[[name, rule], ...]``, each BatchNorm folded into a layer
        right after that layer as ``[name, "folded into <layer>"]``; ``hash`` is the sha256 of the traced
        forward's generated code, each called module's repr with the constants a traced operation holds
        (the 2.0 of ``x * 2.0``), the values of the tensors the forward reads that the model's state dict
        does not hold (plain tensor attributes, buffers that are not persistent), and these rules; ``traced`` is False where fx could not trace the
        forward (hooks on the model's own modules, :class:`UntracedModelWarning`): the hash then covers the
        module tree and rules only, not the forward's code. The weights are not in it (``model_hash``)."""
        rules: dict[str, str] = {}
        with ExitStack() as stack:
            run, _, traced = self._prepare(stack, model, x[:1], None)
            stack.callback(_remove, _attach(run, self.composite, None, rules))
            with torch.enable_grad():
                run(x[:1].detach().clone().requires_grad_(True))
        if traced is None:
            parts = [repr(model)]
        else:
            graph = traced.module.graph
            called = [(node.target, traced.module.get_submodule(node.target))
                      for node in graph.nodes if node.op == "call_module"]
            parts = [traced.module.code, *(f"{name}: {module!r} {_fingerprint(getattr(module, 'template', None))}"
                                           for name, module in called)]
            held = set(model.state_dict())
            parts += [f"{node.target}: {_fingerprint(traced.module.get_buffer(node.target))}" for node in graph.nodes
                      if node.op == "get_attr" and node.target not in held
                      and isinstance(traced.module.get_buffer(node.target), Tensor)]
        folded = {} if traced is None else traced.folded
        record = []
        for name, rule in rules.items():
            record.append([name, rule])
            if name in folded:  # the BatchNorm's call left the copy's graph
                record.append([folded[name], f"folded into {name}"])
        parts += [f"{name}: {rule}" for name, rule in record]
        digest = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()
        return {"traced": traced is not None, "hash": digest, "rules": record}

    def _prepare(self, stack: ExitStack, model: nn.Module, x: Tensor, start: str | None,
                 what: str = "start") -> tuple[nn.Module, str | None, Traced | None]:
        """Eval mode and the canonised copy (or the model itself, BatchNorm folded inside Sequentials) for
        the life of ``stack``: (module to hook and run, name of ``start`` in it, the trace or None).
        ``what`` names ``start``'s role in messages."""
        names = [name for name, _ in model.named_modules()]
        if start is not None and start not in names:
            raise BadInputError(f"{what} module {start!r} is not in the model; use a name from "
                                f"model.named_modules(), e.g. {names[1:6]}")
        stack.enter_context(ONE_AT_A_TIME)
        stack.enter_context(_frozen(model))
        traced = self._traces.canonize(model, x, self.composite, start)
        if traced is None:
            refuse_untraced_attention(model)
            stack.enter_context(fold_batchnorm(model))
            run, start_name = model, start
        else:
            run, start_name = traced.module, traced.start
        known = set(names) | {name for name, _ in run.named_modules()}
        unknown = sorted(set(self.composite.names) - known)
        if unknown:
            raise BadInputError(f"the composite maps rules to modules the model does not have: {unknown}; "
                                f"names are qualified as in model.named_modules(), e.g. {names[1:6]}")
        return run, start_name, traced

    def _propagate(self, model: nn.Module, x: Tensor, start: str | None,
                   initial: Callable[[Tensor], Tensor], ledger: list[Balance] | None = None,
                   tap: tuple[str, Callable[[Tensor], None] | None] | None = None,
                   gate: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """One forward pass with hooks, one backward pass; returns (input relevance, start activation).

        ``tap`` ``(layer, keep)`` (with ``start`` None): ``keep`` receives the activation of module ``layer``
        and then the relevance that reaches it; ``gate`` rewrites that relevance before it travels on."""
        layer = None if tap is None else tap[0]
        with ExitStack() as stack:
            run, start_name, _ = (self._prepare(stack, model, x, start) if tap is None
                                  else self._prepare(stack, model, x, layer, "layer"))
            handles = _attach(run, self.composite, ledger)
            stack.callback(_remove, handles)
            captured: list[Tensor] = []
            if start_name is not None:
                # A folded BatchNorm's place is taken by an identity; a container's output by a tap.
                module = dict(run.named_modules())[start_name]
                handles.append(module.register_forward_hook(lambda _m, _a, out: captured.append(out)))

            inputs = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                output = run(inputs)
            if (start or layer) is not None and not captured:
                raise BadInputError(f"{'start' if tap is None else 'layer'} module {start or layer!r} did not run "
                                    "in the model's forward pass")
            if tap is not None:
                _watch(captured[0], layer, tap[1], gate)
            activation = captured[0] if start is not None else output
            if not isinstance(activation, Tensor) or not activation.requires_grad:
                raise BadInputError("the explained output does not depend on any module LRP could hook; "
                                    "is the model's computation done by modules?")
            seed = initial(activation.detach())
            if seed.shape != activation.shape:
                raise BadInputError(f"initial relevance has shape {tuple(seed.shape)}, but the activation it "
                                    f"starts from has shape {tuple(activation.shape)}")
            (relevance,) = torch.autograd.grad(activation, inputs, seed.to(activation.dtype))
        return relevance, activation.detach()


def _fingerprint(value: Any) -> str:
    """A text that changes with ``value``: tensors by sha256 of dtype, shape and bytes (their repr elides
    values), containers item by item, anything else by repr."""
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return hashlib.sha256(f"{value.dtype} {tuple(value.shape)} ".encode() + data).hexdigest()
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(map(_fingerprint, value)) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_fingerprint(v)}" for k, v in value.items()) + "}"
    return repr(value)


@dataclass(frozen=True)
class Latent:
    """:meth:`LRP.latent`'s result: the relevance reaching the layer's output and the activation there, both
    of the activation's shape (B, C, *spatial); the input relevance (like x) and the logits (B, K)."""

    relevance: Tensor
    activation: Tensor
    input_relevance: Tensor
    logits: Tensor


def _watch(activation: Tensor, layer: str, keep: Callable[[Tensor], None] | None,
           gate: Callable[[Tensor], Tensor] | None) -> None:
    """Hand ``activation`` to ``keep`` now and the relevance reaching it in the backward pass later (the
    gradient at that tensor: LRP's rules make it the relevance); ``gate`` rewrites what travels on."""
    if not isinstance(activation, Tensor) or not activation.requires_grad:
        raise BadInputError(f"layer {layer!r} returns no relevance-carrying tensor; choose a module whose output "
                            "is a feature map the explained output depends on")

    def hook(relevance: Tensor) -> Tensor | None:
        if keep is not None:
            keep(relevance.detach())
        return None if gate is None else gate(relevance)

    if keep is not None:
        keep(activation.detach())
    activation.register_hook(hook)


def _one_hot_logit(target: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
    """The initial relevance of :meth:`LRP.attribute`: each sample's target logit, zero elsewhere."""
    target = torch.as_tensor(target)
    if target.shape != x.shape[:1]:
        raise BadInputError(f"target must have shape ({len(x)},), one output index per sample; "
                            f"got shape {tuple(target.shape)}")

    def initial(logits: Tensor) -> Tensor:
        if logits.dim() != 2:
            raise BadInputError(f"attribute needs model outputs of shape (batch, outputs), got "
                                f"{tuple(logits.shape)}; use LRP.relevance with an initial relevance")
        if (target < 0).any() or (target >= logits.shape[1]).any():
            raise BadInputError(f"target indices must lie in [0, {logits.shape[1]}), got {target.tolist()}")
        index = target.to(logits.device)[:, None]
        return torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index))

    return initial


class _Relay(torch.autograd.Function):
    """Identity forward (returns the layer's output); the layer's rule backward.

    ``forward`` holds the layer's inputs as leaves and its output with a graph to them: rules that use the
    layer as it is need no second evaluation. They travel in a list, so autograd does not treat them as
    inputs of this function; ``inputs`` (the layer's real inputs) only connect the graph. An in-place
    change of the returned tensor (``x.relu_()`` in a forward) reaches ``output`` too; for gating, the
    only in-place operation LRP can explain anyway, the changed units receive no relevance, so it is moot.
    """

    @staticmethod
    def forward(ctx: Any, rule: Rule, module: nn.Module, forward: list, *inputs: Tensor) -> Tensor:
        leaves, output, ctx.entry = forward
        ctx.rule, ctx.module, ctx.leaves, ctx.output = rule, module, leaves, output
        result = output.detach()
        if any(result.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for x in inputs):
            result = result.clone()  # Identity, Flatten, eval Dropout: never hand out an alias of an input
        return result

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor | None, ...]:
        passed = ctx.rule.redistribute(ctx.module, ctx.leaves, ctx.output, relevance)
        if ctx.entry is not None:
            ctx.entry(relevance, passed)
        return (None, None, None, *passed)


def _attach(model: nn.Module, composite: Composite, ledger: list[Balance] | None,
            rules: dict[str, str] | None = None) -> list[RemovableHandle]:
    """Hook every leaf module; the first Linear/Conv is recognised as it runs (forward order). With a
    ``ledger``, each rule's backward appends the module's :class:`Balance` to it; with ``rules``, each
    module's first call records the repr of its rule under its name."""
    state = {"seen_linear": False}
    handles: list[RemovableHandle] = []

    def pre_hook(name: str, pending: list, module: nn.Module, args: tuple) -> tuple:
        first = isinstance(module, LINEAR_LAYERS) and not state["seen_linear"]
        state["seen_linear"] |= isinstance(module, LINEAR_LAYERS)
        rule = composite.rule(name, module, first)
        if rule is None:
            raise _unsupported(name, module)
        rule.check(name, module)
        if rules is not None:
            rules.setdefault(name, repr(rule))
        if not all(isinstance(a, Tensor) for a in args):
            raise UnsupportedLayerError(f"module {name!r} ({type(module).__qualname__}) is called with "
                                        "non-tensor arguments; LRP hooks need tensor inputs only")
        # The layer runs on leaves of its own: its graph ends there and serves its rule alone.
        leaves = tuple(a.detach().requires_grad_(True) for a in args)
        pending.append((rule, args, leaves))
        if ledger is not None:
            pending[-1] += (partial(_record, ledger, name, module, rule),)
        # In-place modules (ReLU(inplace=True)) get a copy: a leaf cannot be modified in place.
        return tuple(leaf.clone() for leaf in leaves) if getattr(module, "inplace", False) else leaves

    def forward_hook(name: str, pending: list, module: nn.Module, args: tuple, output: Any) -> Tensor:
        rule, inputs, leaves, *entry = pending.pop()
        if not isinstance(output, Tensor):
            raise UnsupportedLayerError(f"module {name!r} ({type(module).__qualname__}) returns "
                                        f"{type(output).__name__}, not a tensor; LRP cannot explain it")
        return _Relay.apply(rule, module, [leaves, output, entry[0] if entry else None], *inputs)

    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            pending: list = []
            handles.append(module.register_forward_pre_hook(partial(pre_hook, name, pending)))
            handles.append(module.register_forward_hook(partial(forward_hook, name, pending)))
    return handles


@dataclass(frozen=True)
class Balance:
    """One module's relevance balance: per sample (B,), what reached its output and what it passed on to
    its ``inputs`` tensor inputs. Constants (a parameter used as a summand or factor, a class token, a mask)
    are no inputs of a traced operation (spray.lrp.tracing): what the rule does not pass on is absorbed."""

    name: str
    module: nn.Module
    rule: Rule
    out: Tensor
    into: Tensor
    inputs: int


def _record(ledger: list[Balance], name: str, module: nn.Module, rule: Rule, relevance: Tensor,
            passed: Sequence[Tensor | None]) -> None:
    def per_sample(r: Tensor) -> Tensor:
        return r.detach().reshape(len(r), -1).sum(1, dtype=torch.float64)

    into = sum((per_sample(r) for r in passed if r is not None), torch.zeros(len(relevance), dtype=torch.float64))
    ledger.append(Balance(name, module, rule, per_sample(relevance), into, len(passed)))


def _remove(handles: Sequence[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()


def _unsupported(name: str, module: nn.Module) -> UnsupportedLayerError:
    kind = type(module).__name__
    return UnsupportedLayerError(
        f"LRP has no rule for module {name!r} of type {type(module).__qualname__}. Map a rule to it via the "
        f"composite, by name (e.g. EpsilonPlusFlat(names={{{name!r}: spray.lrp.rules.Epsilon()}}) for an "
        f"affine layer) or by type (e.g. types={{{kind}: spray.lrp.Pass()}} for an elementwise activation)."
    )


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and parameters without ``requires_grad`` for the duration; both flags restored after."""
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in requires_grad:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in requires_grad:
            p.requires_grad_(flag)
        for module, flag in training:
            module.training = flag
