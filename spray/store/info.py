"""What an audit store holds, summarised from an open file (``spray info --json``) and as text (``spray info``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spray.store.encoding import _dtype_name, _find_nodes, _node_arrays
from spray.store.schema import (
    _ATTRIBUTION_JSON, NODE_ROOTS, _attribution_group, _damaged, _decode, _expect, _node_attrs, _node_written,
    _root_attrs, _rows_dataset, _sample_count,
)


def store_info(f: h5py.File, path: Path) -> dict[str, Any]:
    """:meth:`AuditStore.info <spray.store.AuditStore.info>` of the store ``path``, open as ``f``."""
    root = _root_attrs(f, path)
    samples = f["samples"]
    n = _sample_count(f, path)
    attributions = {
        name: _attribution_summary(_attribution_group(f, name, path), n, path)
        for name in sorted(f["attributions"])
        if not name.startswith(".")
    }
    nodes: dict[str, dict[str, Any]] = {}
    for root_name in NODE_ROOTS:
        nodes[root_name] = {
            node: {
                "written": _node_written(group, path),
                "attrs": _node_attrs(group, path),
                "arrays": {
                    k: {"shape": list(d.shape), "dtype": _dtype_name(d)}
                    for k, d in _node_arrays(group).items()
                },
            }
            for node, group in _find_nodes(f, root_name)
        }
    images = _image_summary(root.get("dataset"), path)
    return {
        "path": str(path),
        "schema_version": root.get("schema_version"),
        "spray_version": root.get("spray_version"),
        "created": root.get("created"),
        "model": root.get("model"),
        "dataset": root.get("dataset"),
        **({"images": images} if images else {}),  # only an image source's record has these fields
        "n_samples": n,
        "label_names": root.get("label_names"),
        "thumbnails": list(samples["thumbnail"].shape[1:]) if "thumbnail" in samples else None,
        "attributions": attributions,
        "analyses": nodes["analyses"],
        "clarc": nodes["clarc"],
    }


def _image_summary(dataset: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """An image source's part of the dataset record (docs/store.md) in brief: its root folder, preprocessing
    spec, the number of files explained and of files skipped as unreadable, and the metadata columns; None
    for a record without image files (another source, or none yet)."""
    if dataset is None or "files" not in dataset:
        return None
    what = "of root attribute 'dataset'"
    return {
        "root": _expect(dataset.get("root"), str, f"field 'root' {what}", path),
        "transform": _expect(dataset.get("transform"), dict, f"field 'transform' {what}", path),
        "files": len(_expect(dataset["files"], list, f"field 'files' {what}", path)),
        "skipped": len(_expect(dataset.get("skipped", []), list, f"field 'skipped' {what}", path)),
        "metadata_columns": list(_expect(dataset.get("metadata", {}), dict, f"field 'metadata' {what}", path)),
        **({"selection": _expect(dataset["selection"], dict, f"field 'selection' {what}", path)}
           if "selection" in dataset else {}),
    }


def _selection(s: dict[str, Any]) -> str:
    """A multi-label table's row selection (spray.data.label_table.RowSelection) in one line."""
    uncertain = {"positive": "explained", "negative": "left out", None: "left out"}[s["uncertain_rule"]]
    return (f"{s['rows']} in the table; {s['positive']} with {s['target']} = 1 explained, {s['negative']} = 0 "
            f"and {s['blank']} blank left out, {s['uncertain']} uncertain (-1) {uncertain}")


def _attribution_summary(group: h5py.Group, n: int, path: Path) -> dict[str, Any]:
    """:meth:`AuditStore.attribution_info`, after checking the attribution against docs/store.md."""
    where = group.name
    attrs = _decode(group.attrs, path, f"attribution {where}", _ATTRIBUTION_JSON)
    _expect(attrs.get("params"), dict, f"attribute 'params' of attribution {where}", path)
    _expect(attrs.get("method"), str, f"attribute 'method' of attribution {where}", path)
    if attrs.get("target") not in ("label", "prediction"):
        raise _damaged(path, f"attribute 'target' of attribution {where}", f"is {attrs.get('target')!r}")
    relevance = _rows_dataset(group, "relevance", n, "f", None, where, path)
    if relevance.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise _damaged(path, f"dataset {where}/relevance", f"has dtype {relevance.dtype}, not float32/float16")
    logits = _rows_dataset(group, "logits", n, "f", 2, where, path)
    if logits.shape[1] < 1:
        raise _damaged(path, f"dataset {where}/logits", f"has shape {logits.shape}")
    _rows_dataset(group, "target", n, "iu", 1, where, path)
    mask = _rows_dataset(group, "done", n, "b", 1, where, path)[()]
    done = int(np.count_nonzero(mask))
    summary = {
        "method": attrs.get("method"),
        "params": attrs.get("params"),
        "target": attrs.get("target"),
        "model_hash": attrs.get("model_hash"),
        "model_name": attrs.get("model_name"),
        "batch_size": attrs.get("batch_size"),
        "shape": list(relevance.shape),
        "dtype": str(relevance.dtype),
        "n_outputs": int(logits.shape[1]),
        "done": done,
        "n": int(n),
        "complete": done == n,
        "created": attrs.get("created"),
        "attribution_id": attrs.get("attribution_id"),
    }
    if "trace" in attrs:  # attributions made before spray recorded the trace, or by gradient methods, have none
        summary["trace"] = _expect(attrs["trace"], dict, f"attribute 'trace' of attribution {where}", path)
    if "input_share" in group:  # attributions made before spray stored it have none (docs/store.md)
        share = _rows_dataset(group, "input_share", n, "f", 1, where, path)[()][mask.astype(bool)]
        summary["input_share"] = _distribution(share)
    return summary


