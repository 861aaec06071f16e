"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): Hydra's submitit Slurm launcher, which can also
launch jobs under numbers of their own, so that a resumed sweep sends its unfinished jobs to Slurm as one
array while each keeps its number (and so its run folder), and stacks of jobs (stack=N; mnist_lab.stacking) as
one array task each."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    numbers: list[int] | None = None  # job numbers by position, while launch_numbered runs
    stacks: list[list[tuple[int, list[str]]]] | None = None  # the jobs of each array task, while launch_stacks runs

    def launch_numbered(self, jobs: Sequence[tuple[int, list[str]]]) -> Sequence[JobReturn]:
        """Launch (number, overrides) pairs as one Slurm array."""
        self.numbers = [n for n, _ in jobs]
        labels = [",".join(str(n) for n, _ in s) for s in self.stacks] if self.stacks else self.numbers
        renumber = _Renumber(labels)
        submitit_launcher.log.addFilter(renumber)  # its "#<position> : <overrides>" lines
        try:
            return self.launch([list(o) for _, o in jobs], initial_job_idx=0)
        finally:
            submitit_launcher.log.removeFilter(renumber)
            self.numbers = None

    def launch_stacks(self, stacks: Sequence[Sequence[tuple[int, list[str]]]]) -> list[JobReturn]:
        """Launch stacks of (number, overrides) pairs as one Slurm array, a task per stack (a stack of one: a
        job as launch_numbered's); the jobs' returns, stack after stack."""
        self.stacks = [[(n, list(o)) for n, o in stack] for stack in stacks]
        try:
            returned = self.launch_numbered([stack[0] for stack in self.stacks])
        finally:
            self.stacks = None
        return [r for ret in returned for r in (ret if isinstance(ret, list) else [ret])]

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[Any, Any]) -> JobReturn | list[JobReturn]:
        if self.stacks is not None and len(self.stacks[job_num]) > 1:  # pickled with the launcher, as numbers
            import submitit
            from hydra.core.singleton import Singleton

            from hydra_plugins.mnist_lab.resumable_sweeper import ResumableSweeper
            from mnist_lab.stacking import run_stack

            Singleton.set_state(singleton_state)
            return run_stack(self.hydra_context, self.task_function, self.config, self.stacks[job_num],
                             ResumableSweeper.train_stack, job_id=submitit.JobEnvironment().job_id)
        if self.numbers is not None:  # pickled with the launcher into each Slurm job
            job_num = self.numbers[job_num]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)


class _Renumber(logging.Filter):
    def __init__(self, numbers: Sequence[int | str]):
        super().__init__()
        self.numbers = numbers

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = re.sub(r"^\t#(\d+) :", lambda m: f"\t#{self.numbers[int(m.group(1))]} :", record.msg)
        return True
