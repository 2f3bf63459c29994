"""``spray run FILE.toml``: a whole audit from one declarative file (docs/run.md; template in pipelines/).

Tables besides the SpRAy node tables of docs/pipelines.md (:data:`RUN_TABLES` holds keys and defaults):

``[audit]``        ``out`` (directory for store, weights, ClArC runs, report; relative to the file),
                   ``scheduler`` (where attribution and analysis run: "" this process, "local:N", an address)
``[model]``        ``factory`` (MOD:FACTORY), ``weights`` (optional state_dict file)
``[train]``        optional: train the model first (``data``, ``epochs``, ``batch_size``, ``lr``, ``seed``)
``[data]``         ``source`` (MOD:FACTORY, npz:PATH, hdf5:PATH, folder:PATH or csv:PATH) to audit; ``[data.transform]``
                   the preprocessing spec of image sources (``resize``, ``crop``, ``mode``, ``mean``, ``std``:
                   spray/data/transforms.py), applied to every image source of the file;
                   ``skip_unreadable`` (leave out image files that cannot be decoded)
``[attribution]``  ``method``, ``target`` (label|prediction), ``batch_size``, ``params`` (a table),
                   ``allow_nonconservative``, ``workers`` (processes decoding samples ahead)
``[clarc]``        optional: correct the model for a flagged cluster (``cluster``, ``methods``, ``layer``, ...) and
                   verify the correction (``verify``, on by default: spray.clarc.verify)
``[evaluate]``     optional, with ``[clarc]``: the test data (``test``, ``poisoned_test``, ``everywhere_test``)
``[report]``       ``path`` (HTML report; empty string: no report)

The steps are those of ``spray demo`` (spray.workflow), each memoised by itself, so running a file again
only does what changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spray.errors import BadInputError, PipelineError

if TYPE_CHECKING:
    from spray.clarc import ClarcResult
    from spray.pipeline import PipelineSpec
    from spray.ranking import Ranking
    from spray.training import TrainingConfig

# Defaults per table; a type instead of a value is a parameter of that type without a default (required
# where REQUIRED says so, else "not given": e.g. the ClArC method's own number of epochs).
RUN_TABLES: dict[str, dict[str, Any]] = {
    "audit": {"out": "storage/audit", "scheduler": ""},
    "model": {"factory": str, "weights": ""},
    "train": {"data": str, "epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0, "weight_decay": 0.0, "warmup": 0.0,
              "label_smoothing": 0.0, "shift": 0},
    "data": {"source": str, "transform": {}, "skip_unreadable": False},
    "attribution": {"method": "epsilon_plus_flat", "target": "label", "batch_size": 32, "params": {},
                    "allow_nonconservative": False, "workers": 0, "device": "cpu"},
    "clarc": {"cluster": "top", "methods": ["auto"], "layer": str, "epochs": int, "lr": float,
              "lambda": float, "fraction": float, "batch_size": 64, "seed": 0, "out": "clarc",
              "overwrite": False, "verify": True},
    "evaluate": {"test": str, "poisoned_test": str, "everywhere_test": str, "fda_rank": False,
                 "relevance_target": "prediction"},
    "report": {"path": "report.html"},
}
REQUIRED: dict[str, tuple[str, ...]] = {"model": ("factory",), "data": ("source",), "train": ("data",),
                                        "evaluate": ("test",)}
"""Tables a file must have (model, data) and keys a present table must give."""
OPTIONAL_TABLES = ("train", "clarc", "evaluate")
SOURCES = (("data", "source"), ("train", "data"), ("evaluate", "test"), ("evaluate", "poisoned_test"),
           ("evaluate", "everywhere_test"))
"""The data sources of a run file (table, key)."""
TARGETS = ("label", "prediction")


@dataclass(frozen=True)
class RunResult:
    """Where a run put its results, the ranking it produced and its ClArC runs."""

    store: Path
    weights: Path | None
    report: Path | None
    ranking: Ranking
    clarc: list[ClarcResult] = field(default_factory=list)


def read_run(path: str | Path) -> tuple[dict[str, dict[str, Any]], PipelineSpec]:
    """The run tables (defaults filled in, relative paths resolved; optional tables only when given) and
    the analysis spec of a run file. Every problem is a :class:`PipelineError` naming file, line, table
    and parameter."""
    from spray.data import ImageTransform
    from spray.pipeline import read_pipeline
    from spray.pipeline.spec import where

    path = Path(path)
    spec = read_pipeline(path, extra_tables=RUN_TABLES)
    text = path.read_text(encoding="utf-8")

    def fail(table: str, key: str | None, message: str) -> PipelineError:
        return PipelineError(f"{where(str(path), text, table, key)}: {message}")

    tables: dict[str, dict[str, Any]] = {}
    for name, defaults in RUN_TABLES.items():
        given = spec.extra.get(name)
        if given is None and name in OPTIONAL_TABLES:
            continue
        if given is None and name in REQUIRED:
            raise fail(name, None, f"a run file needs a [{name}] table")
        missing = [k for k in REQUIRED.get(name, ()) if k not in (given or {})]
        if missing:
            raise fail(name, None, f"[{name}] needs {', '.join(missing)}")
        tables[name] = {k: None if isinstance(v, type) else v for k, v in defaults.items()} | (given or {})
    _check_values(tables, fail)

    try:
        tables["data"]["transform"] = ImageTransform.from_dict(tables["data"]["transform"])
    except BadInputError as exc:
        table, key = ("data.transform", None) if "[data.transform]" in text else ("data", "transform")
        raise fail(table, key, f"[data.transform] {exc}") from None

    base = path.resolve().parent
    tables["audit"]["out"] = base / tables["audit"]["out"]
    if tables["model"]["weights"]:
        tables["model"]["weights"] = base / tables["model"]["weights"]
    for table, key in SOURCES:
        if table in tables and tables[table][key]:
            tables[table][key] = _relative_source(tables[table][key], base)
    if "clarc" in tables:
        tables["clarc"]["out"] = tables["audit"]["out"] / tables["clarc"]["out"]
    return tables, spec


Fail = Callable[[str, str | None, str], PipelineError]
"""``fail(table, key, message)``: the error, placed at the table's (or key's) line of the file."""


def _check_values(tables: dict[str, dict[str, Any]], fail: Fail) -> None:
    """What the types alone do not say: combinations, choices and ranges."""
    from spray.clarc import METHODS, ClusterSpec
    from spray.data.models import device_named

    if "train" in tables:
        if tables["model"]["weights"]:
            raise fail("train", None, "give either [train] or model.weights, not both")
        try:
            _training_config(tables["train"])
        except BadInputError as exc:  # TrainingConfig's check, placed at the table
            raise fail("train", None, f"[train] {exc}") from None
    workers = tables["attribution"]["workers"]
    if workers < 0:
        raise fail("attribution", "workers", f"attribution.workers must be at least 0, got {workers}")
    if tables["attribution"]["target"] not in TARGETS:
        raise fail("attribution", "target", f"attribution.target must be one of {', '.join(TARGETS)}")
    try:
        device_named(tables["attribution"]["device"])
    except BadInputError as exc:
        raise fail("attribution", "device", f"attribution.{exc}") from None
    if "evaluate" in tables and "clarc" not in tables:
        raise fail("evaluate", None, "[evaluate] measures a ClArC correction: add a [clarc] table")
    if "evaluate" in tables and tables["evaluate"]["relevance_target"] not in TARGETS:
        raise fail("evaluate", "relevance_target",
                   f"evaluate.relevance_target must be one of {', '.join(TARGETS)}")
    clarc = tables.get("clarc")
    if clarc is None:
        return
    methods = clarc["methods"]
    if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise fail("clarc", "methods", f"clarc.methods must list distinct methods of {', '.join(METHODS)}, "
                                       f"got {methods!r}")
    if clarc["cluster"] != "top":
        try:
            ClusterSpec.parse(clarc["cluster"])
        except BadInputError as exc:  # the parse error's text, placed at the key
            raise fail("clarc", "cluster", f"clarc.cluster must be \"top\" or {exc}") from None
    for key in ("epochs", "batch_size"):
        if clarc[key] is not None and clarc[key] < 1:
            raise fail("clarc", key, f"clarc.{key} must be at least 1, got {clarc[key]}")
    for key in ("lr", "lambda", "fraction"):
        if clarc[key] is not None and clarc[key] <= 0:
            raise fail("clarc", key, f"clarc.{key} must be positive, got {clarc[key]}")


def _training_config(train: dict[str, Any]) -> TrainingConfig:
    """The ``[train]`` table's recipe (checked: a bad value is a BadInputError naming the parameter)."""
    from spray.training import TrainingConfig

    return TrainingConfig(**{k: v for k, v in train.items() if k != "data"})


