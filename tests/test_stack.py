"""Stacked runs (mnist_lab.stack): each member starts, is fed and steps as its own separate run would."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.func import stack_module_state

from mnist_lab import reproduce, runs
from mnist_lab.compare import read_run
from mnist_lab.data import MNISTDataModule
from mnist_lab.errors import ConfigError, Interrupted, TrainingError
from mnist_lab.export import export
from mnist_lab.models import build_model
from mnist_lab.optim import OPTIMIZERS, build_optimizer
from mnist_lab.predict import predict
from mnist_lab.stack import (
    STACKABLE,
    Stack,
    StackedData,
    StackedOptimizer,
    StackedRunner,
    build_members,
    train_epoch,
    train_stack,
)
from mnist_lab.train import train
from tests.conftest import tiny_overrides

SEEDS = [0, 1, 7]
DATA = dict(batch_size=32, val_size=100)  # 500 training images: 15 batches of 32 and one of 20

# Non-default settings that differ per member, for each optimizer (the members of SEEDS).
SETTINGS = {
    "rmsprop": [dict(lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.5, weight_decay=1e-3),
                dict(lr=3e-3, alpha=0.95, eps=1e-7),
                dict(lr=5e-4, alpha=0.8, eps=1e-5, momentum=0.9)],
    "keras_rmsprop": [dict(lr=1e-3, rho=0.8, eps=1e-6), dict(lr=3e-3, rho=0.95), dict(lr=5e-4, rho=0.9, eps=1e-5)],
    "adam": [dict(lr=1e-3, eps=1e-6, weight_decay=1e-3), dict(lr=3e-3, betas=(0.8, 0.99)),
             dict(lr=5e-4, betas=(0.95, 0.9), eps=1e-7)],
    "sgd": [dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dict(lr=0.1),
            dict(lr=0.02, momentum=0.5, dampening=0.1)],
}


def separate_batches(data_dir, seed: int, epoch: int = 0, input_shape=(784,)) -> tuple[MNISTDataModule, list]:
    """A separate run's data module (set up on the CPU) and its training batches of `epoch`, in order."""
    dm = MNISTDataModule(str(data_dir), download=False, verify_checksums=False, seed=seed,
                         input_shape=input_shape, **DATA)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.epoch = lambda: epoch
    return dm, list(loader)


def separate_run(data_dir, model: dict, seed: int, optimizer: str, settings: dict, steps: int) -> torch.nn.Module:
    """`steps` plain steps of one run: its seed, net, optimizer (torch's own) and batches."""
    L.seed_everything(seed, workers=True, verbose=False)
    net = build_model(**model)
    opt = build_optimizer(net.parameters(), optimizer, **settings)
    _, batches = separate_batches(data_dir, seed, input_shape=net.input_shape)
    for x, y in batches[:steps]:
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return net


def stacked(data_dir, model: dict, optimizer: str, settings: list[dict]) -> tuple[StackedRunner, StackedData]:
    nets = build_members(model, SEEDS)
    data = StackedData(str(data_dir), SEEDS, input_shape=nets[0].input_shape, **DATA)
    return StackedRunner(nets, optimizer, settings), data


def run_steps(runner: StackedRunner, data: StackedData, stop: int, start: int = 0) -> None:
    """Steps start+1 .. stop of epoch 0 (the first step is step 1)."""
    for x, y in list(data.batches(0))[start:stop]:
        runner.step(x, y)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("model", [dict(name="mlp"), dict(name="mlp", init="keras"), dict(name="convnet")])
def test_each_member_starts_from_its_separate_runs_weights(model):
    runner = StackedRunner(build_members(model, SEEDS), "rmsprop", [dict(lr=1e-3)] * len(SEEDS))
    for i, seed in enumerate(SEEDS):
        L.seed_everything(seed, workers=True, verbose=False)  # as train() seeds a run before building its net
        alone = build_model(**model).state_dict()
        member = runner.state_dict(i)
        assert member.keys() == alone.keys()
        assert all(torch.equal(member[k], alone[k]) for k in alone), f"member {i} (seed {seed})"
    first = next(iter(runner.params.values()))
    assert not torch.equal(first[0], first[1])  # the seeds made different nets


