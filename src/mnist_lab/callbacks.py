"""Callbacks that record a run for TensorBoard: seconds per epoch, test predictions, confusion matrix.

matplotlib is imported only when a figure is drawn, at the end of testing.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from mnist_lab.data import MEAN, STD


class EpochTime(L.Callback):
    """Logs `time/epoch_s`: wall seconds of each training epoch (validation excluded)."""

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        module.log("time/epoch_s", time.perf_counter() - self.start, on_epoch=True, reduce_fx="max")


class TestFigures(L.Callback):
    """At the end of testing, logs two TensorBoard images:

    - `test/predictions`: the first `n` test digits with predicted and true labels, mistakes in red;
    - `test/confusion_matrix`: torchmetrics' confusion matrix over the whole test set.
    """

    def __init__(self, n: int = 32):
        self.n = n

    def on_test_epoch_start(self, trainer, module) -> None:
        self.images, self.labels, self.preds = [], [], []

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if sum(len(y) for y in self.labels) < self.n and outputs is not None:
            x, y = batch
            self.images.append(x.detach().cpu())
            self.labels.append(y.detach().cpu())
            self.preds.append(outputs.detach().argmax(1).cpu())

    def on_test_epoch_end(self, trainer, module) -> None:
        confusion = module.test_confusion.compute().cpu()  # synced across ranks
        module.test_confusion.reset()
        writer = getattr(trainer.logger, "experiment", None)
        if not trainer.is_global_zero or writer is None or not hasattr(writer, "add_figure") or not self.labels:
            return
        import matplotlib

        matplotlib.use("Agg")
        images = torch.cat(self.images)[: self.n].reshape(-1, 28, 28) * STD + MEAN  # undo the normalization
        labels, preds = torch.cat(self.labels)[: self.n], torch.cat(self.preds)[: self.n]
        step = trainer.global_step
        writer.add_figure("test/predictions", prediction_grid(images, labels, preds), step)
        fig, _ = module.test_confusion.plot(confusion)
        fig.set_size_inches(6, 6)
        writer.add_figure("test/confusion_matrix", fig, step)


def prediction_grid(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, cols: int = 8):
    """A matplotlib figure: each digit titled `pred (true)`, mistakes in red with a red frame."""
    import matplotlib.pyplot as plt

    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, y, p in zip(axes.flat, images, labels.tolist(), preds.tolist(), strict=False):
        wrong = p != y
        ax.imshow(image.clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{p} ({y})", fontsize=9, color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    fig.suptitle("test predictions: predicted (true); mistakes in red", fontsize=10)
    fig.tight_layout()
    return fig
