"""SIGKILL at seeded random points of attribution, analysis and ClArC fine-tuning, several times per stage:
the resumed run ends with the same store contents (and the same corrected weights) as an uninterrupted run.

Kill points (tests/reliability/kill_stages.py) lie inside HDF5 writes (half of a write's bytes on disk),
inside journal records, between optimizer steps and inside checkpoint saves. After every kill the store
must open (a reader rolls back what the killed writer left) and what was complete before must read back
unchanged. Compared at the end: every dataset and every attribute of the store, value by value, except
creation/write times and a fresh attribution's random id (kill_stages.TIME_ATTRS); for ClArC also the
corrected weights, tensor by tensor, and the run's history without its timings.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import kill_stages as ks
from spray.store.journal import journal_path
from spray.store import AuditStore

HERE = Path(__file__).resolve().parent
KILLS = 4
# The children's environment: this process's as collected, before any test ran. While a dask LocalCluster
# lives (the session's dask_cluster fixture), each worker (re)start writes OMP_NUM_THREADS=1 and the like
# into os.environ; children that inherit it run single-threaded, with other floating-point reductions than
# the uninterrupted run in this process, and their weights differ in the last bits.
ENVIRON = dict(os.environ)


def _child(call: str, kill: tuple[str, int, str]) -> subprocess.CompletedProcess:
    """Run ``kill_stages.<call>`` in a fresh interpreter armed to SIGKILL itself at ``kill``."""
    code = f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import kill_stages as ks
        ks.arm{kill!r}
        ks.{call}
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600, env=ENVIRON)


def _kill_repeatedly(call: str, counts: Counter, seed: int, after_kill) -> list[tuple]:
    """Run ``call`` in children killed at ``KILLS`` seeded random points, each resuming the last.

    A kill point is drawn from the events an uninterrupted run has (``counts``); since a resumed run has
    fewer left, the estimate of what is left shrinks by the share of the run each kill got through.
    """
    rng = random.Random(seed)
    left = dict(counts)
    log = []
    for _ in range(KILLS):
        event = rng.choice(sorted(e for e, c in left.items() if c))
        n, how = rng.randint(1, left[event]), rng.choice(ks.HOWS)
        child = _child(call, (event, n, how))
        assert child.returncode in (0, -signal.SIGKILL), child.stderr[-3000:]
        log.append((event, n, how, "killed" if child.returncode else "finished"))
        after_kill()
        if child.returncode == 0:
            break
        share = n / left[event]
        left = {e: max(1, int(c * (1 - share))) for e, c in left.items()}
    assert sum(entry[-1] == "killed" for entry in log) >= 3, log
    print(f"{call.split('(')[0]}: {len(log)} runs: {log}")
    return log


def test_attribution_killed_at_random_points_resumes_to_the_same_store(tmp_path):
    reference, killed = tmp_path / "reference.h5", tmp_path / "killed.h5"
    with ks.counting() as counts:
        ks.attribution(reference)
    want = ks.store_contents(reference)
    done_rows = {name[: -len("/done")] for name, key in want if name.endswith("/done")}

    def complete_work_is_intact() -> None:
        if not killed.exists():  # killed while the store was being created
            return
        with AuditStore(killed) as store:  # rolls back what the killed writer left
            info = store.info()
        assert not journal_path(killed).exists()
        with AuditStore(killed) as store, store.reading():
            for group in done_rows:
                if group.strip("/").split("/")[-1] not in info["attributions"]:
                    continue
                done = store.read(f"{group}/done")
                for key in ("relevance", "logits", "target"):
                    stored = store.read(f"{group}/{key}")
                    np.testing.assert_array_equal(stored[done], want[(f"{group}/{key}", "")][done])
                np.testing.assert_array_equal(store.read("samples/label")[done], want[("/samples/label", "")][done])

    _kill_repeatedly(f"attribution({str(killed)!r})", counts, seed=1, after_kill=complete_work_is_intact)
    summary = ks.attribution(killed)
    assert summary["complete"]
    assert ks.assert_same_contents(ks.store_contents(killed), want) > 10


def test_analysis_killed_at_random_points_resumes_to_the_same_nodes(tmp_path):
    base = ks.synthetic_store(tmp_path / "base.h5")
    reference, killed = tmp_path / "reference.h5", tmp_path / "killed.h5"
    shutil.copy(base, reference)
    shutil.copy(base, killed)
    with ks.counting() as counts:
        ks.analysis(reference)
    want = ks.store_contents(reference)
    with AuditStore(reference) as store:
        nodes = store.list_nodes()

    def complete_nodes_are_intact() -> None:
        with AuditStore(killed) as store:
            present = store.list_nodes()
            assert set(present) <= set(nodes)
            for path in present:  # every node that made it is the reference's, value by value
                arrays, attrs = store.read_node(path)
                ref_arrays, ref_attrs = AuditStore(reference).read_node(path)
                assert attrs == ref_attrs and arrays.keys() == ref_arrays.keys(), path
                for name in arrays:
                    np.testing.assert_array_equal(arrays[name], ref_arrays[name], err_msg=f"{path}/{name}")
        assert not journal_path(killed).exists()

    _kill_repeatedly(f"analysis({str(killed)!r})", counts, seed=2, after_kill=complete_nodes_are_intact)
    ks.analysis(killed)
    assert ks.assert_same_contents(ks.store_contents(killed), want) > len(nodes)


@pytest.mark.slow
def test_clarc_fine_tuning_killed_at_random_points_ends_with_the_same_weights(demo_audit, tmp_path):
    cluster = demo_audit.ranking.top_candidate().cluster.reference
    reference, killed = tmp_path / "reference.h5", tmp_path / "killed.h5"
    shutil.copy(demo_audit.store, reference)
    shutil.copy(demo_audit.store, killed)
    with ks.counting() as counts:
        want_run = ks.clarc(reference, cluster, demo_audit.weights, tmp_path / "reference")
    assert counts["step"] and counts["torch_save"] and counts["store_write"]

    def store_opens() -> None:
        with AuditStore(killed) as store:
            store.info()
        assert not journal_path(killed).exists()

    call = f"clarc({str(killed)!r}, {cluster!r}, {str(demo_audit.weights)!r}, {str(tmp_path / 'killed')!r})"
    _kill_repeatedly(call, counts, seed=3, after_kill=store_opens)
    got_run = ks.clarc(killed, cluster, demo_audit.weights, tmp_path / "killed")

    want, got = torch.load(want_run["weights"], weights_only=True), torch.load(got_run["weights"], weights_only=True)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(want[k], v) for k, v in demo_audit.model.state_dict().items()), "ClArC changed it"

    def without_paths_and_timings(key, value):
        if key[1] == "weights":  # the run directory differs
            return Path(value).relative_to(Path(value).parents[1]).as_posix()
        if key[1] == "history":
            return [{k: v for k, v in entry.items() if k != "seconds"} for entry in value]
        if key[1] == "training_seconds":  # wall time: differs between any two runs
            return None
        if key[1] == "metrics":
            return [{k: v for k, v in row.items() if k != "training_seconds"} for row in value]
        return value

    assert ks.assert_same_contents(ks.store_contents(killed), ks.store_contents(reference),
                                   without_paths_and_timings) > 10
