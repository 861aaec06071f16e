"""MNIST as in-memory tensors: torchvision's files, checked, then batches sliced from tensors.

torchvision's per-sample pipeline (a PIL image, ToTensor and collate for every image) does Python work
per image; here the images become normalized float tensors once, and a batch is one index op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch

from mnist_lab.errors import DataError
from mnist_lab.idx import RAW_FILES, check_raw_files, raw_folder

MEAN, STD = 0.1307, 0.3081  # of the 60,000 training images, scaled to [0, 1]


def load_split(data_dir: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,), read by torchvision from the raw files."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(Path(data_dir).expanduser().resolve()), train=train, download=False)
    return ds.data, ds.targets


def to_float(images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1], then standardized with the training set's mean and std."""
    x = images.to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD) if normalize else x


class TensorBatches:
    """An iterable of (x, y) batches sliced from in-memory tensors.

    Shuffles with a generator seeded by (seed, epoch), so a run and its resumption see the same
    order. Under DDP each rank takes every world_size-th sample of that order; training pads the
    order (as DistributedSampler does) so every rank runs the same number of steps.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.batches_done: Callable[[], int] = lambda: 0  # set by the data module for training
        self._resume_at = 0

    # Lightning saves these in checkpoints and restores them before iterating: a run interrupted
    # mid-epoch resumes at the batch where it stopped, in the same shuffled order.
    def state_dict(self) -> dict[str, int]:
        done = self.batches_done()
        return {"batches_done": done if done < len(self) else 0}  # a finished epoch: the next starts afresh

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state["batches_done"]

    def indices(self) -> torch.Tensor | None:
        """This rank's sample indices for the current epoch; None means all, in order."""
        n = len(self.y)
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.shuffle and n % self.world_size:  # equal step counts on every rank
            order = torch.cat([order, order[: self.world_size - n % self.world_size]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        idx = self.indices()
        n = len(self.y) if idx is None else len(idx)
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        n = len(self.y) if idx is None else len(idx)
        first, self._resume_at = self._resume_at * self.batch_size, 0
        for start in range(first, n, self.batch_size):
            if idx is None:  # contiguous slices are views: no copy
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                take = idx[start : start + self.batch_size]
                yield self.x[take], self.y[take]


class MNISTDataModule(L.LightningDataModule):
    """MNIST train/val/test from torchvision's raw files, as tensors shaped for the model.

    input_shape comes from the model ((784,) for the MLP, (1, 28, 28) for the convnet).
    val_size images of the 60,000 are held out, chosen by the run's seed; val_size=0 trains on all.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        normalize: bool = True,
        download: bool = True,
        verify_checksums: bool = True,
        input_shape: tuple[int, ...] = (784,),
        seed: int = 0,
    ):
        super().__init__()
        self.data_dir = str(Path(data_dir).expanduser().resolve())
        self.batch_size, self.val_size, self.normalize = batch_size, val_size, normalize
        self.download, self.verify_checksums = download, verify_checksums
        self.input_shape, self.seed = tuple(input_shape), seed
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None

    def prepare_data(self) -> None:
        folder = raw_folder(self.data_dir)
        if self.download and not all((folder / name).is_file() for name in RAW_FILES):
            from torchvision.datasets import MNIST

            try:
                MNIST(self.data_dir, train=True, download=True)  # fetches all four, md5-checked
            except (RuntimeError, OSError) as err:
                first = str(err).strip().splitlines()[0]
                raise DataError(
                    f"MNIST download into {folder} failed ({first}). Offline? Place the four raw IDX "
                    f"files ({', '.join(RAW_FILES)}) there, or set data.data_dir= (or MNIST_LAB_DATA_DIR) "
                    "to a folder holding MNIST/raw/."
                ) from None
        check_raw_files(self.data_dir, checksums=self.verify_checksums)

    def _shape(self, images: torch.Tensor) -> torch.Tensor:
        return to_float(images, self.normalize).reshape(len(images), *self.input_shape)

    def setup(self, stage: str | None = None) -> None:
        if self.test_x is not None:
            return
        check_raw_files(self.data_dir, checksums=False)  # cheap; prepare_data runs on rank 0 only
        images, labels = load_split(self.data_dir, train=True)  # val_size is checked by config.validate
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :]
        x = self._shape(images)
        self.train_x, self.train_y = x[train], labels[train]
        self.val_x, self.val_y = x[val], labels[val]
        test_images, self.test_y = load_split(self.data_dir, train=False)
        self.test_x = self._shape(test_images)

    def _loader(self, x: torch.Tensor, y: torch.Tensor, shuffle: bool) -> TensorBatches:
        trainer = self.trainer
        return TensorBatches(
            x, y, self.batch_size,
            shuffle=shuffle,  # training only
            seed=self.seed,
            epoch=lambda: trainer.current_epoch if trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def train_dataloader(self) -> TensorBatches:
        batches = self._loader(self.train_x, self.train_y, shuffle=True)
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            batches.batches_done = lambda: progress.current.processed  # steps taken this epoch
        return batches

    def val_dataloader(self) -> TensorBatches | list:
        return self._loader(self.val_x, self.val_y, shuffle=False) if self.val_size else []

    def test_dataloader(self) -> TensorBatches:
        return self._loader(self.test_x, self.test_y, shuffle=False)
