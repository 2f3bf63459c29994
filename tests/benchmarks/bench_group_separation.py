"""Group separation benchmark: is a case's planted group a cluster of its class in a given representation?

SpRAy can name the planted images only if they form a group of the class's kNN graph (docs/spray-method.md
§2, §8). For the benchmark's cached quick cases (spray benchmark --cache), this recomputes, for the poisoned
class's training images, the representations the pixel-level and concept-level analyses could read — the input
heatmap, and at each convolution block's output (ReLU) of the benchmark's CNN the latent relevance and the
activations, pooled over all positions (sum of relevance: CRP's R_c; mean and max of activations) or to 2 × 2
cells — every row scaled to unit length as pipelines/concept.toml does, and prints per representation:

- ``purity``: the share of the planted images' k = 10 nearest neighbours (spray.analysis.KNNGraph) that are
  planted images, next to ``chance`` = (m − 1)/(n − 1) for m planted of n (a cluster: near 1);
- ``ncut``: the normalised cut of the planted images as one cluster in the pipeline's locally scaled affinity
  (spray.analysis.local_scaling_affinity, normalized_cuts; 0: disconnected, about 1: no group at all) — what
  the best-cluster rule compares (docs/spray-method.md §9);
- ``probe``: the out-of-fold AUROC of a logistic regression (5 stratified folds, standardised features)
  telling the planted images from the rest: whether the representation holds the artifact at all, clustered
  or not;
- ``share``: the planted images' share of input relevance inside the artifact's mask (and the mask's area).

With ``--rank NAME`` (a representation's printed name, e.g. "features.2 A, max", or :data:`PENULTIMATE`, the
activations entering the model's last linear layer that the ``activation`` baseline clusters, on any
architecture), that representation of every class instead: each class analysed as the benchmark's concept
pipeline analyses it (spray.benchmark.run.CONCEPT_PIPELINE's kNN graph, spectral embedding, clusterings, best
cluster and selection null, rows scaled to unit length) and the classes judged by the flag rule of
docs/spray-method.md §12 (excess against the other classes, p = max, Benjamini–Hochberg over the classes): the
poisoned class's rank, q-value, excess against the others', outlier score, named cluster's ncut, size and F1, and
the flags on clean classes (every class of the control) — what an analysis of that representation would report,
computed in memory.

Run:  python tests/benchmarks/bench_group_separation.py CACHE [CACHE ...] [--seeds 0,1,2] [--json OUT]
      python tests/benchmarks/bench_group_separation.py CACHE --seeds 0 --rank "features.2 A, max"
      python tests/benchmarks/bench_group_separation.py CACHE --full --rank "penultimate A"
(the cases of the quick size, ``--full``: of the full size; the CNN's but for ``--rank "penultimate A"``;
without --rank the control and the global artifacts have no local mask and are skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from bench_detection import cases, sized_case_arguments, trained_model
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spray.analysis import KNNGraph, SelectionNull, local_scaling_affinity, normalized_cuts, selection_excess
from spray.attribution.methods import get_method
from spray.benchmark.baseline import penultimate_features
from spray.benchmark.cases import QUICK, Case, Size, make_case
from spray.benchmark.data import load_images
from spray.benchmark.metrics import detection
from spray.benchmark.run import CONCEPT_PIPELINE, METHOD
from spray.errors import BadInputError
from spray.pipeline import pipeline_from_text
from spray.pipeline.nodes import NODES, _fda, _knn, _selection, _spectral
from spray.ranking import _against_others, benjamini_hochberg

LAYERS = ("features.2", "features.6", "features.10")
"""The benchmark CNN's three blocks' ReLU outputs: 8 channels of 28 × 28, 16 of 14 × 14, 32 of 7 × 7 (the last
is ClArC's default layer, the concept analysis's)."""
PENULTIMATE = "penultimate A"
"""The representation of the ``activation`` baseline (spray.benchmark.baseline): the activations entering the
model's last linear layer, flattened (the ViT: the 17 tokens of 64 features its final layer norm puts out)."""
N_NEIGHBORS = 10
"""The pipelines' kNN graph's neighbours (spray.analysis.KNNGraph's default)."""


