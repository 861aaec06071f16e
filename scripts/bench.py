"""Seconds per training epoch: mnist_lab against plain PyTorch loops, alternating in one process.

    python scripts/bench.py --data DIR                          # CPU rows: MLP and convnet, 1 thread
    python scripts/bench.py --data DIR --device cuda            # GPU rows: MLP and convnet, 5 epochs
    python scripts/bench.py --data DIR --fixed                  # what a run pays besides its epochs
    python scripts/bench.py --data DIR --sweep 10               # wall time of `-m seed=0,...,9`
    python scripts/bench.py --startup                           # fast_dev_run vs `import lightning`

Every variant trains the same net (same seed, same init, RMSprop lr 1e-3) on the same tensors in the
same shuffled batches of 128, on the same device, for --epochs epochs, and is tested after each epoch
(untimed). Variants, each repeated --repeats times, alternating:
    plain        forward, cross-entropy, backward, step: a plain PyTorch loop
    plain_graph  (GPU) the whole step captured once as a CUDA graph and replayed per batch
    mnist_lab    the default path, built by mnist_lab.assemble.build_run exactly as `python -m
                 mnist_lab.train` builds it: the fast path (K steps per training_step; on a GPU one
                 CUDA graph per chunk), its callbacks, logging and checkpoints
    compiled     (GPU) mnist_lab with fast.compile=true
    lightning    (GPU) mnist_lab with fast.enabled=false: one step per training_step
An epoch is timed from its first training step to the end of its last (the device synchronized),
validation excluded. Reported: the median epoch (epochs after the first: the first also pays for
capture and compilation), the first epoch, the training seconds until the test accuracy first reaches
the tutorial's (MLP 0.977, convnet 0.990), the final test accuracy. One JSON line per row.
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
TARGET = {"mlp": 0.977, "convnet": 0.990}  # the Keras tutorial's MLP; the book's convnet


def hardware(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({len(os.sched_getaffinity(0))} cores)"
    except OSError:
        pass
    return platform.processor()


class Clock:
    """Wall seconds on the device: waits for queued GPU work before reading the clock."""

    def __init__(self, device):
        self.device = device

    def __call__(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def accuracy(net, x, y) -> float:
    import torch

    with torch.no_grad():
        correct = sum((net(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum().item() for i in range(0, len(y), 2000))
    return correct / len(y)


def plain_run(name, data, epochs, seed, graph: bool, limit=None) -> tuple[list[float], list[float]]:
    """A plain loop over data's batches; with `graph`, the whole step captured once as a CUDA graph
    (as torch.cuda.graphs' documentation shows it) and replayed per batch; the last, smaller batch eager."""
    import torch
    import torch.nn.functional as F

    from mnist_lab.data import TensorBatches
    from mnist_lab.models import build_model
    from mnist_lab.optim import build_optimizer

    x, y, test_x, test_y = data
    device = x.device
    clock = Clock(device)
    torch.manual_seed(seed)
    net = build_model(name).to(device)
    opt = build_optimizer(net.parameters(), "rmsprop", lr=1e-3, capturable=graph)
    batches = TensorBatches(x, y, 128, shuffle=True, seed=seed, limit=limit)

    def step(xb, yb):
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    if graph:
        static_x, static_y = x[:128].clone(), y[:128].clone()
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up, then the weights and optimizer state as they were
                opt.zero_grad(set_to_none=True)
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for k, v in net.state_dict().items():
                v.copy_(saved[k])
            for state in opt.state.values():
                for v in state.values():
                    v.zero_()
        opt.zero_grad(set_to_none=True)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step(static_x, static_y)
    seconds, accs = [], []
    for epoch in range(epochs):
        batches.epoch = lambda e=epoch: e
        t0 = clock()
        for xb, yb in batches:
            if graph and len(yb) == 128:
                static_x.copy_(xb)
                static_y.copy_(yb)
                g.replay()
            else:
                opt.zero_grad(set_to_none=True)
                step(xb, yb)
        seconds.append(clock() - t0)
        accs.append(accuracy(net, test_x, test_y))
    return seconds, accs


def mnist_lab_run(name, data_dir, epochs, seed, threads, overrides=()) -> tuple[list[float], list[float]]:
    """A run as `python -m mnist_lab.train` builds it (build_run), with a callback that times each
    training epoch up to its last step and tests the net after it (untimed)."""
    import lightning as L

    from mnist_lab.assemble import build_run
    from mnist_lab.config import compose
    from mnist_lab.console import quiet_lightning
    from mnist_lab.runs import RunDir

    class EpochProbe(L.Callback):
        def __init__(self):
            self.seconds, self.accs = [], []

        def on_train_epoch_start(self, trainer, module):
            self.clock = Clock(module.device)
            self.t0 = self.clock()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                self.seconds.append(self.clock() - self.t0)
                dm = trainer.datamodule
                self.accs.append(accuracy(module.net.eval(), dm.test_x, dm.test_y))
                module.net.train()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([
            f"model={name}", f"data.data_dir={data_dir}", "data.download=false", f"seed={seed}",
            f"threads={threads}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
            f"output_dir={tmp}", *overrides])
        quiet_lightning()
        L.seed_everything(seed, verbose=False)
        probe = EpochProbe()
        trainer, module, datamodule = build_run(cfg, RunDir(tmp), callbacks=[probe])
        trainer.fit(module, datamodule=datamodule)
    return probe.seconds, probe.accs


def bench_epochs(args) -> list[dict]:
    import torch

    from mnist_lab.data import MNISTDataModule
    from mnist_lab.models import build_model

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0" if args.device == "cpu" else "1"
    variants = args.variants or (["plain", "plain_graph", "mnist_lab", "compiled", "lightning"]
                                 if args.device == "cuda" else ["plain", "mnist_lab", "lightning"])
    variants = ["plain"] + [v for v in variants if v != "plain"]  # every ratio is against it
    overrides = {"mnist_lab": [], "compiled": ["fast.compile=true"], "lightning": ["fast.enabled=false"]}
    trainer = [f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}"]
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.cudnn_benchmark:
        trainer.append("trainer.benchmark=true")
    if args.batches:
        trainer.append(f"trainer.limit_train_batches={args.batches}")
    rows = []
    for name in args.models:
        dm = MNISTDataModule(args.data, batch_size=128, download=False, input_shape=build_model(name).input_shape)
        dm.setup()
        data = [t.to(device) for t in (dm.train_x, dm.train_y, dm.test_x, dm.test_y)]

        def run(variant, epochs=args.epochs):
            if variant in ("plain", "plain_graph"):
                return plain_run(name, data, epochs, args.seed, variant == "plain_graph", args.batches or None)
            return mnist_lab_run(name, args.data, epochs, args.seed, args.threads, overrides[variant] + trainer)

        # One epoch of each first, in a fresh process: imports, first-touch allocations, kernel choice,
        # and torch.compile's cold start, which that epoch reports.
        cold = {variant: run(variant, epochs=1)[0][0] for variant in variants}
        results = {v: [] for v in variants}
        for _ in range(args.repeats):  # alternate, so load from other processes hits all alike
            for variant in variants:
                results[variant].append(run(variant))
        for variant in variants:
            rows.append(summarize(name, variant, results[variant], args)
                        | {"cold_first_epoch_s": round(cold[variant], 3)})
        by = {r["variant"]: r for r in rows if r["model"] == name}
        for variant, r in by.items():
            r["vs_plain"] = round(r["epoch_s"] / by["plain"]["epoch_s"], 3)
            # the same ratio repeat by repeat, each against the plain epochs run just before it: steadier
            # when other work on the machine comes and goes
            r["vs_plain_paired"] = round(statistics.median(
                statistics.median(mine[1:] or mine) / statistics.median(plain[1:] or plain)
                for (mine, _), (plain, _) in zip(results[variant], results["plain"], strict=True)), 3)
            if "plain_graph" in by:
                r["vs_plain_graph"] = round(r["epoch_s"] / by["plain_graph"]["epoch_s"], 3)
        if "compiled" in by and "mnist_lab" in by:
            # epochs after which a fresh process's compiled run has caught up with the default path
            extra = by["compiled"]["cold_first_epoch_s"] - by["mnist_lab"]["cold_first_epoch_s"]
            gain = by["mnist_lab"]["epoch_s"] - by["compiled"]["epoch_s"]
            by["compiled"]["break_even_epochs"] = round(extra / gain, 1) if gain > 0 else None
    print_table(rows)
    return rows


def summarize(name, variant, runs, args) -> dict:
    import lightning as L
    import torch

    later = [s for seconds, _ in runs for s in (seconds[1:] or seconds)]
    to_target = []
    for seconds, accs in runs:
        reached = [i for i, a in enumerate(accs) if name in TARGET and a >= TARGET[name]]
        to_target.append(sum(seconds[: reached[0] + 1]) if reached else None)
    reached = [t for t in to_target if t is not None]
    return {"model": name, "variant": variant, "device": args.device, "hardware": hardware(args.device),
            "cudnn_benchmark": args.cudnn_benchmark,
            "threads": args.threads, "epochs": args.epochs, "repeats": len(runs),
            "epoch_s": round(statistics.median(later), 4), "first_epoch_s": round(statistics.median(
                s[0] for s, _ in runs), 4),
            "to_target_s": round(statistics.median(reached), 3) if len(reached) == len(runs) else None,
            "target": TARGET.get(name), "test_acc": [round(a[-1], 4) for _, a in runs],
            "epoch_s_all": [[round(s, 4) for s in seconds] for seconds, _ in runs],
            "torch": torch.__version__, "lightning": L.__version__}


def print_table(rows) -> None:
    print(f"\n{'model':8} {'variant':12} {'s/epoch':>9} {'first':>8} {'to acc':>8} {'vs plain':>9} {'paired':>7} "
          f"{'vs graph':>9}  test acc  ({rows[0]['hardware']}, {rows[0]['epochs']} epochs, "
          f"medians of {rows[0]['repeats']}{', cudnn.benchmark' if rows[0]['cudnn_benchmark'] else ''})")
    for r in rows:
        to = f"{r['to_target_s']:.2f}" if r["to_target_s"] is not None else "-"
        graph = f"{r['vs_plain_graph']:.2f}x" if "vs_plain_graph" in r else "-"
        print(f"{r['model']:8} {r['variant']:12} {r['epoch_s']:9.4f} {r['first_epoch_s']:8.3f} {to:>8} "
              f"{r['vs_plain']:8.2f}x {r['vs_plain_paired']:6.2f}x {graph:>9}  {statistics.median(r['test_acc']):.4f}"
              + (f"  (compile pays off after {r['break_even_epochs']} epochs)" if r.get("break_even_epochs") else ""))


def bench_fixed(args) -> list[dict]:
    """Seconds a run spends besides its training epochs, by phase, for a 1-epoch MLP run."""
    import lightning as L
    import torch

    from mnist_lab.config import compose
    from mnist_lab.train import train

    marks: dict[str, float] = {}

    class Marks(L.Callback):
        def _mark(self, name, module):
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            marks.setdefault(name, time.perf_counter())

        def on_fit_start(self, trainer, module):
            self._mark("fit_start", module)

        def on_train_epoch_start(self, trainer, module):
            self._mark("epoch_start", module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                self._mark("epoch_end", module)

        def on_fit_end(self, trainer, module):
            self._mark("fit_end", module)

        def on_test_start(self, trainer, module):
            self._mark("test_start", module)

    rows = []
    for i in range(args.repeats + 1):
        marks.clear()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose([
                f"data.data_dir={args.data}", "data.download=false", f"threads={args.threads}",
                "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"output_dir={tmp}",
                f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}"])
            t0 = time.perf_counter()
            train(cfg, callbacks=[Marks()])
            end = time.perf_counter()
        if i == 0:
            continue  # warm-up: imports
        rows.append({"setup_s": marks["epoch_start"] - t0,  # config, data, trainer, fit start
                     "epoch_s": marks["epoch_end"] - marks["epoch_start"],
                     "validation_checkpoints_s": marks["fit_end"] - marks["epoch_end"],
                     "history_test_figures_s": end - marks["fit_end"],
                     "total_s": end - t0})
    row = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
    row.update(fixed=True, device=args.device, hardware=hardware(args.device), repeats=len(rows))
    row["besides_epoch_s"] = round(row["total_s"] - row["epoch_s"], 3)
    print(f"a 1-epoch MLP run ({row['hardware']}, medians of {len(rows)}): total {row['total_s']:.2f} s = "
          f"setup {row['setup_s']:.2f} + epoch {row['epoch_s']:.2f} + validation and checkpoints "
          f"{row['validation_checkpoints_s']:.2f} + history, test and figures {row['history_test_figures_s']:.2f}")
    return [row]


def bench_sweep(args) -> list[dict]:
    """Wall time of `python -m mnist_lab.train -m seed=0,...,n-1` (5 epochs, defaults), start-up included:
    to the last test line, and to the command's end (the last figures, drawn beside the jobs, are waited for)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "seed=" + ",".join(map(str, range(args.sweep))),
               f"model={args.models[0]}", f"data.data_dir={args.data}", "data.download=false",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp}/sweep"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"})
        accs, last_test, output = [], None, []
        for line in proc.stdout:
            output.append(line)
            if "test/acc=" in line:
                accs.append(float(line.split("test/acc=")[1].split()[0]))
                last_test = time.perf_counter() - t0
        wall = (proc.wait(), time.perf_counter() - t0)[1]
    if proc.returncode or not accs:
        sys.exit("the sweep failed:\n" + "".join(output)[-3000:])
    row = {"sweep": args.sweep, "model": args.models[0], "to_last_test_s": round(last_test, 2),
           "wall_s": round(wall, 2), "test_acc": accs, "device": args.device, "hardware": hardware(args.device),
           "mean_acc": round(statistics.mean(accs), 4),
           "std_acc": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0}
    print(f"sweep of {args.sweep} {args.models[0]} runs (5 epochs each, {row['hardware']}): {last_test:.1f} s from the "
          f"command to the last test line, {wall:.1f} s to its end; "
          f"test acc {row['mean_acc']:.4f} ± {row['std_acc']:.4f}")
    return [row]


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
             "ratio": round(r / i, 3), "hardware": hardware("cpu")}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"),
                        help="folder holding MNIST/raw/ (default: $MNIST_LAB_DATA_DIR or data)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    from mnist_lab.models import MODELS

    parser.add_argument("--models", nargs="+", default=["mlp", "convnet"], choices=sorted(MODELS))
    parser.add_argument("--variants", nargs="+", choices=["plain", "plain_graph", "mnist_lab", "compiled", "lightning"],
                        help="default: all that apply to the device; plain always runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives the steadiest timings)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: 5 on a GPU, 1 on the CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=0, help="training batches per epoch; 0: all")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark on every side (mnist_lab: trainer.benchmark=true)")
    parser.add_argument("--fixed", action="store_true", help="time what a run pays besides its epochs")
    parser.add_argument("--sweep", type=int, default=0, help="time a sweep of this many runs of --models' first")
    parser.add_argument("--startup", action="store_true", help="time start-up instead of epochs")
    parser.add_argument("--json", type=Path, help="append the JSON lines to this file too")
    args = parser.parse_args()
    args.epochs = args.epochs or (5 if args.device == "cuda" else 1)
    import logging

    import lightning.pytorch  # noqa: F401  (it sets its logger's level on import)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # each timed fit's device lines: the table says
    if args.startup:
        rows = bench_startup(args)
    elif args.sweep:
        rows = bench_sweep(args)
    elif args.fixed:
        rows = bench_fixed(args)
    else:
        rows = bench_epochs(args)
    for row in rows:
        line = json.dumps(row)
        print(line)
        if args.json:
            with args.json.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
