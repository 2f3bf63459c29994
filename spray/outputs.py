"""What spray writes: output files and directories, guarded so that a command never destroys what it reads.

Every file spray writes outside an audit store (a report, a table, trained or corrected weights, a ClArC
run's result, a ViRelAy project) and every output directory it fills (``spray demo --out``, a run file's
``[audit].out``, ``spray clarc --out``, the exports' ``--out``) goes through the active :class:`OutputGuard`:

- an output that is one of the command's inputs is refused, naming both: the same resolved path, or the
  same device and inode (a symlink or a hard link to it);
- an existing file is replaced only when spray wrote it: a report carries spray's generator tag
  (:data:`GENERATOR`), and every file in a directory holding the :data:`MARKER` file is spray's;
  anything else needs ``--force`` (``force=True``);
- an existing directory that is not empty is written into only when it holds the marker (or with
  ``--force``); spray puts the marker into every output directory it writes;
- a file is written to a temporary file in its own directory and renamed over the target, so a crash
  leaves the old file or the new one, never half of one (a killed write can leave the hidden
  ``.NAME.PID.tmp``: per process, so that two writers never share one).

The command line sets the command's inputs and ``--force`` with :func:`protecting`; library functions add
the inputs they know (the store they read) the same way, so a direct call is guarded too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

from spray.errors import BadInputError

__all__ = ["GENERATOR", "MARKER", "OutputGuard", "active", "protecting", "source_path"]

MARKER = ".spray-output"
"""The file spray writes into every output directory: the files next to it are spray's to replace."""
GENERATOR = b'<meta name="generator" content="spray '
"""How a report spray wrote begins its head (spray/report/templates/report.html)."""
_HEAD_BYTES = 2048  # the generator tag is among a report's first lines

PathLike = str | os.PathLike[str]


def source_path(spec: str) -> Path | None:
    """The file or folder of a data source ``npz:PATH``, ``hdf5:PATH``, ``folder:PATH`` or ``csv:PATH``;
    None for code."""
    from spray.data.sources import source_file  # here: the data package imports torch, which most writers need not

    return source_file(spec)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path, or the same device and inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:  # one of them does not exist (or cannot be reached): not the same existing file
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _is_report(path: Path) -> bool:
    """A regular file whose head carries spray's generator tag (a FIFO or device is never opened)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with open(path, "rb") as f:
            return GENERATOR in f.read(_HEAD_BYTES)
    except OSError:
        return False


@dataclass(frozen=True)
class OutputGuard:
    """The inputs a command must not write over (label, path), and whether ``--force`` was given."""

    inputs: tuple[tuple[str, Path], ...] = ()
    force: bool = False

    def with_inputs(self, inputs: Mapping[str, PathLike | None], force: bool = False) -> OutputGuard:
        """This guard, also protecting ``inputs`` (label -> path; None left out), forced if either is."""
        more = tuple((label, Path(path)) for label, path in inputs.items() if path is not None)
        return replace(self, inputs=self.inputs + more, force=self.force or force)

    def _not_an_input(self, path: Path, what: str) -> None:
        for label, source in self.inputs:
            if _same_file(path, source):
                raise BadInputError(
                    f"{what} {path} is the same file as {label} {source}: writing it would destroy an input "
                    "of this command; choose another path"
                )

    def file(self, path: PathLike, what: str, *, report: bool = False) -> Path:
        """``path`` checked as an output file; ``report``: recognise spray's own by the generator tag
        (otherwise by the marker in its directory). Raises BadInputError naming ``what``."""
        path = Path(path)
        self._not_an_input(path, what)
        if self.force or not (path.exists() or path.is_symlink()):
            return path
        own = _is_report(path) if report else (path.parent / MARKER).is_file()
        if not own:
            kind = "a report spray wrote" if report else f"in a directory spray wrote (it has no {MARKER} file)"
            raise BadInputError(
                f"{what} {path} exists and is not {kind}; choose another path, or pass --force to replace it"
            )
        return path

    def directory(self, path: PathLike, what: str) -> Path:
        """``path`` checked as an output directory, created and marked; returns it."""
        path = Path(path)
        self._not_an_input(path, what)
        if path.exists() and not path.is_dir():
            raise BadInputError(f"{what} {path} exists and is not a directory; choose a directory")
        if not self.force and path.is_dir() and not (path / MARKER).is_file() and any(path.iterdir()):
            raise BadInputError(
                f"{what} {path} holds files spray did not write (it has no {MARKER} file); choose a new or "
                "empty directory, or pass --force to write into it"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / MARKER).touch()
        except OSError as exc:
            raise BadInputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        return path

    @contextmanager
    def writing(self, path: PathLike, what: str, *, report: bool = False) -> Iterator[Path]:
        """Check ``path`` (:meth:`file`), yield a temporary path in its directory to write, then rename it
        over ``path``; on any error the temporary file is removed and ``path`` left as it was."""
        path = self.file(path, what, report=report)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def write(self, path: PathLike, what: str, write: Callable[[Path], object], *, report: bool = False) -> Path:
        """``write(tmp)`` inside :meth:`writing`; returns ``path``."""
        with self.writing(path, what, report=report) as tmp:
            write(tmp)
        return Path(path)


_ACTIVE: ContextVar[OutputGuard] = ContextVar("spray_output_guard", default=OutputGuard())


def active() -> OutputGuard:
    """The guard of the command (or library call) running in this context."""
    return _ACTIVE.get()


@contextmanager
def protecting(inputs: Mapping[str, PathLike | None], *, force: bool = False) -> Iterator[OutputGuard]:
    """Within the block, the active guard also protects ``inputs`` (and is forced if ``force``)."""
    token = _ACTIVE.set(_ACTIVE.get().with_inputs(inputs, force))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)
