"""Look at the data before training: per split shape, dtype, value range, class counts; sample digits;
how to cite MNIST.

    python -m mnist_lab.explore                        # data.data_dir / MNIST_LAB_DATA_DIR as for training
    python -m mnist_lab.explore data.data_dir=/path out=explore/

Prints the numbers and the citation (BibTeX and APA); writes into `out` (default outputs/explore/):
samples.png (a grid of training digits with their labels) and citation.bib. (Named explore, not
inspect: a module named inspect would shadow Python's own when this folder is on sys.path.)
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from mnist_lab import usage
from mnist_lab.config import CONF_DIR, VERSION_BASE
from mnist_lab.runs import write_text

BIBTEX = """@article{lecun1998gradient,
  author  = {LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  title   = {Gradient-based learning applied to document recognition},
  journal = {Proceedings of the IEEE},
  volume  = {86},
  number  = {11},
  pages   = {2278--2324},
  year    = {1998},
  doi     = {10.1109/5.726791}
}
@misc{lecun1998mnist,
  author       = {LeCun, Yann and Cortes, Corinna and Burges, Christopher J. C.},
  title        = {The {MNIST} database of handwritten digits},
  year         = {1998},
  howpublished = {\\url{http://yann.lecun.com/exdb/mnist/}}
}"""

APA = ("LeCun, Y., Bottou, L., Bengio, Y., & Haffner, P. (1998). Gradient-based learning applied to document "
       "recognition. Proceedings of the IEEE, 86(11), 2278-2324. https://doi.org/10.1109/5.726791\n"
       "LeCun, Y., Cortes, C., & Burges, C. J. C. (1998). The MNIST database of handwritten digits [Data set]. "
       "http://yann.lecun.com/exdb/mnist/")


def describe(data_dir: str, verify_checksums: bool = True) -> dict[str, dict]:
    """Per split: shape, dtype, min, max, class counts (from the raw uint8 files, as torchvision reads them)."""
    from mnist_lab.data import check_raw_files, load_split

    check_raw_files(data_dir, checksums=verify_checksums)
    stats = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = load_split(data_dir, train=train)
        x, y = images.numpy(), labels.numpy()
        stats[split] = {"images": x, "labels": y, "shape": tuple(x.shape), "dtype": str(x.dtype),
                        "min": int(x.min()), "max": int(x.max()), "label_dtype": str(labels.dtype),
                        "counts": np.bincount(y, minlength=10).tolist()}
    return stats


def report(stats: dict[str, dict]) -> str:
    """describe()'s numbers as printed: two lines per split."""
    lines = []
    for split, s in stats.items():
        lines.append(f"{split:5s}  images {s['shape']} {s['dtype']}, values {s['min']}-{s['max']}; "
                     f"labels ({s['shape'][0]},) {s['label_dtype']}")
        lines.append("       per digit: " + "  ".join(f"{d}: {c:,}" for d, c in enumerate(s["counts"]))
                     + f"  (sum {sum(s['counts']):,})")
    return "\n".join(lines)


def sample_grid(images: np.ndarray, labels: np.ndarray, n: int = 40, seed: int = 0):
    """A figure of `n` random digits (picked with `seed`), each titled with its label."""
    from mnist_lab import drawing

    pick = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    return drawing.digit_grid(images[pick], [f"label {labels[i]}" for i in pick],
                            title=f"{len(pick)} random training digits (28x28 uint8, 0 = black, 255 = white)")


def explore(data_dir: str, out: str | Path, verify_checksums: bool = True, n: int = 40, seed: int = 0) -> dict:
    """describe() the data and write samples.png and citation.bib into `out`; returns {"stats": describe()'s
    dict, "png": samples.png, "bib": citation.bib}."""
    from mnist_lab import drawing

    stats = describe(data_dir, verify_checksums)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = stats["train"]
    png = drawing.save(sample_grid(train["images"], train["labels"], n, seed), out / "samples.png")
    bib = write_text(out / "citation.bib", BIBTEX + "\n")
    return {"stats": stats, "png": png, "bib": bib}


@hydra.main(config_path=CONF_DIR, config_name="explore", version_base=VERSION_BASE)
def main(cfg: DictConfig) -> None:
    result = explore(cfg.data.data_dir, cfg.out, cfg.data.verify_checksums, cfg.samples, cfg.seed)
    print(report(result["stats"]))
    print(f"\nsample digits: {result['png']}")
    print("\nCite MNIST as (BibTeX, also in " + str(result["bib"]) + "):\n" + BIBTEX)
    print("\nAPA:\n" + APA)


if __name__ == "__main__":
    usage.start("explore", main)
