"""Schema versions (docs/store.md, "Versioning"): a store written by today's spray (tests/golden, schema 1) is
migrated in place by `spray migrate`, all or nothing, and reads as before afterwards."""

from __future__ import annotations

import shutil

import h5py
import pytest
from click.testing import CliRunner

import spray.store
from spray.cli import main
from spray.errors import SchemaError
from spray.store import AuditStore
from tests.golden.outputs import EXPECTED, HERE


def _add_provenance(f: h5py.File) -> None:
    """A made-up schema 2: a ``provenance`` group every store must have."""
    f.create_group("provenance").attrs["from_schema"] = 1


def _run(args: list[str]) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = main(args)
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def version_two(monkeypatch):
    monkeypatch.setattr(spray.store, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(spray.store, "MIGRATIONS", {1: _add_provenance})


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "audit.h5"
    shutil.copy(HERE / "audit.h5", path)
    return path


def test_a_reader_of_a_newer_spray_names_the_command_that_migrates(version_two, store):
    with pytest.raises(SchemaError) as caught:
        AuditStore(store)
    assert str(caught.value) == (
        f"{store} has store schema version 1, older than the 2 this spray supports: "
        f"run `spray migrate {store}` to migrate it in place"
    )


def test_spray_migrate_brings_todays_store_up_and_it_reads_as_before(version_two, store):
    assert _run(["migrate", str(store)])[:2] == (0, f"audit store {store}: schema version 2 (migrated from 1)\n")
    with h5py.File(store, "r") as f:
        assert f.attrs["schema_version"] == 2
        assert f["provenance"].attrs["from_schema"] == 1
    code, out, _ = _run(["rank", str(store), "--json"])
    assert code == 0
    assert out == (EXPECTED / "audit" / "rank.json").read_text(encoding="utf-8")
    assert _run(["migrate", str(store)])[:2] == (0, f"audit store {store}: schema version 2 (already current)\n")


def test_a_failing_migration_leaves_the_store_as_it_was(monkeypatch, store):
    def fails_halfway(f: h5py.File) -> None:
        _add_provenance(f)
        raise RuntimeError("migration bug")

    monkeypatch.setattr(spray.store, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(spray.store, "MIGRATIONS", {1: fails_halfway})
    before = store.read_bytes()
    code, _, err = _run(["migrate", str(store)])
    assert code == 2 and "migration bug" in err
    assert store.read_bytes() == before


def test_without_a_migration_the_store_is_refused_and_left_alone(monkeypatch, store):
    monkeypatch.setattr(spray.store, "SCHEMA_VERSION", 2)
    before = store.read_bytes()
    code, _, err = _run(["migrate", str(store)])
    assert code == 2
    assert err == (f"error: {store} has store schema version 1, older than the 2 this spray supports, and "
                   "there is no migration for it: re-create the store with this spray\n")
    assert store.read_bytes() == before
