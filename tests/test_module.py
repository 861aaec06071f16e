"""Models, summary, optimizers and checkpoints."""

from __future__ import annotations

import math

import torch

from mnist_lab.models import MLP, ConvNet, build_model, summary
from mnist_lab.module import LitClassifier
from mnist_lab.optim import KerasRMSprop, build_optimizer


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_mlp_layers_and_params():
    net = MLP()
    assert n_params(net.image) == 401_920 and n_params(net.prediction) == 5_130 and n_params(net) == 407_050
    assert net(torch.zeros(3, 784)).shape == (3, 10)


def test_convnet_params_and_shape():
    net = ConvNet()
    assert n_params(net) == 93_322 and net.input_shape == (1, 28, 28)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_summary_matches_keras_table():
    table = summary(MLP())
    assert "image" in table and "prediction" in table
    assert "(None, 512)" in table and "(None, 10)" in table
    assert "401,920" in table and "5,130" in table and "Total params: 407,050" in table


def test_keras_init_glorot_zero_bias():
    net = build_model("mlp", init="keras")
    bound = math.sqrt(6 / (784 + 512))
    assert net.image.weight.abs().max() <= bound and net.image.bias.abs().sum() == 0


def test_keras_rmsprop_matches_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = KerasRMSprop([p], lr=0.1, rho=0.9, eps=1e-7)
    g = torch.tensor([0.5, 1e-4])
    p.grad = g.clone()
    opt.step()
    v = 0.1 * g**2
    assert torch.allclose(p.detach(), torch.tensor([1.0, -2.0]) - 0.1 * g / torch.sqrt(v + 1e-7))


def test_default_rmsprop_is_lr_1e3():
    opt = build_optimizer(MLP().parameters(), "rmsprop", lr=1e-3)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["lr"] == 1e-3


def test_checkpoint_hparams_are_plain(tmp_path):
    import lightning as L

    module = LitClassifier(MLP(), optimizer={"name": "rmsprop", "lr": 1e-3},
                           model={"name": "mlp", "init": "torch"}, config={"seed": 0})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path)  # default weights_only=True
    assert ckpt["hyper_parameters"]["model"] == {"name": "mlp", "init": "torch"}
    loaded = LitClassifier.from_checkpoint(str(path))
    assert torch.equal(loaded.net.image.weight, module.net.image.weight)
