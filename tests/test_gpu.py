"""The fast path on a GPU: CUDA graphs replay the same steps as eager chunks. Skipped without CUDA.

    make gpu-check                                   # these tests and the GPU rows of scripts/bench.py
    python scripts/gpu_check.py --data DIR           # the same, with a Python that has the dependencies
"""

from __future__ import annotations

import signal

import pytest
import torch

from mnist_lab.fastpath import ChunkRunner
from mnist_lab.models import build_model
from mnist_lab.module import load_checkpoint
from mnist_lab.optim import build_optimizer
from mnist_lab.train import train
from tests.conftest import tiny_overrides, train_interrupted

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].double().cpu() - b[k].double().cpu()).abs().max().item() for k in a)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def runner_pair(model: str, optimizer: str, **extra):
    torch.manual_seed(0)
    nets = [build_model(model).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    runners = [ChunkRunner(net, build_optimizer(net.parameters(), optimizer, lr=1e-3, capturable=True, **extra),
                           batch_size=64, cuda_graph=graph) for net, graph in zip(nets, (False, True), strict=True)]
    return nets, runners


@pytest.mark.parametrize("model, optimizer, extra", [
    ("mlp", "rmsprop", {}), ("mlp", "adam", {}), ("mlp", "keras_rmsprop", {}), ("mlp", "sgd", {"momentum": 0.9}),
    ("convnet", "rmsprop", {}),
])
def test_graph_replays_the_eager_steps(model, optimizer, extra, monkeypatch):
    # cuDNN's default convolution algorithms are not deterministic: two eager convnet runs differ
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    nets, (eager, graph) = runner_pair(model, optimizer, **extra)
    shape = (64, *nets[0].input_shape)
    g = torch.Generator(device="cuda").manual_seed(1)
    chunks = [(torch.randn(40, *shape, device="cuda", generator=g),
               torch.randint(0, 10, (40, 64), device="cuda", generator=g)) for _ in range(2)]
    tail = (torch.randn(1, 17, *shape[1:], device="cuda", generator=g),
            torch.randint(0, 10, (1, 17), device="cuda", generator=g))
    for xs, ys in [*chunks, tail]:
        a, b = eager(xs, ys), graph(xs, ys)
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.equal(a[1], b[1])
    # 40 steps: a graph of ChunkRunner.GRAPH_STEPS = 32, one of 8; the tail ran eagerly
    assert sorted(s[0] for s in graph.graphs) == [8, 32]
    assert max_diff(nets[0].state_dict(), nets[1].state_dict()) <= 1e-5


def test_graph_run_matches_eager_and_plain_runs(tiny_mnist, tmp_path, make_cfg, capsys):
    runs = {}
    for name, extra in (("graph", []), ("eager", ["fast.cuda_graph=false"]), ("plain", ["fast.enabled=false"])):
        runs[name] = train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / name) + extra))
    assert "steps per training_step, CUDA graphs" in capsys.readouterr().out
    for name in ("eager", "plain"):
        assert max_diff(weights(tmp_path / "graph"), weights(tmp_path / name)) <= 1e-5, name
        assert runs[name]["test/acc"] == pytest.approx(runs["graph"]["test/acc"], abs=1e-6)


def test_replay_after_resume(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    overrides = tiny_overrides(tiny_mnist, tmp_path / "whole") + ["trainer.max_epochs=3", "fast.steps=4"]
    whole = train(make_cfg(overrides))
    out = tmp_path / "cut"
    cut = train_interrupted(make_cfg, overrides, out, lambda runner, xs: runner.graphs and len(xs) == 4,
                            signal.SIGINT, "resume with", monkeypatch)
    resumed = train(make_cfg(cut + [f"resume={out}"]))  # captures again, on the restored tensors
    assert resumed["test/acc"] == pytest.approx(whole["test/acc"], abs=1e-6)
    assert max_diff(weights(tmp_path / "whole"), weights(out)) <= 1e-5


def test_bf16_mixed_graph_matches_eager(tiny_mnist, tmp_path, make_cfg):
    for name, extra in (("graph", []), ("eager", ["fast.cuda_graph=false"])):
        train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / name) + ["trainer.precision=bf16-mixed"] + extra))
    assert max_diff(weights(tmp_path / "graph"), weights(tmp_path / "eager")) <= 1e-5


def test_compiled_graph_matches_eager(tiny_mnist, tmp_path, make_cfg):
    for name, extra in (("compiled", ["fast.compile=true"]), ("eager", ["fast.cuda_graph=false"])):
        train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / name) + extra))
    assert max_diff(weights(tmp_path / "compiled"), weights(tmp_path / "eager")) <= 1e-4  # fused kernels round apart


def test_fp16_mixed_takes_the_plain_path(tiny_mnist, tmp_path, make_cfg, capsys):
    train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / "run") + ["trainer.precision=16-mixed",
                                                                   "trainer.max_epochs=1"]))
    assert "plain path, one step per training_step (16-mixed needs a gradient scaler" in capsys.readouterr().out
