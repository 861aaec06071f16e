"""Plain nn.Modules. Each returns logits and declares the input shape it wants (without the batch).

A model is a class registered under its name plus conf/model/<name>.yaml (`name: <name>`):

    @register("tiny")
    class Tiny(nn.Sequential):
        input_shape = (784,)
        ...

MODELS is the one list: the config check, checkpoint loading, export and compare all read it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """A class decorator: MODELS[name] = the class, so model.name=<name> builds it."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        return cls

    return add


@register("mlp")
class MLP(nn.Sequential):
    """The Keras tutorial's model: Dense(512, relu) -> Dense(10, softmax), 407,050 parameters.

    Softmax lives in the loss (cross-entropy on logits) and in prediction, not here.
    """

    input_shape = (784,)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.image = nn.Linear(784, 512)  # 784 * 512 + 512 = 401,920
        self.relu = nn.ReLU()
        self.prediction = nn.Linear(512, num_classes)  # 512 * 10 + 10 = 5,130


@register("convnet")
class ConvNet(nn.Sequential):
    """Deep Learning with R, p.112: conv 32-64-64 3x3, max pooling, dense 64, dense 10; 93,322 parameters."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # -> 32x26x26
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # -> 32x13x13
        self.conv2 = nn.Conv2d(32, 64, 3)  # -> 64x11x11
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # -> 64x5x5
        self.conv3 = nn.Conv2d(64, 64, 3)  # -> 64x3x3
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()  # -> 576
        self.dense = nn.Linear(576, 64)
        self.relu4 = nn.ReLU()
        self.prediction = nn.Linear(64, num_classes)


def keras_init_(net: nn.Module) -> nn.Module:
    """Keras's defaults: glorot-uniform weights, zero biases (torch: kaiming-uniform, uniform bias)."""
    for m in net.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


INITS = ("torch", "keras")  # model.init: torch's own initialization, or keras_init_


def build_model(name: str, init: str = "torch") -> nn.Module:
    """A new MODELS[name], initialized as `init` says (both checked by config.validate)."""
    net = MODELS[name]()
    return keras_init_(net) if init == "keras" else net


def summary(net: nn.Module) -> str:
    """A Keras-style table: each layer's name (type), output shape and parameter count."""
    rows, hooks = [], []
    for name, m in net.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(
                lambda m, i, out, name=name: rows.append(
                    (f"{name} ({type(m).__name__})", str((None, *out.shape[1:])),
                     sum(p.numel() for p in m.parameters()))
                )
            ))
    with torch.no_grad():
        net(torch.zeros(1, *net.input_shape, device=next(net.parameters()).device))
    for h in hooks:
        h.remove()
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    width = (30, 22, 12)
    rule = "-" * sum(width)

    def line(*cols):
        return "".join(str(c).ljust(w) for c, w in zip(cols, width, strict=False)).rstrip()

    out = [f'Model: "{type(net).__name__.lower()}"', rule, line("Layer (type)", "Output Shape", "Param #"),
           "=" * sum(width)]
    for i, row in enumerate(rows):
        out += [line(row[0], row[1], f"{row[2]:,}")] + ([rule] if i < len(rows) - 1 else [])
    out += ["=" * sum(width), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", rule]
    return "\n".join(out)
