"""Run a pipeline over the classes of an audit store, memoised in the store, classes as tasks (threads or dask).

One process writes the store (this one, holding its writer lock). The per-class work is a pure function
of the class's preprocessed heatmaps and of the cached outputs it reads, so it can run in threads here or
on the workers of a dask.distributed cluster; its outputs are written back as each class finishes, so an
interrupted analysis resumes with the classes and nodes it had not finished.

Store layout of an analysis ``A`` (docs/store.md): ``analyses/A/preprocess`` (features of all samples),
``analyses/A/<class>/<node>`` per class and node, each with attrs ``key`` (memo key), ``params``, ``info``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spray.analysis._common import pinned_threads
from spray.errors import BadInputError, PipelineError
from spray.pipeline.graph import NodeOutput, dependencies, hash_array, hash_json, node_keys, topological_order
from spray.pipeline.nodes import NODES, preprocess
from spray.pipeline.spec import PipelineSpec
from spray.scheduling import local_workers
from spray.store import LATENT_METHOD, AuditStore

log = logging.getLogger(__name__)

ANALYSIS_THREADS = 1
"""BLAS/OpenMP threads of every node computation (recorded in the analysis summary as ``threads``). One: the
classes run in parallel instead, and a reduction's order must not depend on how many threads it got."""


@dataclass
class ClassTask:
    """One class's share of the work: its members, which nodes are stale, the cached outputs they read,
    and its status node."""

    label: int
    positions: np.ndarray
    keys: dict[str, str]
    stale: list[str]
    cached: dict[str, NodeOutput] = field(default_factory=dict)
    status: NodeOutput = field(default_factory=lambda: ({}, {}))  # written together with the new nodes


def run_class(
    features: np.ndarray,
    params: Mapping[str, dict[str, Any]],
    stale: Sequence[str],
    cached: Mapping[str, NodeOutput],
    deps: Mapping[str, list[str]],
) -> dict[str, NodeOutput]:
    """Compute the stale nodes of one class in dependency order (pure: runs on any dask worker).

    Under :data:`ANALYSIS_THREADS` BLAS/OpenMP threads, held for every class at once (see
    :func:`spray.analysis._common.pinned_threads`): the summation order of every reduction, and so every
    stored digit, is the same whichever classes run together, here or on a worker.
    """
    outputs: dict[str, NodeOutput] = {**cached, "features": ({"features": features}, {})}
    computed: dict[str, NodeOutput] = {}
    with pinned_threads(ANALYSIS_THREADS):
        for name in stale:
            inputs = {d: outputs[d] for d in deps[name]}
            inputs["features"] = outputs["features"]
            if NODES[name].reads_params:
                inputs["params"] = ({}, {d: params[d] for d in deps[name]})
            try:
                computed[name] = outputs[name] = NODES[name].run(params[name], inputs)
            except NodeFailure:
                raise
            except BadInputError as exc:  # the processor refused a parameter: analyze() names the file's line
                raise NodeFailure(name, str(exc)) from None
    return computed


class NodeFailure(BadInputError):
    """A node's processor refused its input or parameters; :func:`analyze` re-raises it as a
    :class:`PipelineError` naming the pipeline file, line and table. Picklable (dask workers raise it)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(node, message)
        self.node, self.message = node, message

    def __str__(self) -> str:
        return f"[{self.node}] {self.message}"


def _pipeline_error(spec: PipelineSpec, node: str, message: str) -> PipelineError:
    """``message`` (a processor's, which starts with the parameter it refuses) placed in the pipeline file."""
    key = message.split(" ", 1)[0].split("=", 1)[0]
    return PipelineError(f"{spec.where(node, key if key in spec.nodes.get(node, {}) else None)}: [{node}] {message}")


@dataclass
class AnalysisResult:
    """What :func:`analyze` did: nodes computed per class (for tests and logs), skipped classes, drops."""

    analysis: str
    attribution: str
    preprocessed: bool
    computed: dict[int, list[str]]
    skipped: dict[int, str]
    zero_samples: list[int]
    dropped_samples: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "analysis": self.analysis,
            "attribution": self.attribution,
            "preprocessed": self.preprocessed,
            "computed": {str(k): v for k, v in self.computed.items()},
            "skipped": {str(k): v for k, v in self.skipped.items()},
            "zero_samples": self.zero_samples,
            "dropped_samples": self.dropped_samples,
        }


