"""Stacked runs: N copies of a plain net trained together as one stacked model, each as its own run would be.

PyTorch's model-ensembling recipe (torch.func): the members' weights stacked along a new first dimension
(stack_module_state), one functional forward on a meta-device copy of the net (functional_call), and
vmap of the per-member loss and gradient, so N small models take one batched step where N runs would
take N steps. Each member keeps what makes it its own run:

    its initialisation   seed_everything(seed) then models.build_model, as train() builds a run's net
    its data             its own train/val split and shuffled batch order, from data.split and
                         data.TensorBatches with its seed (StackedData gathers them from one copy of
                         the images)
    its hyperparameters  the optimizer's numeric settings as per-member tensors shaped (N, 1, ...):
                         torch's optimizers take one lr per parameter group, so StackedOptimizer writes
                         each step of optim.OPTIMIZERS on the stacked tensors
    its end              a member whose loss turns NaN or infinite stops alone: its weights and
                         optimizer state stay as they were before that step, the others go on

train_stack makes each member a run of its own (its folder, Lightning checkpoints, loggers, figures,
result.yaml) by running train()'s own code per member with the stack's epochs put into it (below).

A step reads nothing back to the host and keeps every tensor's shape (a stopped member is masked, not
removed), so on a GPU one step can be captured as a CUDA graph (cuda_graph=True) and replayed.
Batched matrix products round differently from single ones: a member's weights agree with its
separate run's up to rounding, not bit for bit (README, "Stacked runs").
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from mnist_lab import console, runs
from mnist_lab.config import among, flatten
from mnist_lab.console import log
from mnist_lab.data import TensorBatches, float_split, split
from mnist_lab.errors import ConfigError, Interrupted, MnistLabError, TrainingError, signals_to
from mnist_lab.fastpath import capture_graph, count_steps
from mnist_lab.guards import GracefulInterrupt
from mnist_lab.idx import train_size
from mnist_lab.models import build_model
from mnist_lab.optim import OPTIMIZERS
from mnist_lab.provenance import Provenance
from mnist_lab.runs import RunDir, in_sweep, owning_run, result_metrics, shown
from mnist_lab.stacking import as_job


def build_members(model: dict, seeds: Sequence[int]) -> list[nn.Module]:
    """Each seed's net exactly as a run with that seed builds it: seed_everything(seed), then build_model.
    Leaves the process seeded with the last seed, as a run leaves it with its own."""
    nets = []
    for seed in seeds:
        L.seed_everything(seed, workers=True, verbose=False)
        nets.append(build_model(**model))
    return nets


class StackedData:
    """The members' training batches and validation sets, each as its own run's MNISTDataModule gives them
    (same split, same batch order, epoch by epoch), as indices into one copy of the training images.

    A step's batch is one gather of (N, B) indices: x (N, B, *input_shape), y (N, B). Every member holds
    the same number of training images (val_size is shared), so every member has the same batch shapes.
    """

    def __init__(self, data_dir: str, seeds: Sequence[int], batch_size: int = 128, val_size: int = 5000,
                 normalize: bool = True, input_shape: Sequence[int] = (784,), eval_batch_size: int = 1000,
                 train_limit: int | None = None, device: torch.device | str = "cpu"):
        self.seeds, self.batch_size, self.eval_batch_size = list(seeds), batch_size, eval_batch_size
        images, labels = float_split(data_dir, True, normalize)
        test_images, test_labels = float_split(data_dir, False, normalize)
        self.x = images.reshape(len(images), *input_shape).to(device)
        self.y = labels.to(device)
        self.test_x = test_images.reshape(len(test_images), *input_shape).to(device)
        self.test_y = test_labels.to(device)
        self.epoch = 0
        parts = [split(len(labels), val_size, seed) for seed in self.seeds]
        self.val_idx = torch.stack([val for val, _ in parts]).to(device)  # (N, val_size)
        # Each member's TensorBatches over the indices of its own training images: iterating it yields
        # the indices its run's batches are sliced from, in its run's order.
        self.members = [TensorBatches(train.to(device), train.to(device), batch_size, shuffle=True, seed=seed,
                                      epoch=lambda: self.epoch, limit=train_limit)
                        for seed, (_, train) in zip(self.seeds, parts, strict=True)]

    def indices(self, epoch: int) -> list[torch.Tensor]:
        """The training images of each step of `epoch`: one (N, b) tensor of indices per step."""
        self.epoch = epoch
        per_member = [[idx for idx, _ in batches] for batches in self.members]
        return [torch.stack(step) for step in zip(*per_member, strict=True)]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x (N, b, ...), y (N, b)) for each step of `epoch`, each member's batches in its run's order."""
        for idx in self.indices(epoch):
            yield self.x[idx], self.y[idx]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each member's validation images, eval_batch_size at a time: (x (N, b, ...), y (N, b))."""
        for lo in range(0, self.val_idx.shape[1], self.eval_batch_size):
            idx = self.val_idx[:, lo:lo + self.eval_batch_size]
            yield self.x[idx], self.y[idx]

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set, shared by the members: (x (b, ...), y (b,))."""
        for lo in range(0, len(self.test_y), self.eval_batch_size):
            yield self.test_x[lo:lo + self.eval_batch_size], self.test_y[lo:lo + self.eval_batch_size]


# What StackedOptimizer writes of each optimizer: the settings it takes per member (with the optimizer's
# own defaults), and the flags it leaves at their defaults.
STACKABLE = {
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
    "keras_rmsprop": ("lr", "rho", "eps"),
    "adam": ("lr", "betas", "eps", "weight_decay"),
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
}


def optimizer_defaults(name: str) -> dict:
    """OPTIMIZERS[name]'s own keyword defaults (lr included), read from its signature."""
    params = inspect.signature(OPTIMIZERS[name]).parameters
    return {k: p.default for k, p in params.items() if k != "params" and p.default is not inspect.Parameter.empty}


