"""MNIST's own preparation for a person's digit images: numpy and Pillow only (no torch, no mnist_lab).

MNIST's digits were prepared this way (LeCun et al., 1998): the digit's bounding box scaled to fit
20x20 keeping its aspect ratio (anti-aliased, hence the grey levels), then placed in a 28x28 field
with its centre of mass at the centre. A model trained on them expects exactly that: white on
black, about 20 pixels tall, centred by mass. `prepare` brings one image of one digit there, from
any size, polarity or background:

    from mnist_lab.prepare import prepare_file
    digit = prepare_file("my_digit.jpg")
    digit.pixels    # (28, 28) uint8, white digit on black; None where there is no digit to predict
    digit.steps     # what was done, e.g. ['120x160', 'inverted (dark digit on a light background)', ...]
    digit.problem   # why it was not predicted (blank, too small) or what to check (several blobs)

Steps: images over twice MAX_SIDE reduced while read (read_reduced: whole-pixel boxes averaged, so no
float copy of a huge image is made), an animated image's first frame taken;
16-bit and float images scaled to 0-255, transparency filled; images over MAX_SIDE reduced;
the background (the median of the image's border) and the digit's polarity found, a dark digit on a
light background inverted; a contrast stretch from the background's noise floor to the stroke
level (so a grey, noisy or JPEG background becomes black); the digit's parts found as connected
blobs, specks dropped; crop to the digit, fit 20x20, centre of mass to the centre of 28x28.
An image that is already MNIST-like (28x28, white on black, the digit's box 18-20 pixels, centred by
mass within a pixel: every MNIST image is) passes unchanged, or only inverted.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

SIDE, FIT = 28, 20  # MNIST: a 28x28 field, the digit's box fitted into 20x20
MIN_SIDE = 8  # pixels: a smaller image cannot hold a legible digit
MAX_SIDE = 1024  # pixels: larger images are reduced first (the digit ends up 20 pixels tall anyway)
MIN_CONTRAST = 40.0  # grey levels between background and strokes; less is a blank page
MIN_EXTENT = 0.03  # the digit's box must span this share of the image's longer side (4 pixels at least)
JOIN = 0.25  # blobs nearer than this share of the digit's size belong to it (a 5's detached bar)
SPECK = 0.05  # a blob under this share of the largest one's area is a speck, dropped
SEPARATE = 0.15  # a separate blob over this share of the digit's area is another digit or mark


@dataclass
class Prepared:
    pixels: np.ndarray | None  # (28, 28) uint8, white on black; None: nothing to predict
    steps: list[str] = field(default_factory=list)  # what was done, in order
    problem: str | None = None  # why not predicted, or what to check before trusting the prediction


def prepare_file(path: str | os.PathLike) -> Prepared:
    """Read an image file (any format Pillow reads) and prepare it. An unreadable file raises OSError
    (Pillow's UnidentifiedImageError), one beyond Pillow's pixel limit DecompressionBombError."""
    with open_image(path) as image:
        w, h = image.size
        steps = [f"{w}x{h}"] if (w, h) != (SIDE, SIDE) else []
        frames = getattr(image, "n_frames", 1)
        gray, read = to_gray(read_reduced(image, MAX_SIDE))
    prepared = prepare(gray)
    prepared.steps[:0] = steps + read
    if frames > 1:  # an animated GIF or PNG, a multi-page TIFF
        several = f"{frames} frames (animated or several pages): predicted the first; save each as an image of its own"
        prepared.problem = f"{prepared.problem}; {several}" if prepared.problem else several
    return prepared


def open_image(path: str | os.PathLike) -> Image.Image:
    """Image.open without Pillow's DecompressionBombWarning: an image between Pillow's limit and twice it is read
    (in bounded memory, see read_reduced); beyond twice it Pillow raises DecompressionBombError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def read_reduced(image: Image.Image, max_side: int) -> Image.Image:
    """An opened image's first frame, turned as its EXIF orientation says, reduced by a whole factor to under
    2 * max_side where it is larger: a JPEG decoded at 1/2-1/8 scale, anything else averaged over boxes of
    pixels in bands of rows, so memory holds the decoded file and one band, never a float copy of it all.
    prepare() then fits the result to max_side as it does any image."""
    w, h = image.size
    if image.format == "JPEG" and max(w, h) > 2 * max_side:
        image.draft("L", (w * max_side // max(w, h), h * max_side // max(w, h)))  # decode at 1/2-1/8 scale
    ImageOps.exif_transpose(image, in_place=True)  # a phone photo's orientation; no copy where there is none
    factor = max(image.size) // max_side
    if factor < 2:
        return image
    # Modes to_gray reads the same way (grey levels, transparency, 16-bit values) that Image.reduce accepts
    transparent = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    mode = "LA" if transparent else "I" if image.mode.startswith("I") else "F" if image.mode == "F" else "L"
    w, h = image.size
    out = Image.new(mode, (-(-w // factor), -(-h // factor)))
    band = factor * max(1, 2**22 // (w * factor))  # rows per band: a whole number of boxes, about 4M pixels
    for top in range(0, h, band):
        piece = image.crop((0, top, w, min(top + band, h)))
        out.paste((piece if piece.mode == mode else piece.convert(mode)).reduce(factor), (0, top // factor))
    return out.convert("I;16") if image.mode.startswith("I;16") else out  # read as 16-bit, as the file is


def prepare(image: Image.Image | np.ndarray) -> Prepared:
    """One image of one digit -> MNIST's 28x28 form (see the module's docstring)."""
    gray, steps = to_gray(image)
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        return Prepared(None, steps, f"{w}x{h} pixels is too small to hold a digit (at least {MIN_SIDE}x{MIN_SIDE})")
    for inverted in (False, True):
        candidate = 255.0 - gray if inverted else gray
        if mnist_like(candidate):
            steps.append("inverted (dark digit on a light background)" if inverted else "already MNIST-like: unchanged")
            return Prepared(candidate.astype(np.uint8), steps)
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = resize(gray, size)
        steps.append(f"reduced to {size[0]}x{size[1]}")

    border = ring(gray)
    background = float(np.median(border))
    smooth = box_mean(gray, 1)  # a 3x3 mean: single noisy pixels cannot pass for strokes
    darker, lighter = background - float(smooth.min()), float(smooth.max()) - background
    contrast = max(darker, lighter)
    noise = 1.4826 * float(np.median(np.abs(border - background)))  # the background's standard deviation, robustly
    if contrast < max(MIN_CONTRAST, 4.0 * noise):
        return Prepared(None, steps, f"blank: no digit found (contrast {contrast:.0f} grey levels over the "
                                     f"background, at least {max(MIN_CONTRAST, 4.0 * noise):.0f} needed)")
    inverted = darker > lighter  # a dark digit on a light background
    if inverted:
        gray, smooth, border, background = 255.0 - gray, 255.0 - smooth, 255.0 - border, 255.0 - background
        steps.append("inverted (dark digit on a light background)")

    mask = smooth > background + contrast / 2
    keep, blobs, specks = digit_blobs(mask)
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if max(y1 - y0, x1 - x0) < max(4, MIN_EXTENT * max(gray.shape)):
        return Prepared(None, steps, f"nearly blank: the only mark is {x1 - x0}x{y1 - y0} pixels "
                                     f"of a {gray.shape[1]}x{gray.shape[0]} image")
    problem = None
    if blobs > 1:
        problem = (f"{blobs} separate blobs (several digits, or a digit and a mark?): predicted the largest; "
                   "crop the image to one digit")
    elif specks:
        steps.append(f"dropped {specks} speck{'s' if specks > 1 else ''}")

    floor = background + min(3.0 * noise, contrast / 4)  # the background's noise becomes black
    stroke = float(np.median(gray[mask & keep]))  # the strokes' own level becomes white
    level = np.clip((gray - floor) / max(stroke - floor, 1.0), 0.0, 1.0) * 255.0
    near = box_mean(keep.astype(np.float32), max(2, round(0.05 * max(y1 - y0, x1 - x0)))) > 0
    level[~near] = 0.0  # other blobs, specks and noise away from the digit
    if inverted:  # said in the file's own grey levels
        steps.append(f"contrast stretched ({255 - floor:.0f} and lighter -> 0, {255 - stroke:.0f} and darker -> 255)")
    else:
        steps.append(f"contrast stretched ({floor:.0f} and darker -> 0, {stroke:.0f} and lighter -> 255)")
    crop = level[y0:y1, x0:x1]
    scale = FIT / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    fitted = resize(crop, size)
    steps.append(f"cropped to the digit ({x1 - x0}x{y1 - y0} at x={x0}, y={y0}), fitted to {size[0]}x{size[1]}")
    pixels = centre_by_mass(fitted)
    steps.append("centred by mass in 28x28")
    return Prepared(np.round(pixels).astype(np.uint8), steps, problem)


def to_gray(image: Image.Image | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Grey levels as float32 (H, W) in [0, 255], and what it took to get them."""
    steps: list[str] = []
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3:  # (H, W, channels)
            array = array[..., :3].mean(axis=2) if array.shape[2] >= 3 else array[..., 0]
        if array.ndim != 2:
            raise ValueError(f"expected a (H, W) or (H, W, channels) image, got shape {image.shape}")
        if array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.size and array.max() > 255):
            steps.append("16-bit, scaled to 8 bits")
            return (array.astype(np.float32) / 257.0).clip(0, 255), steps
        if array.dtype.kind == "f" and array.size and float(array.max()) <= 1.0:
            steps.append("values in [0, 1], scaled to [0, 255]")
            return (array.astype(np.float32) * 255.0).clip(0, 255), steps
        return array.astype(np.float32).clip(0, 255), steps
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_gray(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        la = np.asarray(image.convert("LA"), dtype=np.float32)
        gray, alpha = la[..., 0], la[..., 1] / 255.0
        if alpha.min() < 1.0:
            ink = float(np.average(gray, weights=alpha + 1e-6))  # the visible strokes' level
            fill = 0.0 if ink > 127 else 255.0  # a background that shows them
            steps.append(f"transparency filled with {'black' if fill == 0 else 'white'}")
            return np.round(gray * alpha + fill * (1.0 - alpha)), steps  # 8-bit, as Pillow composites
        return gray, steps
    return np.asarray(image.convert("L"), dtype=np.float32), steps


def mnist_like(gray: np.ndarray) -> bool:
    """28x28 whole grey levels, a black background, a digit whose box is 18-20 pixels, centred by mass."""
    if gray.shape != (SIDE, SIDE) or gray.max() < 128 or not np.array_equal(gray, np.round(gray)):
        return False
    on = gray > 0
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    cy, cx = centre_of_mass(gray)
    return 18 <= side <= FIT and abs(cy - SIDE / 2) <= 1 and abs(cx - SIDE / 2) <= 1


def ring(gray: np.ndarray) -> np.ndarray:
    """The image's border, 3% of its shorter side wide (1 pixel at least): the background."""
    k = max(1, round(0.03 * min(gray.shape)))
    return np.concatenate([gray[:k].ravel(), gray[-k:].ravel(), gray[k:-k, :k].ravel(), gray[k:-k, -k:].ravel()])


def box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """The mean over each pixel's (2r+1)x(2r+1) neighbourhood (edges padded by replication)."""
    padded = np.pad(a.astype(np.float64), r + 1, mode="edge")
    s = padded.cumsum(0).cumsum(1)
    n = 2 * r + 1
    total = s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]
    return (total[: a.shape[0], : a.shape[1]] / (n * n)).astype(np.float32)


def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float grey levels resized to (width, height); Pillow's filters anti-alias when reducing."""
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    total = float(a.sum())
    return (float(a.sum(1) @ np.arange(a.shape[0])) / total, float(a.sum(0) @ np.arange(a.shape[1])) / total)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Place the patch in 28x28 with its centre of mass at the centre (pixel 14, as in MNIST)."""
    cy, cx = centre_of_mass(patch)
    top, left = round(SIDE / 2 - cy), round(SIDE / 2 - cx)
    out = np.zeros((SIDE, SIDE), np.float32)
    ys, xs = slice(max(top, 0), min(top + patch.shape[0], SIDE)), slice(max(left, 0), min(left + patch.shape[1], SIDE))
    out[ys, xs] = patch[ys.start - top: ys.stop - top, xs.start - left: xs.stop - left]
    return out.clip(0, 255)


def digit_blobs(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The digit's pixels (the largest blob and those near it), how many separate large blobs there
    are (1: one digit), and how many specks were dropped."""
    labels, areas, boxes = connected(mask)
    order = np.argsort(-areas)
    main = order[0]
    parts = [i for i in order if areas[i] >= SPECK * areas[main]]
    specks = len(order) - len(parts)
    group, box = [main], boxes[main].copy()
    grown = True
    while grown:  # take in the parts near the digit (a detached stroke) until none is left
        grown = False
        for i in parts:
            if i not in group and gap(box, boxes[i]) <= JOIN * max(box[1] - box[0], box[3] - box[2]):
                group.append(i)
                box = np.array([min(box[0], boxes[i][0]), max(box[1], boxes[i][1]),
                                min(box[2], boxes[i][2]), max(box[3], boxes[i][3])])
                grown = True
    digit_area = areas[group].sum()
    others = [i for i in parts if i not in group]
    separate = sum(areas[i] >= SEPARATE * digit_area for i in others)
    specks += len(others) - separate
    return np.isin(labels, np.array(group) + 1), 1 + separate, specks


def gap(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels between two boxes (y0, y1, x0, x1), ends exclusive; 0 where they touch or overlap."""
    return max(0, b[0] - a[1], a[0] - b[1], b[2] - a[3], a[2] - b[3])


def connected(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected blobs of a boolean mask, by runs of pixels per row joined across rows (union-find):
    labels (H, W) with 0 for background and k + 1 for blob k, each blob's area and box (y0, y1, x0, x1)."""
    h, w = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    run_rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # exclusive; runs come in row order, starts and ends pair up
    parent = list(range(len(starts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_rows, np.arange(h + 1))
    for r in range(1, h):
        j, j_end = row_first[r - 1], row_first[r]
        for i in range(row_first[r], row_first[r + 1]):
            while j < j_end and ends[j] < starts[i]:  # runs above that end left of this one (diagonals touch)
                j += 1
            k = j
            while k < j_end and starts[k] <= ends[i]:
                parent[root(k)] = root(i)
                k += 1
    roots = np.array([root(i) for i in range(len(starts))], dtype=np.int64)
    ids, index = np.unique(roots, return_inverse=True)
    n = len(ids)
    paint = np.zeros((h, w + 1), np.int32)  # +label where a run starts, -label where it ends: cumsum paints
    np.add.at(paint, (run_rows, starts), index + 1)
    np.add.at(paint, (run_rows, ends), -(index + 1))
    labels = paint.cumsum(axis=1)[:, :w]
    areas = np.bincount(index, weights=ends - starts, minlength=n).astype(np.int64)
    boxes = np.stack([np.full(n, h), np.zeros(n, np.int64), np.full(n, w), np.zeros(n, np.int64)], axis=1)
    np.minimum.at(boxes[:, 0], index, run_rows)
    np.maximum.at(boxes[:, 1], index, run_rows + 1)
    np.minimum.at(boxes[:, 2], index, starts)
    np.maximum.at(boxes[:, 3], index, ends)
    return labels, areas, boxes
