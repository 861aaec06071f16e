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
import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mnist_lab.errors import CheckpointError, DamagedFileError, LockedError, MnistLabError, WriteError

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

    def saved_overrides(self, fix: str = "restore it, or move the run aside") -> list[str]:
        """The overrides the run was started with ([] where Hydra kept none); DamagedFileError (one line, ending in
        `fix`) where the record is damaged."""
        return list(read_yaml(self.overrides, list, fix)) if self.overrides.is_file() else []

    def restart_checkpoint(self) -> Path | None:
        """The checkpoint the run goes on from: its last.ckpt, or its best.ckpt where that is newer or alone (a full
        disk refused the last.ckpt of the epoch whose best.ckpt was written); None where it has neither."""
        saved = [p for p in (self.last_ckpt, self.best_ckpt) if p.is_file()]
        return max(saved, key=lambda p: p.stat().st_mtime_ns) if saved else None

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


def continue_how(run: RunDir) -> str:
    """How an interrupted run continues, for its line: its resume= command, or for a job of a sweep or study, the
    sweep's command (which resumes it with the others)."""
    return "the sweep's command continues it" if in_sweep() else f"resume with: python -m mnist_lab.train " \
                                                                  f"resume={shown(run.path)}"


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a sweep folder (Hydra's multirun.yaml, no run config of its own)."""
    return (folder / SWEEP_RECORD).is_file() and not (folder / CONFIG).is_file()


def saved_overrides(sweep_dir: Path) -> tuple[list[str], list[str]] | None:
    """(task overrides, hydra overrides) of the sweep recorded in `sweep_dir`, or None where there is none;
    DamagedFileError (one line) where the record is damaged."""
    record = sweep_dir / SWEEP_RECORD
    if not record.is_file():
        return None
    saved = read_yaml(record, dict, "restore it (Hydra wrote it when the sweep began), or give a new hydra.sweep.dir")
    overrides = (saved.get("hydra") or {}).get("overrides") or {}
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


def clear_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (atomic_path's `.<name>.tmp-<pid>`) under `folder` that a process killed
    mid-write left (SIGKILL, a lost node): those whose pid is gone on this host. Returns what it removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_failed(path: Path, err: OSError):
    """The WriteError for `path`, whose write failed with `err`."""
    reason = err.strerror or type(err).__name__  # e.g. "No space left on device", "Disk quota exceeded"
    kept = f"the earlier {path.name} is kept whole" if path.exists() else f"no {path.name} was written"
    failed = WriteError(f"writing {path.name} into {shown(path.parent)} failed: {reason} "
                        f"({free_space(path.parent)} free there); {kept}")
    failed.path, failed.kept = path, path.exists()
    failed.errno, failed.strerror = err.errno, reason  # kept where the error is pickled (a figure worker's)
    return failed


# A full disk ---------------------------------------------------------------------------------------------------

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's quota exceeded


def disk_full(err: BaseException | None) -> OSError | WriteError | None:
    """The full disk (or quota) behind `err`, where one is: an OSError with ENOSPC or EDQUOT (or the WriteError
    made of one) in its chain of causes (a library may raise another error while handling it: TensorBoard's
    writer, Lightning's clean-up); it has the errno and strerror."""
    return next((e for e in _chain(err) if isinstance(e, (OSError, WriteError))
                 and getattr(e, "errno", None) in DISK_FULL), None)


def full_disk_line(err: BaseException, run_dir: str | os.PathLike, again: str | None = None) -> str:
    """One line for a run stopped by a full disk: what could not be written, what was kept, and how to go on once
    there is space: the sweep's command again (it resumes the job), resume= where the run kept a config and a
    checkpoint (a run tested but not recorded is tested again from it), else the same command again."""
    full, run = disk_full(err), RunDir(run_dir)
    if again is not None:
        pass
    elif in_sweep():
        again = "run the same command again (the sweep resumes this job)"
    elif run.config.is_file() and (run.last_ckpt.is_file() or run.best_ckpt.is_file()):
        again = f"resume: python -m mnist_lab.train resume={shown(run.path)}"
    else:
        again = "run the same command again"
    failed = next((e for e in _chain(err) if isinstance(e, WriteError) and hasattr(e, "path")), None)
    if failed is not None:
        path, base = Path(os.path.abspath(failed.path)), Path(os.path.abspath(run.path))
        what = str(path.relative_to(base) if path.is_relative_to(base) else path.name)
        what += " (the earlier one kept)" if failed.kept else ""
    elif any("tensorboard" in frame.filename for e in _chain(err) for frame in _frames(e)):
        what = "TensorBoard's event file"
    else:
        what = f"into {shown(run.path)}"
    disk = "the disk is full" if full.errno == errno.ENOSPC else "the quota is exceeded"
    return f"{disk} ({free_space(run.path)} free): writing {what} failed; free space, then {again}"


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _frames(err: BaseException) -> list:
    import traceback

    return traceback.extract_tb(err.__traceback__)


@contextlib.contextmanager
def said_when_full(run_dir: str | os.PathLike, again: str | None = None) -> Iterator[None]:
    """A full disk (or quota) met anywhere in the block, by any library's write (Hydra's record of a sweep's next
    job too), ends it with one WriteError line (full_disk_line; `again`: how to go on, where not the run's own)."""
    try:
        yield
    except Exception as err:
        said = isinstance(err, MnistLabError) and not (isinstance(err, WriteError) and hasattr(err, "path"))
        if disk_full(err) is None or said:
            raise  # not a full disk, or said in its own line already (a run's, a data download's)
        raise WriteError(full_disk_line(err, run_dir, again)) from err


def check_space(folder: str | os.PathLike, again: str = "run the same command again") -> None:
    """WriteError (one line) where the disk that would hold `folder` has no room for what a run writes before its
    own code starts (Hydra's record of the call, about 10 KB): written and removed in its first existing folder."""
    target = folder = Path(folder).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".space-check-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(64 * 1024))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno not in DISK_FULL:
            return  # another problem (no permission, a read-only disk): the run says it where it meets it
        disk = "the disk is full" if err.errno == errno.ENOSPC else "the quota is exceeded"
        raise WriteError(f"{disk} that would hold {shown(target)} ({free_space(folder)} free): free space, then "
                         f"{again}") from None
    finally:
        probe.unlink(missing_ok=True)


def write_result(run: RunDir, metrics: dict[str, float], finished: str) -> None:
    """<run>/result.yaml, the mark of a finished run (a resumed sweep skips it; reproduce compares with it):
    when it finished, the last epoch's training and validation means and the best checkpoint's test metrics."""
    result = {"finished": finished, "metrics": dict(sorted(metrics.items()))}
    write_text(run.result, yaml.safe_dump(result, sort_keys=False))


RESULT_METRICS = ("train/loss", "train/acc", "test/loss", "test/acc")  # in every finished run's result.yaml
VAL_METRICS = ("val/loss", "val/acc")  # there too where the run validated (data.val_size > 0)


def result_problem(run_dir: str | os.PathLike) -> str | None:
    """What keeps <run>/result.yaml from being a finished run's whole record (write_result), in a few
    words ("missing", "empty", "not valid YAML (line 3)", "no val/acc, val/loss"); None where it is one. The one
    reader of result.yaml: a sweep counts a job finished, and reproduce takes its metrics, only where this
    finds nothing wrong."""
    run = RunDir(run_dir)
    try:
        text = run.result.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError) as err:
        return f"unreadable: {getattr(err, 'strerror', None) or type(err).__name__}"
    if not text.strip():
        return "empty"
    try:
        record = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        return "not valid YAML" + (f" (line {mark.line + 1})" if mark is not None else "")
    metrics = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(metrics, dict) or not metrics:
        return "no metrics"
    wanted = [*RESULT_METRICS, *(VAL_METRICS if validated(run) else ())]
    lacking = [k for k in wanted if type(metrics.get(k)) not in (int, float)]
    return f"no {', '.join(lacking)}" if lacking else None


def validated(run: RunDir) -> bool:
    """Whether the run validated after each epoch (its config.yaml's data.val_size > 0); False where its config
    cannot tell (the run's own commands say what is wrong with it)."""
    try:
        saved = yaml.safe_load(run.config.read_text(encoding="utf-8"))
        return float(saved["data"]["val_size"]) > 0
    except Exception:  # missing, garbled, or not a config: no val/* is asked for
        return False


def finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run finished: its result.yaml is a whole record (result_problem)."""
    return result_problem(run_dir) is None


def result_metrics(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics of a finished run's result.yaml (write_result), checked (result_problem); DamagedFileError
    (one line: the file, what is wrong, how to test the run again) where it is not a whole record."""
    run = RunDir(run_dir)
    problem = result_problem(run.path)
    if problem is not None:
        raise DamagedFileError(f"{shown(run.result)} is not a finished run's record ({problem}): test the run again "
                               "(python -m mnist_lab.train resume=<its folder>; a sweep's job: run the sweep again)")
    return {k: float(v) for k, v in yaml.safe_load(run.result.read_text(encoding="utf-8"))["metrics"].items()}


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def cut_torn_tail(path: str | os.PathLike) -> Path | None:
    """Cut off the last line of the append-only file of lines `path` where it lacks its newline (a write cut
    short by a crash or a full disk), keeping the piece in `<name>.torn-<UTC time>` beside it; returns that
    file, or None where the file ends whole. The caller holds the file's writers' lock: no write is under way."""
    path = Path(path)
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1  # 0: the file is one torn line
        kept = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        n = 1
        while kept.exists():
            kept, n = kept.with_name(f"{kept.name.split('~')[0]}~{n}"), n + 1
        write_bytes(kept, data[keep:])
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return kept


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# One owner at a time ------------------------------------------------------------------------------------------

LOCK = ".lock"  # in a run or sweep folder; a study's is <journal>.study.lock (Optuna's own is <journal>.lock)
HEARTBEAT_S = 20.0  # how often a holder touches its lock file
STALE_S = 120.0  # a lock untouched for this long, held from another host, is taken over


class Held(Exception):
    """The lock is held by a live process (raised by Lock.acquire, turned into the caller's LockedError)."""


class Lock:
    """Who holds a run folder, a sweep folder or a study: a lock file holding the holder's host, pid, process start
    time and Slurm job, made whole under a temporary name and linked into place (os.link: atomic on NFS too, where
    flock may not reach across hosts; O_EXCL where the filesystem has no hard links), and touched every HEARTBEAT_S
    by a thread while held.

    A lock is free where its holder is gone: on this host, its pid is dead or now another process's; from
    another host, the file went STALE_S without a heartbeat (clocks in step to well within that); or this process
    is the same Slurm job, requeued (it takes its own run back). A stale lock is taken over, said in one line.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what = Path(path), what  # what: "run", "sweep", "study" and its folder, for messages
        self.me = holder()
        self._stop = None

    def acquire(self) -> None:
        self.made_folder = not self.path.parent.exists()  # removed again where nothing else was written into it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # a few rounds where another process takes over the same stale lock at once
            if self._link():
                break
            theirs, age = read_holder(self.path), heartbeat_age(self.path)
            if theirs is None or (not theirs and age < 5):  # released meanwhile, or being written: look again
                time.sleep(0.1)
                continue
            why = stale(theirs, self.me, age)
            if why is None:
                raise Held(theirs)
            if self._take_over(theirs) and why != "this process":
                logging.getLogger("mnist_lab").warning(
                    f"{shown(self.path)}: took over the lock of {self.what} from pid {theirs.get('pid')} on "
                    f"{theirs.get('host')} ({why})")
        else:
            raise Held(read_holder(self.path) or {})
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), name="lock-heartbeat", daemon=True).start()

    def _link(self) -> bool:
        tmp = self.path.with_name(f"{self.path.name}.{self.me['host']}-{os.getpid()}-{time.monotonic_ns()}")
        tmp.write_text(json.dumps(self.me) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            if tmp.stat().st_nlink == 2:  # NFS: the reply was lost though the link was made
                return True
            return self._create(tmp.read_bytes())  # a filesystem without hard links
        finally:
            tmp.unlink(missing_ok=True)

    def _create(self, content: bytes) -> bool:
        """The lock file made by exclusive create (O_EXCL, atomic on NFSv3 and later); a reader may see it empty
        for a moment, which acquire() allows for."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, theirs: dict) -> bool:
        """Remove the stale lock `theirs`, unless someone replaced it meanwhile; True where it was removed."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(self.path, aside)  # atomic: of two processes taking over, one gets the file
        except FileNotFoundError:
            return False
        if read_holder(aside) != theirs:  # a fresh lock, made after we read the stale one: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self, stop) -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if read_holder(self.path) == self.me:
            self.path.unlink(missing_ok=True)
        if getattr(self, "made_folder", False):
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.path.parent.rmdir()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder() -> dict:
    """This process, as its locks name it."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    job = os.environ.get("SLURM_JOB_ID")
    if job:  # a requeued job keeps its id and counts its starts
        me["slurm_job"], me["slurm_restart"] = job, int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return me


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc; None elsewhere): tells a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_holder(path: Path) -> dict | None:
    """The holder a lock file names; None where there is no lock file. A lock file is linked into place whole,
    so one that does not read is damaged: it names no holder ({})."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        theirs = json.loads(text)
    except ValueError:
        return {}
    return theirs if isinstance(theirs, dict) else {}


def heartbeat_age(path: Path) -> float:
    """Seconds since the lock file's holder last touched it."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def stale(theirs: dict, me: dict, age: float) -> str | None:
    """Why the lock of `theirs` is free to take (a few words), or None where its holder may still be at work."""
    if not theirs:
        return "a damaged lock file"
    if (theirs.get("slurm_job") and theirs.get("slurm_job") == me.get("slurm_job")
            and int(theirs.get("slurm_restart") or 0) < me["slurm_restart"]):
        return f"Slurm job {me['slurm_job']} was requeued"  # its earlier start was stopped
    if theirs.get("host") == me["host"]:
        pid = theirs.get("pid")
        if pid == me["pid"] and theirs.get("started") == me["started"]:
            return "this process"
        if not isinstance(pid, int) or not alive(pid) or process_start(pid) != theirs.get("started"):
            return f"pid {pid} is gone"
        return None
    if age > STALE_S:
        return f"no heartbeat for {age:.0f} s"
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def owned(path: str | os.PathLike, what: str, folder: str | os.PathLike, again: str) -> Iterator[None]:
    """Hold the lock file `path` for the block: `what` (run, sweep, study) of `folder`; a second process gets
    LockedError, one line naming the holder; `again` says how to continue it ("resume it ...")."""
    lock = Lock(path, f"{what} {shown(folder)}")
    try:
        lock.acquire()
    except Held as held:
        theirs = held.args[0] if held.args else {}
        raise LockedError(f"{what} {shown(folder)} is in use by pid {theirs.get('pid')} on {theirs.get('host')} "
                          f"(since {theirs.get('since')}): let that one finish, or stop it and {again}") from None
    try:
        yield
    finally:
        lock.release()


