"""What the report shows, gathered from the store into plain values for the template.

Text that mixes our wording with user-supplied strings (class names, model names) is built with
:meth:`markupsafe.Markup.format`, which escapes every argument; everything else reaches the template as
plain strings and is escaped there (autoescape is on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from spray.data.images import check_audited, file_sha256
from spray.errors import BadInputError
from spray.ranking import RankedClass, rank_analyses
from spray.report import images, plots
from spray.report.auto_choice import AutoChoiceView, auto_choice_view
from spray.report.concepts import (
    CHANNELS,
    AuditedModel,
    ConditionalExplainer,
    channel_relevance,
    distinguishing_channels,
    reference_samples,
)
from spray.report.enrichment import Enrichment, enrichment
from spray.results import ClarcRun, ClassAnalysis, analysis_summary, best_clusters, read_clarc_runs, read_class
from spray.store import LATENT_METHOD, AuditStore

DEFAULT_MAX_CLASSES = 5
MAX_CLUSTERS_SHOWN = 8
PROTOTYPES = 6

METHOD_NAMES = {
    "aclarc": "A-ClArC (the model is fine-tuned on images with the artifact added)",
    "auto": "ClArC, method chosen on validation data (see the run's auto record)",
    "dfr": "DFR (the last layer is refitted on group-balanced data)",
    "groupdro": "GroupDRO (the model is fine-tuned for its worst group)",
    "pclarc": "P-ClArC (the artifact direction is projected out of the model's features)",
    "rrclarc": "RR-ClArC (the model is fine-tuned to ignore the artifact direction)",
}


# ---------------------------------------------------------------------------------------------- format


def fmt_z(z: float | None) -> str:
    if z is None or (isinstance(z, float) and math.isnan(z)):
        return "–"
    if math.isinf(z):
        return "∞" if z > 0 else "−∞"
    return f"{z:.0f}" if abs(z) >= 100 else f"{z:.1f}"


def fmt_cut(ncut: float | None) -> str:
    """A normalised cut in [0, 2], to three significant digits (the demo's range from 0.0016 to 0.3)."""
    return "–" if ncut is None or math.isnan(ncut) else f"{ncut:.3g}"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f} %"


# ---------------------------------------------------------------------------------------------- views


@dataclass
class Prototype:
    dataset_index: int
    heatmap: str
    image: str | None
    overlay: str | None


@dataclass
class Reference:
    """A reference sample of a concept group: its image (the thumbnail; without thumbnails the input, where the
    model was given), and, where the model was given, its explanation, the conditional heatmap of the group's
    distinguishing channels and their ``share`` of the explanation."""

    dataset_index: int
    image: str | None
    heatmap: str | None = None
    conditional: str | None = None
    share: str | None = None


@dataclass
class ClusterView:
    cluster: int
    title: str
    size: int
    share: str
    colour: str
    flagged: bool
    z: str
    mean_heatmap: str
    prototypes: list[Prototype]
    channels: list[str]
    """A latent attribution's most relevant channels of the group ("channel 12: 31 %"), else empty."""
    distinguishing: list[str] = field(default_factory=list)
    """A latent attribution's channels that set the group apart (:func:`distinguishing_channels`) with their
    difference ("channel 6: +0.214"), else empty."""
    references: list[Reference] = field(default_factory=list)
    """A latent attribution's reference samples of the group on its distinguishing channels
    (:func:`reference_samples`), else empty."""


@dataclass
class ClassView:
    label: int
    name: str
    analysis: str
    anchor: str
    rank: int
    n: int
    candidate: bool
    clustering: str
    reference: str | None
    z: str
    p: str
    flagged_size: int | None
    eigengap: int | None
    spectrum: str
    map: str
    map_name: str
    clusters: list[ClusterView]
    hidden_clusters: int
    activations: bool = False
    """The analysis grouped latent activations, not relevance (``spray attribute --latent-quantity activation``
    or ``activation_max``): the class's maps and channels are what the layer responds to, not explanations."""


