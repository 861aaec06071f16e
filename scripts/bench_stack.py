"""A seed sweep trained as one stacked model (mnist_lab.stack) against the same runs as separate loops, on the CPU.

    python scripts/bench_stack.py --data /work/shared/mnist                  # 4 seeds, MLP, 1 epoch, 1 thread
    python scripts/bench_stack.py --data DIR --seeds 0 1 2 3 4 5 6 7 --repeats 5

Both variants train the same members: each seed's net as its run builds it (seed_everything(seed), then
build_model), on its run's own split and batches (MNISTDataModule's), with optim.OPTIMIZERS[--optimizer]
at --lr. Variants, repeated --repeats times, alternating (which goes first alternates too):
    separate   one plain loop per seed, one after another: forward, cross-entropy, backward, torch's
               optimizer step, the batches from that seed's MNISTDataModule
    stacked    stack.StackedRunner: the seeds' nets stacked, one vmapped step for all, StackedData's batches
Timed: "train", the epochs alone (first step to last); "total", building the nets, the data and the
optimizers too (the images are read once beforehand, untimed, as a sweep's process keeps them).
Reported: median seconds of each, the ratio stacked / separate (target <= 1.05 for train; "paired": the
median of each repeat's ratio, steadier on a shared machine), each member's test accuracy in both
(target: within 0.002), the machine's load average. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from mnist_lab.data import MNISTDataModule, float_split
from mnist_lab.models import MODELS, build_model
from mnist_lab.optim import OPTIMIZERS, build_optimizer
from mnist_lab.stack import StackedData, StackedRunner, build_members, train_epoch


def separate(args) -> tuple[float, float, list[float]]:
    """(train seconds, total seconds, test accuracy per seed) of one plain loop per seed."""
    train = total = 0.0
    accs = []
    for seed in args.seeds:
        t_total = time.perf_counter()
        L.seed_everything(seed, workers=True, verbose=False)
        net = build_model(args.model)
        opt = build_optimizer(net.parameters(), args.optimizer, lr=args.lr)
        dm = MNISTDataModule(args.data, batch_size=args.batch_size, val_size=args.val_size, seed=seed,
                             input_shape=net.input_shape, download=False, verify_checksums=False)
        dm.setup("fit")
        batches = dm.train_dataloader()
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            batches.epoch = lambda e=epoch: e
            for x, y in batches:
                F.cross_entropy(net(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        train += time.perf_counter() - t0
        total += time.perf_counter() - t_total
        with torch.no_grad():  # untimed
            accs.append((net(dm.test_x).argmax(1) == dm.test_y).double().mean().item())
    return train, total, accs


def stacked(args) -> tuple[float, float, list[float]]:
    """(train seconds, total seconds, test accuracy per member) of one stacked model of all the seeds."""
    t_total = time.perf_counter()
    nets = build_members(dict(name=args.model), args.seeds)
    data = StackedData(args.data, args.seeds, batch_size=args.batch_size, val_size=args.val_size,
                       input_shape=nets[0].input_shape)
    runner = StackedRunner(nets, args.optimizer, [dict(lr=args.lr)] * len(args.seeds))
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        train_epoch(runner, data, epoch)
    train = time.perf_counter() - t0
    total = time.perf_counter() - t_total
    _, correct, n = runner.evaluate(data.test_batches())
    if runner.stopped():
        print(f"stopped members (non-finite loss): {runner.stopped()}")
    return train, total, (correct.double() / n).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="a folder holding MNIST/raw/ (the real MNIST files)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--optimizer", default="rmsprop", choices=list(OPTIMIZERS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives the steadiest timings)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (Path(args.data) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        print(f"skipped: no MNIST/raw/train-images-idx3-ubyte under {args.data} (give --data DIR with the real files)")
        return
    torch.set_num_threads(args.threads)
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"  # as a CPU run sets it (assemble.build_trainer)
    for train in (True, False):
        float_split(args.data, train, True)  # read once, untimed, as a sweep's process keeps them
    load_before = os.getloadavg()
    runs = {"separate": [], "stacked": []}
    variants = {"separate": separate, "stacked": stacked}
    for r in range(args.repeats):
        for name in (("separate", "stacked") if r % 2 == 0 else ("stacked", "separate")):
            runs[name].append(variants[name](args))
            train, total, _ = runs[name][-1]
            print(f"  repeat {r + 1} {name:8s} train {train:7.2f} s  total {total:7.2f} s", flush=True)
    load_after = os.getloadavg()
    med = {name: (statistics.median(t for t, _, _ in rs), statistics.median(t for _, t, _ in rs))
           for name, rs in runs.items()}
    acc = {name: rs[-1][2] for name, rs in runs.items()}
    ratio_train = med["stacked"][0] / med["separate"][0]
    ratio_total = med["stacked"][1] / med["separate"][1]
    paired = statistics.median(st[0] / se[0] for st, se in zip(runs["stacked"], runs["separate"], strict=True))
    diffs = [abs(a - b) for a, b in zip(acc["stacked"], acc["separate"], strict=True)]
    n = len(args.seeds)
    print(f"{n} x {args.model}, {args.epochs} epoch(s), {args.optimizer} lr {args.lr}, {args.threads} thread(s), "
          f"median of {args.repeats}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for name in runs:
        print(f"{name:8s}  train {med[name][0]:7.2f} s   total {med[name][1]:7.2f} s")
    print(f"stacked / separate: train {ratio_train:.3f}x (target <= 1.05; paired {paired:.3f}x), "
          f"total {ratio_total:.3f}x")
    for seed, a, b in zip(args.seeds, acc["stacked"], acc["separate"], strict=True):
        print(f"  seed {seed}: test acc stacked {a:.4f}  separate {b:.4f}  (diff {a - b:+.4f})")
    print(f"largest test accuracy difference {max(diffs):.4f} (target <= 0.002); mean of the members "
          f"{statistics.mean(acc['stacked']):.4f} vs {statistics.mean(acc['separate']):.4f}")
    print(json.dumps({
        "bench": "stack", "model": args.model, "members": n, "epochs": args.epochs, "optimizer": args.optimizer,
        "lr": args.lr, "threads": args.threads, "repeats": args.repeats, "load": [load_before[0], load_after[0]],
        "train_s": {k: v[0] for k, v in med.items()}, "total_s": {k: v[1] for k, v in med.items()},
        "ratio_train": ratio_train, "ratio_train_paired": paired, "ratio_total": ratio_total, "test_acc": acc,
        "max_acc_diff": max(diffs),
        "python": sys.version.split()[0], "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
