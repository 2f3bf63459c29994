"""What the golden test compares: each reader command's output on the committed stores, normalised.

The stores in this folder were written by spray 0.1.0 (store schema 1) before the structure change of
issue 13: ``audit.h5`` by ``spray.testing.build_audit_store`` (thumbnails, t-SNE, a ClArC result) and
``plain.h5`` by ``write_store(make_heatmaps(n_per_class=40, n_classes=3, size=16, seed=5))`` analysed with
the "tiny" pipeline. Their outputs are derived from stored values only (nothing is recomputed), so they are
the same on every CPU. ``python -m tests.golden.outputs`` rewrites ``expected/`` after a deliberate change.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from spray.cli import main

HERE = Path(__file__).resolve().parent
STORES = ("audit", "plain")
EXPECTED = HERE / "expected"


class _Text(HTMLParser):
    """The text a reader sees (and alt / title texts), one line per text run; no images, no style."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._skip += 1
        for key, value in attrs:
            if key in ("alt", "title") and value:
                self.lines.append(f"[{key}] {value.strip()}")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.lines.append(" ".join(data.split()))


def _normalised(text: str, work: Path) -> str:
    text = text.replace(str(work), "{work}")
    text = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([+-]\d\d:\d\d|Z)?( UTC)?", "{time}", text)
    return re.sub(r"spray \d+\.\d+\.\d+\S*", "spray {version}", text)


def _run(args: list[str]) -> str:
    with CliRunner().isolation() as (out, err, _):
        code = main(args)
    assert code == 0, f"spray {' '.join(args)} exited {code}: {err.getvalue().decode()}"
    return out.getvalue().decode()


def outputs(store_name: str) -> dict[str, str]:
    """Each command's normalised output on a copy of ``store_name``.h5, by the golden file's name."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / f"{store_name}.h5"
        shutil.copy(HERE / f"{store_name}.h5", store)
        s = str(store)
        texts = {
            "info.txt": _run(["info", s]),
            "info.json": _run(["info", s, "--json"]),
            "rank.txt": _run(["rank", s]),
            "rank.json": _run(["rank", s, "--json"]),
            "rank.csv": _run(["rank", s, "--csv"]),
        }
        for fmt in ("csv", "json"):
            out = work / f"tables-{fmt}"
            _run(["export", "tables", s, "--out", str(out), "--format", fmt])
            for path in sorted(out.iterdir()):
                if not path.name.startswith("."):
                    texts[f"tables-{path.name}"] = path.read_text(encoding="utf-8")
        report = work / "report.html"
        _run(["report", s, "-o", str(report)])
        parser = _Text()
        parser.feed(report.read_text(encoding="utf-8"))
        texts["report.txt"] = "\n".join(parser.lines) + "\n"
        return {name: _normalised(text, work) for name, text in texts.items()}


def write_expected() -> None:
    for store_name in STORES:
        folder = EXPECTED / store_name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, text in outputs(store_name).items():
            (folder / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_expected()
