"""The optimisation phase of a PPO step (seed §4.5 step 5.3).

``num_ppo_epochs`` passes over the rollout batch, each in a fresh random order (PPO detail 15) cut into
``num_mini_batches`` minibatches of ``per_device_train_batch_size × gradient_accumulation_steps`` rows;
one optimizer step per minibatch. For every micro-batch, with the policy recomputing log π_θ (logits / T,
the rollout's temperature and padding, dropout off, so the first minibatch's ratio is exactly 1):

    L = L_actor + c₁·L_critic − c₂·H

with L_actor the clipped surrogate (``objectives.policy_loss``, ε = ``cliprange``), L_critic the
(optionally clipped) value loss ½·mean (V − G)² (``objectives.value_loss``; ½ folded into c₁, see there),
H the mean entropy of π_θ(·|y_<t, x) over real tokens; every mean is over real tokens (PPO detail 11).
The policy's and the critic's gradients are clipped separately to ``max_grad_norm``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.ppo.experience import Experience, rows_of


@dataclass
class MicroBatch:
    """What one micro-batch computed, for an observer (tests compare it with the seed's formula)."""

    step: int
    epoch: int
    minibatch: int
    micro: int
    index: Any
    logp: Any
    entropy: Any
    values: Any | None
    loss: Any
    policy_terms: Any
    value_terms: Any | None


def optimise(
    exp: Experience,
    models: Any,
    optimizer: Any,
    cfg: Any,
    *,
    acc: Any,
    generator: Any,
    step: int,
    observer: Callable[[MicroBatch], None] | None = None,
) -> dict[str, float]:
    """Run the K epochs over ``exp``; returns the step's averaged diagnostics (TRL's names)."""
    import torch

    from stages.lib.logprobs import rollout_logprobs
    from stages.lib.masked import masked_mean
    from stages.ppo.objectives import policy_loss, value_loss

    policy, critic = models.policy, models.critic
    policy_params = list(policy.trainable().values())
    critic_params = list(critic.trainable().values()) if critic is not None else []
    rows, micro, accum = len(exp), cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    mini = cfg.mini_batch_size
    max_norm = cfg.max_grad_norm or float("inf")
    logs: dict[str, list[Any]] = {
        k: [] for k in ("loss", "pg", "vf", "clip", "vclip", "akl", "ent", "ratio", "ev")
    }
    norms: dict[str, list[Any]] = {"policy": [], "critic": []}
    first_dev = torch.zeros((), device=exp.mask.device)
    for epoch in range(cfg.num_ppo_epochs):
        order = torch.randperm(rows, generator=generator).to(exp.mask.device)
        for m in range(cfg.num_mini_batches):
            batch = order[m * mini : (m + 1) * mini]
            for a in range(accum):
                index = batch[a * micro : (a + 1) * micro]
                sub = rows_of(exp.rollout, index)
                mask = exp.mask[index]
                with acc.autocast():
                    logp, entropy = rollout_logprobs(policy.model, sub, cfg.temperature, with_entropy=True)
                    values = critic.values(sub) if critic is not None else None
                pt = policy_loss(
                    logp, exp.old_logp[index], exp.advantages[index], mask, clip_eps=cfg.cliprange
                )
                ent = masked_mean(entropy, mask)
                loss = pt.loss - cfg.entropy_coef * ent
                vt = None
                if values is not None:
                    vt = value_loss(
                        values, exp.values[index], exp.returns[index], mask, clip_eps=cfg.cliprange_value
                    )
                    loss = loss + cfg.vf_coef * vt.loss
                acc.backward(loss / accum)
                with torch.no_grad():
                    if epoch == 0 and m == 0:
                        ratio = (logp.float() - exp.old_logp[index]).masked_fill(~mask, 0.0).exp()
                        first_dev = torch.maximum(first_dev, (ratio - 1).abs().max())
                    logs["loss"].append(loss.detach())
                    logs["pg"].append(pt.loss.detach())
                    logs["clip"].append(pt.clip_frac)
                    logs["akl"].append(pt.approx_kl)
                    logs["ratio"].append(pt.ratio_mean)
                    logs["ent"].append(ent.detach())
                    if vt is not None:
                        logs["vf"].append(vt.loss.detach())
                        logs["vclip"].append(vt.clip_frac)
                        logs["ev"].append(vt.explained_variance)
                if observer is not None:
                    observer(MicroBatch(step, epoch, m, a, index, logp, entropy, values, loss, pt, vt))
            acc.unscale_gradients()
            norms["policy"].append(torch.nn.utils.clip_grad_norm_(policy_params, max_norm).detach())
            if critic_params:
                norms["critic"].append(torch.nn.utils.clip_grad_norm_(critic_params, max_norm).detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def mean(values: list[Any]) -> float | None:
        if not values:
            return None
        stacked = torch.stack([v.float() for v in values])
        finite = stacked[torch.isfinite(stacked)]
        return float(finite.mean()) if finite.numel() else None

    ratios = torch.stack(logs["ratio"]).float()
    out = {
        "loss": mean(logs["loss"]),
        "loss/policy_avg": mean(logs["pg"]),
        "loss/value_avg": mean(logs["vf"]),
        "policy/clipfrac_avg": mean(logs["clip"]),
        "policy/approxkl_avg": mean(logs["akl"]),
        "policy/entropy_avg": mean(logs["ent"]),
        "val/clipfrac_avg": mean(logs["vclip"]),
        "val/explained_variance": mean(logs["ev"]),
        "val/ratio": float(ratios.mean()),
        "val/ratio_var": float(ratios.var()) if ratios.numel() > 1 else 0.0,
        "policy/first_minibatch_ratio_max_dev": float(first_dev),
        "grad_norm": mean(norms["policy"]),
        "critic/grad_norm": mean(norms["critic"]),
    }
    return {k: v for k, v in out.items() if v is not None}
