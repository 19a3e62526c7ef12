"""The models PPO holds (seed §4.4, "Models in memory during PPO") and how they share memory.

- actor + reference: a full policy trains every weight and keeps a second, frozen copy as the reference;
  a new LoRA on a full policy trains the adapter and the reference is the same model with the adapter
  disabled; an SFT LoRA policy is continued as adapter ``default`` while a frozen copy of it, adapter
  ``reference``, sits on the same base: one base in memory in both adapter cases.
- critic (GAE only): a value head at every token (PPO detail 3) on its own backbone copied from the reward
  model (``reward_model``; the value head starts as its score head) or from the SFT policy (``policy``; a
  fresh head), or on the policy's own backbone (``shared``: no second backbone; the value loss then also
  trains the policy's weights). Fresh heads are drawn from N(0, 1/√(d+1)) with bias 0 (PPO detail 4).
- reward: the reward model or ensemble (frozen), or the gold judge (no weights).

Dropout is off in every model (PPO detail 1): every ``nn.Dropout`` gets p = 0, attention dropout 0, and
the models stay in eval mode throughout (gradients flow in eval mode).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.ppo.inputs import Checked

POLICY_ADAPTER = "default"
REFERENCE_ADAPTER = "reference"


def disable_dropout(model: Any) -> None:
    """p = 0 in every dropout layer and attention dropout 0 (config and modules), then eval mode."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if "dropout" in key and isinstance(value, float):
                    setattr(config, key, 0.0)
    model.eval()


def count_parameters(model: Any) -> tuple[int, int]:
    """(all, trainable) parameters of a module."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Held:
    """One model in memory, for the report (seed §4.4: four models, and how many weights they really take)."""

    role: str
    what: str
    parameters: int
    trainable: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "what": self.what,
            "parameters": self.parameters,
            "trainable": self.trainable,
        }


@dataclass
class Policy:
    """The actor and its reference."""

    model: Any
    layout: str
    """``full`` (a separate frozen reference), ``lora`` (reference = adapter disabled) or ``lora_continued``
    (reference = the frozen adapter ``reference`` on the same base)."""
    reference_model: Any | None = None

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """The model to run as π_ref inside the block (call under ``torch.no_grad()``)."""
        if self.layout == "full":
            yield self.reference_model
        elif self.layout == "lora":
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield self.model
            finally:
                self.model.set_adapter(POLICY_ADAPTER)  # the policy's adapter trains again, the reference not

    def trainable(self) -> dict[str, Any]:
        """name -> parameter of every trained weight (checkpointed and optimised)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


@dataclass
class Critic:
    """V_φ at every response token (``stages.lib.logprobs.token_values``)."""

    model: Any
    head: Any | None
    """A value head module, or None for the model's own ``score`` head."""
    source: str

    def values(self, rollout: Any) -> Any:
        from stages.lib.logprobs import token_values

        return token_values(self.model, rollout, head=self.head)

    def trainable(self) -> dict[str, Any]:
        """name -> parameter of the critic's own weights (the head only when shared with the policy)."""
        owner = self.head if self.source == "shared" else self.model
        return {n: p for n, p in owner.named_parameters() if p.requires_grad}


@dataclass
class Models:
    policy: Policy
    critic: Critic | None
    reward: Any | None
    """A ``stages.lib.rewards.RewardModel``, or None for the gold judge."""
    held: list[Held] = field(default_factory=list)

    def distinct_parameters(self) -> int:
        """Parameters in memory, each shared tensor counted once."""
        seen: dict[int, int] = {}
        modules = [self.policy.model, self.policy.reference_model]
        if self.critic is not None:
            modules += [self.critic.model, self.critic.head]
        if self.reward is not None:
            modules += list(self.reward.members)
        for module in modules:
            if module is not None:
                for p in module.parameters():
                    seen[p.data_ptr()] = p.numel()
        return sum(seen.values())


