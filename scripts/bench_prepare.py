"""predict on MNIST's test digits as a person's images arrive, against the same digits as MNIST has them.

    python -m mnist_lab.export checkpoint=<run>          # writes <run>/export/model.onnx
    python scripts/bench_prepare.py <run> --data <folder holding MNIST/raw> --n 10000 --seed 0

Re-renders the first --n test digits as tests/rerender.py does (3-5x larger, in a larger canvas,
off-centre, dark on light grey with noise, every third a JPEG; seeded), runs `predict` on that
folder and on the original test set, and prints both accuracies on the same digits, and the seconds
predict took. It calls only mnist_lab.predict.predict(model, source, data_dir, out), so an older
mnist_lab on PYTHONPATH is measured the same way.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.rerender


def accuracy(path: Path, labels) -> float:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    hits = [r["predicted"] != "" and int(r["predicted"]) == int(labels[i]) for i, r in enumerate(rows[: len(labels)])]
    return sum(hits) / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder that has been exported (or an .onnx file)")
    parser.add_argument("--data", required=True, help="a folder holding MNIST/raw/")
    parser.add_argument("--n", type=int, default=10_000, help="the first n test digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tests.rerender import write_rerendered

    import mnist_lab.predict as predict_module
    from mnist_lab.idx import read_idx
    from mnist_lab.predict import predict

    raw = Path(args.data) / "MNIST" / "raw"
    images = read_idx(raw / "t10k-images-idx3-ubyte")[: args.n]
    labels = read_idx(raw / "t10k-labels-idx1-ubyte")[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = write_rerendered(images, labels, tmp / "rerendered", seed=args.seed)
        start = time.perf_counter()
        predict(str(args.run), source=str(tmp / "rerendered"), data_dir=args.data, out=str(tmp / "r"))
        seconds = time.perf_counter() - start
        rerendered = accuracy(tmp / "r" / "predictions.csv", labels)
        predict(str(args.run), source="test", data_dir=args.data, out=str(tmp / "o"))
        original = accuracy(tmp / "o" / "predictions.csv", labels)
    row = {"run": str(args.run), "predict": predict_module.__file__, "n": len(names), "seed": args.seed,
           "original_acc": round(original, 4), "rerendered_acc": round(rerendered, 4),
           "predict_seconds": round(seconds, 1)}
    print(f"{args.run}: on {len(names):,} test digits, originals {original:.4f}, re-rendered {rerendered:.4f} "
          f"({seconds:.1f} s to predict them)")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