def _distribution(values: np.ndarray) -> dict[str, Any]:
    """Quantiles of a per-sample ratio over its finite values, and how many lie within 5% of 1."""
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return {"n": 0}
    q = np.quantile(finite, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {
        "n": int(finite.size),
        **{key: round(float(v), 6) for key, v in zip(("min", "p05", "median", "p95", "max"), q, strict=True)},
        "within_5pct": int(np.count_nonzero(np.abs(finite - 1.0) <= 0.05)),
    }


_STEPS = ("mode", "resize", "crop", "mean", "std")  # the order of the preprocessing steps (docs/data.md)


def format_info(info: Mapping[str, Any]) -> str:
    """A human-readable rendering of :meth:`AuditStore.info` (``spray info``)."""
    lines = [
        f"audit store {info['path']}  (schema {info['schema_version']}, spray {info['spray_version']}, "
        f"created {info['created']})"
    ]
    model, dataset = info.get("model"), info.get("dataset")
    lines.append(f"model     {model['name']}  sha256 {str(model['hash'])[:16]}" if model else "model     -")
    names = info.get("label_names") or []
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "")
    if dataset:
        lines.append(f"dataset   {dataset['name']}  {info['n_samples']} samples")
    else:
        lines.append("dataset   - (no attribution run yet)")
    images = info.get("images")
    if images:
        skipped = f" ({images['skipped']} skipped as unreadable)" if images["skipped"] else ""
        order = {step: i for i, step in enumerate(_STEPS)}
        steps = sorted(images["transform"].items(), key=lambda kv: order.get(kv[0], len(order)))
        spec = ", ".join(f"{k} {json.dumps(v)}" for k, v in steps if v is not None)
        lines.append(f"images    {images['files']} files in {images['root']}{skipped}")
        lines.append(f"          preprocessing: {spec or 'none'}")
        if images["metadata_columns"]:
            lines.append(f"          metadata columns: {', '.join(images['metadata_columns'])}")
        if "selection" in images:
            lines.append(f"          rows: {_selection(images['selection'])}")
    if names:
        lines.append(f"labels    {shown}")
    if info.get("thumbnails"):
        lines.append(f"thumbnails {'x'.join(map(str, info['thumbnails']))} uint8")
    attributions = info.get("attributions") or {}
    lines.append(f"attributions ({len(attributions)})")
    for name, a in attributions.items():
        state = "complete" if a["complete"] else f"{a['done']}/{a['n']} done"
        params = json.dumps(a["params"], sort_keys=True)
        lines.append(
            f"  {name}: {a['method']} {params}, target={a['target']}, {state}, relevance "
            f"{tuple(a['shape'])} {a['dtype']}, model {str(a['model_hash'])[:16]}, batch {a['batch_size']}"
        )
        share = a.get("input_share")
        if share is not None:
            lines.append(
                f"    input share (sum R / f): median {share['median']:.4g}, 5-95% {share['p05']:.4g} .. "
                f"{share['p95']:.4g}, range {share['min']:.4g} .. {share['max']:.4g}, within 5% of 1: "
                f"{share['within_5pct']}/{share['n']}"
                if share["n"] else "    input share (sum R / f): no finite value yet"
            )
    for root in NODE_ROOTS:
        nodes = info.get(root) or {}
        lines.append(f"{root} ({len(nodes)} nodes)")
        for i, (path, node) in enumerate(nodes.items()):
            if i == 20:
                lines.append(f"  ... {len(nodes) - 20} more (spray info --json lists all)")
                break
            params = json.dumps(node["attrs"], sort_keys=True)
            if len(params) > 100:
                params = params[:97] + "..."
            lines.append(f"  {path}  {params}")
    return "\n".join(lines)