def test_each_member_sees_its_separate_runs_split_and_batches_in_order(tiny_mnist):
    data = StackedData(str(tiny_mnist), SEEDS, **DATA)
    for epoch in (0, 1):  # a new order each epoch, as the run's
        steps = list(data.batches(epoch))
        assert [x.shape for x, _ in steps] == [(3, 32, 784)] * 15 + [(3, 20, 784)]
        for i, seed in enumerate(SEEDS):
            dm, batches = separate_batches(tiny_mnist, seed, epoch)
            assert len(batches) == len(steps)
            for (x, y), (sx, sy) in zip(batches, steps, strict=True):
                assert torch.equal(sx[i], x) and torch.equal(sy[i], y), f"member {i}, epoch {epoch}"
            (val_x, val_y), = data.val_batches()
            assert torch.equal(val_x[i], dm.val_x) and torch.equal(val_y[i], dm.val_y)
    first, second = (torch.cat([x[0] for x, _ in data.batches(e)]) for e in (0, 1))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_step_is_each_separate_runs_step_up_to_rounding(tiny_mnist, optimizer):
    model = dict(name="mlp")
    runner, data = stacked(tiny_mnist, model, optimizer, SETTINGS[optimizer])
    for start, steps in ((0, 1), (1, 3)):  # the first step, then the momentum, bias corrections, dampening
        run_steps(runner, data, steps, start)
        for i, seed in enumerate(SEEDS):
            alone = separate_run(tiny_mnist, model, seed, optimizer, SETTINGS[optimizer][i], steps).state_dict()
            member = runner.state_dict(i)
            worst = max(rel_diff(member[k], alone[k]) for k in alone)
            assert worst < 1e-3, f"{optimizer} member {i} after {steps} steps: {worst:.2e}"


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_given_the_same_gradients_a_stacked_step_is_torchs_step(optimizer):
    """The optimizer's arithmetic alone, without the batched products' rounding: 5 steps on the same
    gradients move each member as its torch optimizer moves its net, to float32 rounding."""
    nets = build_members(dict(name="mlp"), SEEDS)
    params = {k: v.detach().clone() for k, v in stack_module_state(nets)[0].items()}
    start = {k: v.clone() for k, v in params.items()}
    stacked_opt = StackedOptimizer(optimizer, SETTINGS[optimizer], params)
    alone = [build_optimizer(net.parameters(), optimizer, **s)
             for net, s in zip(nets, SETTINGS[optimizer], strict=True)]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in params.items()}
        for i, net in enumerate(nets):
            for k, p in net.named_parameters():
                p.grad = grads[k][i].clone()
            alone[i].step()
        stacked_opt.step(params, grads, torch.ones(len(SEEDS), dtype=torch.bool))
    for i, net in enumerate(nets):
        moved = {k: p.detach() - start[k][i] for k, p in net.named_parameters()}
        worst = max(rel_diff(params[k][i] - start[k][i], moved[k]) for k in moved)
        assert worst < 1e-4, f"{optimizer} member {i}: the updates differ by {worst:.2e}"


def test_a_stacked_convnet_steps_as_separate_ones(tiny_mnist):
    model = dict(name="convnet")
    runner, data = stacked(tiny_mnist, model, "adam", SETTINGS["adam"])
    run_steps(runner, data, 2)
    for i, seed in enumerate(SEEDS):
        alone = separate_run(tiny_mnist, model, seed, "adam", SETTINGS["adam"][i], 2).state_dict()
        assert max(rel_diff(runner.state_dict(i)[k], alone[k]) for k in alone) < 1e-3