class StackedOptimizer:
    """optim.OPTIMIZERS[name]'s update, written on stacked (N, ...) tensors, each member with its own settings.

    A setting the members share is a Python number, as in torch's optimizer; one that differs is an (N,)
    vector, viewed as (N, 1, ..., 1) against each tensor. The formulas follow torch's single-tensor
    implementations (torch.optim.RMSprop, Adam, SGD) and optim.KerasRMSprop, in place where theirs are.

    `ok` (N,) bool says which members step: one that does not keeps its weights and its optimizer state
    (its gradient zeroed, its decay factors 1, its learning rate 0). On a GPU that mask always applies,
    so nothing is read back to the host; on the CPU, where reading `ok` costs nothing, a step in which
    every member steps skips it (the mask is one more pass over every gradient).
    step() consumes `grads` (updates them in place).
    """

    def __init__(self, name: str, settings: Sequence[dict], params: dict[str, torch.Tensor]):
        if name not in STACKABLE:
            raise ConfigError(f"optimizer.name={name} cannot be stacked: choose one of {', '.join(STACKABLE)}")
        self.name, self.n = name, len(settings)
        device = next(iter(params.values())).device
        defaults = optimizer_defaults(name)
        merged = []
        for i, member in enumerate(settings):
            member = {k: v for k, v in member.items() if k != "name" and v is not None}
            for k, v in member.items():
                if k not in defaults:
                    raise ConfigError(f"optimizer.{k} is not a setting of {name} (member {i}): "
                                      f"use one of {', '.join(STACKABLE[name])}")
                if k not in STACKABLE[name] and v != defaults[k]:
                    raise ConfigError(f"optimizer.{k}={v} of {name} cannot be stacked (member {i}): "
                                      f"train it alone, or leave {k} at {defaults[k]}")
            m = {k: float(v) for k, v in {**defaults, **member}.items() if k in STACKABLE[name] and k != "betas"}
            if name == "adam":
                m["beta1"], m["beta2"] = (float(b) for b in {**defaults, **member}["betas"])
            for k in ("alpha", "rho", "beta1", "beta2"):  # the weights of the new value in moving averages
                if k in m:
                    m[f"1-{k}"] = 1 - m[k]
            merged.append(m)
        dtype = next(iter(params.values())).dtype
        self.h = {k: torch.tensor([m[k] for m in merged], dtype=torch.float64, device=device) for k in merged[0]}
        self.col = {k: v.to(dtype) for k, v in self.h.items()}  # in the weights' dtype, for the step
        # A setting all members share, as a number: known on the host once, no per-step sync
        self.same = {k: merged[0][k] for k in merged[0] if all(m[k] == merged[0][k] for m in merged)}
        self.decay = any(m.get("weight_decay", 0) != 0 for m in merged)
        self.momentum = any(m.get("momentum", 0) != 0 for m in merged)
        self.steps = torch.zeros(self.n, dtype=torch.float64, device=device)  # each member's steps taken
        zeros = lambda: {k: torch.zeros_like(p) for k, p in params.items()}  # noqa: E731
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        if name in ("rmsprop", "keras_rmsprop"):
            self.state["square_avg"] = zeros()
        if name == "adam":
            self.state["exp_avg"], self.state["exp_avg_sq"] = zeros(), zeros()
        if name in ("rmsprop", "sgd") and self.momentum:
            self.state["momentum_buffer"] = zeros()

    def tensors(self) -> list[torch.Tensor]:
        """What a step changes besides the weights: the state tensors and the step counts."""
        return [self.steps, *(t for part in self.state.values() for t in part.values())]

    def member_state(self, i: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member i's optimizer state per parameter name ({"exp_avg": {...}, ...}) and its step count."""
        state = {kind: {k: t[i].clone() for k, t in part.items()} for kind, part in self.state.items()}
        return {**state, "step": self.steps[i].clone()}

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], ok: torch.Tensor) -> None:
        self.steps += ok
        masked = ok.device.type != "cpu" or not bool(ok.all())
        dtype = next(iter(params.values())).dtype

        def plain(k: str) -> float | torch.Tensor:
            return self.same.get(k, self.col[k])

        def keep(k: str) -> float | torch.Tensor:  # a decay factor: 1 for a stopped member
            return torch.where(ok, self.h[k], 1.0).to(dtype) if masked else plain(k)

        def on(k: str) -> float | torch.Tensor:  # a factor on state that a stopped member keeps: 0 for it
            return (self.h[k] * ok).to(dtype) if masked else plain(k)

        name = self.name
        if name == "adam":
            steps = self.steps.clamp(min=1)  # a member stopped at its first step: any finite value
            step_size = (self.h["lr"] / (1 - self.h["beta1"] ** steps) * (ok if masked else 1)).to(dtype)
            bias2_sqrt = (1 - self.h["beta2"] ** steps).sqrt().to(dtype)
            w1, beta2 = on("1-beta1"), keep("beta2")
        elif name in ("rmsprop", "keras_rmsprop"):
            smooth = keep("alpha" if name == "rmsprop" else "rho")
        if name in ("rmsprop", "sgd") and self.momentum:
            mom, lr = keep("momentum"), on("lr")  # the buffer of a stopped member stays, and does not move it
        else:
            lr = plain("lr")  # a stopped member's zero gradient does not move it
        undamped = name == "sgd" and self.same.get("dampening") == 0.0
        if name == "sgd" and self.momentum and not undamped:
            damp = self._damp(ok, dtype)
        for k, p in params.items():
            def c(v: float | torch.Tensor, p: torch.Tensor = p) -> float | torch.Tensor:  # (N,) as (N, 1, ..., 1)
                return v if isinstance(v, float) else v.view(-1, *[1] * (p.dim() - 1))

            g = grads[k]
            if self.decay and name != "keras_rmsprop":  # L2: grad + weight_decay * param
                wd = plain("weight_decay")
                g = g.add_(p, alpha=wd) if isinstance(wd, float) else g.addcmul_(p, c(wd))
            if masked:
                g = torch.where(c(ok), g, 0.0)  # a stopped member's gradient may be NaN
            if name in ("rmsprop", "keras_rmsprop"):
                v = self.state["square_avg"][k]
                new = plain("1-alpha" if name == "rmsprop" else "1-rho")
                v.mul_(c(smooth))
                v.addcmul_(g, g, value=new) if isinstance(new, float) else v.addcmul_(g, g * c(new))
                if name == "rmsprop":
                    avg = v.sqrt().add_(c(plain("eps")))
                else:
                    avg = v.add(c(plain("eps"))).sqrt_()  # Keras: eps inside the root
                if self.momentum:
                    buf = self.state["momentum_buffer"][k]
                    buf.mul_(c(mom)).addcdiv_(g, avg)
                    p.add_(buf, alpha=-lr) if isinstance(lr, float) else p.addcmul_(buf, c(-lr))
                elif isinstance(lr, float):
                    p.addcdiv_(g, avg, value=-lr)
                else:
                    p.addcdiv_(g.mul_(c(-lr)), avg)
            elif name == "adam":
                m, v = self.state["exp_avg"][k], self.state["exp_avg_sq"][k]
                m.lerp_(g, c(w1))
                new = plain("1-beta2")
                v.mul_(c(beta2))
                v.addcmul_(g, g, value=new) if isinstance(new, float) else v.addcmul_(g, g * c(new))
                denom = v.sqrt().div_(c(bias2_sqrt)).add_(c(plain("eps")))
                p.addcdiv_(m, denom.div_(c(-step_size)))  # p - step_size * m / denom
            else:
                if self.momentum:
                    buf = self.state["momentum_buffer"][k]
                    buf.mul_(c(mom))
                    if undamped:
                        buf.add_(g)  # the first step too: the buffer starts at zero
                    else:
                        buf.addcmul_(g, c(damp))
                    g = buf
                p.add_(g, alpha=-lr) if isinstance(lr, float) else p.addcmul_(g, c(-lr))

    def _damp(self, ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """SGD's factor on the gradient added to the buffer: 1 at a member's first step (torch starts the
        buffer as that gradient), then 1 - dampening; 0 for a stopped member."""
        return (torch.where(self.steps <= 1, 1.0, 1 - self.h["dampening"]) * ok).to(dtype)


class StackedRunner:
    """Trains N nets of one architecture as one stacked model: step(x, y) takes one optimizer step for
    every member on its own batch (x (N, B, ...), y (N, B)) and returns each member's loss and correct count.

    optimizer: a name in optim.OPTIMIZERS; settings: one dict per member (the run's `optimizer` config:
    lr, alpha, rho, eps, momentum, weight_decay; None or missing: the optimizer's default).
    cuda_graph: on a CUDA device, capture a step once per batch shape (at most MAX_GRAPHS: full batches
    and an epoch's last, smaller one) as a CUDA graph and replay it; other shapes run eagerly, through
    the same code.

    stopped_at (N,) counts, for a member whose loss became non-finite, the steps it had taken including
    that one (the step NonFiniteGuard names); 0 for a member still training. bad_loss holds that loss.
    """

    WARMUP_STEPS = 3  # before capture: allocate, pick kernels; then weights and state are put back
    MAX_GRAPHS = 2  # full batches, an epoch's last batch

    def __init__(self, nets: Sequence[nn.Module], optimizer: str, settings: Sequence[dict], *,
                 device: torch.device | str | None = None, cuda_graph: bool = False):
        if len(settings) != len(nets):
            raise ValueError(f"{len(nets)} nets but {len(settings)} optimizer settings")
        device = torch.device(device) if device is not None else next(nets[0].parameters()).device
        params, buffers = stack_module_state(list(nets))
        self.params = {k: v.detach().to(device) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.n, self.input_shape = len(nets), tuple(getattr(nets[0], "input_shape", ()))
        self.template = copy.deepcopy(nets[0]).to("meta")  # the architecture alone, for functional_call
        self.optimizer = StackedOptimizer(optimizer, settings, self.params)
        self.active = torch.ones(self.n, dtype=torch.bool, device=device)
        self.stopped_at = torch.zeros(self.n, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros(self.n, device=device)
        self.cuda_graph = cuda_graph and device.type == "cuda"
        self.graphs: dict[torch.Size, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple]] = {}

        def loss(params, buffers, x, y):
            logits = functional_call(self.template, (params, buffers), (x,))
            loss = F.cross_entropy(logits, y)
            return loss, (loss.detach(), (logits.argmax(1) == y).sum())

        def forward(params, buffers, x):
            return functional_call(self.template, (params, buffers), (x,))

        self._grads = vmap(grad(loss, has_aux=True))
        self._forward = vmap(forward)
        self._forward_shared = vmap(forward, in_dims=(0, 0, None))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of each member still training. Returns (loss (N,), correct (N,)) on the device."""
        if self.cuda_graph and x.shape not in self.graphs and len(self.graphs) < self.MAX_GRAPHS:
            self.graphs[x.shape] = self._capture(x, y)
        if x.shape not in self.graphs:
            return self._step(x, y)
        graph, static_x, static_y, out = self.graphs[x.shape]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return out[0].clone(), out[1].clone()  # the next replay overwrites `out`

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk of steps, xs (K, N, B, ...), ys (K, N, B), in order: (losses (K, N), correct (K, N))."""
        out = [self.step(x, y) for x, y in zip(xs, ys, strict=True)]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads, (loss, correct) = self._grads(self.params, self.buffers, x, y)
        finite = torch.isfinite(loss)
        ok = self.active & finite
        newly = self.active & ~finite
        self.optimizer.step(self.params, grads, ok)
        # the count of steps taken, including this one, as NonFiniteGuard names a run's step
        self.stopped_at.copy_(torch.where(newly, self.optimizer.steps.long() + 1, self.stopped_at))
        self.bad_loss.copy_(torch.where(newly, loss.detach().float(), self.bad_loss))
        self.active.copy_(ok)
        return loss.detach().float(), correct

    def _capture(self, x: torch.Tensor, y: torch.Tensor):
        """One step of x's shape as a CUDA graph (fastpath.capture_graph): (graph, static x and y, (loss, correct))."""
        return capture_graph(self.warm_up, self._step, x, y)

    def warm_up(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Take a few steps (allocating, picking kernels), then put weights, optimizer state and the
        members' stops back as they were: the warm-up leaves no trace."""
        saved = [t.clone() for t in self._state()]
        for _ in range(self.WARMUP_STEPS):
            self._step(x, y)
        with torch.no_grad():
            for t, s in zip(self._state(), saved, strict=True):
                t.copy_(s)

    def _state(self) -> list[torch.Tensor]:
        """What a step changes: weights, buffers, optimizer state, and which members still train."""
        return [*self.params.values(), *self.buffers.values(), *self.optimizer.tensors(),
                self.active, self.stopped_at, self.bad_loss]

    @torch.no_grad()
    def evaluate(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Each member's summed cross-entropy and correct count over `batches` of (x, y): per member
        (x (N, b, ...), y (N, b)), or shared by all (x (b, ...), y (b,)). Returns (loss sums (N,), correct
        (N,), images per member)."""
        loss_sum = correct = None
        n = 0
        for x, y in batches:
            shared = y.dim() == 1
            logits = (self._forward_shared if shared else self._forward)(self.params, self.buffers, x)  # (N, b, C)
            yy = y.expand(self.n, -1) if shared else y
            losses = F.cross_entropy(logits.flatten(0, 1), yy.flatten(), reduction="none").view(self.n, -1).sum(1)
            right = (logits.argmax(-1) == yy).sum(1)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            correct = right if correct is None else correct + right
            n += yy.shape[1]
        return loss_sum, correct, n

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights and buffers, as its net's state_dict() holds them."""
        return {k: v[i].detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    def stopped(self) -> dict[int, tuple[int, float]]:
        """{member: (step, loss)} for each member whose loss became non-finite (reads the device)."""
        at, loss = self.stopped_at.tolist(), self.bad_loss.tolist()
        return {i: (s, loss[i]) for i, s in enumerate(at) if s > 0}


def train_epoch(runner: StackedRunner, data: StackedData, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One epoch of every member on its own batches: (summed loss x images (N,), correct (N,), images per
    member), kept on the device (a stopped member's sums are not meaningful)."""
    loss_sum = torch.zeros(runner.n, dtype=torch.float64, device=data.x.device)
    correct = torch.zeros(runner.n, dtype=torch.long, device=data.x.device)
    n = 0
    for x, y in data.batches(epoch):
        loss, right = runner.step(x, y)
        loss_sum += loss.double() * y.shape[1]
        correct += right
        n += y.shape[1]
    return loss_sum, correct, n


# ---- Each member a run of its own: train_stack ----
#
# Each member runs train()'s own code (train._train: its config.yaml, train.log, provenance, Lightning
# Trainer with its loggers, checkpoints, validation, test, figures and result.yaml) in a thread of its own,
# with a Member callback that hands its training epochs to the stack: an epoch is one training_step, in
# which the stack's weights, optimizer state and training sums of that epoch are put into the member's
# LightningModule and optimizer. So its checkpoints are Lightning's own, and resume=, export, predict,
# compare and reproduce read them as any run's. The threads take turns (Conductor): one runs at a time,
# the main thread trains the stacks while every member waits for its next epoch.

FREE_KEYS = ("seed", "output_dir", "resume", "optimizer")  # what members may differ in (optimizer.name excepted)


def check_stackable(cfgs: Sequence[DictConfig]) -> None:
    """Raise ConfigError (one line) where these job configs cannot train as one stack: they differ in more
    than seed and the optimizer's settings, or ask for what the stacked step does not do."""
    flat = [flatten(OmegaConf.to_container(c, resolve=False)) for c in cfgs]
    for i, f in enumerate(flat[1:], 1):
        differ = sorted(k for k in f.keys() | flat[0].keys() if f.get(k) != flat[0].get(k)
                        and (not among(k, FREE_KEYS) or k == "optimizer.name"))
        if differ:
            raise ConfigError(f"job {i} of the stack differs from job 0 in {', '.join(differ)}: only seed and the "
                              "optimizer's settings can differ in one stack; train it in a stack of its own")
    settings = [{k: v for k, v in OmegaConf.to_container(c.optimizer, resolve=True).items() if v is not None}
                for c in cfgs]
    StackedOptimizer(cfgs[0].optimizer.name, settings, {"w": torch.zeros(1)})  # its settings, checked
    t = cfgs[0].trainer
    why = (f"trainer.precision={t.precision}: the stacked step trains in 32 bits"
           if str(t.precision) not in ("32-true", "32") else
           "several processes (DDP): each step goes through Lightning's DDP"
           if t.strategy not in ("auto", "single_device") or t.devices not in (1, "1", [0]) or t.num_nodes != 1 else
           "trainer.gradient_clip_val: the stacked step does not clip" if t.gradient_clip_val else
           "trainer.fast_dev_run: a smoke test runs one batch" if t.fast_dev_run else None)
    if why:
        raise ConfigError(f"these jobs cannot be stacked ({why}): run them as separate jobs")


def train_stack(cfgs: Sequence[DictConfig], callbacks: Sequence = ()) -> list[dict | BaseException]:
    """Train the jobs `cfgs` (differing only in seed and the optimizer's settings: check_stackable) as
    stacked models, each member a run of its own in its cfg.output_dir, indistinguishable in its files from
    a run trained alone by train(). Returns, per job, train()'s test metrics or the error that stopped it
    (a member whose loss turned non-finite stops alone, with a separate run's TrainingError).

    A member whose folder holds a finished run is left as it is (its metrics returned); one with a
    checkpoints/last.ckpt resumes from it. Members start together where they stand at the same epoch;
    those at different epochs train in stacks of their own, side by side. `callbacks`: Lightning
    callbacks for every member's Trainer (train()'s `callbacks`)."""
    from mnist_lab.resume import finished  # torch-free modules, imported here: no cycle through train

    folders = [str(Path(c.output_dir).resolve()) for c in cfgs]  # resolved: the job's own folder
    shared = [f for f in dict.fromkeys(folders) if folders.count(f) > 1]
    if shared:
        raise ConfigError(f"jobs {', '.join(str(i) for i, f in enumerate(folders) if f == shared[0])} of the stack "
                          f"share output_dir={shared[0]}: give each job a folder of its own")
    results: list[dict | BaseException | None] = [None] * len(cfgs)
    todo = []
    for i, cfg in enumerate(cfgs):
        if done := finished(cfg.output_dir):
            log.info(done)
            results[i] = {k: v for k, v in result_metrics(cfg.output_dir).items() if k.startswith("test/")}
        else:
            todo.append(i)
    if not todo:
        return results
    check_stackable([cfgs[i] for i in todo])
    conductor = Conductor({i: cfgs[i] for i in todo})
    members = {i: Member(i, conductor) for i in todo}
    threads = [threading.Thread(target=conductor.member, name=f"stack member {i}", daemon=True,
                                args=(i, run_member, member_config(cfgs[i]), [*callbacks, members[i]], results))
               for i in todo]
    labels = {f"stack member {i}": Path(str(cfgs[i].output_dir)).name for i in todo}
    with console_shown(), console_labelled(labels), forwarded_signals(conductor, members):
        for thread in threads:
            thread.start()
        stacks: dict[int, Stack] = {}  # member -> its stack
        waiting = todo
        try:
            while waiting:
                for i in waiting:
                    conductor.turn_of(i)  # member i runs until it asks for its next epoch, or its run ends
                asked = conductor.take_asked()  # {member: epoch}
                new = [i for i in asked if i not in stacks]
                for epoch in sorted({asked[i] for i in new}):
                    together = [i for i in new if asked[i] == epoch]
                    stack = Stack([members[i] for i in together], [cfgs[i] for i in together])
                    stacks.update(dict.fromkeys(stack.indices, stack))
                for stack in dict.fromkeys(stacks[i] for i in asked):  # each once, in order
                    conductor.given.update(stack.train_epoch(asked))
                waiting = sorted(asked)
        except BaseException as err:  # every member still running stops with it (its run's log says so)
            conductor.stop(err, {i: t for i, t in zip(todo, threads, strict=True)})
            raise
        finally:
            for thread in threads:
                thread.join()
    return results


def member_config(cfg: DictConfig) -> DictConfig:
    """A member's config as train() takes it: where its folder holds a checkpoints/last.ckpt (a stack
    interrupted), resume= that folder, unless a resumed sweep already resumes it (resume.continued)."""
    if cfg.get("resume") or in_sweep() or not RunDir(cfg.output_dir).last_ckpt.is_file():
        return cfg
    cfg = cfg.copy()
    cfg.resume = str(cfg.output_dir)
    return cfg


def run_member(cfg: DictConfig, callbacks: Sequence) -> dict[str, float]:
    """train(cfg, callbacks) in a member's thread: its train.log keeps its own thread's lines."""
    from mnist_lab.train import _train  # train's own steps; train.py imports Hydra's app (not this module)

    with (console.recorded(cfg.output_dir, this_thread=True), runs.said_when_full(cfg.output_dir),
          owning_run(cfg.output_dir)):  # a full disk: the member's one line, as a run's
        runs.clear_stale_temps(cfg.output_dir)  # what a process killed mid-write left
        return _train(cfg, callbacks, {"release": lambda: None})  # signals: the stack's (forwarded_signals)


@contextlib.contextmanager
def console_shown() -> Iterator[None]:
    """One console handler for every member's lines, where nothing shows them yet (train_stack called from
    Python): else each member's console.recorded would add its own, or none."""
    added = None
    if not console.shows_console(logging.getLogger()) and not log.handlers:
        added = console.Console()
        log.addHandler(added)
    try:
        yield
    finally:
        if added is not None:
            log.removeHandler(added)


class Labelled(logging.Formatter):
    """A console handler's formatter, each line of a stack's member led by its run folder's name (its epoch lines
    look alike otherwise); the members' train.log files are left as a separate run's."""

    def __init__(self, inner: logging.Formatter | None, labels: dict[str, str]):
        super().__init__()
        self.inner, self.labels = inner or logging.Formatter("%(message)s"), labels

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        label = self.labels.get(record.threadName)
        return f"{label}: {text}" if label else text


@contextlib.contextmanager
def console_labelled(labels: dict[str, str]) -> Iterator[None]:
    """While a stack trains, its members' console lines name their run (labels: thread name -> label)."""
    consoles = [h for logger in (logging.getLogger(), log) for h in logger.handlers
                if type(h) in (logging.StreamHandler, console.Console)]  # not train.log's (a FileHandler)
    before = {h: h.formatter for h in consoles}
    for handler in consoles:
        handler.setFormatter(Labelled(handler.formatter, labels))
    try:
        yield
    finally:
        for handler, formatter in before.items():
            handler.setFormatter(formatter)


@contextlib.contextmanager
def forwarded_signals(conductor: Conductor, members: dict[int, Member]) -> Iterator[None]:
    """Ctrl-C or SIGTERM while a stack trains: every member's guards.GracefulInterrupt hears it (the members'
    threads cannot take signals), so each finishes the epoch in progress, keeps its checkpoints/last.ckpt
    and stops with its one line; running the jobs again resumes them. A second Ctrl-C stops at once."""

    def handle(signum, frame) -> None:
        if conductor.signal is not None and signum == signal.SIGINT:
            raise Interrupted("SIGINT received again: the stack stopped at once, saving nothing more; run its jobs "
                              "again to resume each from its checkpoints/last.ckpt")
        conductor.signal = signum
        for member in members.values():
            member.heard(signum)

    with signals_to(handle):
        yield


class Conductor:
    """Turns between the main thread (which trains the stacks) and the members' threads (each a run):
    exactly one runs at a time, so what is global to a process (the seed, logging, torch's settings) is
    each run's while it runs, and the members' lines come in order."""

    MAIN = -1

    def __init__(self, jobs: dict[int, DictConfig] | None = None):
        self.jobs = jobs or {}  # member -> its config: in a sweep's stack, its turns see its own Hydra job
        self.cond = threading.Condition()
        self.turn = self.MAIN
        self.asked: dict[int, int] = {}  # member -> the epoch it waits for
        self.given: dict[int, tuple] = {}  # member -> its epoch, trained (Stack.train_epoch)
        self.abort: BaseException | None = None
        self.signal: int | None = None

    def turn_of(self, i: int) -> None:
        """Main thread: let member i run until it asks for an epoch or its run ends, with its own job's
        HydraConfig where a sweep's stack trains it (its overrides, number, Optuna trial, as a job alone)."""
        with as_job(self.jobs[i]) if i in self.jobs else contextlib.nullcontext(), self.cond:
            self.turn = i
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == self.MAIN)

    def stop(self, err: BaseException, threads: dict[int, threading.Thread]) -> None:
        """Main thread, after `err` (a second Ctrl-C, a stack that could not be built): every member's run
        ends with it, each in its turn (one not started yet ends before it starts)."""
        with self.cond:
            self.cond.wait_for(lambda: self.turn == self.MAIN)  # a member whose turn it was asks or ends first
        self.abort = err
        for i, thread in threads.items():
            while thread.is_alive():
                self.turn_of(i)

    def stopped(self) -> BaseException:
        """The error a member's run ends with after the stack stopped."""
        if isinstance(self.abort, MnistLabError):
            return copy.copy(self.abort)
        return TrainingError(f"the stack this run trained in stopped: {type(self.abort).__name__}: {self.abort}")

    def take_asked(self) -> dict[int, int]:
        asked, self.asked = self.asked, {}
        return asked

    def member(self, i: int, run, cfg: DictConfig, callbacks: list, results: list) -> None:
        """A member's thread: its run, in its turns; its result (or error) in results[i]."""
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i)
        try:
            if self.abort is not None:
                raise self.stopped()
            results[i] = run(cfg, callbacks)
        except BaseException as err:  # noqa: BLE001  (the caller reports each member's end)
            results[i] = err
        finally:
            with self.cond:
                self.turn = self.MAIN
                self.cond.notify_all()

    def ask(self, i: int, epoch: int) -> tuple:
        """Member i's thread: wait until the stack has trained `epoch` for it; what Stack.train_epoch gave."""
        with self.cond:
            self.asked[i] = epoch
            self.turn = self.MAIN
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == i)
        if self.abort is not None:
            raise self.stopped()
        return self.given.pop(i)


class Member(L.Callback):
    """A member of a stack inside its own run: Lightning runs all of the run (validation, checkpoints,
    loggers, test, figures) but its training steps. Each epoch is one training_step (manual optimization)
    in which the stack's epoch is put into the module: weights, optimizer state (in torch's own format),
    the epoch's training sums and step count; it returns the epoch's losses, step by step, which
    guards.NonFiniteGuard checks as on the fast path, naming the same step a separate run would."""

    def __init__(self, index: int, conductor: Conductor):
        self.index, self.conductor = index, conductor
        self.trainer = self.module = self.interrupt = None
        self.told = False

    def setup(self, trainer, module, stage: str) -> None:
        if stage != "fit":
            return
        self.trainer, self.module = trainer, module
        module.automatic_optimization = False
        module.training_step = self.training_step
        trainer.datamodule.train_dataloader = OneStep  # one training_step an epoch
        trainer.limit_train_batches = 1.0  # the stack limits its batches (Stack)
        self.interrupt = next((c for c in trainer.callbacks if isinstance(c, GracefulInterrupt)), None)
        for record in (c.record for c in trainer.callbacks if isinstance(c, Provenance)):
            record["stacked"] = True  # not the arithmetic of a run alone: reproduce expects agreement, not bits
        if self.conductor.signal is not None:
            self.heard(self.conductor.signal)

    def heard(self, signum: int) -> None:
        if self.interrupt is not None:
            self.interrupt.received = signum

    def training_step(self, batch, batch_idx) -> torch.Tensor:
        stack, j, losses, sums = self.conductor.ask(self.index, self.trainer.current_epoch)
        if not self.told:  # in its own log only: the console has the stack's line
            self.told = True
            log.info(f"trained in a stack of {stack.runner.n} (mnist_lab.stack), from epoch "
                     f"{self.trainer.current_epoch + 1}: its steps are the stack's", extra={"console": False})
        stack.install(j, self.module.net, self.trainer.optimizers[0])
        with torch.no_grad():
            self.module.train_sums += sums.to(self.module.train_sums.device)
        count_steps(self.trainer, len(losses))
        return losses


class OneStep:
    """A member's training "batches": one per epoch, whose training_step takes the stack's epoch."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield torch.zeros(())

    def __len__(self) -> int:
        return 1


class Stack:
    """Members that start at the same epoch, trained as one StackedRunner on StackedData, from the weights
    and optimizer state their runs hold (a fresh run's, or a resumed run's restored by Lightning)."""

    def __init__(self, members: Sequence[Member], cfgs: Sequence[DictConfig]):
        self.indices = [m.index for m in members]
        cfg, module = cfgs[0], members[0].module
        plain = [OmegaConf.to_container(c.optimizer, resolve=True) for c in cfgs]
        settings = [{k: v for k, v in p.items() if v is not None} for p in plain]
        self.runner = StackedRunner([m.module.net for m in members], cfg.optimizer.name, settings,
                                    device=module.device, cuda_graph=module.fast.cuda_graph)
        for j, m in enumerate(members):
            self.load(j, m.module.net, m.trainer.optimizers[0], m.trainer.global_step)
        n_train = train_size(cfg.data.data_dir) - cfg.data.val_size
        limit = cfg.trainer.limit_train_batches  # counted in batches, as build_run counts it on the fast path
        if isinstance(limit, float):
            limit = int(limit * -(-n_train // cfg.data.batch_size))
        self.data = StackedData(cfg.data.data_dir, [c.seed for c in cfgs], batch_size=cfg.data.batch_size,
                                val_size=cfg.data.val_size, normalize=cfg.data.normalize,
                                input_shape=self.runner.input_shape, eval_batch_size=cfg.data.eval_batch_size,
                                train_limit=limit, device=module.device)
        epoch = members[0].trainer.current_epoch
        log.info(f"stack: {len(members)} run{'s' if len(members) > 1 else ''} trained as one "
                 f"{cfg.model.name} from epoch {epoch + 1}: " + ", ".join(shown(c.output_dir) for c in cfgs))

    def load(self, j: int, net: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
        """Member j's optimizer state from its run's torch optimizer (empty at a run's start); its step count."""
        params = dict(net.named_parameters())
        with torch.no_grad():
            for kind, part in self.runner.optimizer.state.items():
                for k, t in part.items():
                    saved = optimizer.state.get(params[k], {}).get(kind)
                    if saved is not None:
                        t[j].copy_(saved)
            self.runner.optimizer.steps[j] = steps

    def train_epoch(self, asked: dict[int, int]) -> dict[int, tuple]:
        """An epoch of the members in `asked` ({member: epoch}); one that did not ask has left (its run ended)
        and no longer steps. Returns {member: (self, j, losses per step, train sums (loss x n, correct, n))}."""
        here = {i: j for j, i in enumerate(self.indices) if i in asked}
        left = torch.tensor([i not in here for i in self.indices], device=self.runner.active.device)
        self.runner.active &= ~left
        epoch = asked[next(iter(here))]
        losses, sizes, correct = [], [], 0
        for x, y in self.data.batches(epoch):
            loss, right = self.runner.step(x, y)
            losses.append(loss)
            sizes.append(y.shape[1])
            correct = correct + right
        losses, n = torch.stack(losses), sum(sizes)  # (steps, N); images per member
        loss_sum = (losses.double() * torch.tensor(sizes, dtype=torch.float64, device=losses.device)[:, None]).sum(0)
        sums = torch.stack([loss_sum, correct.double(), torch.full_like(loss_sum, n)], 1)  # (N, 3)
        return {i: (self, j, losses[:, j], sums[j]) for i, j in here.items()}

    @torch.no_grad()
    def install(self, j: int, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Member j's weights into its run's net, its optimizer state into its run's optimizer, as torch's
        optimizer keeps it (the keys it writes, the step count as its tensor)."""
        for k, t in net.state_dict().items():
            t.copy_(self.runner.params[k][j] if k in self.runner.params else self.runner.buffers[k][j])
        opt = self.runner.optimizer
        member = opt.member_state(j)
        group = optimizer.param_groups[0]
        name = opt.name
        kinds = {"rmsprop": ("step", "square_avg", "momentum_buffer"), "keras_rmsprop": ("square_avg",),
                 "adam": ("step", "exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}[name]
        moving = group.get("momentum", 0) != 0  # torch keeps a momentum buffer only for momentum != 0
        for k, p in net.named_parameters():
            state = {}
            for kind in kinds:
                if kind == "step":
                    device = p.device if group.get("capturable") else "cpu"
                    state["step"] = torch.tensor(float(member["step"]), dtype=torch.get_default_dtype(), device=device)
                elif kind != "momentum_buffer" or moving:
                    state[kind] = member[kind][k]
            if state:  # SGD without momentum keeps none
                optimizer.state[p] = state
