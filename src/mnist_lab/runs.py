"""A run folder's layout and atomic writes: every path into a run folder comes from here.

    <run>/config.yaml            the resolved config (resume= reads it back)
    <run>/train.log              the run's record: what it printed, epoch lines, test metrics, errors
    <run>/summary.txt            the Keras-style model summary
    <run>/checkpoints/           best.ckpt (by val/acc) and last.ckpt
    <run>/<figure>.png           history, per_class, mistakes, confusion_matrix, activations_<i>
    <run>/test_outputs.npz       the test set's predictions the figures are drawn from (mnist_lab.figures)
    <run>/export/                model.onnx, model.pt2, model.torchscript.pt, weights.safetensors, model.yaml
    <run>/predictions/<source>/  predictions.csv and predictions.png (mnist_lab.predict)
    <run>/mlruns/                MLflow's local store (of a single run; a sweep keeps one in its sweep folder)
    <run>/trial.yaml             in an Optuna study (hydra/sweeper=optuna): the trial's state, value per epoch, error
    <run>/provenance.yaml        which code, data, machine and command made the run (mnist_lab.provenance)
    <run>/provenance.diff        the uncommitted changes of a dirty checkout, beside it
    <run>/result.yaml            written when the run finished: its final metrics (a resumed sweep skips it)

The loggers' own files (TensorBoard events, metrics.csv, hparams.yaml) sit in the run folder too, and
Hydra's record of the command in .hydra/ (config.yaml as the run started, overrides.yaml, hydra.yaml; a
resumed run's call in .hydra/resume/). A sweep folder holds multirun.yaml (Hydra's), sweep.log (how
each job ended) and the run folders. No torch here: predict imports this module.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mnist_lab.errors import CheckpointError, WriteError

CONFIG = "config.yaml"
SUMMARY = "summary.txt"
LOG = "train.log"  # Hydra's default name for a job's log (the job is mnist_lab.train)
SWEEP_LOG = "sweep.log"
CHECKPOINTS = "checkpoints"
BEST = "best"  # ModelCheckpoint's filename: checkpoints/best.ckpt
LAST = "last"  # Lightning's name for save_last: checkpoints/last.ckpt
EXPORT = "export"
EXPORT_FILES = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.torchscript.pt",
                "weights": "weights.safetensors", "yaml": "model.yaml"}
PREDICTIONS = "predictions"
TEST_OUTPUTS = "test_outputs.npz"
MLRUNS = "mlruns"
TRIAL = "trial.yaml"
PROVENANCE = "provenance.yaml"
PROVENANCE_DIFF = "provenance.diff"
RESULT = "result.yaml"
SWEEP_RECORD = "multirun.yaml"  # Hydra's record of a sweep's config and overrides, in the sweep folder
HYDRA = ".hydra"  # Hydra's record of a run's call: config.yaml, overrides.yaml, hydra.yaml
HYDRA_RESUMED = f"{HYDRA}/resume"  # a resume= call's record goes to <time>/ below it, not over the first one


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
    def log(self) -> Path:
        return self.path / LOG

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

    @property
    def trial(self) -> Path:
        """What became of the run as a trial of an Optuna study (mnist_lab.study)."""
        return self.path / TRIAL

    @property
    def provenance(self) -> Path:
        return self.path / PROVENANCE

    @property
    def provenance_diff(self) -> Path:
        return self.path / PROVENANCE_DIFF

    @property
    def result(self) -> Path:
        """Present once the run finished (trained, tested): its final metrics."""
        return self.path / RESULT

    def figure(self, name: str) -> Path:
        """The PNG `<run>/<name>.png`."""
        return self.path / f"{name}.png"

    @property
    def test_outputs(self) -> Path:
        return self.path / TEST_OUTPUTS

    @property
    def started_config(self) -> Path:
        """Hydra's record of the config the run started with."""
        return self.path / HYDRA / "config.yaml"

    @property
    def overrides(self) -> Path:
        """Hydra's record of the run's command-line overrides."""
        return self.path / HYDRA / "overrides.yaml"

    @property
    def hydra_record(self) -> Path:
        """Hydra's own config for the run (its sweep folder, the names' exclude_keys, ...)."""
        return self.path / HYDRA / "hydra.yaml"

    def saved_overrides(self) -> list[str]:
        """The overrides the run was started with ([] where Hydra kept none)."""
        return list((yaml.safe_load(self.overrides.read_text()) or []) if self.overrides.is_file() else [])

    def untouched(self) -> bool:
        """Whether the folder holds only what a call writes before its run begins (Hydra's record, the log)."""
        return all(p.name in (HYDRA, LOG) for p in self.path.iterdir())


