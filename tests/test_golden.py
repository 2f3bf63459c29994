"""Readers' outputs on stores written before the structure change are unchanged (golden files).

``tests/golden/`` holds two stores written by spray 0.1.0 (store schema 1) and what ``spray info``,
``spray rank`` (text, ``--json``, ``--csv``), ``spray export tables`` (CSV and JSON) and ``spray report``
(its visible text) printed for them; tests/golden/outputs.py says how they were made. A refactoring must
leave every one of these byte for byte equal (times and temporary paths aside): the store is read, nothing
is recomputed, so the comparison is exact on every CPU. A deliberate change of an output rewrites the
expected files with ``python -m tests.golden.outputs`` and says why in its commit.
"""

from __future__ import annotations

import pytest

from tests.golden.outputs import EXPECTED, STORES, outputs


@pytest.fixture(scope="module", params=STORES)
def produced(request):
    return request.param, outputs(request.param)


def test_every_reader_output_equals_its_golden_file(produced):
    store, texts = produced
    expected = {path.name: path.read_text(encoding="utf-8") for path in sorted((EXPECTED / store).iterdir())}
    assert sorted(texts) == sorted(expected), f"{store}: the set of outputs changed"
    for name, text in texts.items():
        assert text == expected[name], f"{store}/{name} differs from tests/golden/expected/{store}/{name}"
