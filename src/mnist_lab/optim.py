"""The optimizers `optimizer.name` chooses from: OPTIMIZERS is the one list (conf/optimizer/ has a yaml each)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop as Keras applies it: v = rho*v + (1-rho)*g^2; p -= lr * g / sqrt(v + eps).

    torch.optim.RMSprop puts eps outside the root (g / (sqrt(v) + eps)), and its defaults differ too
    (lr 1e-2, alpha 0.99, eps 1e-8). With eps = 1e-7 inside the root, small gradients take
    smaller steps than torch's formula gives.
    """

    def __init__(self, params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            vs = []
            for p in params:
                if "square_avg" not in self.state[p]:
                    self.state[p]["square_avg"] = torch.zeros_like(p)
                vs.append(self.state[p]["square_avg"])
            torch._foreach_mul_(vs, group["rho"])
            torch._foreach_addcmul_(vs, grads, grads, value=1 - group["rho"])
            denom = torch._foreach_add(vs, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])
        return loss


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "rmsprop": torch.optim.RMSprop,  # torch's formula
    "keras_rmsprop": KerasRMSprop,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def build_optimizer(params, name: str, lr: float, capturable: bool = False, **kwargs: Any) -> torch.optim.Optimizer:
    """OPTIMIZERS[name] over `params`; kwargs (alpha, rho, eps, momentum, ...) go to it. The name is
    checked by config.validate.

    capturable: the optimizer's steps may be captured in a CUDA graph; torch's optimizers that take
    the flag (RMSprop, Adam) then keep their step count on the device. KerasRMSprop and SGD keep no
    state on the host and need nothing."""
    if capturable and "capturable" in inspect.signature(OPTIMIZERS[name]).parameters:
        kwargs["capturable"] = True
    return OPTIMIZERS[name](params, lr=lr, **kwargs)
