"""The processing graph: nodes, their dependencies, and the keys that memoise their outputs.

A node's key is a hash of its name, its parameters and the keys of the nodes it reads, rooted in the
identity of the heatmaps it analyses. Equal keys mean equal outputs, so a node whose key is already in the
store is not recomputed, and changing one parameter changes the keys of that node and of everything
downstream of it, and of nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
NodeOutput = tuple[Arrays, dict[str, Any]]
"""What a node returns: named arrays and a JSON-serialisable ``info`` dict (notes, chosen methods)."""


@dataclass(frozen=True)
class Node:
    """One step of the per-class analysis.

    ``run(params, inputs)`` receives the node's parameters and the outputs of the nodes in ``depends``
    (plus ``"features"``, the class's preprocessed heatmaps) and returns a :data:`NodeOutput`.
    """

    name: str
    depends: tuple[str, ...]
    run: Callable[[dict[str, Any], Mapping[str, NodeOutput]], NodeOutput]
    defaults: dict[str, Any]
    required: bool = False
    """Runs in every pipeline, whether or not the file has its table."""
    default: bool = False
    """Runs when no pipeline file is given (the default pipeline, written out in pipelines/spray.toml)."""
    kind: str = ""
    """A group name such as ``"clustering"``, for nodes that read every enabled node of a kind."""
    depends_on_all: str | None = None
    """Also depend on every enabled node of this kind (FDA scores every enabled clustering)."""
    unkeyed: tuple[str, ...] = ()
    """Parameters that change how fast, never what, the node computes (bit for bit): left out of the memo key,
    so changing them recomputes nothing."""
    reads_params: bool = False
    """``run`` also receives the parameters of the nodes it reads, as ``inputs["params"] = ({}, {node:
    params})`` (the selection null reruns them)."""
    version: int = 1
    """Raised when the node computes something else from the same inputs and parameters: stores analysed
    before then recompute it (and what depends on it) instead of keeping the old result."""


def hash_json(value: Any) -> str:
    """A stable sha256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def hash_array(array: np.ndarray) -> str:
    """A sha256 of an array's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def topological_order(nodes: Mapping[str, Node], enabled: set[str]) -> list[str]:
    """Enabled node names, each after everything it depends on (table order breaks ties)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in dependencies(nodes, enabled, name):
            visit(dep)
        order.append(name)

    for name in nodes:
        if name in enabled:
            visit(name)
    return order


def dependencies(nodes: Mapping[str, Node], enabled: set[str], name: str) -> list[str]:
    """The enabled nodes that ``name`` reads."""
    node = nodes[name]
    deps = list(node.depends)
    if node.depends_on_all is not None:
        deps += [n for n in nodes if n in enabled and nodes[n].kind == node.depends_on_all]
    return deps


def node_keys(
    nodes: Mapping[str, Node], params: Mapping[str, dict[str, Any]], root_key: str
) -> dict[str, str]:
    """The memo key of every enabled node, given the key of the class's features."""
    enabled = set(params)
    keys: dict[str, str] = {}
    for name in topological_order(nodes, enabled):
        deps = dependencies(nodes, enabled, name)
        keyed = {p: v for p, v in params[name].items() if p not in nodes[name].unkeyed}
        identity = {"node": name, "params": keyed, "inputs": {d: keys[d] for d in deps}, "root": root_key}
        if nodes[name].version > 1:  # version 1 is left out: the keys stores hold for unchanged nodes stay valid
            identity["version"] = nodes[name].version
        keys[name] = hash_json(identity)
    return keys