@dataclass
class ClarcView:
    run: str
    method: str
    target: str
    layer: str
    cav_auc: str
    metrics: list[dict[str, str]]
    patch: str | None
    mask: str | None
    examples: list[tuple[int, str]] = field(default_factory=list)
    verification: Markup | None = None
    verified: str | None = None
    """``"cleared"``, ``"not cleared"``, ``"not verified"`` or ``"not flagged"`` (spray.clarc.verify); None: the run
    was not verified."""
    unflagged: Markup | None = None
    """Said when the corrected group's class was not flagged (the run's ``flagged`` False); None otherwise."""
    choice: AutoChoiceView | None = None
    """How ``--method auto`` chose (spray.report.auto_choice); None for another method."""


# ---------------------------------------------------------------------------------------------- gather


def gather(store_path: Path, analyses: str | Sequence[str], max_classes: int | None,
           audited: AuditedModel | None = None) -> dict[str, Any]:
    """Everything the template needs, as plain values (see templates/report.html): the report of one
    analysis, or of several ranked together (:func:`spray.ranking.rank_analyses`), each class's section from
    the analysis its entry names. ``audited``: the model and data, for the conditional heatmaps of concept
    groups (analyses of a latent attribution)."""
    from spray import __version__

    names_of = [analyses] if isinstance(analyses, str) else list(analyses)
    max_classes = DEFAULT_MAX_CLASSES if max_classes is None else max(0, int(max_classes))
    with AuditStore(store_path) as store:
        if audited is not None:
            check_audited(store.attrs()["dataset"], audited.dataset, store_path)
        # The report lists the Clever Hans candidates (classes the ranking flagged) first, each in rank order.
        ranking = sorted(rank_analyses(store, names_of), key=lambda e: (not e.flagged, e.rank))
        summaries = {a: analysis_summary(store, a) for a in names_of}
        infos = {a: store.attribution_info(summaries[a]["attribution"]) for a in names_of}
        for analysis in names_of:
            _check_images(store_path, summaries[analysis]["attribution"], infos[analysis])
        latent = [a for a in names_of if infos[a].get("method") == LATENT_METHOD]
        # A concept-level analysis's groups are told apart by relevance per channel as its preprocessing saw it.
        preprocessing = {a: json.loads(summaries[a]["pipeline"])["nodes"].get("preprocess", {}) for a in latent}
        activations = {a for a in latent if (infos[a].get("params") or {}).get("quantity", "relevance") != "relevance"}
        if audited is not None and not latent:
            raise BadInputError(
                f"the model given (--model) draws conditional heatmaps of concept-level analyses, but "
                f"{'analysis' if len(names_of) == 1 else 'analyses'} {','.join(names_of)!r} of audit store "
                f"{store_path} {'reads' if len(names_of) == 1 else 'read'} no latent relevance: leave out "
                "--model, --weights and --data, or report a concept-level analysis too (e.g. --analysis "
                "spray,concept)"
            )
        explainers = {a: ConditionalExplainer(audited, store, summaries[a]["attribution"])
                      for a in latent} if audited is not None else {}
        root = store.attrs()
        names = [str(n) for n in root.get("label_names") or []]
        metadata = (root.get("dataset") or {}).get("metadata") or {}
        findings = enrichment(ranking, metadata, store.read("samples/label")) if metadata else []
        has_thumbnails = store.has_thumbnails
        classes = []
        for entry in ranking:
            if len(classes) == max_classes:
                break
            if entry.skipped is None:
                analysis = entry.analysis
                cls = read_class(store, analysis, entry.label, names)
                if cls.skipped is None:
                    with store.interpreting(f"class {cls.label} of analysis {analysis!r}"):
                        classes.append(_class_view(store, summaries[analysis]["attribution"], cls, entry,
                                                   has_thumbnails, preprocessing.get(analysis),
                                                   explainers.get(analysis), analysis in activations))
        clarc = []
        for run in read_clarc_runs(store):
            with store.interpreting(f"node clarc/{run.run}/result"):
                clarc.append(_clarc_view(run, names))
        analysed = [_analysis_facts(store, a, summaries[a], infos[a], "" if len(names_of) == 1 else f" ({a})")
                    for a in names_of]

    model = root.get("model") or {}
    dataset = root.get("dataset") or {}
    info = infos[names_of[0]]
    audit = {
        "model_name": model.get("name") or info.get("model_name") or "unknown",
        "model_hash": model.get("hash") or info.get("model_hash") or "unknown",
        "dataset_name": dataset.get("name") or "unknown",
        "n_samples": dataset.get("size") or info["n"],
        "n_classes": len(names) or info["n_outputs"],
        "method": info.get("method"),
        "analyses": analysed,
        "store_name": store_path.name,
        "store_path": str(store_path.resolve()),
        "store_sha256": file_sha256(store_path),
        "store_created": root.get("created"),
    }
    several = len(names_of) > 1
    rows = [
        {
            "rank": e.rank, "name": e.name, "label": e.label, "n": e.n_samples, "analysis": e.analysis,
            "cut": fmt_cut(e.ncut), "z": fmt_z(e.z_score), "p": fmt_p(e.p_value),
            "distance": fmt_z(e.separation),  # the rest's standard deviations, one decimal like z
            "size": "–" if e.cluster is None else str(e.cluster.size),
            "candidate": e.flagged, "skipped": e.skipped,
            "anchor": f"class-{e.label}" if any(c.label == e.label for c in classes) else None,
        }
        for e in ranking
    ]
    concept_shown = any(c.analysis in latent for c in classes)
    return {
        "title": f"Clever Hans audit of {audit['dataset_name']}",
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spray_version": __version__,
        "audit": audit,
        "summary": _summary(ranking, clarc, names, findings),
        "ranking": rows,
        "several": several,
        "classes": classes,
        "clarc": clarc,
        "has_thumbnails": has_thumbnails,
        "conditional_hint": None if audited is not None or not concept_shown else (
            f"spray report {store_path.name} --analysis {','.join(names_of)} --model MOD:FACTORY "
            "--weights FILE --data SPEC"),
    }


