"""spray.outputs: no command writes over its own input or over a file spray did not write; writes are atomic.

The guard's rules one by one (exact messages), then a property over the command line: hypothesis draws a
command that writes (report, export tables, export virelay, clarc), what its output path is (missing,
spray's own, a foreign file or directory, the store itself, a symlink or hard link to it, the target of the
symlink the store is given by, a FIFO, the command's weights) and ``--force``; no combination may change an
input (bytes and mtime), hang, exit 1, or exit 0 without its output.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spray.cli import main
from spray.clarc import ClusterSpec
from spray.clarc.run import run_name
from spray.errors import BadInputError
from spray.outputs import GENERATOR, MARKER, OutputGuard, active, protecting, source_path
from spray.testing import pipeline_text
from tests.data.factories import conv_model

REPO = Path(__file__).resolve().parents[1]
CONV = ["--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data"]
CLUSTER = "1:kmeans_2:0"
RUN = run_name("pclarc", ClusterSpec.parse(CLUSTER))


def refused_input(what: str, out: Path, label: str, source: Path) -> str:
    return (f"{what} {out} is the same file as {label} {source}: writing it would destroy an input of this "
            "command; choose another path")


FORCE_DIR = "choose a new or empty directory, or pass --force to write into it"


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``spray ARGV`` in this process (click's isolation); exit code and stderr."""
    with CliRunner().isolation() as (_, err, _):
        code = main([str(a) for a in argv])
    return code, err.getvalue().decode(errors="replace")


