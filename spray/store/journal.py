"""A rollback journal that makes every write transaction on an audit store all-or-nothing.

HDF5 has no journal of its own: a writer killed while the library flushes its metadata, or a write that
fails because the disk is full, can leave a file that is half old, half new (measured: about one SIGKILL
in 30 during node writes left a file HDF5 could no longer walk). So the store's writer hands HDF5 a Python
file object (h5py's ``fileobj`` driver), :class:`JournaledFile`, and before any byte of the file as it was
when the transaction began is overwritten (or cut off by a truncation), the old bytes are appended to the
journal ``<store>.journal``. Bytes written past the old end of the file need no copy. The transaction
commits by deleting the journal; a journal that is still there later belongs to a transaction that never
finished, and :func:`rollback` undoes it: the saved bytes go back and the file is cut to its old size, so
the store is exactly what it was before that transaction began. This is SQLite's rollback journal.

Journal format: a header (magic, the file's size at the start, CRC-32) written before the first change,
then records ``(offset, length, CRC-32, old bytes)``, each appended before the write it protects. A
record cut short by a kill fails its length or CRC check; its write never happened, so rollback stops
there. Rolling back twice is harmless, so a kill during a rollback is too.

Locking: the transaction holds an exclusive ``flock`` on the store file for its whole duration; readers
(HDF5's own ``flock``, shared) wait for it. The journal is deleted before that lock is released, so a
reader that holds the shared lock and finds a journal knows its writer is dead.

Not covered: power loss or an OS crash. Nothing is ``fsync``-ed, so the order in which the kernel writes
journal and store back to disk is not guaranteed; a killed process is covered because the kernel keeps
every completed ``write`` no matter how the process ends.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import struct
import zlib
from pathlib import Path

__all__ = ["JournaledFile", "journal_path", "rollback", "rollback_if_stale", "try_flock"]

_MAGIC = b"SPRAYJ1\n"
_HEADER = struct.Struct("<8sQI")  # magic, the store's size when the transaction began, crc32 of both
_RECORD = struct.Struct("<QQI")  # offset, length, crc32 of (offset, length, old bytes)
_PIECE = 16 << 20  # old bytes are copied in records of at most 16 MiB (bounded memory)
_PAGE = 4096  # rollback compares and restores the file page by page
_SHADOW_MAX = 1 << 20  # after a failed write, later writes up to this size are kept in memory
_NO_LOCK_ERRNOS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)


def journal_path(store: str | os.PathLike[str]) -> Path:
    """``<store>.journal``: where the write transaction in progress keeps the bytes it overwrites."""
    store = Path(store)
    return store.with_name(store.name + ".journal")


def try_flock(fd: int, *, exclusive: bool = True) -> bool:
    """``flock`` without waiting: True once locked, BlockingIOError if the file is locked the other way.

    Like HDF5's ``locking="best-effort"``: on file systems without locks (ENOLCK, ENOSYS), and with
    ``HDF5_USE_FILE_LOCKING=FALSE``, it returns False and the file is used unlocked.
    """
    if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0"):
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise BlockingIOError(exc.errno, f"audit store is in use ({exc.strerror})") from None
        if exc.errno not in _NO_LOCK_ERRNOS:
            raise
        return False
    return True


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``; a hole or the end of the file reads as zeros."""
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    data = b"".join(chunks)
    return data + bytes(size - len(data))


def _read_exact(f: io.BufferedReader, size: int) -> bytes | None:
    data = f.read(size)
    return data if len(data) == size else None


def _restore(fd: int, old: bytes, offset: int) -> None:
    """Write ``old`` back at ``offset``, only the file-system pages whose bytes differ: on a full disk, a
    hole the failed transaction did not fill (it reads as the zeros it held) must not need a block now."""
    current = _pread_exact(fd, len(old), offset)
    if current == old:
        return
    edges = range(offset - offset % _PAGE + _PAGE, offset + len(old), _PAGE)
    for lo, hi in zip([offset, *edges], [*edges, offset + len(old)], strict=True):
        a, b = lo - offset, hi - offset
        if current[a:b] != old[a:b]:
            _pwrite_all(fd, old[a:b], lo)