def _check_images(store_path: Path, attribution: str, info: dict[str, Any]) -> None:
    """Relevance is (n, C, H, W) or (n, H, W): the only shapes the analysis accepts."""
    if len(info["shape"]) not in (3, 4):
        raise BadInputError(
            f"attribution {attribution!r} of {store_path} has shape {tuple(info['shape'])}: the report "
            "shows image heatmaps, (n, C, H, W) or (n, H, W)"
        )


def _analysis_facts(store: AuditStore, analysis: str, summary: dict[str, Any], info: dict[str, Any],
                    suffix: str) -> dict[str, Any]:
    """What the "What was audited" section says of one analysis and its attribution; ``suffix`` follows each
    label (" (concept)" in a report of several analyses)."""
    with store.interpreting(f"node analyses/{analysis}/summary"):
        zero_samples = len(summary.get("zero_samples") or [])
        dropped_samples = len(summary.get("dropped_samples") or [])
    return {
        "name": analysis,
        "suffix": suffix,
        "attribution": summary["attribution"],
        "method": info.get("method"),
        "params": json.dumps(info.get("params") or {}, sort_keys=True),
        "target": "the true label of each image" if info.get("target") == "label"
        else "the class the model predicted for each image",
        "created": info.get("created"),
        "pipeline": _pretty_json(summary.get("pipeline")),
        "n_analysed": sum(c.cluster is not None for c in best_clusters(store, analysis)),
        "zero_samples": zero_samples,
        "dropped_samples": dropped_samples,
    }


def _pretty_json(text: str | None) -> str:
    try:
        return json.dumps(json.loads(text or "null"), indent=2, sort_keys=True)
    except ValueError:
        return str(text)


