"""Inference latency on CPU: onnxruntime on the exported ONNX vs eager PyTorch, alternating in one process;
and with --memory, predict's peak memory on one huge image.

    python -m mnist_lab.export checkpoint=<run>          # writes <run>/export/model.onnx
    python scripts/bench_predict.py <run> --threads 1
    python scripts/bench_predict.py <run> --memory       # a 13300x13300 1-bit PNG: target under 500 MB

Times one image and a batch of 256 (raw pixels in, probabilities out, preprocessing included on both
sides), median of --repeats rounds of --calls calls each. Prints a table and one JSON line per row.

--memory draws a digit on a --side x --side 1-bit PNG (a scan at a printer's resolution: a few hundred KB
of file, 177 M pixels for 13300), runs `python -m mnist_lab.predict onnx=<run> source=<png>` as a child
process and reports its peak resident memory (getrusage's ru_maxrss of the child) and its seconds.
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
    parser.add_argument("--memory", action="store_true", help="measure predict's peak memory on one huge image")
    parser.add_argument("--side", type=int, default=13300, help="--memory: the image's width and height")
    parser.add_argument("--target-mb", type=float, default=500.0, help="--memory: the peak to stay under")
    args = parser.parse_args()
    if args.memory:
        sys.exit(peak_memory(args.run, args.side, args.target_mb))

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


def peak_memory(run: Path, side: int, target_mb: float) -> int:
    """predict on a side x side 1-bit PNG in a child process: its peak RSS in MB against target_mb (exit 1 over)."""
    import resource
    import subprocess
    import tempfile

    from PIL import Image, ImageDraw

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / f"scan_{side}.png"
        image = Image.new("1", (side, side), 1)  # white paper
        s = side / 100
        ImageDraw.Draw(image).line([(30 * s, 20 * s), (70 * s, 20 * s), (45 * s, 80 * s)], fill=0,
                                   width=round(8 * s))  # a 7, in black ink
        image.save(png)
        del image
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "mnist_lab.predict", f"onnx={run}", f"source={png}",
                                f"out={Path(tmp) / 'out'}"], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        size_kb = png.stat().st_size / 1024
    if child.returncode:
        print(child.stdout + child.stderr, file=sys.stderr)
        return child.returncode
    ok = peak_mb < target_mb
    print(f"predict on a {side}x{side} 1-bit PNG ({size_kb:,.0f} KB): peak RSS {peak_mb:,.0f} MB in {seconds:.1f} s "
          f"({'under' if ok else 'OVER'} the {target_mb:,.0f} MB target)")
    print(f"  {child.stdout.strip().splitlines()[-1]}")
    print(json.dumps({"side": side, "png_kb": round(size_kb, 1), "peak_rss_mb": round(peak_mb, 1),
                      "seconds": round(seconds, 2), "target_mb": target_mb, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    main()
