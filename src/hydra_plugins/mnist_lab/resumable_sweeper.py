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
        from mnist_lab import sweeps

        return sweeps.owned_sweep(self, arguments)
