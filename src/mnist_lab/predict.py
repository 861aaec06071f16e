"""Predict digits with an exported ONNX model, through onnxruntime: no torch, no lightning.

    python -m mnist_lab.predict onnx=outputs/runs/<time>                 # the MNIST test set
    python -m mnist_lab.predict onnx=<run> source=my_digits/             # a folder of PNG/JPG images
    python -m mnist_lab.predict onnx=<run> source=seven.jpg              # one image
    python -m mnist_lab.predict onnx=path/to/model.onnx source=x.npy     # an array (N, 28, 28), 0-255

`onnx` is a run folder (its export/model.onnx, written by python -m mnist_lab.export) or an .onnx
file. The test set is read from data_dir, by default the run's own data.data_dir (its config.yaml).
Writes into `out` (default: <run>/predictions/<source>/, e.g. predictions/test/, predictions/my_digits/;
an earlier predictions.csv there is kept unless overwrite=true):
    predictions.csv   item (file name or index), predicted digit, top-3 digits with probabilities,
                      true label where known, and a note: what was done to the image, or why it
                      was not predicted
    predictions.png   24 random images with predicted (true) labels, mistakes in red; for image
                      files the file itself beside the 28x28 the model saw

Images are prepared as MNIST's digits were (mnist_lab.prepare: inverted to white on black where
needed, background noise removed, the digit cropped, fitted to 20x20 and centred by mass in 28x28);
each file's line in the log says what was done. Already MNIST-like images pass unchanged. A blank,
too small or unreadable file is named and not predicted, an image of several separate blobs is
named and its largest blob predicted, an animated image (or a multi-page TIFF) is predicted by its first
frame and named; the others are still predicted. A folder's files that are not images (by suffix) are
named in one line and left out. Images of more than 2048 pixels a side are reduced while read (see
mnist_lab.prepare.read_reduced): a 13300x13300 scan costs a few hundred MB, not gigabytes
(scripts/bench_predict.py --memory). Arrays (.npy) are taken as prepared model inputs.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from mnist_lab import idx, usage
from mnist_lab.config import CONF_DIR, VERSION_BASE
from mnist_lab.errors import ConfigError, DataError, ModelError
from mnist_lab.runs import EXPORT_FILES, RunDir, atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
log = logging.getLogger("mnist_lab.predict")


def find_onnx(model: str | os.PathLike) -> Path:
    """The .onnx file that `model` names: the file itself, a run folder's export/model.onnx, or a folder's
    model.onnx."""
    path = Path(model).expanduser()
    for candidate in (path, RunDir(path).onnx, path / EXPORT_FILES["onnx"]):
        if candidate.is_file() and candidate.suffix == ".onnx":
            return candidate
    raise ModelError(f"no ONNX model at {path}: give an .onnx file or a run folder, after "
                     f"python -m mnist_lab.export checkpoint={path}")


def runs_data_dir(onnx_path: Path) -> str | None:
    """data.data_dir from the run's config.yaml, as export finds it: the data the model was trained on."""
    config = RunDir.holding(onnx_path).config
    if not config.is_file():
        return None
    import yaml

    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return data.get("data_dir")


def load_test_set(data_dir: str, where: str = "") -> tuple[list[str], np.ndarray, np.ndarray]:
    """MNIST's test images: (names "0".."9999", uint8 images (N, 28, 28), int64 labels)."""
    raw = idx.raw_folder(data_dir)
    images, labels = (raw / name for name in idx.SPLITS["test"])
    if not images.is_file() or not labels.is_file():
        raise DataError(f"MNIST test files not found in {raw}{where}: set data_dir= (or MNIST_LAB_DATA_DIR) to a "
                        "folder holding MNIST/raw/, or predict source=<folder or file of images, or .npy>")
    x, y = idx.read_idx(images), idx.read_idx(labels)
    return [str(i) for i in range(len(x))], x, y.astype(np.int64)


