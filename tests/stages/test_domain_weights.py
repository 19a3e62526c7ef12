"""DoReMi domain weights on domains of planted difficulty, the update's arithmetic, and bad inputs.

Three domains over disjoint words of one word-level tokenizer (one token per word):

- ``constant``: one word repeated: a fresh model already predicts it (tied embeddings + zero residual
  projections start as "repeat the last token"), so neither model has anything to learn;
- ``random``: words drawn uniformly from 4: unlearnable, both models sit at log 4;
- ``pattern``: arithmetic progressions mod 64 with a per-document step in {1, 2, 3, 5, 7}: learnable,
  but only from the two previous tokens (attention), so the proxy lags the reference for longest.

DoReMi must move the weight to ``pattern``; the inputs are listed in another order on the second seed.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubflow.errors import HubflowError, StageInputError

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("transformers")

from stages import domain_weights as dw
from stages.lib.testing import stage_context, word_tokenizer, write_dataset

PATTERN_WORDS = [f"p{i}" for i in range(64)]
RANDOM_WORDS = [f"r{i}" for i in range(4)]
WORDS = ["c0", *RANDOM_WORDS, *PATTERN_WORDS]
DOC_WORDS = 60
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "context_length": 32}
STEPS = 150


def planted_docs(seed: int, n: int = 200) -> dict[str, list[str]]:
    rng = random.Random(seed)

    def pattern() -> str:
        step, start = rng.choice([1, 2, 3, 5, 7]), rng.randrange(64)
        return " ".join(PATTERN_WORDS[(start + step * i) % 64] for i in range(DOC_WORDS))

    return {
        "constant": [" ".join(["c0"] * DOC_WORDS) for _ in range(n)],
        "random": [" ".join(rng.choice(RANDOM_WORDS) for _ in range(DOC_WORDS)) for _ in range(n)],
        "pattern": [pattern() for _ in range(n)],
    }


def make_cfg(domains: list[str], **kw) -> dw.Config:
    fields = {
        "name": "doremi",
        "kind": "domain_weights",
        "inputs": {"tokenizer": "tok", **{d: f"{d}-stage" for d in domains}},
        "output": "dataset:demo/weights",
        "architecture": TINY,
        "max_steps": STEPS,
        "per_domain_batch_size": 8,
        "learning_rate": 3e-3,
        "logging_steps": 50,
        **kw,
    }
    return dw.Config.model_validate(fields)


def domain_inputs(root: Path, docs: dict[str, list[str]]) -> dict[str, Path]:
    tok = root / "tok"
    word_tokenizer(WORDS).save_pretrained(str(tok))
    return {
        "tokenizer": tok,
        **{d: write_dataset(root / d, [{"text": t} for t in texts]) for d, texts in docs.items()},
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[int, Path]:
    """seed -> the output folder of a domain_weights run on the planted domains."""
    outs = {}
    for seed, order in ((0, ["constant", "random", "pattern"]), (1, ["pattern", "constant", "random"])):
        root = tmp_path_factory.mktemp(f"doremi{seed}")
        docs = planted_docs(seed)
        inputs = domain_inputs(root, {d: docs[d] for d in order})
        ctx = stage_context(root / "stage", inputs)
        result = dw.run(ctx, make_cfg(order, seed=seed))
        assert result.images and result.card_sections["Domain weights"]
        outs[seed] = ctx.output
    return outs


@pytest.mark.parametrize("seed", [0, 1])
def test_weights_move_to_the_learnable_domain(planted, seed):
    doc = json.loads((planted[seed] / "weights.json").read_text())
    w = doc["weights"]
    assert set(w) == {"constant", "random", "pattern"} and sum(w.values()) == pytest.approx(1.0)
    assert w["pattern"] > 0.6, w  # measured: 0.91 (seed 0), 0.89 (seed 1) from u = 1/3
    assert w["pattern"] > w["random"] + 0.4 and w["pattern"] > w["constant"] + 0.4, w
    # the reference learned what it could: the constant and the pattern, not the random words
    ref = doc["reference_loss"]
    assert ref["constant"] < 0.3 and ref["pattern"] < 1.5 and ref["random"] > math.log(4) - 0.1, ref


def test_published_table_is_the_trace_the_weights_average(planted):
    import pyarrow.parquet as pq

    out = planted[0]
    doc = json.loads((out / "weights.json").read_text())
    table = pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert len(table) == STEPS * 3
    assert set(table[0]) == {"step", "domain", "weight", "excess_loss", "proxy_loss", "reference_loss"}
    for d in doc["domains"]:
        rows = [r for r in table if r["domain"] == d]
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        assert sum(r["weight"] for r in rows) / STEPS == pytest.approx(doc["weights"][d], rel=1e-6)  # ᾱ
        assert rows[-1]["weight"] == pytest.approx(doc["final_weights"][d])
        assert all(r["excess_loss"] >= 0 for r in rows)  # λ is clipped at 0 per token
        # smoothing keeps every weight at least c/k
        assert min(r["weight"] for r in rows) >= doc["smoothing"] / 3 - 1e-12
    for step in (1, STEPS // 2, STEPS):
        assert sum(r["weight"] for r in table if r["step"] == step) == pytest.approx(1.0)
    assert (out / dw.config.PLOT_FILE).stat().st_size > 1000


# --------------------------------------------------------------------------- Algorithm 1's arithmetic


def test_update_follows_the_exponentiated_gradient_rule():
    import torch

    from stages.domain_weights import doremi

    alpha = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    lam = torch.tensor([0.1, 2.0, 0.0], dtype=torch.float64)
    eta, c = 0.7, 0.05
    raised = [a * math.exp(eta * x) for a, x in zip(alpha.tolist(), lam.tolist(), strict=True)]
    want = [(1 - c) * r / sum(raised) + c / 3 for r in raised]
    got = doremi.update_weights(alpha, lam, eta=eta, smoothing=c)
    assert got.tolist() == pytest.approx(want)
    # a huge η·λ neither overflows nor loses the smoothing floor
    big = doremi.update_weights(
        alpha, torch.tensor([1e4, 0.0, 0.0], dtype=torch.float64), eta=1.0, smoothing=c
    )
    assert big.tolist() == pytest.approx([1 - c + c / 3, c / 3, c / 3])


def test_excess_loss_is_clipped_per_token_then_averaged_per_domain():
    import torch

    from stages.domain_weights import doremi

    proxy = torch.tensor([[3.0, 1.0], [2.0, 2.0], [0.5, 0.5]])
    ref = torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.0, 1.0]])
    owner = torch.tensor([0, 0, 1])  # rows 0 and 1 are domain 0, row 2 domain 1
    lam = doremi.excess_loss(proxy, ref, owner, 2)
    # domain 0: per-token max(ℓθ − ℓref, 0) = [2, 0, 0, 1] -> 3/4 (the unclipped mean would be 0.5)
    assert lam.tolist() == pytest.approx([0.75, 0.0])
    # the proxy objective Σ α_i · mean_i(ℓθ − ℓref) is not clipped and differentiates through ℓθ only
    theta = proxy.clone().requires_grad_(True)
    alpha = torch.tensor([0.8, 0.2])
    loss = doremi.proxy_objective(theta, ref, owner, alpha)
    assert float(loss.detach()) == pytest.approx(0.8 * 0.5 + 0.2 * -0.5)
    loss.backward()
    assert theta.grad.flatten().tolist() == pytest.approx([0.2] * 4 + [0.1] * 2)  # α_i / tokens of domain i


# --------------------------------------------------------------------------- bad inputs, before any work


def test_eta_must_be_positive_in_the_manifest(write_manifest):
    from hubflow.manifest import load_manifest

    for eta in (0, -1):
        path = write_manifest(
            "stages:\n  - name: dw\n    kind: domain_weights\n"
            "    inputs: {tokenizer: 'dataset:a/tok', web: 'dataset:a/web', code: 'dataset:a/code'}\n"
            f"    eta: {eta}\n    output: dataset:a/weights\n"
        )
        with pytest.raises(HubflowError, match=r"eta must be > 0 \(got .*\).*DoReMi's step size η"):
            load_manifest(path)


def test_config_errors_name_the_fix():
    with pytest.raises(ValidationError, match="needs a `tokenizer` input"):
        dw.Config.model_validate(
            {"name": "d", "kind": "domain_weights", "inputs": {"a": "x", "b": "y"}, "output": "dataset:a/b"}
        )
    with pytest.raises(ValidationError, match="at least two domain inputs"):
        make_cfg(["web"])
    with pytest.raises(ValidationError, match=r"reference_weights must give a weight to each domain input"):
        make_cfg(["web", "code"], reference_weights={"web": 1.0})


def test_a_domain_with_no_rows_fails_before_training(tmp_path):
    import pyarrow as pa

    inputs = domain_inputs(tmp_path, {"constant": ["c0 c0"] * 4, "pattern": []})
    empty = pa.table({"text": pa.array([], pa.string())})
    import pyarrow.parquet as pq

    pq.write_table(empty, inputs["pattern"] / "data" / "train-00000-of-00001.parquet")
    ctx = stage_context(tmp_path / "stage", inputs)
    with pytest.raises(StageInputError, match="domain input 'pattern' has no rows"):
        dw.run(ctx, make_cfg(["constant", "pattern"]))
    assert list(ctx.output.iterdir()) == []


def test_a_domain_shorter_than_a_chunk_and_a_missing_column_fail_early(tmp_path):
    inputs = domain_inputs(tmp_path, {"constant": ["c0 c0"], "pattern": ["p1 p2"] * 50})
    ctx = stage_context(tmp_path / "stage", inputs)
    with pytest.raises(StageInputError, match="domain input 'constant' has 3 tokens, fewer than one"):
        dw.run(ctx, make_cfg(["constant", "pattern"]))
    with pytest.raises(StageInputError, match=r"input 'constant' lacks column\(s\) \['body'\]"):
        dw.run(ctx, make_cfg(["constant", "pattern"], text_column="body"))
    assert list(ctx.output.iterdir()) == []


def test_plan_lines_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from stages import domain_weights as dw; "
        "cfg = dw.Config.model_validate({'name': 'd', 'kind': 'domain_weights', 'output': 'dataset:a/b', "
        "'inputs': {'tokenizer': 't', 'web': 'w', 'code': 'c'}, 'reference_weights': {'web': 3, 'code': 1}}); "
        "print(dw.describe(cfg)); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "web=0.75, code=0.25" in out and "η=1, c=0.001" in out and out.strip().endswith("False")
