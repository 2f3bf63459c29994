"""Export an analysis as a ViRelAy project: project YAML, label map, dataset, attribution and analysis HDF5.

The layout is what ViRelAy 0.6.1's own loader (``virelay.model.Project``) reads (docs/report.md, "The ViRelAy
export"; its documentation's "database specification" page is known to be wrong):

```
<out>/project.yaml      project: name, model, label_map, dataset, attributions, analyses (paths relative)
<out>/label-map.json    [{index, word_net_id, name}]; word_net_id = "class0007", the analysis group name
<out>/dataset.h5        data (N, 3, H, W) uint8, label (N,) int64
<out>/attribution.h5    attribution (N, 3, H, W) float32, prediction (N, classes) float32 (logits),
                        label (N,) int64, index (N,) uint32
<out>/analysis.h5       /<word_net_id>/index (n,) uint32, embedding/spectral (n, m) float32 (attr
                        eigenvalue), embedding/umap|tsne (n, 2), cluster/<clustering> (n,) int64
```

ViRelAy's sample index is the store row: dataset row ``i``, attribution ``index == i`` and the analysis
``index`` entries all refer to store row ``i`` (which is dataset index ``i``, docs/store.md). Samples and
attributions are copied block by block, so the store's relevance is never loaded whole.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from spray.data.images import check_audited
from spray.errors import BadInputError
from spray.outputs import OutputGuard, active
from spray.results import ClassAnalysis, analysis_summary, read_class
from spray.store import AuditStore

__all__ = ["export_virelay", "word_net_id"]

log = logging.getLogger(__name__)

FILES = {
    "project": "project.yaml",
    "label_map": "label-map.json",
    "dataset": "dataset.h5",
    "attribution": "attribution.h5",
    "analysis": "analysis.h5",
}


def word_net_id(label: int) -> str:
    """The identifier of class ``label`` in ViRelAy (label map ``word_net_id``, analysis group name)."""
    return f"class{label:04d}"


def export_virelay(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    analysis: str = "spray",
    *,
    inputs: Sequence[Any] | None = None,
) -> Path:
    """Write analysis ``analysis`` of the store as a ViRelAy project in ``out_dir``; returns the YAML path.

    Sample images are the store's thumbnails, resized to the attribution's height and width; a store
    without thumbnails needs ``inputs``: the dataset that was attributed (``inputs[i]`` is ``(x, y)``
    for dataset index ``i``, ``x`` (C, H, W)), whose images are min-max scaled to ``0..255``.
    One-channel images and heatmaps are replicated to three channels, other channel counts are summed
    (heatmaps) or averaged (images) and replicated. The project YAML is written last: its presence
    means the export is complete. Files of an earlier export in ``out_dir`` are replaced.

    Raises:
        BadInputError: ``inputs`` that are not the attributed data (spray.data.images.check_audited); no such
            analysis; inputs that are not images; no thumbnails and no ``inputs``;
            the analysis contains no analysed class.
    """
    out = Path(out_dir)
    guard = active().with_inputs({"the audit store": store_path})
    with AuditStore(store_path) as store:
        if inputs is not None:
            check_audited(store.attrs()["dataset"], inputs, store.path)
        summary = analysis_summary(store, analysis)
        attribution = summary["attribution"]
        info = store.attribution_info(attribution)
        if not info["complete"]:
            raise BadInputError(
                f"attribution {attribution!r} of {store.path} is incomplete ({info['done']}/{info['n']} "
                "samples); finish it with `spray attribute` before exporting"
            )
        shape = info["shape"]  # (N, C, H, W) or (N, H, W)
        if len(shape) not in (3, 4) or min(shape[-2:]) < 4:
            raise BadInputError(
                f"attribution {attribution!r} has samples of shape {tuple(shape[1:])}: ViRelAy shows images "
                "(C, H, W); this store cannot be exported to it"
            )
        attrs = store.attrs()
        has_thumbnails = store.has_thumbnails
        if not has_thumbnails and inputs is None:
            raise BadInputError(
                f"audit store {store.path} holds no thumbnails: pass the attributed dataset (inputs=..., "
                "--data on the command line) so that the export can include the images"
            )
        names = [str(n) for n in attrs.get("label_names") or []]
        n_outputs = int(info["n_outputs"])
        classes = [read_class(store, analysis, int(c), names) for c in summary["classes"]]
        analysed = [c for c in classes if c.skipped is None]
        if not analysed:
            raise BadInputError(f"analysis {analysis!r} of {store.path} has no analysed class to export")

        guard.directory(out, "export directory")
        project = guard.file(out / FILES["project"], "ViRelAy file")
        project.unlink(missing_ok=True)  # a project file marks a complete export
        labels = json.dumps(_label_map(names, n_outputs), indent=1, ensure_ascii=False)
        guard.write(out / FILES["label_map"], "ViRelAy file", lambda tmp: tmp.write_text(labels, encoding="utf-8"))
        _write_samples(store, attribution, shape, has_thumbnails, inputs, out, guard)
        guard.write(out / FILES["analysis"], "ViRelAy file", lambda tmp: _write_analysis(analysed, tmp))

    model = (attrs.get("model") or {}).get("name") or info.get("model_name") or "model"
    dataset = (attrs.get("dataset") or {}).get("name") or "dataset"
    strategy = "predicted_label" if info.get("target") == "prediction" else "true_label"
    text = _project_yaml(
        name=f"{dataset}: {analysis}",
        model=str(model),
        dataset=str(dataset),
        attribution_method=str(info.get("method") or attribution),
        strategy=strategy,
        analysis_method=analysis.replace("-", "_"),
    )
    return guard.write(project, "ViRelAy file", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _label_map(names: list[str], n_outputs: int) -> list[dict[str, Any]]:
    count = max(len(names), n_outputs)
    return [
        {"index": i, "word_net_id": word_net_id(i), "name": names[i] if i < len(names) else str(i)}
        for i in range(count)
    ]


def _to_three(block: np.ndarray, reduce: str) -> np.ndarray:
    """(b, C, H, W) or (b, H, W) -> (b, 3, H, W): one channel replicated, three kept, others reduced."""
    if block.ndim == 3:
        block = block[:, None]
    if block.shape[1] == 3:
        return block
    if block.shape[1] != 1:
        block = block.sum(axis=1, keepdims=True) if reduce == "sum" else block.mean(axis=1, keepdims=True)
    return np.repeat(block, 3, axis=1)


def _resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(b, 3, h, w) uint8 -> (b, 3, height, width) uint8 (bilinear)."""
    if images.shape[2:] == (height, width):
        return images
    out = np.empty((images.shape[0], 3, height, width), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        out[i] = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    return out


def _scaled_inputs(inputs: Sequence[Any], rows: range) -> np.ndarray:
    """Samples ``rows`` of a dataset, each min-max scaled to uint8."""
    images = []
    for i in rows:
        x = np.asarray(inputs[i][0], dtype=np.float64)
        low, high = x.min(), x.max()
        scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
        images.append(np.round(scaled * 255).astype(np.uint8))
    return np.stack(images)


def _rows_dataset(f: h5py.File, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, min(shape[0], (1 << 20) // max(1, row_bytes)))
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]))