def resumed_record() -> str:
    """hydra.output_subdir for a resume= call: its own folder, .hydra/resume/<time>, so no call's record
    replaces another's."""
    return f"{HYDRA_RESUMED}/{datetime.datetime.now():%Y-%m-%d_%H-%M-%S-%f}"


def find_runs(folder: str | os.PathLike) -> list[Path]:
    """The run folders under `folder` (itself included): those holding a config.yaml."""
    folder = Path(folder)
    return sorted(p.parent for p in folder.rglob(CONFIG) if HYDRA not in p.relative_to(folder).parts)


def in_sweep() -> bool:
    """Whether Hydra runs this process as a job of a sweep (-m)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a sweep folder (Hydra's multirun.yaml, no run config of its own)."""
    return (folder / SWEEP_RECORD).is_file() and not (folder / CONFIG).is_file()


def saved_overrides(sweep_dir: Path) -> tuple[list[str], list[str]] | None:
    """(task overrides, hydra overrides) of the sweep recorded in `sweep_dir`, or None where there is none."""
    record = sweep_dir / SWEEP_RECORD
    if not record.is_file():
        return None
    overrides = (yaml.safe_load(record.read_text()) or {}).get("hydra", {}).get("overrides", {})
    return list(overrides.get("task") or []), list(overrides.get("hydra") or [])


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file that `path` names: a .ckpt file as it is, or a run folder's checkpoints/best.ckpt."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (RunDir(path).best_ckpt, path / f"{BEST}.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no {CHECKPOINTS}/{BEST}.ckpt: give a run folder of python -m "
                              "mnist_lab.train or a .ckpt file")
    return path


def shown(path: str | os.PathLike) -> str:
    """`path` as messages show it: relative to the working folder when it is inside it (outputs/runs/...)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def free_space(folder: str | os.PathLike) -> str:
    """The free space on `folder`'s filesystem, for a message: "1.9 MB"."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit}"
    return f"{free} bytes"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, commit: bool = True) -> Iterator[Path]:
    """A temporary name beside `path` to write to; flushed to disk and renamed to `path` when the block ends
    without an error, so a reader never sees half a file and a kill mid-write leaves the old one. commit=False
    leaves the rename out (a rank that wrote nothing). A write that fails (a full disk, a quota) raises
    WriteError naming the folder, the file and the free space; the earlier file stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if commit:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # a network filesystem may report a full disk only now
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # first: the free space reported is what the earlier file leaves
        raise write_failed(path, err) from err
    finally:
        if commit:
            tmp.unlink(missing_ok=True)


def write_failed(path: Path, err: OSError):
    """The WriteError for `path`, whose write failed with `err`."""
    reason = err.strerror or type(err).__name__  # e.g. "No space left on device", "Disk quota exceeded"
    kept = f"the earlier {path.name} is kept whole" if path.exists() else f"no {path.name} was written"
    return WriteError(f"writing {path.name} into {shown(path.parent)} failed: {reason} "
                      f"({free_space(path.parent)} free there); {kept}")


def write_result(run: RunDir, metrics: dict[str, float], finished: str) -> None:
    """<run>/result.yaml, the mark of a finished run (a resumed sweep skips it; reproduce compares with it):
    when it finished, the last epoch's training and validation means and the best checkpoint's test metrics."""
    result = {"finished": finished, "metrics": dict(sorted(metrics.items()))}
    write_text(run.result, yaml.safe_dump(result, sort_keys=False))


def result_metrics(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics of a finished run's result.yaml (write_result); {} where it holds none."""
    return dict((yaml.safe_load(RunDir(run_dir).result.read_text()) or {}).get("metrics", {}))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
