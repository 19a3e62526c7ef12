"""Through the CLI: `hubflow import` a tiny base model, ingest prompt/completion pairs, run an sft (LoRA)
stage, and load the published adapter with peft; its card names the base and the relation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hubflow.trackers import RUNS_DIR, read_scalars, series

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

MANIFEST = """
stages:
  - name: pairs
    kind: ingest
    source: {paths: ["data/*.jsonl"]}
    output: dataset:demo/pairs
  - name: tune
    kind: sft
    inputs: {model: "model:demo/base", data: pairs}
    format: prompt_completion
    peft: {method: lora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
    max_steps: 3
    per_device_train_batch_size: 4
    learning_rate: 0.01
    logging_steps: 1
    save_steps: null
    output: model:demo/tuned
"""


def test_import_base_then_sft_lora_publishes_a_peft_adapter(tmp_path: Path, write_manifest, cli, monkeypatch):
    from stages.lib.testing import save_base

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stage's process: a tiny model, a busy machine

    rows = [{"prompt": f"count {i} then", "completion": f" {i + 1}"} for i in range(24)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = write_manifest(MANIFEST)
    base_src = save_base(tmp_path / "base_src", corpus=[r["prompt"] + r["completion"] for r in rows])

    code, out, err = cli("import", base_src, "model:demo/base", "--manifest", manifest)
    assert code == 0, err
    code, out, err = cli("validate", manifest)
    assert code == 0, out + err
    code, out, err = cli("run", manifest, "--quiet")
    assert code == 0, out + err
    assert "tune (sft): running" in out and "0 failed" in out
    lines = out.splitlines()
    i = lines.index("  load the final model (stage tune) in Python:")
    code_lines = "\n".join(line.strip() for line in lines[i + 1 : i + 3])  # the two lines the run printed
    scope: dict = {}
    exec(code_lines, scope)  # they load the published adapter on its base, from the local hub
    assert type(scope["model"]).__name__ == "PeftModelForCausalLM" and scope["tokenizer"] is not None

    pulled, base = tmp_path / "pulled", tmp_path / "base"
    assert cli("pull", "model:demo/tuned", "--to", pulled, "--manifest", manifest)[0] == 0
    assert cli("pull", "model:demo/base", "--to", base, "--manifest", manifest)[0] == 0
    files = {p.name for p in pulled.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "README.md",
        "lineage.json",
    } <= files
    card = (pulled / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "demo/base" and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft"
    metrics = json.loads((pulled / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["method"] == "lora"
    curve = [json.loads(line) for line in (pulled / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve if "loss" in r] == [1, 2, 3]  # the training curve is published too
    (run,) = (pulled / RUNS_DIR).iterdir()  # and its TensorBoard events, where Hub model repos keep them
    scalars, logged = read_scalars(run), series(curve)
    assert set(scalars) == set(logged) and [s for s, _ in scalars["loss"]] == [1, 2, 3]
    for tag, points in logged.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    lock = yaml.safe_load((tmp_path / "hubflow.lock").read_text())
    assert lock["stages"]["tune"]["seconds"] > 0  # wall time, for `hubflow report`
    lineage = json.loads((pulled / "lineage.json").read_text())
    base_rev = lineage["inputs"]["model"]["revision"]
    assert json.loads((pulled / "adapter_config.json").read_text())["revision"] == base_rev

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(pulled)).eval()
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size

    # nothing stale: nothing re-trains, and where the curve also goes is not part of the result
    Path(manifest).write_text(
        MANIFEST.replace("    logging_steps: 1\n", "    logging_steps: 1\n    report_to: [mlflow]\n")
    )
    code, out, _ = cli("run", manifest, "--quiet")
    assert code == 0 and "0 of 2 stage(s) to run" in out