def test_members_with_different_learning_rates_train_as_separate_runs(tiny_mnist):
    model, lrs = dict(name="mlp"), [3e-4, 1e-3, 3e-3]
    settings = [dict(lr=lr) for lr in lrs]
    runner, data = stacked(tiny_mnist, model, "rmsprop", settings)
    run_steps(runner, data, 10)
    test_loss, test_correct, n = runner.evaluate(data.test_batches())
    for i, seed in enumerate(SEEDS):
        net = separate_run(tiny_mnist, model, seed, "rmsprop", settings[i], 10)
        alone = net.state_dict()
        assert max(rel_diff(runner.state_dict(i)[k], alone[k]) for k in alone) < 1e-2
        with torch.no_grad():
            logits = net(data.test_x)
        assert test_correct[i].item() == pytest.approx((logits.argmax(1) == data.test_y).sum().item(), abs=2)
        assert test_loss[i].item() / n == pytest.approx(F.cross_entropy(logits, data.test_y).item(), rel=1e-2)
    weights = runner.params["image.weight"]
    assert not torch.allclose(weights[1] - weights[0], torch.zeros(()), atol=1e-4)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_member_whose_loss_turns_nan_stops_alone(tiny_mnist, optimizer):
    model = dict(name="mlp")
    runner, data = stacked(tiny_mnist, model, optimizer, SETTINGS[optimizer])
    clean, _ = stacked(tiny_mnist, model, optimizer, SETTINGS[optimizer])
    batches = list(data.batches(0))[:5]
    before = None
    for step, (x, y) in enumerate(batches, start=1):
        if step == 3:
            before = runner.state_dict(1), runner.optimizer.member_state(1)
            x = x.clone()
            x[1, 0, 0] = float("nan")  # member 1's loss is NaN at its third step
        loss, _ = runner.step(x, y)
        clean.step(*batches[step - 1])
        assert loss[1].isnan().item() == (step == 3)
    assert runner.stopped().keys() == {1} and runner.stopped()[1][0] == 3
    assert runner.active.tolist() == [True, False, True]
    weights, state = before
    after = runner.state_dict(1)
    assert all(torch.equal(after[k], weights[k]) for k in weights), "the stopped member's weights stay"
    for kind, tensors in runner.optimizer.member_state(1).items():
        assert all(torch.equal(v, state[kind][k]) for k, v in tensors.items()) if kind != "step" else \
            torch.equal(tensors, state[kind]), f"the stopped member's {kind} stays"
    for i in (0, 2):  # the others go on as in a stack without the NaN
        assert all(torch.equal(runner.state_dict(i)[k], clean.state_dict(i)[k]) for k in weights)


def test_an_epoch_of_each_member_trains_it(tiny_mnist):
    runner, data = stacked(tiny_mnist, dict(name="mlp"), "rmsprop", [dict(lr=1e-3)] * len(SEEDS))
    loss_sum, correct, n = train_epoch(runner, data, 0)
    assert n == 500 and correct.shape == (3,)
    _, val_correct, n_val = runner.evaluate(data.val_batches())
    assert n_val == 100 and (val_correct > 50).all()  # generated digits: learnt in an epoch
    assert runner.stopped() == {}


def test_settings_a_stack_cannot_carry_are_refused_in_one_line():
    assert set(STACKABLE) == set(OPTIMIZERS)
    nets = build_members(dict(name="mlp"), [0])
    for optimizer, settings, match in [("rmsprop", dict(lr=1e-3, centered=True), "centered=True of rmsprop cannot"),
                                       ("sgd", dict(lr=0.1, nesterov=True, momentum=0.9), "nesterov=True"),
                                       ("keras_rmsprop", dict(lr=1e-3, alpha=0.9), "alpha is not a setting")]:
        with pytest.raises(ConfigError, match=match) as err:
            StackedRunner(nets, optimizer, [settings])
        assert "\n" not in str(err.value) and len(str(err.value)) <= 200


