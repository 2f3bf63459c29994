"""The command line contract: exit codes (0 ok, 2 bad input, 1 bug), JSON on stdout, messages on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spray.cli import main
from spray.testing import make_heatmaps, pipeline_text, write_store

MODEL = "tests.data.factories:tiny_model"
DATA = "tests.data.factories:tiny_dataset"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_attribute_then_info_json_describes_the_attribution(tmp_path, capsys):
    store = tmp_path / "a.h5"
    code, _, _ = run(capsys, "attribute", "--model", MODEL, "--data", DATA, "--store", store, "--batch-size", 3)
    assert code == 0
    code, out, _ = run(capsys, "info", store, "--json")
    info = json.loads(out)
    assert code == 0 and info["n_samples"] == 4
    attribution = info["attributions"]["epsilon_plus_flat"]
    assert attribution["done"] == 4 and attribution["shape"][1:] == [1, 2, 2]
    code, out, _ = run(capsys, "info", store)
    assert code == 0 and "epsilon_plus_flat" in out


def test_latent_relevance_beside_the_heatmaps_and_the_concept_pipeline_analyses_it(tmp_path, capsys):
    # The store holds heatmaps and latent relevance; the default pipeline reads the heatmaps, concept.toml
    # the latent relevance at ClArC's default layer (the conv model's last ReLU, 6 channels of 8 × 8 cells).
    from pathlib import Path

    store, model, data = tmp_path / "a.h5", "tests.data.factories:conv_model", "tests.data.factories:conv_data"
    for extra in ([], ["--latent", "default", "--latent-grid", "2"]):
        code, _, err = run(capsys, "attribute", "--model", model, "--data", data, "--store", store, *extra)
        assert code == 0, err
    code, out, _ = run(capsys, "info", store, "--json")
    latent = json.loads(out)["attributions"]["latent"]
    assert latent["shape"] == [40, 6, 2, 2] and latent["params"]["layer"] == "features.3"
    small = "[knn]\nn_neighbors = 5\n[spectral]\nn_eigenpairs = 8\n[kmeans]\nk_max = 6\n"
    concept = tmp_path / "concept.toml"
    concept.write_text(Path("pipelines/concept.toml").read_text().split("[knn]")[0] + small)
    pixel = tmp_path / "pixel.toml"
    pixel.write_text(small)
    code, out, err = run(capsys, "analyze", store, "--pipeline", concept, "--json")
    assert code == 0, err
    assert (json.loads(out)["analysis"], json.loads(out)["attribution"]) == ("concept", "latent")
    code, out, err = run(capsys, "analyze", store, "--pipeline", pixel, "--json")
    assert code == 0, err
    assert (json.loads(out)["analysis"], json.loads(out)["attribution"]) == ("spray", "epsilon_plus_flat")


def test_max_pooled_first_layer_activations_are_stored_and_their_pipeline_file_analyses_them(tmp_path, capsys):
    # --latent first: the conv model's first ReLU (4 channels of 8 × 8); grid 1: each channel's maximum anywhere.
    from spray.attribution.latent import QUANTITIES
    from spray.cli import attribute
    from spray.store import AuditStore
    from tests.data.factories import conv_data, conv_model

    assert tuple(next(o for o in attribute.params if o.name == "latent_quantity").type.choices) == QUANTITIES
    store = tmp_path / "a.h5"
    code, _, err = run(capsys, "attribute", "--model", "tests.data.factories:conv_model", "--data",
                       "tests.data.factories:conv_data", "--store", store, "--latent", "first", "--latent-grid", "1",
                       "--latent-quantity", "activation_max", "--name", "activation_max")
    assert code == 0, err
    code, out, _ = run(capsys, "info", store, "--json")
    info = json.loads(out)["attributions"]["activation_max"]
    assert info["shape"] == [40, 4, 1, 1] and info["method"] == "latent"
    assert (info["params"]["layer"], info["params"]["grid"], info["params"]["quantity"]) == ("features.1", 1,
                                                                                              "activation_max")
    with AuditStore(store) as opened:
        stored = opened.read("attributions/activation_max/relevance")
    x = conv_data().tensors[0]
    expected = torch.relu(conv_model().features[0](x)).amax((2, 3)).detach().numpy()
    np.testing.assert_allclose(stored[:, :, 0, 0], expected, rtol=1e-5, atol=1e-6)
    pipeline = tmp_path / "activation_max.toml"
    pipeline.write_text(Path("pipelines/activation_max.toml").read_text().split("[knn]")[0]
                        + "[knn]\nn_neighbors = 5\n[spectral]\nn_eigenpairs = 8\n[kmeans]\nk_max = 6\n")
    code, out, err = run(capsys, "analyze", store, "--pipeline", pipeline, "--json")
    assert code == 0, err
    assert (json.loads(out)["analysis"], json.loads(out)["attribution"]) == ("activation_max", "activation_max")


def test_analyze_and_rank_json_contract(tmp_path, capsys):
    heatmaps = make_heatmaps(n_per_class=30, n_classes=2, size=8, poisoned=0, seed=2)
    store = write_store(tmp_path / "s.h5", heatmaps)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(pipeline_text("tiny"))
    code, out, _ = run(capsys, "analyze", store, "--pipeline", pipeline, "--json")
    assert code == 0 and json.loads(out)["computed"]["0"][0] == "knn"
    code, out, _ = run(capsys, "rank", store, "--json")
    ranking = json.loads(out)
    assert code == 0 and [e["rank"] for e in ranking] == [1, 2]
    assert {"class", "name", "score", "p_value", "clustering", "cluster", "members"} <= set(ranking[0])
    assert ranking[0]["class"] == 0 and set(ranking[0]["members"]) <= set(range(30))
    code, out, _ = run(capsys, "rank", store, "--csv")
    assert code == 0 and out.splitlines()[0].startswith("rank,class,name")


def test_rank_of_two_analyses_prints_the_combined_ranking_with_each_class_analysis(tmp_path, capsys):
    from spray.ranking import rank_analyses
    from spray.store import AuditStore

    store = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=30, n_classes=2, size=8, poisoned=0, seed=2))
    for name, pipeline in (("p.toml", pipeline_text("tiny")), ("q.toml", pipeline_text("tiny", analysis={"name": "q"}))):
        (tmp_path / name).write_text(pipeline)
        assert run(capsys, "analyze", store, "--pipeline", tmp_path / name)[0] == 0
    code, out, _ = run(capsys, "rank", store, "--analysis", "spray,q", "--json")
    with AuditStore(store) as audit:
        expected = rank_analyses(audit, ["spray", "q"])
    assert code == 0 and out == json.dumps(expected.to_json(), indent=2) + "\n"
    assert [(e["class"], e["analysis"]) for e in json.loads(out)] == [(e.label, e.analysis) for e in expected]
    code, out, _ = run(capsys, "rank", store, "--analysis", "spray,q", "--csv")
    assert code == 0 and out.splitlines()[0].startswith("analysis,rank,class,name")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["attribute", "--model", "nope_mod:f", "--data", DATA], "module 'nope_mod' cannot be imported"),
        (["attribute", "--model", DATA, "--data", DATA], "not a torch.nn.Module"),
        (["attribute", "--model", MODEL, "--data", "tests.data.factories:wrong_shape_dataset"],
         r"cannot process dataset sample 0 \(input shape \(1, 3, 3\)"),
        (["attribute", "--model", MODEL, "--data", "tests.data.factories:out_of_range_dataset"],
         "dataset sample 2 has label 5, outside"),
        (["attribute", "--model", MODEL, "--data", DATA, "--method", "magic"], "unknown attribution method"),
        (["attribute", "--model", MODEL, "--data", DATA, "--weights", "missing.pt"], "does not exist"),
        (["rank", "STORE"], "has no analysis 'spray'"),
        (["info", "nowhere.h5"], "no audit store at"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_the_problem(tmp_path, capsys, args, message):
    store = tmp_path / "bad.h5"
    if args[0] == "attribute":
        args = [*args, "--store", store]
    elif "STORE" in args:
        write_store(store, make_heatmaps(n_per_class=12, n_classes=2, size=4))
        args = [store if a == "STORE" else a for a in args]
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert re.search("^error: .*" + message, err, re.MULTILINE), err


def test_store_of_another_model_needs_overwrite(tmp_path, capsys):
    store = tmp_path / "a.h5"
    assert run(capsys, "attribute", "--model", MODEL, "--data", DATA, "--store", store)[0] == 0
    other = tmp_path / "w.pt"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    torch.save(model.state_dict(), other)
    code, _, err = run(capsys, "attribute", "--model", MODEL, "--weights", other, "--data", DATA, "--store", store)
    assert code == 2 and "--overwrite" in err
    code, _, _ = run(capsys, "attribute", "--model", MODEL, "--weights", other, "--data", DATA, "--store", store,
                     "--overwrite")
    assert code == 0


def test_malformed_pipeline_exits_2_naming_file_and_line(tmp_path, capsys):
    store = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=12, n_classes=2, size=4))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[knn]\nn_neighbours = 3\n")
    code, _, err = run(capsys, "analyze", store, "--pipeline", pipeline)
    assert code == 2 and f"{pipeline}, line 2: unknown parameter 'knn.n_neighbours'" in err


@pytest.mark.parametrize("name", ["s.h5", "symlink.h5", "hardlink.h5"])
def test_locked_store_exits_2_under_any_name_of_the_file(tmp_path, name):
    store = write_store(tmp_path / "s.h5", make_heatmaps(n_per_class=12, n_classes=2, size=4))
    (tmp_path / "symlink.h5").symlink_to(store)
    os.link(store, tmp_path / "hardlink.h5")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from spray.store import AuditStore; "
         f"s = AuditStore({str(store)!r}, mode='a'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = subprocess.run([sys.executable, "-m", "spray.cli", "analyze", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: audit store {tmp_path / name} is locked by pid {holder.pid} ")
    finally:
        holder.kill()
        holder.wait()


def test_help_and_version_exit_0(capsys):
    assert run(capsys, "--help")[0] == 0
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "0.1.0" in out


def test_attribute_preprocesses_a_folder_of_mixed_sizes_and_records_the_spec(tmp_path, capsys):
    from PIL import Image

    from spray.store import AuditStore

    for i, size in enumerate([(3, 5), (6, 2), (4, 4), (2, 7)]):
        (tmp_path / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (51, 102, 204)).save(tmp_path / "images" / "ab"[i % 2] / f"{i}.jpg", quality=100)
    store = tmp_path / "a.h5"
    code, _, err = run(capsys, "attribute", "--model", MODEL, "--data", f"folder:{tmp_path / 'images'}", "--store",
                       store, "--resize", "3", "--crop", "2", "--grayscale", "--normalize", "0.5,0.5",
                       "--method", "epsilon_gamma_box", "--allow-nonconservative")
    assert code == 0, err
    with AuditStore(store) as audit:
        assert audit.attrs()["dataset"]["transform"] == {"resize": 3, "crop": 2, "mode": "grayscale",
                                                         "mean": [0.5], "std": [0.5]}
        assert audit.attribution_info("epsilon_gamma_box")["params"]["low"] == [[[-1.0]]]
    # clarc, evaluate and export reopen the images as they were explained, without the options given again
    from spray.cli import _audited_sources
    from spray.errors import BadInputError

    reopened = _audited_sources(store)(f"folder:{tmp_path / 'images'}")
    assert reopened.transform.to_dict() == {"resize": 3, "crop": 2, "mode": "grayscale", "mean": [0.5], "std": [0.5]}
    assert _audited_sources(store)(None) is None
    with pytest.raises(BadInputError, match="all images must have the same size"):  # no store: no spec
        _audited_sources(tmp_path / "none.h5")(f"folder:{tmp_path / 'images'}")


@pytest.mark.parametrize("command", [
    ["clarc", "{store}", "--cluster", "top", "--method", "pclarc", "--model", MODEL, "--data", "{data}"],
    ["evaluate", "{store}", "--run", "r", "--model", MODEL, "--test", "{data}", "--data", "{data}"],
    ["report", "{store}", "-o", "{out}/r.html", "--model", MODEL, "--data", "{data}"],
    ["export", "virelay", "{store}", "--out", "{out}", "--data", "{data}"],
])
def test_the_audited_data_must_be_the_files_the_store_recorded(tmp_path, capsys, command):
    """clarc, evaluate, report and the ViRelAy export re-create the explained inputs from --data: an image
    changed since the attribution is refused by name (its sha256 differs), and the store is left as it was."""
    from PIL import Image

    for i in range(4):
        (tmp_path / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2), i).save(tmp_path / "images" / "ab"[i % 2] / f"{i}.png")
    data, store = f"folder:{tmp_path / 'images'}", tmp_path / "a.h5"
    assert run(capsys, "attribute", "--model", MODEL, "--data", data, "--store", store)[0] == 0
    changed = tmp_path / "images" / "b" / "3.png"
    Image.new("L", (2, 2), 99).save(changed)
    before = store.read_bytes()
    argv = [a.format(store=store, data=data, out=tmp_path / "out") for a in command]
    code, _, err = run(capsys, *argv)
    assert code == 2 and re.fullmatch(
        rf"error: image {re.escape(str(changed))} changed since audit store {re.escape(str(store))} recorded it "
        r"\(sha256 [0-9a-f]{12}…, now [0-9a-f]{12}…\): restore the file, or audit into another store\n", err), err
    assert store.read_bytes() == before


def test_audited_data_with_another_number_of_samples_is_refused_by_clarc(tmp_path, capsys):
    from PIL import Image

    for i in range(4):
        (tmp_path / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2), i).save(tmp_path / "images" / "ab"[i % 2] / f"{i}.png")
    data, store = f"folder:{tmp_path / 'images'}", tmp_path / "a.h5"
    assert run(capsys, "attribute", "--model", MODEL, "--data", data, "--store", store)[0] == 0
    (tmp_path / "images" / "b" / "3.png").unlink()
    code, _, err = run(capsys, "clarc", store, "--cluster", "top", "--method", "pclarc", "--model", MODEL,
                       "--data", data)
    assert (code, err) == (2, f"error: the dataset given (--data) has 3 samples, but audit store {store} holds 4: "
                              "pass the dataset the store was attributed from\n")


def test_skip_unreadable_names_each_skipped_file_and_the_store_records_it(tmp_path, capsys):
    from PIL import Image

    from spray.store import AuditStore

    for i in range(4):
        (tmp_path / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2), i).save(tmp_path / "images" / "ab"[i % 2] / f"{i}.png")
    broken = tmp_path / "images" / "b" / "9.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    argv = ["attribute", "--model", MODEL, "--data", f"folder:{tmp_path / 'images'}", "--store", tmp_path / "a.h5"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and f"error: image {broken} cannot be read: " in err and not (tmp_path / "a.h5").exists()
    code, _, err = run(capsys, *argv, "--skip-unreadable", "--workers", "2")
    message = f"image {broken} cannot be read: " + err.split(" cannot be read: ", 1)[1].split("\n")[0]
    assert code == 0 and err.startswith(f"skipped {broken}: {message}\n")
    with AuditStore(tmp_path / "a.h5") as audit:
        assert audit.n_samples == 4 and audit.attrs()["dataset"]["skipped"] == [["b/9.png", message]]
def test_benchmark_scores_cases_from_its_cache_and_writes_the_scorecard(tmp_path, capsys):
    from spray.benchmark import grid, size_for
    from spray.benchmark.run import CaseResult, case_directory, result_file
    from spray.outputs import active

    cache, out = active().directory(tmp_path / "cache", "cache"), tmp_path / "out"
    for flags, case in enumerate(grid(["control"], (), seeds=1)):  # finished cases: the run only reads them
        directory = active().directory(case_directory(cache, case, size_for("digits", False), "digits"), "case")
        result = CaseResult(case=case, n_planted=0, clean_accuracy=0.9, everywhere_accuracy=None, uses_artifact=None,
                            rank=4, flagged=False, cluster="8:kmeans_2:0", cluster_size=20, precision=None,
                            recall=None, f1=None, cav_auroc=None, clean_flags=flags, clean_classes=10,
                            relevance_density=None, seconds={"train": 1.0})
        result_file(directory).write_text(json.dumps(result.to_dict()))
    code, stdout, err = run(capsys, "benchmark", "--data", "digits", "--cases", "control", "--seeds", 1,
                            "--cache", cache, "--out", out, "--json")
    assert code == 0, err
    card = json.loads(stdout)
    assert [(r["split"], r["clean_flags"]["k"], r["clean_flags"]["n"]) for r in card["rows"]] == \
        [("dev", 0, 10), ("heldout", 1, 10)]
    assert card["meta"]["command"] == "spray benchmark --cases control --seeds 1 --data digits"
    assert json.loads((out / "scorecard.json").read_text()) == card
    assert "control-p00-cnn-s100-heldout: class rank 4, F1 -" in err
    assert '<meta name="generator" content="spray' in (out / "scorecard.html").read_text()


def _multi_label_table(root) -> str:
    """A multi-label table of five 2×2 greyscale images, two findings (the tiny model's two outputs); three
    images have 'effusion', one of them unreadable."""
    from PIL import Image

    for i in range(5):
        Image.new("L", (2, 2), 40 * i).save(root / f"{i}.png")
    (root / "3.png").write_bytes(b"not a png")
    (root / "outputs.txt").write_text("drain\neffusion\n")
    (root / "t.csv").write_text("path,site,drain,effusion\n0.png,A,1,1\n1.png,B,0,0\n2.png,B,1,0\n"
                                "3.png,A,0,1.0\n4.png,B,0,1\n")
    return f"csv:{root / 't.csv'}?names=outputs.txt&target=effusion"


def test_a_multi_label_audit_explains_the_target_findings_output_on_its_positive_images(tmp_path, capsys):
    from spray.store import AuditStore

    store = tmp_path / "a.h5"
    code, _, err = run(capsys, "attribute", "--model", MODEL, "--data", _multi_label_table(tmp_path), "--store",
                       store, "--skip-unreadable")
    assert code == 0 and f"skipped {tmp_path / '3.png'}: image {tmp_path / '3.png'} cannot be read" in err
    with AuditStore(store, mode="r") as audit:
        assert audit.read("samples/label").tolist() == [1, 1]
        assert audit.read("attributions/epsilon_plus_flat/target").tolist() == [1, 1]
        assert audit.attrs()["label_names"] == ["drain", "effusion"]
        dataset = audit.attrs()["dataset"]
    assert dataset["files"] == ["0.png", "4.png"] and dataset["metadata"] == {"site": ["A", "B"], "drain": ["1", "0"]}
    code, out, _ = run(capsys, "info", store)
    assert code == 0 and "          preprocessing: none" in out.splitlines()


def test_info_shows_an_image_sources_preprocessing_counts_and_metadata_columns(tmp_path, capsys):
    store = tmp_path / "a.h5"
    data = _multi_label_table(tmp_path)
    code, _, _ = run(capsys, "attribute", "--model", MODEL, "--data", data, "--store", store, "--skip-unreadable",
                     "--resize", "2,2", "--normalize", "0.5,0.25")
    assert code == 0
    code, out, _ = run(capsys, "info", store, "--json")
    assert code == 0 and json.loads(out)["images"] == {
        "root": str(tmp_path), "files": 2, "skipped": 1, "metadata_columns": ["drain", "site"],
        "transform": {"resize": [2, 2], "crop": None, "mode": None, "mean": [0.5], "std": [0.25]},
        "selection": {"target": "effusion", "rows": 5, "positive": 3, "negative": 2, "uncertain": 0, "blank": 0,
                      "uncertain_rule": None},
    }
    code, out, _ = run(capsys, "info", store)
    lines = out.splitlines()
    at = lines.index(f"dataset   {data}  2 samples")
    assert code == 0 and lines[at + 1 : at + 6] == [
        f"images    2 files in {tmp_path} (1 skipped as unreadable)",
        "          preprocessing: resize [2, 2], mean [0.5], std [0.25]",
        "          metadata columns: drain, site",
        "          rows: 5 in the table; 3 with effusion = 1 explained, 2 = 0 and 0 blank left out, 0 uncertain (-1) "
        "left out",
        "labels    drain, effusion",
    ]


def test_info_of_a_store_of_another_source_shows_no_images(tmp_path, capsys):
    store = tmp_path / "a.h5"
    assert run(capsys, "attribute", "--model", MODEL, "--data", DATA, "--store", store)[0] == 0
    code, out, _ = run(capsys, "info", store, "--json")
    assert code == 0 and "images" not in json.loads(out)
    code, out, _ = run(capsys, "info", store)
    assert code == 0 and "images " not in out and "preprocessing" not in out


@pytest.fixture
def conv_audit(tmp_path, capsys):
    """tests.data.factories:conv_model on :conv_data, attributed and analysed with the tiny pipeline."""
    store, pipeline = tmp_path / "conv.h5", tmp_path / "tiny.toml"
    pipeline.write_text(pipeline_text("tiny"))
    conv = ("--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data")
    assert run(capsys, "attribute", *conv, "--store", store)[0] == 0
    assert run(capsys, "analyze", store, "--pipeline", pipeline)[0] == 0
    return store, conv


def test_clarc_verify_prints_and_records_the_verification_and_exits_0_when_the_class_is_not_flagged(
        conv_audit, tmp_path, capsys):
    store, conv = conv_audit
    argv = ("clarc", store, "--cluster", "top", "--method", "pclarc", *conv, "--out", tmp_path / "runs")
    code, out, err = run(capsys, *argv, "--verify", "--json", "--test", "tests.data.factories:conv_data")
    result = json.loads(out)
    found = result["verification"]
    # No class of the conv audit is flagged: 'top' is its best-ranked class, and stderr says so.
    assert result["flagged"] is False and 0.05 < result["q_value"] <= 1
    assert err.endswith(f"warning: pclarc corrected cluster {result['cluster']}, whose class {found['label']} is not "
                        f"flagged (q = {result['q_value']:.3g}): no test found its group distinct; judge the cluster "
                        "(`spray rank`, the report) before using the corrected model\n")
    assert code == 0 and not found["failed"] and found["verdict"] in ("cleared", "not flagged")
    assert found["cluster"] == result["cluster"] and Path(found["store"]).is_file()
    assert result["auto"] is None  # auto's record, for --method auto only
    assert {"average_group_accuracy", "worst_group_accuracy", "relevance_density", "tcav_score",
            "training_seconds"} <= set(result["metrics"][1])
    code, out, _ = run(capsys, *argv, "--verify")
    assert code == 0 and f"verification: class {found['label']} {found['verdict'].upper()}" in out
    code, out, _ = run(capsys, *argv, "--json")  # --no-verify is the default
    assert code == 0 and json.loads(out)["verification"] is None


def test_clarc_verify_exits_3_with_a_warning_when_the_class_stays_flagged(conv_audit, tmp_path, capsys,
                                                                          monkeypatch):
    import spray.clarc.run
    from spray.clarc.verify import Standing, Verification

    flagged = Standing(1, True, 4.0, "1:kmeans_2:0", 0.01, 50.0, 2.0, None)
    monkeypatch.setattr(spray.clarc.run, "verify_correction", lambda *a, **k: Verification(
        1, "1:kmeans_2:0", 10, flagged, flagged, "1:kmeans_2:0", 1.0, "v.h5"))
    store, conv = conv_audit
    argv = ("clarc", store, "--cluster", "top", "--method", "pclarc", *conv, "--out", tmp_path / "runs", "--verify")
    code, out, err = run(capsys, *argv)
    assert code == 3 and "verification: class 1 NOT CLEARED (flagged yes -> yes" in out
    assert "warning: pclarc on cluster " in err and "did not clear the flag: class 1 is still flagged" in err
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 3 and json.loads(out)["verification"]["verdict"] == "not cleared"
