"""On the real MNIST (../shared/mnist or MNIST_LAB_REAL_DATA); skipped with a reason where absent."""

from __future__ import annotations

import pytest

from mnist_lab.data import MNISTDataModule, check_raw_files
from mnist_lab.train import train

pytestmark = pytest.mark.real_data


def test_real_files_pass_checksums(real_mnist):
    check_raw_files(real_mnist, checksums=True)
    dm = MNISTDataModule(str(real_mnist), download=False)
    dm.setup()
    assert (len(dm.train_y), len(dm.val_y), len(dm.test_y)) == (55_000, 5_000, 10_000)


def test_one_epoch_reaches_95_percent(real_mnist, tmp_path, make_cfg):
    cfg = make_cfg([f"data.data_dir={real_mnist}", f"output_dir={tmp_path}", "trainer.max_epochs=1",
                    "trainer.enable_progress_bar=false", "threads=2"])
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.95