def test_the_graph_bookkeeping_with_a_stand_in_for_capture(tiny_mnist, monkeypatch):
    """On the CPU: a stand-in for capture warms up, then runs the step at each replay; a graphed stack
    (one graph per batch shape, a NaN member inside) must then end exactly where an eager one ends."""

    class Graph:
        def __init__(self, runner, x, y, out):
            self.replay = lambda: [o.copy_(r) for o, r in zip(out, runner._step(x, y), strict=True)]

    def capture(self, x, y):
        static_x, static_y = x.clone(), y.clone()
        self.warm_up(static_x, static_y)
        out = (torch.zeros(self.n), torch.zeros(self.n, dtype=torch.long))
        return Graph(self, static_x, static_y, out), static_x, static_y, out

    monkeypatch.setattr(StackedRunner, "_capture", capture)
    (eager, data), (graphed, _) = (stacked(tiny_mnist, dict(name="mlp"), "adam", SETTINGS["adam"]) for _ in range(2))
    graphed.cuda_graph = True
    for step, (x, y) in enumerate(data.batches(0)):
        if step == 4:
            x = x.clone()
            x[2, 0, 0] = float("nan")
        out = [r.step(x, y) for r in (eager, graphed)]
        assert torch.equal(out[0][0].nan_to_num(), out[1][0].nan_to_num()) and torch.equal(out[0][1], out[1][1])
    assert list(graphed.graphs) == [(3, 32, 784), (3, 20, 784)]
    assert eager.stopped().keys() == graphed.stopped().keys() == {2}
    for i in range(len(SEEDS)):
        assert all(torch.equal(eager.state_dict(i)[k], graphed.state_dict(i)[k]) for k in eager.state_dict(i))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_graphed_stack_steps_as_an_eager_one(tiny_mnist, optimizer):
    model = dict(name="mlp")
    runners = [StackedRunner(build_members(model, SEEDS), optimizer, SETTINGS[optimizer], device="cuda",
                             cuda_graph=graph) for graph in (False, True)]
    data = StackedData(str(tiny_mnist), SEEDS, device="cuda", **DATA)
    for epoch in (0, 1):
        for step, (x, y) in enumerate(data.batches(epoch)):
            if epoch == 1 and step == 4:
                x = x.clone()
                x[2, 0, 0] = float("nan")  # member 2 stops inside the graph
            out = [r.step(x, y) for r in runners]
            assert torch.allclose(out[0][0], out[1][0], equal_nan=True)
    assert len(runners[1].graphs) == 2  # full batches and the epoch's last one
    assert runners[0].stopped().keys() == runners[1].stopped().keys() == {2}
    for i in range(len(SEEDS)):
        eager, graphed = runners[0].state_dict(i), runners[1].state_dict(i)
        assert all(torch.allclose(eager[k], graphed[k], rtol=1e-5, atol=1e-6) for k in eager)


# ---- train_stack: each member a run of its own ----

def member_cfgs(make_cfg, data_dir, out, lrs=(1e-3, 2e-3), extra=()) -> list:
    """Jobs of one stack: seed i and learning rate lrs[i], each its own folder under `out`."""
    return [make_cfg([*tiny_overrides(data_dir, out / f"{i}"), f"seed={i}", f"optimizer.lr={lr}", *extra])
            for i, lr in enumerate(lrs)]


def files_of(run) -> list[str]:
    """A run folder's files, event files by kind (their names hold the time and the process id)."""
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events", str(p.relative_to(run))) for p in run.rglob("*")
                  if p.is_file() and p.name != "provenance.diff")  # the diff: whether the tree had changes


def scalars(run) -> dict[str, list[int]]:
    """{tag: the steps of its values} over a run folder's TensorBoard event files, as TensorBoard reads them."""
    steps: dict[str, list[int]] = {}
    for events in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            steps[tag] = sorted(steps.get(tag, []) + [e.step for e in acc.Scalars(tag)])
    return steps


