"""The errors a user can meet. Each message is one line: what is wrong, then what to do.

They derive from Hydra's CompactHydraException, so `python -m mnist_lab.train` prints the message
alone, without a traceback (HYDRA_FULL_ERROR=1 shows it).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from hydra.errors import CompactHydraException


class MnistLabError(CompactHydraException):
    """A problem with the user's input or run, with the fix in the message."""


class DataError(MnistLabError):
    """Missing or damaged MNIST files."""


class NothingToDo(MnistLabError):
    """The command asks for what is already done (resume= of a finished run): said in a line, exit status 0."""


class JobsFailed(MnistLabError):
    """Some jobs of a sweep failed (each said why in its own line and in sweep.log); the others finished."""


class ConfigError(MnistLabError):
    """A config value that cannot work; raised before any data is read or output written."""


class CheckpointError(MnistLabError):
    """A checkpoint that is missing, damaged, not mnist_lab's, or of another model."""


class TrainingError(MnistLabError):
    """Training cannot go on (a non-finite loss)."""


class Interrupted(MnistLabError):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""


class WriteError(MnistLabError):
    """A file could not be written (a full disk, a quota, no permission); the earlier file is kept whole."""


class DamagedFileError(MnistLabError):
    """A file of a run or sweep that is not what it should hold (empty, cut short, garbled): the message names
    it and what to do."""


class LockedError(MnistLabError):
    """A run folder, sweep folder or study that another live process holds (runs.Lock)."""


class ExportCheckError(MnistLabError):
    """An exported file whose outputs differ from the eager model's."""


class ModelError(MnistLabError):
    """No usable exported model where one was asked for."""


class StudyError(MnistLabError):
    """An Optuna study that cannot start or go on: a storage that is not a study, one over another search
    space, too many failed trials, a sweep that was stopped."""


class ObjectiveError(ConfigError):
    """The study's metric is one the run does not log: every trial would fail the same way."""


@contextlib.contextmanager
def said_alone() -> Iterator[None]:
    """Around a Hydra sweeper's sweep: an MnistLabError ends the process with its line alone and exit status 1,
    without the lines Hydra prints around it ("Set the environment variable HYDRA_FULL_ERROR=1 ..."), which
    HYDRA_FULL_ERROR=1 keeps, with the traceback."""
    try:
        yield
    except MnistLabError as err:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        sys.stderr.write(f"{err}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