def unit_rows(features: np.ndarray) -> np.ndarray:
    """``features`` (n, d) with every row scaled to unit length (zero rows stay zero), as the concept pipeline's
    ``normalization = "l2"`` scales them."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.finfo(float).tiny)


def representations(model: torch.nn.Module, x: torch.Tensor, label: int) -> dict[str, np.ndarray]:
    """The input heatmaps and, per layer of :data:`LAYERS`, pooled latent relevance and activations of the
    images ``x`` (n, 1, 28, 28) explained for class ``label``: name -> (n, d) float64, rows not yet scaled."""
    lrp, target = get_method(METHOD), torch.full((len(x),), label)
    heatmaps, _ = lrp.attribute(model, x, target)
    found = {"input R, pixels": heatmaps.detach().flatten(1)}
    for layer in LAYERS:
        latent = lrp.latent(model, x, target, layer)
        relevance, activation = latent.relevance.detach(), latent.activation.detach()
        found[f"{layer} R, 2x2 cells"] = torch.nn.functional.adaptive_avg_pool2d(relevance, 2).flatten(1)
        found[f"{layer} R_c (sum)"] = relevance.sum((2, 3))
        found[f"{layer} A, mean"] = activation.mean((2, 3))
        found[f"{layer} A, max"] = activation.amax((2, 3))
    return {name: value.double().numpy() for name, value in found.items()}


def separation(features: np.ndarray, planted: np.ndarray, seed: int) -> dict[str, float]:
    """``purity``, ``ncut`` and ``probe`` (module docstring) of the boolean group ``planted`` (n,) in the
    rows of ``features`` (n, d), each scaled to unit length first."""
    rows = unit_rows(features)
    graph = KNNGraph(n_neighbors=N_NEIGHBORS).fit(rows)
    affinity = local_scaling_affinity(graph.indices_, graph.distances_)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = cross_val_predict(probe, rows, planted, cv=folds, method="decision_function")
    return {"purity": float(planted[graph.indices_[planted]].mean()),
            "ncut": float(normalized_cuts(affinity, np.where(planted, 0, -1))[0]),
            "probe": float(roc_auc_score(planted, scores))}


def measure(case: Case, directory: Path, images: object, size: Size = QUICK) -> dict:
    """One case's row: the planted images' relevance share inside their masks and, per representation, the
    planted group's separation within the poisoned class."""
    data = make_case(case, images, size)
    if data.is_global or case.is_control or case.architecture != "cnn":
        raise BadInputError(f"{case.name}: no local artifact on the benchmark's CNN")
    model = trained_model(case, directory, data)
    members = np.flatnonzero(data.train[1] == data.poisoned_class)
    planted = np.isin(members, data.planted)
    found = representations(model, torch.from_numpy(data.train[0][members]), data.poisoned_class)
    heatmaps = found["input R, pixels"][planted].reshape(len(data.planted), *data.masks.shape[1:])
    masks = data.masks[np.searchsorted(data.planted, members[planted])].astype(bool)
    share = [float(h[m].sum() / h.sum()) for h, m in zip(heatmaps, masks)]
    return {"case": case.name, "planted": int(planted.sum()), "n": int(planted.size),
            "chance": float((planted.sum() - 1) / (planted.size - 1)), "share": float(np.median(share)),
            "mask_area": float(data.masks.mean()),
            "separation": {name: separation(f, planted, case.seed) for name, f in found.items()}}