def test_each_member_is_a_run_of_its_own(tiny_mnist, tmp_path, make_cfg, capsys):
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path / "stack")
    results = train_stack(cfgs)
    run, alone = tmp_path / "stack" / "1", tmp_path / "alone"
    assert reproduce.main([str(run), "--out", str(alone)]) == 0  # trained alone: within tolerance, not the same bits
    assert "stacked True -> False" in capsys.readouterr().out
    separate = {k: v for k, v in runs.result_metrics(alone).items() if k.startswith("test/")}
    assert files_of(run) == files_of(alone)
    assert all(runs.finished(tmp_path / "stack" / f"{i}") for i in range(2))  # result.yaml: the whole record
    assert set(runs.result_metrics(run)) == set(runs.result_metrics(alone))
    assert set(results[1]) == set(separate) and abs(results[1]["test/acc"] - separate["test/acc"]) <= 0.02
    for name in ("best.ckpt", "last.ckpt"):  # Lightning's checkpoint, its optimizer state in torch's format
        ours, theirs = (torch.load(r / "checkpoints" / name) for r in (run, alone))
        assert ours.keys() == theirs.keys() and ours["global_step"] == theirs["global_step"]
        assert ours["hyper_parameters"]["config"]["seed"] == 1 and ours["epoch"] == theirs["epoch"]
        ours_state, theirs_state = (c["optimizer_states"][0]["state"] for c in (ours, theirs))
        assert {k: {n: (t.dtype, t.shape) for n, t in s.items()} for k, s in ours_state.items()} == \
               {k: {n: (t.dtype, t.shape) for n, t in s.items()} for k, s in theirs_state.items()}
        assert float(ours_state[0]["step"]) == float(theirs_state[0]["step"])
    assert scalars(run) == scalars(alone)  # TensorBoard: the same tags, at the same steps
    seen = read_run(run)  # compare reads it as any run
    assert len(seen.val_acc) == len(seen.train_acc) == 2 and seen.test_acc == pytest.approx(results[1]["test/acc"])
    onnx = export(run / "checkpoints" / "best.ckpt", formats=("onnx",))["onnx"]  # checked against eager
    predicted = predict(str(onnx), out=str(tmp_path / "predicted"))  # the run's own test set, without torch
    assert predicted["n"] == 200 and predicted["accuracy"] == pytest.approx(results[1]["test/acc"], abs=1e-6)
    log = (run / "train.log").read_text()  # its own lines, not the other member's
    assert log.count("epoch 2/2") == 1 and log.count("test: ") == 1 and f"({run})" in log


def test_a_member_whose_loss_turns_nan_stops_alone_as_its_separate_run(tiny_mnist, tmp_path, make_cfg):
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path / "stack", lrs=(0.05, 1e30),
                       extra=["optimizer=sgd", "trainer.max_epochs=1"])
    results = train_stack(cfgs)
    with pytest.raises(TrainingError) as separate:
        train(make_cfg([*tiny_overrides(tiny_mnist, tmp_path / "alone"), "seed=1", "optimizer=sgd",
                        "optimizer.lr=1e30", "trainer.max_epochs=1"]))
    assert isinstance(results[1], TrainingError)  # the same line, naming the same step, but its own folder
    assert str(results[1]) == str(separate.value).replace(str(tmp_path / "alone"), str(tmp_path / "stack" / "1"))
    assert runs.finished(tmp_path / "stack" / "0") and not runs.finished(tmp_path / "stack" / "1")


class StopAt(L.Callback):
    """A kill at the start of `epoch` (from 0): the epochs before it are saved, nothing after. With `runs`:
    {member folder name: epoch}."""

    def __init__(self, epoch: int | None = None, runs: dict[str, int] | None = None):
        self.epoch, self.runs = epoch, runs or {}

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.runs.get(Path(trainer.default_root_dir).name, self.epoch):
            raise RuntimeError("killed")


def test_a_killed_stack_resumes_where_the_uninterrupted_one_ends(tiny_mnist, tmp_path, make_cfg):
    whole = train_stack(member_cfgs(make_cfg, tiny_mnist, tmp_path / "whole", extra=["optimizer=adam"]))
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path / "cut", extra=["optimizer=adam"])
    killed = train_stack(cfgs, callbacks=[StopAt(1)])
    assert all(isinstance(r, RuntimeError) for r in killed)
    assert all((tmp_path / "cut" / f"{i}" / "checkpoints" / "last.ckpt").is_file() for i in range(2))
    assert train_stack(cfgs) == whole  # resumed from each member's last.ckpt
    log = (tmp_path / "cut" / "0" / "train.log").read_text()
    assert "from checkpoints/last.ckpt, saved after step 16 (epoch 1)" in log
    for i in range(2):
        ours, theirs = (torch.load(tmp_path / w / f"{i}" / "checkpoints" / "last.ckpt") for w in ("cut", "whole"))
        assert all(torch.equal(ours["state_dict"][k], t) for k, t in theirs["state_dict"].items())
        assert runs.result_metrics(tmp_path / "cut" / f"{i}") == runs.result_metrics(tmp_path / "whole" / f"{i}")
    log = (tmp_path / "cut" / "0" / "train.log").read_text()
    assert train_stack(cfgs) == whole  # finished: left as they are
    assert (tmp_path / "cut" / "0" / "train.log").read_text() == log