def _summary(ranking: list[RankedClass], clarc: list[ClarcView], names: list[str],
             findings: list[Enrichment]) -> list[Markup]:
    """The plain-language findings, one paragraph per item; ``findings``: metadata enrichments of flagged
    groups (spray.report.enrichment), the strongest five told."""
    candidates = [e for e in ranking if e.flagged]
    skipped = [e for e in ranking if e.skipped is not None]
    analysed = len(ranking) - len(skipped)
    paragraphs = []
    if candidates:
        top = candidates[0]
        share = 100 * top.cluster.size / max(top.n_samples, 1)
        paragraphs.append(Markup(
            "Class <strong>‘{name}’</strong> contains a group of <strong>{size}</strong> of its {n} images "
            "({share:.0f} %) that the model explains in a strikingly different way from the rest of the class "
            "(separability z = {z}; more distinct than the class's selection null and the other classes "
            "allow, q {q}). It is a distinct strategy of the model in this class, and the strongest "
            "candidate for a shortcut, a so-called "
            "<em>‘Clever Hans’</em> strategy: the model may recognise these images by something other than "
            "what the class is about, such as a ruler, a text marker, a frame or a scanner artefact. "
            "Look at the example images of this group in <a href=\"#class-{label}\">its section</a> and check "
            "whether they share such a feature."
        ).format(name=top.name, size=top.cluster.size, n=top.n_samples, share=share,
                 z=fmt_z(top.z_score), q="< 0.001" if top.q_value < 0.001 else f"= {top.q_value:.3f}",
                 label=top.label))
        others = candidates[1:]
        if others:
            shown = others[:5]
            listed = Markup(", ").join(Markup("‘{}’").format(e.name) for e in shown)
            more = len(others) - len(shown)
            paragraphs.append(Markup(
                "{count} further class{es} also contain{s} a distinct group and deserve{s} a look: {listed}{more}."
            ).format(count=len(others), es="es" if len(others) > 1 else "", s="" if len(others) > 1 else "s",
                     listed=listed, more=f" and {more} more" if more else ""))
        else:
            paragraphs.append(Markup("No other of the {n} analysed classes passes the screening threshold.")
                              .format(n=analysed))
    elif analysed and all(e.null_p_value is None for e in ranking if e.skipped is None):
        paragraphs.append(Markup(
            "This analysis has no selection null (it predates calibrated flags), so whether a class stands out "
            "was not tested; run <code>spray analyze</code> again to test it. The classes are still ranked."
        ))
    else:
        paragraphs.append(Markup(
            "None of the {n} analysed classes stands out: every class's most distinct group is about as "
            "distinct as the other classes' are. This makes a shortcut less likely but does not rule it out: "
            "a shortcut shared by every class, small groups and subtle differences can escape this screening."
        ).format(n=analysed))
    for finding in findings[:5]:
        sentence = finding.sentence()
        paragraphs.append(Markup(
            "{sentence} (one-sided Fisher exact test over the data set's metadata, false discovery rate "
            "controlled by Benjamini–Hochberg: q {q}): a candidate for the cause, if images of that "
            "{column} differ in what they show."
        ).format(sentence=sentence[0].upper() + sentence[1:], column=finding.column,
                 q="< 0.001" if finding.q < 0.001 else f"= {finding.q:.3f}"))
    if len(findings) > 5:
        paragraphs.append(Markup("{k} further metadata values are enriched in flagged groups.")
                          .format(k=len(findings) - 5))
    if skipped:
        paragraphs.append(Markup(
            "{k} class{es} could not be analysed, mostly because {they} had too few images; the table below "
            "gives the reason for each."
        ).format(k=len(skipped), es="es" if len(skipped) > 1 else "", they="they" if len(skipped) > 1 else "it"))
    for run in clarc:
        rows = {m["model_key"]: m for m in run.metrics}
        if "original" in rows and "corrected" in rows and rows["original"]["poisoned"] != "–":
            paragraphs.append(Markup(
                "A correction ({method}) was tried for {target}: accuracy on images that carry the artifact "
                "went from {before} to {after}, on clean images from {cb} to {ca}."
            ).format(method=run.method.split(" (")[0], target=run.target, before=rows["original"]["poisoned"],
                     after=rows["corrected"]["poisoned"], cb=rows["original"]["clean"],
                     ca=rows["corrected"]["clean"]))
        if run.verified == "not cleared":
            paragraphs.append(Markup(
                "The correction ({method}) for {target} did <strong>not</strong> remove the group: after it, the "
                "class is still flagged. Treat the corrected model as still using the shortcut."
            ).format(method=run.method.split(" (")[0], target=run.target))
        if run.verified == "not verified":
            paragraphs.append(Markup(
                "The correction ({method}) for {target} could <strong>not</strong> be checked: explained by the "
                "corrected model, the class's images show nothing to group. Do not take it as removing the shortcut."
            ).format(method=run.method.split(" (")[0], target=run.target))
    return paragraphs


