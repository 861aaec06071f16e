"""DDP on CPU: each rank sees its own shard, every sample once per epoch; logged metrics are global; two
"nodes" end as one node with two devices; a sweep of DDP jobs writes one run per job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

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

import lightning as L
import torch

from mnist_lab.config import compose
from mnist_lab.train import train

out = Path(sys.argv[1])
probe = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


class Recorder(L.Callback):  # records a fingerprint of every training image a rank sees
    def on_train_start(self, trainer, module):
        self.seen = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += (batch[0].double().reshape(len(batch[0]), -1) @ probe).tolist()

    def on_train_end(self, trainer, module):
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


metrics = train(compose(sys.argv[2:]), callbacks=[Recorder()])
if int(__import__("os").environ.get("LOCAL_RANK", 0)) == 0:
    (out / "metrics.json").write_text(json.dumps(metrics))
"""


def run_script(folder, overrides: list[str], env: dict | None = None, procs: int = 1) -> list:
    """SCRIPT in `procs` processes side by side (each with env[i] added), in `folder`; their results."""
    script = folder / "ddp_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    base = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    started = [subprocess.Popen([sys.executable, str(script), str(folder), *overrides], cwd=folder,
                                env={**base, **(env[i] if env else {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(procs)]
    return [(p, *p.communicate(timeout=300)) for p in started]


@pytest.fixture(scope="module")
def one_node(tiny_mnist, tmp_path_factory):
    """Two CPU processes on one node (trainer=ddp_cpu: Lightning starts the second): (folder, run, metrics)."""
    folder = tmp_path_factory.mktemp("one_node")
    run = folder / "run"
    # 500 training images (600 - 100 held out): 250 a rank, no padding; 1 epoch, a small lr so that
    # the test accuracy is not trivially 1
    overrides = tiny_overrides(tiny_mnist, run) + ["trainer=ddp_cpu", "trainer.max_epochs=1", "optimizer.lr=2e-6"]
    ((proc, _, err),) = run_script(folder, overrides)
    assert proc.returncode == 0, err[-3000:]
    return folder, run, json.loads((folder / "metrics.json").read_text()), overrides


def test_two_process_ddp(tiny_mnist, one_node):
    folder, run, metrics, _ = one_node
    dm = MNISTDataModule(str(tiny_mnist), val_size=100, download=False, verify_checksums=False)
    dm.setup()
    probe = torch.randn(784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    index = {round(v, 6): i for i, v in enumerate((dm.train_x.double() @ probe).tolist())}
    assert len(index) == 500  # the generated images are all distinct
    ranks = [[index[round(v, 6)] for v in json.loads((folder / f"rank{r}.json").read_text())] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 250
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(500))

    # the logged test accuracy is the global one: the saved model on the whole test set, in one process
    module = LitClassifier.from_checkpoint(str(run / "checkpoints" / "best.ckpt"))
    with torch.no_grad():
        logits = module(dm.test_x)
    acc = float((logits.argmax(1) == dm.test_y).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits, dm.test_y))
    assert abs(metrics["test/acc"] - acc) < 1e-6, (metrics, acc)
    assert abs(metrics["test/loss"] - loss) < 1e-5, (metrics, loss)
    assert 0 < acc < 1  # not trivially equal


def test_two_nodes_end_as_one_node_with_two_devices(one_node, tmp_path):
    """Two processes as two "nodes" of one device each (num_nodes=2), meeting on localhost as a cluster's
    nodes meet at MASTER_ADDR: the same sharding and all-reduce as one node with two devices."""
    _, _, single, overrides = one_node
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [o for o in overrides if not o.startswith(("trainer=", "output_dir="))]
    overrides += [f"output_dir={tmp_path / 'run'}", "trainer.accelerator=cpu", "trainer.strategy=ddp",
                  "trainer.devices=1", "trainer.num_nodes=2"]
    env = [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(i)} for i in (0, 1)]
    for proc, _, err in run_script(tmp_path, overrides, env, procs=2):
        assert proc.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text()) == single  # written by global rank 0
    record = yaml.safe_load((tmp_path / "run" / "provenance.yaml").read_text())
    assert record["host"]["world_size"] == 2 and "resumed" not in record  # one record, from global rank 0


def test_ddp_spawn_under_a_sweep(tiny_mnist, tmp_path):
    """-m model=mlp,convnet with two processes a job (ddp_spawn): one run folder, one set of event files and
    one test result per job, and nothing written anywhere else."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, sweep) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "model=mlp,convnet", "trainer=ddp_cpu",
           "trainer.strategy=ddp_spawn", f"hydra.sweep.dir={sweep}", *overrides, "trainer.max_epochs=1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no outputs/, lightning_logs/ beside it
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name.split("_")[:2] for r in runs] == [["0", "mlp"], ["1", "convnet"]]
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == ["multirun.yaml", "sweep.log"]
    ends = (sweep / "sweep.log").read_text().splitlines()  # a line per job, not per rank
    assert len(ends) == 2 and all(") finished: test/acc " in line for line in ends), ends
    assert result.stdout.count("test: ") == 2
    for run in runs:
        events = list(run.rglob("events.out.tfevents.*"))
        assert events and all(e.parent == run for e in events), events  # no version_0/, lightning_logs/
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        assert len(acc.Scalars("test/acc")) == 1 and len(acc.Scalars("val/acc")) == 1  # not once per rank
        result = yaml.safe_load((run / "result.yaml").read_text())["metrics"]
        assert result["test/acc"] == pytest.approx(acc.Scalars("test/acc")[0].value, abs=1e-6)
