"""check_regular_file: what is not a regular file is refused by name before anything opens it."""

from __future__ import annotations

import os
import socket

import pytest

from spray._checks import check_regular_file
from spray.errors import BadInputError

HINT = "; spray reads and writes regular files only: move it away or name another path"


def test_a_fifo_is_refused_naming_it_and_its_role(tmp_path):
    fifo = tmp_path / "f.h5"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError) as info:
        check_regular_file(fifo, "an audit store")
    assert str(info.value) == f"{fifo} is a FIFO (named pipe), not an audit store{HINT}"


def test_a_symlink_is_judged_by_its_target(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with pytest.raises(BadInputError, match=f"^{tmp_path / 'link'} is a FIFO"):
        check_regular_file(tmp_path / "link", "an npz file")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "good").symlink_to(tmp_path / "file")
    check_regular_file(tmp_path / "good", "an npz file")


def test_a_socket_a_device_and_a_directory_are_refused(tmp_path):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(BadInputError) as info:
            check_regular_file(path, "a weights file")
    assert str(info.value) == f"{path} is a socket, not a weights file{HINT}"
    with pytest.raises(BadInputError) as info:
        check_regular_file("/dev/null", "a run file")
    assert str(info.value) == f"/dev/null is a character device, not a run file{HINT}"
    with pytest.raises(BadInputError) as info:
        check_regular_file(tmp_path, "an audit store")
    assert str(info.value) == f"{tmp_path} is a directory, not an audit store"


def test_regular_and_missing_files_pass(tmp_path):
    (tmp_path / "x").write_bytes(b"1")
    check_regular_file(tmp_path / "x", "an image")
    check_regular_file(tmp_path / "missing", "an image")  # the caller says what a missing file means
    check_regular_file(tmp_path / "x" / "below", "an image")
