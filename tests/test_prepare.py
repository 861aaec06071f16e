"""A person's own digit images: MNIST's preparation (mnist_lab.prepare) and predict on them.

The model here is trained on drawn digits in MNIST's form (tests.rerender.glyphs), whose class is
their shape; the person's images are those digits re-rendered as scans arrive (3-5x, off-centre,
dark on grey paper with noise, some JPEG)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
from PIL import Image

from mnist_lab.config import compose
from mnist_lab.errors import ConfigError
from mnist_lab.export import export
from mnist_lab.idx import read_idx
from mnist_lab.predict import predict, report
from mnist_lab.prepare import SIDE, centre_of_mass, connected, prepare, prepare_file, read_reduced
from mnist_lab.train import train
from tests.conftest import make_glyph_mnist, tiny_overrides
from tests.rerender import glyphs, rerender, write_rerendered


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def box_side(pixels: np.ndarray) -> int:
    ys, xs = np.nonzero(pixels)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)


# --- the preparation alone --------------------------------------------------------------------------

def test_mnist_like_images_pass_unchanged_or_only_inverted():
    digits, _ = glyphs(40, seed=5)
    for digit in digits:
        same = prepare(digit)
        assert same.steps == ["already MNIST-like: unchanged"] and np.array_equal(same.pixels, digit)
        flipped = prepare(255 - digit)
        assert flipped.steps == ["inverted (dark digit on a light background)"]
        assert np.array_equal(flipped.pixels, digit)


def test_a_scanned_digit_gets_mnists_form():
    digits, _ = glyphs(20, seed=6)
    rng = np.random.default_rng(0)
    for digit in digits:
        prepared = prepare(rerender(digit, rng))
        assert prepared.problem is None and prepared.pixels.shape == (SIDE, SIDE)
        assert "inverted (dark digit on a light background)" in prepared.steps
        assert prepared.steps[-1] == "centred by mass in 28x28"
        assert 19 <= box_side(prepared.pixels) <= 20  # the box fitted to 20x20, as MNIST's
        cy, cx = centre_of_mass(prepared.pixels.astype(np.float64))
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
        # the digit it was made from, up to the pixel that rounding the centre of mass may shift it by;
        # the grey, noisy paper became black
        similar = max(np.corrcoef(np.roll(prepared.pixels, (dy, dx), (0, 1)).ravel(), digit.ravel())[0, 1]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert similar > 0.93, similar


def test_blobs_are_8_connected_runs():
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one blob
    mask[4:6, 4:8] = True
    mask[0, 6] = True
    labels, areas, boxes = connected(mask)
    assert sorted(areas.tolist()) == [1, 3, 8] and labels[0, 0] == labels[2, 2] != labels[4, 4]
    assert boxes[labels[4, 4] - 1].tolist() == [4, 6, 4, 8]


def paper(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(200 + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def test_blank_nearly_blank_tiny_and_several_blobs_are_named():
    assert prepare(np.full((60, 40), 255, np.uint8)).problem.startswith("blank: no digit found")
    assert prepare(paper(120, 90)).problem.startswith("blank: no digit found")  # grey paper, noise only
    dot = paper(200, 200)
    dot[100:102, 50:52] = 20
    speck = prepare(dot)
    assert speck.pixels is None
    assert speck.problem.startswith("nearly blank: the only mark is 3x4 pixels of a 200x200 image")
    tiny = prepare(np.zeros((3, 3), np.uint8))
    assert tiny.pixels is None and tiny.problem == "3x3 pixels is too small to hold a digit (at least 8x8)"
    a, b = glyphs(2, seed=7)[0]
    two = np.concatenate([255 - a, np.full((28, 20), 255, np.uint8), 255 - b], axis=1)
    several = prepare(two)
    assert several.pixels is not None and several.problem.startswith("2 separate blobs")


def test_sixteen_bit_and_transparent_images_are_read(tmp_path):
    digit = glyphs(1, seed=8)[0][0]
    wide = rerender(digit, np.random.default_rng(1))
    deep = (np.asarray(wide, np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    prepared = prepare_file(tmp_path / "deep.png")
    assert "16-bit, scaled to 8 bits" in prepared.steps
    assert np.array_equal(prepared.pixels, prepare(wide).pixels)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit  # black strokes drawn on a transparent canvas
    Image.fromarray(rgba).save(tmp_path / "ink.png")
    ink = prepare_file(tmp_path / "ink.png")
    assert ink.steps[:2] == ["transparency filled with white", "inverted (dark digit on a light background)"]
    assert np.array_equal(ink.pixels, digit)


def test_large_images_are_reduced_before_they_become_float(tmp_path):
    digit = glyphs(1, seed=11)[0][0]
    scan = rerender(digit, np.random.default_rng(4))  # dark on grey paper
    big = scan.resize((scan.width * 25, scan.height * 25), Image.Resampling.BILINEAR)  # over 2 * MAX_SIDE
    # in bands of rows, exactly Pillow's own reduce of the whole image; a 1-bit image read as grey levels
    assert np.array_equal(np.asarray(read_reduced(big, 1024)), np.asarray(big.reduce(big.width // 1024)))
    ink = big.point(lambda v: 255 if v > 128 else 0).convert("1")
    assert np.array_equal(np.asarray(read_reduced(ink, 1024)), np.asarray(ink.convert("L").reduce(ink.width // 1024)))
    ink.save(tmp_path / "ink.png")
    read = prepare_file(tmp_path / "ink.png")
    direct = prepare(np.asarray(ink.convert("L")))  # the whole image as floats, as before
    assert read.steps[:2] == [f"{ink.width}x{ink.height}", "reduced to 1024x" + direct.steps[0].split("x")[-1]]
    assert read.problem is None and box_side(read.pixels) == box_side(direct.pixels)
    assert np.abs(read.pixels.astype(int) - direct.pixels).mean() < 3  # grey levels of 255


def test_pillows_pixel_limit_is_no_warning_and_twice_it_is_named(tmp_path, monkeypatch, recwarn):
    import mnist_lab.predict as predict_module

    digit = glyphs(1, seed=12)[0][0]
    Image.fromarray(255 - digit).resize((1200, 1200)).save(tmp_path / "a_big.png")
    Image.fromarray(255 - digit).resize((1500, 1500)).save(tmp_path / "b_bigger.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow warns over 1.0M pixels, refuses over 2.0M
    images, notes = predict_module.load_images([tmp_path / "a_big.png", tmp_path / "b_bigger.png"])
    assert images[0] is not None and notes[0].startswith("1200x1200, reduced to 1024x1024")
    assert images[1] is None and notes[1] == ("not predicted: too large to read: over 2,000,000 pixels "
                                              "(Pillow's guard against decompression bombs); scale it down first")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_animated_image_is_predicted_by_its_first_frame(tmp_path):
    a, b = glyphs(2, seed=13)[0]
    frames = [Image.fromarray(255 - d).resize((84, 84)) for d in (a, b, a)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / "first.gif")
    moving, first = prepare_file(tmp_path / "moving.gif"), prepare_file(tmp_path / "first.gif")
    assert moving.problem == ("3 frames (animated or several pages): predicted the first; "
                              "save each as an image of its own")
    assert first.problem is None and np.array_equal(moving.pixels, first.pixels)


def test_prepare_needs_only_numpy_and_pillow():
    import ast
    from pathlib import Path

    import mnist_lab.prepare

    tree = ast.parse(Path(mnist_lab.prepare.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "os", "warnings", "dataclasses", "numpy", "PIL"}  # a file a user may copy


# --- predict on them ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def glyph_run(tmp_path_factory):
    """An MLP trained on drawn digits, exported to ONNX and .pt2."""
    data = make_glyph_mnist(tmp_path_factory.mktemp("glyphs"))
    out = tmp_path_factory.mktemp("glyph_run")
    train(compose(tiny_overrides(data, out) + ["data.val_size=200"]))
    export(out, formats=["onnx", "pt2"], check=False)
    return out, data


def test_rerendered_digits_within_2_points_of_the_originals(glyph_run, tmp_path):
    run, data = glyph_run
    original = predict(str(run))  # the test set, from the run's own data folder (its config.yaml)
    assert original["csv"] == run / "predictions" / "test" / "predictions.csv"
    raw = data / "MNIST" / "raw"
    images, labels = read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")
    write_rerendered(images, labels, tmp_path / "scans", seed=0)
    result = predict(str(run), source=str(tmp_path / "scans"))
    assert result["csv"] == run / "predictions" / "scans" / "predictions.csv" and result["n"] == len(labels)
    got = rows(result["csv"])
    accuracy = np.mean([int(r["predicted"]) == int(r["item"].split("_")[1].split(".")[0]) for r in got])
    assert original["accuracy"] > 0.85  # a real model, not chance
    assert abs(accuracy - original["accuracy"]) <= 0.02, (accuracy, original["accuracy"])
    assert all("centred by mass in 28x28" in r["note"] for r in got)
    assert len(rows(original["csv"])) == len(labels)  # the test set's predictions were kept


def test_mnist_like_files_keep_their_predictions_exactly(glyph_run, tmp_path):
    run, data = glyph_run
    raw = data / "MNIST" / "raw"
    images = read_idx(raw / "t10k-images-idx3-ubyte")
    folder = tmp_path / "as_png"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    as_files = rows(predict(str(run), source=str(folder))["csv"])
    as_test = rows(predict(str(run), out=str(tmp_path / "test"))["csv"])
    assert [r["predicted"] for r in as_files] == [r["predicted"] for r in as_test]
    assert [r["p1"] for r in as_files] == [r["p1"] for r in as_test]
    assert {r["note"] for r in as_files} == {"already MNIST-like: unchanged"}


def test_awkward_files_each_named_the_others_predicted(glyph_run, tmp_path, caplog):
    run, _ = glyph_run
    digits, labels = glyphs(4, seed=9)
    rng = np.random.default_rng(2)
    folder = tmp_path / "mixed"
    folder.mkdir()
    rerender(digits[0], rng).save(folder / "a_good.png")
    Image.fromarray(paper(150, 120)).save(folder / "b_blank.png")
    two = np.concatenate([255 - digits[1], np.full((28, 24), 255, np.uint8), 255 - digits[2]], axis=1)
    Image.fromarray(two).resize((208, 84)).save(folder / "c_two_digits.png")
    Image.fromarray(np.full((3, 3), 128, np.uint8)).save(folder / "d_tiny.png")
    huge = rerender(digits[3], rng).resize((4000, 3000), Image.Resampling.BILINEAR)
    huge.save(folder / "e_huge.jpg", quality=85)
    deep = rerender(digits[0], rng)
    Image.fromarray((np.asarray(deep, np.uint16) * 257).astype(np.uint16)).save(folder / "f_16bit.png")
    (folder / "g_broken.png").write_bytes(b"\x89PNG but not really")
    with caplog.at_level(logging.INFO, logger="mnist_lab.predict"):
        result = predict(str(run), source=str(folder))
    log = caplog.text
    assert "b_blank.png: not predicted, blank: no digit found" in log
    assert "c_two_digits.png: 2 separate blobs (several digits, or a digit and a mark?): predicted the largest" in log
    assert "d_tiny.png: not predicted, 3x3 pixels is too small to hold a digit" in log
    assert "e_huge.jpg: 4000x3000, reduced to 1024x768" in log
    assert "f_16bit.png: " in log and "16-bit, scaled to 8 bits" in log
    assert "g_broken.png: not predicted, cannot read it as an image" in log
    assert "7 files: 4 prepared as MNIST was, 0 already MNIST-like, 3 not predicted" in log
    assert (result["n"], result["skipped"]) == (4, 3)
    assert "predicted 4 images (3 files not predicted: see the log)" in report(result)
    got = {r["item"]: r for r in rows(result["csv"])}
    assert list(got) == ["a_good.png", "b_blank.png", "c_two_digits.png", "d_tiny.png", "e_huge.jpg",
                         "f_16bit.png", "g_broken.png"]
    for name in ("b_blank.png", "d_tiny.png", "g_broken.png"):
        assert got[name]["predicted"] == "" and got[name]["note"].startswith("not predicted: "), name
    assert got["c_two_digits.png"]["note"].startswith("2 separate blobs")
    assert "reduced to 1024x768" in got["e_huge.jpg"]["note"] and "16-bit" in got["f_16bit.png"]["note"]
    # the odd but legible ones are read right
    assert [int(got[n]["predicted"]) for n in ("a_good.png", "e_huge.jpg", "f_16bit.png")] == \
        [labels[0], labels[3], labels[0]]
    with Image.open(result["png"]) as grid:  # 4 files, each beside its 28x28: one row of 8
        assert grid.size[0] == 880 and grid.size[1] < 300


def test_one_file_outputs_per_source_and_no_silent_overwrite(glyph_run, tmp_path):
    run, _ = glyph_run
    digit, label = glyphs(1, seed=10)
    rerender(digit[0], np.random.default_rng(3)).save(tmp_path / "seven.jpg")
    result = predict(str(run), source=str(tmp_path / "seven.jpg"), out=str(tmp_path / "one"))
    assert result["n"] == 1 and report(result).startswith("predicted 1 image: ")
    assert rows(result["csv"])[0]["predicted"] == str(label[0])
    with pytest.raises(ConfigError, match="predictions.csv exists .*: pass overwrite=true to replace it, or out="):
        predict(str(run), source=str(tmp_path / "seven.jpg"), out=str(tmp_path / "one"))
    assert predict(str(run), source=str(tmp_path / "seven.jpg"), out=str(tmp_path / "one"), overwrite=True)["n"] == 1
    default = predict(str(run), source=str(tmp_path / "seven.jpg"))
    assert default["csv"] == run / "predictions" / "seven" / "predictions.csv"


def test_exported_graphs_with_the_same_preparation(glyph_run, tmp_path):
    import torch

    run, _ = glyph_run
    digits, labels = glyphs(10, seed=11)
    names = write_rerendered(digits, labels, tmp_path / "mine", seed=4)
    by_predict = rows(predict(str(run), source=str(tmp_path / "mine"), out=str(tmp_path / "o"))["csv"])
    pixels = np.stack([prepare_file(tmp_path / "mine" / n).pixels for n in names])  # as the README shows
    model = torch.export.load(str(run / "export" / "model.pt2")).module()
    probs = model(torch.from_numpy(pixels).float()).detach().numpy()
    assert [str(d) for d in probs.argmax(1)] == [r["predicted"] for r in by_predict]
    assert np.allclose(probs.max(1), [float(r["p1"]) for r in by_predict], atol=1e-5)
