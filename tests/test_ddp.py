"""DDP on CPU: each rank sees its own shard, every sample once per epoch; logged metrics are global."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from mnist_lab.data import MNISTDataModule, TensorBatches
from mnist_lab.module import LitClassifier
from tests.conftest import REPO, tiny_overrides


def test_shards_are_disjoint_and_cover_the_epoch():
    x, y = torch.zeros(103, 1), torch.arange(103)
    for world in (2, 3, 4):
        shards = [TensorBatches(x, y, 8, shuffle=True, seed=5, rank=r, world_size=world).indices()
                  for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
        seen = torch.cat(shards)
        assert set(seen.tolist()) == set(range(103))  # all samples...
        assert len(seen) - 103 == (-103) % world  # ...once, plus the padding to an equal split


SCRIPT = """
import json, sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import mnist_lab.callbacks as callbacks
from mnist_lab.config import CONF_DIR
from mnist_lab.train import train

out = Path(sys.argv[1])
probe = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


class Recorder(callbacks.EpochTime):  # records a fingerprint of every training image a rank sees
    def on_train_start(self, trainer, module):
        self.seen = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += (batch[0].double().reshape(len(batch[0]), -1) @ probe).tolist()

    def on_train_end(self, trainer, module):
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


callbacks.EpochTime = Recorder
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[2:])
metrics = train(cfg)
if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
    (out / "metrics.json").write_text(json.dumps(metrics))
"""


def test_two_process_ddp(tiny_mnist, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = tmp_path / "run"
    # 500 training images (600 - 100 held out): 250 a rank, no padding; 1 epoch, a small lr so that
    # the test accuracy is not trivially 1
    overrides = tiny_overrides(tiny_mnist, run) + ["trainer=ddp_cpu", "trainer.max_epochs=1", "optimizer.lr=2e-6"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *overrides], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    dm = MNISTDataModule(str(tiny_mnist), val_size=100, download=False, verify_checksums=False)
    dm.setup()
    probe = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    index = {round(v, 6): i for i, v in enumerate((dm.train_x.double() @ probe).tolist())}
    assert len(index) == 500  # the generated images are all distinct
    ranks = [[index[round(v, 6)] for v in json.loads((tmp_path / f"rank{r}.json").read_text())] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 250
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(500))

    # the logged test accuracy is the global one: the saved model on the whole test set, in one process
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    module = LitClassifier.from_checkpoint(str(run / "checkpoints" / "best.ckpt"))
    with torch.no_grad():
        logits = module(dm.test_x)
    acc = float((logits.argmax(1) == dm.test_y).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits, dm.test_y))
    assert abs(metrics["test/acc"] - acc) < 1e-6, (metrics, acc)
    assert abs(metrics["test/loss"] - loss) < 1e-5, (metrics, loss)
    assert 0 < acc < 1  # not trivially equal
