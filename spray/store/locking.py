"""The one-writer lock of an audit store (docs/store.md, "Concurrency")."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
from contextlib import suppress
from pathlib import Path

from spray._checks import check_regular_file
from spray.errors import StoreError, StoreLockedError
from spray.store.encoding import _now


class _WriterLock:
    """The one-writer lock, keyed on the store file's identity, not on the name it was given.

    Two exclusive ``flock``s, dropped by the OS when the holder dies: ``<real path>.lock`` beside the
    store's resolved path (every symlink to the store finds the same lock; it works before the file exists
    and, on a shared file system, across hosts), and, once the file exists, ``<dev>-<ino>.lock`` in a
    per-user folder of the temporary directory (a hard link is another name of the same inode: this lock
    finds it, on this host). Lock files are never removed: removing one while another process opens it
    would let two writers lock two files of the same name.
    """

    def __init__(self, store: Path, file: Path) -> None:
        self.store = store  # as given, for messages
        self.path = file.with_name(file.name + ".lock")
        self._fds: list[int] = []

    def acquire(self) -> None:
        self._flock(self.path)

    def acquire_identity(self, file: Path) -> None:
        """The second lock, on ``file``'s device and inode; taken once the store file exists."""
        info = os.stat(file)
        folder = Path(tempfile.gettempdir()) / f"spray-locks-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of writer locks {folder}: {exc.strerror}") from None
        self._flock(folder / f"{info.st_dev}-{info.st_ino}.lock")

    def _flock(self, path: Path) -> None:
        check_regular_file(path, f"the writer lock of audit store {self.store}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the writer lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
            try:
                who = json.loads(holder)
                desc = f"pid {who['pid']} on {who['host']} (since {who['since']})"
            except (ValueError, KeyError, TypeError):
                desc = "another process (pid unknown)"
            raise StoreLockedError(
                f"audit store {self.store} is locked by {desc}: one process writes a store at a time; wait "
                "for it to finish or stop it (the lock is released when it exits)"
            ) from None
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
        with suppress(OSError):  # who holds the lock is for messages only: a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        self._fds.append(fd)

    @staticmethod
    def holder(file: Path) -> str | None:
        """Who writes the store at ``file`` now, as "pid N on HOST (since T)", or None: read from the lock's
        record without touching the lock (a probe by flock could make a writer starting that moment fail).
        A record left by a killed writer names a process that is gone on this host, and counts as none."""
        try:
            who = json.loads((file.with_name(file.name + ".lock")).read_text(errors="replace"))
            pid, host, since = int(who["pid"]), str(who["host"]), str(who["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host == socket.gethostname():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass  # alive, another user's
        return f"pid {pid} on {host} (since {since})"

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