def analyze(
    store_path: str,
    spec: PipelineSpec,
    *,
    classes: Sequence[int] | None = None,
    scheduler: str | None = None,
    drop_nonfinite: bool = False,
    progress: bool = True,
    on_node: Callable[[int, str], None] | None = None,
) -> AnalysisResult:
    """Run ``spec`` over every (or the given) class of the store; memoised, resumable.

    ``scheduler``: None runs classes on local threads; ``"local:N"`` starts a LocalCluster of N worker
    processes on 127.0.0.1; any other value is the address of a running dask.distributed scheduler.
    """
    local_workers(scheduler)  # a malformed scheduler is refused before any work
    with AuditStore(store_path, mode="a") as store:
        attribution = _choose_attribution(store, spec.attribution)
        group = f"analyses/{spec.name}"
        try:
            stored = _features(store, group, attribution, spec.nodes.get("preprocess", {}), drop_nonfinite)
        except BadInputError as exc:
            if str(exc).split(" ", 1)[0] in spec.nodes.get("preprocess", {}):
                raise _pipeline_error(spec, "preprocess", str(exc)) from None
            hint = " (spray analyze --drop-nonfinite)" if "drop_nonfinite" in str(exc) else ""
            raise BadInputError(f"attribution {attribution!r} of audit store {store.path}: {exc}{hint}") from None
        targets = store.read(f"attributions/{attribution}/target")
        dataset_index = store.read("samples/index")
        n_outputs = store.read(f"attributions/{attribution}/logits", rows=slice(0, 1)).shape[1]
        wanted = _check_classes(classes, n_outputs)
        params = {name: spec.nodes[name] for name in NODES if name in spec.nodes}
        enabled = set(params)
        order = topological_order(NODES, enabled)
        deps = {name: dependencies(NODES, enabled, name) for name in order}
        usable = stored.kept & ~stored.zero

        members = {label: np.flatnonzero(usable & (targets == label)) for label in wanted}
        reasons = {label: _too_small(len(p), params) for label, p in members.items() if len(p)}
        _check_analysable(store, attribution, spec, classes, targets, members, reasons)

        tasks: list[ClassTask] = []
        skipped: dict[int, str] = {}
        for label, reason in reasons.items():
            positions = members[label]
            path = f"{group}/{label}"
            if reason:
                skipped[label] = reason
                store.write_node(f"{path}/status", {}, {"skipped": reason, "n": int(positions.size)})
                continue
            class_root = hash_json({"features": stored.key, "positions": hash_array(positions)})
            keys = node_keys(NODES, params, class_root)
            stale = _stale(store, path, order, keys)
            task = ClassTask(label, positions, keys, stale)
            status = (
                {"positions": positions, "dataset_index": dataset_index[positions]},
                {"skipped": None, "n": int(positions.size), "keys": keys},
            )
            if stale:  # the status goes in with the nodes: readers see the old class or the new one
                needed = {d for s in stale for d in deps[s]} - set(stale)
                task.cached = {d: _read_output(store, f"{path}/{d}") for d in needed}
                task.status = status
                tasks.append(task)
            else:
                store.write_node(f"{path}/status", *status)

        computed: dict[int, list[str]] = {}
        try:
            for task, outputs in _run_tasks(tasks, stored.features, params, deps, scheduler, progress):
                store.write_nodes({
                    **{
                        f"{group}/{task.label}/{name}": (
                            outputs[name][0],
                            {"key": task.keys[name], "params": params[name], "info": outputs[name][1]},
                        )
                        for name in task.stale
                    },
                    f"{group}/{task.label}/status": task.status,
                })
                for name in task.stale:
                    if on_node is not None:
                        on_node(task.label, name)
                computed[task.label] = list(task.stale)
        except NodeFailure as exc:
            raise _pipeline_error(spec, exc.node, exc.message) from None
        zero_samples = [int(i) for i in dataset_index[stored.zero]]
        dropped_samples = [int(i) for i in dataset_index[stored.dropped]]
        store.write_node(
            f"{group}/summary",
            {},
            {
                "pipeline": spec.to_json(),
                "attribution": attribution,
                "attribution_id": store.attribution_info(attribution)["attribution_id"],
                "classes": sorted(int(c) for c in wanted),
                "skipped": {str(k): v for k, v in skipped.items()},
                "zero_samples": zero_samples,
                "dropped_samples": dropped_samples,
                "threads": {"blas_openmp": ANALYSIS_THREADS, "numba": _numba_threads()},
            },
        )
    if stored.zero.any():
        log.warning("%d all-zero heatmaps were left out of the analysis", int(stored.zero.sum()))
    return AnalysisResult(spec.name, attribution, stored.computed, computed, skipped, zero_samples, dropped_samples)


