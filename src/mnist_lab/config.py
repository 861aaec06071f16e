"""Typed configs, registered with Hydra, and every check of a config: a misspelled key or a wrong type
fails at composition (or, on the command line, with a suggestion), a value that cannot work in validate().

The yaml in conf/ selects and fills these; `python -m mnist_lab.train --cfg job` shows the result.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from mnist_lab.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")  # conf/ beside src/: config groups, commands


@dataclass
class DataConfig:
    data_dir: str = "${oc.env:MNIST_LAB_DATA_DIR,data}"  # holds MNIST/raw/; relative to the working dir
    batch_size: int = 128
    val_size: int = 5000  # held out of the 60,000 training images; 0 trains on all (no validation)
    eval_batch_size: int = 1000  # validation and test: no gradients, so larger batches only run faster
    normalize: bool = True  # standardize with mean 0.1307, std 0.3081 after scaling /255
    download: bool = True  # fetch from torchvision's mirrors when the files are missing
    verify_checksums: bool = True  # SHA-256 of the official files; off for your own IDX data


@dataclass
class ModelConfig:
    name: str = "mlp"  # a name in models.MODELS; conf/model/ has a yaml for each
    init: str = "torch"  # torch (kaiming-uniform) or keras (glorot-uniform weights, zero biases): models.INITS


@dataclass
class OptimizerConfig:
    name: str = "rmsprop"  # a name in optim.OPTIMIZERS; conf/optimizer/ has a yaml for each
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

    accelerator: str = "auto"  # auto: the GPU where one is visible, else the CPU
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
    benchmark: bool | None = None  # cudnn.benchmark: cuDNN times its convolution algorithms once per shape (GPU)
    gradient_clip_val: float | None = None


@dataclass
class TensorBoardConfig:
    """TensorBoard's event files in the run folder: scalars, hparams (the HPARAMS tab), images."""


@dataclass
class CSVConfig:
    """metrics.csv (one row per logging step) and hparams.yaml in the run folder."""


@dataclass
class MLflowConfig:
    """An MLflow run per training run: params, metrics, figures as artifacts (pip install -e '.[mlflow]')."""

    experiment_name: str = "mnist_lab"
    tracking_uri: str | None = None  # null: a local store, mlruns/ in the sweep folder under -m, else in the run folder


@dataclass
class LoggerConfig:
    """The loggers that conf/logger/ selects (logger=csv, logger=[tensorboard,mlflow]); an unset one is off."""

    tensorboard: TensorBoardConfig | None = None
    csv: CSVConfig | None = None
    mlflow: MLflowConfig | None = None


@dataclass
class FastConfig:
    """K optimizer steps per training_step, replayed as CUDA graphs on a GPU (src/mnist_lab/fastpath.py)."""

    enabled: bool = True  # false: Lightning's plain loop, one batch per training_step
    steps: int | None = None  # K (Keras: steps_per_execution); null: auto (an epoch on a GPU, 32 on a CPU)
    cuda_graph: bool = True  # on a GPU, capture 32 steps of full batches once and replay them
    compile: bool = False  # torch.compile the forward and the optimizer step (seconds of warm-up per run)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    seed: int = 0  # seeds the weights, the train/val split and the shuffling
    threads: int | None = None  # torch CPU threads; None: half the available cores, at least 1
    output_dir: str = "${hydra:runtime.output_dir}"  # the run folder
    export: bool = False  # at the end, export the best checkpoint (ONNX, .pt2, TorchScript), checked
    resume: str | None = None  # a run folder: continue that run from its checkpoints/last.ckpt


