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

from mnist_lab.idx import RAW_FILES, check_raw_files, ensure_raw_files, raw_folder

MEAN, STD = 0.1307, 0.3081  # of the 60,000 training images, scaled to [0, 1]


def load_split(data_dir: str | os.PathLike, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,), read by torchvision from the raw files.

    Kept for the process, keyed by the files' sizes and times: the jobs of a sweep read them once."""
    from torchvision.datasets import MNIST

    root = Path(data_dir).expanduser().resolve()
    files = [raw_folder(root) / name for name in RAW_FILES if name.startswith("train" if train else "t10k")]
    key = (root, train, tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _SPLITS:
        if len(_SPLITS) >= 4:  # other data folders: keep a few
            _SPLITS.clear()
        ds = MNIST(str(root), train=train, download=False)
        _SPLITS[key] = (ds.data, ds.targets)
    return _SPLITS[key]


def float_split(data_dir: str | os.PathLike, train: bool, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """load_split's images as float32 (to_float), converted on the CPU, the same bits on every device,
    and kept for the process like the split itself."""
    images, labels = load_split(data_dir, train)
    key = ("float", id(images), normalize)
    if key not in _SPLITS:
        _SPLITS[key] = (to_float(images, normalize), labels)
    return _SPLITS[key]


_SPLITS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def to_float(images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1], then standardized with the training set's mean and std."""
    x = images.to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD) if normalize else x


def split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, training) indices of the n training images: val_size of them held out, chosen by `seed`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:val_size], order[val_size:]