def _relative_source(source: str, base: Path) -> str:
    """A file source (npz:, hdf5:, folder:, csv:) with a relative path, made relative to the run file's folder."""
    from spray.data.sources import IMAGE_SCHEMES, source_file

    path = source_file(source)
    if path is None or path.is_absolute():
        return source
    scheme, _, rest = source.partition(":")
    mark, options = rest.partition("?")[1:] if scheme in IMAGE_SCHEMES else ("", "")
    return f"{scheme}:{base / path}{mark}{options}"


def _open(tables: dict[str, dict[str, Any]], source: str) -> Any:
    """A data source of the file; image sources with the ``[data.transform]`` spec."""
    from spray.data.sources import open_source_like

    return open_source_like(source, tables["data"]["transform"], tables["data"]["skip_unreadable"])


def run_file(path: str | Path, *, progress: bool = True) -> RunResult:
    """Run the audit a file describes: (train) -> attribute -> analyse -> rank -> (ClArC -> evaluate) -> report.
    No output replaces an input of the file, or a file spray did not write (spray.outputs)."""
    from spray.outputs import protecting, source_path

    tables, spec = read_run(path)
    inputs = {f"{table}.{key}": source_path(tables[table][key])
              for table, key in SOURCES if table in tables and tables[table][key]}
    with protecting({"the run file": path, "model.weights": tables["model"]["weights"] or None, **inputs}):
        return _run(tables, spec, progress)


