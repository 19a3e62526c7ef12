"""The rollout phase of a PPO step (seed §4.5 steps 5.1–5.2): sample, score, reward, advantages.

For a batch of prompts: responses are sampled from π_θ (``stages.lib.generation.sample``: left-padded
prompts, explicit position ids, KV cache, temperature / top-p, a row ends at its first stop token); then,
without gradients and in forwards of ``local_rollout_forward_batch_size`` rows:

- log π_θ_old and log π_ref of every response token with the logits divided by the sampling temperature
  (PPO detail 2), kl_t = log π_θ_old − log π_ref (k1, detail 7);
- the reward model's score at the last real token (details 6, 14), or the gold judge's, and the gold
  judge's beside it when the prompts carry ``family``;
- the score normalised (running mean / std or the reference batch's, optional clip; detail 5) and, for a
  response that never stopped, ``missing_eos_penalty`` subtracted (detail 12);
- r_t = −β·kl_t on every real token and + score on the last one (detail 6), optionally whitened;
- the critic's V_t at every response token (detail 3), then the estimator: GAE(γ, λ) with returns
  G_t = Â_t + V_t and advantages whitened over real tokens only (details 9, 10), or REINFORCE++.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hubflow.errors import StageInputError
from stages.ppo.inputs import PromptSet


@dataclass
class Experience:
    """One rollout batch with everything the optimisation phase needs; tensors [B, R] unless noted."""

    rollout: Any
    mask: Any
    """bool: the real response tokens (up to and including the stop token)."""
    old_logp: Any
    ref_logp: Any
    entropy: Any
    """Entropy of π_θ_old(·|y_<t, x) at each response token (at the sampling temperature)."""
    kl: Any
    raw_scores: Any
    """[B] the proxy reward (reward model or judge) before normalisation."""
    scores: Any
    """[B] what enters the reward: normalised, clipped, less the missing-EOS penalty."""
    member_scores: Any | None
    """[K, B] each ensemble member's raw score."""
    gold: list[float] | None
    rewards: Any
    values: Any | None
    advantages: Any
    returns: Any
    texts: list[str]
    prompt_rows: list[int]
    beta: float
    step: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def rows_of(rollout: Any, index: Any) -> Any:
    """The rows ``index`` of a Rollout (same padded widths, so forwards see the same shapes)."""
    from stages.lib.generation import Rollout

    return Rollout(
        prompt_ids=rollout.prompt_ids[index],
        prompt_mask=rollout.prompt_mask[index],
        response_ids=rollout.response_ids[index],
        response_mask=rollout.response_mask[index],
        ended=rollout.ended[index],
        prompt_index=rollout.prompt_index[index],
    )


def chunked(fn: Any, rollout: Any, size: int, dim: int = 0) -> Any:
    """``fn`` over consecutive row chunks of ``rollout``, concatenated along ``dim``."""
    import torch

    rows = int(rollout.response_ids.shape[0])
    parts = [
        fn(rows_of(rollout, torch.arange(lo, min(lo + size, rows), device=rollout.response_ids.device)))
        for lo in range(0, rows, size)
    ]
    return torch.cat(parts, dim=dim)


def normalise_scores(raw: Any, moments: Any, cfg: Any) -> Any:
    """PPO detail 5: (score − mean) / std with ``RunningMoments`` (updated here as the mode says), clip."""
    from stages.ppo.rewards import normalize_and_clip

    mode = cfg.reward_normalization
    if mode == "none":
        return raw if cfg.reward_clip is None else raw.clamp(-cfg.reward_clip, cfg.reward_clip)
    if mode == "running" or moments.count == 0:
        moments.update(raw)
        if mode == "reference" and moments.std == 0:
            raise StageInputError(
                "reward_normalization: reference: every response of the first rollout batch (sampled from the "
                f"reference policy) got the same score {moments.mean:g}, so there is no spread to normalise by",
                hint="use reward_normalization: running (or none), or a larger rollout batch",
            )
    return normalize_and_clip(raw, moments, cfg.reward_clip)


def _proxy_scores(models: Any, rollout: Any, gold: list[float] | None, size: int) -> tuple[Any, Any]:
    import torch

    if models.reward is None:
        assert gold is not None
        return torch.tensor(gold, dtype=torch.float32, device=rollout.response_ids.device), None

    def score(sub: Any) -> Any:
        ids, mask, _ = sub.sequences()
        agg, each = models.reward.score_ids(ids, mask)
        return torch.cat([agg[None].float(), each.float()])

    stacked = chunked(score, rollout, size, dim=1)
    return stacked[0], stacked[1:]


def collect(
    models: Any,
    prompts: PromptSet,
    rows: list[int],
    cfg: Any,
    *,
    tok: Any,
    stop_ids: list[int],
    beta: float,
    moments: Any,
    generator: Any,
    autocast: Any,
) -> Experience:
    """Sample responses to ``prompts`` rows ``rows`` from the current policy and score them (see module)."""
    import torch

    from stages.lib.generation import decode, sample
    from stages.lib.logprobs import rollout_logprobs
    from stages.lib.masked import masked_whiten
    from stages.lib.rewards import gold_rewards
    from stages.ppo.advantages import get_estimator
    from stages.ppo.rewards import kl_penalty, per_token_rewards

    policy, size, temp = models.policy, cfg.local_rollout_forward_batch_size, cfg.temperature
    t0 = time.perf_counter()
    with autocast():
        rollout = sample(
            policy.model,
            [prompts.ids[r] for r in rows],
            pad_id=tok.pad_token_id,
            stop_ids=stop_ids,
            max_new_tokens=cfg.response_length,
            temperature=temp,
            top_p=cfg.top_p,
            batch_size=size,
            generator=generator,
        )
    t1 = time.perf_counter()
    texts = decode(tok, rollout)
    gold = None
    if prompts.families is not None:
        gold = gold_rewards([prompts.families[r] for r in rows], [prompts.prompts[r] for r in rows], texts)

    def logp(model: Any) -> Any:
        # with_entropy as in the optimisation phase: the same arithmetic, so the first ratio is exactly 1
        return chunked(
            lambda sub: torch.stack(
                [t.float() for t in rollout_logprobs(model, sub, temp, with_entropy=True)]
            ),
            rollout,
            size,
            dim=1,
        )

    with torch.no_grad(), autocast():
        old_logp, entropy = logp(policy.model)
        with policy.reference() as reference:
            ref_logp = logp(reference)[0]
        raw, members = _proxy_scores(models, rollout, gold, size)
        values = None
        if models.critic is not None:
            values = chunked(lambda sub: models.critic.values(sub).float(), rollout, size)
    mask = rollout.response_mask.bool()
    kl = kl_penalty(old_logp, ref_logp, "k1").masked_fill(~mask, 0.0)
    scores = normalise_scores(raw, moments, cfg)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~rollout.ended).float()
    rewards = per_token_rewards(scores, kl, mask, beta=beta)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = get_estimator(cfg.advantage_estimator)(
        rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam
    )
    if cfg.advantage_estimator == "gae" and cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    t2 = time.perf_counter()
    return Experience(
        rollout=rollout,
        mask=mask,
        old_logp=old_logp,
        ref_logp=ref_logp,
        entropy=entropy,
        kl=kl,
        raw_scores=raw,
        scores=scores,
        member_scores=members,
        gold=gold,
        rewards=rewards,
        values=values,
        advantages=advantages,
        returns=returns,
        texts=texts,
        prompt_rows=list(rows),
        beta=beta,
        timings={"rollout": t1 - t0, "scoring": t2 - t1},
    )
