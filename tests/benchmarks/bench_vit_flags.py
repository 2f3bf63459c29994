"""ViT flag diagnosis: why the benchmark's ViT cases rank their planted group high and are not flagged.

For each cached quick case (as bench_detection.py finds them) it prints, from the stored audit (no retraining):

1. how *blocky* the stored heatmaps are: max over the first 200 samples of the largest deviation of a pixel from
   the mean of its ``--patch`` × ``--patch`` block, over max |R| (0: every heatmap constant on the patch grid);
2. the flag computation (docs/spray-method.md §11–12) of the poisoned class and of the clean class with the
   largest selection excess, per analysis (pixel-level ``spray``, concept-level ``concept``): the best cluster's
   cut, the observed statistic t = −log ncut, the null's R values (mean, sd, min, max), the excess, the
   selection-null p, the outlier score against the other classes, the flag p and the Benjamini–Hochberg q over
   both analyses' tests, and for the poisoned class the F1 of its named cluster;
3. with ``--grid G``: the stored heatmaps analysed again pooled to G × G cells (analysis ``gridG``), and with
   ``--method METHOD``: the training images attributed again with METHOD from the cached weights (e.g.
   ``epsilon_gamma_box``: z^B at the first layer, which on the ViT — whose only convolution is the patch
   embedding — is EpsilonPlusFlat with flat replaced by z^B; ``epsilon_plus_flat_attnlrp``: AttnLRP through
   the attention) and analysed with the benchmark's pixel pipeline as ``m_METHOD``, and with ``--token-latent
   LAYER``: the latent relevance at ViT block LAYER per token, the 4 × 4 token grid sum-pooled to 2 × 2 cells
   (the class token left out; the benchmark's concept analysis sums over all tokens), analysed with the
   benchmark's concept pipeline as ``tokens``; each printed as its own ranking alone (rank, flag, q, excess,
   F1) with the clean classes it flags, and whether its kNN graphs equal the ``spray`` analysis's. All three
   WRITE into the stores: run them on a copy of the cache.

Run:  python tests/benchmarks/bench_vit_flags.py CACHE [--full] [--seeds 0,1] [--patch 7] [--grid 4]
      [--method epsilon_gamma_box] [--token-latent encoder.layers.encoder_layer_2]
(``--full``: the cache holds full-size cases, not ``--quick`` ones.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench_detection import cases, trained_model
from spray.attribution.latent import LatentAttributor, area_pool
from spray.attribution.methods import get_method
from spray.benchmark.cases import FULL, QUICK, make_case
from spray.benchmark.data import load_images
from spray.benchmark.metrics import detection
from spray.benchmark.run import CONCEPT_PIPELINE, METHOD, PIPELINE, attribute_case
from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import flag_tests, rank_classes
from spray.results import best_clusters
from spray.store import AuditStore

ANALYSES = ("spray", "concept")


class TokenLatent(LatentAttributor):
    """Latent relevance per token of a ViT with a 4 × 4 token grid after its class token, (D, g, g)."""

    name = "latent_tokens"

    def _pooled(self, latent, layout):
        values = layout.canonical(latent.relevance)  # (B, D, 17)
        return area_pool(values[:, :, 1:].reshape(*values.shape[:2], 4, 4), self.grid, mean=False)


def blockiness(store: AuditStore, method: str, patch: int, rows: int = 200) -> float:
    """Largest deviation of a heatmap pixel from its ``patch`` × ``patch`` block's mean, over max |R|."""
    R = np.asarray(store.read(f"attributions/{method}/relevance", slice(0, rows)), np.float64).sum(axis=1)
    n, h, w = R.shape
    blocks = R[:, : h - h % patch, : w - w % patch].reshape(n, h // patch, patch, w // patch, patch)
    return float(np.abs(blocks - blocks.mean(axis=(2, 4), keepdims=True)).max() / np.abs(R).max())


def flag_rows(store: AuditStore, poisoned: int, planted: list[int]) -> list[str]:
    """The flag computation of the poisoned class and of the clean class of largest excess, per analysis."""
    tests = flag_tests(store, list(ANALYSES))
    lines = []
    for analysis in ANALYSES:
        best = {b.label: b for b in best_clusters(store, analysis)}
        mine = [t for t in tests if t.analysis == analysis]
        clean = max((t for t in mine if t.label != poisoned), key=lambda t: t.excess)
        for t in (next(t for t in mine if t.label == poisoned), clean):
            arrays, info = store.read_node(f"analyses/{analysis}/{t.label}/null")
            null = arrays["null_statistics"]
            cluster = best[t.label].cluster
            f1 = f" F1 {detection(list(cluster.members), planted)[2]:.2f}" if t.label == poisoned else ""
            lines.append(
                f"  {analysis:7s} class {t.label}{'*' if t.label == poisoned else ' '} ncut {cluster.ncut:.3f} "
                f"(size {cluster.size}) t {info['info']['statistic']:.2f} "
                f"null {null.mean():.2f} ± {null.std(ddof=1):.2f} "
                f"[{null.min():.2f}, {null.max():.2f}] excess {t.excess:.2f} null p {t.null_p:.1e} "
                f"outlier {t.outlier:.2f} p {t.p_value:.3f} q {t.q_value:.3f}{' FLAGGED' if t.flagged else ''}{f1}")
    return lines


def variant_row(store: AuditStore, name: str, poisoned: int, planted: list[int]) -> str:
    """The pixel-level ranking of analysis ``name`` alone, and whether its kNN graphs are the spray analysis's."""
    ranking = rank_classes(store, name)
    entry = ranking.of(poisoned)
    same = all(np.array_equal(store.read(f"analyses/{name}/{c.label}/knn/indices"),
                              store.read(f"analyses/spray/{c.label}/knn/indices")) for c in ranking)
    clean = [c.label for c in ranking.flagged if c.label != poisoned]
    f1 = detection(list(entry.cluster.members), planted)[2]
    return (f"  {name:7s} rank {entry.rank} flagged {entry.flagged} q {entry.q_value:.3f} excess "
            f"{entry.null_excess:.2f} ncut {entry.ncut:.3f} F1 {f1:.2f} "
            f"clean flags {clean} kNN graphs = spray's: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--seeds", type=lambda s: {int(v) for v in s.split(",")})
    parser.add_argument("--patch", type=int, default=7)
    parser.add_argument("--grid", type=int)
    parser.add_argument("--method")
    parser.add_argument("--token-latent")
    args = parser.parse_args()
    size, images = FULL if args.full else QUICK, load_images("mnist")
    for case, directory in cases(args.caches, args.seeds, size):
        data = make_case(case, images, size)
        planted, store_path = sorted(data.planted.tolist()), str(directory / "audit.h5")
        variants = []
        start = time.process_time()
        if args.grid:
            name = f"grid{args.grid}"
            spec = (PIPELINE.replace('name = "spray"', f'name = "{name}"\nattribution = "{METHOD}"')
                    + f"[preprocess]\ngrid = {args.grid}\n")
            analyze(store_path, pipeline_from_text(spec, source="bench_vit_flags --grid"))
            variants.append(name)
        if args.method or args.token_latent:
            model, train = trained_model(case, directory, data), data.dataset(data.train)
        if args.method:
            name, method = f"m_{args.method}", args.method
            # The benchmark's images are pixel values in [0, 1]: z^B's box.
            params = {"low": 0.0, "high": 1.0} if method == "epsilon_gamma_box" else {}
            attribute_case(store_path, model, train, case, get_method(method, **params))
            spec = PIPELINE.replace('name = "spray"', f'name = "{name}"\nattribution = "{method}"')
            analyze(store_path, pipeline_from_text(spec, source="bench_vit_flags --method"))
            variants.append(name)
        if args.token_latent:
            attribute_case(store_path, model, train, case, TokenLatent(get_method(METHOD), args.token_latent, 2))
            spec = CONCEPT_PIPELINE.replace('name = "concept"', 'name = "tokens"').replace(
                'attribution = "latent"', f'attribution = "{TokenLatent.name}"')
            analyze(store_path, pipeline_from_text(spec, source="bench_vit_flags --token-latent"))
            variants.append("tokens")
        with AuditStore(store_path, mode="r") as store:
            print(f"{case.name} (poisoned class {data.poisoned_class}): heatmaps' deviation within "
                  f"{args.patch} x {args.patch} blocks {blockiness(store, METHOD, args.patch):.1e} of max |R|")
            print("\n".join(flag_rows(store, data.poisoned_class, planted)))
            for name in variants:
                print(variant_row(store, name, data.poisoned_class, planted))
        if variants:
            print(f"  variants' CPU seconds: {time.process_time() - start:.0f}")


if __name__ == "__main__":
    main()
