"""``spray run FILE.toml``: a whole audit from one declarative file (docs/run.md; template in pipelines/).

Tables besides the SpRAy node tables of docs/pipelines.md:

``[audit]``        ``out`` (directory for store, weights, report; relative paths are relative to the file),
                   ``scheduler`` (where attribution and analysis run: "" this process, "local:N", an address)
``[model]``        ``factory`` (MOD:FACTORY), ``weights`` (optional state_dict file)
``[train]``        optional: train the model first (``data``, ``epochs``, ``batch_size``, ``lr``, ``seed``)
``[data]``         ``source`` (MOD:FACTORY, npz:PATH, hdf5:PATH or folder:PATH) to audit
``[attribution]``  ``method``, ``target`` (label|prediction), ``batch_size``, ``params`` (a table)
``[report]``       ``path`` (HTML report; empty string: no report)

Every stage is memoised by the stage itself, so running a file again only does what changed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spray.errors import PipelineError

RUN_TABLES: dict[str, dict[str, Any]] = {
    "audit": {"out": "storage/audit", "scheduler": ""},
    "model": {"factory": None, "weights": ""},
    "train": {"data": "", "epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0},
    "data": {"source": None},
    "attribution": {"method": "epsilon_plus_flat", "target": "label", "batch_size": 32, "params": {}},
    "report": {"path": "report.html"},
}
REQUIRED = ("model", "data")


@dataclass(frozen=True)
class RunResult:
    """Where a run put its results, and the ranking it produced."""

    store: Path
    weights: Path | None
    report: Path | None
    ranking: list[dict[str, Any]]


def read_run(path: str | Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """The run tables (defaults filled in, relative paths resolved) and the analysis spec of a run file."""
    from spray.pipeline import read_pipeline

    path = Path(path)
    spec = read_pipeline(path, extra_tables=frozenset(RUN_TABLES))
    tables: dict[str, dict[str, Any]] = {}
    for name, defaults in RUN_TABLES.items():
        given = spec.extra.get(name)
        if given is None and name in REQUIRED:
            raise PipelineError(f"{path}: a run file needs a [{name}] table")
        unknown = set(given or {}) - set(defaults)
        if unknown:
            raise PipelineError(
                f"{path}: unknown parameter '{name}.{sorted(unknown)[0]}'; valid: {', '.join(sorted(defaults))}"
            )
        tables[name] = {**defaults, **(given or {})}
        missing = [k for k, v in tables[name].items() if v is None]
        if given is not None and missing:
            raise PipelineError(f"{path}: [{name}] needs {', '.join(missing)}")
    base = path.resolve().parent
    tables["audit"]["out"] = base / tables["audit"]["out"]
    if tables["model"]["weights"]:
        tables["model"]["weights"] = base / tables["model"]["weights"]
    tables["data"]["source"] = _relative_source(tables["data"]["source"], base)
    tables["train"]["data"] = _relative_source(tables["train"]["data"], base)
    _check_train(tables, spec.extra, path)
    return tables, spec


def _relative_source(source: str, base: Path) -> str:
    """A file source (npz:, hdf5:, folder:) with a relative path, made relative to the run file's folder."""
    scheme, sep, rest = source.partition(":")
    if sep and scheme in ("npz", "hdf5", "folder") and not Path(rest).is_absolute():
        return f"{scheme}:{base / rest}"
    return source


def _check_train(tables: dict[str, dict[str, Any]], given: dict[str, Any], path: Path) -> None:
    if "train" not in given:
        tables.pop("train")
    elif tables["model"]["weights"]:
        raise PipelineError(f"{path}: give either [train] or model.weights, not both")


def run_file(path: str | Path, *, progress: bool = True) -> RunResult:
    """Run the audit a file describes: (train) -> attribute -> analyse -> rank -> report."""
    from spray.attribution import WorkerRecipe, attribute_dataset
    from spray.attribution.methods import get_method
    from spray.data import load_model, model_hash, open_source
    from spray.pipeline import analyze
    from spray.ranking import rank_classes
    from spray.store import AuditStore

    tables, spec = read_run(path)
    out: Path = tables["audit"]["out"]
    out.mkdir(parents=True, exist_ok=True)
    model_spec = tables["model"]["factory"]
    if "train" in tables:
        with torch.random.fork_rng(devices=[]):  # initial weights from the train seed, global state kept
            torch.manual_seed(tables["train"]["seed"])
            model = load_model(model_spec)
        weights = _trained(model, model_spec, tables["train"], out, progress)
    else:
        model = load_model(model_spec, tables["model"]["weights"] or None)
        weights = tables["model"]["weights"] or None
    dataset = open_source(tables["data"]["source"])
    attribution = tables["attribution"]
    store = out / "audit.h5"
    scheduler = tables["audit"]["scheduler"] or None
    attribute_dataset(
        store, model, dataset, get_method(attribution["method"], **attribution["params"]),
        model_hash=model_hash(model), model_name=model_spec, dataset_name=tables["data"]["source"],
        label_names=getattr(dataset, "label_names", None), target=attribution["target"],
        batch_size=attribution["batch_size"], progress=progress, scheduler=scheduler,
        recipe=WorkerRecipe(model=model_spec, data=tables["data"]["source"]),
    )
    analyze(str(store), spec, scheduler=scheduler, progress=progress)
    with AuditStore(store) as audit:
        ranking = rank_classes(audit, spec.name)
    report = None
    if tables["report"]["path"]:
        from spray.report import build_report

        report = build_report(store, out / tables["report"]["path"], analysis=spec.name)
    return RunResult(store, Path(weights) if weights else None, report, ranking)


def _trained(model: torch.nn.Module, factory: str, train: dict[str, Any], out: Path, progress: bool) -> Path:
    """Train ``model`` as ``[train]`` says, once: weights are cached by the factory and the table."""
    from spray.data import load_weights, open_source
    from spray.demo.train import train_model
    from spray.pipeline.graph import hash_json

    weights = out / f"model-{hash_json({'factory': factory, **train})[:12]}.pt"
    if weights.exists():
        load_weights(model, weights)
        model.eval()
        return weights
    dataset = open_source(train["data"])
    train_model(model, dataset, epochs=train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
                seed=train["seed"], progress=progress)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)
    return weights
