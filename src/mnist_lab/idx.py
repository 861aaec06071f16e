"""MNIST's four raw files and the IDX format they are in: names, headers, checks, fetching, reading.

An IDX file is a 4-byte magic number (2051 for images, 2049 for labels), one big-endian uint32 per
dimension, then the uint8 values. No torch here: predict reads the test set with numpy alone (torchvision
is imported only to download a missing file).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

from mnist_lab.errors import DataError
from mnist_lab.runs import shown

# name -> (IDX magic number, shape, SHA-256 of the official file)
RAW_FILES = {
    "train-images-idx3-ubyte": (2051, (60000, 28, 28),
                                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (2049, (60000,),
                                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28),
                               "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (2049, (10000,),
                               "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # split -> (images, labels)
MAGIC_NDIM = {2051: 3, 2049: 1}  # images (N, 28, 28), labels (N,)


def raw_folder(data_dir: str | os.PathLike) -> Path:
    """Where the raw files of a data folder are: <data_dir>/MNIST/raw (torchvision's layout)."""
    return Path(data_dir).expanduser().resolve() / "MNIST" / "raw"


def read_header(path: Path, magic: int | None = None) -> tuple[int, ...]:
    """The dimensions an IDX file's header declares, checked against the file's size (and against `magic`,
    when given). Raises DataError naming the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4)
        got = int.from_bytes(head, "big") if len(head) == 4 else None
        expected = magic if magic is not None else got
        if got != expected or got not in MAGIC_NDIM:
            want = expected if expected in MAGIC_NDIM else "2051 or 2049"
            raise DataError(f"{shown(path)} is not an MNIST IDX file: magic number {got}, expected {want}. "
                            "Replace it with the original file.")
        ndim = MAGIC_NDIM[got]
        raw = f.read(4 * ndim)
    dims = tuple(int.from_bytes(raw[4 * i: 4 * i + 4], "big") for i in range(len(raw) // 4))
    promised = 4 + 4 * ndim + (math.prod(dims) if len(dims) == ndim else 0)
    if len(dims) != ndim or size != promised:
        raise DataError(f"{shown(path)} is truncated or padded: {size} bytes, its header promises {promised}. "
                        "Replace it with the original file.")
    return dims


def lacking(names: list[str]) -> str:
    """Missing raw files as a message names them: "a", "a and b", "a, b and c", or all four in brace notation."""
    if len(names) == len(RAW_FILES):
        return "all four, {train,t10k}-{images-idx3,labels-idx1}-ubyte"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_raw_files(data_dir: str | os.PathLike, checksums: bool = True) -> None:
    """Raise DataError unless the four raw IDX files are present and whole, naming the missing or damaged file.

    Always checks each header (magic number, dimensions) against the file size; with `checksums`
    also the SHA-256 of the official files (off for generated test data).
    """
    folder = raw_folder(data_dir)
    with readable(folder):
        missing = [name for name in RAW_FILES if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"MNIST not found: {shown(folder)} lacks {lacking(missing)}; place them there, set data.data_dir= "
                "to a folder with MNIST/raw/, or set data.download=true"
            )
        for name, (magic, _, sha256) in RAW_FILES.items():
            path = folder / name
            read_header(path, magic)
            if checksums and (digest := file_sha256(path)) != sha256:
                raise DataError(
                    f"{shown(path)} is corrupted: SHA-256 {digest[:12]}..., expected {sha256[:12]}...; replace it "
                    "with the original file (delete it, and data.download=true fetches it again)"
                )


@contextlib.contextmanager
def readable(folder: Path) -> Iterator[None]:
    """A file or folder of the data that this user may not read (PermissionError) becomes one DataError line."""
    try:
        yield
    except PermissionError as err:
        where = shown(err.filename) if err.filename else shown(folder)
        raise DataError(f"{where} cannot be read: permission denied; give this user read access to "
                        f"{shown(folder)} (chmod -R a+rX), or set data.data_dir= to a readable copy") from err


def file_sha256(path: Path) -> str:
    """A file's SHA-256, hashed once per process while its size and mtime stay the same: the jobs of a
    sweep, run one after another in one process, hash 55 MB once (checksums and provenance), not once a job."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _SHA256[key]


_SHA256: dict[tuple[Path, int, int], str] = {}


def ensure_raw_files(data_dir: str | os.PathLike, download: bool = True, checksums: bool = True) -> None:
    """The four raw files present and whole, checked before a run makes its folder: with `download`, each
    missing one fetched from torchvision's MNIST mirrors; then check_raw_files. Raises DataError naming the
    missing or damaged file."""
    folder = raw_folder(data_dir)
    with readable(folder):
        missing = [name for name in RAW_FILES if not (folder / name).is_file()]
    if missing and download:
        try:
            for name in missing:
                fetch(folder, name)
        except OSError as err:

            still = [name for name in RAW_FILES if not (folder / name).is_file()]
            reason = getattr(err, "reason", err)  # a URLError's reason: the socket's error
            if isinstance(reason, socket.gaierror):
                reason = "no network: name lookup failed"
            reason = (getattr(reason, "strerror", None) or str(reason))[:40]
            raise DataError(f"MNIST download failed ({reason}): {shown(folder)} lacks {lacking(still)}; place them "
                            "there or set data.data_dir= to a folder with MNIST/raw/") from err
    check_raw_files(data_dir, checksums=checksums)


def fetch(folder: Path, name: str) -> None:
    """Download the raw file `name` into `folder` with torchvision (its mirrors, each file's MD5), through a
    temporary folder beside it: a download cut short leaves no partial file under the real name."""
    from torchvision.datasets import MNIST
    from torchvision.datasets import utils as tv_utils

    archive, md5 = next((f, m) for f, m in MNIST.resources if f == f"{name}.gz")
    folder.mkdir(parents=True, exist_ok=True)
    error: OSError | None = None
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        for mirror in MNIST.mirrors:
            try:
                with _quiet_download_bar(tv_utils):
                    tv_utils.download_and_extract_archive(mirror + archive, download_root=tmp, filename=archive,
                                                          md5=md5)
            except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad MD5 a RuntimeError
                error = err if isinstance(err, OSError) else OSError(str(err))
                continue
            os.replace(Path(tmp) / name, folder / name)
            return
    raise error or OSError(f"no mirror has {archive}")


def _quiet_download_bar(tv_utils):
    """torchvision's download bar, drawn only where stdout is a terminal (tqdm's disable=None): in a log file
    its redraws would pile up."""
    return mock.patch.object(tv_utils, "tqdm", functools.partial(tv_utils.tqdm, disable=None))


def read_idx(path: Path):
    """An IDX file as a numpy uint8 array of the shape its header declares (checked)."""
    dims = read_header(path)
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def train_size(data_dir: str | os.PathLike) -> int:
    """The number of training images, from the label file's header when it is readable (MNIST: 60,000)."""
    path = raw_folder(data_dir) / SPLITS["train"][1]
    try:
        return read_header(path, RAW_FILES[path.name][0])[0]
    except (OSError, DataError):
        return RAW_FILES[path.name][1][0]