def _write_samples(
    store: AuditStore, attribution: str, shape: list[int], has_thumbnails: bool,
    inputs: Sequence[Any] | None, out: Path, guard: OutputGuard,
) -> None:
    n, (height, width) = shape[0], shape[-2:]
    group = f"attributions/{attribution}"
    with (guard.writing(out / FILES["dataset"], "ViRelAy file") as data_tmp,
          guard.writing(out / FILES["attribution"], "ViRelAy file") as attr_tmp,
          h5py.File(data_tmp, "w") as data, h5py.File(attr_tmp, "w") as attr):
        images = _rows_dataset(data, "data", (n, 3, height, width), np.uint8)
        data["label"] = store.read("samples/label")
        relevance = _rows_dataset(attr, "attribution", (n, 3, height, width), np.float32)
        attr["prediction"] = store.read(f"{group}/logits").astype(np.float32)
        attr["label"] = store.read("samples/label")
        attr["index"] = np.arange(n, dtype=np.uint32)
        for rows, block in store.read_blocks(f"{group}/relevance", itemsize=4):  # 64 MiB as float32
            heat = _to_three(block.astype(np.float32), "sum")
            if not np.isfinite(heat).all():
                raise BadInputError(f"attribution {attribution!r} has non-finite relevance in rows {rows}")
            relevance[rows] = heat
            if has_thumbnails:
                thumbs = store.read("samples/thumbnail", rows)
            else:
                thumbs = _scaled_inputs(inputs, range(rows.start, rows.stop))  # type: ignore[arg-type]
            images[rows] = _resize(_to_three(thumbs, "mean").astype(np.uint8), height, width)


def _shared(classes: list[ClassAnalysis], attr: str) -> list[str]:
    """Names present in every class (ViRelAy takes the names of the first category for all)."""
    sets = [set(getattr(c, attr)) for c in classes]
    common = set.intersection(*sets)
    dropped = set.union(*sets) - common
    if dropped:
        log.warning("ViRelAy export leaves out %s %s: not computed for every class", attr, sorted(dropped))
    return sorted(common)


def _write_analysis(classes: list[ClassAnalysis], path: Path) -> None:
    clusterings, maps = _shared(classes, "clusterings"), _shared(classes, "maps")
    with h5py.File(path, "w") as f:
        for cls in classes:
            g = f.create_group(word_net_id(cls.label))
            g["index"] = cls.positions.astype(np.uint32)
            embedding = np.asarray(cls.embedding, dtype=np.float32)
            if not np.isfinite(embedding).all():
                raise BadInputError(f"class {cls.label}: the spectral embedding has non-finite values")
            spectral = g.create_dataset("embedding/spectral", data=embedding)
            spectral.attrs["eigenvalue"] = np.asarray(cls.eigenvalues, dtype=np.float32)
            for name in maps:
                g[f"embedding/{name}"] = np.asarray(cls.maps[name], dtype=np.float32)
            for name in clusterings:
                g[f"cluster/{name}"] = cls.clusterings[name].astype(np.int64)


def _yaml_string(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped (YAML 1.1 escapes)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _project_yaml(
    *, name: str, model: str, dataset: str, attribution_method: str, strategy: str, analysis_method: str
) -> str:
    q = _yaml_string
    return "\n".join([
        "# ViRelAy project written by spray (spray export virelay); open with: virelay project.yaml",
        "project:",
        f"  name: {q(name)}",
        f"  model: {q(model)}",
        f"  label_map: {q(FILES['label_map'])}",
        "  dataset:",
        f"    name: {q(dataset)}",
        "    type: hdf5",
        f"    path: {q(FILES['dataset'])}",
        "  attributions:",
        f"    attribution_method: {q(attribution_method)}",
        f"    attribution_strategy: {strategy}",
        "    sources:",
        f"      - {q(FILES['attribution'])}",
        "  analyses:",
        f"    - analysis_method: {q(analysis_method)}",
        "      sources:",
        f"        - {q(FILES['analysis'])}",
        "",
    ])
