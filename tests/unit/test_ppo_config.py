"""Config validation of the ppo and reinforce_pp kinds (pydantic only: no torch is imported)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

OUTPUTS = {"policy": "model:t/p", "rollouts": "dataset:t/r"}


def _ppo(**kw: Any) -> Any:
    from stages.ppo import Config

    base: dict[str, Any] = {
        "name": "rl",
        "kind": "ppo",
        "inputs": {"policy": "sft", "reward": "rm", "prompts": "tasks.prompts"},
        "outputs": OUTPUTS,
    }
    return Config(**{**base, **kw})


def test_both_kinds_are_registered_and_import_no_heavy_library():
    code = (
        "import sys; from hubflow.registry import get_kind; get_kind('ppo'); get_kind('reinforce_pp'); "
        "print([m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_defaults_batches_and_the_critic_choice():
    cfg = _ppo(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=3)
    assert cfg.mini_batch_size == 8 and cfg.rollout_batch_size == 24
    assert cfg.critic_source() == "reward_model" and cfg.kl_control.type == "fixed"
    synthetic = _ppo(reward="synthetic", inputs={"policy": "sft", "prompts": "p"})
    assert synthetic.critic_source() == "policy"
    assert _ppo(critic="shared").critic_source() == "shared"
    from stages import ppo

    line = ppo.describe(_ppo(kl_control={"type": "adaptive"}, kl_budget={"max_kl": 12}))[0]
    assert "toward 6 nats/seq" in line and "KL budget 12 nats/seq" in line


def test_reinforce_pp_is_ppo_without_a_critic():
    from stages.ppo import reinforce_pp

    cfg = reinforce_pp.Config(
        name="r",
        kind="reinforce_pp",
        reward="synthetic",
        inputs={"policy": "s", "prompts": "p"},
        outputs=OUTPUTS,
    )
    assert cfg.advantage_estimator == "reinforce_pp" and cfg.critic_source() is None
    with pytest.raises(ValidationError, match="critic-free"):
        reinforce_pp.Config(
            name="r",
            kind="reinforce_pp",
            reward="synthetic",
            critic="shared",
            inputs={"policy": "s", "prompts": "p"},
            outputs=OUTPUTS,
        )
    with pytest.raises(ValidationError, match="advantage_estimator"):
        reinforce_pp.Config(
            name="r",
            kind="reinforce_pp",
            reward="synthetic",
            advantage_estimator="gae",
            inputs={"policy": "s", "prompts": "p"},
            outputs=OUTPUTS,
        )
    assert _ppo(advantage_estimator="reinforce_pp").critic_source() is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"inputs": {"policy": "sft", "prompts": "p"}}, r"missing \['reward'\]"),
        ({"reward": "synthetic"}, "remove the `reward` input"),
        (
            {"inputs": {"policy": "s", "prompts": "p"}, "reward": "synthetic", "critic": "reward_model"},
            "reward model",
        ),
        ({"kl_coef": 0.1}, r"kl_control: \{type: fixed, kl_coef"),
        ({"peft": {"method": "lora", "dropout": 0.1}}, "dropout off in every model"),
        ({"peft": {"method": "qlora"}}, "does not match any of the expected tags"),
        ({"resources": {"num_processes": 2}}, "one process"),
        ({"outputs": {"policy": "model:t/p"}}, r"needs outputs \['rollouts'\]"),
        (
            {"inputs": {"policy": "s", "reward": "r", "prompts": "p", "data": "d"}},
            r"unknown input\(s\) \['data'\]",
        ),
        ({"kl_control": {"type": "adaptive", "target": 0}}, "greater than 0"),
        ({"lr": 1e-5}, "`lr` is now `learning_rate`"),
        ({"per_device_train_batch_size": 1}, "must be >= 2"),
    ],
)
def test_bad_configs_name_the_field_and_the_fix(kw: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        _ppo(**kw)


def test_lora_dropout_is_turned_off_when_left_at_its_default():
    cfg = _ppo(peft={"method": "lora", "r": 4})
    assert cfg.peft.dropout == 0.0


def test_units_of_kl_are_documented_in_the_schema():
    from stages.ppo import Config

    schema = Config.model_json_schema()
    text = str(schema)
    assert "nats PER SEQUENCE" in text or "nats per sequence" in text
    for name, field in Config.model_fields.items():
        assert field.description, name
