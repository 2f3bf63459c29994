"""Transactions on the store file: it is opened only for one transaction (a batch of attributions, one node),
so readers can open it between transactions. HDF5's own file locking keeps a reader from seeing a transaction
half-written, a gate lets a waiting writer in before new readers, and whoever finds the file busy retries for a
bounded time. Every write transaction is all-or-nothing (:mod:`spray.store.journal`): a writer that is killed
or runs out of disk space leaves the store as it was before that transaction.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

import h5py

import spray.store
from spray._checks import check_regular_file
from spray.errors import BadInputError, SchemaError, StoreError
from spray.store.encoding import _now, _set_attrs, to_json
from spray.store.journal import JournaledFile, journal_path, rollback_if_stale, try_flock
from spray.store.locking import _WriterLock
from spray.store.schema import _GROUPS, _check_schema, _schema_version

_SIDECARS = {".lock": "writer lock", ".gate": "writer gate", ".journal": "write journal", ".new": "new copy"}
"""The store's own files beside it (named ``<store><suffix>``), and what each is."""

# h5py's locking="best-effort": HDF5 flock()s the file while it is open (shared for readers, exclusive
# for the writer's transaction) and only gives up locking where the file system cannot lock at all.
_LOCKING = "best-effort"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it.

    A KeyboardInterrupt raised while HDF5 is calling into the journaled file object would take HDF5 down
    an error path that is not safe; after the transaction it interrupts the program as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