def rollback(store_fd: int, journal: Path) -> bool:
    """Undo the unfinished transaction recorded in ``journal`` on the store open as ``store_fd`` (the
    caller holds its exclusive lock), then delete the journal. Returns whether there was one.

    Records are applied as they are read (at most one 16 MiB record in memory); the first record that is
    incomplete or fails its CRC ends the journal: it was cut short by a kill before its write happened.
    Rolling back needs no new disk space.
    """
    try:
        f = open(journal, "rb")  # noqa: SIM115 - closed below, before the unlink
    except FileNotFoundError:
        return False
    with f:
        head = _read_exact(f, _HEADER.size)
        valid = head is not None
        if valid:
            magic, size, crc = _HEADER.unpack(head)
            valid = magic == _MAGIC and crc == zlib.crc32(head[:-4])
        if valid:  # cut first: it frees the space the transaction added; records lie below the old size
            os.ftruncate(store_fd, size)
        while valid:  # a torn header means the store was not touched yet
            record = _read_exact(f, _RECORD.size)
            if record is None:
                break
            offset, length, crc = _RECORD.unpack(record)
            old = _read_exact(f, length) if length <= _PIECE else None
            if old is None or crc != zlib.crc32(old, zlib.crc32(record[:16])):
                break
            _restore(store_fd, old, offset)
    journal.unlink()
    return True


def rollback_if_stale(store: str | os.PathLike[str]) -> bool:
    """Roll back a journal left by a dead writer (readers call this when they find one); returns whether
    one was rolled back. Without file locking a dead writer cannot be told from a live one, so nothing is
    done then (the store's own writer rolls the journal back when it next writes).

    Raises:
        BlockingIOError: the store is in use; retry later (a live writer finishes its own transaction).
        OSError: the store cannot be opened for writing (e.g. PermissionError) or the rollback failed.
    """
    journal = journal_path(store)
    if not journal.exists():
        return False
    fd = os.open(store, os.O_RDWR)
    try:
        # Under the lock the journal is re-read: a live writer may have committed meanwhile.
        return try_flock(fd) and rollback(fd, journal)
    finally:
        os.close(fd)


