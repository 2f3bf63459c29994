"""`spray run` with `[audit] scheduler`: attribution and analysis on dask workers, the same ranking."""

from __future__ import annotations

import json

from spray.cli import main
from spray.testing import pipeline_text

RUN = """
[audit]
out = "{out}"
scheduler = "{scheduler}"
[model]
factory = "tests.attribution.cluster_factories:model"
[data]
source = "tests.attribution.cluster_factories:data"
[attribution]
batch_size = 8
[report]
path = ""
""" + pipeline_text("minimal")


def ranking(tmp_path, capsys, out: str, scheduler: str) -> list[dict]:
    path = tmp_path / f"{out}.toml"
    path.write_text(RUN.format(out=out, scheduler=scheduler))
    code = main(["run", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_run_file_scheduler_gives_the_in_process_ranking(dask_cluster, tmp_path, capsys):
    address, _ = dask_cluster
    local = ranking(tmp_path, capsys, "local", "")
    assert ranking(tmp_path, capsys, "cluster", address) == local
    assert sorted(e["class"] for e in local) == [0, 1, 2, 3]


def test_run_file_with_a_bad_scheduler_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(RUN.format(out="out", scheduler="local:0"))
    assert main(["run", str(tmp_path / "run.toml")]) == 2
    assert "got 'local:0'" in capsys.readouterr().err
