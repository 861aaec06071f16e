"""Predict digits with an exported ONNX model, through onnxruntime: no torch, no lightning.

    python -m mnist_lab.predict onnx=outputs/runs/<time>                 # the MNIST test set
    python -m mnist_lab.predict onnx=<run> source=my_digits/             # a folder of PNG/JPG images
    python -m mnist_lab.predict onnx=path/to/model.onnx source=x.npy     # an array (N, 28, 28), 0-255

`onnx` is a run folder (its export/model.onnx, written by python -m mnist_lab.export) or an .onnx
file. Writes into `out` (default: <model folder>/predictions/):
    predictions.csv   item (file name or index), predicted digit, top-3 digits with probabilities,
                      true label where known
    predictions.png   24 random images with predicted (true) labels, mistakes in red

Images: converted to grayscale; another size is resized to 28x28 (and said so); a dark digit on a
light background is inverted to MNIST's white on black (and said so); an unreadable file is reported
by name and skipped, the others are still predicted.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from mnist_lab.errors import DataError, ModelError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
log = logging.getLogger("mnist_lab.predict")


def find_onnx(model: str | os.PathLike) -> Path:
    path = Path(model).expanduser()
    for candidate in (path, path / "export" / "model.onnx", path / "model.onnx"):
        if candidate.is_file() and candidate.suffix == ".onnx":
            return candidate
    raise ModelError(f"no ONNX model at {path}: give an .onnx file or a run folder, after "
                     f"python -m mnist_lab.export checkpoint={path}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format) as a numpy array: magic 2051 images, 2049 labels."""
    data = path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {array.size} values, its header promises {int(np.prod(shape))}. "
                        "Replace it with the original file.")
    return array.reshape(shape)


def load_test_set(data_dir: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    raw = Path(data_dir).expanduser() / "MNIST" / "raw"
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    if not images.is_file() or not labels.is_file():
        raise DataError(f"MNIST test files not found in {raw}: set data_dir= (or MNIST_LAB_DATA_DIR) to a folder "
                        "holding MNIST/raw/, or predict source=<folder of images or .npy>")
    x, y = read_idx(images), read_idx(labels)
    return [str(i) for i in range(len(x))], x, y.astype(np.int64)


def load_images(folder: Path) -> tuple[list[str], np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    names, images = [], []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}: give a folder of digit images")
    for path in files:
        try:
            with Image.open(path) as image:
                gray = image.convert("L")
                if gray.size != (28, 28):
                    log.warning(f"{path.name}: resized from {gray.size[0]}x{gray.size[1]} to 28x28")
                    gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
                pixels = np.asarray(gray, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            log.error(f"{path.name}: skipped, cannot read it as an image ({str(err).splitlines()[0]})")
            continue
        if pixels.mean() > 127:  # MNIST digits are white on black
            log.warning(f"{path.name}: inverted (a dark digit on a light background)")
            pixels = 255 - pixels
        names.append(path.name)
        images.append(pixels)
    if not images:
        raise DataError(f"none of the {len(files)} files in {folder} could be read as an image")
    return names, np.stack(images)


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


def write_csv(path: Path, names: list[str], probs: np.ndarray, labels: np.ndarray | None) -> None:
    top3 = np.argsort(-probs, axis=1)[:, :3]
    tmp = path.with_name(".tmp-" + path.name)
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "predicted", "top1", "p1", "top2", "p2", "top3", "p3", "true"])
        for i, name in enumerate(names):
            row = [name, int(top3[i, 0])]
            for d in top3[i]:
                row += [int(d), f"{probs[i, d]:.6f}"]
            out.writerow(row + ["" if labels is None else int(labels[i])])
    tmp.replace(path)


def write_grid(path: Path, images: np.ndarray, probs: np.ndarray, labels: np.ndarray | None,
               n: int = 24, seed: int = 0) -> None:
    from mnist_lab import plots  # matplotlib only

    pick = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    preds = probs.argmax(1)
    if labels is not None:
        titles = [f"{preds[i]} ({labels[i]})" for i in pick]
        wrong = [bool(preds[i] != labels[i]) for i in pick]
        what = "predicted (true), mistakes in red"
    else:
        titles, wrong, what = [f"{preds[i]} {probs[i].max():.0%}" for i in pick], None, "predicted digit, probability"
    plots.save(plots.digit_grid(images[pick], titles, wrong, title=f"{len(pick)} random images: {what}"), path)


def predict(model: str, source: str = "test", data_dir: str = "data", out: str | None = None,
            threads: int = 1, grid: int = 24, seed: int = 0) -> dict:
    onnx_path = find_onnx(model)
    labels = None
    if source == "test":
        names, images, labels = load_test_set(data_dir)
    else:
        src = Path(source).expanduser()
        if src.is_dir():
            names, images = load_images(src)
        elif src.suffix == ".npy" and src.is_file():
            names, images = load_array(src)
        else:
            raise DataError(f"source={source}: not found, or neither a folder of images nor a .npy file; "
                            "use source=test for the MNIST test set")
    probs = Predictor(onnx_path, threads)(images)
    folder = Path(out) if out else onnx_path.parent.parent / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "predictions.csv", names, probs, labels)
    write_grid(folder / "predictions.png", np.asarray(images, dtype=np.float32), probs, labels, grid, seed)
    result = {"n": len(names), "csv": folder / "predictions.csv", "png": folder / "predictions.png"}
    if labels is not None:
        result["accuracy"] = float((probs.argmax(1) == labels).mean())
    return result


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = predict(cfg.onnx, cfg.source, cfg.data_dir, cfg.out, cfg.threads, cfg.grid, cfg.seed)
    accuracy = f", accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
    print(f"predicted {result['n']:,} images{accuracy}: {result['csv']}, {result['png']}")


if __name__ == "__main__":
    main()
