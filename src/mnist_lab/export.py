"""Export a trained net for use without this code: ONNX, torch.export (.pt2), TorchScript, YAML + weights.

    python -m mnist_lab.export checkpoint=outputs/runs/<time>                 # a run folder or a .ckpt
    python -m mnist_lab.export checkpoint=<run> formats=[onnx,pt2] check=false
    python -m mnist_lab.train export=true                                     # at the end of training

Writes into <checkpoint folder>/export/ (an earlier export's files of formats left out are removed,
so model.yaml describes every file there):
    model.onnx            torch.onnx.export's dynamo exporter, one self-contained file, dynamic batch
    model.pt2             torch.export program (torch.export.load(path).module())
    model.torchscript.pt  TorchScript (torch.jit.load); deprecated upstream in favour of .pt2
    model.yaml            the architecture, readable, and the input/output contract
    weights.safetensors   the plain net's weights alone

Every graph takes raw pixels and returns class probabilities: input `pixels`, float32 in [0, 255],
shape (N, 28, 28); output `probabilities`, (N, 10), rows summing to 1. TorchScript and eager also
take uint8 and (N, 1, 28, 28). Scaling, normalization and softmax are inside, so a consumer needs
no preprocessing code for MNIST-form digits; a person's own images need MNIST's preparation first
(mnist_lab.prepare, numpy and Pillow only: crop, fit 20x20, centre by mass). With check=true (the
default) every format is run on the 10,000 test images and compared with the eager model; the
export fails if any probability differs by more than 1e-4 or any prediction differs, and then
leaves export/ as it was (files are staged and checked first).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

import hydra
import torch
import yaml
from omegaconf import DictConfig
from torch import nn

from mnist_lab import usage
from mnist_lab.config import CONF_DIR, VERSION_BASE
from mnist_lab.data import MEAN, STD, check_raw_files, load_split
from mnist_lab.errors import ConfigError, ExportCheckError
from mnist_lab.models import build_model, summary
from mnist_lab.module import load_net
from mnist_lab.runs import EXPORT_FILES, RunDir, resolve_checkpoint

FORMATS = ("onnx", "pt2", "torchscript", "weights")  # their file names: runs.EXPORT_FILES
TOLERANCE = 1e-4


class Deployable(nn.Module):
    """Raw pixels in [0, 255] -> class probabilities, around a plain net."""

    def __init__(self, net: nn.Module, normalize: bool = True):
        super().__init__()
        self.net = net
        self.images = len(net.input_shape) == 3  # the convnet wants (N, 1, 28, 28), the MLP (N, 784)
        # as the net was trained: data.normalize standardizes after /255 (off in experiment=keras_seed)
        self.mean, self.std = (MEAN, STD) if normalize else (0.0, 1.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n = pixels.shape[0]
        x = pixels.to(torch.float32).reshape(n, 784)
        if self.images:
            x = x.reshape(n, 1, 28, 28)
        x = (x / 255.0 - self.mean) / self.std
        return torch.softmax(self.net(x), dim=1)


def normalizes(ckpt: dict) -> bool:
    """Whether the checkpoint's net was trained on standardized inputs (data.normalize)."""
    return bool((ckpt["hyper_parameters"].get("config") or {}).get("data", {}).get("normalize", True))


def export(ckpt_path: str | os.PathLike, formats=FORMATS, check: bool = True,
           data_dir: str | None = None) -> dict[str, Path]:
    """Write the formats beside the checkpoint; with `check`, verify each against eager on the test set."""
    ckpt_path = resolve_checkpoint(ckpt_path)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:

        raise ConfigError(f"formats={list(formats)}: unknown {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    net, ckpt = load_net(ckpt_path)
    model = Deployable(net, normalizes(ckpt)).eval()
    out = RunDir.holding(ckpt_path).export
    staging = out / f".staging-{os.getpid()}"  # written and checked here, then moved into place
    staging.mkdir(parents=True, exist_ok=True)
    try:
        staged = write_formats(model, net, formats, staging)
        data_dir = data_dir or ckpt["hyper_parameters"].get("config", {}).get("data", {}).get("data_dir", "data")
        results = verify(model, staged, data_dir, ckpt["hyper_parameters"]["model"]) if check else {}

        card = model_card(net, ckpt_path, ckpt, staged, results)
        staged["yaml"] = staging / EXPORT_FILES["yaml"]
        staged["yaml"].write_text(yaml.safe_dump(card, sort_keys=False))
        files = {name: out / path.name for name, path in staged.items()}
        for name, path in staged.items():
            path.replace(files[name])  # only files that passed the check reach the export folder
        for name in FORMATS:  # an earlier export's other formats: model.yaml no longer describes them
            file = out / EXPORT_FILES[name]
            if name not in files and file.is_file():
                file.unlink()
                print(f"removed {file}: an earlier export's, not in formats={list(formats)}")
        return files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_formats(model: nn.Module, net: nn.Module, formats, folder: Path) -> dict[str, Path]:
    """Write each format of `formats` into `folder`; returns {format: file}."""
    example = torch.rand(4, 28, 28) * 255
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    files: dict[str, Path] = {}
    if "onnx" in formats:
        files["onnx"] = folder / EXPORT_FILES["onnx"]
        export_onnx(model, example, batch, files["onnx"])
    if "pt2" in formats:
        program = torch.export.export(model, (example,), dynamic_shapes={"pixels": {0: batch}})
        files["pt2"] = folder / EXPORT_FILES["pt2"]
        torch.export.save(program, files["pt2"])
    if "torchscript" in formats:
        files["torchscript"] = folder / EXPORT_FILES["torchscript"]
        with quiet_torchscript():
            torch.jit.save(torch.jit.script(model), str(files["torchscript"]))
    if "weights" in formats:
        from safetensors.torch import save_file

        files["weights"] = folder / EXPORT_FILES["weights"]
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(files["weights"]))
        umask = os.umask(0)
        os.umask(umask)
        files["weights"].chmod(0o666 & ~umask)  # safetensors writes 0600; readable like the other files
    return files