def _class_view(
    store: AuditStore, attribution: str, cls: ClassAnalysis, entry: RankedClass, has_thumbnails: bool,
    preprocess: dict[str, Any] | None, explainer: ConditionalExplainer | None, activations: bool = False,
) -> ClassView:
    """``preprocess``: a concept-level analysis's preprocessing parameters (None: a pixel-level analysis);
    ``activations``: its latent attribution holds activations, not relevance."""
    best = cls.best
    if best is not None:
        clustering, flagged = best["clustering"], int(best["cluster"])
    else:
        k = cls.spectral_info.get("eigengap_n_clusters")
        clustering = f"kmeans_{k}" if f"kmeans_{k}" in cls.clusterings else sorted(cls.clusterings)[0]
        flagged = None
    labels = cls.clusterings[clustering]
    ids, sizes = np.unique(labels, return_counts=True)
    order = sorted(zip(ids.tolist(), sizes.tolist(), strict=True),
                   key=lambda t: (t[0] != flagged, t[0] < 0, -t[1], t[0]))
    shown = order[:MAX_CLUSTERS_SHOWN]
    colours = plots.cluster_colours([c for c, _ in order], flagged)

    if "umap" in cls.maps:
        xy, map_name = cls.maps["umap"], "UMAP"
    elif "tsne" in cls.maps:
        xy, map_name = cls.maps["tsne"], "t-SNE"
    else:
        cols = [1, 2] if cls.embedding.shape[1] >= 3 else [0, min(1, cls.embedding.shape[1] - 1)]
        xy, map_name = cls.embedding[:, cols], "spectral coordinate"

    # Mean heatmap per shown cluster: the class's relevance is streamed once, in row order.
    relevance_path = f"attributions/{attribution}/relevance"
    order_rows = np.argsort(cls.positions, kind="stable")
    sorted_positions, sorted_labels = cls.positions[order_rows], labels[order_rows]
    sums: dict[int, np.ndarray] = {}
    # Latent relevance, in the class's order: each member's total per channel R_c, and as the analysis saw it.
    channel_totals = normalised = None
    start = 0
    # Blocks of 64 MiB of float32 whatever the stored precision, as the report has always read them.
    for rows, block in store.read_blocks(relevance_path, sorted_positions, itemsize=4):
        block_labels = sorted_labels[start:start + rows.size]
        heat = block.astype(np.float64)
        if preprocess is not None:
            if channel_totals is None:
                channel_totals, normalised = np.empty((cls.n, heat.shape[1])), np.empty((cls.n, heat.shape[1]))
            channel_totals[order_rows[start:start + rows.size]] = heat.sum(axis=(2, 3))
            normalised[order_rows[start:start + rows.size]] = channel_relevance(heat, preprocess)
        start += rows.size
        heat = heat.sum(axis=1) if heat.ndim == 4 else heat
        for cid, _ in shown:
            sel = block_labels == cid
            if sel.any():
                sums[cid] = sums.get(cid, 0) + heat[sel].sum(axis=0)

    fda_clusters = ((cls.fda.get("clusterings") or {}).get(clustering) or {}).get("clusters") or {}
    embedding = np.asarray(cls.embedding, dtype=np.float64)
    clusters = []
    for cid, size in shown:
        members = np.flatnonzero(labels == cid)
        centre = embedding[members].mean(axis=0)
        closest = members[np.argsort(((embedding[members] - centre) ** 2).sum(axis=1), kind="stable")[:PROTOTYPES]]
        channels: list[str] = []
        distinguishing: list[str] = []
        references: list[Reference] = []
        if channel_totals is not None:
            totals = channel_totals[members].sum(axis=0)
            channels = [_channel_share(totals, c) for c in np.argsort(-totals, kind="stable")[:CHANNELS].tolist()]
            apart, differences = distinguishing_channels(normalised, labels == cid)
            distinguishing = [f"channel {c}: {d:+.3f}" for c, d in zip(apart.tolist(), differences.tolist())]
            if apart.size:
                chosen = members[reference_samples(channel_totals[members], apart)]
                references = _references(store, attribution, cls, chosen, apart, has_thumbnails, explainer)
        clusters.append(ClusterView(
            cluster=cid,
            title="unassigned images" if cid < 0 else f"group {cid}",
            size=size,
            share=f"{100 * size / max(cls.n, 1):.0f} %",
            colour=colours[cid],
            flagged=cid == flagged,
            z=fmt_z((fda_clusters.get(cid) or {}).get("z_score")),
            mean_heatmap=images.data_uri(images.heatmap_rgb(sums[cid] / size)),
            prototypes=_prototypes(store, relevance_path, cls, closest, has_thumbnails),
            channels=channels,
            distinguishing=distinguishing,
            references=references,
        ))
    eigengap = cls.spectral_info.get("eigengap_n_clusters")
    return ClassView(
        label=cls.label,
        name=cls.name,
        analysis=entry.analysis,
        anchor=f"class-{cls.label}",
        rank=entry.rank,
        n=cls.n,
        candidate=entry.flagged,
        clustering=clustering,
        reference=f"{cls.label}:{clustering}:{flagged}" if flagged is not None else None,
        z=fmt_z(entry.z_score),
        p=fmt_p(entry.p_value),
        flagged_size=entry.cluster.size,
        eigengap=eigengap,
        spectrum=plots.spectrum_plot(cls.eigenvalues, eigengap),
        map=plots.map_plot(xy, labels, colours, flagged, map_name),
        map_name=map_name,
        clusters=clusters,
        hidden_clusters=len(order) - len(shown),
        activations=activations,
    )


