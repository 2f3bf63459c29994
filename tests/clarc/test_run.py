"""From an audit store to a recorded ClArC run (on the tiny audit), and every bad-input message."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from spray.clarc import (
    ClarcConfig,
    ClusterSpec,
    EvaluationData,
    Tuning,
    clarc_from_store,
    evaluate_from_store,
    isolate_artifact,
    load_corrected,
    read_cluster,
)
from spray.clarc import auto as auto_module
from spray.clarc.augmentive import AClArC
from spray.clarc import run as run_module
from spray.clarc.auto import (CANDIDATES, EPOCH_CHOICE, Contender, best_epoch, candidate_name, choose,
                              clean_figures, contenders, correct_on, counterfactual_transforms, within)
from spray.clarc.cav import MIN_SAMPLES
from spray.clarc.dfr import CS
from spray.clarc.groupdro import GroupDRO
from spray.clarc.rrclarc import RRClArC
from spray.clarc.evaluate import METRICS, artifact_relevance, evaluate_correction, everywhere
from spray.clarc.finetune import CHECKPOINT
from spray.clarc.groups import infer_groups, labels_of, worst_group
from spray.clarc.run import describe_artifact, shipped
from spray.clarc.transform import Transformations, agreed_area, coverage, kind_figures
from spray.clarc.verify import verification_store
from spray.errors import BadInputError
from spray.lrp import EpsilonPlusFlat
from spray.store import AuditStore
from spray.training import accuracy
from tests.clarc.conftest import Flagged


def a_cluster(tiny_audit, clustering="kmeans_2"):
    """A cluster of class 1 with enough samples on both sides for a CAV."""
    labels = tiny_audit.kmeans[clustering]
    sizes = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    cluster = next(c for c, n in sizes.items() if MIN_SAMPLES <= n <= len(labels) - MIN_SAMPLES)
    return f"1:{clustering}:{cluster}", sizes[cluster]


def a_group_cluster(tiny_audit):
    """A cluster of class 1 with at least 8 samples on both sides (the minimum of DFR and GroupDRO)."""
    for clustering, labels in tiny_audit.kmeans.items():
        for c in np.unique(labels):
            if 8 <= (labels == c).sum() <= len(labels) - 8:
                return f"1:{clustering}:{int(c)}"
    raise AssertionError("the tiny audit has no cluster for DFR")


@pytest.mark.parametrize("method", ["dfr", "groupdro", "auto"])
def test_group_robust_and_auto_runs_are_recorded_and_their_weights_reload(tiny_audit, tmp_path, method, new_model):
    spec = a_group_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig(method, tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=2), progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config, EvaluationData(tiny_audit.dataset))
    with AuditStore(store) as audit:
        audit_arrays, attrs = audit.read_node(f"clarc/{result.run}/result")
    assert attrs["method"] == method and attrs["cluster"] == spec
    if method == "dfr":
        assert attrs["C"] in CS and attrs["head"] == "head" and attrs["history"] == []
    if method == "groupdro":
        assert [sorted(h) for h in attrs["history"]] == [["epoch", "loss", "seconds", "val_worst_group"]] * 2
        assert attrs["epochs"] == 2 and (tmp_path / "runs" / result.run / "checkpoint.pt").is_file()
    if method == "auto":
        assert list(attrs["auto"]["candidates"]) == [candidate_name(*c) for c in CANDIDATES[attrs["auto"]["kind"]]]
        assert attrs["auto"]["chosen"] == choose(attrs["auto"]["candidates"])
        built = Transformations(result.artifact, tiny_audit.dataset)
        assert attrs["auto"]["coverage"] == coverage(torch.from_numpy(audit_arrays["mask"]))
        assert attrs["auto"]["agreed_area"] == agreed_area(built.local.mask)
        read = kind_figures(built, tiny_audit.model)
        assert attrs["auto"]["reproduction"] == read.reproduction and attrs["auto"]["kind"] == read.kind
        # auto's cost is all of its candidates' and the refit's, not the chosen one's epochs alone
        assert attrs["training_seconds"] >= (sum(c["seconds"] for c in attrs["auto"]["candidates"].values())
                                             + attrs["auto"]["refit"]["seconds"])
    json.dumps(attrs)
    reloaded = load_corrected(new_model(seed=3), torch.load(result.weights, weights_only=True))
    x = tiny_audit.dataset.tensors[0][:5]
    assert torch.allclose(reloaded(x), result.model(x), atol=1e-6)


def test_auto_run_again_over_its_checkpoints_reports_what_its_candidates_cost_not_the_loading(tiny_audit, tmp_path):
    spec = a_group_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("auto", tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=2), overwrite=True,
                         progress=False)
    first, again = (clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config) for _ in range(2))
    candidates = first.params["auto"]["candidates"]
    trained = [n for n in candidates if (first.run_dir / n / CHECKPOINT).is_file()]
    assert trained  # the fine-tuned candidates load their finished checkpoints the second time
    # Their cost is the epochs their histories recorded, the same both times; the run's is at least theirs.
    assert [again.params["auto"]["candidates"][n]["seconds"] for n in trained] == [candidates[n]["seconds"]
                                                                                   for n in trained]
    assert again.params["training_seconds"] >= sum(candidates[n]["seconds"] for n in trained) > 0


def test_auto_ships_the_chosen_method_refitted_on_all_the_data_deterministically(tiny_audit, tmp_path):
    spec = a_group_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())

    def run(method, out, **tuning):
        config = ClarcConfig(method, tmp_path / out, cluster=spec, tuning=Tuning(epochs=2, **tuning), progress=False)
        return clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)

    auto = run("auto", "auto")
    record = auto.params["auto"]
    artifact = auto.artifact
    fit, _ = infer_groups(labels_of(tiny_audit.dataset), artifact.label, artifact.artifact_index).split(seed=0)
    assert record["refit"]["n"] == len(tiny_audit.dataset) > record["refit"]["n_fit"] == len(fit)
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{auto.run}/result")[1]["auto"]["refit"] == record["refit"]
    # the shipped weights are the chosen method's on all the data (with the chosen transformation), not the
    # candidate's on the fit part, and a second auto run gives the same weights
    method, kind = {candidate_name(*c): c for c in CANDIDATES[record["kind"]]}[record["chosen"]]
    alone, again = run(method, "alone", kind=kind), run("auto", "again")
    shipped = auto.model.state_dict()
    for other in (alone, again):
        assert all(torch.equal(shipped[k], v) for k, v in other.model.state_dict().items())
    # spray evaluate's corrected row of the auto run is the shipped refit, named so, with the figures of the
    # chosen method's weights on all the data evaluated directly
    rows = evaluate_from_store(store, auto.run, tiny_audit.model, test=tiny_audit.dataset, progress=False)
    direct = evaluate_correction(tiny_audit.model, alone.model, label=artifact.label, patch=artifact.patch,
                                 mask=artifact.mask, clean=tiny_audit.dataset, layer=artifact.layer,
                                 composite=EpsilonPlusFlat())
    assert rows[1]["correction"] == f"auto: {record['chosen']}, refit on all the data"
    assert rows[0]["correction"] is None and rows[1]["model"] == "corrected"
    assert {k: v for k, v in rows[1].items() if k in METRICS and k != "training_seconds"} == \
        {k: v for k, v in direct[1].items() if k in METRICS and k != "training_seconds"}


def test_a_verified_auto_run_ships_the_first_contender_whose_refit_clears_the_flag(tiny_audit, tmp_path, monkeypatch):
    spec = a_group_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())

    def run(out):
        config = ClarcConfig("auto", tmp_path / out, cluster=spec, tuning=Tuning(epochs=2), verify=True,
                             progress=False)
        return clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)

    # the chosen refit's verdict stands: it alone is verified, once, and that verification is the run's
    real, seen = run_module.verify_correction, []

    def counted(store_path, corrected, *args, **kwargs):
        found = real(store_path, corrected, *args, **kwargs)
        seen.append(found.store)
        return found

    monkeypatch.setattr(run_module, "verify_correction", counted)
    plain = run("plain")
    assert seen == [plain.verification.store]
    record = plain.params["auto"]
    first = contenders(record["candidates"], choose(record["candidates"]), record["original"]["worst_group"])[0]
    assert (record["chosen"], record["epochs"]) == (first.name, first.epochs)
    assert [(v["contender"], v["verdict"]) for v in record["verified"]] == [(str(first), plain.verification.verdict)]
    assert plain.verification.verdict != "not cleared"
    assert [p.name for p in plain.run_dir.glob("verify-*.h5")] == [Path(plain.verification.store).name]
    # a refit whose class is still flagged gives way to the next contender (every kept candidate is one here)
    seen.clear()

    def still_flagged_first(store_path, corrected, *args, **kwargs):
        found = real(store_path, corrected, *args, **kwargs)
        seen.append(found.store)
        return dataclasses.replace(found, after=dataclasses.replace(found.after, flagged=True)) if len(seen) == 1 \
            else found

    monkeypatch.setattr(run_module, "verify_correction", still_flagged_first)
    monkeypatch.setattr(auto_module, "MAX_WORST_GROUP_GAP", 1.0)
    swapped = run("swapped")
    record = swapped.params["auto"]
    first, second = contenders(record["candidates"], choose(record["candidates"]),
                               record["original"]["worst_group"])[:2]
    assert [(v["contender"], v["verdict"]) for v in record["verified"]] == [
        (str(first), "not cleared"), (str(second), plain.verification.verdict)]
    assert (record["chosen"], record["epochs"]) == (second.name, second.epochs)
    # two refits verified, once each; the second's verification is the run's
    assert len(seen) == 2 and seen[0] != seen[1]
    assert swapped.verification.store == str(verification_store(swapped.run_dir, swapped.model)) == seen[-1]
    assert swapped.metrics[1]["correction"] == (f"auto: {second}, refit on all the data, in place of {first} (class "
                                                "still flagged after the refit)")
    assert record["refit"]["seconds"] == pytest.approx(sum(v["seconds"] for v in record["verified"]))
    assert swapped.params["training_seconds"] >= (sum(c["seconds"] for c in record["candidates"].values())
                                                  + record["refit"]["seconds"])


def test_an_auto_run_that_tried_no_contender_because_the_validation_showed_nothing_corrected_says_so():
    record = {"chosen": "aclarc/spectral", "epochs": 24, "refit": {}, "original": {"worst_group": 1.0},
              "candidates": {"aclarc/spectral": {"worst_group": 1.0, "epochs": 24},
                             "dfr/spectral": {"worst_group": 1.0}},
              "verified": [{"contender": "aclarc/spectral at 24 epochs", "verdict": "not cleared"}]}
    assert shipped("auto", {"auto": record}) == (
        "auto: aclarc/spectral at 24 epochs, refit on all the data; no other contender tried: its validation worst "
        "group (1.00) is not above the original model's (1.00)")
    unseen = {**record, "verified": [{"contender": "aclarc/spectral at 24 epochs", "verdict": "not verified"}]}
    assert shipped("auto", {"auto": unseen}) == shipped("auto", {"auto": record})
    # cleared, or the chosen one above the original, or a record from before version 31: no such clause
    cleared = {**record, "verified": [{"contender": "aclarc/spectral at 24 epochs", "verdict": "cleared"}]}
    above = {**record, "original": {"worst_group": 0.99}}
    older = {k: v for k, v in record.items() if k != "original"}
    assert {shipped("auto", {"auto": r}) for r in (cleared, above, older)} == {
        "auto: aclarc/spectral at 24 epochs, refit on all the data"}


def test_auto_chooses_aclarcs_epochs_on_the_validation_part_and_refits_with_them(tiny_audit, tmp_path, monkeypatch):
    # Up to 3 epochs here (8 by default); A-ClArC's candidates only, so that one of them is shipped; a learning
    # rate at which the tiny model's validation figures change from epoch to epoch.
    lr = 3e-2
    spec = a_group_cluster(tiny_audit)
    monkeypatch.setitem(EPOCH_CHOICE, "aclarc", 3)
    for kind in list(CANDIDATES):
        monkeypatch.setitem(CANDIDATES, kind, (("aclarc", "local"), ("aclarc", "global"), ("aclarc", "moving")))
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())

    def run(method, out, tuning):
        config = ClarcConfig(method, tmp_path / out, cluster=spec, tuning=tuning, progress=False)
        return clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)

    auto = run("auto", "auto", Tuning(lr=lr))
    record, artifact = auto.params["auto"], auto.artifact
    inferred = infer_groups(labels_of(tiny_audit.dataset), artifact.label, artifact.artifact_index)
    fit, val = inferred.split(seed=0)
    transforms = counterfactual_transforms(Transformations(artifact, tiny_audit.dataset), record["kind"])
    original = correct_on(tiny_audit.model, tiny_audit.dataset, val)
    assert record["original"] == worst_group(tiny_audit.model, tiny_audit.dataset, val, inferred,
                                             *transforms).to_dict()
    # each epoch's figures are those of A-ClArC fine-tuned for that many epochs alone and scored as a candidate
    # (epoch e's draws depend on (seed, e) only); the candidate is its best epoch
    assert len({p["worst_group"] for f in record["candidates"].values() for p in f["per_epoch"]}) > 2
    for name, figures in record["candidates"].items():
        assert [p["epoch"] for p in figures["per_epoch"]] == [1, 2, 3]
        assert figures == {**best_epoch([{"epoch": p["epoch"], **p} for p in figures["per_epoch"]]),
                           "seconds": figures["seconds"]}
    kind = record["chosen"].split("/")[1]
    for epochs in (1, 3):
        alone = AClArC(epochs=epochs, kind=kind, seed=0, lr=lr).fit(tiny_audit.model, Subset(tiny_audit.dataset, fit),
                                                             within(artifact, fit), progress=False).model_
        figures = {**worst_group(alone, tiny_audit.dataset, val, inferred, *transforms).to_dict(),
                   **clean_figures(original, correct_on(alone, tiny_audit.dataset, val))}
        assert record["candidates"][record["chosen"]]["per_epoch"][epochs - 1] == {"epoch": epochs, **figures}
    # the refit on all the data is fine-tuned for the chosen epochs: the same weights as A-ClArC given them
    chosen = record["candidates"][record["chosen"]]["epochs"]
    assert auto.params["epochs"] == chosen
    assert shipped("auto", auto.params) == f"auto: {record['chosen']} at {chosen} epochs, refit on all the data"
    given = run("aclarc", "given", Tuning(epochs=chosen, kind=kind, lr=lr))
    assert all(torch.equal(v, given.model.state_dict()[k]) for k, v in auto.model.state_dict().items())
    # the command line shows the choice: every candidate, the chosen one starred with its epochs and worst group
    lines = auto.choice().splitlines()
    assert lines[0] == (f"auto: {record['kind']} artifact; candidates fitted on the fit part, scored on {len(val)} "
                        "validation samples")
    starred = [line for line in lines if line.startswith("* ")]
    best = record["candidates"][record["chosen"]]
    assert len(starred) == 1 and starred[0].split()[1:5] == [
        record["chosen"], str(chosen), f"{best['worst_group']:.3f}", f"({best['worst_group_correct']}/{best['worst_group_size']}"]
    assert auto.choice() in auto.table() and given.choice() is None
    # verified, with the chosen refit still flagged: a contender of the same candidate at other epochs (which
    # contenders come is tests/clarc/test_auto.py's) is refitted beside the chosen one, its weights A-ClArC's given
    # those epochs, and ships when its class is no longer flagged
    name = record["chosen"]
    monkeypatch.setattr(auto_module, "contenders", lambda figures, chosen, original: [
        Contender(chosen, figures[chosen].get("epochs")), Contender(chosen, 2)])
    verdicts = iter([True, False])
    longer = run("auto", "longer", Tuning(lr=lr, verify=lambda model: Flagged(next(verdicts))))
    assert [v["contender"] for v in longer.params["auto"]["verified"]] == [f"{name} at {chosen} epochs",
                                                                         f"{name} at 2 epochs"]
    assert longer.params["epochs"] == longer.params["auto"]["epochs"] == 2 != chosen
    assert (longer.run_dir / auto_module.REFIT / f"{name}@2").is_dir()
    two = run("aclarc", "two", Tuning(epochs=2, kind=kind, lr=lr))
    assert all(torch.equal(v, two.model.state_dict()[k]) for k, v in longer.model.state_dict().items())
    # --epochs given: auto fine-tunes every candidate for them and chooses no epochs
    fixed = run("auto", "fixed", Tuning(epochs=1, lr=lr)).params["auto"]["candidates"]
    assert all("per_epoch" not in f and "epochs" not in f for f in fixed.values())


def test_auto_stops_each_aclarc_candidate_once_its_validation_is_done(tiny_audit, tmp_path, monkeypatch):
    # Up to 6 epochs with a patience of 1: each candidate trains until its best epoch is one epoch back.
    monkeypatch.setitem(EPOCH_CHOICE, "aclarc", 6)
    monkeypatch.setattr(auto_module, "PATIENCE", 1)
    for kind in list(CANDIDATES):
        monkeypatch.setitem(CANDIDATES, kind, (("aclarc", "local"), ("aclarc", "global")))
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("auto", tmp_path / "auto", cluster=a_group_cluster(tiny_audit), tuning=Tuning(lr=3e-2),
                         progress=False)
    candidates = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config).params["auto"]["candidates"]
    trained = []
    for figures in candidates.values():
        history = [{"epoch": p["epoch"], **p} for p in figures["per_epoch"]]
        # the epochs run are those before the first at which the best lay one epoch back, or all six
        stops = [e for e in range(1, len(history) + 1) if e - best_epoch(history[:e])["epochs"] >= 1]
        assert len(history) == (stops[0] if stops else 6)
        trained.append(len(history))
    assert min(trained) < 6  # a candidate stopped early


def test_auto_skips_a_candidate_whose_groups_are_too_small_on_the_fit_part_and_chooses_among_the_rest(
        tiny_audit, tmp_path, monkeypatch):
    # A cluster big enough for a CAV (4) but not for DFR's and GroupDRO's 8 per group once the validation share
    # is held out: auto used to stop with DFR's refusal (a flagged 10 % group of the benchmark's held-out split);
    # the candidates of both kinds are set to the global ones so that the group-robust methods are among them.
    spec = next(f"1:{name}:{int(c)}" for name, labels in tiny_audit.kmeans.items() for c in np.unique(labels)
                if MIN_SAMPLES <= (labels == c).sum() <= 10 and (labels != c).sum() >= MIN_SAMPLES)
    for kind in list(CANDIDATES):
        monkeypatch.setitem(CANDIDATES, kind, (("aclarc", "global"), ("dfr", "global"), ("groupdro", "global")))
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("auto", tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=1), progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    record = result.params["auto"]
    labels = labels_of(tiny_audit.dataset)
    fit, _ = infer_groups(labels, result.artifact.label, result.artifact.artifact_index).split(seed=0)
    groups = infer_groups(labels[fit], result.artifact.label, within(result.artifact, fit).artifact_index)
    assert groups.sizes.min() < 8
    advice = "choose a larger cluster, or a dataset with more samples of every class"
    assert record["candidates"]["dfr/global"]["skipped"] == \
        f"a DFR head needs at least 8 samples in every inferred group, got {groups.describe()}; {advice}"
    assert record["candidates"]["groupdro/global"]["skipped"] == \
        f"GroupDRO needs at least 8 samples in every inferred group, got {groups.describe()}; {advice}"
    assert record["chosen"] == "aclarc/global" and "worst_group" in record["candidates"]["aclarc/global"]
    assert record["refit"]["n"] == len(tiny_audit.dataset)


def test_auto_skips_a_candidate_whose_fine_tuning_diverges_and_chooses_among_the_rest(tiny_audit, tmp_path,
                                                                                      monkeypatch):
    # RR-ClArC's loss became infinite on the benchmark's full-size Waterbirds-like cases, and auto stopped with
    # its refusal instead of choosing among the candidates that trained (docs/clarc.md §25).
    def diverging(self, artifact):
        return lambda model, x, y, generator: model(x).sum() * 0 + float("inf")

    monkeypatch.setattr(RRClArC, "objective", diverging)
    for kind in list(CANDIDATES):
        monkeypatch.setitem(CANDIDATES, kind, (("aclarc", "global"), ("rrclarc", "global")))
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("auto", tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=1), progress=False)
    record = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config).params["auto"]
    assert record["candidates"]["rrclarc"]["skipped"] == \
        "the fine-tuning loss became inf in epoch 1; lower lr or lambda"
    assert record["chosen"] == "aclarc/global" and "worst_group" in record["candidates"]["aclarc/global"]


def test_read_cluster_gives_the_members_and_the_rest_of_the_class(tiny_audit):
    spec, size = a_cluster(tiny_audit)
    with AuditStore(tiny_audit.store) as store:
        members = read_cluster(store, spec)
    assert len(members.artifact) == size
    labels = tiny_audit.dataset.tensors[1]
    assert set(members.artifact) | set(members.rest) == set(torch.nonzero(labels == 1).flatten().tolist())
    assert not set(members.artifact) & set(members.rest)


@pytest.mark.parametrize("method", ["pclarc", "aclarc", "rrclarc"])
def test_run_writes_weights_and_the_result_node_of_the_contract(tiny_audit, tmp_path, method, new_model):
    spec, size = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig(method, tmp_path / "runs", cluster=spec, layer="auto", tuning=Tuning(epochs=1),
                         progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config, EvaluationData(tiny_audit.dataset))
    assert result.run == f"{method}_{spec.replace(':', '_')}"
    with AuditStore(store) as audit:
        arrays, attrs = audit.read_node(f"clarc/{result.run}/result")
    k = min(8, size)
    assert arrays["patch"].shape == (1, 8, 8) and arrays["patch"].dtype == np.float32
    assert arrays["mask"].shape == (8, 8) and arrays["mask"].dtype == np.float32
    assert 0 <= arrays["mask"].min() and arrays["mask"].max() <= 1
    assert arrays["example_inputs"].shape == (k, 1, 8, 8) and arrays["example_inputs"].dtype == np.float32
    assert arrays["example_masks"].shape == (k, 8, 8)
    with AuditStore(store) as audit:
        assert set(arrays["example_index"]) <= set(read_cluster(audit, spec).artifact)
    choice = attrs["layer_choice"]
    assert attrs["method"] == method and attrs["cluster"] == spec and attrs["layer"] == choice["layer"]
    assert [c["layer"] for c in choice["candidates"]] == ["features.1", "features.3"]
    assert [c["channels"] for c in choice["candidates"]] == [4, 6]
    assert " of 2 candidates keep at least 95% of clean predictions; " in choice["reason"]
    chosen = next(c for c in choice["candidates"] if c["layer"] == attrs["layer"])
    assert attrs["cav_auc"] == chosen["auc"] and 0 <= attrs["cav_auc"] <= 1
    assert attrs["cav_rank"] == 1 and attrs["cav_subspace_auc"] is None
    assert np.array_equal(arrays["cav_basis"], arrays["cav"][None])
    assert [row["model"] for row in attrs["metrics"]] == ["original", "corrected"]
    assert all(np.isfinite(row["clean_accuracy"]) and np.isfinite(row["artifact_relevance"])
               for row in attrs["metrics"])
    assert attrs["seed"] == 0 and attrs["weights"] == str(result.weights)
    assert (attrs["epochs"] is None) == (method == "pclarc")
    assert (attrs["lambda"] is None) == (method != "rrclarc")
    json.dumps(attrs)
    state = torch.load(result.weights, weights_only=True)
    reloaded = load_corrected(new_model(seed=3), state)
    x = tiny_audit.dataset.tensors[0][:5]
    assert torch.allclose(reloaded(x), result.model(x), atol=1e-6)
    assert json.loads((result.run_dir / "result.json").read_text())["run"] == result.run


def test_a_given_layer_is_used_and_a_subspace_cav_is_recorded_with_its_rank(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, layer="features.3", cav="subspace",
                         progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    with AuditStore(store) as audit:
        arrays, attrs = audit.read_node(f"clarc/{result.run}/result")
    cav = result.artifact.cav
    assert attrs["layer"] == "features.3" and attrs["layer_choice"] is None and attrs["cav_method"] == "subspace"
    assert attrs["cav_rank"] == cav.rank_ == len(arrays["cav_basis"]) and attrs["cav_subspace_auc"] == cav.subspace_auc_
    assert np.array_equal(arrays["cav_basis"], cav.basis_)
    state = torch.load(result.weights, weights_only=True)
    assert state["features.3.projection.v"].reshape(-1, 6).shape == (cav.rank_, 6)
    assert "layer as given (--layer)" in describe_artifact(result.artifact)


def test_evaluate_from_store_updates_the_metrics(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    assert result.metrics[1]["clean_accuracy"] is None
    metrics = evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset, progress=False)
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["metrics"] == metrics
    assert metrics[1]["clean_accuracy"] is not None


def test_the_python_api_refuses_data_other_than_the_audited_and_writes_nothing(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    x, y = tiny_audit.dataset.tensors
    short = TensorDataset(x[:-1], y[:-1])
    refusal = (f"the dataset given (--data) has {len(short)} samples, but audit store {store} holds {len(x)}: pass "
               "the dataset the store was attributed from")
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, progress=False)
    with pytest.raises(BadInputError) as refused:
        clarc_from_store(store, tiny_audit.model, short, config)
    assert str(refused.value) == refusal
    assert not (tmp_path / "runs").exists()
    with AuditStore(store) as audit:
        assert audit.list_nodes("clarc") == []
    run = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config).run
    with AuditStore(store) as audit:
        recorded = audit.read_node(f"clarc/{run}/result")[1]
    with pytest.raises(BadInputError) as refused:
        evaluate_from_store(store, run, tiny_audit.model, test=tiny_audit.dataset, dataset=short, progress=False)
    assert str(refused.value) == refusal
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{run}/result")[1] == recorded


def test_top_is_the_flagged_cluster_of_the_best_ranked_class(tiny_audit, tmp_path):
    from spray.clarc.cluster import Target, resolve_cluster
    top = tiny_audit.ranking.top_flagged()
    assert top is not None and top is tiny_audit.ranking.top_candidate()
    named = tiny_audit.ranking.of(1)
    with AuditStore(tiny_audit.store) as audit:
        target = resolve_cluster(audit, "top")
        assert resolve_cluster(audit, "1:kmeans_2:0") == Target(ClusterSpec(1, "kmeans_2", 0), "tiny", named.flagged,
                                                                named.q_value, ("tiny",))
    spec = target.spec
    assert target == Target(ClusterSpec(top.label, top.cluster.clustering, top.cluster.id), "tiny", True, top.q_value,
                            ("tiny",))
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster="top", progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    assert result.cluster == str(spec) and result.run == f"pclarc_{spec.label}_{spec.clustering}_{spec.cluster}"
    assert (result.flagged, result.q_value, result.unflagged_warning()) == (True, top.q_value, None)
    with AuditStore(store) as audit:
        recorded = audit.read_node(f"clarc/{result.run}/result")[1]
    assert (recorded["flagged"], recorded["q_value"]) == (True, top.q_value)


def test_top_with_no_class_flagged_is_the_best_ranked_class_and_says_so(tiny_audit, tmp_path):
    """Over two analyses Benjamini-Hochberg flags no class of the tiny audit: 'top' is then the best-ranked class of
    the ranking over both, the target and the result say it is not flagged, and the result warns."""
    from spray.clarc.cluster import Target, resolve_cluster
    from spray.pipeline import analyze, pipeline_from_text
    from spray.ranking import rank_analyses
    from spray.testing import pipeline_text

    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    analyze(str(store), pipeline_from_text(pipeline_text("tiny", analysis={"name": "again"}, knn={"n_neighbors": 4})),
            progress=False)
    with AuditStore(store) as audit:
        both = rank_analyses(audit, ["again", "tiny"])
        top = both.top_candidate()
        assert both.top_flagged() is None and top.q_value > 0.05
        assert resolve_cluster(audit, "top") == Target(
            ClusterSpec(top.label, top.cluster.clustering, top.cluster.id), top.analysis, False, top.q_value,
            ("again", "tiny"))
        alone = tiny_audit.ranking.top_flagged()
        assert resolve_cluster(audit, "top", "tiny") == Target(
            ClusterSpec(alone.label, alone.cluster.clustering, alone.cluster.id), "tiny", True, alone.q_value,
            ("tiny",))
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset,
                              ClarcConfig("pclarc", tmp_path / "runs", cluster="top", progress=False))
    assert (result.cluster, result.flagged, result.q_value) == (top.cluster.reference, False, top.q_value)
    assert result.unflagged_warning() == (
        f"warning: pclarc corrected cluster {top.cluster.reference}, whose class {top.label} is not flagged "
        f"(q = {top.q_value:.3g}): no test found its group distinct; judge the cluster (`spray rank`, the report) "
        "before using the corrected model")


def test_a_given_everywhere_test_set_replaces_the_pasted_isolated_artifact(tiny_audit, tmp_path):
    spec, _ = a_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    x, y = tiny_audit.dataset.tensors
    stamped = x.clone()
    stamped[:, :, :3, :3] = 1.0  # the tiny data's planted corner, in every sample
    given = TensorDataset(stamped, y)
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster=spec, progress=False)
    result = clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config,
                              EvaluationData(tiny_audit.dataset, everywhere_test=given))
    original = result.metrics[0]
    assert original["everywhere_accuracy"] == pytest.approx(accuracy(tiny_audit.model, given))
    assert original["artifact_relevance"] == pytest.approx(
        artifact_relevance(tiny_audit.model, given, result.artifact.mask))
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["everywhere"] == "given"
    rows = evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset, progress=False)
    with AuditStore(store) as audit:
        assert audit.read_node(f"clarc/{result.run}/result")[1]["everywhere"] == "isolated"
    assert rows[0]["everywhere_accuracy"] == pytest.approx(accuracy(
        tiny_audit.model, everywhere(tiny_audit.dataset, result.artifact.patch, result.artifact.mask)))
    with pytest.raises(BadInputError, match=r"everywhere test samples have shape \(1, 4, 4\), but the artifact "
                                            r"mask is \(8, 8\)"):
        evaluate_from_store(store, result.run, tiny_audit.model, test=tiny_audit.dataset,
                            everywhere_test=TensorDataset(x[:, :, :4, :4], y), progress=False)


# ---------------------------------------------------------------------------------------------- bad input


def run(tiny_audit, tmp_path, cluster, **kwargs):
    config = ClarcConfig(kwargs.pop("method", "pclarc"), tmp_path, cluster=cluster, progress=False, **kwargs)
    return clarc_from_store(tiny_audit.store, tiny_audit.model, tiny_audit.dataset, config)


def test_unknown_cluster_id_lists_the_valid_ids(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"no cluster 9; valid ids: 0, 1 "):
        run(tiny_audit, tmp_path, "1:kmeans_2:9")


def test_the_noise_label_is_refused_listing_the_valid_ids_and_no_run_is_written(tiny_audit, tmp_path):
    with pytest.raises(BadInputError) as raised:
        run(tiny_audit, tmp_path, "1:kmeans_2:-1")
    assert str(raised.value) == (
        "cluster -1 of clustering 'kmeans_2' of class 1 is the noise label (the samples the clustering put in no "
        "cluster), not a cluster: ClArC needs one cluster; valid ids: 0, 1 (e.g. 1:kmeans_2:0)")
    assert list(tmp_path.iterdir()) == []


def test_unknown_clustering_lists_the_valid_names(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"no clustering 'kmeans_40'; valid clusterings: .*kmeans_2"):
        run(tiny_audit, tmp_path, "1:kmeans_40:0")


def test_class_not_analysed_lists_the_analysed_classes(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match=r"class 7 was not analysed .* analysed classes: 0, 1"):
        run(tiny_audit, tmp_path, "7:kmeans_2:0")


def test_top_without_a_ranked_class_asks_for_a_cluster_spec(tiny_audit, tmp_path, monkeypatch):
    import spray.clarc.cluster as cluster
    from spray.ranking import RankedClass, Ranking

    skipped = RankedClass(0, "a", 5, rank=1, cluster=None, skipped="too few samples", outlier=None, flagged=False)
    monkeypatch.setattr(cluster, "rank_analyses", lambda store, analyses: Ranking(analyses[0], (skipped,)))
    with pytest.raises(BadInputError, match=r"has no ranked class in analysis 'tiny'; name the cluster as "
                                            r"CLASS:CLUSTERING:ID"):
        run(tiny_audit, tmp_path, "top")


def test_malformed_cluster_spec_shows_the_format(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match="CLASS:CLUSTERING:ID"):
        run(tiny_audit, tmp_path, "1-kmeans_2-0")


def test_a_clarc_config_refuses_an_unknown_method_when_made_and_cannot_be_changed(tmp_path):
    methods = "aclarc, auto, dfr, groupdro, pclarc, rrclarc"
    with pytest.raises(BadInputError, match=rf"^unknown ClArC method 'xclarc'; choose one of {methods}$"):
        ClarcConfig("xclarc", tmp_path)
    config = ClarcConfig("pclarc", tmp_path)
    assert (config.cluster, config.tuning) == ("top", Tuning())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "aclarc"  # type: ignore[misc]


def test_unknown_method_lists_the_methods(tiny_audit, tmp_path):
    with pytest.raises(BadInputError, match="aclarc, auto, dfr, groupdro, pclarc, rrclarc"):
        run(tiny_audit, tmp_path, a_cluster(tiny_audit)[0], method="xclarc")


def test_unknown_layer_lists_the_module_names(tiny_audit, tmp_path):
    names = r"features.3, pool, flatten, head"
    with pytest.raises(BadInputError, match=rf"layer 'features.9' is not a module .*{names}"):
        run(tiny_audit, tmp_path, a_cluster(tiny_audit)[0], layer="features.9")


def test_cluster_too_small_for_a_cav_names_both_sizes_and_the_minimum(tiny_audit):
    with pytest.raises(BadInputError) as raised:
        isolate_artifact(tiny_audit.model, tiny_audit.dataset, np.arange(1, 7, 2), np.arange(7, 40, 2), label=1)
    assert str(raised.value) == (
        f"the cluster has 3 samples and the rest of class 1 17; fitting a CAV needs at least {MIN_SAMPLES} in each: "
        "choose a larger cluster (`spray rank --json` lists each cluster's members)")


def test_a_stored_cluster_too_small_for_a_cav_is_refused_before_a_run_directory_is_made(tiny_audit, tmp_path):
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    with AuditStore(store, mode="a") as audit:  # cluster 3 of kmeans_4 keeps 2 members, the others go to 0
        arrays, attrs = audit.read_node("analyses/tiny/1/kmeans")
        labels = np.asarray(arrays["kmeans_4"]).copy()
        labels[np.flatnonzero(labels == 3)[2:]] = 0
        audit.write_node("analyses/tiny/1/kmeans", {**arrays, "kmeans_4": labels}, attrs)
    config = ClarcConfig("pclarc", tmp_path / "runs", cluster="1:kmeans_4:3", progress=False)
    with pytest.raises(BadInputError) as raised:
        clarc_from_store(store, tiny_audit.model, tiny_audit.dataset, config)
    rest = labels.size - 2
    assert str(raised.value).startswith(f"cluster 1:kmeans_4:3 has 2 samples and the rest of class 1 {rest}; ")
    assert not (tmp_path / "runs").exists()


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class First(nn.Module):
    def forward(self, pair):
        return pair[0]


def test_layer_whose_output_is_not_a_tensor_is_bad_input():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), Pair(), First(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    dataset = TensorDataset(torch.rand(20, 1, 6, 6), torch.arange(20) % 2)
    with pytest.raises(BadInputError, match=r"layer '2' \(Pair\) returns tuple, not a tensor"):
        isolate_artifact(model, dataset, np.arange(0, 10, 2), np.arange(10, 20, 2), label=0, layer="2")


def test_store_without_analysis_says_to_run_analyze(tmp_path, tiny_audit):
    empty = tmp_path / "empty.h5"
    AuditStore(empty, "a").close()
    with pytest.raises(BadInputError, match="spray analyze"):
        clarc_from_store(empty, tiny_audit.model, tiny_audit.dataset,
                         ClarcConfig("pclarc", tmp_path, cluster="1:kmeans_2:0"))


def test_spray_clarc_prints_and_returns_every_candidate_layers_figures(tmp_path):
    from click.testing import CliRunner

    from spray.cli import main
    from spray.testing import pipeline_text

    def cli(*argv):
        runner = CliRunner()
        with runner.isolation() as (out, err, _):
            code = main([str(a) for a in argv])
        assert code == 0, err.getvalue().decode()
        return out.getvalue().decode()

    store, pipeline = tmp_path / "audit.h5", tmp_path / "tiny.toml"
    pipeline.write_text(pipeline_text("tiny"))
    conv = ("--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data")
    cli("attribute", *conv, "--store", store)
    cli("analyze", store, "--pipeline", pipeline)
    plain = json.loads(cli("clarc", store, "--cluster", "1:kmeans_2:0", "--method", "pclarc", *conv,
                           "--out", tmp_path / "runs0", "--json"))
    assert plain["layer"] == "features.3" and plain["layer_choice"] is None  # without --layer: the default layer
    result = json.loads(cli("clarc", store, "--cluster", "1:kmeans_2:0", "--method", "pclarc", *conv,
                            "--layer", "auto", "--out", tmp_path / "runs", "--json"))
    choice = result["layer_choice"]
    assert [c["layer"] for c in choice["candidates"]] == ["features.1", "features.3"]
    assert result["layer"] == choice["layer"] and result["cav_rank"] == 1 and result["cav_subspace_auc"] is None
    text = cli("clarc", store, "--cluster", "1:kmeans_2:0", "--method", "pclarc", *conv, "--cav", "subspace",
               "--layer", "auto", "--out", tmp_path / "runs2")
    lines = text.splitlines()
    assert lines[1].startswith("CAV (subspace, rank ") and "subspace score AUC" in lines[1]
    assert lines[2].startswith("layer chosen: ") and "out-of-fold CAV AUC" in lines[2]
    assert lines[3].split() == ["layer", "channels", "CAV", "AUC", "concentration", "kept"]
    assert [line[2:].split()[:2] for line in lines[4:6]] == [["features.1", "4"], ["features.3", "6"]]
    assert sum(line.startswith("*") for line in lines[4:6]) == 1


class IntIndexed(Dataset):
    """A dataset that, like one seeding a generator per sample, takes Python ints only."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if type(i) is not int:
            raise TypeError(f"sample index {i!r} is a {type(i).__name__}, not an int")
        return self.dataset[i]


def test_auto_groupdro_and_the_evaluation_index_a_dataset_with_python_ints(tiny_audit, tmp_path):
    # auto's fit part, GroupDRO's fit part and TCAV's samples of the class were Subsets with numpy indices,
    # which reached the user's __getitem__ as numpy integers
    spec = a_group_cluster(tiny_audit)
    store = tmp_path / "audit.h5"
    store.write_bytes(tiny_audit.store.read_bytes())
    data = IntIndexed(tiny_audit.dataset)
    config = ClarcConfig("auto", tmp_path / "runs", cluster=spec, tuning=Tuning(epochs=1), progress=False)
    result = clarc_from_store(store, tiny_audit.model, data, config, EvaluationData(data))
    candidates = result.params["auto"]["candidates"]
    assert candidates and all("worst_group" in f for f in candidates.values())  # every candidate fitted, scored
    assert result.metrics[1]["clean_accuracy"] == accuracy(result.model, tiny_audit.dataset)
    groupdro = GroupDRO(epochs=1).fit(tiny_audit.model, data, result.artifact, progress=False)
    assert groupdro.best_epoch_ in (0, 1)
