"""Digits as a person's images arrive, made from MNIST-form ones; and MNIST-form digits drawn from strokes.

`rerender` turns a 28x28 white-on-black digit into what a scan or a paint program gives: scaled up
3-5x into a larger canvas, off-centre, dark on a light grey background with noise, a third saved as
JPEG. `glyphs` draws learnable digits (their class is their shape, not their position) and prepares
them as MNIST was, independently of mnist_lab.prepare: for tests that must not depend on real MNIST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# each digit as polylines in a unit box (x right, y down)
STROKES = {
    0: [[(0.5, 0.0), (0.15, 0.2), (0.05, 0.5), (0.15, 0.85), (0.5, 1.0), (0.85, 0.85), (0.95, 0.5),
         (0.85, 0.15), (0.5, 0.0)]],
    1: [[(0.3, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    2: [[(0.1, 0.25), (0.35, 0.02), (0.7, 0.02), (0.88, 0.25), (0.75, 0.5), (0.1, 1.0), (0.95, 1.0)]],
    3: [[(0.1, 0.1), (0.5, 0.0), (0.85, 0.15), (0.75, 0.42), (0.4, 0.5), (0.8, 0.6), (0.9, 0.85), (0.5, 1.0),
         (0.1, 0.9)]],
    4: [[(0.65, 1.0), (0.65, 0.0), (0.05, 0.68), (0.95, 0.68)]],
    5: [[(0.9, 0.0), (0.2, 0.0), (0.12, 0.45), (0.55, 0.38), (0.88, 0.6), (0.82, 0.9), (0.45, 1.0), (0.1, 0.88)]],
    6: [[(0.8, 0.0), (0.35, 0.25), (0.1, 0.65), (0.3, 1.0), (0.7, 0.97), (0.85, 0.7), (0.55, 0.5), (0.15, 0.65)]],
    7: [[(0.05, 0.0), (0.95, 0.0), (0.4, 1.0)]],
    8: [[(0.5, 0.48), (0.18, 0.28), (0.3, 0.03), (0.7, 0.03), (0.82, 0.28), (0.5, 0.48), (0.12, 0.75),
         (0.3, 1.0), (0.7, 1.0), (0.88, 0.75), (0.5, 0.48)]],
    9: [[(0.85, 0.3), (0.55, 0.5), (0.15, 0.4), (0.2, 0.1), (0.55, 0.0), (0.85, 0.2), (0.85, 0.5), (0.7, 1.0)]],
}


def glyphs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n digits (n, 28, 28) uint8 in MNIST's form (box fitted to 20x20, centred by mass), labels 0-9."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    big = 112  # drawn at 4x, then reduced: anti-aliased strokes like MNIST's
    for i, c in enumerate(labels):
        canvas = Image.new("L", (big, big))
        draw = ImageDraw.Draw(canvas)
        slant, width = rng.uniform(-0.25, 0.25), rng.uniform(0.55, 0.95)
        for line in STROKES[int(c)]:
            pts = np.array(line) + rng.normal(0, 0.03, (len(line), 2))
            x = (pts[:, 0] - 0.5) * width + 0.5 + slant * (0.5 - pts[:, 1])
            y = pts[:, 1]
            xy = [(float(a * 80 + 16), float(b * 80 + 16)) for a, b in zip(x, y, strict=True)]
            draw.line(xy, fill=255, width=int(rng.integers(7, 13)), joint="curve")
        images[i] = mnist_form(np.asarray(canvas, np.float32))
    return images, labels.astype(np.uint8)


def mnist_form(a: np.ndarray) -> np.ndarray:
    """MNIST's preparation of a clean white-on-black drawing: box -> 20x20 -> centre of mass at 14."""
    ys, xs = np.nonzero(a > 0)
    crop = a[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    s = 20 / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.BOX))
    total = small.sum()
    cy = (small.sum(1) @ np.arange(small.shape[0])) / total
    cx = (small.sum(0) @ np.arange(small.shape[1])) / total
    top, left = int(round(14 - cy)), int(round(14 - cx))
    out = np.zeros((28, 28), np.float32)
    out[top: top + small.shape[0], left: left + small.shape[1]] = small
    return np.round(out).clip(0, 255).astype(np.uint8)


def rerender(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 28x28 white-on-black digit as a person's image: 3-5x larger in a larger canvas, off-centre,
    dark ink on light grey paper, with noise."""
    scale = rng.uniform(3, 5)
    side = round(28 * scale)
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    h, w = round(side * rng.uniform(1.2, 1.8)), round(side * rng.uniform(1.2, 1.8))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    ink = np.zeros((h, w), np.float32)
    ink[top: top + side, left: left + side] = big
    paper, pen = rng.uniform(150, 235), rng.uniform(0, 70)
    pixels = paper - (paper - pen) * ink + rng.normal(0, rng.uniform(3, 12), (h, w))
    return Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8))


def write_rerendered(images: np.ndarray, labels: np.ndarray, folder: Path, seed: int = 0) -> list[str]:
    """Re-render each digit into `folder` as <index>_<label>.png or .jpg (every third a JPEG, quality
    60-90); returns the file names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i, (digit, label) in enumerate(zip(images, labels, strict=True)):
        image = rerender(digit, rng)
        if i % 3 == 2:
            name = f"{i:05d}_{label}.jpg"
            image.save(folder / name, quality=int(rng.integers(60, 91)))
        else:
            name = f"{i:05d}_{label}.png"
            image.save(folder / name)
        names.append(name)
    return names
