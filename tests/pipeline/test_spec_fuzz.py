"""Fuzzing pipeline and run files: any text gives a PipelineSpec or a PipelineError, never another exception;
a spec that parses makes `analyze` succeed or raise a spray error (seeded, bounded: a few seconds)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spray.errors import PipelineError, SprayError
from spray.pipeline import analyze, pipeline_from_text, read_pipeline
from spray.pipeline.nodes import NODES, PREPROCESS_DEFAULTS
from spray.run import read_run
from spray.testing import make_heatmaps, write_store

REPO = Path(__file__).resolve().parents[2]
SEEDED = settings(derandomize=True, database=None, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TABLES = {"preprocess": PREPROCESS_DEFAULTS, **{name: node.defaults for name, node in NODES.items()}}


def _toml(value: object) -> str:
    """A TOML literal for a drawn value (bools, ints, floats with nan/inf, strings, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return str(value)


_keys = st.one_of(st.sampled_from(sorted({k for params in TABLES.values() for k in params} | {"name", "attribution"})),
                  st.from_regex(r"[a-z_]{1,10}", fullmatch=True))
_scalars = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), inner, max_size=2), max_leaves=5)


@st.composite
def pipeline_files(draw) -> str:
    """TOML documents of known and unknown tables, with known and unknown keys of any type."""
    names = st.one_of(st.sampled_from(sorted(TABLES) + ["analysis", "model", "data"]),
                      st.from_regex(r"[a-z_]{1,10}", fullmatch=True))
    lines = []
    for table in draw(st.lists(names, unique=True, max_size=5)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(_keys, unique=True, max_size=4)):
            lines.append(f"{key} = {_toml(draw(_values))}")
    return "\n".join(lines) + "\n"


def _loads(text: str, tmp_path: Path) -> None:
    """Parse ``text`` as an analysis pipeline (string and file) and as a run file; only PipelineError may escape."""
    for parse in (lambda: pipeline_from_text(text, source="p.toml"), lambda: read_pipeline(_file(tmp_path, text)),
                  lambda: read_run(_file(tmp_path, text))):
        try:
            parse()
        except PipelineError:
            pass


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return path


@settings(SEEDED, max_examples=150)
@given(text=st.text(max_size=200))
def test_any_text_is_a_spec_or_a_pipeline_error(tmp_path, text):
    _loads(text, tmp_path)


@settings(SEEDED, max_examples=150)
@given(text=pipeline_files())
def test_any_toml_document_is_a_spec_or_a_pipeline_error(tmp_path, text):
    _loads(text, tmp_path)


@settings(SEEDED, max_examples=100)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["delete", "insert", "replace"]),
                                st.sampled_from(list("[]=\"'#.,{}\n 0x-+eé\\") + ["nan", "inf", "true"])),
                      min_size=1, max_size=6))
@pytest.mark.parametrize("name", ["spray.toml", "template.toml"])
def test_mangled_shipped_files_give_a_spec_or_a_pipeline_error(tmp_path, name, edits):
    text = (REPO / "pipelines" / name).read_text(encoding="utf-8")
    for position, edit, piece in edits:
        i = position % (len(text) + 1)
        text = text[:i] + (piece if edit != "delete" else "") + text[i + (edit != "insert"):]
    _loads(text, tmp_path)


def _parameter_values(default: object) -> st.SearchStrategy:
    """Values of a parameter's type and of others, in ranges that keep a run on 28 samples fast."""
    bounded = st.one_of(st.integers(-3, 40), st.floats(-2, 60), st.sampled_from([math.nan, math.inf, 0.0]),
                        st.sampled_from(["auto", "magic", "", "exact", "sum", "ward", "random", "all"]),
                        st.booleans(), st.lists(st.integers(-2, 6), max_size=3))
    return st.one_of(st.just(default), bounded) if default is not None else bounded


@st.composite
def analysable_pipelines(draw) -> str:
    lines = ["[spectral]", f"n_eigenpairs = {draw(st.integers(-1, 6))}", "[fda]", "n_permutations = 3"]
    for table in draw(st.lists(st.sampled_from(sorted(set(TABLES) - {"umap", "spectral", "fda"})), unique=True,
                               max_size=3)):
        lines.append(f"[{table}]")
        keys = sorted(set(TABLES[table]) - {"n_threads", "max_iter", "n_init", "n_permutations"})
        for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)):
            lines.append(f"{key} = {_toml(draw(_parameter_values(TABLES[table][key])))}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("fuzz") / "s.h5", make_heatmaps(n_per_class=14, n_classes=2, size=4))


@settings(SEEDED, max_examples=8)
@given(text=analysable_pipelines())
def test_parameters_a_file_can_hold_make_analyze_succeed_or_raise_a_spray_error(small_store, tmp_path, text):
    try:
        spec = pipeline_from_text(text, source="p.toml")
    except PipelineError:
        return
    store = tmp_path / "s.h5"
    shutil.copy(small_store, store)
    try:
        analyze(str(store), spec, progress=False)
    except SprayError:
        pass