def image_files(src: Path) -> list[Path]:
    """The image files of a folder (or the one file), by suffix; the folder's other files are named in the log."""
    if src.is_file():
        return [src]
    visible = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    files = [p for p in visible if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name + ("/" if p.is_dir() else "") for p in visible if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {src}: give a folder of digit images")
    if others:
        log.warning(f"skipped {plural(len(others), 'other file')} (not {'/'.join(s[1:] for s in IMAGE_SUFFIXES)}): "
                    f"{listed(others)}" + ("; predict a .npy as source=<file>.npy" if any(
                        o.endswith(".npy") for o in others) else ""))
    return files


def listed(names: list[str], most: int = 5) -> str:
    """'a.npy, b.txt' or, for many, the first `most` and how many more."""
    more = f" and {len(names) - most:,} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def load_images(files: list[Path]) -> tuple[list[np.ndarray | None], list[str]]:
    """Each file prepared as MNIST was (None where it cannot be predicted), and a note on each."""
    from PIL import Image, UnidentifiedImageError

    from mnist_lab.prepare import prepare_file

    images: list[np.ndarray | None] = []
    notes: list[str] = []
    unchanged = 0
    for path in files:
        try:
            prepared = prepare_file(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            reason = f"cannot read it as an image ({str(err).splitlines()[0]})"
            if isinstance(err, Image.DecompressionBombError):
                reason = (f"too large to read: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's guard against "
                          "decompression bombs); scale it down first")
            log.error(f"{path.name}: not predicted, {reason}")
            images.append(None)
            notes.append(f"not predicted: {reason}")
            continue
        done = ", ".join(prepared.steps)
        images.append(prepared.pixels)
        if prepared.pixels is None:
            log.warning(f"{path.name}: not predicted, {prepared.problem} ({done})")
            notes.append(f"not predicted: {prepared.problem}; {done}")
        elif prepared.problem:
            log.warning(f"{path.name}: {prepared.problem} ({done})")
            notes.append(f"{prepared.problem}; {done}")
        else:
            unchanged += prepared.steps == ["already MNIST-like: unchanged"]
            log.info(f"{path.name}: {done}")
            notes.append(done)
    skipped = sum(image is None for image in images)
    log.info(f"{plural(len(files), 'file')}: {len(files) - skipped - unchanged:,} prepared as MNIST was, "
             f"{unchanged:,} already MNIST-like, {skipped:,} not predicted")
    if skipped == len(files):
        raise DataError(f"none of the {plural(len(files), 'file')} could be predicted (see the lines above): "
                        "give images of one digit each")
    return images, notes


def load_array(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path} is not a readable .npy array ({str(err).splitlines()[0]}): save images with "
                        "np.save as an (N, 28, 28) array of 0-255 values") from None
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 2 and x.shape == (28, 28):
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{path} holds an array of shape {x.shape}: expected (N, 28, 28) or (N, 1, 28, 28), 0-255")
    if x.dtype != np.uint8 and x.size and float(x.max()) <= 1.0:
        log.warning(f"{path.name}: values in [0, 1], scaled to [0, 255]")
        x = x * 255.0
    return [str(i) for i in range(len(x))], x


class Predictor:
    """An ONNX model under onnxruntime: raw pixels (N, 28, 28) in [0, 255] -> probabilities (N, 10)."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray, batch: int = 1000) -> np.ndarray:
        x = np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28)
        return np.concatenate([self.session.run(["probabilities"], {"pixels": x[i: i + batch]})[0]
                               for i in range(0, len(x), batch)])


def write_csv(path: Path, names: list[str], probs: np.ndarray, labels: np.ndarray | None,
              notes: list[str] | None = None, predicted: np.ndarray | None = None) -> None:
    """One row per item; `predicted` (indices into names) says which rows `probs` belong to."""
    rows = np.arange(len(names)) if predicted is None else predicted
    prob_of = {int(i): p for i, p in zip(rows, probs, strict=True)}
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "predicted", "top1", "p1", "top2", "p2", "top3", "p3", "true", "note"])
        for i, name in enumerate(names):
            row = [name]
            if i in prob_of:
                top3 = np.argsort(-prob_of[i])[:3]
                row.append(int(top3[0]))
                for d in top3:
                    row += [int(d), f"{prob_of[i][d]:.6f}"]
            else:
                row += [""] * 7
            out.writerow(row + ["" if labels is None else int(labels[i]), notes[i] if notes else ""])


def write_grid(path: Path, images: np.ndarray, probs: np.ndarray, labels: np.ndarray | None,
               n: int = 24, seed: int = 0, files: list[Path] | None = None) -> None:
    """`files`: the image files the rows came from, shown beside what the model saw."""
    from mnist_lab import drawing  # matplotlib only

    pick = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    preds = probs.argmax(1)
    if labels is not None:
        titles = [f"{preds[i]} ({labels[i]})" for i in pick]
        wrong = [bool(preds[i] != labels[i]) for i in pick]
        what = "predicted (true), mistakes in red"
    else:
        titles, wrong, what = [f"{preds[i]} {probs[i].max():.0%}" for i in pick], None, "predicted digit, probability"
    originals = None
    if files is not None:
        originals = [(files[i].name, thumbnail(files[i])) for i in pick]
        what += "; each file beside the 28x28 the model saw"
    drawing.save(drawing.digit_grid(images[pick], titles, wrong, title=f"{len(pick)} random images: {what}",
                                originals=originals), path)


def thumbnail(path: Path, side: int = 112) -> np.ndarray:
    """The file's grey levels, as read, reduced to fit side x side."""
    from mnist_lab.prepare import open_image, read_reduced, resize, to_gray

    with open_image(path) as image:
        gray, _ = to_gray(read_reduced(image, side))
    scale = min(1.0, side / max(gray.shape))
    return resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))))