def ranked(case: Case, directory: Path, images: object, name: str, size: Size = QUICK) -> dict:
    """The poisoned class's rank, q-value, excess and named cluster, and the clean classes' flags, when every
    class's representation ``name`` is analysed by the concept pipeline and judged by the flag rule."""
    data = make_case(case, images, size)
    model = trained_model(case, directory, data)

    def features(x: np.ndarray, label: int) -> np.ndarray:
        if name == PENULTIMATE:
            return penultimate_features(model, x).astype(np.float64)
        return representations(model, torch.from_numpy(x), label)[name]

    params = pipeline_from_text(CONCEPT_PIPELINE, source="spray.benchmark concept pipeline").nodes
    clusterings = sorted(n for n in params if n in NODES and NODES[n].kind == "clustering")
    labels = range(len(data.label_names))
    excess, p_null, ncut, named = [], [], [], []
    for label in labels:
        members = np.flatnonzero(data.train[1] == label)
        rows = unit_rows(features(data.train[0][members], label))
        knn = _knn(params["knn"], {"features": ({"features": rows.astype(np.float32)}, {})})
        inputs = {"knn": knn, "spectral": _spectral(params["spectral"], {"knn": knn})}
        for node in clusterings:
            inputs[node] = NODES[node].run(params[node], inputs)
        best = _fda({**params["fda"], "n_permutations": 0}, inputs)[1]["best"]
        named.append(members[inputs[best["node"]][0][best["clustering"]] == best["cluster"]])
        null = SelectionNull(**params["null"]).fit(rows, _selection(params))
        excess.append(selection_excess(null.statistic_, null.null_statistics_))
        p_null.append(null.p_value_)
        ncut.append(best["ncut"])
    excess_ = np.array(excess)
    tests = [_against_others(excess_[c], np.delete(excess_, c)) for c in labels]
    q = benjamini_hochberg(np.array([max(p_null[c], tests[c][3]) for c in labels]))
    order = sorted(labels, key=lambda c: (q[c], max(p_null[c], tests[c][3]), ncut[c]))
    c = data.poisoned_class
    return {"case": case.name, "rank": order.index(c) + 1, "q": float(q[c]), "excess": float(excess_[c]),
            "others": [float(np.delete(excess_, c).mean()), float(np.delete(excess_, c).std(ddof=1))],
            "outlier": float(tests[c][2]), "ncut": ncut[c], "size": int(named[c].size),
            "f1": detection(named[c].tolist(), data.planted.tolist())[2],
            "clean_flags": int(sum(q[k] <= 0.05 for k in labels if k != c or case.is_control))}


def main() -> None:
    args, seeds, size = sized_case_arguments(__doc__.split("\n\n")[0], {
        "--rank": "analyse every class on this representation and judge the classes (module docstring)"})
    images, rows = load_images("mnist"), []
    torch.set_num_threads(1)
    for case, directory in cases(args.caches, seeds, size):
        if args.rank:
            row = ranked(case, directory, images, args.rank, size)
            rows.append(row)
            print(f"{row['case']}: rank {row['rank']}, q {row['q']:.3g}, excess {row['excess']:.2f} (others "
                  f"{row['others'][0]:.2f} ± {row['others'][1]:.2f}, outlier {row['outlier']:.2f}), named cluster "
                  f"ncut {row['ncut']:.3f}, {row['size']} images, F1 {row['f1']:.2f}; clean flags "
                  f"{row['clean_flags']}", flush=True)
            continue
        try:
            row = measure(case, directory, images, size)
        except BadInputError as exc:
            print(f"skipped {case.name}: {exc}", flush=True)
            continue
        rows.append(row)
        print(f"{row['case']}: {row['planted']} planted of {row['n']}, chance purity {row['chance']:.2f}, "
              f"median relevance share in the mask {row['share']:.2f} (mask area {row['mask_area']:.3f})")
        for name, s in row["separation"].items():
            print(f"  {name:22s} purity {s['purity']:.2f}  ncut {s['ncut']:.2f}  probe {s['probe']:.2f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
