"""Elastic weight consolidation (seed §2.3).

    L_EWC = L_task(θ) + λ/2 · Σ_i F_i (θ_i − θ*_i)²,   F_i = E[(∂ log p_θ*(x) / ∂θ_i)²]

``F`` is the diagonal empirical Fisher at the starting point θ*: the mean over
``fisher_samples`` documents x of the pretraining distribution of the squared
per-document gradient of log p_θ*(x) = Σ_t log p(x_t | x_<t). It covers the
parameters that train (for LoRA / adapters / prefixes, those parameters at their
initial values: the penalty then keeps the adapted model near θ* along the
directions the pretraining data cares about).

In training the penalty enters as its gradient λ F (θ − θ*), added once per
optimizer step to the averaged task gradient (before clipping), so gradient
accumulation and data parallelism leave it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class EWC:
    def __init__(self, model: Any, fisher: dict[str, Any], lam: float) -> None:
        import torch

        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.lam = float(lam)
        self.items: list[tuple[str, Any, Any, Any]] = []
        with torch.no_grad():
            for name, f in fisher.items():
                p = params[name]
                self.items.append(
                    (name, p, f.to(p.device, torch.float32), p.detach().to(torch.float32).clone())
                )
        self.last_penalty = 0.0
        self._applied_step: int | None = None

    def penalty(self) -> Any:
        """λ/2 Σ F (θ − θ*)² as a differentiable tensor."""
        import torch

        total = torch.zeros((), dtype=torch.float32)
        for _, p, f, star in self.items:
            total = total + (f * (p.float() - star) ** 2).sum().to(total.device)
        return 0.5 * self.lam * total

    def add_gradient(self, step: int) -> None:
        """grad += λ F (θ − θ*), once per optimizer step; records the penalty value."""
        import torch

        if self._applied_step == step:
            return
        self._applied_step = step
        value = 0.0
        with torch.no_grad():
            for k, (name, p, f, star) in enumerate(self.items):
                if f.device != p.device:  # the trainer moved the model after the Fisher was computed
                    f, star = f.to(p.device), star.to(p.device)
                    self.items[k] = (name, p, f, star)
                diff = p.detach().float() - star
                value += float((f * diff * diff).sum())
                g = (self.lam * f * diff).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
        self.last_penalty = 0.5 * self.lam * value


def fisher_diagonal(model: Any, sequences: Iterable[list[int]]) -> tuple[dict[str, Any], int]:
    """({param name: F_i}, documents used): mean squared gradient of log p(x) per document."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of log p_θ*(x) itself
    device = next(model.parameters()).device
    count = 0
    for ids in sequences:
        if len(ids) < 2:
            continue
        model.zero_grad(set_to_none=True)
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x).logits[:, :-1].float()
        log_p = torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None]).sum()
        log_p.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count:
        for f in fisher.values():
            f /= count
    return fisher, count


def ewc_callback(ewc: EWC) -> Any:
    """A TrainerCallback that applies the EWC gradient (if the trainer did not already) and logs the penalty."""
    from transformers import TrainerCallback

    class EwcCallback(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ewc.add_gradient(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs is not None and "loss" in logs:
                logs["ewc_penalty"] = ewc.last_penalty

    return EwcCallback()


def ewc_trainer_class(base: type) -> type:
    """``base`` (a Trainer class) adding the EWC gradient before gradient clipping."""

    class EwcTrainer(base):  # type: ignore[misc, valid-type]
        ewc: EWC | None = None

        def _clip_grad_norm(self, model: Any) -> Any:
            if self.ewc is not None:
                self.ewc.add_gradient(self.state.global_step)
            return super()._clip_grad_norm(model)

    return EwcTrainer
