"""LitClassifier: one LightningModule around a plain net: loss, metrics, optimizer; checkpoint loading."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mnist_lab import models
from mnist_lab.errors import CheckpointError
from mnist_lab.fastpath import ChunkRunner, FastPlan, count_steps, place_optimizer_state
from mnist_lab.optim import build_optimizer


def load_checkpoint(path: str | os.PathLike, model_name: str | None = None) -> dict[str, Any]:
    """torch.load with weights_only=True (never unpickles arbitrary objects), checked to be an mnist_lab
    checkpoint (of `model_name`, when given). Raises CheckpointError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: give the path of a .ckpt file "
                              "(a run folder keeps them in checkpoints/)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch's message names the first such object
        if found:
            raise CheckpointError(f"checkpoint {path} holds Python objects that could run code when unpickled "
                                  f"({found[1]}); it was not loaded: use an mnist_lab checkpoint") from err
        raise unreadable(path) from err
    except Exception as err:  # damaged bytes surface as many types (RuntimeError, EOFError, IndexError, ...)
        raise unreadable(path) from err
    model = ckpt.get("hyper_parameters", {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or "state_dict" not in ckpt or model.get("name") not in models.MODELS:
        raise CheckpointError(f"{path} is not an mnist_lab checkpoint (no model config in its hyper_parameters): "
                              "give a checkpoint written by python -m mnist_lab.train")
    if model_name is not None and model["name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds a {model['name']}, not a {model_name}: "
                              f"use model={model['name']} or a {model_name} checkpoint")
    return ckpt


def unreadable(path: Path) -> CheckpointError:
    """A file torch.load cannot read (torch's own words, about zip records, go to the run's log as the cause)."""
    return CheckpointError(f"checkpoint {path} is truncated, damaged or not a checkpoint at all: use another one, "
                           "e.g. the run's checkpoints/best.ckpt, or retrain")


def load_net(path: str | os.PathLike, model_name: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The plain net of an mnist_lab checkpoint, rebuilt from the model config it holds, in eval mode,
    and the checkpoint itself (loaded and checked by load_checkpoint)."""
    ckpt = load_checkpoint(path, model_name)
    model = ckpt["hyper_parameters"]["model"]
    net = models.build_model(**model)
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit a {model['name']} of its own config; use a "
                              "checkpoint written by mnist_lab.train") from err
    return net.eval(), ckpt


class LitClassifier(L.LightningModule):
    """Cross-entropy on the net's logits; accuracy from torchmetrics; optimizer from config.

    hparams hold plain Python values only (the optimizer's and the model's config, the run's whole
    resolved config, and a summary of its provenance), so checkpoints load with torch.load's default
    weights_only=True and `LitClassifier.from_checkpoint` can rebuild the net.
    """

    def __init__(self, net: nn.Module, optimizer: dict, model: dict | None = None, config: dict | None = None,
                 fast: FastPlan | None = None, provenance: dict | None = None):  # provenance.summary, for checkpoints
        super().__init__()
        self.save_hyperparameters(ignore=["net", "fast"], logger=False)  # loggers.HParams logs them, flattened
        self.net = net
        # The plain path trains one batch per training_step (Lightning's automatic optimization); the fast
        # path chunks of K batches per training_step through fastpath.ChunkRunner (manual optimization; the
        # data module yields the chunks).
        self.fast = fast or FastPlan(plain_because="no plan given")
        self.hparams["fast"] = dataclasses.asdict(self.fast)  # plain values, as a checkpoint keeps them
        self.automatic_optimization = not self.fast.fast
        self.runner: ChunkRunner | None = None
        # validate_args=False: no per-step value checks, each of which would force a host-device sync
        # on a GPU (the labels are ours; the loss is checked by guards.NonFiniteGuard).
        self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
                                       for _ in range(2))
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        # Means over per-image losses: exact under DDP even when ranks hold different numbers of
        # images (self.log(sync_dist=True) would average the ranks' means).
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        # Training loss and accuracy: running sums (loss x n, correct, n) kept on the device and logged
        # once an epoch: per-step self.log calls and torchmetrics updates cost a measurable share of a
        # dense step (README, Speed). In checkpoints, so a resumed epoch logs the same means.
        self.register_buffer("train_sums", torch.zeros(3, dtype=torch.float64), persistent=True)

    @classmethod
    def from_checkpoint(cls, path: str, model_name: str | None = None) -> LitClassifier:
        """The LitClassifier of an mnist_lab checkpoint (its net from load_net), in eval mode."""
        net, ckpt = load_net(path, model_name)
        hparams = ckpt["hyper_parameters"]
        return cls(net, **{k: v for k, v in hparams.items() if k in ("optimizer", "model", "config")}).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        if not self.fast.fast:
            return
        optimizer = self.optimizers().optimizer
        place_optimizer_state(optimizer, capturable=self.fast.cuda_graph)  # the state may come from a checkpoint
        # A new runner at every fit: graphs hold the addresses of this fit's device tensors.
        self.runner = ChunkRunner(
            self.net, optimizer, getattr(self.trainer.datamodule, "batch_size", 0),
            cuda_graph=self.fast.cuda_graph, compile=self.fast.compile, clip_norm=self.fast.clip_norm,
            autocast_dtype=torch.bfloat16 if str(self.trainer.precision) == "bf16-mixed" else None,
        )

    def training_step(self, batch, batch_idx):
        if self.runner is not None:
            return self._train_chunk(*batch)
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():  # logged once, at the end of the epoch
            n = torch.tensor(len(y), device=y.device)
            self.train_sums += torch.stack([loss.detach() * n, (logits.argmax(1) == y).sum(), n]).double()
        return loss

    def _train_chunk(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """K optimizer steps on xs[k], ys[k] (k = 0..K-1); returns the K losses."""
        losses, correct = self.runner(xs, ys)
        k, n = ys.shape
        count_steps(self.trainer, k)
        with torch.no_grad():
            self.train_sums += torch.stack([losses.double().sum() * n, correct.sum().double(),
                                            losses.new_full((), k * n, dtype=torch.float64)])
        return losses

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, n = self.trainer.strategy.reduce(self.train_sums.clone(), reduce_op="sum")  # all ranks
        self.log_dict({"train/loss": loss_sum / n, "train/acc": correct / n}, prog_bar=True)
        self.train_sums.zero_()

    def _step(self, batch, stage: str, acc: MulticlassAccuracy, loss: MeanMetric) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        acc.update(logits, y)
        loss.update(F.cross_entropy(logits, y, reduction="none"))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return logits

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        logits = self._step(batch, "test", self.test_acc, self.test_loss)
        self.test_confusion.update(logits, batch[1])
        return logits  # for callbacks that draw predictions

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), **self.hparams["optimizer"], capturable=self.fast.cuda_graph)
