"""The policy online DPO trains, its reference, and a round's policy on disk.

``peft: full`` trains every weight (an adapter input is merged into its base first) and saves a full model
each round; ``peft: lora`` puts a fresh LoRA on a full input, or continues an adapter input of the same
settings, and saves the adapter (on the same base) each round. The reference of ``reference: initial`` is
the input policy, frozen: for a fresh LoRA that is the policy with its adapter disabled (one model in
memory), otherwise a second, frozen copy of the input.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lib.sampling import Policy


@dataclass
class Trainable:
    model: Any
    fresh_lora: bool
    """A new LoRA on a full input: disabling it gives the initial policy."""
    base_folder: Path | None
    """What a saved adapter applies to (None for full models)."""


def load_trainable(
    policy: Policy, spec: Any, *, device: str, logger: Any, resume_from: Path | None = None
) -> Trainable:
    """The policy to train: from the input (see the module docs), or, with ``resume_from``, the policy a
    finished round saved (a full model, or the adapter on the same base)."""
    from stages.lib.models import check_vocab, load_model
    from stages.lib.peft_methods import apply_method, check_continuable

    info = policy.info
    common = dict(base=policy.base, base_ref=policy.base_ref, check_base=policy.check_base, logger=logger)
    if spec.method == "full":
        trainable = Trainable(None, False, None)
    elif info.is_adapter:
        check_continuable(policy.folder, spec, input_name="model")
        trainable = Trainable(None, False, policy.base)
    else:
        trainable = Trainable(None, True, policy.folder)
    if resume_from is not None:
        if trainable.base_folder is None:
            model = load_model(resume_from, device=device)
            model = apply_method(model, spec, "causal_lm")
        else:
            model = load_model(resume_from, base=trainable.base_folder, trainable=True, check_base=False)
    elif spec.method == "full":
        model = apply_method(load_model(policy.folder, merge=info.is_adapter, **common), spec, "causal_lm")
    elif info.is_adapter:
        model = load_model(policy.folder, trainable=True, **common)
    else:
        model = apply_method(load_model(policy.folder, **common), spec, "causal_lm")
    check_vocab(model, policy.tokenizer, input_name="model")
    trainable.model = model.to(device)
    return trainable


def frozen_initial(policy: Policy, trainable: Trainable, *, device: str) -> Any | None:
    """A frozen copy of the input policy for ``reference: initial`` (None for a fresh LoRA: its adapter is
    disabled instead)."""
    if trainable.fresh_lora:
        return None
    from stages.lib.models import load_model

    model = load_model(
        policy.folder,
        base=policy.base,
        base_ref=policy.base_ref,
        check_base=policy.check_base,
        merge=policy.info.is_adapter and trainable.base_folder is None,
        device=device,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference_context(model: Any, trainable: Trainable, reference: str) -> AbstractContextManager[Any]:
    """Where the policy itself acts as the reference: its adapter disabled (initial, fresh LoRA), or as is
    (previous_round)."""
    if reference == "initial" and trainable.fresh_lora:
        return model.disable_adapter()
    return nullcontext()


def save_policy(
    model: Any, tok: Any, folder: Path, trainable: Trainable, base_repo: str | None, rev: str | None
) -> None:
    """A round's policy: a full model, or the adapter (its config naming the base repo), with the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    if trainable.base_folder is None:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        # save_embedding_layers=False: "auto" looks the base up on the Hub (the embeddings never train here)
        model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config.update(base_model_name_or_path=base_repo, revision=rev)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (folder / "README.md").unlink(missing_ok=True)  # peft's stub card; the runner writes the real one
    tok.save_pretrained(str(folder))
