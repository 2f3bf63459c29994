"""The ``spray`` command line (contract: docs/cli.md; exit codes 0 ok, 2 bad input, 1 internal error)."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from spray.errors import SprayError


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spray")
def cli() -> None:
    """Audit a training set for Clever Hans behaviour: attribute, analyse (SpRAy), rank, correct, report."""


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
@click.option("--model", "model_spec", required=True, help="MOD:FACTORY building the torch model.")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict file (loaded weights_only).")
@click.option("--data", "data_spec", required=True, help="MOD:FACTORY, npz:PATH, hdf5:PATH or folder:PATH.")
@click.option("--store", required=True, type=click.Path(path_type=Path), help="Audit store (HDF5) to write.")
@click.option("--method", default="epsilon_plus_flat", show_default=True, help="Attribution method.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter (JSON value), e.g. --param n_steps=64; repeatable.")
@click.option("--target", type=click.Choice(["label", "prediction"]), default="label", show_default=True,
              help="Explain the true label or the predicted class.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--name", help="Name of the attribution in the store (default: the method name).")
@click.option("--overwrite", is_flag=True, help="Replace an attribution made by another model or parameters.")
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
) -> None:
    """Explain every sample of a dataset into STORE; an interrupted run resumes where it stopped."""
    from spray.attribution.methods import get_method
    from spray.attribution.runner import attribute_dataset
    from spray.data import load_model, model_hash, open_source

    model = load_model(model_spec, weights)
    dataset = open_source(data_spec)
    summary = attribute_dataset(
        store,
        model,
        dataset,
        get_method(method, **_parse_params(params)),
        name=name,
        target=target,
        batch_size=batch_size,
        model_hash=model_hash(model),
        model_name=model_spec,
        dataset_name=data_spec,
        label_names=getattr(dataset, "label_names", None),
        overwrite=overwrite,
    )
    click.echo(json.dumps(summary, default=str), err=True)


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
        cli.main(args=argv, prog_name="spray", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
