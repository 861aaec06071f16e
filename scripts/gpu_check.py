"""Check the GPU path on a machine with one GPU: the GPU-marked tests, then the GPU rows of the bench.

    make gpu-check DATA=/path/to/folder          # with the project's .venv
    python scripts/gpu_check.py --data DIR       # any Python that has the dependencies; creates no venv

DIR holds MNIST/raw/ (GPU machines are often offline). Steps, each in its own process, each run even
if an earlier one failed: the GPU-marked tests of tests/test_gpu.py and tests/test_stack.py (pytest -m
gpu); scripts/bench.py's GPU rows for the MLP and the convnet (plain loop, plain CUDA-graph loop,
mnist_lab's default path, fast.compile=true; 5 epochs, medians of 2), the convnet's plain graph loop
and compiled path again with cudnn.benchmark; what a run pays besides its epochs; scripts/bench_stack_sweep.py's
rows, from the command to the last test line: the 10-seed MLP sweep (5 epochs), a 4 lr x 4 seed MLP grid
(5 epochs) and 8 convnet seeds (3 epochs), each with stack=N against its jobs alone (the separate 10-seed
sweep is the sweep row of earlier checks). 289 s on one H200 with the two sweep rows the stacked ones
replace (about 100 s); the stacked rows have not yet run on a GPU.
The table comes last; --out keeps logs and JSON lines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(title: str, cmd: list[str], out: Path, timeout: int) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO),
                                                         os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        text, ok = done.stdout + done.stderr, done.returncode == 0
    except subprocess.TimeoutExpired as err:
        text, ok = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout} s", False
    log = out / f"{title}.log"
    log.write_text(text if isinstance(text, str) else text.decode())
    print(f"[{'ok' if ok else 'FAILED'}] {title} ({time.perf_counter() - t0:.0f} s; log: {log})", flush=True)
    return ok, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="folder holding MNIST/raw/")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="logs and bench.jsonl go here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible to torch; run it on a machine with one")
    if not (Path(args.data) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        sys.exit(f"gpu_check: {args.data} holds no MNIST/raw/train-images-idx3-ubyte: "
                 "give --data a folder holding MNIST/raw/")
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "bench.jsonl"
    jsonl.unlink(missing_ok=True)
    py, bench = sys.executable, str(REPO / "scripts" / "bench.py")
    stack = str(REPO / "scripts" / "bench_stack_sweep.py")
    print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}, Python {sys.version.split()[0]}")
    results = [
        step("tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
                       "tests/test_stack.py"],
             args.out, 150),
        step("epochs", [py, bench, "--device", "cuda", "--data", args.data, "--repeats", "2",
                        "--variants", "plain", "plain_graph", "mnist_lab", "compiled", "--json", str(jsonl)],
             args.out, 200),
        step("cudnn", [py, bench, "--device", "cuda", "--data", args.data, "--repeats", "1", "--models", "convnet",
                       "--cudnn-benchmark", "--variants", "plain_graph", "compiled", "--json", str(jsonl)],
             args.out, 90),
        step("fixed", [py, bench, "--device", "cuda", "--data", args.data, "--fixed", "--repeats", "2",
                       "--json", str(jsonl)], args.out, 60),
        step("stack_sweep", [py, stack, "--device", "cuda", "--data", args.data, "--json", str(jsonl)], args.out, 120),
        step("stack_grid", [py, stack, "--device", "cuda", "--data", args.data, "--seeds", "4", "--lrs", "3e-4",
                            "1e-3", "3e-3", "1e-2", "--json", str(jsonl)], args.out, 150),
        step("stack_convnet", [py, stack, "--device", "cuda", "--data", args.data, "--seeds", "8", "--model",
                               "convnet", "--epochs", "3", "--json", str(jsonl)], args.out, 150),
    ]
    print()
    tests_ok, tests = results[0]
    print("tests: " + next((line for line in reversed(tests.splitlines()) if " passed" in line or " failed" in line
                            or " error" in line), "no summary line (see the log)"))
    for ok, text in results[1:]:
        lines = text.splitlines()
        table = [i for i, line in enumerate(lines) if line.startswith("model ")]
        shown = lines[table[0]:] if table else [line for line in lines if line.startswith(("a 1-epoch", "sweep of"))]
        print("\n".join(line for line in shown if not line.startswith("{")) or (text[-1500:] if not ok else ""))
    sys.exit(0 if all(ok for ok, _ in results) else 1)


if __name__ == "__main__":
    main()
