"""train(cfg) end to end on generated data, on CPU."""

from __future__ import annotations

import torch

from mnist_lab.train import train
from tests.conftest import tiny_overrides


def test_fast_cpu_training_run(tiny_mnist, tmp_path, make_cfg):
    out = tmp_path / "run"
    metrics = train(make_cfg(tiny_overrides(tiny_mnist, out)))
    assert set(metrics) == {"test/acc", "test/loss"}
    assert metrics["test/acc"] > 0.5  # the generated digits are easy; chance is 0.1
    assert (out / "config.yaml").is_file() and (out / "summary.txt").is_file()
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    ckpt = torch.load(out / "checkpoints" / "best.ckpt")  # default weights_only=True
    assert ckpt["hyper_parameters"]["config"]["seed"] == 0


def test_convnet_gets_images(tiny_mnist, tmp_path, make_cfg):
    out = tmp_path / "conv"
    metrics = train(make_cfg(tiny_overrides(tiny_mnist, out) + ["model=convnet", "trainer.max_epochs=1"]))
    assert 0 <= metrics["test/acc"] <= 1