class TensorBatches:
    """An iterable of (x, y) batches sliced from in-memory tensors, on whatever device they live.

    Shuffles with a generator seeded by (seed, epoch), so a run and its resumption see the same
    order. Under DDP each rank takes every world_size-th sample of that order; training pads the
    order (as DistributedSampler does) so every rank runs the same number of steps.

    With `steps` = K it yields chunks of up to K full batches instead, stacked as (k, B, ...) and
    (k, B), for mnist_lab.fastpath; the epoch's last, smaller batch comes alone, as a chunk of one.
    `limit` caps the batches per epoch (trainer.limit_train_batches, counted in batches).
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
        steps: int | None = None,
        limit: int | None = None,
    ):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.steps, self.limit = steps, limit
        self.items_done: Callable[[], int] = lambda: 0  # set by the data module: training steps run this epoch
        self._resume_at = 0  # in batches
        self._started: tuple[int, int] = (0, 0)  # (batches, items) done when the current pass began
        self._items: list[tuple[int, int]] = []  # the current pass's items, as [first batch, end batch)
        self._order: tuple[int, torch.Tensor | None] | None = None  # (epoch, indices), computed once an epoch

    # Lightning saves these in checkpoints and restores them before iterating: a run interrupted
    # mid-epoch resumes at the batch where it stopped, in the same shuffled order.
    def state_dict(self) -> dict[str, int]:
        first, items_before = self._started
        ran = self._items[: max(0, self.items_done() - items_before)]
        done = first + sum(end - start for start, end in ran)
        return {"batches_done": done if done < self.num_batches() else 0}  # a finished epoch: the next starts afresh

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state["batches_done"]

    def indices(self) -> torch.Tensor | None:
        """This rank's sample indices for the current epoch, on the data's device; None means all, in order."""
        n = len(self.y)
        if not self.shuffle and self.world_size == 1:
            return None
        epoch = self.epoch()
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                order = torch.randperm(n, generator=g)
            else:
                order = torch.arange(n)
            if self.shuffle and n % self.world_size:  # equal step counts on every rank
                order = torch.cat([order, order[: self.world_size - n % self.world_size]])
            self._order = (epoch, order[self.rank :: self.world_size].to(self.x.device))
        return self._order[1]

    def num_samples(self) -> int:
        idx = self.indices()
        return len(self.y) if idx is None else len(idx)

    def num_batches(self) -> int:
        n = -(-self.num_samples() // self.batch_size)
        return n if self.limit is None else min(n, self.limit)

    def items(self, first: int = 0) -> list[tuple[int, int]]:
        """What iterating yields from batch `first` on: [first batch, end batch) of each item."""
        n_batches = self.num_batches()
        if not self.steps:
            return [(b, b + 1) for b in range(first, n_batches)]
        n_full = min(self.num_samples() // self.batch_size, n_batches)
        chunks = [(b, min(b + self.steps, n_full)) for b in range(first, n_full, self.steps)]
        return chunks + ([(max(first, n_full), n_batches)] if n_full < n_batches and first < n_batches else [])

    def __len__(self) -> int:
        return len(self.items())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        n, size = self.num_samples(), self.batch_size
        first, self._resume_at = self._resume_at, 0
        self._started = (first, self.items_done() if first else 0)
        self._items = self.items(first)
        for start, end in self._items:
            lo, hi = start * size, min(end * size, n)
            if idx is None:  # contiguous slices are views: no copy
                x, y = self.x[lo:hi], self.y[lo:hi]
            else:
                take = idx[lo:hi]
                x, y = self.x[take], self.y[take]
            if self.steps:
                yield x.view(end - start, -1, *x.shape[1:]), y.view(end - start, -1)
            else:
                yield x, y


class MNISTDataModule(L.LightningDataModule):
    """MNIST train/val/test from torchvision's raw files, as tensors shaped for the model.

    input_shape comes from the model ((784,) for the MLP, (1, 28, 28) for the convnet).
    val_size images of the 60,000 are held out, chosen by the run's seed; val_size=0 trains on all.
    The tensors move once to the trainer's device, where every batch is sliced.
    steps: None for one batch per training_step; K for chunks of K batches (the run's fastpath.FastPlan).
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
        eval_batch_size: int = 1000,
        steps: int | None = None,
        train_limit: int | None = None,
    ):
        super().__init__()
        self.data_dir = str(Path(data_dir).expanduser().resolve())
        self.batch_size, self.val_size, self.normalize = batch_size, val_size, normalize
        self.download, self.verify_checksums = download, verify_checksums
        self.input_shape, self.seed = tuple(input_shape), seed
        self.eval_batch_size, self.steps, self.train_limit = eval_batch_size, steps, train_limit
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None

    def prepare_data(self) -> None:
        # train() has checked the files before making the run folder; this is for the data module alone
        ensure_raw_files(self.data_dir, download=self.download, checksums=self.verify_checksums)

    def _shape(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), *self.input_shape)

    def setup(self, stage: str | None = None) -> None:
        """The splits as float tensors on the trainer's device, moved there once."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.test_x is not None and self.test_x.device == device:
            return
        check_raw_files(self.data_dir, checksums=False)  # cheap; prepare_data runs on rank 0 only
        images, labels = float_split(self.data_dir, True, self.normalize)  # val_size: checked by config.validate
        test_images, test_labels = float_split(self.data_dir, False, self.normalize)
        val, train = (part.to(device) for part in split(len(labels), self.val_size, self.seed))
        x, y = self._shape(images.to(device)), labels.to(device)
        self.train_x, self.train_y = x[train], y[train]
        self.val_x, self.val_y = x[val], y[val]
        self.test_x, self.test_y = self._shape(test_images.to(device)), test_labels.to(device)

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _loader(self, x: torch.Tensor, y: torch.Tensor, shuffle: bool, batch_size: int, **kwargs) -> TensorBatches:
        trainer = self.trainer
        return TensorBatches(
            x, y, batch_size,
            shuffle=shuffle,  # training only
            seed=self.seed,
            epoch=lambda: trainer.current_epoch if trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=self._world_size(),
            **kwargs,
        )

    def train_dataloader(self) -> TensorBatches:
        batches = self._loader(self.train_x, self.train_y, True, self.batch_size,
                               steps=self.steps, limit=self.train_limit)
        if self.trainer is not None:
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            batches.items_done = lambda: progress.current.processed  # training steps run this epoch
        return batches

    # Evaluation takes no gradients: larger batches give the same per-image results, faster.
    def val_dataloader(self) -> TensorBatches | list:
        return self._loader(self.val_x, self.val_y, False, self.eval_batch_size) if self.val_size else []

    def test_dataloader(self) -> TensorBatches:
        return self._loader(self.test_x, self.test_y, False, self.eval_batch_size)
