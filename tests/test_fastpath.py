"""The fast path on the CPU: chunks of K steps are the same arithmetic as one step per training_step.

Tiny generated data: 500 training images in batches of 32, i.e. 15 full batches and one of 20 an epoch.
"""

from __future__ import annotations

import dataclasses
import signal

import pytest
import torch
from omegaconf import OmegaConf

from mnist_lab import fastpath
from mnist_lab.data import TensorBatches
from mnist_lab.errors import TrainingError
from mnist_lab.fastpath import ChunkRunner
from mnist_lab.models import build_model
from mnist_lab.module import load_checkpoint
from mnist_lab.optim import build_optimizer
from mnist_lab.train import train
from tests.conftest import fake_slurm, tiny_overrides, train_interrupted


def cpu(data, out) -> list[str]:
    """tiny_overrides on the CPU, also where a GPU is visible: these tests are about the CPU path."""
    return tiny_overrides(data, out) + ["trainer.accelerator=cpu"]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# Batches and chunks ------------------------------------------------------------------------------

def test_chunks_hold_the_same_batches_in_the_same_order():
    x, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    plain = list(TensorBatches(x, y, 8, shuffle=True, seed=3))
    chunked = TensorBatches(x, y, 8, shuffle=True, seed=3, steps=5)
    chunks = list(chunked)
    assert [tuple(c[1].shape) for c in chunks] == [(5, 8), (5, 8), (2, 8), (1, 4)]  # 12 full batches, then 4
    assert len(chunked) == 4
    flat = [b for xs, ys in chunks for b in zip(xs, ys, strict=True)]
    assert len(flat) == len(plain) == 13
    for (xa, ya), (xb, yb) in zip(plain, flat, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_chunk_state_counts_batches_and_resumes_at_a_chunk():
    x, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    batches = TensorBatches(x, y, 8, shuffle=True, seed=3, steps=5)
    done = 0
    batches.items_done = lambda: done
    chunks = list(batches)
    done = 2  # two chunks trained: 10 batches
    assert batches.state_dict() == {"batches_done": 10}
    again = TensorBatches(x, y, 8, shuffle=True, seed=3, steps=5)
    again.load_state_dict({"batches_done": 10})
    again.items_done = lambda: 2  # Lightning restores its count of trained items
    rest = list(again)
    assert [tuple(c[1].shape) for c in rest] == [(2, 8), (1, 4)]
    assert torch.equal(rest[0][1], chunks[2][1]) and torch.equal(rest[1][1], chunks[3][1])
    again.items_done = lambda: 3
    assert again.state_dict() == {"batches_done": 12}
    again.items_done = lambda: 4
    assert again.state_dict() == {"batches_done": 0}  # the epoch is over: the next starts afresh


def test_limit_counts_batches_not_chunks():
    x, y = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    chunks = list(TensorBatches(x, y, 8, shuffle=True, steps=5, limit=7))
    assert [tuple(c[1].shape) for c in chunks] == [(5, 8), (2, 8)]


def test_auto_steps():
    assert fastpath.auto_steps("cpu", 429) == 32
    assert fastpath.auto_steps("cuda", 429) == 429  # the whole epoch: one graph
    assert fastpath.auto_steps("cuda", 1718) == 859  # two equal chunks, not 1024 + 694


# The runner ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, extra", [("rmsprop", {}), ("adam", {}), ("keras_rmsprop", {}),
                                         ("sgd", {"momentum": 0.9})])
