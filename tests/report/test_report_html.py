"""The HTML report: self-contained, escaped, says what was audited and what was found."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser

import h5py
import matplotlib
import numpy as np
import pytest
from markupsafe import escape

from spray.errors import BadInputError
from spray.pipeline import analyze, pipeline_from_text
from spray.ranking import rank_analyses, rank_classes
from spray.report import build_report, render_report
from spray.report.content import gather
from spray.report.images import heatmap_rgb
from spray.results import read_class, write_result
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store

EVIL = "<script>alert(1)</script>"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    end = html.find("</article>", start)
    return html[start:end]


def test_report_is_one_file_with_inline_images_and_no_script_or_external_reference(report_path):
    html = report_path.read_text(encoding="utf-8")
    tags = _tags(html)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) > 20 and all(src.startswith("data:image/png;base64,") for src in images)
    hrefs = [a["href"] for t, a in tags if t == "a"]
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert "url(" not in html and "@import" not in html
    csp = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]


def test_user_supplied_strings_are_escaped_everywhere(report_path):
    html = report_path.read_text(encoding="utf-8")
    assert EVIL not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # summary, table, section, ClArC
    assert "synthetic &lt;skin&gt; lesions" in html and "<skin>" not in html
    assert "Ödem &amp; nävus" in html


def test_summary_names_the_planted_class_and_the_size_of_its_flagged_group(audit_store, report_path):
    with AuditStore(audit_store) as store:
        top = rank_classes(store)[0]
    assert top.label == 1
    html = report_path.read_text(encoding="utf-8")
    findings = html[html.index('id="findings"'):html.index('id="audited"')]
    assert "Class <strong>‘&lt;script&gt;alert(1)&lt;/script&gt;’</strong>" in findings
    assert f"a group of <strong>{top.cluster.size}</strong> of its 50 images" in findings
    assert "Clever Hans" in findings
    assert "1 class could not be analysed" in findings


def test_audit_facts_include_model_attribution_and_the_store_fingerprint(audit_store, report_path):
    html = report_path.read_text(encoding="utf-8")
    audited = html[html.index('id="audited"'):html.index('id="ranking"')]
    digest = hashlib.sha256(audit_store.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in audited
    assert "sha256 " + "ab" * 32 in audited
    assert "demo:make_model" in audited and "epsilon_plus_flat" in audited
    assert "{&#34;epsilon&#34;: 1e-06}" in audited  # the attribution parameters, escaped JSON
    assert "the true label of each image" in audited


def test_ranking_lists_candidates_first_and_skipped_classes_with_their_reason(report_path):
    html = report_path.read_text(encoding="utf-8")
    table = html[html.index('id="ranking"'):html.index('id="details"')]
    rows = re.findall(r'<tr class="(candidate|skipped|)">', table)
    assert rows == ["candidate", "candidate", "candidate", "skipped"]
    assert "not analysed: 5 samples, fewer than knn.n_neighbors + 1 = 9" in table


def test_each_class_section_has_its_plots_and_a_card_per_group_with_prototypes(audit_store, report_path):
    with AuditStore(audit_store) as store:
        top = rank_classes(store)[0]
    html = report_path.read_text(encoding="utf-8")
    section = _section(html, "class-1")
    assert "Map of explanations (t-SNE)" in section and "How many groups?" in section
    assert section.count('class="cluster flagged"') == 1
    flagged = section[section.index('class="cluster flagged"'):]
    assert f"{top.cluster.size} images" in flagged[:600]
    # Prototypes of the flagged group are members of it: image numbers are the flagged dataset indices.
    card = flagged[:flagged.find('<div class="cluster"')]
    shown = {int(i) for i in re.findall(r'<div class="cap">image #(\d+)</div>', card)}
    assert len(shown) == 6 and shown <= set(top.cluster.members)
    assert re.findall(r'alt="(image|heatmap of image|heatmap over image) \d+"', card).count("image") == 6


def test_max_classes_limits_the_class_sections(audit_store, tmp_path):
    assert len(re.findall(r'<article id="class-', render_report(audit_store, max_classes=1))) == 1
    html = render_report(audit_store, max_classes=0)
    assert 'id="details"' not in html and 'id="ranking"' in html
    build_report(audit_store, tmp_path / "sub" / "r.html", max_classes=2)
    assert (tmp_path / "sub" / "r.html").read_text(encoding="utf-8").count('<article id="class-') == 2


def test_clarc_results_show_before_and_after_and_disappear_without_runs(audit_store, tmp_path):
    html = render_report(audit_store, max_classes=0)
    clarc = html[html.index('id="clarc"'):html.index('id="reading"')]
    for text in ("P-ClArC", "before correction", "after correction", "93.0 %", "41.0 %", "88.0 %", "7.0 %",
                 "0.970", "features.3", "group 1 of class ‘&lt;script&gt;alert(1)&lt;/script&gt;’"):
        assert text in clarc
    assert clarc.count("artifact in yellow") == 4
    assert "accuracy on images that carry the artifact went from 41.0 % to 88.0 %" in html
    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    with AuditStore(copy, mode="a") as store:
        assert store.delete_node("clarc/pclarc-1")
    assert 'id="clarc"' not in render_report(copy, max_classes=0)


def test_an_auto_runs_after_row_names_what_it_shipped(audit_store, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    with AuditStore(copy) as store:
        arrays, attrs = store.read_node("clarc/pclarc-1/result")
    shipped = "auto: aclarc/local, refit on all the data"
    metrics = [{**row, "correction": shipped if row["model"] == "corrected" else None} for row in attrs["metrics"]]
    write_result(copy, "pclarc-1", arrays, {**attrs, "method": "auto", "metrics": metrics})
    html = render_report(copy, max_classes=0)
    clarc = html[html.index('id="clarc"'):html.index('id="reading"')]
    assert f"after correction ({shipped})" in clarc and "before correction (" not in clarc
    assert "after correction (" not in render_report(audit_store, max_classes=0)  # a P-ClArC run is its method


def test_an_auto_run_shows_how_it_chose_with_each_candidates_worst_group_in_words(audit_store, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    with AuditStore(copy) as store:
        arrays, attrs = store.read_node("clarc/pclarc-1/result")
        names = store.attrs()["label_names"]

    def scored(right, size, group, p_value=0.9, **extra):
        return {"worst_group": right / size, "worst_group_name": group, "worst_group_correct": right,
                "worst_group_size": size, "clean_loss": 0.013, "p_value": p_value, "n": 210, "seconds": 12.4,
                **extra}

    record = {"kind": "local", "chosen": "aclarc/local+global", "alpha": 0.05, "max_clean_loss": 0.02,
              "listed": ["pclarc", "aclarc/local+global", "rrclarc"],
              "close_call": {"chosen": "aclarc/local+global", "over": "pclarc"},
              "original": scored(1, 38, "0+global"),
              "candidates": {"pclarc": scored(1, 3, "1:cluster"),
                             "aclarc/local+global": scored(2, 3, "0+local", epochs=7),
                             "rrclarc": {"skipped": "fine-tuning diverged", "seconds": 3.0}}}
    write_result(copy, "pclarc-1", arrays, {**attrs, "method": "auto", "auto": record})
    clarc = (html := render_report(copy, max_classes=0))[html.index('id="clarc"'):html.index('id="reading"')]
    choice = clarc[clarc.index('<details class="auto-choice">'):clarc.index("</details>")]
    assert ("a local artifact, each\n      candidate trained on most of the training images and scored on 210 held"
            in choice)
    rows = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()
            for row in re.findall(r"<tr[^>]*>\s*(<td.*?)</tr>", choice, re.S)]
    assert rows == [
        "pclarc – 33.3 % (1 of 3: the corrected group) +1.3 points kept (p = 0.900) 12 s",
        f"aclarc/local+global (chosen) 7 66.7 % (2 of 3: class ‘{names[0]}’, the artifact pasted) +1.3 points "
        "kept (p = 0.900) 12 s",
        "rrclarc – not fitted: fine-tuning diverged – – 3 s",
        f"the model before correction – 2.6 % (1 of 38: class ‘{names[0]}’, the artifact&#39;s intensity map "
        "applied) – – –"]
    assert choice.count('<tr class="chosen">') == 1
    assert ("aclarc/local+global was chosen over pclarc, a cheaper candidate, by one validation image of their "
            "worst groups or less: the choice is within sampling noise.") in choice
    # the store sorts the record's keys: the recorded order lists the candidates, and a dropped one says why
    record["candidates"]["pclarc"]["p_value"] = 0.01
    write_result(copy, "pclarc-1", arrays, {**attrs, "method": "auto", "auto": record})
    choice = (html := render_report(copy, max_classes=0))[html.index('<details class="auto-choice">'):]
    assert "dropped: loses more than 2 points (p = 0.010)" in choice
    # a run recorded before the worst groups' sizes, the order, the guard's level and the close call were kept: the
    # shares alone, the candidates as read, the guard's p alone, and no note
    older = {k: v for k, v in record.items() if k not in ("listed", "alpha", "max_clean_loss", "close_call")}
    older["candidates"] = {n: {k: v for k, v in f.items() if not k.startswith("worst_group_")}
                           for n, f in record["candidates"].items()}
    write_result(copy, "pclarc-1", arrays, {**attrs, "method": "auto", "auto": older})
    choice = (html := render_report(copy, max_classes=0))[html.index('<details class="auto-choice">'):]
    choice = choice[:choice.index("</details>")]
    assert "33.3 %</td>" in choice and "sampling noise" not in choice and "<td>p = 0.010</td>" in choice
    assert choice.index("aclarc/local+global") < choice.index("pclarc")  # as the store sorted them
    assert '<details class="auto-choice">' not in render_report(audit_store, max_classes=0)  # P-ClArC: no choice


def test_a_run_that_corrected_an_unflagged_class_says_so_and_older_runs_say_nothing(audit_store, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    with AuditStore(copy) as store:
        arrays, attrs = store.read_node("clarc/pclarc-1/result")
    assert "flagged" not in attrs  # recorded before the field existed: nothing is said
    said = "was not flagged</strong>"
    assert said not in render_report(copy, max_classes=0)
    write_result(copy, "pclarc-1", arrays, {**attrs, "flagged": False, "q_value": 0.2184})
    clarc = (html := render_report(copy, max_classes=0))[html.index('id="clarc"'):html.index('id="reading"')]
    assert re.search(r"<strong>Class ‘[^’]+’ was not flagged</strong> \(q = 0\.218\): its group is no more distinct "
                     r"than a structure-free model of the class and the other classes' groups give", clarc)
    write_result(copy, "pclarc-1", arrays, {**attrs, "flagged": True, "q_value": 0.01})
    assert said not in render_report(copy, max_classes=0)


def test_without_maps_or_thumbnails_the_report_uses_spectral_coordinates_and_heatmaps_only(tmp_path):
    path = write_store(tmp_path / "plain.h5", make_heatmaps(n_per_class=30, n_classes=2, seed=1))
    analyze(str(path), pipeline_from_text(pipeline_text("tiny", analysis={"name": "nomaps"})), progress=False)
    context = gather(path, "nomaps", None)
    assert [c.map_name for c in context["classes"]] == ["spectral coordinate"] * 2
    assert all(p.image is None and p.overlay is None
               for c in context["classes"] for cluster in c.clusters for p in cluster.prototypes)
    assert all(cluster.channels == [] for c in context["classes"] for cluster in c.clusters)  # heatmaps: no channels
    html = render_report(path, "nomaps")
    assert "holds no copies of the input images" in html
    assert "Map of explanations (spectral coordinate)" in html


def test_a_missing_analysis_is_a_bad_input_error_naming_the_available_ones(audit_store):
    with pytest.raises(BadInputError, match=r"no analysis 'other' \(it has: spray\)"):
        render_report(audit_store, "other")


def test_building_a_report_leaves_matplotlib_global_state_alone(audit_store):
    before_params, before_backend = dict(matplotlib.rcParams), matplotlib.get_backend()
    render_report(audit_store, max_classes=1)
    assert dict(matplotlib.rcParams) == before_params
    assert matplotlib.get_backend() == before_backend


def test_heatmap_colours_are_diverging_and_symmetric_around_zero():
    rgb = heatmap_rgb(np.array([[-2.0, 0.0, 2.0, 1.0, -1.0]])).astype(int)[0]
    negative, zero, positive, half_pos, half_neg = rgb
    assert tuple(zero) == (255, 255, 255)
    assert positive[0] > 200 and positive[2] < 50  # red
    assert negative[2] > 200 and negative[0] < 50  # blue
    assert tuple(positive[[2, 1, 0]]) == tuple(negative)  # mirror images of each other
    assert tuple(half_pos[[2, 1, 0]]) == tuple(half_neg)
    assert (heatmap_rgb(np.zeros((2, 2))) == 255).all()


# Markup a store could hold in place of any name; none of it contains "/", so each also works as an HDF5 name.
HOSTILE = {
    "store": "<img src=x onerror=alert(1)>",
    "attribution": "<img src=x onerror=alert(2)>",
    "analysis": "<i onclick=alert(3)>x",
    "clustering": "<b onmouseover=alert(4)>",
    "run": "<svg onload=alert(5)>",
    "text": '"><script>alert(6)</script><a href="javascript:alert(7)">',
}


def _hostile_store(audit_store, tmp_path):
    """The shared store with markup in every string the report shows: file, model, dataset, attribution,
    method, parameters, analysis, clustering and ClArC run names, a skip reason, ClArC settings."""
    path = tmp_path / f"{HOSTILE['store']}.h5"
    shutil.copy(audit_store, path)
    text, clustering = HOSTILE["text"], HOSTILE["clustering"]
    with h5py.File(path, "r+") as f:
        f.attrs["model"] = json.dumps({"name": text, "hash": text})
        f.attrs["dataset"] = json.dumps({"name": text, "size": 155})
        f.move("attributions/lrp", f"attributions/{HOSTILE['attribution']}")
        attribution = f[f"attributions/{HOSTILE['attribution']}"]
        attribution.attrs.update({"method": text, "model_name": text, "params": json.dumps({text: text})})
        f.move("analyses/spray", f"analyses/{HOSTILE['analysis']}")
        analysis = f[f"analyses/{HOSTILE['analysis']}"]
        summary = analysis["summary"].attrs
        summary["attribution"] = json.dumps(HOSTILE["attribution"])
        summary["pipeline"] = json.dumps(json.dumps({"name": text}))
        for label in ("0", "1", "2"):
            for node in ("kmeans", "hdbscan", "agglomerative"):
                if node in analysis[label]:
                    for name in list(analysis[label][node]):
                        analysis[label][node].move(name, clustering + name)
            fda = analysis[label]["fda"].attrs
            info = json.loads(fda["info"])
            info["clusterings"] = {clustering + k: v for k, v in info["clusterings"].items()}
            if info["best"].get("clustering"):
                info["best"]["clustering"] = clustering + info["best"]["clustering"]
            fda["info"] = json.dumps(info)
            group = analysis[label]["fda"]
            names = [clustering + name.decode() for name in group["cluster_clustering"][()]]
            del group["cluster_clustering"]
            group.create_dataset("cluster_clustering", data=names, dtype=h5py.string_dtype())
        analysis["3/status"].attrs["skipped"] = json.dumps(text)
        f.move("clarc/pclarc-1", f"clarc/{HOSTILE['run']}")
        result = f[f"clarc/{HOSTILE['run']}/result"].attrs
        metrics = json.loads(result["metrics"])
        metrics[0]["model"] = text
        result.update({"method": json.dumps(text), "layer": json.dumps(text), "cluster": json.dumps(f"1:{text}:1"),
                       "metrics": json.dumps(metrics)})
    return path


def test_markup_anywhere_in_a_store_gives_an_inert_report(audit_store, report_path, tmp_path):
    path = _hostile_store(audit_store, tmp_path)
    html = build_report(path, tmp_path / "report.html", analysis=HOSTILE["analysis"]).read_text(encoding="utf-8")
    tags = _tags(html)
    assert {t for t, _ in tags} <= {t for t, _ in _tags(report_path.read_text(encoding="utf-8"))}
    assert [a for _, attrs in tags for a in attrs if a.startswith("on")] == []
    assert [a["href"] for t, a in tags if t == "a" and not a["href"].startswith("#")] == []
    assert [a["src"] for t, a in tags if t == "img" and not a["src"].startswith("data:image/png;base64,")] == []
    for value in HOSTILE.values():
        assert value not in html
    # ... and the strings are there, escaped, where the report names them.
    shown = html.count("&lt;script&gt;alert(6)&lt;/script&gt;")
    assert shown >= 8, shown
    for value in ("store", "analysis", "clustering", "run"):  # (the attribution name is not shown)
        assert str(escape(HOSTILE[value])) in html, value


def test_a_verified_clarc_run_says_whether_the_group_is_gone_and_shows_the_new_figures(audit_store, tmp_path):
    from spray.clarc.verify import NOT_REAUDITED, Standing, Verification

    copy = tmp_path / "copy.h5"
    shutil.copy(audit_store, copy)
    before = Standing(1, True, 4.2, "1:hdbscan:1", 0.0173, 392.6, 0.91, None)
    after = Standing(3, True, 3.5, "1:kmeans_2:0", 0.02, 200.0, 0.5, None)
    with AuditStore(copy, mode="a") as store:
        arrays, attrs = store.read_node("clarc/pclarc-1/result")
        metrics = [{**row, "average_group_accuracy": 0.625, "worst_group_accuracy": 0.25, "relevance_density": 3.5,
                    "tcav_score": 0.875, "tcav_magnitude": 0.0123, "training_seconds": 4.0} for row in attrs["metrics"]]
        still = Verification(1, "1:hdbscan:1", 12, before, after, "1:kmeans_2:0", 0.9, "v.h5").to_dict()
        store.write_node("clarc/pclarc-1/result", arrays, {**attrs, "metrics": metrics, "verification": still})
    html = render_report(copy, max_classes=0)
    clarc = html[html.index('id="clarc"'):html.index('id="reading"')]
    for text in ("62.5 %", "25.0 %", "3.50 ×", "87.5 %", "0.0123", "4.0 s",
                 "<strong>The correction did not remove the group</strong>: class ‘&lt;script&gt;alert(1)&lt;/script&gt;’ "
                 "still stands out from the other classes (rank 1 → 3)",
                 "normalised cut 0.0173 → 0.02", "F1 = 0.90"):
        assert text in clarc
    assert "did <strong>not</strong> remove the group" in html[:html.index('id="clarc"')]  # in the summary too
    cleared = Verification(1, "1:hdbscan:1", 12, before, dataclasses.replace(after, flagged=False), None, 0.0, "v.h5")
    with AuditStore(copy, mode="a") as store:
        store.write_node("clarc/pclarc-1/result", arrays, {**attrs, "verification": cleared.to_dict()})
    html = render_report(copy, max_classes=0)
    assert "The correction removed the flag" in html and "did <strong>not</strong>" not in html
    unseen = Verification(1, "1:hdbscan:1", 12, before, Standing(2, False, None, None, None, None, None,
                                                                  NOT_REAUDITED), None, 0.0, "v.h5")
    with AuditStore(copy, mode="a") as store:
        store.write_node("clarc/pclarc-1/result", arrays, {**attrs, "verification": unseen.to_dict()})
    html = render_report(copy, max_classes=0)
    clarc = html[html.index('id="clarc"'):html.index('id="reading"')]
    assert ("<strong>The correction could not be checked</strong>: explained by the corrected model, the images of "
            "class ‘&lt;script&gt;alert(1)&lt;/script&gt;’ show nothing to group (rank 1 → 2). ") in clarc
    assert "no distinct group" not in clarc and "The correction removed the flag" not in html
    assert "could <strong>not</strong> be checked" in html[:html.index('id="clarc"')]  # in the summary too
    assert "what the model sees" not in html
    seen = Verification(1, "1:hdbscan:1", 12, dataclasses.replace(before, flagged=False),
                        dataclasses.replace(after, flagged=False), None, 0.0, "v.h5",
                        ("spray", "concept"), "activation_max")
    with AuditStore(copy, mode="a") as store:
        store.write_node("clarc/pclarc-1/result", arrays, {**attrs, "verification": seen.to_dict()})
    assert ("was not flagged before the correction and is not after it (rank 1 → 3). The corrected group was found "
            "in what the model sees (its activations, analysis ‘activation_max’), which a correction of its decision "
            "need not change; the check judged the explanations (analysis ‘spray’, ‘concept’).") in \
        render_report(copy, max_classes=0)


def test_a_concept_analysis_shows_each_groups_most_relevant_channels_with_their_share(tmp_path):
    # Latent relevance (n, 16 channels, 2 × 2 cells): the synthetic 8 × 8 maps cut into 16 tiles of 2 × 2.
    heatmaps = make_heatmaps(n_per_class=30, n_classes=2, size=8, seed=1)
    n = len(heatmaps.labels)
    tiles = heatmaps.relevance.reshape(n, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, 16, 2, 2)
    latent = type(heatmaps)(np.ascontiguousarray(tiles), heatmaps.labels, heatmaps.strategy, heatmaps.planted)
    path = write_store(tmp_path / "latent.h5", latent, name="latent")
    pipeline = pipeline_text("tiny", analysis={"name": "concept", "attribution": "latent"},
                             preprocess={"channel_reduction": "keep", "normalization": "l2"})
    analyze(str(path), pipeline_from_text(pipeline), progress=False)
    context = gather(path, "concept", None)
    view = context["classes"][0]
    cluster = view.clusters[0]
    with AuditStore(path) as store:
        cls = read_class(store, "concept", view.label, ["class 0", "class 1"])
    members = cls.positions[cls.clusterings[view.clustering] == cluster.cluster]
    totals = tiles[members].astype(np.float64).sum(axis=(0, 2, 3))
    top = np.argsort(-totals, kind="stable")[:5]
    assert cluster.channels == [f"channel {c}: {100 * totals[c] / np.abs(totals).sum():.0f} %" for c in top]
    assert f"most relevant channels: {', '.join(cluster.channels)}" in render_report(path, "concept")


def test_an_analysis_of_latent_activations_is_worded_as_activations_not_relevance(tmp_path):
    heatmaps = make_heatmaps(n_per_class=30, n_classes=2, size=8, seed=1)
    n = len(heatmaps.labels)
    tiles = heatmaps.relevance.reshape(n, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, 16, 2, 2)
    latent = type(heatmaps)(np.abs(np.ascontiguousarray(tiles)), heatmaps.labels, heatmaps.strategy,
                            heatmaps.planted)
    pipeline = pipeline_text("tiny", analysis={"name": "concept", "attribution": "latent"},
                             preprocess={"channel_reduction": "keep", "normalization": "l2"})
    html = {}
    for quantity in ("relevance", "activation_max"):
        path = write_store(tmp_path / f"{quantity}.h5", latent, name="latent", params={"quantity": quantity})
        analyze(str(path), pipeline_from_text(pipeline), progress=False)
        html[quantity] = render_report(path, "concept")
        view = gather(path, "concept", None)["classes"][0]
        assert view.activations == (quantity == "activation_max")
        assert view.clusters[0].channels  # the same channels, named by what they hold
    worded = {
        "relevance": ["Map of explanations", "average explanation</div>", "most relevant channels: ",
                      "(mean normalised relevance, group minus rest of the class)"],
        "activation_max": ["Map of activations", "average activation (channels summed; not an explanation)",
                           "most active channels: ", "(mean normalised activation, group minus rest of the class)"],
    }
    for quantity, other in (("relevance", "activation_max"), ("activation_max", "relevance")):
        for phrase in worded[quantity]:
            assert phrase in html[quantity], (quantity, phrase)
        for phrase in worded[other]:
            assert phrase not in html[quantity], (quantity, phrase)


def test_a_report_of_several_analyses_follows_their_combined_ranking(concept_store):
    with AuditStore(concept_store) as store:
        ranking = rank_analyses(store, ["spray", "concept"])
    context = gather(concept_store, ["spray", "concept"], None)
    by_label = {e.label: e for e in ranking}
    assert [(r["label"], r["analysis"], r["rank"], r["candidate"], r["distance"]) for r in context["ranking"]] == [
        (e.label, e.analysis, e.rank, e.flagged, f"{e.separation:.1f}")
        for e in sorted(ranking, key=lambda e: (not e.flagged, e.rank))]
    assert [a["name"] for a in context["audit"]["analyses"]] == ["spray", "concept"]
    for view in context["classes"]:
        entry = by_label[view.label]
        assert view.analysis == entry.analysis
        assert view.reference == f"{entry.label}:{entry.cluster.clustering}:{entry.cluster.id}"
    html = render_report(concept_store, ["spray", "concept"])
    section = _section(html, context["classes"][0].anchor)
    assert f"analysis {context['classes'][0].analysis} · " in section
    assert "<th>Analysis</th>" in html and "Explanation method (concept)" in html
    single = render_report(concept_store, "concept")
    assert "<th>Analysis</th>" not in single and "Explanation method (concept)" not in single
    assert "Explanation method</dt>" in single
