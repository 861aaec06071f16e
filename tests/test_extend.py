"""Each list has one home: a third model is one registered class plus one yaml, and every place that
lists models picks it up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from torch import nn

from mnist_lab import config, models
from mnist_lab.errors import ConfigError
from tests.conftest import tiny_overrides


def test_conf_groups_and_registries_list_the_same_names():
    from mnist_lab.optim import OPTIMIZERS

    for group, registry in (("model", models.MODELS), ("optimizer", OPTIMIZERS)):
        names = {yaml.safe_load((Path(config.CONF_DIR) / group / f"{o}.yaml").read_text())["name"]
                 for o in config.options(group)}
        assert names == set(registry) == set(config.options(group)), group


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A model registered as models.py registers its own, and conf/model/tiny.yaml in a copy of conf/."""

    @models.register("tiny")
    class Tiny(nn.Sequential):
        input_shape = (784,)

        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.prediction = nn.Linear(784, num_classes)

    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    (conf / "model" / "tiny.yaml").write_text("# One linear layer: 7,850 parameters.\nname: tiny\n")
    monkeypatch.setattr(config, "CONF_DIR", str(conf))
    yield conf
    del models.MODELS["tiny"]


def test_a_third_model_is_one_class_and_one_yaml(tiny_model, tiny_mnist, tmp_path):
    from mnist_lab import compare
    from mnist_lab.module import LitClassifier, load_net
    from mnist_lab.train import train

    assert "tiny" in config.options("model")
    with pytest.raises(ConfigError, match="choose one of convnet, mlp, tiny"):
        config.check_keys(["model=resnet"])
    config.check_keys(["model=tiny"])
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(tiny_model), version_base="1.3"):
        cfg = compose(config_name="config", overrides=tiny_overrides(tiny_mnist, out) + ["model=tiny",
                                                                                        "trainer.max_epochs=1"])
        bad = compose(config_name="config", overrides=tiny_overrides(tiny_mnist, out) + ["model.name=resnet"])
    with pytest.raises(ConfigError, match="choose one of convnet, mlp, tiny"):
        config.validate(bad)
    metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1
    assert 'Model: "tiny"' in (out / "train.log").read_text()  # printed, and kept in the run's log
    assert "Total params: 7,850" in (out / "summary.txt").read_text()
    net, _ = load_net(out / "checkpoints" / "best.ckpt", model_name="tiny")
    assert isinstance(net, models.MODELS["tiny"])
    module = LitClassifier.from_checkpoint(str(out / "checkpoints" / "best.ckpt"))
    assert torch.equal(module.net.prediction.weight, net.prediction.weight)
    assert compare.count_params({"name": "tiny", "init": "torch"}) == 7_850


def test_bench_lists_registered_models(tiny_model, monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["bench.py", "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "bench.py"), run_name="__main__")
    assert "convnet,mlp,tiny" in capsys.readouterr().out.replace(" ", "").replace("\n", "")