def _channel_share(totals: np.ndarray, channel: int) -> str:
    """Channel ``channel`` with its share of Σ_c |R_c|: ``"channel 12: 31 %"``."""
    return f"channel {channel}: {100 * totals[channel] / max(float(np.abs(totals).sum()), 1e-300):.0f} %"


def _references(
    store: AuditStore, attribution: str, cls: ClassAnalysis, members: np.ndarray, channels: np.ndarray,
    has_thumbnails: bool, explainer: ConditionalExplainer | None,
) -> list[Reference]:
    """Reference samples ``members`` (positions in the class) of a concept group with distinguishing
    ``channels``: their thumbnails, and with ``explainer`` their explanation and its part that flows through
    ``channels``."""
    positions = cls.positions[members]
    indices = cls.dataset_index[members]
    thumbs = store.read("samples/thumbnail", positions) if has_thumbnails else None
    out = [Reference(dataset_index=int(i), image=images.data_uri(images.image_rgb(thumbs[k]))
                     if thumbs is not None else None) for k, i in enumerate(indices)]
    if explainer is None:
        return out
    explained = explainer.explain(indices, store.read(f"attributions/{attribution}/target", positions), channels)
    for reference, x, whole, part in zip(out, *explained, strict=True):
        if reference.image is None:  # no thumbnails: the input the model explained
            reference.image = images.data_uri(images.image_rgb(x))
        reference.heatmap = images.data_uri(images.heatmap_rgb(images.reduce_heatmap(whole)))
        reference.conditional = images.data_uri(images.heatmap_rgb(images.reduce_heatmap(part)))
        total = float(whole.sum())
        reference.share = fmt_pct(float(part.sum()) / total if total else None)
    return out


