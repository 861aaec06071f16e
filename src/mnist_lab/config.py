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


def check_launch(cfg: Any, hydra_cfg: Any = None) -> None:
    """Checks that need Hydra's view of the launch (run inside @hydra.main, or given `hydra_cfg`): resume= takes
    no other overrides, and Lightning's `ddp` re-launch is refused under --multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
    if cfg.get("resume"):  # the saved config is used: other overrides would silently not apply
        allowed = ("resume", *RESUME_MAY_SET)
        extra = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") not in allowed]
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
    import difflib

    fields = set(flat_keys(Config))
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
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
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

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


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): its trailing comment} of the dataclasses in `source` (this file's)."""
    import ast
    import io
    import tokenize

    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.lineno in comments:
                    found[node.name, item.target.id] = comments[item.lineno]
    return found


def yaml_comments(path: Path) -> dict[str, str]:
    """{key: its trailing comment, or ""} of a yaml file's top-level keys (the defaults list and _target_ aside)."""
    import re

    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(\w+):[^#]*(?:#\s*(.*))?$", line)
        if m and m[1] != "defaults" and not m[1].startswith("_"):
            found[m[1]] = (m[2] or "").strip()
    return found


def shown_value(value: Any) -> str:
    """A config value as one would write it on the command line."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def help_text(*, _root_: Any) -> str:
    """`python -m mnist_lab.train --help` (conf/hydra/help/mnist_lab.yaml): the config groups with their choices,
    Hydra's launcher and sweeper included, and every key with its value in this composition (the default,
    unless the command line set it) and its meaning, from this schema's own comments."""
    import dataclasses
    import typing

    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    loader = GlobalHydra.instance().config_loader()
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices, resolve=False)
    groups = [g for g in loader.list_groups("") if g != "hydra"]
    groups += [f"hydra/{g}" for g in ("launcher", "sweeper") if g in loader.list_groups("hydra")]
    lines = ["python -m mnist_lab.train [-m] [group=choice ...] [key=value ...]",
             "Train on MNIST, then test the best checkpoint; -m runs a sweep (seed=0,1,2). README: examples.",
             "", "Groups (group=choice; * marks the one in use):"]
    for group in groups:
        options = sorted(loader.get_group_options(group))
        used = choices.get(group)
        shown = [f"{o}*" if o == used or (isinstance(used, str) and o in used.strip("[]").split(",")) else o
                 for o in options]
        note = "" if used else "  (none in use)"
        lines.append(f"  {group:<16}{', '.join(shown)}{note}")
    lines.append("  several loggers at once: logger=[tensorboard,csv]")

    source = Path(__file__).read_text()
    comments = field_comments(source)
    values = OmegaConf.to_container(_root_, resolve=False)
    rows: list[tuple[str, str, str]] = []

    def walk(schema: type, node: Any, prefix: str) -> None:
        for f in dataclasses.fields(schema):
            hint = typing.get_type_hints(schema)[f.name]
            nested = next((k for k in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(k)), None)
            value = node.get(f.name) if isinstance(node, dict) else None
            if nested is not None:
                walk(nested, value, f"{prefix}{f.name}.")
                continue
            if not isinstance(node, dict):  # a section that is off (logger.mlflow without logger=mlflow)
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, shown_value(value), comments.get((schema.__name__, f.name), "")))

    walk(Config, values, "")
    for group in ("launcher", "sweeper"):
        used = choices.get(f"hydra/{group}")
        path = Path(CONF_DIR) / "hydra" / group / f"{used}.yaml"
        if used and path.is_file():
            section = values["hydra"][group]
            rows += [(f"hydra.{group}.{k}", shown_value(section.get(k)), c) for k, c in yaml_comments(path).items()]
    width = max(len(key) for key, _, _ in rows) + 2
    lines += ["", "Keys (key=value; the value in this composition, then what it means):"]
    for key, value, meaning in rows:
        lines.append(f"  {key:<{width}}{value:<12} {meaning}".rstrip())
    if choices.get("hydra/launcher") != "slurm":
        lines += ["", "hydra/launcher=slurm --help lists the Slurm launcher's keys too."]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template


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
    if not OmegaConf.has_resolver("mnist_lab_help"):
        OmegaConf.register_new_resolver("mnist_lab_help", help_text)


register()
