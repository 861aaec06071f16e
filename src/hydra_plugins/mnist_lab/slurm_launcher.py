"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): Hydra's submitit Slurm launcher, which can also
launch jobs under numbers of their own, so that a resumed sweep sends its unfinished jobs to Slurm as one
array while each keeps its number (and so its run folder)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    numbers: list[int] | None = None  # job numbers by position, while launch_numbered runs

    def launch_numbered(self, jobs: Sequence[tuple[int, list[str]]]) -> Sequence[JobReturn]:
        """Launch (number, overrides) pairs as one Slurm array."""
        self.numbers = [n for n, _ in jobs]
        renumber = _Renumber(self.numbers)
        submitit_launcher.log.addFilter(renumber)  # its "#<position> : <overrides>" lines
        try:
            return self.launch([list(o) for _, o in jobs], initial_job_idx=0)
        finally:
            submitit_launcher.log.removeFilter(renumber)
            self.numbers = None

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[Any, Any]) -> JobReturn:
        if self.numbers is not None:  # pickled with the launcher into each Slurm job
            job_num = self.numbers[job_num]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)


class _Renumber(logging.Filter):
    def __init__(self, numbers: list[int]):
        super().__init__()
        self.numbers = numbers

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = re.sub(r"^\t#(\d+) :", lambda m: f"\t#{self.numbers[int(m.group(1))]} :", record.msg)
        return True
