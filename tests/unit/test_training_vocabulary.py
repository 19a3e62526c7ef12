"""One training vocabulary (the TrainingArguments names) for every training kind, and the migration
messages for the old names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hubflow.errors import ManifestError
from hubflow.manifest import load_manifest
from stages import instruct, pretrain, sft
from stages.lib.training import RENAMED, TrainerConfig, TrainingConfig

SFT = {
    "name": "s",
    "kind": "sft",
    "inputs": {"model": "model:a/b", "data": "dataset:a/d"},
    "output": "model:a/o",
}
PRETRAIN = {
    "name": "p",
    "kind": "pretrain",
    "inputs": {"tokenizer": "model:a/t", "data": "dataset:a/d"},
    "max_steps": 4,
    "output": "model:a/p",
}
INSTRUCT = {**SFT, "kind": "instruct"}
KINDS = [(sft.Config, SFT), (instruct.Config, INSTRUCT), (pretrain.Config, PRETRAIN)]


@pytest.mark.parametrize(("config", "base"), KINDS)
def test_every_training_kind_speaks_the_same_names(config, base):
    assert issubclass(config, TrainingConfig)
    cfg = config(
        **base,
        learning_rate=1e-3,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        warmup_steps=3,
        logging_steps=5,
        save_steps=7,
        eval_steps=9,
        max_grad_norm=0,
        adam_epsilon=1e-6,
    )
    assert (cfg.learning_rate, cfg.gradient_accumulation_steps, cfg.per_device_train_batch_size) == (
        1e-3,
        2,
        4,
    )
    assert cfg.max_grad_norm == 0 and cfg.warmup_for(100) == 3 and cfg.warmup_for(2) == 2


@pytest.mark.parametrize(("config", "base"), KINDS)
@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_names_fail_with_the_new_name(config, base, old):
    if old in config.model_fields:
        pytest.skip(f"{old} is a field of {config.__name__}")
    with pytest.raises(ValidationError) as err:
        config(**base, **{old: 1})
    assert f"`{old}` is now `{RENAMED[old]}` (the transformers TrainingArguments name): rename it" in str(
        err.value
    )


def test_zero_meant_never_says_null():
    with pytest.raises(
        ValidationError, match=r"`checkpoint_every: 0` \(never\) is written `save_steps: null`"
    ):
        pretrain.Config(**PRETRAIN, checkpoint_every=0)
    with pytest.raises(ValidationError, match="max_grad_norm: null no longer turns clipping off"):
        pretrain.Config(**PRETRAIN, max_grad_norm=None)


def test_the_migration_message_names_file_stage_and_field(write_manifest):
    path = write_manifest(
        """
        stages:
          - name: base
            kind: pretrain
            inputs: {tokenizer: "model:a/t", data: "dataset:a/d"}
            max_steps: 4
            lr: 3.0e-3
            output: model:a/p
        """
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "base" in text and "`lr` is now `learning_rate`" in text


def test_one_warmup_and_kind_defaults():
    with pytest.raises(ValidationError, match="set warmup_steps or warmup_ratio, not both"):
        sft.Config(**SFT, warmup_steps=3, warmup_ratio=0.1)
    p, s = pretrain.Config(**PRETRAIN), sft.Config(**SFT)
    assert (p.learning_rate, p.weight_decay, p.adam_beta2, p.warmup_steps) == (3e-4, 0.1, 0.95, 100)
    assert (s.learning_rate, s.weight_decay, s.warmup_ratio) == (2e-4, 0.0, 0.03)
    assert s.warmup_for(100) == 3  # ceil, as transformers 5 rounds a warmup ratio


def test_trainer_kwargs_are_training_arguments():
    from transformers import TrainingArguments

    cfg = sft.Config(**SFT, max_steps=5, save_steps=None, warmup_ratio=0.2)
    kwargs = cfg.trainer_kwargs()
    assert isinstance(cfg, TrainerConfig)
    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none", **kwargs)
    assert args.max_steps == 5 and args.save_strategy == "no" and args.get_warmup_steps(10) == 2
    assert args.per_device_train_batch_size == 8 and args.lr_scheduler_type == "cosine"


def test_task_fields_live_in_the_task_union():
    cfg = sft.Config(**SFT, task={"type": "classification", "label_column": "y"})
    assert cfg.task.type == "classification" and cfg.task.label_column == "y"
    assert sft.Config(**SFT, task="extractive_qa").task.question_column == "question"
    with pytest.raises(
        ValidationError, match=r"`label_column` belongs to the task now: write `task: \{type: classification"
    ):
        sft.Config(**SFT, task="classification", label_column="y")
    with pytest.raises(ValidationError, match="question_column"):
        sft.Config(**SFT, task={"type": "classification", "question_column": "q"})  # another task's field