def _init_value_head(head: Any, seed: int) -> None:
    """N(0, 1/√(d+1)) weights, zero bias (alignment notes, PPO detail 4), from a seeded generator."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        d = head.weight.shape[-1]
        w = torch.randn(head.weight.shape, generator=gen) / math.sqrt(d + 1)
        head.weight.copy_(w.to(head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def load_policy(checked: Checked, cfg: Any, device: str) -> tuple[Policy, list[Held]]:
    """The actor (trainable) and the reference (frozen), laid out as the module docstring says."""
    from stages.lib.models import load_model
    from stages.lib.peft_methods import apply_method

    folder, base, info = checked.policy_dir, checked.base_dir, checked.policy_info
    spec = cfg.peft
    kw = {"device": device, "input_name": "policy", "base_input": "base"}
    trains_full = (spec is None and not info.is_adapter) or (spec is not None and spec.method == "full")
    if trains_full:
        merge = {"base": base, "merge": True} if info.is_adapter else {}
        model = load_model(folder, **merge, **kw)
        reference = load_model(folder, **merge, **kw)
        for p in model.parameters():
            p.requires_grad_(True)
        for p in reference.parameters():
            p.requires_grad_(False)
        policy = Policy(model, "full", reference)
        what = "merged SFT adapter" if info.is_adapter else "full SFT model"
        held = [
            Held("actor", f"{what}, every weight trained", *count_parameters(model)),
            Held("reference", f"a second, frozen copy of the {what}", *count_parameters(reference)),
        ]
    elif not info.is_adapter:
        model = apply_method(load_model(folder, **kw), spec, "causal_lm")
        policy = Policy(model, "lora")
        total, trainable = count_parameters(model)
        held = [
            Held("actor", "new LoRA adapter on the frozen SFT model", total, trainable),
            Held("reference", "the same model with the adapter disabled (no extra weights)", 0, 0),
        ]
    else:
        model = load_model(folder, base=base, trainable=True, **kw)
        model.load_adapter(str(folder), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter(POLICY_ADAPTER)
        policy = Policy(model, "lora_continued")
        total, trainable = count_parameters(model)
        held = [
            Held("actor", "the SFT LoRA adapter, continued, on the shared frozen base", total, trainable),
            Held(
                "reference",
                "a frozen copy of the SFT adapter on the same base (adapter weights only)",
                trainable,
                0,
            ),
        ]
    for m in (policy.model, policy.reference_model):
        if m is not None:
            disable_dropout(m)
    if not policy.trainable():
        raise RuntimeError("the policy has no trainable parameter")
    return policy, held


def _sequence_classifier_from(lm: Any) -> Any:
    """A one-label sequence classifier whose backbone is a copy of ``lm``'s (the causal-LM head dropped)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from stages.lib.generation import unwrap

    lm = unwrap(lm)
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    config.architectures = None
    critic = AutoModelForSequenceClassification.from_config(config, dtype=next(lm.parameters()).dtype)
    getattr(critic, critic.base_model_prefix).load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
    return critic.to(next(lm.parameters()).device)


def load_critic(checked: Checked, cfg: Any, policy: Policy, device: str) -> tuple[Critic | None, list[Held]]:
    """The value model named by ``cfg.critic_source()``, trainable, dropout off; None without a critic."""
    from torch import nn

    from stages.lib.generation import unwrap
    from stages.lib.models import load_model

    source = cfg.critic_source()
    if source is None:
        return None, []
    if source == "reward_model":
        model = load_model(
            checked.reward_members[0], task="classification", device=device, input_name="reward"
        )
        head, what = None, "own backbone copied from the reward model, value head from its score head"
    elif source == "policy":
        info = checked.policy_info
        merge = {"base": checked.base_dir, "merge": True} if info.is_adapter else {}
        lm = load_model(checked.policy_dir, device=device, input_name="policy", base_input="base", **merge)
        model = _sequence_classifier_from(lm)
        del lm
        _init_value_head(model.score, cfg.seed)
        head, what = None, "own backbone copied from the SFT policy, fresh value head"
    else:
        model = policy.model
        hidden = unwrap(model).config.hidden_size
        head = nn.Linear(hidden, 1).to(device)
        _init_value_head(head, cfg.seed)
        what = "value head on the policy's own backbone (shared, no second backbone)"
    if source != "shared":
        for p in model.parameters():
            p.requires_grad_(True)
        disable_dropout(model)
    critic = Critic(model, head, source)
    owner = head if source == "shared" else model
    return critic, [Held("critic", what, *count_parameters(owner))]


def load_models(checked: Checked, cfg: Any, device: str) -> Models:
    """Policy, reference, critic and reward model on ``device`` (the checks ran already)."""
    from stages.lib.rewards import load_reward_model

    policy, held = load_policy(checked, cfg, device)
    critic, critic_held = load_critic(checked, cfg, policy, device)
    reward = None
    if cfg.reward == "model":
        assert checked.reward_dir is not None
        reward = load_reward_model(checked.reward_dir, aggregate=cfg.reward_aggregate, device=device)
        for member in reward.members:
            disable_dropout(member)
            for p in member.parameters():
                p.requires_grad_(False)
        n = sum(count_parameters(m)[0] for m in reward.members)
        k = len(reward.members)
        what = (
            f"reward model ensemble of {k}, {cfg.reward_aggregate} over members" if k > 1 else "reward model"
        )
        reward_held = [Held("reward", what + ", frozen", n, 0)]
    else:
        reward_held = [Held("reward", "the gold judge of the synthetic families (no weights)", 0, 0)]
    return Models(policy, critic, reward, held + critic_held + reward_held)


def save_policy(
    policy: Policy, tok: Any, out: Path, *, repo: str | None, revision: str | None
) -> dict[str, Any]:
    """Write the trained policy and the tokenizer into ``out``; returns the card metadata.

    ``repo``/``revision``: the model the output applies to (the adapter's base) or was fine-tuned from."""
    from stages.lib.generation import unwrap

    out.mkdir(parents=True, exist_ok=True)
    if policy.layout == "full":
        model = unwrap(policy.model)
        model.config.use_cache = True
        model.save_pretrained(str(out), safe_serialization=True)
        relation, library = "finetune", "transformers"
    else:
        policy.model.save_pretrained(
            str(out), safe_serialization=True, selected_adapters=[POLICY_ADAPTER], save_embedding_layers=False
        )
        path = out / "adapter_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config.update(base_model_name_or_path=repo, revision=revision)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (out / "README.md").unlink(missing_ok=True)  # peft's stub card; the runner writes the real one
        relation, library = "adapter", "peft"
    tok.save_pretrained(str(out))
    meta: dict[str, Any] = {
        "base_model_relation": relation,
        "library_name": library,
        "pipeline_tag": "text-generation",
    }
    if repo:
        meta["base_model"] = repo
    return meta
