"""Train on MNIST, then test the best checkpoint.

    python -m mnist_lab.train                                       # MLP, 5 epochs
    python -m mnist_lab.train model=convnet optimizer.lr=3e-4
    python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2    # the Keras tutorial, 3 seeds

A run folder (outputs/runs/<time>/, or outputs/sweeps/<time>/<n>_<overrides>/ under -m) holds
config.yaml (resolved), summary.txt, checkpoints/{best,last}.ckpt and the TensorBoard events;
`tensorboard --logdir outputs` shows them. Offline, point data.data_dir= (or MNIST_LAB_DATA_DIR)
at a folder holding MNIST/raw/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lab import config as _config  # registers the typed configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def quiet_lightning() -> None:
    """Lightning's INFO lines once (under Hydra its own handler and Hydra's both print them), and no
    warnings that concern Lightning's internals rather than the run."""
    import logging
    import warnings

    if logging.getLogger().handlers:  # Hydra configured the root logger
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # val_size=0


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test on the best checkpoint, and return the test metrics ({"test/acc": ..., "test/loss": ...})."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from mnist_lab.data import MNISTDataModule
    from mnist_lab.models import build_model, summary
    from mnist_lab.module import LitClassifier

    quiet_lightning()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(plain))

    torch.set_num_threads(cfg.threads or _config.default_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    net = build_model(**plain["model"])
    table = summary(net)
    print(table)
    (run_dir / "summary.txt").write_text(table + "\n")

    datamodule = MNISTDataModule(**plain["data"], input_shape=net.input_shape, seed=cfg.seed)
    optimizer = {k: v for k, v in plain["optimizer"].items() if v is not None}
    module = LitClassifier(net, optimizer=optimizer, model=plain["model"], config=plain)

    validate = cfg.data.val_size > 0
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/acc" if validate else None,  # without validation "best" is the last epoch
        mode="max",
        save_last=True,
    )
    logger = TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False)
    trainer = L.Trainer(
        **plain["trainer"],
        logger=logger,
        callbacks=[checkpoint],
        default_root_dir=run_dir,
        enable_model_summary=False,  # the Keras-style table above replaces it
        use_distributed_sampler=False,  # the datamodule shards its own tensor batches
    )
    trainer.fit(module, datamodule=datamodule)
    ckpt_path = None if cfg.trainer.fast_dev_run else "best"
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items() if k.startswith("test/")}
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  ({run_dir})")
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return train(cfg)["test/acc"]  # a float, for Hydra sweepers that optimize


def flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's -m/--multirun before the overrides: argparse stops reading overrides at a flag, so
    `python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2` would otherwise fail."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return argv[:1] + flags + [a for a in argv[1:] if a not in flags]


if __name__ == "__main__":
    sys.argv = flags_first(sys.argv)
    main()