def _numba_threads() -> int:
    """numba's thread count (NN-descent's parallel search; its neighbours depend on it, docs/pipelines.md)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _choose_attribution(store: AuditStore, name: str | None) -> str:
    if name is None:
        # Latent relevance stored beside the heatmaps (spray attribute --latent) is analysed only by name.
        have = [a for a in store.attributions() if store.attribution_info(a)["method"] != LATENT_METHOD]
        if len(have) != 1:
            raise BadInputError(
                f"audit store {store.path} holds {len(have)} attributions ({', '.join(have) or 'none'}); "
                "name the one to analyse with analysis.attribution in the pipeline file"
            )
        name = have[0]
    info = store.attribution_info(name)
    if len(info["shape"]) not in (3, 4):
        raise BadInputError(
            f"attribution {name!r} of {store.path} has shape {tuple(info['shape'])}: SpRAy analyses heatmaps "
            "of image inputs, (n, C, H, W) or (n, H, W), not feature vectors"
        )
    if info["done"] < info["n"]:
        raise BadInputError(
            f"attribution {name!r} of {store.path} is incomplete ({info['done']}/{info['n']} samples); "
            "run `spray attribute` again to finish it before analysing"
        )
    return name


def _check_classes(classes: Sequence[int] | None, n_outputs: int) -> list[int]:
    if classes is None:
        return list(range(n_outputs))
    bad = [c for c in classes if not 0 <= int(c) < n_outputs]
    if bad:
        raise BadInputError(f"classes {bad} do not exist: the model has outputs 0..{n_outputs - 1}")
    return sorted({int(c) for c in classes})


def _check_analysable(
    store: AuditStore, attribution: str, spec: PipelineSpec, classes: Sequence[int] | None,
    targets: np.ndarray, members: Mapping[int, np.ndarray], reasons: Mapping[int, str | None],
) -> None:
    """Refuse classes asked for by name that have no samples, and a run in which no class can be analysed;
    ``targets`` are the attribution's explained outputs, one per sample."""
    empty = [label for label, positions in members.items() if not len(positions)]
    if classes is not None and empty:
        have = ", ".join(map(str, np.unique(targets))) or "none"
        raise BadInputError(
            f"class {empty[0]} has no samples in attribution {attribution!r} of {store.path} (no sample's "
            f"explained output is {empty[0]}); classes with samples: {have}"
        )
    if reasons and all(reasons.values()):
        shown = "; ".join(f"class {label}: {reason}" for label, reason in list(reasons.items())[:4])
        more = f"; and {len(reasons) - 4} more" if len(reasons) > 4 else ""
        raise BadInputError(
            f"no class of attribution {attribution!r} of {store.path} can be analysed with the pipeline "
            f"{spec.source} ({shown}{more}): lower knn.n_neighbors and spectral.n_eigenpairs in a pipeline "
            "file (--pipeline)"
        )


def _too_small(n: int, params: Mapping[str, dict[str, Any]]) -> str | None:
    k = params["knn"]["n_neighbors"]
    if n < k + 1:
        return f"{n} samples, fewer than knn.n_neighbors + 1 = {k + 1}"
    m = params["spectral"]["n_eigenpairs"]
    if n <= m:
        return f"{n} samples, not more than spectral.n_eigenpairs = {m}"
    return None