def default_threads() -> int:
    """Half the cores this process may use, at least 1: a competing process then cannot slow every
    step by taking a core that a thread waits on (README, Threads)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def options(group: str) -> list[str]:
    """The choices of a config group: the yaml files in conf/<group>/."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the first key whose value cannot work. Reads no data, writes nothing."""
    from mnist_lab.idx import train_size
    from mnist_lab.models import INITS, MODELS
    from mnist_lab.optim import OPTIMIZERS

    def bad(key: str, value: Any, want: str) -> None:
        raise ConfigError(f"{key}={value} is invalid: {want}")

    if cfg.model.name not in MODELS:
        bad("model.name", cfg.model.name, f"choose one of {', '.join(sorted(MODELS))} (or model=<name>)")
    if cfg.model.init not in INITS:
        bad("model.init", cfg.model.init, f"choose {' or '.join(INITS)}")
    if cfg.optimizer.name not in OPTIMIZERS:
        bad("optimizer.name", cfg.optimizer.name, f"choose one of {', '.join(OPTIMIZERS)}")
    if not cfg.optimizer.lr > 0:
        bad("optimizer.lr", cfg.optimizer.lr, "the learning rate must be > 0 (the default is 1e-3)")
    if cfg.data.batch_size < 1:
        bad("data.batch_size", cfg.data.batch_size, "use a batch size >= 1 (the default is 128)")
    if cfg.data.eval_batch_size < 1:
        bad("data.eval_batch_size", cfg.data.eval_batch_size, "use a batch size >= 1 (the default is 1000)")
    if cfg.fast.steps is not None and cfg.fast.steps < 1:
        bad("fast.steps", cfg.fast.steps, "use >= 1 optimizer steps per training_step, or null for auto")
    n_train = train_size(cfg.data.data_dir)
    if not 0 <= cfg.data.val_size < n_train:
        bad("data.val_size", cfg.data.val_size,
            f"it must be >= 0 and smaller than the {n_train:,} training images (0: no validation)")
    if cfg.trainer.max_epochs < 1:
        bad("trainer.max_epochs", cfg.trainer.max_epochs, "train for at least 1 epoch")
    if cfg.threads is not None and cfg.threads < 1:
        bad("threads", cfg.threads, "use >= 1 CPU threads, or null for the default")
    if cfg.logger.mlflow is not None and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs MLflow, which is not installed: pip install -e '.[mlflow]' "
                          "(or choose logger=tensorboard or logger=csv)")


# What resume= may change: where the data is and how the run shows itself, never what it computes.
RESUME_MAY_SET = ("threads", "trainer.enable_progress_bar", "data.data_dir")


def check_launch(cfg: Any) -> None:
    """Checks that need Hydra's view of the launch (run inside @hydra.main): resume= takes no other
    overrides, and Lightning's `ddp` re-launch is refused under --multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if cfg.get("resume"):  # the saved config is used: other overrides would silently not apply
        allowed = ("resume", *RESUME_MAY_SET)
        extra = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in allowed]
        if extra:
            raise ConfigError(f"resume= continues a run with its saved config; drop {' '.join(extra)} "
                              "(or start a new run with them)")
    # Lightning's `ddp` starts the other ranks by re-running the command line: under --multirun that is the
    # whole sweep again, in every rank, and the ranks of one job may get different hyperparameters.
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    several = cfg.trainer.num_nodes > 1 or str(cfg.trainer.devices) not in ("1", "auto")
    if (hydra_cfg.mode == RunMode.MULTIRUN and cfg.trainer.strategy == "ddp" and several
            and "Slurm" not in launcher and "SLURM_NTASKS" not in os.environ):
        raise ConfigError("trainer.strategy=ddp under --multirun would re-run the whole sweep in every rank: "
                          "use trainer.strategy=ddp_spawn for a local sweep, or hydra/launcher=slurm")


def check_keys(overrides: list[str]) -> None:
    """Raise ConfigError for a command-line key that is neither a config field nor a config group, or a
    group choice that has no yaml; the message suggests the closest key."""
    import difflib

    fields = set(flat_keys(Config))
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in groups and "=" in override:
            choices = options(key)
            for value in override.split("=", 1)[1].strip("[]").split(","):
                if value and value not in choices + ["null"] and not value.startswith(("glob(", "range(", "choice(")):
                    raise ConfigError(f"{key}={value}: no such option; choose one of {', '.join(choices)}")
        if "=" not in override or key.startswith("hydra") or key in fields or key in groups:
            continue
        close = difflib.get_close_matches(key, sorted(fields | groups), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "python -m mnist_lab.train --cfg job lists the keys"
        raise ConfigError(f"unknown config key {key!r} in {override!r}: {hint}")


def flat_keys(schema: type, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass: data, data.batch_size, ..."""
    import dataclasses
    import typing

    keys = []
    for name, hint in typing.get_type_hints(schema).items():
        keys.append(prefix + name)
        for kind in (hint, *typing.get_args(hint)):  # X, or the X of `X | None`
            if dataclasses.is_dataclass(kind):
                keys += flat_keys(kind, prefix + name + ".")
                break
    return keys


def gpus_per_node(accelerator: str, devices: Any) -> Any:
    """For hydra/launcher=slurm: GPUs to ask Slurm for, from the trainer config (None on CPU).

    With accelerator=auto the submitting machine cannot tell what the job's node will have."""
    if accelerator == "auto":
        from mnist_lab.errors import ConfigError

        raise ConfigError("hydra/launcher=slurm cannot tell from trainer=auto whether to ask Slurm for GPUs: "
                          "use trainer=gpu (or ddp) for GPU jobs, trainer=cpu for CPU jobs")
    return devices if accelerator in ("gpu", "cuda") else None


def register() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("gpus_per_node"):
        OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)


register()