def owning_run(run_dir: str | os.PathLike, take: bool = True) -> contextlib.AbstractContextManager:
    """The run folder's lock for train() (take=False: a process that shares the run, a DDP rank past the first)."""
    if not take:
        return contextlib.nullcontext()
    return owned(Path(run_dir) / LOCK, "run", run_dir, "resume it (resume=<that folder>, or its sweep again)")


def clear_abandoned(run_dir: str | os.PathLike) -> None:
    """What a process killed while it ran `run_dir` left there, where no run takes the folder again (a trial that a
    stopped study recorded as failed): its lock, once stale (taken over and released), and its temporary files. A
    folder another live process holds is left alone."""
    lock = Lock(Path(run_dir) / LOCK, f"run {shown(run_dir)}")
    try:
        lock.acquire()
    except Held:
        return
    try:
        clear_stale_temps(run_dir)
    finally:
        lock.release()


# Files of a run or sweep read back, checked ----------------------------------------------------------------------

def read_yaml(path: str | os.PathLike, kind: type = dict, fix: str = "restore it, or move the run aside") -> Any:
    """The YAML file `path` (a run's config.yaml or provenance.yaml, Hydra's multirun.yaml or .hydra/overrides.yaml):
    a `kind` (dict: keys, list: items). DamagedFileError (one line: the file, what is wrong with it, `fix`) where
    it is unreadable, empty, not valid YAML or not a `kind`."""
    value, problem = _load_yaml(Path(path), kind)
    if problem is not None:
        raise DamagedFileError(f"{shown(path)} is damaged ({problem}): {fix}")
    return value