@dataclass(frozen=True)
class StoredFeatures:
    """The preprocessed heatmaps of all samples as node ``<group>/preprocess`` holds them."""

    features: np.ndarray
    """(n, g_h * g_w) float32, one row per sample; rows dropped for non-finite values are zeros."""
    kept: np.ndarray
    """(n,) bool: False where the sample was dropped for non-finite relevance."""
    zero: np.ndarray
    """(n,) bool: the sample's heatmap has no relevance at all."""
    key: str
    """The node's key: the memo key every class's nodes build on."""
    computed: bool
    """Whether the features were computed by this call (False: read from the store)."""

    @property
    def dropped(self) -> np.ndarray:
        return np.flatnonzero(~self.kept)


def _features(
    store: AuditStore, group: str, attribution: str, params: dict[str, Any], drop_nonfinite: bool
) -> StoredFeatures:
    """The preprocessed heatmaps of all samples, cached as node ``<group>/preprocess``."""
    info = store.attribution_info(attribution)
    # attribution_id changes whenever the attribution is (re)created, e.g. by --overwrite with a new model.
    source = {k: info[k] for k in ("method", "params", "target", "model_hash", "attribution_id", "shape")}
    key = hash_json({"attribution": attribution, "source": source, "params": params, "drop": drop_nonfinite})
    path = f"{group}/preprocess"
    cached = store.has_node(path, {"key": key})
    if cached:
        arrays, _ = store.read_node(path)
    else:
        with store.reading():  # one snapshot of the relevance, read in blocks of whole chunks of 64 MiB as float64
            blocks = store.read_blocks(f"attributions/{attribution}/relevance", itemsize=8, whole_chunks=True)
            maps = preprocess(params, (block for _, block in blocks), info["shape"], drop_nonfinite=drop_nonfinite)
        full = maps.features  # one row per sample unless rows were dropped: then zero rows fill their places
        if not maps.kept.all():
            full = np.zeros((maps.kept.size, maps.features.shape[1]), dtype=np.float32)
            full[maps.kept] = maps.features
        arrays = {"features": full, "kept": maps.kept, "zero": maps.zero}
        store.write_node(path, arrays, {"key": key, "params": params})
    return StoredFeatures(
        arrays["features"], arrays["kept"].astype(bool), arrays["zero"].astype(bool), key, not cached
    )


def _stale(store: AuditStore, path: str, order: Sequence[str], keys: Mapping[str, str]) -> list[str]:
    """Nodes whose stored key differs from the wanted one, plus everything downstream (by key)."""
    return [name for name in order if not store.has_node(f"{path}/{name}", {"key": keys[name]})]


def _read_output(store: AuditStore, path: str) -> NodeOutput:
    arrays, attrs = store.read_node(path)
    return arrays, attrs.get("info", {})


def _run_tasks(
    tasks: list[ClassTask],
    features: np.ndarray,
    params: Mapping[str, dict[str, Any]],
    deps: Mapping[str, list[str]],
    scheduler: str | None,
    progress: bool,
) -> Iterator[tuple[ClassTask, dict[str, NodeOutput]]]:
    """Run the class tasks with dask, yielding each as it finishes (so the caller can store it)."""
    from spray.scheduling import dask_map

    def arguments(task: ClassTask) -> tuple[Any, ...]:
        rows = task.positions
        contiguous = rows[-1] - rows[0] + 1 == len(rows)  # sorted and unique, so a slice: a view, no copy
        return (features[rows[0] : rows[-1] + 1] if contiguous else features[rows], params, task.stale,
                task.cached, deps)

    # Classes run concurrently in threads, and warning filters are process-wide: the processors' own
    # catch_warnings blocks (library chatter: sklearn, umap, numba) would restore each other's filters under a
    # running fit and let it through. One block here holds "ignore" for as long as tasks run; spray's own
    # messages go through logging, which it does not touch.
    # The thread count is held here, in the thread that runs the analysis, for as long as tasks run: the class
    # threads then only join the hold (OpenBLAS does not reliably take a thread count raised back from a
    # thread other than the one that lowered it), and a worker process holds its own in run_class.
    with warnings.catch_warnings(), pinned_threads(ANALYSIS_THREADS):
        warnings.simplefilter("ignore")
        yield from dask_map(run_class, tasks, arguments, scheduler=scheduler, progress=progress, desc="classes")
