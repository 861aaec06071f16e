"""Seconds per training epoch: mnist_lab (Lightning) vs a plain PyTorch loop, alternating in one process.

    python scripts/bench.py --data ../shared/mnist                       # MLP and convnet, 1 thread
    python scripts/bench.py --data DIR --models mlp --repeats 7 --threads 2
    python scripts/bench.py --startup                                    # fast_dev_run vs `import lightning`

Both sides train the same net (same init, same optimizer: RMSprop lr 1e-3) on the same in-memory
tensors and the same shuffled batches (mnist_lab's TensorBatches, batch 128). The plain loop is
forward, cross-entropy, backward, step. mnist_lab's epoch is Trainer.fit's training epoch as
`python -m mnist_lab.train` runs it (LitClassifier's training metrics, TensorBoard logging, the
per-step callbacks NonFiniteGuard and GracefulInterrupt), timed from on_train_epoch_start to
on_train_epoch_end; validation and checkpointing are left out because the plain loop has none.
Prints medians and the ratio; one JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_epochs(args) -> list[dict]:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.loggers import TensorBoardLogger

    from mnist_lab.data import MNISTDataModule, TensorBatches
    from mnist_lab.guards import GracefulInterrupt, NonFiniteGuard
    from mnist_lab.models import build_model
    from mnist_lab.module import LitClassifier, build_optimizer

    torch.set_num_threads(args.threads)
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"  # as train() does on CPU, and as a plain script has it
    results = []
    for name in args.models:
        torch.manual_seed(0)
        shape = build_model(name).input_shape
        dm = MNISTDataModule(args.data, batch_size=128, val_size=5000, download=False, input_shape=shape)
        dm.setup()
        x, y = dm.train_x, dm.train_y
        limit = args.batches or None  # None: the whole epoch (430 batches)

        def plain_epoch() -> float:
            torch.manual_seed(0)
            net = build_model(name)
            opt = build_optimizer(net.parameters(), "rmsprop", lr=1e-3)
            batches = TensorBatches(x, y, 128, shuffle=True, seed=0)
            t0 = time.perf_counter()
            for i, (xb, yb) in enumerate(batches):
                if limit and i == limit:
                    break
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return time.perf_counter() - t0

        class EpochTimer(L.Callback):
            def on_train_epoch_start(self, trainer, module):
                self.t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                self.seconds = time.perf_counter() - self.t0

        def lightning_epoch(tmp: str) -> float:
            torch.manual_seed(0)
            module = LitClassifier(build_model(name), optimizer={"name": "rmsprop", "lr": 1e-3},
                                   model={"name": name, "init": "torch"})
            timer = EpochTimer()
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=limit, limit_val_batches=0,
                logger=TensorBoardLogger(tmp, name="", version="", default_hp_metric=False),
                callbacks=[timer, NonFiniteGuard(), GracefulInterrupt(Path(tmp))],
                enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, datamodule=dm)
            return timer.seconds

        plain, lit = [], []
        with tempfile.TemporaryDirectory() as tmp:
            plain_epoch(), lightning_epoch(tmp)  # warm-up: first-touch allocations, lazy imports
            for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
                plain.append(plain_epoch())
                lit.append(lightning_epoch(tmp))
        p, m = statistics.median(plain), statistics.median(lit)
        row = {"model": name, "threads": args.threads, "batches": limit or len(TensorBatches(x, y, 128)),
               "plain_s": round(p, 4), "mnist_lab_s": round(m, 4), "ratio": round(m / p, 3),
               "plain_all": [round(t, 3) for t in plain], "mnist_lab_all": [round(t, 3) for t in lit],
               "torch": torch.__version__, "lightning": L.__version__, "cpu": cpu_name()}
        print(f"{name:8s} epoch ({row['batches']} batches of 128, {args.threads} thread(s)): plain {p:.3f} s, "
              f"mnist_lab {m:.3f} s, ratio {m / p:.3f}  (medians of {args.repeats})")
        results.append(row)
    return results


def bench_startup(args) -> list[dict]:
    """Wall time of a fast_dev_run through @hydra.main vs `python -c "import lightning"`, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        run = [sys.executable, "-m", "mnist_lab.train", "trainer.fast_dev_run=true",
               "trainer.enable_progress_bar=false", f"data.data_dir={args.data}", "data.download=false",
               f"hydra.run.dir={tmp}/run", f"threads={args.threads}"]
        base = [sys.executable, "-c", "import lightning"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}

        def wall(cmd) -> float:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            return time.perf_counter() - t0

        wall(base), wall(run)  # warm the file cache
        imports, runs = [], []
        for _ in range(args.repeats):
            imports.append(wall(base))
            runs.append(wall(run))
    i, r = statistics.median(imports), statistics.median(runs)
    print(f"start-up: import lightning {i:.2f} s, fast_dev_run {r:.2f} s, ratio {r / i:.2f}  "
          f"(medians of {args.repeats})")
    return [{"startup": True, "import_lightning_s": round(i, 3), "fast_dev_run_s": round(r, 3),
             "ratio": round(r / i, 3),
             "cpu": cpu_name()}]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({len(os.sched_getaffinity(0))} cores)"
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="folder holding MNIST/raw/ (default: $MNIST_LAB_DATA_DIR or data)")
    parser.add_argument("--models", nargs="+", default=["mlp", "convnet"], choices=["mlp", "convnet"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives the steadiest timings)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=0, help="batches per timed epoch; 0: all")
    parser.add_argument("--startup", action="store_true", help="time start-up instead of epochs")
    parser.add_argument("--json", type=Path, help="append the JSON lines to this file too")
    args = parser.parse_args()
    rows = bench_startup(args) if args.startup else bench_epochs(args)
    for row in rows:
        line = json.dumps(row)
        print(line)
        if args.json:
            with args.json.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
