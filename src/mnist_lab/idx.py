"""MNIST's four raw files and the IDX format they are in: names, headers, checks, reading.

An IDX file is a 4-byte magic number (2051 for images, 2049 for labels), one big-endian uint32 per
dimension, then the uint8 values. No torch here: predict reads the test set with numpy alone.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from mnist_lab.errors import DataError

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
            raise DataError(f"{path} is not an MNIST IDX file: magic number {got}, expected {want}. "
                            "Replace it with the original file.")
        ndim = MAGIC_NDIM[got]
        raw = f.read(4 * ndim)
    dims = tuple(int.from_bytes(raw[4 * i: 4 * i + 4], "big") for i in range(len(raw) // 4))
    promised = 4 + 4 * ndim + (math.prod(dims) if len(dims) == ndim else 0)
    if len(dims) != ndim or size != promised:
        raise DataError(f"{path} is truncated or padded: {size} bytes, its header promises {promised}. "
                        "Replace it with the original file.")
    return dims


def check_raw_files(data_dir: str | os.PathLike, checksums: bool = True) -> None:
    """Raise DataError unless the four raw IDX files are present and whole.

    Always checks each header (magic number, dimensions) against the file size; with `checksums`
    also the SHA-256 of the official files (off for generated test data).
    """
    folder = raw_folder(data_dir)
    missing = [name for name in RAW_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"MNIST not found: {folder} lacks {', '.join(missing)}. Place the four raw IDX files "
            f"({', '.join(RAW_FILES)}) there, or set data.data_dir= (or MNIST_LAB_DATA_DIR) "
            "to a folder holding MNIST/raw/, or go online with data.download=true."
        )
    for name, (magic, _, sha256) in RAW_FILES.items():
        path = folder / name
        read_header(path, magic)
        stat = path.stat()
        if checksums and (path, stat.st_size, stat.st_mtime_ns) not in _VERIFIED:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != sha256:
                raise DataError(
                    f"{path} is corrupted: SHA-256 {digest[:12]}..., expected {sha256[:12]}... "
                    "Replace it with the original file (or data.verify_checksums=false for your own IDX data)."
                )
            _VERIFIED.add((path, stat.st_size, stat.st_mtime_ns))


# Files whose SHA-256 matched in this process, as (path, size, mtime): the jobs of a sweep, run one
# after another in one process, hash 55 MB once, not once a job. A changed file is hashed again.
_VERIFIED: set[tuple[Path, int, int]] = set()


def read_idx(path: Path):
    """An IDX file as a numpy uint8 array of the shape its header declares (checked)."""
    import numpy as np

    dims = read_header(path)
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def train_size(data_dir: str | os.PathLike) -> int:
    """The number of training images, from the label file's header when it is readable (MNIST: 60,000)."""
    path = raw_folder(data_dir) / SPLITS["train"][1]
    try:
        return read_header(path, RAW_FILES[path.name][0])[0]
    except (OSError, DataError):
        return RAW_FILES[path.name][1][0]