def yaml_problem(path: str | os.PathLike, kind: type = dict) -> str | None:
    """What read_yaml would find wrong with `path` (a few words), or None."""
    return _load_yaml(Path(path), kind)[1]


def _load_yaml(path: Path, kind: type) -> tuple[Any, str | None]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        return None, "not valid YAML" + (f" (line {mark.line + 1})" if mark is not None else "")
    except (OSError, UnicodeDecodeError) as err:
        return None, f"unreadable: {getattr(err, 'strerror', None) or type(err).__name__}"
    if isinstance(value, kind):
        return value, None
    return None, "empty" if value is None else f"{'no keys' if kind is dict else 'no list'}: a {type(value).__name__}"


def read_config(run_dir: str | os.PathLike, fix: str | None = None) -> dict:
    """A run's config.yaml as plain values, checked (read_yaml); the fix names .hydra/config.yaml, the config the
    run started with, where the run has it."""
    run = RunDir(run_dir)
    started = run.path / ".hydra" / CONFIG
    if fix is None:
        fix = (f"restore it from {started.relative_to(run.path)} there (the config the run started with), or move the "
               "run aside"
               if started.is_file() else "restore it, or move the run aside")
    config = read_yaml(run.config, dict, fix)
    if not isinstance(config.get("model", {}), dict) or not isinstance(config.get("data", {}), dict):

        raise DamagedFileError(f"{shown(run.config)} is damaged (model or data is not a group of keys): {fix}")
    return config


def set_aside(path: str | os.PathLike, problem: str, then: str = "the job starts again from the beginning") -> Path:
    """Rename the damaged file `path` to <name>.damaged-<UTC time> beside it, saying so in one line with what
    happens `then`; returns the new name. A sweep does this with a job's damaged last.ckpt, then trains the job
    again."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    logging.getLogger("mnist_lab").warning(f"{shown(path)} is damaged ({problem}): kept as {aside.name}; {then}")
    return aside