def _refused(call, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        call()
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused_by_path_symlink_or_hard_link(tmp_path, alias):
    store = tmp_path / "s.h5"
    store.write_bytes(b"store")
    out = {"same": store, "symlink": tmp_path / "l.h5", "hardlink": tmp_path / "h.h5"}[alias]
    if alias == "symlink":
        out.symlink_to(store)
    elif alias == "hardlink":
        out.hardlink_to(store)
    guard = OutputGuard().with_inputs({"the store": store}, force=True)  # --force does not lift it
    _refused(lambda: guard.write(out, "report path", lambda tmp: tmp.write_text("x"), report=True),
             refused_input("report path", out, "the store", store))
    _refused(lambda: guard.directory(out, "export directory"), refused_input("export directory", out, "the store", store))
    assert store.read_bytes() == b"store"


def test_a_file_spray_did_not_write_is_replaced_only_with_force(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    _refused(lambda: OutputGuard().file(weights, "report path", report=True),
             f"report path {weights} exists and is not a report spray wrote; choose another path, or pass "
             "--force to replace it")
    _refused(lambda: OutputGuard().file(weights, "table file"),
             f"table file {weights} exists and is not in a directory spray wrote (it has no {MARKER} file); "
             "choose another path, or pass --force to replace it")
    OutputGuard(force=True).write(weights, "report path", lambda tmp: tmp.write_text("report"), report=True)
    assert weights.read_text() == "report"


def test_spray_recognises_its_reports_by_the_generator_tag_and_other_files_by_the_directory_marker(tmp_path):
    report = tmp_path / "r.html"
    report.write_bytes(b"<!doctype html>\n<head>\n" + GENERATOR + b'0.1">')
    assert OutputGuard().file(report, "report path", report=True) == report
    table = tmp_path / "t.csv"
    table.write_text("old")
    (tmp_path / MARKER).touch()
    assert OutputGuard().write(table, "table file", lambda tmp: tmp.write_text("new")) == table
    assert table.read_text() == "new"


def test_a_fifo_as_output_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "r.html"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    _refused(lambda: OutputGuard().file(fifo, "report path", report=True),
             f"report path {fifo} exists and is not a report spray wrote; choose another path, or pass --force "
             "to replace it")


def test_an_output_directory_must_be_new_empty_or_spray_s(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _refused(lambda: OutputGuard().directory(foreign, "export directory"),
             f"export directory {foreign} holds files spray did not write (it has no {MARKER} file); {FORCE_DIR}")
    assert OutputGuard(force=True).directory(foreign, "export directory") == foreign
    assert (foreign / MARKER).is_file() and (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    new = tmp_path / "a" / "b"
    for path in (empty, new, foreign):  # foreign is marked now: spray's
        assert OutputGuard().directory(path, "export directory") == path
        assert (path / MARKER).is_file()
    file = tmp_path / "f"
    file.write_text("f")
    _refused(lambda: OutputGuard().directory(file, "export directory"),
             f"export directory {file} exists and is not a directory; choose a directory")


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    (tmp_path / MARKER).touch()
    table = tmp_path / "t.csv"
    table.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        OutputGuard().write(table, "table file", half)
    assert table.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "t.csv"]


def test_protecting_adds_inputs_for_the_block_only(tmp_path):
    assert active() == OutputGuard()
    with protecting({"the store": tmp_path / "s.h5", "the weights": None}, force=True) as outer:
        with protecting({"the data": tmp_path / "d.npz"}) as inner:
            assert inner == active() == OutputGuard(
                (("the store", tmp_path / "s.h5"), ("the data", tmp_path / "d.npz")), force=True)
        assert active() == outer
    assert active() == OutputGuard()


def test_source_path_names_the_file_of_file_sources_only():
    assert source_path("npz:a/b.npz") == Path("a/b.npz")
    assert source_path("folder:imgs") == Path("imgs")
    assert source_path("tests.data.factories:conv_data") is None
    assert source_path("npz:") is None


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def conv_store(tmp_path_factory):
    """tests.data.factories:conv_model on :conv_data (40 images of 8×8), attributed and analysed; read-only."""
    root = tmp_path_factory.mktemp("conv")
    store, pipeline = root / "audit.h5", root / "tiny.toml"
    pipeline.write_text(pipeline_text("tiny"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        assert run_cli(["attribute", *CONV, "--store", store])[0] == 0
        assert run_cli(["analyze", store, "--pipeline", pipeline])[0] == 0
    return store


def test_report_over_its_store_exits_2_and_leaves_the_store(conv_store, tmp_path):
    store = Path(shutil.copy(conv_store, tmp_path / "s.h5"))
    before = store.read_bytes()
    code, err = run_cli(["report", store, "-o", store])
    assert code == 2
    assert err.strip() == "error: " + refused_input("report path", store, "the audit store", store)
    assert store.read_bytes() == before


def test_report_with_force_replaces_a_foreign_file(conv_store, tmp_path):
    junk = tmp_path / "w.pt"
    junk.write_bytes(b"weights")
    assert run_cli(["report", conv_store, "-o", junk])[0] == 2
    assert junk.read_bytes() == b"weights"
    assert run_cli(["report", conv_store, "-o", junk, "--force"])[0] == 0
    assert GENERATOR in junk.read_bytes()[:2048]


COMMANDS = ("report", "tables", "virelay", "clarc")
OUTPUTS = ("missing", "own", "foreign", "same", "symlink", "target", "hardlink", "fifo", "weights")
"""``same``: the store as given; ``symlink``: a symlink to it; ``target``: the store given through a symlink,
the output its target; ``weights``: the command's --weights (clarc) or a weights file (the others)."""


def _expected_exit(command: str, output: str, force: bool) -> int:
    """0 when the command may write its output, 2 when it must refuse."""
    if output in ("same", "symlink", "target", "hardlink"):
        return 2  # an input, whatever --force says
    if output == "weights":  # the report: a foreign file; clarc: its --weights where its run writes
        return 0 if command == "report" and force else 2  # tables, virelay: a file as --out
    if output == "foreign":
        return 0 if force else 2
    if output == "fifo":
        return 0 if command == "report" and force else 2  # a FIFO is no directory
    return 0


def _output(command: str, kind: str, tmp: Path, store: Path, weights: Path) -> Path:
    """The output path of ``kind`` for ``command`` (a file for the report, else a directory)."""
    real = store.resolve()
    if kind in ("same", "target"):
        return store if kind == "same" else real
    if kind in ("symlink", "hardlink", "fifo"):
        out = tmp / "alias"
        {"symlink": lambda: out.symlink_to(real), "hardlink": lambda: out.hardlink_to(real),
         "fifo": lambda: os.mkfifo(out)}[kind]()
        return out
    if kind == "weights":  # clarc: spray's runs directory, where the run would write its weights over --weights
        return weights.parents[1] if command == "clarc" else weights
    out = tmp / ("out.html" if command == "report" else "out")
    if kind == "own" and command == "report":
        out.write_bytes(b"<!doctype html>\n<head>\n" + GENERATOR + b'0.1">')
    elif kind == "foreign" and command == "report":
        out.write_bytes(b"not spray's")
    elif kind in ("own", "foreign"):
        out.mkdir()
        (out / ("ranking.csv" if kind == "own" else "notes.txt")).write_text("old")
        if kind == "own":
            (out / MARKER).touch()
    return out


def _argv(command: str, store: Path, out: Path, weights: Path) -> list[object]:
    return {
        "report": ["report", store, "-o", out],
        "tables": ["export", "tables", store, "--out", out],
        "virelay": ["export", "virelay", store, "--out", out],
        "clarc": ["clarc", store, "--cluster", CLUSTER, "--method", "pclarc", *CONV, "--weights", weights,
                  "--out", out],
    }[command]


def _written(command: str, out: Path) -> bool:
    """Whether ``command``'s output is there, complete."""
    if command == "report":
        return out.is_file() and GENERATOR in out.read_bytes()[:2048]
    name = {"tables": "ranking.csv", "virelay": "project.yaml", "clarc": f"{RUN}/weights.pt"}[command]
    return (out / MARKER).is_file() and (out / name).is_file()


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("the command did not finish within 120 s")


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), output=st.sampled_from(OUTPUTS), force=st.booleans())
# the inputs that --force must not lift, each time: the random draws need not meet them
@example(command="report", output="same", force=True)
@example(command="report", output="symlink", force=True)
@example(command="report", output="target", force=True)
@example(command="report", output="hardlink", force=True)
@example(command="clarc", output="weights", force=True)
def test_no_command_destroys_an_input_hangs_or_exits_0_without_its_output(
    conv_store, monkeypatch, command, output, force
):
    monkeypatch.chdir(REPO)  # the conv model and data are named as MOD:FACTORY
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        real = Path(shutil.copy(conv_store, tmp / "audit.h5"))
        store = tmp / "link.h5" if output == "target" else real
        if output == "target":
            store.symlink_to(real)
        weights = tmp / "w.pt"
        if command == "clarc" and output == "weights":
            weights = tmp / "runs" / RUN / "weights.pt"
            for directory in (weights.parents[1], weights.parent):
                directory.mkdir(exist_ok=True)
                (directory / MARKER).touch()
        torch.save(conv_model().state_dict(), weights)
        out = _output(command, output, tmp, store, weights)
        protected = {p: _state(p) for p in (real, weights, out / "notes.txt") if p.is_file()}
        if output == "foreign" and command == "report" and not force:
            protected[out] = _state(out)

        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(120)
        try:
            code, err = run_cli(_argv(command, store, out, weights) + (["--force"] if force else []))
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

        assert code == _expected_exit(command, output, force), err
        if code == 0:
            assert _written(command, out), err
        else:
            assert err.startswith(("error: ", "Usage: ")), err
        for path, state in protected.items():
            if path == real and command == "clarc" and code == 0:
                continue  # ClArC records its run in the store: an input it is meant to write
            if path == weights and command == "report" and force:
                continue  # --force: the report may replace a file of another command
            assert _state(path) == state, f"{path} changed: {err}"
        assert not [p for p in tmp.rglob("*.tmp")], "a temporary file was left behind"