class StoreFile:
    """The file of an audit store: its writer lock, held from open to close (mode ``"a"``), and its
    transactions; :class:`~spray.store.AuditStore` (whose docstring gives the arguments) reads and writes
    through them."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "r", *, timeout: float = 60.0) -> None:
        if mode not in ("r", "a"):
            raise BadInputError(f"store mode must be 'r' or 'a', got {mode!r}")
        self.path = Path(path)  # as given, for messages
        try:
            # The file's own path, symlinks resolved: its lock, gate, journal and new copy lie beside it, so
            # that every name of the store finds them.
            self._file = self.path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise StoreError(f"cannot resolve audit store path {self.path}: {exc}") from None
        self.mode = mode
        self.timeout = float(timeout)
        self._lock: _WriterLock | None = None
        self._snapshot: h5py.File | None = None  # the open file of a reading() block
        self.migrated_from: int | None = None  # the schema version a writer found, when it migrated the store
        self.lock_wait_s = 0.0
        self.lock_waits = 0
        check_regular_file(self.path, "an audit store")
        for suffix, role in _SIDECARS.items():
            check_regular_file(self._sidecar(suffix), f"the {role} of audit store {self.path}")
        if mode == "r":
            with self._open():
                pass
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of audit store {self.path}: {exc}") from None
        self._lock = _WriterLock(self.path, self._file)
        self._lock.acquire()
        try:
            if not self._file.exists():
                self._create()
            self._lock.acquire_identity(self._file)
            self.migrated_from = self._migrate()
            with self._open():  # checks the schema; rolls back a transaction a killed writer left
                pass
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the writer lock (no HDF5 handle stays open between transactions)."""
        if self._lock is not None:
            if os.environ.get("SPRAY_LOCK_STATS"):
                print(f"spray: the writer of audit store {self.path} waited {self.lock_wait_s:.3f} s for locks "
                      f"({self.lock_waits} waits)", file=sys.stderr)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit; the OS drops the lock anyway
            pass

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def _migrate(self) -> int | None:
        """Bring a store of an older schema up to :data:`spray.store.SCHEMA_VERSION` through
        :data:`spray.store.MIGRATIONS`, in one write transaction; the version it had, or None if it was current."""
        current, migrations = spray.store.SCHEMA_VERSION, spray.store.MIGRATIONS
        with self._open(older_ok=True) as f:
            version = _schema_version(f, self.path)
        if version == current:
            return None
        with self._open(write=True, older_ok=True) as f:
            for step in range(version, current):
                migrations[step](f)
                f.attrs["schema_version"] = step + 1
        return version

    def _sidecar(self, suffix: str) -> Path:
        """``<real path><suffix>``: a file of the store's own beside its resolved path (:data:`_SIDECARS`)."""
        return self._file.with_name(self._file.name + suffix)

    def _create(self) -> None:
        """Write a new, empty store next to its path and rename it into place (a kill leaves no half file).

        Written through a journaled file like every other write, so a full disk is reported here and
        never reaches HDF5's error paths.
        """
        from spray import __version__

        new = self._sidecar(".new")  # ours: we hold the writer lock of the path
        journaled = None
        try:
            new.write_bytes(b"")
            journaled = JournaledFile(new)
            with _interrupts_deferred():
                # fs_persist keeps track of space freed by replaced nodes across sessions so it is reused.
                # The default libver gives superblock v2: v3 would mark the file "open for writing" and
                # make it unopenable (without h5clear) after a writer is killed.
                with h5py.File(journaled, "w", fs_strategy="fsm", fs_persist=True) as f:
                    _set_attrs(f.attrs, {
                        "schema_version": spray.store.SCHEMA_VERSION, "spray_version": __version__, "created": _now(),
                        "model": to_json(None), "dataset": to_json(None), "label_names": to_json([]),
                    })
                    for group in _GROUPS:
                        f.create_group(group)
                journaled.commit()
            os.replace(new, self._file)
        except OSError as exc:
            if journaled is not None:
                journaled.abort()
            with suppress(OSError):
                new.unlink()
            if exc.errno in _NO_SPACE:
                raise StoreError(
                    f"cannot create audit store {self.path}: no space left ({os.strerror(exc.errno)}); free "
                    "disk space and run again"
                ) from None
            raise StoreError(f"cannot create audit store {self.path}: {exc}") from None

    # ------------------------------------------------------------------ transactions

    def _h5file(self, write: bool) -> tuple[h5py.File, JournaledFile | None]:
        """The file open for one transaction, and its journal when writing; waits up to ``timeout`` while
        another process has it open."""
        deadline = time.monotonic() + self.timeout
        try:
            with self._gate(write, deadline):
                return self._waiting(lambda: self._open_once(write), deadline, write)
        except FileNotFoundError:
            raise StoreError(f"no audit store at {self.path}") from None
        except PermissionError:
            if not write and journal_path(self._file).exists():
                raise StoreError(f"cannot read audit store {self.path}:{self._journal_hint()}") from None
            action = "write" if write else "read"
            raise StoreError(f"cannot {action} audit store {self.path}: permission denied") from None
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise self._write_error(exc, None) from None
            try:
                is_hdf5 = h5py.is_hdf5(self.path)
            except OSError:
                is_hdf5 = False
            if not is_hdf5:
                size = self.path.stat().st_size
                short = f" (only {size} bytes: cut short?)" if size < len(_HDF5_SIGNATURE) else ""
                raise SchemaError(
                    f"{self.path} is not a spray audit store: it is not an HDF5 file{short}"
                ) from None
            raise StoreError(
                f"cannot open audit store {self.path}: the file is corrupt, truncated or open in "
                f"an incompatible way in this process (HDF5: {exc}); if it is damaged, move it "
                "away and run again"
            ) from None

    def _waiting(self, attempt: Callable[[], Any], deadline: float, write: bool) -> Any:
        """``attempt()`` again, with backoff, while it raises BlockingIOError, until ``deadline``; the time
        from the first attempt on, if that one failed, counts into ``lock_wait_s``."""
        wait, start, blocked = 0.01, time.monotonic(), False
        try:
            while True:
                try:
                    return attempt()
                except BlockingIOError:
                    blocked = True
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"audit store {self.path} stayed busy for {self.timeout:g} s: another program "
                            "keeps it open; close it (HDF viewers, notebooks) and retry"
                            + (self._journal_hint() if not write else "")
                        ) from None
                    time.sleep(wait)
                    wait = min(2 * wait, 0.2)
        finally:
            if blocked:
                self.lock_wait_s += time.monotonic() - start
                self.lock_waits += 1

    @contextmanager
    def _gate(self, write: bool, deadline: float) -> Iterator[None]:
        """Writers first: a writer holds ``<store>.gate`` exclusively while it waits for the file, and
        readers pass the gate (shared, for an instant) before they open it. Without the gate, ``flock``
        lets a stream of overlapping readers keep a writer out for ever (measured: a 5 s analysis pass took
        88 s under 4 readers). No gate file yet, or none that can be opened: no writer waits, go ahead."""
        gate = self._sidecar(".gate")
        try:
            fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644) if write else os.open(gate, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            self._waiting(lambda: try_flock(fd, exclusive=write), deadline, write)
            yield  # readers: the store's own lock is taken inside; the gate is released right after
        finally:
            os.close(fd)

    def _open_once(self, write: bool) -> tuple[h5py.File, JournaledFile | None]:
        """Open for writing through a new journal (exclusive lock), or for reading (HDF5's shared lock)
        after rolling back a journal a killed writer left; BlockingIOError while the file is in use."""
        if write:
            journaled = JournaledFile(self._file)
            try:
                return h5py.File(journaled, "r+"), journaled
            except BaseException:
                journaled.abort()
                raise
        journal = journal_path(self._file)
        if journal.exists():
            rollback_if_stale(self._file)  # BlockingIOError while its writer is alive
        if not journal.exists():
            f = h5py.File(self._file, "r", locking=_LOCKING)
            if not journal.exists():  # else its writer was killed between the check and the open
                return f, None
            f.close()
        raise BlockingIOError(errno.EWOULDBLOCK, "a write transaction is unfinished")

    def _journal_hint(self) -> str:
        journal = journal_path(self._file)
        if not journal.exists():
            return ""
        return (
            f" it holds an unfinished write (journal {journal}) that this process cannot roll back (no "
            "file locking, or no permission to write the store); any spray command that writes the store "
            "rolls it back"
        )

    def _write_error(self, exc: BaseException, journaled: JournaledFile | None) -> StoreError:
        cause = journaled.failure if journaled is not None and journaled.failure is not None else exc
        undone = "the write was undone: the store holds exactly what it held before it"
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return StoreError(
                f"no space left to write audit store {self.path} ({os.strerror(cause.errno)}); {undone}. "
                "Free disk space (or raise the quota or file size limit) and run the same command again: "
                "it continues where it stopped"
            )
        return StoreError(
            f"error reading or writing audit store {self.path} ({cause}); {undone}; if the file is "
            "damaged, move it away and run again"
        )

    @contextmanager
    def _open(self, write: bool = False, *, older_ok: bool = False) -> Iterator[h5py.File]:
        """One transaction: the file is open for the block (read-only unless ``write``). ``older_ok``: a
        store of an older schema is opened too (to migrate it)."""
        if write:
            with self._transaction(older_ok=older_ok) as (f, _):
                yield f
            return
        if self._snapshot is not None:  # inside reading(): the same open file, the same state
            yield self._snapshot
            return
        f, _ = self._h5file(write=False)
        try:
            _check_schema(f, self.path, older_ok=older_ok)
            yield f
        except (OSError, RuntimeError) as exc:  # how h5py reports damaged files
            with suppress(Exception):
                f.close()
            raise StoreError(
                f"error reading audit store {self.path} (corrupt or truncated?): {exc}; if the file is "
                "damaged, move it away and run again"
            ) from None
        except KeyError as exc:  # h5py's report of damaged metadata (B-trees, attributes)
            with suppress(Exception):
                f.close()
            raise StoreError(
                f"audit store {self.path} is damaged: HDF5 cannot read its structure ({exc}); move it away "
                "and re-create it, or restore a copy"
            ) from None
        except BaseException:
            with suppress(Exception):
                f.close()
            raise
        f.close()

    @contextmanager
    def _transaction(self, *, older_ok: bool = False) -> Iterator[tuple[h5py.File, JournaledFile]]:
        """A write transaction: kept only if the block ends without an exception and every write reached
        the file; otherwise rolled back (spray.store.journal), whatever went wrong."""
        if not self.writable:
            raise StoreError(f"audit store {self.path} is open read-only; open it with mode='a' to write")
        if self._snapshot is not None:
            raise RuntimeError("a write inside AuditStore.reading() would wait for its own read lock")
        with _interrupts_deferred():
            f, journaled = self._h5file(write=True)
            assert journaled is not None
            try:
                _check_schema(f, self.path, older_ok=older_ok)
                yield f, journaled
                f.close()
                if journaled.failure is not None:
                    raise journaled.failure
            except BaseException as exc:
                with suppress(Exception):
                    f.close()
                self._abort(journaled, exc)
                if isinstance(exc, (OSError, RuntimeError)):  # how h5py reports I/O errors, damaged files
                    raise self._write_error(exc, journaled) from None
                raise
            journaled.commit()

    def _abort(self, journaled: JournaledFile, exc: BaseException) -> None:
        try:
            journaled.abort()
        except OSError as failed:
            raise StoreError(
                f"a write to audit store {self.path} failed ({journaled.failure or exc}) and could not be "
                f"undone ({failed}); the journal {journaled.journal} is kept and is rolled back when the "
                "store is next opened"
            ) from None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A snapshot: the file stays open, read-only, for the block, and the store's reads in it (``read``,
        ``read_blocks``, ``read_node``, ``info``, ...) all use that one open, so together they see one state of
        the store, never part of a write made meanwhile. Keep the block short: writers wait for it."""
        if self._snapshot is not None:
            yield
            return
        with self._open() as f:
            self._snapshot = f
            try:
                yield
            finally:
                self._snapshot = None

    def writer(self) -> str | None:
        """Which process holds the store's writer lock now ("pid N on HOST (since T)"), None if none; from
        the lock's record, for messages (a reader meeting an unfinished write says who is writing)."""
        return None if self._lock is not None else _WriterLock.holder(self._file)
