"""Where a sampling kind's reward comes from (best_of_n, online_dpo, ppo, grpo, rloo, cai).

- a **reward model**: a ``reward`` stage's output, a sequence-classification model with one label
  (``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it), scoring prompt ⊕ response
  at its last real token;
- a **reward-model ensemble**: the same stage with ``ensemble: K`` publishes one member per subfolder
  (``member-0/`` … ``member-{K-1}/``) and ``ensemble.json`` (``{"members": [...]}``); a consumer takes
  the conservative minimum over members (seed §4.12 item 2) or their mean, as it declares;
- the **gold judge** of the synthetic task families (``stages.lib.judge.score``): a programmatic,
  verifiable reward of 1.0 for a correct answer, 0.0 otherwise (it needs each row's ``family``).

Token-level scoring (:meth:`RewardModel.score_ids`) takes the policy's own token ids: the reward model
must share the policy's tokenizer, which :func:`check_same_tokenizer` verifies before any compute.
Texts are tokenised with :func:`stages.lib.chat.split_prompt_completion`, the tokens a policy samples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hubflow.errors import StageInputError

ENSEMBLE_FILE = "ensemble.json"
Aggregate = Literal["min", "mean"]


def is_ensemble(folder: Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def member_folders(folder: Path, *, input_name: str = "reward") -> list[Path]:
    """The member folders of an ensemble (in ``ensemble.json`` order), or ``[folder]`` for one model."""
    folder = Path(folder)
    if not is_ensemble(folder):
        return [folder]
    try:
        info = json.loads((folder / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        names = [str(n) for n in info["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageInputError(
            f"input {input_name!r}: {ENSEMBLE_FILE} is not a reward ensemble description ({exc})",
            hint='publish it with a `reward` stage (`{"members": ["member-0", ...]}`)',
        ) from exc
    members = []
    for name in names:
        member = (folder / name).resolve()
        if member.parent != folder.resolve() or not member.is_dir():
            raise StageInputError(
                f"input {input_name!r}: ensemble member {name!r} is not a folder of the repo",
                hint="members are subfolders of the ensemble repo, named in ensemble.json",
            )
        members.append(member)
    if not members:
        raise StageInputError(f"input {input_name!r}: the ensemble has no members", hint="train at least one")
    return members


def check_reward_folder(folder: Path, *, input_name: str = "reward") -> list[Path]:
    """Cheap checks (no weights): each member is a full sequence-classification model with one label."""
    from stages.lib.models import inspect_model, read_model_config

    members = member_folders(folder, input_name=input_name)
    for member in members:
        where = input_name if member == Path(folder) else f"{input_name} ({member.name})"
        info = inspect_model(member, input_name=where)
        config = read_model_config(member)
        labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
        if info.task != "classification" or labels not in (1, None):
            raise StageInputError(
                f"input {where!r} is not a reward model (a sequence-classification model with one output); "
                f"it is a {info.task} model" + (f" with {labels} labels" if labels else ""),
                hint="feed it the output of a `reward` stage",
            )
    return members


def check_same_tokenizer(policy_tok: Any, reward_tok: Any, *, policy_input: str, reward_input: str) -> None:
    """Refuse a reward model whose tokenizer differs from the policy's: it would score other tokens."""
    from stages.lib.tokenizers import same_vocabulary

    differences = same_vocabulary(policy_tok, reward_tok)
    if differences:
        raise StageInputError(
            f"inputs {policy_input!r} and {reward_input!r} do not share a tokenizer: "
            + "; ".join(differences),
            hint="train the reward model from the same SFT model (or tokenizer) the policy starts from",
        )


@dataclass
class RewardModel:
    """One reward model or an ensemble, on one device, in eval mode."""

    members: list[Any]
    tokenizer: Any
    aggregate: Aggregate = "min"

    def score_ids(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
        """(aggregated scores [B], per-member scores [K, B]) of token sequences (any padding side): each
        member's head read at the last real token, with explicit position ids."""
        import torch

        from stages.lib.logprobs import last_token_scores

        with torch.no_grad():
            each = torch.stack([last_token_scores(m, input_ids, attention_mask) for m in self.members])
        agg = each.min(dim=0).values if self.aggregate == "min" else each.mean(dim=0)
        return agg, each

    def score_texts(
        self, prompts: Sequence[Any], completions: Sequence[Any], *, batch_size: int = 16
    ) -> tuple[list[float], list[list[float]]]:
        """Scores of (prompt, completion) pairs, tokenised as a policy produces them."""
        from stages.lib.chat import split_prompt_completion
        from stages.lib.generation import right_pad

        device = next(self.members[0].parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        agg: list[float] = []
        per: list[list[float]] = [[] for _ in self.members]
        for start in range(0, len(prompts), batch_size):
            seqs = []
            for p, c in zip(
                prompts[start : start + batch_size], completions[start : start + batch_size], strict=True
            ):
                prompt_ids, completion_ids = split_prompt_completion(self.tokenizer, p, c)
                seqs.append(prompt_ids + completion_ids)
            ids, mask = right_pad(seqs, pad)
            a, each = self.score_ids(ids.to(device), mask.to(device))
            agg += [float(x) for x in a.cpu()]
            for k in range(len(self.members)):
                per[k] += [float(x) for x in each[k].cpu()]
        return agg, per


def load_reward_model(
    folder: Path, *, aggregate: Aggregate = "min", device: str | None = None, input_name: str = "reward"
) -> RewardModel:
    """Load a ``reward`` stage's output (one model or an ensemble) with its tokenizer, eval mode."""
    from stages.lib.models import load_model
    from stages.lib.tokenizers import load_tokenizer, tokenizer_folder

    members = check_reward_folder(folder, input_name=input_name)
    found = tokenizer_folder((input_name, Path(folder)), (f"{input_name} member", members[0]))
    if found is None:
        raise StageInputError(
            f"input {input_name!r} ships no tokenizer files",
            hint="publish the reward model with its tokenizer",
        )
    tok = load_tokenizer(found[1], input_name=input_name)
    models = [load_model(m, task="classification", device=device, input_name=input_name) for m in members]
    return RewardModel(models, tok, aggregate)


def gold_rewards(
    families: Sequence[str | None], prompts: Sequence[Any], completions: Sequence[Any]
) -> list[float]:
    """The gold judge's score of each completion (1.0 correct, 0.0 wrong); a row whose family the judge
    does not know, or whose prompt it cannot parse, is refused."""
    from stages.lib.judge import score
    from stages.lib.tasks import FAMILIES

    out = []
    for i, (family, prompt, completion) in enumerate(zip(families, prompts, completions, strict=True)):
        if family not in FAMILIES:
            raise StageInputError(
                f"row {i}: the gold judge grades the synthetic task families, not {family!r}",
                hint="use a `synthetic` stage's prompts (they carry a `family` column), or a reward model",
            )
        out.append(score(family, prompt, completion))
    return out
