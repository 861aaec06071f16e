"""The fast path: K optimizer steps per training_step, replayed as CUDA graphs on a GPU.

Lightning spends a fixed time on every training_step (its loops, hooks and callbacks), about as long
as a whole MNIST step takes on a GPU. So the data module hands LitClassifier a chunk of K batches at
a time (xs: (K, B, ...), ys: (K, B)) and ChunkRunner takes the K steps: forward, cross-entropy,
backward, optimizer step, grads zeroed, in order, the same arithmetic as K separate steps. On CUDA
GRAPH_STEPS steps of full batches are captured once as a CUDA graph, and a chunk replays it
K // GRAPH_STEPS times (its remainder gets a graph of its own): the host pays Lightning once per
chunk and a graph launch per GRAPH_STEPS steps, and capture, which costs about as long as running
the steps it records, stays short. The last, smaller batch of an epoch (and any piece of an odd
shape once MAX_GRAPHS are kept) runs eagerly, through the same code.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ChunkRunner:
    """Trains `net` with `optimizer` on a chunk of batches; returns each step's loss and correct count.

    cuda_graph: replay full batches (shape[1] == batch_size) as CUDA graphs; the optimizer must then
    keep its state on the device (capturable=True for torch's RMSprop and Adam). autocast_dtype: run
    the steps under torch.autocast (e.g. torch.bfloat16 for bf16-mixed), with autocast's weight cache
    off, as capture requires. compile: torch.compile the forward and the optimizer step for full
    batches (compiled during the first chunk; captured inside the graphs on CUDA).
    """

    GRAPH_STEPS = 32  # steps per captured graph
    MAX_GRAPHS = 3  # GRAPH_STEPS, an epoch's remainder, a resumed epoch's remainder
    WARMUP_STEPS = 3  # before capture: allocate grads and optimizer state, pick kernels, compile

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, *,
                 cuda_graph: bool = False, autocast_dtype: torch.dtype | None = None, compile: bool = False,
                 clip_norm: float | None = None):
        self.net, self.optimizer, self.batch_size = net, optimizer, batch_size
        self.cuda_graph, self.autocast_dtype, self.clip_norm = cuda_graph, autocast_dtype, clip_norm
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.forward = torch.compile(net) if compile else net
        self.optimizer_step = torch.compile(optimizer.step) if compile else optimizer.step
        self.graphs: dict[torch.Size, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple]] = {}

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step per xs[k], ys[k], in order. Returns (losses (K,), correct (K,)) on the device."""
        if not (self.cuda_graph and xs.shape[1] == self.batch_size):
            with self._autocast(xs):
                # Beside graphs the grads must stay the tensors the graphs were captured with.
                return self._chunk(xs, ys, set_to_none=not self.cuda_graph)
        pieces = [self._replay(xs[i:i + self.GRAPH_STEPS], ys[i:i + self.GRAPH_STEPS])
                  for i in range(0, len(xs), self.GRAPH_STEPS)]
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

    def _replay(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if xs.shape not in self.graphs and len(self.graphs) < self.MAX_GRAPHS:
            self.graphs[xs.shape] = self._capture(xs, ys)
        if xs.shape not in self.graphs:
            with self._autocast(xs):
                return self._chunk(xs, ys, set_to_none=False)
        graph, static_x, static_y, out = self.graphs[xs.shape]
        static_x.copy_(xs)
        static_y.copy_(ys)
        graph.replay()
        return out[0].clone(), out[1].clone()  # the next replay overwrites `out`

    def _autocast(self, xs: torch.Tensor):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(xs.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _chunk(self, xs: torch.Tensor, ys: torch.Tensor, set_to_none: bool) -> tuple[torch.Tensor, torch.Tensor]:
        losses, correct = [], []
        full = xs.shape[1] == self.batch_size  # compiled for this shape alone: no recompiling for the last batch
        forward, optimizer_step = (self.forward, self.optimizer_step) if full else (self.net, self.optimizer.step)
        for x, y in zip(xs, ys, strict=True):
            logits = forward(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if self.clip_norm is not None:
                nn.utils.clip_grad_norm_(self.params, self.clip_norm)
            optimizer_step()
            # Inside a graph the grads must stay the same tensors: zeroed in place, not set to None.
            self.optimizer.zero_grad(set_to_none=set_to_none)
            losses.append(loss.detach())
            correct.append((logits.argmax(1) == y).sum())
        return torch.stack(losses).float(), torch.stack(correct)

    def _capture(self, xs: torch.Tensor, ys: torch.Tensor):
        """The steps of xs's shape as a CUDA graph (capture_graph): (graph, static x and y, (losses, correct))."""
        return capture_graph(self.warm_up, lambda x, y: self._chunk(x, y, set_to_none=False), xs, ys,
                             lambda: self._autocast(xs))

    def warm_up(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """Take a few steps (allocating grads and optimizer state, picking kernels, compiling), then put
        weights and optimizer state back as they were: the warm-up leaves no trace, so a captured chunk
        takes exactly the steps an eager one would."""
        saved = self._snapshot()
        with self._autocast(xs):
            for i in range(self.WARMUP_STEPS):
                self._chunk(xs[i % len(xs)][None], ys[i % len(xs)][None], set_to_none=False)
        self._restore(saved)

    def _state(self) -> list[torch.Tensor]:
        """What a step changes: weights, buffers and the optimizer's state tensors."""
        return ([*self.params, *self.net.buffers()]
                + [v for p in self.params for v in self.optimizer.state.get(p, {}).values() if torch.is_tensor(v)])

    def _snapshot(self) -> dict[int, torch.Tensor]:
        return {id(t): t.detach().clone() for t in self._state()}

    @torch.no_grad()
    def _restore(self, saved: dict[int, torch.Tensor]) -> None:
        for t in self._state():
            if id(t) in saved:
                t.copy_(saved[id(t)])
            else:
                t.zero_()  # optimizer state that the warm-up created: fresh state is zeros (step 0)
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()


def capture_graph(warm_up, step, xs: torch.Tensor, ys: torch.Tensor, context=nullcontext):
    """Warm up on a side stream (warm_up(static_x, static_y), which must leave no trace), then capture
    step(static_x, static_y) as a CUDA graph, inside `context()` (autocast). Returns (graph, static inputs x and
    y, the step's static outputs): fill the inputs with copy_ and replay."""
    static_x, static_y = xs.clone(), ys.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm_up(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), context():
        out = step(static_x, static_y)
    return graph, static_x, static_y, out


def place_optimizer_state(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Make a (restored) optimizer's state fit the path: a capturable optimizer keeps its `step` on the
    parameter's device, an eager one on the CPU. A checkpoint written by the other path holds the other."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if torch.is_tensor(step):
                state["step"] = step.to(p.device if capturable else "cpu", torch.float32)


def count_steps(trainer, k: int) -> None:
    """Tell Lightning that k optimizer steps were taken, as each LightningOptimizer.step() under manual
    optimization would: trainer.global_step counts them, and so does the step loggers write at (Lightning
    adds 1 per training_step itself), so both read as on the plain path."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.manual_optimization.optim_step_progress
    for tracker in (progress.total, progress.current):
        tracker.ready += k
        tracker.completed += k
    loop._batches_that_stepped += k - 1


def auto_steps(device_type: str, full_batches: int) -> int:
    """K for fast.steps=null: on a GPU the epoch's full batches in one chunk, one CUDA graph (at most
    1024 steps a graph, in equal chunks); on a CPU 32, enough to outweigh Lightning's per-step cost."""
    if device_type != "cuda":
        return 32
    chunks = -(-max(1, full_batches) // 1024)
    return -(-max(1, full_batches) // chunks)


@dataclass(frozen=True)
class FastPlan:
    """How a run takes its optimizer steps, decided once (plan(), where the run is assembled) and handed to
    the data module (chunks of `steps` batches), LitClassifier (ChunkRunner's settings), the device line
    and the progress bar."""

    steps: int | None = None  # K batches per training_step; None: the plain path, one batch per training_step
    cuda_graph: bool = False  # replay full batches as CUDA graphs (a run on a CUDA device)
    compile: bool = False  # torch.compile the forward and the optimizer step
    clip_norm: float | None = None  # trainer.gradient_clip_val, applied inside the steps
    plain_because: str = ""  # why the plain path runs, where it does

    @property
    def fast(self) -> bool:
        return self.steps is not None

    def describe(self) -> str:
        """The second half of the run's device line."""
        if not self.fast:
            return f"plain path, one step per training_step ({self.plain_because})"
        how = ", CUDA graphs" if self.cuda_graph else ""
        how += ", compiled" if self.compile else ""
        return f"fast path: {self.steps} steps per training_step{how}"


def plan(cfg, device_type: str, full_batches: int) -> FastPlan:
    """The fast path's settings for a run's config on a device of `device_type` ("cuda", "cpu", ...) with
    `full_batches` full training batches an epoch, or the plain path and why."""
    trainer = cfg.trainer
    if not cfg.fast.enabled:
        return FastPlan(plain_because="fast.enabled=false")
    if str(trainer.precision) in ("16-mixed", "16"):
        return FastPlan(plain_because="16-mixed needs a gradient scaler, which the fast path does not capture; "
                                      "trainer.precision=bf16-mixed keeps it")
    devices = trainer.devices
    one_device = str(devices) == "1" or (not isinstance(devices, int | str) and len(devices) == 1)
    if trainer.num_nodes > 1 or "ddp" in str(trainer.strategy) or not one_device:
        return FastPlan(plain_because="several processes (DDP): each step goes through Lightning's DDP")
    return FastPlan(steps=cfg.fast.steps or auto_steps(device_type, full_batches),
                    cuda_graph=bool(cfg.fast.cuda_graph) and device_type == "cuda", compile=bool(cfg.fast.compile),
                    clip_norm=trainer.gradient_clip_val)
