"""Learning, measured with the gold judge (alignment notes, "Measuring learning on tiny CPU models"): from the
mediocre tiny SFT policy, a few dozen PPO (and REINFORCE++) steps with the gold judge as the reward raise the
mean gold reward of sampled answers on the held-out prompts, while the KL to the reference stays under its
budget. Three seeds; the mean improvement must exceed a floor and two standard deviations of the seeds.

The measurement is independent of the stage's own metrics: the published policy is loaded with
``stages.lib.models.load_model`` and sampled (T = 1, four answers per test prompt, a fixed generator)."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import pytest
from ppo_helpers import inputs_of, ppo_config, ppo_context, sampled_gold

pytest.importorskip("torch")

log = logging.getLogger(__name__)
FLOOR = 0.05
BUDGET = 5.0  # nats per sequence
SETTINGS: dict[str, Any] = dict(
    max_steps=30,
    per_device_train_batch_size=32,
    num_mini_batches=2,
    num_ppo_epochs=2,
    learning_rate=5e-4,
    lr_scheduler_type="constant",
    response_length=8,
    temperature=1.0,
    kl_budget={"max_kl": BUDGET},
)


def _learn(tmp: Path, kind: str, seeds: tuple[int, ...], policy: Path, prompts: Path) -> list[float]:
    from stages.ppo.loop import train

    before = sampled_gold(policy, prompts)
    gains = []
    for seed in seeds:
        inputs = {"policy": policy, "prompts": prompts}
        ctx = ppo_context(tmp / f"{kind}-{seed}", inputs)
        result = train(ctx, ppo_config(kind, inputs=inputs_of(inputs), seed=seed, **SETTINGS))
        m = result.metrics
        assert m["stopped_by"] == "max_steps" and m["steps"] == SETTINGS["max_steps"], m["stopped_by"]
        lines = (ctx.outputs["policy"] / "metrics.jsonl").read_text().splitlines()
        kls = [r["objective/kl"] for r in map(json.loads, lines) if r["split"] == "train"]
        assert len(kls) == SETTINGS["max_steps"] and max(kls) <= BUDGET, kls
        after = sampled_gold(ctx.outputs["policy"], prompts)
        gains.append(after - before)
        log.info(
            "%s seed %d: sampled gold %.4f -> %.4f (%+.4f); rollout gold %.3f -> %.3f; KL max %.3f last %.3f",
            kind,
            seed,
            before,
            after,
            after - before,
            m["first_gold_scores"],
            m["last_gold_scores"],
            max(kls),
            kls[-1],
        )
    return gains


def _significant(gains: list[float]) -> None:
    mean, spread = statistics.mean(gains), statistics.stdev(gains) if len(gains) > 1 else 0.0
    assert mean > FLOOR and mean > 2 * spread, f"gains {gains}: mean {mean:.4f}, 2 std {2 * spread:.4f}"


@pytest.mark.slow
def test_ppo_raises_the_gold_reward_within_the_kl_budget(tmp_path, policy_factory, synthetic_tasks):
    _significant(_learn(tmp_path, "ppo", (0, 1, 2), policy_factory(), synthetic_tasks["prompts"]))


@pytest.mark.slow
def test_reinforce_pp_raises_the_gold_reward_within_the_kl_budget(tmp_path, policy_factory, synthetic_tasks):
    _significant(_learn(tmp_path, "reinforce_pp", (0, 1, 2), policy_factory(), synthetic_tasks["prompts"]))
