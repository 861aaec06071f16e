"""Typed configs, registered with Hydra, and every check of a config: a misspelled key or a wrong type
fails at composition (or, on the command line, with a suggestion), a value that cannot work in validate().

The yaml in conf/ selects and fills these; `python -m mnist_lab.train --cfg job` shows the result.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf

from mnist_lab.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")  # conf/ beside src/: config groups, commands
VERSION_BASE = "1.3"  # Hydra's defaults as of 1.3 (no chdir into the run folder): every @hydra.main and compose
MAX_SEED = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything passes on
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # trainer.accelerator's values in Lightning 2.x
PRECISIONS = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true")  # and Lightning's own list
SLURM_NEEDS_ACCELERATOR = ("hydra/launcher=slurm cannot tell from trainer=auto whether to ask Slurm for GPUs: "
                           "use trainer=gpu (or ddp) for GPU jobs, trainer=cpu for CPU jobs")


@dataclass
class DataConfig:
    data_dir: str = "${oc.env:MNIST_LAB_DATA_DIR,data}"  # holds MNIST/raw/; relative to the working dir
    batch_size: int = 128  # images per training step
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
    eps: float | None = None  # added for numerical stability (torch: 1e-8; Keras: 1e-7, inside the root)
    momentum: float | None = None  # sgd's and rmsprop's momentum (torch: 0)
    weight_decay: float | None = None  # L2 penalty on the weights (torch: 0)


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer as keyword arguments."""

    accelerator: str = "auto"  # auto: the GPU where one is visible, else the CPU
    devices: Any = 1  # devices per node: GPUs, or CPU processes under ddp
    num_nodes: int = 1  # machines (Slurm nodes) for ddp
    strategy: str = "auto"  # auto (one device), ddp, ddp_spawn (a local sweep over several devices)
    precision: Any = "32-true"  # bf16-mixed for mixed precision on GPUs that support it
    max_epochs: int = 5  # epochs to train
    log_every_n_steps: int = 50  # Lightning's logging interval (train/* is logged once an epoch)
    enable_progress_bar: bool | None = None  # null: a live bar where the output is a terminal (epoch lines always)
    num_sanity_val_steps: int = 2  # validation batches run before training, to fail early
    limit_train_batches: Any = None  # a fraction or a number of batches; None: all
    limit_val_batches: Any = None  # likewise, validation batches
    limit_test_batches: Any = None  # likewise, test batches
    fast_dev_run: Any = False  # true: one batch of each stage, no figures (a smoke test)
    deterministic: Any = False  # true: deterministic algorithms only (slower)
    benchmark: bool | None = None  # cudnn.benchmark: cuDNN times its convolution algorithms once per shape (GPU)
    gradient_clip_val: float | None = None  # clip the gradients' norm to this; null: no clipping


@dataclass
class TensorBoardConfig:
    """TensorBoard's event files in the run folder: scalars, hparams (the HPARAMS tab), images."""


@dataclass
class CSVConfig:
    """metrics.csv (one row per logging step) and hparams.yaml in the run folder."""


@dataclass
class MLflowConfig:
    """An MLflow run per training run: params, metrics, figures as artifacts (pip install -e '.[mlflow]')."""

    experiment_name: str = "mnist_lab"  # the MLflow experiment the runs go into
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
    # An MLP member holds about 5 MB (weights, gradients, RMSprop's average), a convnet's about 1.2 MB plus its batch.
    stack: int = 1  # -m: up to N jobs that differ only in seed and optimizer numbers train as one stack; 1: off


def default_threads() -> int:
    """Half the cores this process may use, at least 1: a competing process then cannot slow every
    step by taking a core that a thread waits on (README, Threads)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def options(group: str) -> list[str]:
    """The choices of a config group: the yaml files in conf/<group>/."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def validate(cfg: Any, here: bool = True) -> None:
    """Raise ConfigError naming the first key whose value cannot work. Reads no data, writes nothing.
    here=False leaves out what only the machine that trains can tell (its GPUs): a Slurm job checks it there."""
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
    if not 0 < cfg.optimizer.lr < math.inf:
        bad("optimizer.lr", cfg.optimizer.lr, "the learning rate must be a number > 0 (the default is 1e-3)")
    if not 0 <= cfg.seed <= MAX_SEED:
        bad("seed", cfg.seed, f"seeds go from 0 to {MAX_SEED} (numpy's range)")
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
    if cfg.get("stack", 1) < 1:
        bad("stack", cfg.stack, "stack up to N >= 1 jobs of a sweep as one model (1: each job alone)")
    for stage in ("train", "val", "test"):
        limit = cfg.trainer.get(f"limit_{stage}_batches")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)
                                  or limit <= 0 or (isinstance(limit, float) and limit > 1)):
            bad(f"trainer.limit_{stage}_batches", limit, "give a number of batches >= 1 or a fraction in (0, 1], "
                                                         "or null for all")
    check_trainer(cfg.trainer, here)
    if cfg.logger.mlflow is not None and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs MLflow, which is not installed: pip install -e '.[mlflow]' "
                          "(or choose logger=tensorboard or logger=csv)")


