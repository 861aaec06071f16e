"""Typed configs, registered with Hydra: a misspelled key or a wrong type fails at composition.

The yaml in conf/ selects and fills these; `python -m mnist_lab.train --cfg job` shows the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class DataConfig:
    data_dir: str = "${oc.env:MNIST_LAB_DATA_DIR,data}"  # holds MNIST/raw/; relative to the working dir
    batch_size: int = 128
    val_size: int = 5000  # held out of the 60,000 training images; 0 trains on all (no validation)
    normalize: bool = True  # standardize with mean 0.1307, std 0.3081 after scaling /255
    download: bool = True  # fetch from torchvision's mirrors when the files are missing
    verify_checksums: bool = True  # SHA-256 of the official files; off for your own IDX data


@dataclass
class ModelConfig:
    name: str = "mlp"  # mlp | convnet
    init: str = "torch"  # torch (kaiming-uniform) | keras (glorot-uniform weights, zero biases)


@dataclass
class OptimizerConfig:
    name: str = "rmsprop"  # rmsprop | keras_rmsprop | adam | sgd
    lr: float = 1e-3  # Keras's RMSprop default; torch's RMSprop default (1e-2) is too high here
    # Optional extras, passed to the optimizer when set (None: the optimizer's own default).
    alpha: float | None = None  # rmsprop's smoothing (torch: 0.99)
    rho: float | None = None  # keras_rmsprop's smoothing (Keras: 0.9)
    eps: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer as keyword arguments."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    max_epochs: int = 5
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 2
    limit_train_batches: Any = None  # a fraction or a number of batches; None: all
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    fast_dev_run: Any = False
    deterministic: Any = False
    gradient_clip_val: float | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0  # seeds the weights, the train/val split and the shuffling
    threads: int | None = None  # torch CPU threads; None: half the available cores, at least 1
    output_dir: str = "${hydra:runtime.output_dir}"  # the run folder
    export: bool = False  # at the end, export the best checkpoint (ONNX, .pt2, TorchScript), checked
    resume: str | None = None  # a run folder: continue that run from its checkpoints/last.ckpt


def default_threads() -> int:
    # All cores: one competing process slowed steps 3.6x on 2 cores. Half leaves room for it.
    return max(1, len(os.sched_getaffinity(0)) // 2)


MODEL_NAMES = ("mlp", "convnet")
OPTIMIZER_NAMES = ("rmsprop", "keras_rmsprop", "adam", "sgd")


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the first key whose value cannot work. Reads no data, writes nothing."""
    from mnist_lab.errors import ConfigError

    def bad(key: str, value: Any, want: str) -> None:
        raise ConfigError(f"{key}={value} is invalid: {want}")

    if cfg.model.name not in MODEL_NAMES:
        bad("model.name", cfg.model.name, f"choose one of {', '.join(MODEL_NAMES)} (or model=<name>)")
    if cfg.model.init not in ("torch", "keras"):
        bad("model.init", cfg.model.init, "choose torch or keras")
    if cfg.optimizer.name not in OPTIMIZER_NAMES:
        bad("optimizer.name", cfg.optimizer.name, f"choose one of {', '.join(OPTIMIZER_NAMES)}")
    if not cfg.optimizer.lr > 0:
        bad("optimizer.lr", cfg.optimizer.lr, "the learning rate must be > 0 (the default is 1e-3)")
    if cfg.data.batch_size < 1:
        bad("data.batch_size", cfg.data.batch_size, "use a batch size >= 1 (the default is 128)")
    n_train = train_size(cfg.data.data_dir)
    if not 0 <= cfg.data.val_size < n_train:
        bad("data.val_size", cfg.data.val_size,
            f"it must be >= 0 and smaller than the {n_train:,} training images (0: no validation)")
    if cfg.trainer.max_epochs < 1:
        bad("trainer.max_epochs", cfg.trainer.max_epochs, "train for at least 1 epoch")
    if cfg.threads is not None and cfg.threads < 1:
        bad("threads", cfg.threads, "use >= 1 CPU threads, or null for the default")


def train_size(data_dir: str) -> int:
    """The number of training images, from the label file's header when present (MNIST: 60,000)."""
    path = os.path.join(os.path.expanduser(data_dir), "MNIST", "raw", "train-labels-idx1-ubyte")
    try:
        with open(path, "rb") as f:
            header = f.read(8)
        return int.from_bytes(header[4:8], "big") if len(header) == 8 else 60_000
    except OSError:
        return 60_000


def gpus_per_node(accelerator: str, devices: Any) -> Any:
    """For hydra/launcher=slurm: GPUs to ask Slurm for, from the trainer config (None on CPU)."""
    return devices if accelerator in ("gpu", "cuda") else None


def register() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("gpus_per_node"):
        OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)


register()
