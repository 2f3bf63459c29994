"""spray makes no network connections: the demo runs end to end with every non-Unix socket call refused.

Blocked in this process: connect, connect_ex, bind, sendto of any socket that is not AF_UNIX (loopback
included: on one machine spray needs no sockets; only ``--scheduler`` connects, to the address the user
gives) and name resolution (getaddrinfo). Every attempt is recorded, and the test asserts there were none.
"""

from __future__ import annotations

import errno
import shutil
import socket

import pytest

from spray.cli import main
from spray.outputs import MARKER
from spray.scheduling import dask_map


@pytest.fixture
def blocked_network(monkeypatch):
    """Refuse (OSError ENETUNREACH) and record every network socket call of this process."""
    attempts: list[tuple[str, object]] = []

    def refused(what: str, address: object) -> OSError:
        attempts.append((what, address))
        return OSError(errno.ENETUNREACH, f"network blocked by the test: {what} {address!r}")

    def guard(method: str):
        original = getattr(socket.socket, method)

        def guarded(self, *args):
            address = args[-1]  # connect(addr), bind(addr), sendto(data[, flags], addr)
            if self.family != socket.AF_UNIX:
                raise refused(f"{method} {self.family.name}", address)
            return original(self, *args)

        return guarded

    for method in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, method, guard(method))

    def getaddrinfo(host, *args, **kwargs):
        raise refused("getaddrinfo", host)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def _square(x: int) -> int:
    return x * x


def test_the_guard_catches_loopback_and_external_connections(blocked_network):
    for address in [("127.0.0.1", 9), ("8.8.8.8", 80)]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError, match="blocked"):
            s.connect(address)
    assert [a for _, a in blocked_network] == [("127.0.0.1", 9), ("8.8.8.8", 80)]


def test_classes_without_a_scheduler_run_without_sockets(blocked_network):
    assert dict(dask_map(_square, [1, 2, 3], lambda x: (x,), progress=False)) == {1: 1, 2: 4, 3: 9}
    assert blocked_network == []


@pytest.mark.slow
def test_demo_runs_with_sockets_blocked_and_attempts_no_connection(demo_audit, tmp_path, blocked_network, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy(demo_audit.weights, out / demo_audit.weights.name)  # the trained CNN: no training again
    (out / MARKER).touch()  # the copied weights are spray's output: the directory is a demo's
    assert main(["demo", "--quick", "--clarc", "pclarc", "--out", str(out)]) == 0
    assert blocked_network == []
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "planted artifact FOUND" in printed, printed
    assert (out / "clarc").is_dir() and (out / "report.html").stat().st_size > 0
