"""Direction candidates: is a planted group that is no kNN neighbourhood a non-Gaussian direction of its class?

A diagnostic for issue 17 on cached benchmark cases (`spray benchmark --cache`, not adopted). Where a planted group
is linearly decodable from an analysis's features but not a neighbourhood of its class's kNN graph (the ViT's tag:
bench_small_groups.py's ``probe`` near 1, ``purity`` 0.1–0.7), no clustering names it. A group of a few per cent
shifted along one direction makes that direction's projection a skewed, two-component mixture, which independent
component analysis looks for without labels. Per class and analysis of spray.benchmark.run.RANKED, the class's
stored features (rows as the analysis preprocessed them) are reduced to ``--components`` whitened principal
components and unmixed by FastICA; each component is split in two by a two-component Gaussian mixture (the
smaller side the candidate group, kept if it holds 2–50 % of the class). Two rules choose one direction per class:

- ``skew``: the component of largest |skewness| (its long tail is the group);
- ``ashman``: of the components with an admissible split, the one of largest Ashman's D,
  |μ₁ − μ₂| √2 / √(σ₁² + σ₂²), the mixture's separation.

Printed per rule: the statistic of the poisoned class, its rank among the classes' (1 = largest: what a ranking
on it would report), the range of the clean classes', the AUROC of the planted images along the chosen direction
(sign: the group's side high) and the F1 of the candidate group with its size. Ground truth only scores.

Run:  python tests/benchmarks/bench_directions.py CACHE [CACHE ...] [--full] [--seeds 0,100] [--components 10]
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
from scipy import stats
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

import bench_detection  # this folder, first on sys.path when run as a script
from spray.benchmark import run as benchmark_run
from spray.benchmark.cases import Case, Size, make_case
from spray.benchmark.metrics import detection
from spray.errors import BadInputError

RULES = ("skew", "ashman")
MIN_SHARE, MAX_SHARE = 0.02, 0.5


def components(features: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The class's ``n`` independent components (samples × n), from its ``n`` whitened principal components."""
    whitened = PCA(n, whiten=True, random_state=seed).fit_transform(features - features.mean(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FastICA(n, whiten="unit-variance", random_state=seed, max_iter=500).fit_transform(whitened)


def split(projection: np.ndarray) -> tuple[np.ndarray, float]:
    """The members of a 1-D ``projection``'s two-component Gaussian mixture's component of higher mean (bool), and
    the mixture's Ashman's D."""
    mixture = GaussianMixture(2, random_state=0, n_init=2).fit(projection[:, None])
    mu, var = mixture.means_.ravel(), mixture.covariances_.ravel()
    high = mixture.predict(projection[:, None]) == int(np.argmax(mu))
    return high, float(abs(mu[0] - mu[1]) * np.sqrt(2) / np.sqrt(var[0] + var[1]))


def directions(features: np.ndarray, n: int) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """Per rule of :data:`RULES`: (statistic, projection oriented with the group high, candidate group) of the
    direction it chooses."""
    sources = components(features, n)
    skew = stats.skew(sources, axis=0)
    j = int(np.argmax(np.abs(skew)))
    tail = sources[:, j] * np.sign(skew[j])
    chosen = {"skew": (float(abs(skew[j])), tail, split(tail)[0])}
    best = (-np.inf, sources[:, 0], np.zeros(len(sources), bool))
    for column in sources.T:
        high, d = split(column)
        if high.sum() > len(column) / 2:  # the smaller side is the candidate group
            column, high = -column, ~high
        if MIN_SHARE * len(column) <= high.sum() <= MAX_SHARE * len(column) and d > best[0]:
            best = (d, column, high)
    chosen["ashman"] = best
    return chosen


def score(case: Case, directory: Path, images: object, size: Size, n: int) -> dict:
    """One case's row: per analysis and rule, the poisoned class's statistic, rank, AUROC and candidate F1."""
    if case.is_control:
        raise BadInputError("the control plants nothing")
    data = make_case(case, images, size)
    row: dict = {"case": case.name}
    with h5py.File(directory / "audit.h5", "r") as store:
        for analysis in benchmark_run.RANKED:
            features = store[f"analyses/{analysis}/preprocess/features"]
            statistic, found = {}, {}
            for label in range(len(data.label_names)):
                group = store[f"analyses/{analysis}/{label}"]
                chosen = directions(features[group["status/positions"][:]].astype(np.float64), n)
                statistic[label] = {rule: chosen[rule][0] for rule in RULES}
                if label == data.poisoned_class:
                    index = group["status/dataset_index"][:]
                    found = {rule: (index, *chosen[rule][1:]) for rule in RULES}
            row[analysis] = {}
            for rule in RULES:
                index, projection, members = found[rule]
                mine = statistic[data.poisoned_class][rule]
                others = [s[rule] for label, s in statistic.items() if label != data.poisoned_class]
                row[analysis][rule] = {
                    "statistic": mine, "rank": 1 + sum(o > mine for o in others), "others": [min(others), max(others)],
                    "auroc": float(roc_auc_score(np.isin(index, data.planted), projection)),
                    "f1": detection(index[members].tolist(), data.planted.tolist())[2], "size": int(members.sum())}
    return row


def line(row: dict) -> str:
    parts = [row["case"]]
    for analysis in benchmark_run.RANKED:
        parts.append(f"  {analysis}: " + " | ".join(
            f"{rule} {r['statistic']:.2f} rank {r['rank']} (others {r['others'][0]:.2f} to {r['others'][1]:.2f}) "
            f"AUROC {r['auroc']:.2f} F1 {r['f1']:.2f} ({r['size']})"
            for rule, r in row[analysis].items()))
    return "\n".join(parts)


def main() -> None:
    args, seeds, size = bench_detection.sized_case_arguments(
        __doc__.split("\n\n")[0], {"--components": "whitened principal components unmixed per class (10)"})
    n = int(args.components or 10)
    rows = []
    for _, row in bench_detection.scored(args.caches, seeds, lambda c, d, i: score(c, d, i, size, n), size=size):
        print(line(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