def test_members_killed_at_different_epochs_resume_in_stacks_of_their_own(tiny_mnist, tmp_path, make_cfg, caplog):
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path, lrs=(1e-3, 2e-3, 3e-3), extra=["trainer.max_epochs=3"])
    killed = train_stack(cfgs, callbacks=[StopAt(runs={"0": 1, "1": 2})])
    assert [type(r) for r in killed] == [RuntimeError, RuntimeError, dict]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mnist_lab"):
        resumed = train_stack(cfgs)
    assert resumed[2] == killed[2] and all(runs.finished(tmp_path / f"{i}") for i in range(3))
    stacks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stack:")]
    assert [s.split(":")[1] for s in stacks] == [" 1 run trained as one mlp from epoch 2",
                                                 " 1 run trained as one mlp from epoch 3"]


def test_ctrl_c_stops_every_member_after_its_epoch_then_each_resumes_alone_or_stacked(tiny_mnist, tmp_path, make_cfg,
                                                                                        ctrl_c, monkeypatch):
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path)
    train_epoch = Stack.train_epoch

    def signalled(self, asked):
        os.kill(os.getpid(), signal.SIGINT)  # the stack's thread takes it, while it trains the first epoch
        return train_epoch(self, asked)

    with monkeypatch.context() as m:
        m.setattr(Stack, "train_epoch", signalled)
        stopped = train_stack(cfgs)
    assert all(isinstance(r, Interrupted) for r in stopped)
    assert "SIGINT received: stopped after step 16 (at the end of epoch 1) and saved checkpoints/last.ckpt" \
        in str(stopped[0])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    alone = train(make_cfg([f"resume={tmp_path / '0'}", f"data.data_dir={tiny_mnist}"]))  # its last.ckpt, by resume=
    assert set(alone) == {"test/acc", "test/loss"}
    assert all(isinstance(r, dict) for r in train_stack(cfgs))  # the one resumed alone is left as it is
    assert all(runs.finished(tmp_path / f"{i}") for i in range(2))


def test_jobs_that_cannot_stack_are_refused_in_one_line_before_any_folder(tiny_mnist, tmp_path, make_cfg):
    cfgs = member_cfgs(make_cfg, tiny_mnist, tmp_path)
    for changed, words in ((["model=convnet"], "differs from job 0 in model.name"),
                           (["trainer.precision=bf16-mixed"], "differs from job 0 in trainer.precision"),
                           (["optimizer=adam"], "differs from job 0 in optimizer.name")):
        other = make_cfg([*tiny_overrides(tiny_mnist, tmp_path / "1"), "seed=1", *changed])
        with pytest.raises(ConfigError, match=words):
            train_stack([cfgs[0], other])
    with pytest.raises(ConfigError, match=r"\(trainer.precision=bf16-mixed: the stacked step trains in 32 bits\)"):
        train_stack(member_cfgs(make_cfg, tiny_mnist, tmp_path, extra=["trainer.precision=bf16-mixed"]))
    with pytest.raises(ConfigError, match="optimizer.nesterov=True of sgd cannot be stacked"):
        train_stack(member_cfgs(make_cfg, tiny_mnist, tmp_path, extra=["optimizer=sgd", "+optimizer.nesterov=true"]))
    with pytest.raises(ConfigError, match=r"jobs 0, 1 of the stack share output_dir=.*: give each job a folder"):
        train_stack([cfgs[0], cfgs[0]])
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_graphed_stack_on_the_gpu_gives_each_member_its_run(tiny_mnist, tmp_path, make_cfg):
    gpu = ["optimizer=sgd", "trainer.accelerator=gpu"]  # the fast path, its steps captured as CUDA graphs
    results = train_stack(member_cfgs(make_cfg, tiny_mnist, tmp_path / "stack", lrs=(0.05, 1e30), extra=gpu))
    alone = train(make_cfg([*tiny_overrides(tiny_mnist, tmp_path / "alone"), "seed=0", *gpu, "optimizer.lr=0.05"]))
    assert runs.finished(tmp_path / "stack" / "0") and abs(results[0]["test/acc"] - alone["test/acc"]) <= 0.02
    assert isinstance(results[1], TrainingError) and "loss became non-finite" in str(results[1])
    assert torch.load(tmp_path / "stack" / "0" / "checkpoints" / "last.ckpt")["global_step"] == 32