def _prototypes(
    store: AuditStore, relevance_path: str, cls: ClassAnalysis, members: np.ndarray, has_thumbnails: bool
) -> list[Prototype]:
    positions = cls.positions[members]
    relevance = store.read(relevance_path, positions)
    thumbs = store.read("samples/thumbnail", positions) if has_thumbnails else None
    out = []
    for i, member in enumerate(members):
        heat = images.reduce_heatmap(relevance[i])
        image = images.image_rgb(thumbs[i]) if thumbs is not None else None
        out.append(Prototype(
            dataset_index=int(cls.dataset_index[member]),
            heatmap=images.data_uri(images.heatmap_rgb(heat)),
            image=images.data_uri(image) if image is not None else None,
            overlay=images.data_uri(images.overlay_rgb(image, heat)) if image is not None else None,
        ))
    return out


def _clarc_view(run: ClarcRun, names: list[str]) -> ClarcView:
    attrs, arrays = run.attrs, run.arrays
    method = str(attrs.get("method") or "unknown")
    cluster = str(attrs.get("cluster") or "")
    label, _, rest = cluster.partition(":")
    try:
        class_name = names[int(label)]
    except (ValueError, IndexError):
        class_name = label
    group = rest.rpartition(":")[2]
    target = f"group {group} of class ‘{class_name}’" if group else f"class ‘{class_name}’"
    metrics = []
    for row in run.metrics:
        key = str(row.get("model"))
        shipped = row.get("correction")  # auto's: the candidate it chose and shipped
        metrics.append({
            "model_key": key,
            "model": {"original": "before correction", "corrected": "after correction"}.get(key, key)
            + (f" ({shipped})" if shipped not in (None, method) else ""),
            "clean": fmt_pct(row.get("clean_accuracy")),
            "poisoned": fmt_pct(row.get("poisoned_accuracy")),
            "everywhere": fmt_pct(row.get("everywhere_accuracy")),
            "artifact": fmt_pct(row.get("artifact_relevance")),
            "rank": "–" if row.get("fda_rank") is None else str(row.get("fda_rank")),
            "aga": fmt_pct(row.get("average_group_accuracy")),
            "wga": fmt_pct(row.get("worst_group_accuracy")),
            "density": _fmt_number(row.get("relevance_density"), "{:.2f} ×"),
            "tcav": fmt_pct(row.get("tcav_score")),
            "magnitude": _fmt_number(row.get("tcav_magnitude"), "{:.3g}"),
            "cost": _fmt_number(row.get("training_seconds"), "{:.1f} s"),
        })
    verification = attrs.get("verification")
    cav_auc = attrs.get("cav_auc")
    examples = []
    if "example_inputs" in arrays:
        masks = arrays.get("example_masks")
        index = arrays.get("example_index")
        for i, x in enumerate(arrays["example_inputs"][:6]):
            rgb = images.image_rgb(x)
            if masks is not None:
                rgb = images.mask_overlay_rgb(rgb, masks[i])
            examples.append((int(index[i]) if index is not None else i, images.data_uri(rgb)))
    return ClarcView(
        run=run.run,
        method=METHOD_NAMES.get(method, method),
        target=target,
        layer=str(attrs.get("layer") or "–"),
        cav_auc="–" if cav_auc is None else f"{cav_auc:.3f}",
        metrics=metrics,
        patch=images.data_uri(_patch_rgb(arrays["patch"], arrays.get("mask"))) if "patch" in arrays else None,
        mask=images.data_uri(images.mask_rgb(arrays["mask"])) if "mask" in arrays else None,
        examples=examples,
        verification=None if verification is None else _verification_text(verification, class_name),
        verified=None if verification is None else str(verification["verdict"]),
        unflagged=_unflagged_text(attrs, class_name),
        choice=auto_choice_view(attrs["auto"], names) if "auto" in attrs else None,
    )


