"""A run folder's layout and atomic writes: every path into a run folder comes from here.

    <run>/config.yaml            the resolved config (resume= reads it back)
    <run>/summary.txt            the Keras-style model summary
    <run>/checkpoints/           best.ckpt (by val/acc) and last.ckpt
    <run>/<figure>.png           history, per_class, mistakes, confusion_matrix, activations_<i>
    <run>/test_outputs.npz       the test set's predictions the figures are drawn from (mnist_lab.figures)
    <run>/export/                model.onnx, model.pt2, model.torchscript.pt, weights.safetensors, model.yaml
    <run>/predictions/<source>/  predictions.csv and predictions.png (mnist_lab.predict)
    <run>/mlruns/                MLflow's local store (of a single run; a sweep keeps one in its sweep folder)

The loggers' own files (TensorBoard events, metrics.csv, hparams.yaml) sit in the run folder too.
No torch here: predict imports this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CONFIG = "config.yaml"
SUMMARY = "summary.txt"
CHECKPOINTS = "checkpoints"
BEST = "best"  # ModelCheckpoint's filename: checkpoints/best.ckpt
LAST = "last"  # Lightning's name for save_last: checkpoints/last.ckpt
EXPORT = "export"
EXPORT_FILES = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.torchscript.pt",
                "weights": "weights.safetensors", "yaml": "model.yaml"}
PREDICTIONS = "predictions"
TEST_OUTPUTS = "test_outputs.npz"
MLRUNS = "mlruns"


class RunDir:
    """The paths of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def holding(cls, file: str | os.PathLike) -> RunDir:
        """The run folder that holds `file` (a checkpoint in checkpoints/, an export in export/, or a file
        directly in it)."""
        parent = Path(file).parent
        return cls(parent.parent if parent.name in (CHECKPOINTS, EXPORT) else parent)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / f"{BEST}.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def export(self) -> Path:
        return self.path / EXPORT

    @property
    def onnx(self) -> Path:
        return self.export / EXPORT_FILES["onnx"]

    @property
    def predictions(self) -> Path:
        """predict's folder: one subfolder per source it predicted (test, a folder's or a file's name)."""
        return self.path / PREDICTIONS

    def figure(self, name: str) -> Path:
        """The PNG `<run>/<name>.png`."""
        return self.path / f"{name}.png"

    @property
    def test_outputs(self) -> Path:
        return self.path / TEST_OUTPUTS


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file that `path` names: a .ckpt file as it is, or a run folder's checkpoints/best.ckpt."""
    from mnist_lab.errors import CheckpointError

    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (RunDir(path).best_ckpt, path / f"{BEST}.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no {CHECKPOINTS}/{BEST}.ckpt: give a run folder of python -m "
                              "mnist_lab.train or a .ckpt file")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, commit: bool = True) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` when the block ends without an error,
    so a reader never sees half a file and a kill mid-write leaves the old one. commit=False leaves the
    rename out (a rank that wrote nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if commit:
            os.replace(tmp, path)
    finally:
        if commit:
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
