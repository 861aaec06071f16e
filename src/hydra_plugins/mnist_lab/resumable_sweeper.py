"""hydra/sweeper=resumable (conf/hydra/sweeper/resumable.yaml): see mnist_lab.sweeps."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ResumableSweeper(BasicSweeper):
    """Hydra's basic sweeper (the same jobs, numbers, folders and max_batch_size), which skips the jobs its
    sweep folder already finished and resumes the interrupted ones."""

    @staticmethod
    def train_stack(cfgs: list[Any]) -> list[Any]:
        """A stack's jobs trained together (stack=N): stack.train_stack, imported (with torch) when one trains."""
        from mnist_lab.stack import train_stack

        return train_stack(cfgs)

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_lab import figures, runs, sweeps
        from mnist_lab.errors import said_alone

        with said_alone(), runs.said_when_full(str(self.config.hydra.sweep.dir), FULL_DISK_AGAIN):
            returns = sweeps.owned_sweep(self, arguments)
            figures.all_drawn()  # exit status 1 where a full disk kept a job's figures from being drawn
            return returns


FULL_DISK_AGAIN = "run the same command again (finished jobs are kept)"  # a full disk between a sweep's jobs