def output_folder(onnx_path: Path, source: str, out: str | None, overwrite: bool) -> Path:
    """<run>/predictions/<source name>/ unless `out`; refuses to replace earlier predictions unasked."""
    if out:
        folder = Path(out).expanduser()
    else:
        src = Path(source).expanduser()
        name = "test" if source == "test" else (src.resolve().name if src.is_dir() else src.stem)
        folder = RunDir.holding(onnx_path).predictions / name
    if (folder / "predictions.csv").exists() and not overwrite:
        raise ConfigError(f"{folder / 'predictions.csv'} exists (an earlier prediction): pass overwrite=true to "
                          "replace it, or out=<another folder>")
    return folder


def predict(model: str, source: str = "test", data_dir: str | None = None, out: str | None = None,
            threads: int = 1, grid: int = 24, seed: int = 0, overwrite: bool = False) -> dict:
    """Predict and write predictions.csv and .png. data_dir=None: the run's own data folder."""
    onnx_path = find_onnx(model)
    folder = output_folder(onnx_path, source, out, overwrite)
    labels, notes, files, predicted = None, None, None, None
    if source == "test":
        where = ""
        if data_dir is None:
            data_dir = runs_data_dir(onnx_path)
            where = f" (the data_dir in {RunDir.holding(onnx_path).config})" if data_dir else ""
        names, images, labels = load_test_set(data_dir or "data", where)
    else:
        src = Path(source).expanduser()
        if src.is_dir() or (src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES):
            files = image_files(src)
            prepared, notes = load_images(files)
            names = [p.name for p in files]
            predicted = np.array([i for i, x in enumerate(prepared) if x is not None])
            images = np.stack([prepared[i] for i in predicted])
            files = [files[i] for i in predicted]
        elif src.suffix == ".npy" and src.is_file():
            names, images = load_array(src)
        else:
            raise DataError(f"source={source}: not found, or neither a folder or file of images "
                            f"({', '.join(IMAGE_SUFFIXES)}) nor a .npy file; use source=test for the MNIST test set")
    probs = Predictor(onnx_path, threads)(images)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "predictions.csv", names, probs, labels, notes, predicted)
    write_grid(folder / "predictions.png", np.asarray(images, dtype=np.float32), probs, labels, grid, seed, files)
    result = {"n": len(images), "skipped": len(names) - len(images), "csv": folder / "predictions.csv",
              "png": folder / "predictions.png"}
    if labels is not None:
        result["accuracy"] = float((probs.argmax(1) == labels).mean())
    return result


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def report(result: dict) -> str:
    """The command's last line: how many were predicted, the accuracy where known, where it went."""
    accuracy = f", accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
    skipped = f" ({plural(result['skipped'], 'file')} not predicted: see the log)" if result.get("skipped") else ""
    return f"predicted {plural(result['n'], 'image')}{accuracy}{skipped}: {result['csv']}, {result['png']}"


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base=VERSION_BASE)
def main(cfg: DictConfig) -> None:
    result = predict(cfg.onnx, str(cfg.source), cfg.data_dir, cfg.out, cfg.threads, cfg.grid, cfg.seed,
                     cfg.overwrite)
    print(report(result))


if __name__ == "__main__":
    usage.start("predict", main)