def _unflagged_text(attrs: dict[str, Any], class_name: str) -> Markup | None:
    """What the report says of a run that corrected a class no test flagged (its ``flagged`` False; runs recorded
    before the field existed say nothing)."""
    if attrs.get("flagged") is not False:
        return None
    q = attrs.get("q_value")
    tested = Markup("") if q is None else Markup(" (q = {q:.3g})").format(q=q)
    return Markup("<strong>Class ‘{name}’ was not flagged</strong>{tested}: its group is no more distinct than a "
                  "structure-free model of the class and the other classes' groups give, so the correction targets "
                  "a group an expert should judge first — a shortcut, or a legitimate way the class looks."
                  ).format(name=class_name, tested=tested)


def _fmt_number(value: float | None, form: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return form.format(value)


def _verification_text(found: dict[str, Any], class_name: str) -> Markup:
    """The verification record (spray.clarc.verify's ``Verification.to_dict``) in plain words."""
    before, after = found["before"], found["after"]
    opening = {
        "cleared": "The correction removed the flag: class ‘{name}’ no longer stands out from the other classes",
        "not cleared": "<strong>The correction did not remove the group</strong>: class ‘{name}’ still stands "
                       "out from the other classes",
        "not flagged": "Class ‘{name}’ was not flagged before the correction and is not after it",
        "not verified": "<strong>The correction could not be checked</strong>: explained by the corrected model, "
                        "the images of class ‘{name}’ show nothing to group",
    }[found["verdict"]]
    text = Markup("Checked by explaining the class's images again with the corrected model and grouping them "
                  "as before. " + opening + " (rank {rb} → {ra}). ").format(
        name=class_name, rb=before["rank"] or "–", ra=after["rank"] or "–")
    if found.get("cluster_unjudged"):  # a group of activations (spray.clarc.verify); records before 2026-12-06 lack it
        own, judged = found["cluster_analysis"], found["analyses"]
        text += Markup("The corrected group was found in what the model sees (its activations, analysis ‘{own}’), "
                       "which a correction of its decision need not change; the check judged the explanations "
                       "(analysis {judged}). ").format(own=own, judged=", ".join(f"‘{a}’" for a in judged))
    if found["verdict"] == "not verified":
        return text
    if after["skipped"] is not None:
        return text + Markup("It now has no distinct group at all.")
    return text + Markup(
        "Its most distinct group: normalised cut {cb} → {ca} (higher: less separate), separability z = {zb} → "
        "{za}; of the {n} images of the corrected group, the best-matching group now recovers F1 = {f1:.2f} "
        "(1 = the same group is still there)."
    ).format(cb=fmt_cut(before["ncut"]), ca=fmt_cut(after["ncut"]), zb=fmt_z(before["z_score"]),
             za=fmt_z(after["z_score"]), n=found["n_members"], f1=found["match_f1"])


def _patch_rgb(patch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The artifact patch as it is pasted: the patch inside the mask, neutral grey outside."""
    rgb = images.image_rgb(patch).astype(np.float64)
    if mask is None or mask.shape != rgb.shape[:2]:
        return rgb.astype(np.uint8)
    m = np.clip(mask, 0.0, 1.0)[..., None]
    return (rgb * m + 128.0 * (1 - m)).round().astype(np.uint8)
