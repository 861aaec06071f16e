"""Chaos: a sweep and an Optuna study stopped by SIGKILL, SIGTERM or SIGINT in every phase of a job, started a
second time while they run, their journal torn, then run again with the same command until it exits 0. They end
with the results an undisturbed run gives, each once, and nothing left behind: no temporary file, lock or process.

The signals come at seeded moments, triggered by phase: HOOK, a sitecustomize put on the PYTHONPATH of the
commands (and so of their figure workers), makes the process signal itself as it enters the named phase of a job
(the figure worker signals the sweep it draws for). Nothing of it is in the package.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab import runs, study
from mnist_lab.figures import missing
from tests.conftest import ctrl_c_default, make_mnist, tiny_overrides

HOOK = '''
"""Test-only (tests/test_chaos.py): MNIST_LAB_CHAOS=<phase>,<signal>,<skip>,<mark file> makes this process send
<signal> to itself as it enters <phase> in the (skip+1)-th job that reaches that phase in this process; a figure
worker sends it to the sweep it draws for. Once per command: the first process to create <mark file> fires."""
import os

PLAN = os.environ.get("MNIST_LAB_CHAOS")

if PLAN:
    import contextlib
    import importlib.abc
    import signal
    import sys
    import time
    from pathlib import Path

    PHASE, SIGNAL, SKIP, MARK = PLAN.split(",", 3)
    seen = []  # the jobs (run folder names) that reached PHASE in this process, in order

    def reached(phase, job):
        if phase != PHASE:
            return
        if job not in seen:
            seen.append(job)
        if seen.index(job) < int(SKIP):
            return
        try:
            fd = os.open(MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # fired already, by this process or its figure worker
            return
        os.write(fd, f"{phase},{SIGNAL},{job}".encode())
        os.close(fd)
        import multiprocessing

        worker = multiprocessing.parent_process() is not None
        os.kill(os.getppid() if worker else os.getpid(), getattr(signal, SIGNAL))
        if worker and SIGNAL == "SIGKILL":
            time.sleep(5)  # ended here, with its sweep (the parent-death signal), half-way through a file

    def patch_runs(runs):
        original = runs.atomic_path

        @contextlib.contextmanager
        def atomic_path(path, commit=True):
            with original(path, commit) as tmp:
                yield tmp
                path = Path(path)  # written under the temporary name, not yet renamed into place
                phase = {".ckpt": "checkpoint", ".png": "figures"}.get(path.suffix)
                if phase:
                    reached(phase, runs.RunDir.holding(path).path.name)

        runs.atomic_path = atomic_path

    def patch_assemble(assemble):
        import lightning as L

        class Chaos(L.Callback):
            def __init__(self, job):
                self.job = job

            def setup(self, trainer, module, stage):
                if stage == "fit":
                    reached("start-up", self.job)

            def on_sanity_check_start(self, trainer, module):
                reached("sanity check", self.job)

            def on_train_batch_end(self, trainer, module, *args):
                reached("training", self.job)

            def on_validation_batch_start(self, trainer, module, *args):
                if not trainer.sanity_checking:
                    reached("validation", self.job)

            def on_test_batch_start(self, trainer, module, *args):
                reached("test", self.job)

        original = assemble.build_trainer

        def build_trainer(cfg, run, trainer_args, plan, extra=()):
            return original(cfg, run, trainer_args, plan, [*extra, Chaos(run.path.name)])

        assemble.build_trainer = build_trainer

    PATCHES = {"mnist_lab.runs": patch_runs, "mnist_lab.assemble": patch_assemble}

    class Patcher(importlib.abc.MetaPathFinder):
        """Patches a module of PATCHES as soon as it is imported."""

        def find_spec(self, name, path, target=None):
            if name not in PATCHES:
                return None
            for finder in sys.meta_path:
                spec = None if finder is self else finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                PATCHES[name](module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Patcher())
'''

PHASES = ("start-up", "sanity check", "training", "validation", "checkpoint", "test", "figures")
SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
TAG = "MNIST_LAB_CHAOS_TAG"  # in the environment of every process a command starts: how leftovers are found


def plan(seed: int, n: int = len(PHASES)) -> list[tuple[str, str, int]]:
    """(phase, signal, jobs to let pass in that phase) for each of n stops: n-1 phases of a job's own and then the
    figures (their worker starts slowly: the jobs left may all finish before it signals), every signal at least
    n // 3 times; the first stop lets 0 or 1 jobs pass, the others none (few jobs may be left)."""
    rng = random.Random(seed)
    phases = [*rng.sample(PHASES[:-1], n - 1), "figures"]
    signals = rng.sample([*SIGNALS * (n // 3), *rng.sample(SIGNALS, n % 3)], n)
    return [(p, s, rng.choice((0, 1)) if i == 0 else 0) for i, (p, s) in enumerate(zip(phases, signals, strict=True))]


class Commands:
    """Runs one command again and again, with the hook's phase and signal, its output kept in files."""

    def __init__(self, cmd: list[str], cwd: Path, hook: Path):
        self.cmd, self.cwd, self.tag = cmd, cwd, uuid.uuid4().hex
        self.done = lambda: False  # whether the command's work is all done (set by the test)
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore", TAG: self.tag,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
        self.n, self.fired, self.codes, self.left, self.unfinished = 0, [], [], [], []

    def start(self, chaos: tuple[str, str, int] | None = None) -> subprocess.Popen:
        self.n += 1
        env = dict(self.env)
        if chaos is not None:
            env["MNIST_LAB_CHAOS"] = ",".join(map(str, [*chaos, self.cwd / f"fired-{self.n}"]))
        out = open(self.cwd / f"out-{self.n}.txt", "w")  # noqa: SIM115 (closed by finish)
        proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.out = out
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 120) -> int:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "hung"
        proc.out.close()
        fired = self.cwd / f"fired-{self.n}"
        self.fired.append(fired.read_text().split(",") if fired.is_file() else None)
        self.codes.append(code)
        self.left += leftovers(self.tag)
        if code == 0 and not self.done():
            self.unfinished.append(self.n)  # exit status 0 with work left undone
        return code

    def close(self) -> None:
        """Whatever is left of the commands, killed (a test that failed half-way)."""
        leftovers(self.tag, wait=0)

    def run(self, chaos: tuple[str, str, int] | None = None) -> int:
        return self.finish(self.start(chaos))

    def output(self, n: int | None = None) -> str:
        return (self.cwd / f"out-{n or self.n}.txt").read_text()

    def until_done(self, tries: int = 3) -> None:
        for _ in range(tries):
            if self.run() == 0:
                return
        pytest.fail(f"still not done after {tries} runs: {self.output()[-3000:]}")

    def story(self) -> str:
        return "; ".join(f"{f or 'nothing fired'} -> {c}" for f, c in zip(self.fired, self.codes, strict=True))


def leftovers(tag: str, wait: float = 10) -> list[str]:
    """The processes still alive that a command started (their environment holds `tag`), after `wait` seconds at
    most; killed, so that the next command starts clean."""
    deadline = time.time() + wait
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and f"{TAG}={tag}".encode() in (proc / "environ").read_bytes():
                    found.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                continue
        if not found or time.time() > deadline:
            break
        time.sleep(0.2)
    for pid, _ in found:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
    return [f"pid {pid}: {cmd[:120]}" for pid, cmd in found]


def left_behind(folder: Path) -> list[str]:
    """Temporary files and locks under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".lock" in p.name
                  or ".stale-" in p.name)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run, as (step, value) per tag, read across all its event files as TensorBoard reads them
    (what a stopped process logged after the checkpoint its run resumed from is dropped where the run marked its
    restart)."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def repeated(logged: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {tag: steps for tag, values in logged.items()
            if (steps := [s for s, n in collections.Counter(s for s, _ in values).items() if n > 1])}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("chaos_data"), n_train=300, n_test=100)


@pytest.fixture
def repeated_commands(tmp_path):
    """commands(cmd) -> Commands running `cmd` in tmp_path with HOOK; what they leave running is killed at the end.
    The commands take SIGINT as a foreground command does (ctrl_c_default), even where pytest runs as a background
    job with SIGINT ignored, which they would keep ignoring."""
    with ctrl_c_default():
        yield from _repeated_commands(tmp_path)


def _repeated_commands(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    made: list[Commands] = []
    yield lambda cmd: made.append(Commands(cmd, tmp_path, hook)) or made[-1]
    for c in made:
        c.close()


def quick(data: Path) -> list[str]:
    """tiny_overrides on 200 training images: 4 training_steps of 2 batches an epoch, 2 epochs."""
    return [o for o in tiny_overrides(data, Path()) if not o.startswith("output_dir=")] + ["fast.steps=2"]


def double_submit(proc: subprocess.Popen, commands: Commands, lock: Path) -> subprocess.CompletedProcess | None:
    """The same command again while `proc` holds `lock`, paused (SIGSTOP) however long the second takes to
    start; None where `proc` ended before (stopped by the hook)."""
    deadline = time.time() + 120
    while (runs.read_holder(lock) or {}).get("pid") != proc.pid and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # (a lock file of a killed copy may be there: stale)
    proc.send_signal(signal.SIGSTOP)
    try:
        while proc.poll() is None and Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)
        if proc.poll() is not None:
            return None
        second = subprocess.run(commands.cmd, cwd=commands.cwd, capture_output=True, text=True, timeout=120,
                                env=commands.env)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode != 0, second.stdout[-3000:]
    assert f"is in use by pid {proc.pid} on " in second.stderr.splitlines()[0], second.stderr[-2000:]
    return second


def test_a_sweep_stopped_in_every_phase_ends_as_an_undisturbed_one(data, repeated_commands, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "model=mlp,convnet", "seed=0,1,2,3", *quick(data)]
    commands = repeated_commands([*cmd, f"hydra.sweep.dir={sweep}"])
    stops = plan(seed=45)
    commands.done = lambda: (len(list(sweep.glob(f"*/{runs.RESULT}"))) == 8
                             and not any(missing(r.parent) for r in sweep.glob(f"*/{runs.RESULT}")))
    assert {p for p, _, _ in stops} == set(PHASES) and {s for _, s, _ in stops} == set(SIGNALS)
    # the undisturbed twin, beside the first stops (CI has two cores)
    with open(tmp_path / "twin.txt", "w") as out:
        twin = subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / 'twin'}"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, env={**commands.env, TAG: f"twin-{commands.tag}"})
    try:
        second = None
        for i, chaos in enumerate(stops):
            proc = commands.start(chaos)
            if i >= 2 and second is None:  # a double submit, once: the second copy stops at once, naming the first
                second = double_submit(proc, commands, sweep / runs.LOCK)
            commands.finish(proc)
        commands.until_done()
        assert twin.wait(timeout=300) == 0, (tmp_path / "twin.txt").read_text()[-3000:]
    finally:
        twin.kill()
    story = commands.story()

    assert second is not None, story
    assert [f[:2] if f else None for f in commands.fired[:len(stops)]] == [list(p[:2]) for p in stops], story
    assert "hung" not in commands.codes, story
    assert not commands.unfinished, story  # each stopped command said so in its exit status
    assert not commands.left, commands.left
    jobs = sorted(runs.find_runs(sweep))
    assert [p.name for p in jobs] == sorted(p.name for p in runs.find_runs(tmp_path / "twin"))
    assert len(list(sweep.glob(f"*/{runs.RESULT}"))) == 8
    for job in jobs:
        assert runs.result_metrics(job) == runs.result_metrics(tmp_path / "twin" / job.name), (job.name, story)
        logged = scalars(job)
        assert not repeated(logged), (job.name, repeated(logged), story)
        whole = scalars(tmp_path / "twin" / job.name)
        assert {t: [s for s, _ in v] for t, v in logged.items()} == {t: [s for s, _ in v] for t, v in whole.items()}
    assert not left_behind(sweep), (left_behind(sweep), story)
    lines = (sweep / runs.SWEEP_LOG).read_text().splitlines()
    finished = collections.Counter(int(m[1]) for line in lines if (m := re.search(r"\] job (\d+) \(.*\) finished: ",
                                                                                    line)))
    assert finished == {n: 1 for n in range(8)}, lines


def tear(journal: Path) -> bytes:
    """Cut the journal's last record in the middle, as a crash or a full disk mid-append leaves it; returns the piece
    left of it."""
    whole = journal.read_bytes()
    last = whole[:-1].rsplit(b"\n", 1)[-1] + b"\n"
    journal.write_bytes(whole[:len(whole) - len(last) // 2])
    return whole[len(whole) - len(last):len(whole) - len(last) // 2]


def test_a_study_stopped_in_every_phase_ends_with_its_trials(data, repeated_commands, tmp_path):
    sweep = tmp_path / "study"
    journal = sweep / study.JOURNAL
    # 1e-7 learns nothing: pruned after epoch 1 once a trial finished; 3e-3 learns (test_study.py)
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep}",
           "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=8", "hydra.sweeper.pruner.n_startup_trials=1",
           "optimizer.lr=choice(1e-7,3e-3)", *quick(data)]
    commands = repeated_commands(cmd)
    second, torn = None, None
    stops = plan(seed=5, n=4)

    def done() -> bool:
        if not journal.is_file():
            return False
        states = [t.state for t in optuna.load_study(study_name="mnist_lab",
                                                     storage=study.open_storage(str(journal))).trials]
        return states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 5
    commands.done = done
    assert {s for _, s, _ in stops} == set(SIGNALS)
    for i, chaos in enumerate(stops):
        proc = commands.start(chaos)
        if i >= 2 and second is None:
            second = double_submit(proc, commands, Path(f"{journal}.study.lock"))
        commands.finish(proc)
        if torn is None and chaos[1] == "SIGKILL" and journal.is_file():  # killed mid-append, once
            torn = tear(journal)
    commands.until_done()
    story = commands.story()

    assert second is not None and torn is not None, story
    assert [f[:2] if f else None for f in commands.fired[:len(stops)]] == [list(p[:2]) for p in stops], story
    assert "hung" not in commands.codes, story
    assert not commands.unfinished, story
    assert not commands.left, commands.left
    trials = optuna.load_study(study_name="mnist_lab", storage=study.open_storage(str(journal))).trials
    states = collections.Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 5, (states, story)  # exactly n_trials
    assert not states[TrialState.RUNNING] and not states[TrialState.WAITING], (states, story)
    (kept,) = sweep.glob(f"{study.JOURNAL}.torn-*")
    assert kept.read_bytes() == torn
    assert not left_behind(sweep), (left_behind(sweep), story)
    ended = collections.Counter()
    for line in (sweep / runs.SWEEP_LOG).read_text().splitlines():
        if m := re.search(r"\] job (\d+) \(.*\) (finished|pruned): ", line):
            ended[int(m[1]), m[2]] += 1
    # a line for each trial that finished, once; a pruned one's may say interrupted instead (a signal while it drew)
    assert {k: n for k, n in ended.items() if k[1] == "finished"} == \
        {(t.number, "finished"): 1 for t in trials if t.state == TrialState.COMPLETE}, (ended, story)
    assert all(n == 1 and trials[k[0]].state == TrialState.PRUNED for k, n in ended.items() if k[1] == "pruned"), ended
    for t in trials:
        run = Path(t.user_attrs.get("run", ""))
        if run.is_dir():
            assert not repeated(scalars(run)), (run.name, story)
        if t.state == TrialState.COMPLETE:
            assert runs.finished(run), run
    assert yaml.safe_load((sweep / "best.yaml").read_text())["trials"]["finished"] == states[TrialState.COMPLETE]


def test_a_signal_during_the_last_validation_stops_before_the_test(data, tmp_path, make_cfg, ctrl_c):
    import lightning as L

    from mnist_lab.errors import Interrupted
    from mnist_lab.train import train

    class Signal(L.Callback):
        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
                os.kill(os.getpid(), signal.SIGINT)

    whole = train(make_cfg(tiny_overrides(data, tmp_path / "whole")))
    out = tmp_path / "run"
    overrides = tiny_overrides(data, out)
    with pytest.raises(Interrupted, match=r"^SIGINT received: stopped after step \d+ \(at the end of epoch 2\) and "
                                          r"saved checkpoints/last.ckpt"):
        train(make_cfg(overrides), callbacks=[Signal()])
    assert not (out / runs.RESULT).exists() and not list(out.glob("*.png"))  # not tested
    assert train(make_cfg([*overrides, f"resume={out}"])) == whole
    assert runs.result_metrics(out) == runs.result_metrics(tmp_path / "whole")


def test_a_resumed_run_shows_each_epoch_once_in_tensorboard(data, tmp_path, make_cfg):
    # a process that dies after logging epoch 2's validation but before its checkpoint: the resumed run
    # logs epoch 2 again, and TensorBoard's reader must show it once
    import lightning as L

    from mnist_lab.train import train

    class Dies(L.Callback):
        def on_save_checkpoint(self, trainer, module, checkpoint):
            if trainer.current_epoch == 1:
                raise RuntimeError("died")

    train(make_cfg(tiny_overrides(data, tmp_path / "whole")))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="died"):
        train(make_cfg(tiny_overrides(data, out)), callbacks=[Dies()])
    train(make_cfg([*tiny_overrides(data, out), f"resume={out}"]))
    logged = scalars(out)
    assert not repeated(logged), repeated(logged)
    assert logged.keys() == scalars(tmp_path / "whole").keys()
    for tag, values in scalars(tmp_path / "whole").items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in values], tag
