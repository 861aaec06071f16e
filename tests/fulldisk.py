"""A simulated full disk, for tests: a small filesystem (tmpfs) can be mounted only as root, and fills where its
size says, not at the phase a test means; this fills at any phase, in any process of a run.

Python-level file writes under ROOT (builtins.open and io.open: what logging, pathlib, torch.save on a file
object, numpy, matplotlib, Hydra and TensorBoard's writer use) fail with ENOSPC (or EDQUOT) once the disk is
"full": from the start, or from the moment a file whose path matches the regular expression `at` is opened for
writing. The state is a marker file, so every process of a run sees it (the figure workers too); `free(mark)`
removes it and gives the space back (a disk that filled at `at` does not fill again there). A
logging.FileHandler made meanwhile (train.log's) writes through it too. Writes that bypass Python's open
(os.write on a descriptor, SQLite's) are not covered.

In a test's own process: `fill(monkeypatch, root, mark, at=...)` (undone with monkeypatch; `refused()` counts the
writes it refused). For a command run as a subprocess: `sitecustomize(folder, root, mark, at=...)` writes a
sitecustomize.py into `folder`, to put first on the command's PYTHONPATH.
"""

from __future__ import annotations

import builtins
import errno as errnos
import io
import os
import re
from pathlib import Path

_real_open = io.open


class _State:
    root: str = ""
    mark: str = ""
    at: re.Pattern | None = None
    code: int = errnos.ENOSPC
    hits: int = 0  # writes refused, for tests to check the disk was full where they meant it


def full() -> bool:
    return bool(_State.mark) and os.path.exists(_State.mark)


def _spent() -> str:
    return _State.mark + ".spent"  # the disk filled at `at` once: freed, it stays free


def _under_root(file) -> bool:
    if not isinstance(file, (str, bytes, os.PathLike)):
        return False
    path = os.path.abspath(os.fsdecode(file))
    return path == _State.root or path.startswith(_State.root + os.sep)


class _FullDiskFile(io.FileIO):
    def write(self, data) -> int:
        if full():
            _State.hits += 1
            raise OSError(_State.code, os.strerror(_State.code))
        return super().write(data)


def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    writing = any(c in mode for c in "wax+")
    if not writing or not _under_root(file):
        return _real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    if _State.at is not None and _State.at.search(os.fsdecode(file)) and not os.path.exists(_spent()):
        for marker in (_State.mark, _spent()):  # the disk fills up now
            with _real_open(marker, "w") as f:
                f.write(os.fsdecode(file))
    raw_mode = mode.replace("b", "").replace("t", "")
    raw = _FullDiskFile(file, raw_mode, closefd=closefd, opener=opener)
    if buffering == 0 and "b" in mode:
        return raw
    size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
    buffered = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw, size)
    if "b" in mode:
        return buffered
    text = io.TextIOWrapper(buffered, encoding or "utf-8", errors, newline, line_buffering=buffering == 1)
    text.mode = mode
    return text


def _install(root, mark, at: str | None, code: int) -> None:
    _State.root = os.path.abspath(os.fspath(root))
    _State.mark = os.path.abspath(os.fspath(mark))
    _State.at = re.compile(at) if at else None
    _State.code = code
    _State.hits = 0
    builtins.open = io.open = _open  # logging's FileHandler (train.log) takes builtins.open when it is made


def fill(monkeypatch, root, mark, at: str | None = None, code: int = errnos.ENOSPC) -> None:
    """This process: the disk holding `root` is full from now (at=None) or from the first file opened for writing
    whose path matches the regular expression `at`. Remove `mark` to give the space back."""
    monkeypatch.setattr(builtins, "open", builtins.open)
    monkeypatch.setattr(io, "open", io.open)
    _install(root, mark, at, code)
    if at is None:
        with _real_open(mark, "w") as f:  # not through the full disk, where `mark` is under `root`
            f.write("full")


def refused() -> int:
    """How many writes this process refused since it was filled (a test checks the disk was full where meant)."""
    return _State.hits


def free(mark) -> None:
    """Give the space back (in every process that sees `mark`)."""
    Path(mark).unlink(missing_ok=True)


def sitecustomize(folder, root, mark, at: str | None = None, code: int = errnos.ENOSPC) -> Path:
    """A sitecustomize.py in `folder` that fills the disk of `root` (as `fill`) in every process started with
    `folder` first on PYTHONPATH. Returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).read_text()
    (folder / "sitecustomize.py").write_text(
        source + f"\n_install({os.fspath(root)!r}, {os.fspath(mark)!r}, {at!r}, {code})\n")
    if at is None:
        with _real_open(mark, "w") as f:
            f.write("full")
    return folder
