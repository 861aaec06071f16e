"""The convnet's feature maps for one test digit: every channel of every conv layer (after its ReLU).

    python -m mnist_lab.activations checkpoint=outputs/runs/<time> index=0

`checkpoint` is a convnet run folder (its checkpoints/best.ckpt) or a .ckpt file; `index` picks the
test image. Writes activations_<index>.png into the run folder and logs the same figure to the run's
TensorBoard events as `activations/test_<index>`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mnist_lab import drawing, usage
from mnist_lab.config import CONF_DIR, VERSION_BASE
from mnist_lab.data import load_split, to_float
from mnist_lab.errors import CheckpointError, ConfigError
from mnist_lab.loggers import log_to_run
from mnist_lab.module import load_net
from mnist_lab.runs import RunDir, resolve_checkpoint


def feature_maps(net: torch.nn.Module, image: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(layer name, output (C, H, W)) of each ReLU that follows a conv layer, for one normalized image."""
    names = dict(net.named_modules())
    convs = [n for n, m in names.items() if isinstance(m, torch.nn.Conv2d)]
    maps, hooks = [], []
    for conv in convs:
        relu = conv.replace("conv", "relu")  # ConvNet names them conv1/relu1, ...
        layer = names.get(relu, names[conv])
        hooks.append(layer.register_forward_hook(
            lambda m, i, out, conv=conv: maps.append((conv, out[0].detach().clone()))))
    with torch.no_grad():
        net(image.reshape(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return maps


def activations(checkpoint: str, index: int = 0, data_dir: str | None = None) -> Path:
    """Draw the feature maps of test image `index` into the run's activations_<index>.png and its loggers;
    returns the PNG's path."""
    ckpt_path = resolve_checkpoint(checkpoint)
    net, ckpt = load_net(ckpt_path)
    if not any(isinstance(m, torch.nn.Conv2d) for m in net.modules()):
        raise CheckpointError(f"{ckpt_path} holds a {ckpt['hyper_parameters']['model']['name']}, which has no conv "
                              "layers: give a convnet checkpoint (python -m mnist_lab.train model=convnet)")
    config = ckpt["hyper_parameters"].get("config") or {}
    data = config.get("data", {})
    images, labels = load_split(data_dir or data.get("data_dir", "data"), train=False)
    if not 0 <= index < len(labels):

        raise ConfigError(f"index={index} is invalid: choose a test image in [0, {len(labels)})")
    x = to_float(images[index: index + 1], data.get("normalize", True))
    maps = feature_maps(net, x)
    pred = int(net(x.reshape(1, 1, 28, 28)).argmax())
    fig = drawing.feature_maps(images[index].numpy(), [(n, m.numpy()) for n, m in maps],
                             label=f"test {index}: label {int(labels[index])}, predicted {pred}")
    run = RunDir.holding(ckpt_path)
    log_to_run(run, config, {f"activations/test_{index}": fig}, step=int(ckpt.get("global_step", 0)))
    return drawing.save(fig, run.figure(f"activations_{index}"))


@hydra.main(config_path=CONF_DIR, config_name="activations", version_base=VERSION_BASE)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)
    print(f"feature maps: {activations(cfg.checkpoint, cfg.index, cfg.data_dir)}")


if __name__ == "__main__":
    usage.start("activations", main)
