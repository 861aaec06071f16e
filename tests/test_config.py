from itertools import product

import pytest

from mnist_lab.config import options


@pytest.mark.parametrize("model,optimizer,trainer", list(product(options("model"), options("optimizer"),
                                                                   options("trainer"))))
def test_every_combination_composes(make_cfg, model, optimizer, trainer):
    cfg = make_cfg([f"model={model}", f"optimizer={optimizer}", f"trainer={trainer}", "output_dir=x"])
    assert cfg.model.name == model
    assert cfg.optimizer.name == optimizer
    assert cfg.trainer.max_epochs >= 1


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(make_cfg, experiment):
    cfg = make_cfg([f"experiment={experiment}", "output_dir=x"])
    assert cfg.trainer.max_epochs >= 1


def test_keras_seed_is_the_tutorial(make_cfg):
    cfg = make_cfg(["experiment=keras_seed", "output_dir=x"])
    assert (cfg.model.name, cfg.model.init) == ("mlp", "keras")
    optimizer = (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.rho, cfg.optimizer.eps)
    assert optimizer == ("keras_rmsprop", 1e-3, 0.9, 1e-7)
    assert (cfg.data.val_size, cfg.data.batch_size, cfg.data.normalize, cfg.trainer.max_epochs) == (0, 128, False, 5)


def test_default_optimizer_is_rmsprop_at_keras_lr(make_cfg):
    cfg = make_cfg(["output_dir=x"])
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("rmsprop", 1e-3)  # not torch's 1e-2