def export_onnx(model: nn.Module, example: torch.Tensor, batch, path: Path) -> None:
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the exporter narrates its passes on stdout; the check below says what matters
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["pixels"], output_names=["probabilities"],
                          dynamic_shapes={"pixels": {0: batch}}, external_data=False, verbose=False)


class quiet_torchscript(warnings.catch_warnings):
    """TorchScript is deprecated upstream (torch.export is its successor); it still works, and its
    FutureWarnings would only alarm the user here."""

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return self


def load_test_pixels(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_raw_files(data_dir, checksums=False)
    images, labels = load_split(data_dir, train=False)
    return images.to(torch.float32), labels


def verify(model: nn.Module, files: dict[str, Path], data_dir: str, model_cfg: dict) -> dict[str, dict]:
    """Run each exported format on the test images and compare with eager (`model`, a Deployable of the
    net that `model_cfg` builds); returns {format: max_abs_diff, disagreements, test_acc}. Raises
    ExportCheckError on the first format that differs."""
    pixels, labels = load_test_pixels(data_dir)
    with torch.no_grad():
        reference = torch.cat([model(chunk) for chunk in pixels.split(1000)])
    runners = {}
    if "onnx" in files:
        import onnxruntime as ort

        session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
        runners["onnx"] = lambda x: torch.from_numpy(session.run(["probabilities"], {"pixels": x.numpy()})[0])
    if "pt2" in files:
        program = torch.export.load(str(files["pt2"])).module()
        runners["pt2"] = program
    if "torchscript" in files:
        with quiet_torchscript():
            runners["torchscript"] = torch.jit.load(str(files["torchscript"]))
    if "weights" in files:
        from safetensors.torch import load_file

        net = build_model(**model_cfg)
        net.load_state_dict(load_file(str(files["weights"])))
        runners["weights"] = Deployable(net.eval(), normalize=model.std != 1.0)  # as `model` does
    results = {}
    for name, run in runners.items():
        with torch.no_grad():
            probs = torch.cat([run(chunk) for chunk in pixels.split(1000)])
        diff = float((probs - reference).abs().max())
        disagree = int((probs.argmax(1) != reference.argmax(1)).sum())
        acc = float((probs.argmax(1) == labels).float().mean())
        results[name] = {"max_abs_diff": diff, "disagreements": disagree, "test_acc": acc}
        ok = diff <= TOLERANCE and disagree == 0
        print(f"check {name:12s} on {len(labels):,} test images: max |p - p_eager| = {diff:.2e}, "
              f"{disagree} disagreeing predictions, accuracy {acc:.4f}  {'ok' if ok else 'FAILED'}")
        if not ok:
            raise ExportCheckError(f"{files[name]} disagrees with the eager model (max abs diff {diff:.2e} > "
                                   f"{TOLERANCE:g} or {disagree} predictions differ): do not use it; report the "
                                   "torch/onnxruntime versions")
    return results


def model_card(net: nn.Module, ckpt_path: Path, ckpt: dict, files: dict, results: dict) -> dict:
    """model.yaml's contents: the architecture (layers from the summary table), the input/output contract,
    where the weights came from, the files and the check's figures."""
    layers = []
    for line in summary(net).splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("(") and parts[1].endswith(")") and parts[1] != "(type)":
            shape = line[30:52].strip()
            layers.append({"name": parts[0], "type": parts[1].strip("()"), "output_shape": shape,
                           "params": int(line[52:].strip().replace(",", ""))})
    return {
        "model": ckpt["hyper_parameters"]["model"],
        "parameters": sum(p.numel() for p in net.parameters()),
        "layers": layers,
        "input": {"name": "pixels", "dtype": "float32 (TorchScript and eager: also uint8)", "range": [0, 255],
                  "shape": ["N", 28, 28], "note": "white digit on black, as MNIST",
                  "own_images": "from mnist_lab.prepare import prepare_file; prepare_file(path).pixels "
                                "(numpy + Pillow: MNIST's preparation, box fitted to 20x20, centred by mass)"},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", 10],
                   "note": "softmax over the digits 0-9"},
        "preprocessing_inside": f"x / 255, then (x - {MEAN}) / {STD}; reshaped to {list(net.input_shape)}"
        if normalizes(ckpt) else f"x / 255; reshaped to {list(net.input_shape)}",
        "checkpoint": str(ckpt_path),
        "epoch": None if ckpt.get("epoch") is None else ckpt["epoch"] + 1,  # counted from 1, as the run's log does
        "files": {k: v.name for k, v in files.items()},
        "check": results or "not run",
        "torch": str(torch.__version__),
        # how the weights were trained: git commit and state, versions, host (the run's provenance.yaml has more)
        "provenance": ckpt["hyper_parameters"].get("provenance") or "not recorded (a checkpoint from before "
                                                                   "mnist_lab kept provenance)",
    }


@hydra.main(config_path=CONF_DIR, config_name="export", version_base=VERSION_BASE)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    files = export(cfg.checkpoint, formats=list(cfg.formats), check=cfg.check, data_dir=cfg.data_dir)
    for name, path in files.items():
        print(f"{name:12s} {path}")


if __name__ == "__main__":
    usage.start("export", main)
