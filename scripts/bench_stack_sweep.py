"""A sweep with stack=N against the same sweep with its jobs alone, from the command to the last test line.

    python scripts/bench_stack_sweep.py --data DIR --device cuda               # -m seed=0,...,9, MLP, 5 epochs
    python scripts/bench_stack_sweep.py --data DIR --device cuda --lrs 3e-4 1e-3 3e-3 1e-2 --seeds 4   # 16 jobs
    python scripts/bench_stack_sweep.py --data DIR --device cuda --model convnet --seeds 8
    python scripts/bench_stack_sweep.py --data DIR --device cpu --seeds 4 --epochs 1 --threads 1   # the CPU target

Both variants are `python -m mnist_lab.train -m seed=0,...` (and optimizer.lr=... with --lrs) with the same
overrides, in fresh sweep folders: "separate" with stack=1 (each job its own run, one after another),
"stacked" with stack=<jobs> (one stack). They alternate, --repeats times each, which goes first alternating
too. Timed, start-up included: to the last test line, and to the command's end; and each job's training epochs
after its first, as its run logged them (train/epoch_s). Reported: the medians, the
ratio stacked / separate (targets: 10 MLPs for 5 epochs on a GPU stacked <= 8 s; a 16-MLP lr x seed grid
<= 12 s; on the CPU with 1 thread, 4 seeds for 1 epoch, <= 1.05x), the stack's epoch against one job's (8 MLPs:
<= 1.6x) and against the sum of its jobs' (8 convnets: <= 0.5x), each job's test accuracy in both (their
means within 0.002) and the machine; one JSON line at the end (--json appends it to a file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(args, stack: int, folder: Path) -> dict:
    """One run of the sweep: {"to_last_test_s", "wall_s", "acc": {job folder name: test acc}}."""
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "seed=" + ",".join(map(str, range(args.seeds))),
           *(["optimizer.lr=" + ",".join(args.lrs)] if args.lrs else []), f"model={args.model}",
           f"trainer.max_epochs={args.epochs}", f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
           f"data.data_dir={args.data}", "data.download=false", "trainer.enable_progress_bar=false",
           *([f"threads={args.threads}"] if args.threads else []), f"stack={stack}", f"hydra.sweep.dir={folder}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"})
    acc, last_test, output = {}, None, []
    for line in proc.stdout:
        output.append(line)
        if "test/acc=" in line:  # test: test/loss=0.0661  test/acc=0.9801  (<run folder>)
            acc[line.rsplit("(", 1)[1].rstrip(")\n").rsplit("/", 1)[-1]] = float(line.split("test/acc=")[1].split()[0])
            last_test = time.perf_counter() - t0
    wall = (proc.wait(), time.perf_counter() - t0)[1]
    if proc.returncode or len(acc) != args.seeds * max(1, len(args.lrs)):
        sys.exit(f"the sweep (stack={stack}) failed:\n" + "".join(output)[-3000:])
    return {"to_last_test_s": last_test, "wall_s": wall, "acc": acc, "epoch_s": epoch_seconds(folder)}


def epoch_seconds(folder: Path) -> float:
    """The median of the sweep's jobs' training epochs after their first (graph capture, compilation and warm-up
    excluded), each as its run logged it (train/epoch_s, read back from its events). A stacked job's epoch is
    its stack's: all members' steps."""
    from mnist_lab.loggers import read_scalars
    from mnist_lab.runs import find_runs

    seconds = [s for run in find_runs(folder)
               for s in read_scalars(run, ("train/epoch_s",)).get("train/epoch_s", [])[1:]]
    return statistics.median(seconds) if seconds else float("nan")


def hardware(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="folder holding MNIST/raw/")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seeds", type=int, default=10, help="seed=0,...,N-1")
    parser.add_argument("--lrs", nargs="*", default=[], help="optimizer.lr values too (a grid: seeds x lrs)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the CPU target: 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append the JSON line to this file")
    args = parser.parse_args()
    jobs = args.seeds * max(1, len(args.lrs))
    times: dict[str, list[dict]] = {"separate": [], "stacked": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ("separate", "stacked") if r % 2 == 0 else ("stacked", "separate")
            for variant in order:
                stack = 1 if variant == "separate" else jobs
                times[variant].append(sweep(args, stack, Path(tmp) / f"{variant}{r}"))
    med = {v: {k: statistics.median(t[k] for t in ts) for k in ("to_last_test_s", "wall_s", "epoch_s")}
           for v, ts in times.items()}
    acc = {v: ts[-1]["acc"] for v, ts in times.items()}
    diffs = [abs(acc["stacked"][k] - acc["separate"][k]) for k in acc["separate"]]
    mean = {v: statistics.mean(a.values()) for v, a in acc.items()}
    row = {"bench": "stack_sweep", "model": args.model, "jobs": jobs, "seeds": args.seeds, "lrs": args.lrs,
           "epochs": args.epochs, "device": args.device, "hardware": hardware(args.device), "threads": args.threads,
           "repeats": args.repeats, "load": round(os.getloadavg()[0], 2),
           **{f"{v}_{k}": round(s, 2) for v, m in med.items() for k, s in m.items()},
           "ratio_to_last_test": round(med["stacked"]["to_last_test_s"] / med["separate"]["to_last_test_s"], 3),
           "epoch_vs_one": round(med["stacked"]["epoch_s"] / med["separate"]["epoch_s"], 3),  # target (8 MLPs) <= 1.6
           "epoch_vs_sum": round(med["stacked"]["epoch_s"] / (jobs * med["separate"]["epoch_s"]), 3),  # convnets <= 0.5
           "mean_acc_separate": round(mean["separate"], 4), "mean_acc_stacked": round(mean["stacked"], 4),
           "max_acc_diff": round(max(diffs), 4)}
    print(f"sweep of {jobs} {args.model} jobs ({args.epochs} epoch{'s' * (args.epochs > 1)}, {row['hardware']}"
          f"{f', {args.threads} thread' if args.threads else ''}), medians of {args.repeats}, to the last test line: "
          f"separate {row['separate_to_last_test_s']:.1f} s, stacked {row['stacked_to_last_test_s']:.1f} s "
          f"({row['ratio_to_last_test']:.2f}x); test acc mean {row['mean_acc_separate']:.4f} vs "
          f"{row['mean_acc_stacked']:.4f}, largest difference of a job {row['max_acc_diff']:.4f}; an epoch (after the "
          f"first): one job {row['separate_epoch_s']:.3f} s, the stack of {jobs} {row['stacked_epoch_s']:.3f} s "
          f"({row['epoch_vs_one']:.2f}x one, {row['epoch_vs_sum']:.2f}x the sum of {jobs})")
    print(json.dumps(row))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