def _run(tables: dict[str, dict[str, Any]], spec: PipelineSpec, progress: bool) -> RunResult:
    """:func:`run_file`'s steps, its inputs protected from its outputs (spray.outputs)."""
    from spray.attribution import AttributionRun, WorkerRecipe
    from spray.attribution.methods import get_method, method_params
    from spray.data import load_model, model_hash
    from spray.outputs import active
    from spray.pipeline.graph import hash_json
    from spray.seeding import seeded
    from spray.workflow import audit, train_once

    out = active().directory(tables["audit"]["out"], "run output directory")
    model_spec = tables["model"]["factory"]
    if "train" in tables:
        train = tables["train"]
        config = _training_config(train)
        with seeded(train["seed"]):  # initial weights from the train seed, global state kept
            model = load_model(model_spec)
        weights = out / f"model-{hash_json({'factory': model_spec, **train})[:12]}.pt"  # cached by the table
        train_once(model, lambda: _open(tables, train["data"]), weights, config, progress=progress)
    else:
        model = load_model(model_spec, tables["model"]["weights"] or None)
        weights = tables["model"]["weights"] or None
    dataset = _open(tables, tables["data"]["source"])
    attribution = tables["attribution"]
    method = get_method(attribution["method"], **method_params(attribution["method"], attribution["params"], dataset))
    store = active().file(out / "audit.h5", "audit store")  # not an input of the file
    run = AttributionRun(
        method, model_hash=model_hash(model),
        model_name=model_spec, dataset_name=tables["data"]["source"], target=attribution["target"],
        label_names=getattr(dataset, "label_names", None), batch_size=attribution["batch_size"],
        scheduler=tables["audit"]["scheduler"] or None, allow_nonconservative=attribution["allow_nonconservative"],
        workers=attribution["workers"],
        recipe=WorkerRecipe(model=model_spec, data=tables["data"]["source"],
                            transform=tables["data"]["transform"].to_dict(),
                            skip_unreadable=tables["data"]["skip_unreadable"], device=attribution["device"]),
        progress=progress,
    )
    device = attribution["device"]
    explained = model if device == "cpu" else copy.deepcopy(model).to(device)  # ClArC goes on with the CPU model
    ranking = audit(store, explained, dataset, run, spec)
    corrected = _correct(tables, store, model, dataset, spec.name, progress) if "clarc" in tables else []
    report = None
    if tables["report"]["path"]:
        from spray.report import build_report

        report = build_report(store, out / tables["report"]["path"], analysis=spec.name)
    return RunResult(store, Path(weights) if weights else None, report, ranking, corrected)


def _correct(tables: dict[str, dict[str, Any]], store: Path, model: Any, dataset: Any, analysis: str,
             progress: bool) -> list[ClarcResult]:
    """The ``[clarc]`` and ``[evaluate]`` tables as a :func:`spray.workflow.correct` call."""
    from spray.clarc import ClarcConfig, EvaluationData, Tuning
    from spray.workflow import correct

    clarc, evaluate = tables["clarc"], tables.get("evaluate", {})
    tuning = Tuning(epochs=clarc["epochs"], lr=clarc["lr"], batch_size=clarc["batch_size"], seed=clarc["seed"],
                    fraction=clarc["fraction"], lam=clarc["lambda"])
    configs = [
        ClarcConfig(method, clarc["out"], cluster=clarc["cluster"], analysis=analysis, layer=clarc["layer"] or None,
                    tuning=tuning, relevance_target=evaluate.get("relevance_target", "prediction"),
                    fda_rank=evaluate.get("fda_rank", False), verify=clarc["verify"], overwrite=clarc["overwrite"],
                    progress=progress)
        for method in clarc["methods"]
    ]
    evaluation = None
    if "evaluate" in tables:  # its test set is required
        evaluation = EvaluationData(*(_open(tables, evaluate[key]) if evaluate.get(key) else None
                                      for key in ("test", "poisoned_test", "everywhere_test")))
    return correct(store, model, dataset, configs, evaluation)
