"""Seconds per training epoch: mnist_lab (Lightning) vs a plain PyTorch loop, alternating in one process.

    python scripts/bench.py --data ../shared/mnist                       # MLP and convnet, 1 thread
    python scripts/bench.py --data DIR --models mlp --repeats 7 --threads 2
    python scripts/bench.py --startup                                    # fast_dev_run vs `import lightning`

Both sides train the same net (same init, same optimizer: RMSprop lr 1e-3) on the same in-memory
tensors and the same shuffled batches (mnist_lab's TensorBatches, batch 128). The plain loop is
forward, cross-entropy, backward, step. mnist_lab's epoch is Trainer.fit's training epoch through the
Trainer that `python -m mnist_lab.train` builds (mnist_lab.train.build_trainer: its loggers, callbacks
and plugins, on the composed default config), as its EpochTime callback logs it (`time/epoch_s`, from
on_train_epoch_start to on_train_epoch_end); validation is switched off (trainer.limit_val_batches=0)
because the plain loop has none. Prints medians and the ratio; one JSON line per result.
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
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_epochs(args) -> list[dict]:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mnist_lab.config import CONF_DIR
    from mnist_lab.data import MNISTDataModule, TensorBatches
    from mnist_lab.models import build_model
    from mnist_lab.module import LitClassifier
    from mnist_lab.optim import build_optimizer
    from mnist_lab.runs import RunDir
    from mnist_lab.train import build_trainer

    torch.set_num_threads(args.threads)
    # validation is off here, and each timed fit reuses one temporary run folder
    warnings.filterwarnings("ignore", message=r".*could not find the monitored key")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    limit = args.batches or None  # None: the whole epoch (430 batches)
    results = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [f"model={name}", f"data.data_dir={args.data}", "data.download=false", f"output_dir={tmp}",
                         f"threads={args.threads}", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                         "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
                         f"trainer.limit_train_batches={limit or 'null'}"]
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=overrides)
            plain = OmegaConf.to_container(cfg, resolve=True)
            torch.manual_seed(0)
            dm = MNISTDataModule(**plain["data"], input_shape=build_model(name).input_shape, seed=cfg.seed)
            dm.setup()
            x, y = dm.train_x, dm.train_y
            optimizer = {k: v for k, v in plain["optimizer"].items() if v is not None}

            def plain_epoch() -> float:
                torch.manual_seed(0)
                net = build_model(**plain["model"])
                opt = build_optimizer(net.parameters(), **optimizer)
                batches = TensorBatches(x, y, cfg.data.batch_size, shuffle=True, seed=cfg.seed)
                t0 = time.perf_counter()
                for i, (xb, yb) in enumerate(batches):
                    if limit and i == limit:
                        break
                    loss = F.cross_entropy(net(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                return time.perf_counter() - t0

            def lightning_epoch() -> float:
                torch.manual_seed(0)
                module = LitClassifier(build_model(**plain["model"]), optimizer=optimizer, model=plain["model"],
                                       config=plain)
                trainer = build_trainer(cfg, RunDir(tmp))
                trainer.fit(module, datamodule=dm)
                return float(trainer.callback_metrics["time/epoch_s"])

            plain_s, lit = [], []
            plain_epoch(), lightning_epoch()  # warm-up: first-touch allocations, lazy imports
            for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
                plain_s.append(plain_epoch())
                lit.append(lightning_epoch())
        p, m = statistics.median(plain_s), statistics.median(lit)
        row = {"model": name, "threads": args.threads, "batches": limit or len(TensorBatches(x, y, 128)),
               "plain_s": round(p, 4), "mnist_lab_s": round(m, 4), "ratio": round(m / p, 3),
               "plain_all": [round(t, 3) for t in plain_s], "mnist_lab_all": [round(t, 3) for t in lit],
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
    from mnist_lab.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="folder holding MNIST/raw/ (default: $MNIST_LAB_DATA_DIR or data)")
    parser.add_argument("--models", nargs="+", default=["mlp", "convnet"], choices=sorted(MODELS))
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