class JournaledFile(io.RawIOBase):
    """The store file for one write transaction, as a file object for ``h5py.File(..., driver="fileobj")``.

    Opening takes the exclusive lock (BlockingIOError if the file is busy), rolls back a stale journal,
    and starts a new one. :meth:`commit` keeps the changes, :meth:`abort` undoes them; both release the
    lock.

    A write that fails (ENOSPC, EIO, ...) is never reported to HDF5, whose error paths for failed flushes
    are not safe (measured: HDF5 2.0 crashes the interpreter when a chunk flush hits a full disk). The
    first failure is kept in ``failure`` and the transaction is doomed: the file is not touched again,
    later writes of up to 1 MiB (HDF5's metadata) are kept in memory so HDF5 reads back what it wrote, and
    the caller must :meth:`abort` once HDF5 has closed the file.
    """

    def __init__(self, store: str | os.PathLike[str]) -> None:
        super().__init__()
        self.store = Path(store)
        self.journal = journal_path(store)
        self.failure: OSError | None = None
        self._fd = os.open(self.store, os.O_RDWR)
        self._jfd: int | None = None
        self._finished = False
        self._shadow: list[tuple[int, bytes]] = []  # writes after a failure, kept for HDF5's reads
        try:
            try_flock(self._fd)
            rollback(self._fd, self.journal)
            self._size = self._eof = os.fstat(self._fd).st_size
            self._pos = 0
            self._saved: list[tuple[int, int]] = []  # sorted, disjoint [start, stop) already journaled
            self._jfd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            head = _HEADER.pack(_MAGIC, self._size, 0)[:-4]
            self._journal_append(head + struct.pack("<I", zlib.crc32(head)))
        except BaseException:
            self._finished = True
            self._release(remove_journal=self._jfd is not None)
            raise

    # -- io.RawIOBase (what h5py's fileobj driver calls: seek, tell, read, write, truncate, flush)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._eof + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        n = os.preadv(self._fd, [view], self._pos)
        if self.failure is not None:  # overlay what HDF5 wrote since the failure
            n = max(0, min(len(view), self._eof - self._pos))
            stop = self._pos + len(view)
            for offset, data in self._shadow:
                lo, hi = max(offset, self._pos), min(offset + len(data), stop)
                if lo < hi:
                    view[lo - self._pos : hi - self._pos] = data[lo - offset : hi - offset]
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        start, stop = self._pos, self._pos + len(view)
        if not self._finished and self.failure is None:
            try:
                self._save(start, stop)
                self._store_write(view, start)
            except OSError as exc:
                self.failure = exc
        if self.failure is not None and len(view) <= _SHADOW_MAX:
            self._shadow.append((start, bytes(view)))
        self._eof = max(self._eof, stop)
        self._pos = stop
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if not self._finished and self.failure is None:
            try:
                self._save(size, self._size)
                os.ftruncate(self._fd, size)
            except OSError as exc:
                self.failure = exc
        self._eof = size
        return size

    def flush(self) -> None:
        pass  # every write goes straight to the OS

    def close(self) -> None:
        """Closing without :meth:`commit` or :meth:`abort` aborts (a transaction is never half-kept)."""
        if not self._finished:
            self.abort()
        super().close()

    # -- the transaction

    def exclude(self, start: int, stop: int) -> None:
        """Leave bytes ``[start, stop)`` out of the journal: a rollback will not restore them.

        For data whose old value nobody needs (attribution rows not yet marked done); their writes then
        cost no copy.
        """
        self._mark(start, stop)

    def commit(self) -> None:
        """Keep the transaction: delete the journal, then release the lock (readers may come in).

        Raises:
            OSError: a write failed (``failure``); the transaction is rolled back instead.
        """
        if self.failure is not None:
            self.abort()
            raise self.failure
        self._finished = True
        self._release(remove_journal=True)

    def abort(self) -> None:
        """Undo the transaction (restore the saved bytes, cut the file to its old size), release the lock.

        If the rollback itself fails, the journal stays and the next open of the store rolls it back.
        """
        if self._finished:
            return
        self._finished = True
        try:
            if self._jfd is not None:
                os.close(self._jfd)
                self._jfd = None
            rollback(self._fd, self.journal)
        finally:
            self._release(remove_journal=False)

    # -- internals (the two writes below are the only ones that change files; tests hook them)

    def _store_write(self, data: memoryview, offset: int) -> None:
        _pwrite_all(self._fd, data, offset)

    def _journal_append(self, record: bytes | memoryview) -> None:
        assert self._jfd is not None
        view = memoryview(record)
        while view:
            view = view[os.write(self._jfd, view) :]

    def _save(self, start: int, stop: int) -> None:
        """Journal the old bytes of ``[start, stop)`` within the old file that are not journaled yet."""
        stop = min(stop, self._size)
        for lo, hi in self._gaps(start, stop):
            for at in range(lo, hi, _PIECE):
                end = min(hi, at + _PIECE)
                old = _pread_exact(self._fd, end - at, at)
                head = struct.pack("<QQ", at, end - at)
                self._journal_append(head + struct.pack("<I", zlib.crc32(old, zlib.crc32(head))) + old)
            self._mark(lo, hi)

    def _gaps(self, start: int, stop: int) -> list[tuple[int, int]]:
        gaps, at = [], start
        for lo, hi in self._saved:
            if hi <= at:
                continue
            if lo >= stop:
                break
            if lo > at:
                gaps.append((at, lo))
            at = max(at, hi)
        if at < stop:
            gaps.append((at, stop))
        return gaps

    def _mark(self, start: int, stop: int) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted([*self._saved, (start, stop)]):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._saved = merged

    def _release(self, *, remove_journal: bool) -> None:
        """Close the journal (deleting it when asked), then the store, which drops the lock: in that order,
        so no reader ever sees a journal while the transaction's writer is alive."""
        if self._jfd is not None:
            os.close(self._jfd)
            self._jfd = None
        if remove_journal:
            self.journal.unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
