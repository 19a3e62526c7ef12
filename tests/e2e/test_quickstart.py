"""The quickstart, reduced (fewer documents and steps, the same stages), through the CLI on a local hub:
the learning directions of the README hold on 3 seeds of every training stage after pretraining, a second
run runs nothing, and changing only the DPO beta re-runs dpo and what depends on it, reusing the
reference log-probs.

The stages up to pretraining are shared by the seeds (the hub reuses them by fingerprint); sft, merge,
reward, dpo and ppo get the seed. Each claim is the mean over seeds above a floor and above 2 standard
deviations of the seed spread (shared/notes/alignment-reference.md).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SEEDS = (0, 1, 2)
REDUCED = {  # stage -> fields changed from manifests/quickstart.yaml
    "stdlib": {"params": {"max_files": 60, "min_chars": 80}},
    "tasks": {"num_examples": 700, "test_fraction": 0.1},
    "base": {"max_steps": 220},
    "sft": {"max_steps": 80},
    "rm": {"max_steps": 30},
    "dpo": {"max_steps": 120},
    "ppo": {"max_steps": 25},
}
SEEDED = ("sft", "rm", "dpo", "ppo")


def reduced(seed: int) -> str:
    data = yaml.safe_load((MANIFESTS / "quickstart.yaml").read_text())
    for stage in data["stages"]:
        stage.update(REDUCED.get(stage["name"], {}))
        if stage["name"] in SEEDED:
            stage["seed"] = seed
    return yaml.safe_dump(data, sort_keys=False)


def metrics(cli, manifest: Path, ref: str, tmp: Path) -> dict:
    dest = tmp / ref.replace(":", "_").replace("/", "_")
    shutil.rmtree(dest, ignore_errors=True)
    code, _, err = cli("pull", ref, "--to", dest, "--manifest", manifest)
    assert code == 0, err
    return json.loads((dest / "metrics.json").read_text())


def holds(gains: list[float], floor: float) -> bool:
    mean = statistics.mean(gains)
    return mean > floor and mean > 2 * statistics.stdev(gains)


def test_the_reduced_quickstart_learns_on_three_seeds(tmp_path: Path, cli, monkeypatch, capsys):
    # threads are hubflow's job (resources.threads: auto), not an environment variable's
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    work = tmp_path / "qs"
    work.mkdir()
    for name in ("steps.py", "finetune_steps.py", "data"):
        src = MANIFESTS / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, work / name)
    manifest = work / "quickstart.yaml"
    gains: dict[str, list[float]] = {"sft": [], "dpo": [], "ppo": []}
    for seed in SEEDS:
        manifest.write_text(reduced(seed))
        code, out, err = cli("run", manifest, "--quiet")
        assert code == 0, out + err
        get = {
            s: metrics(cli, manifest, f"dataset:demo/eval-{s}", tmp_path)
            for s in ("base", "sft", "dpo", "ppo")
        }
        ppo = metrics(cli, manifest, "model:demo/ppo", tmp_path)
        with capsys.disabled():  # past the capture, even when the test passes: the numbers are the evidence
            print(
                f"seed {seed}: exact match base {get['base']['exact_match']} sft {get['sft']['exact_match']}; "
                f"preference accuracy sft {get['sft']['logp_accuracy']} dpo {get['dpo']['logp_accuracy']}; "
                f"sampled gold sft {get['sft']['sampled_judge_accuracy']} ppo {get['ppo']['sampled_judge_accuracy']} "
                f"(KL {ppo['last_kl']:.2f} of {ppo['kl_budget']})"
            )
        gains["sft"].append(get["sft"]["exact_match"] - get["base"]["exact_match"])
        gains["dpo"].append(get["dpo"]["logp_accuracy"] - get["sft"]["logp_accuracy"])
        gains["ppo"].append(get["ppo"]["sampled_judge_accuracy"] - get["sft"]["sampled_judge_accuracy"])
        assert ppo["stopped_by"] == "max_steps" and ppo["last_kl"] < ppo["kl_budget"]  # under the budget
    assert holds(gains["sft"], 0.3), gains  # SFT clearly above the pretrained base
    assert holds(gains["dpo"], 0.01), gains  # DPO raises held-out preference accuracy over its SFT start
    assert holds(gains["ppo"], 0.1), gains  # PPO raises the gold reward of sampled answers

    start = time.monotonic()
    code, out, _ = cli("run", manifest, "--quiet")
    assert code == 0 and "0 of 18 stage(s) to run" in out and time.monotonic() - start < 5

    manifest.write_text(manifest.read_text().replace("beta: 0.1", "beta: 0.2"))
    code, out, _ = cli("plan", manifest)
    running = sorted(line.split()[1] for line in out.splitlines() if line.startswith("  run "))
    assert running == ["dpo", "eval-dpo"], out
    reference = next(line for line in out.splitlines() if line.split()[1:2] == ["dpo-reference"])
    assert reference.split()[0] == "skip" and "up to date" in reference  # the reference model does not run
