"""The package's import layering (docs/architecture.md, "Layering"), checked on every module's imports,
function-local ones included: imports point down the layers, so there is no import cycle to hide."""

from __future__ import annotations

import ast
from pathlib import Path

import spray

PACKAGE = Path(spray.__file__).parent

LAYERS: list[set[str]] = [
    {"spray.errors", "spray.seeding", "spray.zoo"},
    {"spray", "spray._blocks", "spray._checks", "spray._layout", "spray.usercode"},
    {"spray.store", "spray.data", "spray.lrp", "spray.analysis", "spray.scheduling", "spray.training"},
    {"spray.outputs", "spray.attribution", "spray.pipeline"},
    {"spray.results"},
    {"spray.ranking"},
    {"spray.audit", "spray.export", "spray.report"},
    {"spray.clarc"},
    {"spray.workflow", "spray.testing"},
    {"spray.run", "spray.benchmark"},
    {"spray.demo"},
    {"spray.cli"},
]
"""Bottom to top. A module may import its own part of the package and any part of a lower layer."""


def _part(module: str) -> str:
    """The top-level part a module belongs to: ``spray.clarc.run`` -> ``spray.clarc``."""
    return ".".join(module.split(".")[:2])


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {m for m in found if m == "spray" or m.startswith("spray.")}


def _layer(part: str) -> int:
    matches = [i for i, layer in enumerate(LAYERS) if part in layer]
    assert len(matches) == 1, f"{part} must be in exactly one layer of LAYERS"
    return matches[0]


def _edges() -> list[tuple[str, str]]:
    return [(_module(path), imported) for path in sorted(PACKAGE.rglob("*.py")) for imported in _imports(path)]


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(_module(path)) for path in PACKAGE.rglob("*.py")}
    assert sorted(parts - set().union(*LAYERS)) == []
    assert sorted(set().union(*LAYERS) - parts) == []


def test_imports_point_down_the_layers():
    upward = [
        f"{importer} imports {imported}"
        for importer, imported in _edges()
        if _part(importer) != _part(imported) and _layer(_part(imported)) >= _layer(_part(importer))
    ]
    assert upward == []


def test_no_stage_reads_through_an_output_format():
    readers = {importer for importer, imported in _edges()
               if _part(imported) == "spray.export" and _part(importer) not in {"spray.export", "spray.cli"}}
    assert readers == set()


STORE_LAYERS = ["schema", "encoding", "journal", "locking", "transactions", "info", "audit_store"]
"""The modules of ``spray/store/``, bottom to top (docs/architecture.md, "Layering"); the package's
``__init__``, which re-exports them and holds ``SCHEMA_VERSION`` and ``MIGRATIONS``, is above them all."""


def test_the_store_modules_import_down_their_own_layers():
    order = {f"spray.store.{name}": i for i, name in enumerate(STORE_LAYERS)}
    assert sorted(m for m in map(_module, PACKAGE.rglob("*.py")) if m.startswith("spray.store.")) == sorted(order)
    upward = [f"{importer} imports {imported}" for importer, imported in _edges()
              if importer in order and imported in order and order[imported] >= order[importer]]
    assert upward == []


def test_only_the_store_imports_its_modules_and_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if _part(module) == "spray.store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("spray.store"):
                found += [f"{module}: {node.module}.{alias.name}" for alias in node.names
                          if node.module != "spray.store" or alias.name.startswith("_")]
            elif isinstance(node, ast.Import):
                found += [f"{module}: {alias.name}" for alias in node.names if alias.name.startswith("spray.store.")]
    assert found == []


def test_the_scan_finds_an_upward_import_in_a_function(tmp_path, monkeypatch):
    module = PACKAGE / "ranking.py"
    source = module.read_text(encoding="utf-8") + "\n\ndef _late():\n    from spray.report import build_report\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == module
                        else Path.open(self, encoding=encoding).read())
    assert any(edge == ("spray.ranking", "spray.report") for edge in _edges())