def check_trainer(trainer: Any, here: bool = True) -> None:
    """trainer.accelerator, precision and devices: what Lightning accepts, and (here=True) what this machine has."""
    accelerator, precision, devices = str(trainer.accelerator), str(trainer.precision), trainer.devices
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator} is invalid: choose one of {', '.join(ACCELERATORS)} "
                          "(or trainer=auto, cpu, gpu)")
    if precision not in precisions():
        raise ConfigError(f"trainer.precision={precision} is invalid: choose one of {', '.join(precisions())}")
    devices = device_list(devices)
    if devices is None:
        raise ConfigError(f"trainer.devices={trainer.devices} is invalid: give a number >= 1, a list of GPU "
                          "indices ([0,1]) or auto")
    if not here or accelerator in ("auto", "cpu"):
        return
    import torch  # the machine's devices: torch is loaded by the run anyway

    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer.accelerator=tpu needs torch_xla, which is not installed: use trainer=auto")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps: this machine has no Apple GPU; use trainer=auto")
    if accelerator in ("gpu", "cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"trainer.accelerator={accelerator}: this machine has no CUDA GPU; use trainer=cpu, or "
                              "trainer=auto (the GPU where one is visible)")
        wanted = devices if isinstance(devices, int) else max(devices) + 1 if isinstance(devices, list) else 1
        if wanted > count:
            raise ConfigError(f"trainer.devices={trainer.devices}: this machine has {count} "
                              f"GPU{'s' if count > 1 else ''}; ask for at most {count} (indices below {count})")


def device_list(devices: Any) -> int | list[int] | str | None:
    """trainer.devices as Lightning reads it: a count (-1: all), a list of indices, or "auto"; None if neither."""
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        found = list(devices)
        return found if found and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in found) \
            else None
    if isinstance(devices, str):
        if devices == "auto":
            return devices
        try:
            parts = [int(d) for d in devices.split(",") if d.strip()]
        except ValueError:
            return None
        return device_list(parts) if "," in devices else device_list(parts[0]) if parts else None
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1):
        return devices
    return None


def precisions() -> tuple[str, ...]:
    """The trainer.precision values Lightning accepts."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:  # another Lightning: its own check will say
        return (*PRECISIONS, "64", "32", "16", "bf16")
    flat = [a for t in typing.get_args(_PRECISION_INPUT) for a in (typing.get_args(t) or [t])]  # Literal[...]s
    return tuple(dict.fromkeys(str(a) for a in flat for a in (typing.get_args(a) or [a])))


# Keys that say where a run reads and writes or how it shows itself, never what it computes: the one list.
# (key, resume= may give it, left out of run folder names); TensorBoard's HPARAMS leaves each one out.
RUN_INVARIANT = (
    ("data.data_dir", True, True),
    ("threads", True, True),
    ("trainer.enable_progress_bar", True, True),
    ("resume", True, False),
    ("stack", True, True),
    ("output_dir", False, True),
    ("logger", False, True),
    ("export", False, False),
    ("data.download", False, False),
    ("data.verify_checksums", False, False),
)
# What a call continuing a run (resume=, a resumed sweep) may give besides the run's own config.
RESUME_MAY_SET = tuple(key for key, resume, _ in RUN_INVARIANT if resume)
# Left out of a sweep's run folder names (conf/config.yaml's exclude_keys): the model leads the name instead.
NOT_IN_NAMES = ("model", *(key for key, _, unnamed in RUN_INVARIANT if unnamed))
NOT_HPARAMS = tuple(key for key, _, _ in RUN_INVARIANT)


def among(key: str, keys: tuple[str, ...]) -> bool:
    """Whether the dotted `key` is one of `keys` or lies inside one (logger.mlflow.tracking_uri in logger)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def override_key(override: str) -> str:
    """The key a command-line override sets: seed=1 -> seed, +trainer.x=1 -> trainer.x, ~logger -> logger."""
    return override.split("=", 1)[0].lstrip("+~")


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, with values every logger can show (others as text; None kept)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if v is None or isinstance(v, int | float | str | bool) else str(v)
    return out


