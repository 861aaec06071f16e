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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mnist_lab.runs import atomic_path  # noqa: E402

DPI = 100


def save(fig, path: str | Path, tight: bool = False) -> Path:
    """Write `fig` as a PNG to `path` atomically (runs.atomic_path), close it, and return `path`; `tight`: the
    picture grown or cropped to what is drawn (a figure made elsewhere, whose labels may stick out)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight" if tight else None)
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
    `originals` (name, grey levels of any size), one per digit: each shown, named, left of its digit.

    One picture of all the cells (figimage: pixels as they are) and a text per title: no axes per
    digit, which made drawing ten times slower. A cell is 110 x 130 px: its title, then the image 3x."""
    cell_w, cell_h, band, side = 110, 130, 26, 84  # px; side: 28 x 3
    per = 2 if originals is not None else 1  # cells per digit
    cells = []  # (image, title, colour) in order
    for i in range(len(images)):
        if originals is not None:
            name, original = originals[i]
            cells.append((fit(original, side), name if len(name) <= 14 else name[:6] + "..." + name[-5:], "black"))
        bad = bool(wrong[i]) if wrong is not None else False
        cells.append((np.kron(np.asarray(images[i], dtype=np.float64), np.ones((3, 3))), titles[i],
                      "red" if bad else "black"))
    rows = max(1, -(-len(cells) // cols))
    head = 40 if title else 0
    canvas = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    fig = plt.figure(figsize=(cols * cell_w / DPI, (rows * cell_h + head) / DPI), dpi=DPI)
    for k, (image, text, colour) in enumerate(cells):
        r, c = divmod(k, cols)
        top, left = r * cell_h + band, c * cell_w + (cell_w - side) // 2
        h, w = image.shape
        y0, x0 = top + (side - h) // 2, left + (side - w) // 2
        if colour == "red" and per * (k // per) + per - 1 == k:
            canvas[y0 - 3:y0 + h + 3, x0 - 3:x0 + w + 3] = (220, 20, 20)
        canvas[y0:y0 + h, x0:x0 + w] = np.clip(image, 0, 255).astype(np.uint8)[..., None]
        x, y = (c + 0.5) * cell_w / (cols * cell_w), 1 - (head + r * cell_h + band / 2) / (rows * cell_h + head)
        fig.text(x, y, text, ha="center", va="center", fontsize=8 if per == 1 or k % per else 6, color=colour)
    fig.figimage(canvas, 0, 0, origin="upper")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 20 / (rows * cell_h + head), va="center")
    return fig


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """Grey levels of any size scaled (nearest pixel) to fit side x side, keeping the aspect ratio."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    rows = np.minimum((np.arange(max(1, round(h * scale))) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(max(1, round(w * scale))) / scale).astype(int), w - 1)
    return image[rows][:, cols]


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


def accuracy_curves(curves: list[tuple[str, list[float]]], stage: str = "validation"):
    """Accuracy per epoch of several runs, given as (variant, values): one colour a variant. `stage` names
    what the values are (validation, or training for runs without validation)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    drawn = [(variant, values) for variant, values in curves if values]
    for variant, values in drawn:
        colour = colours.setdefault(variant, f"C{len(colours)}")
        ax.plot(range(1, len(values) + 1), values, marker="o", color=colour, alpha=0.85,
                label=variant if variant not in ax.get_legend_handles_labels()[1] else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{stage} accuracy")
    ax.set_title(f"{stage} accuracy per epoch ({len(drawn)} runs)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    else:  # nothing logged per epoch (e.g. runs stopped before their first epoch ended)
        ax.text(0.5, 0.5, f"no run logged its {stage} accuracy", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
