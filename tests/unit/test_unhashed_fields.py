"""What the fingerprint leaves out is declared once, per field (``json_schema_extra=UNHASHED``): this
test lists it for every kind, so leaving a field out of the fingerprint is a reviewed decision."""

from __future__ import annotations

import pytest

from hubflow.registry import registry
from hubflow.stage import StageConfig

COMMON = {
    "name",
    "description",
    "inputs",  # hashed as the exact revisions they resolve to
    "output",
    "outputs",
    "resources.peak_flops",
    "resources.timeout_minutes",
    "resources.launcher",
    "resources.cpus",
    "resources.gpus",
    "resources.memory_gb",
    "resources.threads",
    "resources.main_process_port",
}
TRAINING = {"logging_steps", "save_steps", "report_to"}  # cadences (resuming gives the weights of an
# uninterrupted run) and where the logged steps also go
EXECUTOR = {  # of an executor only `tasks` (how the work is sharded) can change the result
    f"executor.{f}"
    for f in (
        "type workers address cpus_per_task mem_per_cpu_gb partition time qos sbatch_args env_command "
        "condaenv venv_path job_name max_array_size requeue mail_user poll_seconds"
    ).split()
}
PREFERENCE = TRAINING | {"reference_batch_size"}  # padding does not change a log-prob
UNHASHED = {
    "best_of_n": set(),
    "cai": set(),
    "classifier": set(),
    "curate": EXECUTOR,
    "domain_weights": {"logging_steps", "report_to"},
    "dpo": PREFERENCE | {"precompute_reference"},
    "evaluate": set(),
    "grpo": TRAINING,
    "ingest": set(),
    "instruct": TRAINING,
    "kto": PREFERENCE | {"precompute_reference"},
    "merge": set(),
    "online_dpo": TRAINING,
    "pretrain": TRAINING | {"throughput_tokens_per_s"},
    "python": set(),
    "reward": TRAINING,
    "ppo": TRAINING,
    "reinforce_pp": TRAINING,
    "orpo": PREFERENCE,
    "reference_logprobs": {"batch_size"},
    "rloo": TRAINING,
    "sft": TRAINING,
    "synthetic": set(),
    "tokenizer": set(),
}


def test_every_kind_lists_its_unhashed_fields():
    kinds = registry()
    assert set(kinds) == set(UNHASHED), "add the new kind's unhashed fields to UNHASHED"
    for kind, stage_kind in kinds.items():
        assert set(stage_kind.config_cls.unhashed_fields()) == COMMON | UNHASHED[kind], kind


@pytest.mark.parametrize(
    ("field", "value", "hashed"),
    [
        ("logging_steps", 3, False),
        ("save_steps", None, False),
        ("throughput_tokens_per_s", 9.0, False),
        ("report_to", ["tensorboard", "mlflow", "wandb"], False),
        ("learning_rate", 1e-3, True),
        ("resources", {"timeout_minutes": 5.0, "peak_flops": 1e12}, False),
        ("resources", {"num_processes": 2}, True),
        ("resources", {"num_machines": 2}, True),
        ("resources", {"num_machines": 1, "main_process_port": 29555}, False),
    ],
)
def test_an_unhashed_field_does_not_change_the_settings(field, value, hashed):
    from stages import pretrain

    base = {
        "name": "p",
        "kind": "pretrain",
        "inputs": {"tokenizer": "model:a/t", "data": "dataset:a/d"},
        "max_steps": 4,
        "output": "model:a/p",
    }
    a, b = pretrain.Config(**base), pretrain.Config(**base, **{field: value})
    assert (a.settings() != b.settings()) is hashed


def test_unhashed_fields_of_nested_lists_and_unions():
    from typing import Literal

    from pydantic import BaseModel, Field

    from hubflow.stage import unhashed_field

    class Part(BaseModel):
        keep: int = 1
        skip: int = unhashed_field(2, description="a cadence")

    class Demo(StageConfig):
        kind: Literal["demo"] = Field(..., description="demo")
        parts: list[Part] = Field(default_factory=lambda: [Part(), Part()], description="parts")
        one: Part | None = Field(default_factory=Part, description="a part")

    cfg = Demo(name="d", kind="demo", output="dataset:a/b")
    assert cfg.settings()["parts"] == [{"keep": 1}, {"keep": 1}] and cfg.settings()["one"] == {"keep": 1}
    assert {"parts.skip", "one.skip"} <= set(Demo.unhashed_fields())