def chosen_loggers(config: Mapping | None) -> Mapping:
    """A run config's logger section; a config saved before there was a choice used TensorBoard."""
    section = (config or {}).get("logger")
    return {"tensorboard": {}} if section is None else section


def compose(overrides: list[str] = (), config_name: str = "config", hydra: bool = False) -> Any:
    """The config that Hydra composes from conf/ for `overrides`, outside a Hydra app (checks, scripts, tests);
    hydra=True includes the hydra section (launcher, sweeper)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=VERSION_BASE):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def check_launch(cfg: Any, hydra_cfg: Any = None) -> None:
    """Checks that need Hydra's view of the launch (run inside @hydra.main, or given `hydra_cfg`): resume= takes
    no other overrides, and Lightning's `ddp` re-launch is refused under --multirun."""
    hydra_cfg = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
    if cfg.get("resume"):  # the saved config is used: other overrides would silently not apply
        extra = [o for o in hydra_cfg.overrides.task if override_key(o) not in RESUME_MAY_SET]
        if extra:
            raise ConfigError(f"resume= continues a run with its saved config; drop {' '.join(extra)} "
                              "(or start a new run with them)")
    check_ddp_relaunch(cfg, hydra_cfg.mode == RunMode.MULTIRUN, str(hydra_cfg.launcher.get("_target_", "")))


def check_ddp_relaunch(cfg: Any, multirun: bool, launcher: str) -> None:
    """Lightning's `ddp` starts the other ranks by re-running the command line: under --multirun that is the
    whole sweep again, in every rank, and the ranks of one job may get different hyperparameters."""
    several = cfg.trainer.num_nodes > 1 or str(cfg.trainer.devices) not in ("1", "auto")
    if (multirun and cfg.trainer.strategy == "ddp" and several
            and "Slurm" not in launcher and "SLURM_NTASKS" not in os.environ):
        raise ConfigError("trainer.strategy=ddp under --multirun would re-run the whole sweep in every rank: "
                          "use trainer.strategy=ddp_spawn for a local sweep, or hydra/launcher=slurm")


def check_keys(overrides: list[str]) -> None:
    """Raise ConfigError for a command-line key that is neither a config field nor a config group, or a
    group choice that has no yaml; the message suggests the closest key."""
    fields = set(flat_keys(Config))
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for override in overrides:
        key = override_key(override)
        if key in groups and "=" in override:
            choices = options(key)
            for value in group_options(override):
                if value not in choices + ["null"]:
                    raise ConfigError(f"{key}={value}: no such option; choose one of {', '.join(choices)}")
        if "=" not in override or key.startswith("hydra") or key in fields or key in groups:
            continue
        close = difflib.get_close_matches(key, sorted(fields | groups), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "python -m mnist_lab.train --cfg job lists the keys"
        raise ConfigError(f"unknown config key {key!r} in {override!r}: {hint}")


def group_options(override: str) -> list[str]:
    """The options a config-group override names: model=convnet, logger=[tensorboard,csv], and sweeps:
    model=mlp,convnet or model=choice(mlp,convnet) (the Optuna sweeper's grammar); none for glob() and what
    does not parse (Hydra then says why)."""
    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException:
        return []
    value = parsed.value()
    values = value.list if isinstance(value, ChoiceSweep) else [] if parsed.is_sweep_override() else [value]
    flat = [x for v in values for x in (v if isinstance(v, list) else [v])]  # a choice of lists: logger
    return ["null" if v is None else str(v) for v in flat if v != ""]


def flat_keys(schema: type, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass: data, data.batch_size, ..."""
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
        raise ConfigError(SLURM_NEEDS_ACCELERATOR)
    return devices if accelerator in ("gpu", "cuda") else None


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("gpus_per_node"):
        OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)


register()
