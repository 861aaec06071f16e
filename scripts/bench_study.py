"""What pruning saves: an Optuna study against the same configurations as a plain grid sweep, without pruning.

    python scripts/bench_study.py --data ../shared/mnist --out outputs/bench_study          # 12 trials, 3 epochs
    python scripts/bench_study.py --data DIR --out DIR --trials 12 --epochs 3 --threads 2

1. The study: `python -m mnist_lab.train -m hydra/sweeper=optuna` over optimizer.lr (log, 1e-5..1) and model
   (mlp, convnet), the median pruner as configured by default, into OUT/study.
2. The grid: every configuration the study tried, as plain Hydra sweeps (`-m model=mlp optimizer.lr=a,b,...`, one
   per model) without pruning, into OUT/grid_<model>.
Each command is timed (wall seconds, and CPU seconds of its processes: less sensitive to other processes on the
machine than wall time). Epochs trained are read from the runs' event files. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable, "-m", "mnist_lab.train", "-m"]


def timed(cmd: list[str], log: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - start,
            "cpu_s": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def runs(folder: Path) -> list[dict]:
    """Per run folder: its model, lr, epochs trained and test accuracy, from its config and event files."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for run in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        config = yaml.safe_load((run / "config.yaml").read_text())
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        tags = set(events.Tags()["scalars"])
        val = [e.value for e in events.Scalars("val/acc")] if "val/acc" in tags else []
        out.append({"model": config["model"]["name"], "lr": config["optimizer"]["lr"], "epochs": len(val),
                    "best_val": max(val) if val else None,
                    "test_acc": events.Scalars("test/acc")[-1].value if "test/acc" in tags else None})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder holding MNIST/raw/")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the study and the grid")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more overrides, e.g. data.val_size=100 (hydra.sweeper.*: the "
                        "study's only)")
    args = parser.parse_args()
    import optuna

    from mnist_lab.study import JOURNAL, open_storage

    out = args.out.resolve()
    common = [f"data.data_dir={Path(args.data).resolve()}", f"trainer.max_epochs={args.epochs}",
              f"threads={args.threads}", "trainer.enable_progress_bar=false"]
    sweeper = [o for o in args.overrides if o.startswith("hydra.sweeper.")]  # the study's alone
    common += [o for o in args.overrides if o not in sweeper]
    out.mkdir(parents=True, exist_ok=False)
    study_cmd = [*PYTHON, "hydra/sweeper=optuna", f"hydra.sweep.dir={out / 'study'}",
                 f"hydra.sweeper.n_trials={args.trials}", "optimizer.lr=tag(log, interval(1e-5, 1.0))",
                 "model=choice(mlp,convnet)", *sweeper, *common]
    print(" ".join(study_cmd), flush=True)
    times = {"study": timed(study_cmd, out / "study.log")}
    study = optuna.load_study(study_name="mnist_lab", storage=open_storage(str(out / "study" / JOURNAL)))
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    times["grid"] = {"wall_s": 0.0, "cpu_s": 0.0}
    for model in sorted({t.params["model"] for t in trials}):
        lrs = ",".join(repr(t.params["optimizer.lr"]) for t in trials if t.params["model"] == model)
        grid_cmd = [*PYTHON, f"hydra.sweep.dir={out / f'grid_{model}'}", f"model={model}", f"optimizer.lr={lrs}",
                    *common]
        print(" ".join(grid_cmd), flush=True)
        t = timed(grid_cmd, out / f"grid_{model}.log")
        times["grid"] = {k: times["grid"][k] + t[k] for k in t}
    study_runs = runs(out / "study")
    grid_runs = [r for model in ("mlp", "convnet") for r in runs(out / f"grid_{model}")]
    best = study.best_trial
    grid_best = max(grid_runs, key=lambda r: r["best_val"])  # chosen on validation, as the study chooses
    result = {
        "trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "failed": sum(t.state.name == "FAIL" for t in study.trials),
        "epochs": {"study": sum(r["epochs"] for r in study_runs), "grid": sum(r["epochs"] for r in grid_runs)},
        "convnet_epochs": {k: sum(r["epochs"] for r in rs if r["model"] == "convnet")
                           for k, rs in (("study", study_runs), ("grid", grid_runs))},
        "best": {"study": {"model": best.params["model"], "lr": best.params["optimizer.lr"], "val_acc": best.value,
                           "test_acc": best.user_attrs.get("test/acc")},
                 "grid": {"model": grid_best["model"], "lr": grid_best["lr"], "val_acc": grid_best["best_val"],
                          "test_acc": grid_best["test_acc"]}},
        "times": times, "threads": args.threads, "epochs_per_trial": args.epochs,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }
    saved = {k: 1 - times["study"][k] / times["grid"][k] for k in ("wall_s", "cpu_s")}
    print("\n| | trials | pruned | epochs trained (convnet) | best trial: model, lr, val acc, test acc | wall s "
          "| CPU s |\n|-|-|-|-|-|-|-|\n"
          f"| study (median pruner) | {result['trials']} | {result['pruned']} | {result['epochs']['study']} "
          f"({result['convnet_epochs']['study']}) | {best.params['model']}, {best.params['optimizer.lr']:.3g}, "
          f"{best.value:.4f}, {best.user_attrs.get('test/acc', float('nan')):.4f} | {times['study']['wall_s']:.0f} | "
          f"{times['study']['cpu_s']:.0f} |\n"
          f"| grid, same configurations, no pruning | {len(grid_runs)} | 0 | {result['epochs']['grid']} "
          f"({result['convnet_epochs']['grid']}) | {grid_best['model']}, {grid_best['lr']:.3g}, "
          f"{grid_best['best_val']:.4f}, {grid_best['test_acc']:.4f} | {times['grid']['wall_s']:.0f} | "
          f"{times['grid']['cpu_s']:.0f} |\n"
          f"\npruning saved {saved['wall_s']:.0%} of the wall time, {saved['cpu_s']:.0%} of the CPU time")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
