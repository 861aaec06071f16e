"""Figures, drawn with matplotlib (Agg) from numpy arrays; nothing here imports torch.

Each function returns a Figure; `save` writes it atomically. Sizes are fixed (inches x dpi), so a
figure's pixel size is known: history 900x380, digit grids 8 columns of 110 px, per-class 700x380.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG to `path` atomically (runs.atomic_path), close it, and return `path`."""
    from mnist_lab.runs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return Path(path)


def close(fig) -> None:
    """Free a figure that is not saved (one only logged)."""
    plt.close(fig)


def history(series: dict[str, list[float]]):
    """Loss and accuracy per epoch, train and validation: lines with markers, so 1 epoch still shows."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for stage, style in (("train", "-o"), ("val", "--s")):
            values = series.get(f"{stage}/{metric}", [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=stage, linewidth=2, markersize=5)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "cross-entropy loss", "acc": "accuracy"}[metric])
        ax.set_title({"loss": "loss", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
        epochs = max((len(v) for v in series.values()), default=1)
        ax.set_xticks(range(1, epochs + 1) if epochs <= 20 else ax.get_xticks())
    fig.tight_layout()
    return fig


def digit_grid(images: np.ndarray, titles: list[str], wrong: list[bool] | None = None, cols: int = 8,
               title: str = "", originals: list[tuple[str, np.ndarray]] | None = None):
    """Digits (N, 28, 28) as white-on-black images with a title each; `wrong` ones framed in red.
    `originals` (name, grey levels of any size), one per digit: each shown, named, left of its digit."""
    n = len(images)
    per = 2 if originals is not None else 1  # axes per digit
    rows = max(1, -(-n * per // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3 + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i * per + per - 1]
        if originals is not None:
            name, original = originals[i]
            left = axes.flat[i * per]
            left.imshow(original, cmap="gray", vmin=0, vmax=255)
            left.set_title(name if len(name) <= 14 else name[:6] + "..." + name[-5:], fontsize=6)
        bad = bool(wrong[i]) if wrong is not None else False
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=8, color="red" if bad else "black")
        if bad:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, n: int = 24):
    """The `n` most confident mistakes: titled `pred p% (true)`."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    order = wrong[np.argsort(-probs[wrong, preds[wrong]])][:n]
    titles = [f"{preds[i]} {probs[i, preds[i]]:.0%} ({labels[i]})" for i in order]
    return digit_grid(images[order], titles, [True] * len(order),
                      title=f"the {len(order)} most confident of {len(wrong)} test mistakes: predicted p% (true)")


def per_class(accuracy: np.ndarray, counts: np.ndarray | None = None):
    """Test accuracy of each digit as bars, the overall mean as a line."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    digits = np.arange(len(accuracy))
    bars = ax.bar(digits, accuracy, color="C0")
    for bar, a in zip(bars, accuracy, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    mean = float(np.average(accuracy, weights=counts)) if counts is not None else float(accuracy.mean())
    ax.axhline(mean, color="C3", linestyle="--", label=f"overall {mean:.4f}")
    low = max(0.0, float(accuracy.min()) - 0.05)
    ax.set_ylim(low, 1.0 + (1.0 - low) * 0.08)
    ax.set_xticks(digits)
    ax.set_xlabel("digit")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy per class (test set)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def feature_maps(digit: np.ndarray, maps: list[tuple[str, np.ndarray]], label: str = ""):
    """The input digit, then every channel of each conv layer's output (C, H, W), a block per layer."""
    cols = 16
    rows = [int(np.ceil(m.shape[0] / cols)) for _, m in maps]
    fig = plt.figure(figsize=(cols * 0.7, 1.2 + sum(rows) * 0.75 + len(maps) * 0.35))
    grid = fig.add_gridspec(1 + sum(rows) + len(maps), cols)
    ax = fig.add_subplot(grid[0, :2])
    ax.imshow(digit, cmap="gray", vmin=0, vmax=255)
    ax.set_title(label or "input", fontsize=9)
    ax.axis("off")
    row = 1
    for name, m in maps:
        head = fig.add_subplot(grid[row, :])
        head.axis("off")
        head.text(0, 0.2, f"{name}: {m.shape[0]} channels of {m.shape[1]}x{m.shape[2]}", fontsize=9)
        row += 1
        for c in range(m.shape[0]):
            ax = fig.add_subplot(grid[row + c // cols, c % cols])
            ax.imshow(m[c], cmap="viridis")
            ax.axis("off")
        row += int(np.ceil(m.shape[0] / cols))
    return fig


def val_curves(curves: list[tuple[str, list[float]]]):
    """Validation accuracy per epoch of several runs, given as (variant, values): one colour a variant."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for variant, values in curves:
        if not values:
            continue
        colour = colours.setdefault(variant, f"C{len(colours)}")
        ax.plot(range(1, len(values) + 1), values, marker="o", color=colour, alpha=0.85,
                label=variant if variant not in ax.get_legend_handles_labels()[1] else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"validation accuracy per epoch ({len(curves)} runs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