def test_warm_up_leaves_no_trace(name, extra):
    torch.manual_seed(0)
    net = build_model("mlp")
    opt = build_optimizer(net.parameters(), name, lr=1e-2, **extra)
    runner = ChunkRunner(net, opt, batch_size=16)
    xs, ys = torch.randn(4, 16, 784), torch.randint(0, 10, (4, 16))
    runner(xs[:1], ys[:1])  # optimizer state exists: the warm-up must put it back, not zero it
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {k: v.clone() for p in net.parameters() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    runner.warm_up(xs, ys)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    after = {k: v for p in net.parameters() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())


def test_warm_up_of_a_fresh_optimizer_is_a_fresh_start():
    torch.manual_seed(0)
    xs, ys = torch.randn(3, 16, 784), torch.randint(0, 10, (3, 16))
    nets = [build_model("mlp") for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    runners = [ChunkRunner(n, build_optimizer(n.parameters(), "adam", lr=1e-3), batch_size=16) for n in nets]
    runners[1].warm_up(xs, ys)  # creates Adam's state, then zeroes it: a fresh start
    out = [r(xs, ys) for r in runners]
    assert torch.equal(out[0][0], out[1][0])
    assert max_diff(nets[0].state_dict(), nets[1].state_dict()) == 0


def test_graph_pieces_replay_like_eager_steps(monkeypatch):
    """The replay bookkeeping, on the CPU: a stand-in for capture runs the captured steps at replay."""

    class Graph:
        def __init__(self, runner, xs, ys, out):
            self.replay = lambda: [o.copy_(r) for o, r in zip(out, runner._chunk(xs, ys, set_to_none=False),
                                                              strict=True)]

    def capture(self, xs, ys):
        static_x, static_y = xs.clone(), ys.clone()
        self.warm_up(static_x, static_y)
        out = (torch.zeros(len(xs)), torch.zeros(len(xs), dtype=torch.long))
        return Graph(self, static_x, static_y, out), static_x, static_y, out

    monkeypatch.setattr(ChunkRunner, "_capture", capture)
    torch.manual_seed(0)
    nets = [build_model("mlp") for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    eager, graph = (ChunkRunner(n, build_optimizer(n.parameters(), "adam", lr=1e-3), batch_size=4, cuda_graph=g)
                    for n, g in zip(nets, (False, True), strict=True))
    chunks = [(torch.randn(k, b, 784), torch.randint(0, 10, (k, b))) for k, b in
              ((70, 4), (1, 3), (70, 4), (5, 4), (7, 4), (1, 3))]  # 32 + 32 + 6, a last batch, ...
    for xs, ys in chunks:
        a, b = eager(xs, ys), graph(xs, ys)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sorted(s[0] for s in graph.graphs) == [5, 6, 32]  # then 7 steps ran eagerly: MAX_GRAPHS = 3
    assert max_diff(nets[0].state_dict(), nets[1].state_dict()) == 0


def test_optimizer_state_follows_the_path():
    net = build_model("mlp")
    opt = build_optimizer(net.parameters(), "rmsprop", lr=1e-3)
    ChunkRunner(net, opt, batch_size=8)(torch.randn(1, 8, 784), torch.randint(0, 10, (1, 8)))
    fastpath.place_optimizer_state(opt, capturable=False)
    assert all(opt.state[p]["step"].device.type == "cpu" for p in net.parameters())
    assert all(g["capturable"] is False for g in opt.param_groups)


def test_plan_resolves_k_once_and_says_why_the_plain_path_runs(make_cfg):
    assert fastpath.plan(make_cfg([]), "cpu", 429) == fastpath.FastPlan(steps=32)
    assert fastpath.plan(make_cfg([]), "cuda", 429) == fastpath.FastPlan(steps=429, cuda_graph=True)
    clipped = fastpath.plan(make_cfg(["fast.steps=8", "trainer.gradient_clip_val=1.0", "fast.compile=true"]), "cpu", 9)
    assert clipped == fastpath.FastPlan(steps=8, compile=True, clip_norm=1.0)
    assert clipped.describe() == "fast path: 8 steps per training_step, compiled"
    plain = fastpath.plan(make_cfg(["fast.enabled=false"]), "cuda", 429)
    assert not plain.fast and plain.describe() == "plain path, one step per training_step (fast.enabled=false)"
    assert "bf16-mixed" in fastpath.plan(make_cfg(["trainer.precision=16-mixed"]), "cuda", 429).plain_because
    assert "DDP" in fastpath.plan(make_cfg(["trainer=ddp_cpu"]), "cpu", 429).plain_because
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.steps = 4


def test_auto_trainer_cannot_tell_slurm_what_to_ask_for(tiny_mnist, tmp_path, monkeypatch):
    from mnist_lab.cmdline import prepare_argv
    from mnist_lab.config import gpus_per_node
    from mnist_lab.errors import ConfigError

    fake_slurm(tmp_path, monkeypatch, answers=True)
    assert gpus_per_node("gpu", 2) == 2 and gpus_per_node("cpu", 2) is None
    with pytest.raises(ConfigError, match="trainer=gpu .* for GPU jobs, trainer=cpu for CPU jobs"):
        prepare_argv(["train", "-m", "hydra/launcher=slurm", "seed=0,1"])  # before anything is submitted
    data = [f"data.data_dir={tiny_mnist}", "data.verify_checksums=false", "data.val_size=100"]
    for fine in (["trainer=cpu"], ["trainer=gpu"], ["hydra.launcher.gpus_per_node=1"]):
        prepare_argv(["train", "-m", "hydra/launcher=slurm", "seed=0,1", *fine, *data])


# Whole runs ---------------------------------------------------------------------------------------

def test_chunks_train_exactly_like_single_steps(tiny_mnist, tmp_path, make_cfg, capsys, monkeypatch):
    runs, plans, plan = {}, [], fastpath.plan
    monkeypatch.setattr(fastpath, "plan", lambda *args: plans.append(plan(*args)) or plans[-1])
    for name, extra in (("plain", ["fast.enabled=false"]), ("k4", ["fast.steps=4"]), ("auto", [])):
        runs[name] = train(make_cfg(cpu(tiny_mnist, tmp_path / name) + extra))
    assert [p.steps for p in plans] == [None, 4, 32]  # decided once per run
    out = capsys.readouterr().out
    assert "device: CPU (1 thread); plain path, one step per training_step (fast.enabled=false)" in out
    assert "device: CPU (1 thread); fast path: 4 steps per training_step" in out
    assert "fast path: 32 steps per training_step" in out
    for name in ("k4", "auto"):
        assert max_diff(weights(tmp_path / "plain"), weights(tmp_path / name)) <= 1e-6
        assert runs[name] == pytest.approx(runs["plain"], abs=1e-6)
        assert load_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")["global_step"] == 32


def test_gradient_clipping_on_the_fast_path(tiny_mnist, tmp_path, make_cfg):
    clip = ["trainer.gradient_clip_val=0.05", "optimizer.lr=0.01"]
    train(make_cfg(cpu(tiny_mnist, tmp_path / "plain") + clip + ["fast.enabled=false"]))
    train(make_cfg(cpu(tiny_mnist, tmp_path / "fast") + clip + ["fast.steps=4"]))
    train(make_cfg(cpu(tiny_mnist, tmp_path / "free") + ["optimizer.lr=0.01", "fast.steps=4"]))
    assert max_diff(weights(tmp_path / "plain"), weights(tmp_path / "fast")) <= 1e-6
    assert max_diff(weights(tmp_path / "plain"), weights(tmp_path / "free")) > 1e-3  # clipping did act


def test_limit_train_batches_counts_steps(tiny_mnist, tmp_path, make_cfg):
    train(make_cfg(cpu(tiny_mnist, tmp_path / "run") + ["fast.steps=4", "trainer.limit_train_batches=6"]))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 12  # 2 epochs x 6


def test_interrupt_inside_a_chunk_then_resume(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    overrides = cpu(tiny_mnist, tmp_path / "whole") + ["trainer.max_epochs=3", "fast.steps=4"]
    whole = train(make_cfg(overrides))

    def step_21_to_24(runner, xs):  # the chunk of steps 21-24 (epoch 2: 17-20, 21-24, 25-28, 29-31, 32)
        return runner.optimizer.state and len(xs) == 4 and next(iter(runner.optimizer.state.values()))["step"] >= 20

    out = tmp_path / "cut"
    cut = train_interrupted(make_cfg, overrides, out, step_21_to_24, signal.SIGINT,
                            r"SIGINT received: stopped after step 24 \(epoch 2\)", monkeypatch)
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 24  # the chunk finished
    resumed = train(make_cfg(cut + [f"resume={out}"]))
    assert resumed == pytest.approx(whole, abs=1e-6)
    assert max_diff(weights(tmp_path / "whole"), weights(out)) <= 1e-6


def test_interrupt_in_an_epochs_last_step_stops_after_its_validation(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = cpu(tiny_mnist, tmp_path / "whole") + ["trainer.max_epochs=3"]
    whole = train(make_cfg(overrides))

    def epoch_2s_last_batch(runner, xs):
        return xs.shape[1] == 20 and next(iter(runner.optimizer.state.values()))["step"] == 31

    out = tmp_path / "cut"
    cut = train_interrupted(make_cfg, overrides, out, epoch_2s_last_batch, signal.SIGTERM,
                            r"SIGTERM received: stopped after step 32 \(at the end of epoch 2\)", monkeypatch)
    assert train(make_cfg(cut + [f"resume={out}"])) == pytest.approx(whole, abs=1e-6)
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [15, 31, 47]  # every epoch validated, at its step


def test_nonfinite_loss_inside_a_chunk_names_its_step(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    original = ChunkRunner.__call__

    def diverging(self, xs, ys):
        losses, correct = original(self, xs, ys)
        if len(losses) == 4 and next(iter(self.optimizer.state.values()))["step"] >= 24:  # steps 21-24
            losses = losses.clone()
            losses[2:] = float("inf")
        return losses, correct

    monkeypatch.setattr(ChunkRunner, "__call__", diverging)
    with pytest.raises(TrainingError, match=r"loss became non-finite \(inf\) at step 23 \(epoch 2\)"):
        train(make_cfg(cpu(tiny_mnist, tmp_path / "run") + ["fast.steps=4"]))


def test_the_config_of_a_run_records_the_fast_path(tiny_mnist, tmp_path, make_cfg):
    train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / "run") + ["trainer.max_epochs=1"]))
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.fast.enabled is True and saved.trainer.accelerator == "auto"
