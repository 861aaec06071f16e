"""Inference latency on CPU: onnxruntime on the exported ONNX vs eager PyTorch, alternating in one process.

    python -m mnist_lab.export checkpoint=<run>          # writes <run>/export/model.onnx
    python scripts/bench_predict.py <run> --threads 1

Times one image and a batch of 256 (raw pixels in, probabilities out, preprocessing included on both
sides), median of --repeats rounds of --calls calls each. Prints a table and one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (or .ckpt) that has been exported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from mnist_lab.export import Deployable, load_net, normalizes, resolve_checkpoint

    torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.run)
    net, meta = load_net(ckpt)
    eager = Deployable(net, normalizes(meta)).eval()
    onnx = ckpt.parent.parent / "export" / "model.onnx"
    if not onnx.is_file():
        sys.exit(f"{onnx} not found: run python -m mnist_lab.export checkpoint={args.run} first")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    for n in (1, 256):
        x = (np.random.default_rng(0).random((n, 28, 28)) * 255).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_eager():
            with torch.inference_mode():
                eager(xt)

        def run_onnx():
            session.run(["probabilities"], {"pixels": x})

        calls = max(10, args.calls // (1 if n == 1 else 8))
        times = {"eager": [], "onnxruntime": []}
        for f in (run_eager, run_onnx):  # warm-up
            for _ in range(10):
                f()
        for _ in range(args.repeats):
            for name, f in (("eager", run_eager), ("onnxruntime", run_onnx)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                times[name].append((time.perf_counter() - t0) / calls * 1e3)
        e, o = statistics.median(times["eager"]), statistics.median(times["onnxruntime"])
        row = {"model": meta["hyper_parameters"]["model"]["name"], "batch": n, "threads": args.threads,
               "eager_ms": round(e, 4), "onnxruntime_ms": round(o, 4), "speedup": round(e / o, 2),
               "torch": torch.__version__, "onnxruntime": ort.__version__}
        print(f"{row['model']:8s} batch {n:3d}: eager {e:8.3f} ms   onnxruntime {o:8.3f} ms   "
              f"onnxruntime is {e / o:.2f}x as fast")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
