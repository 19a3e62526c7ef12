"""Domain weights (a ``domain_weights`` stage's weights.json) fed to ``curate``'s mixing and to
``pretrain``'s sampling; domains that do not match the dataset inputs fail before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages.lib.weights_file import WEIGHTS_FILE, WEIGHTS_INPUT, read_weights, write_weights

os.environ["HF_HUB_OFFLINE"] = "1"


def weights_repo(folder: Path, weights: dict[str, float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(folder, weights, method="doremi")
    return folder


def make_ctx(tmp: Path, inputs: dict[str, Path], name: str = "stage") -> StageContext:
    for d in ("out", "logs", "resume"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return StageContext(
        stage_name=name,
        fingerprint="e" * 64,
        inputs=inputs,
        outputs={"output": tmp / "out"},
        resume_dir=tmp / "resume",
        base_dir=tmp,
        log_dir=tmp / "logs",
    )


def dataset(folder: Path, texts: list[str]) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), folder / "data" / "train-00000-of-00001.parquet")
    return folder


# --------------------------------------------------------------------------- the weights file


def test_weights_file_round_trip_and_errors(tmp_path):
    folder = weights_repo(tmp_path / "w", {"web": 3.0, "code": 1.0})
    assert json.loads((folder / WEIGHTS_FILE).read_text())["weights"] == {"web": 0.75, "code": 0.25}
    assert read_weights(folder, ["code", "web"]) == {"code": 0.25, "web": 0.75}
    with pytest.raises(
        StageInputError, match=r"no weight for \['books'\]; weights for \['code'\] which are not"
    ):
        read_weights(folder, ["web", "books"], stage="stage 'mix'")
    with pytest.raises(StageInputError, match="has no weights.json"):
        read_weights(tmp_path, ["web"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / WEIGHTS_FILE).write_text("{not json")
    with pytest.raises(StageInputError, match="is not a weights file"):
        read_weights(tmp_path / "bad", ["web"])


# --------------------------------------------------------------------------- curate


def curate_cfg(inputs: dict[str, str], **fields):
    from stages import curate

    fields.setdefault("executor", {"type": "local", "tasks": 1, "workers": 1})
    fields.setdefault("dedup", {"exact": False, "minhash": None})
    return curate.Config.model_validate(
        {"name": "mix", "kind": "curate", "inputs": inputs, "output": "dataset:demo/mixed", **fields}
    )


def test_curate_mixes_by_the_weights_input(tmp_path):
    from stages import curate

    inputs = {
        "web": dataset(tmp_path / "web", [f"web page number {i}" for i in range(100)]),
        "code": dataset(tmp_path / "code", [f"def f{i}(): return {i}" for i in range(100)]),
        WEIGHTS_INPUT: weights_repo(tmp_path / "w", {"web": 0.75, "code": 0.25}),
    }
    cfg = curate_cfg({n: f"up-{n}" for n in inputs}, mix={"weights": "from_input", "target_docs": 40})
    assert cfg.dataset_inputs() == ["web", "code"]
    curate.run(make_ctx(tmp_path / "run", inputs), cfg)
    report = json.loads((tmp_path / "run" / "out" / curate.REPORT_FILE).read_text())
    per = report["mix"]["per_input"]
    assert (per["web"]["drawn"], per["code"]["drawn"]) == (30, 10)
    assert report["mix"]["weights"] == {"web": 0.75, "code": 0.25}
    assert report["mix"]["rule"] == "weights from input 'domain_weights'"


def test_curate_rejects_weights_of_other_domains_before_any_datatrove_task(tmp_path):
    from stages import curate

    inputs = {
        "web": dataset(tmp_path / "web", ["a page"] * 4),
        "code": dataset(tmp_path / "code", ["x = 1"] * 4),
        WEIGHTS_INPUT: weights_repo(tmp_path / "w", {"web": 0.5, "books": 0.5}),
    }
    cfg = curate_cfg({n: f"up-{n}" for n in inputs}, mix={"weights": "from_input"})
    ctx = make_ctx(tmp_path / "run", inputs, name="mix")
    with pytest.raises(StageInputError) as exc:
        curate.run(ctx, cfg)
    msg = str(exc.value)
    assert "stage 'mix': the domains of input 'domain_weights' (['books', 'web'])" in msg
    assert "no weight for ['code']" in msg and "weights for ['books'] which are not inputs" in msg
    assert list((tmp_path / "run" / "resume").iterdir()) == []  # no pipeline started
    assert list(ctx.output.iterdir()) == []


def test_curate_config_pairs_the_input_and_the_mode():
    with pytest.raises(ValidationError, match="reads the weights from an input named 'domain_weights'"):
        curate_cfg({"web": "a", "code": "b"}, mix={"weights": "from_input"})
    with pytest.raises(ValidationError, match=r"set `mix: \{weights: from_input\}`"):
        curate_cfg({"web": "a", "code": "b", WEIGHTS_INPUT: "dw"})
    with pytest.raises(ValidationError, match="either `weights` or `temperature`"):
        curate_cfg({"web": "a", WEIGHTS_INPUT: "dw"}, mix={"weights": "from_input", "temperature": 2})


# --------------------------------------------------------------------------- pretrain


@pytest.fixture
def pretrain_inputs(tmp_path) -> dict[str, Path]:
    pytest.importorskip("torch")
    from stages.lib.testing import word_tokenizer

    words = [f"a{i}" for i in range(16)] + [f"b{i}" for i in range(16)]
    tok = tmp_path / "tok"
    word_tokenizer(words).save_pretrained(str(tok))
    return {
        "tokenizer": tok,
        "alpha": dataset(
            tmp_path / "alpha", [" ".join(f"a{(i + j) % 16}" for j in range(40)) for i in range(40)]
        ),
        "beta": dataset(
            tmp_path / "beta", [" ".join(f"b{(i * j) % 16}" for j in range(40)) for i in range(40)]
        ),
    }


def pretrain_cfg(inputs: dict[str, str], **kw):
    from stages import pretrain

    return pretrain.Config.model_validate(
        {
            "name": "pt",
            "kind": "pretrain",
            "inputs": inputs,
            "output": "model:demo/pt",
            "architecture": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "context_length": 16},
            "per_device_train_batch_size": 8,
            "max_steps": 25,
            "warmup_steps": 2,
            "logging_steps": 25,
            "save_steps": None,
            **kw,
        }
    )


def test_pretrain_samples_the_data_inputs_by_the_weights(tmp_path, pretrain_inputs):
    from stages import pretrain

    inputs = {**pretrain_inputs, WEIGHTS_INPUT: weights_repo(tmp_path / "w", {"alpha": 0.8, "beta": 0.2})}
    cfg = pretrain_cfg({n: f"up-{n}" for n in inputs})
    assert cfg.data_inputs() == ["alpha", "beta"] and cfg.weighted()
    result = pretrain.run(make_ctx(tmp_path / "run", inputs, name="pt"), cfg)
    m = result.metrics
    assert m["domain_weights"] == {"alpha": 0.8, "beta": 0.2}
    assert m["domain_fraction/alpha"] + m["domain_fraction/beta"] == pytest.approx(1.0)
    assert abs(m["domain_fraction/alpha"] - 0.8) < 0.07  # 200 examples drawn: sd 0.028
    assert (tmp_path / "run" / "out" / "model.safetensors").exists()


def test_pretrain_sampler_is_a_pure_function_of_the_position():
    import numpy as np

    from stages.pretrain.data import Chunks, WeightedChunks

    doms = {"a": Chunks(np.arange(1000), 10, 0), "b": Chunks(np.arange(1000, 1500), 10, 0)}
    w = {"a": 0.7, "b": 0.3}
    first = WeightedChunks(doms, w, seed=1)
    drawn = [first.domain_at(p) for p in range(9000)]
    for d in (0, 1):  # each domain's examples are its chunks in order, none skipped or repeated
        assert [k for i, k in drawn if i == d] == list(range(sum(1 for i, _ in drawn if i == d)))
    assert first.drawn(9000) == {"a": sum(i == 0 for i, _ in drawn), "b": sum(i == 1 for i, _ in drawn)}
    resumed = WeightedChunks(doms, w, seed=1)  # a resumed run starts mid-way: the same examples
    assert all((resumed.at(p) == first.at(p)).all() for p in (8999, 4096, 17, 4095))
    none = WeightedChunks(doms, {"a": 1.0, "b": 0.0}, seed=1)
    assert none.drawn(5000) == {"a": 5000, "b": 0}


def test_pretrain_rejects_weights_of_other_domains_before_training(tmp_path, pretrain_inputs):
    from stages import pretrain

    inputs = {**pretrain_inputs, WEIGHTS_INPUT: weights_repo(tmp_path / "w", {"alpha": 0.5, "gamma": 0.5})}
    ctx = make_ctx(tmp_path / "run", inputs, name="pt")
    with pytest.raises(
        StageInputError, match=r"stage 'pt': the domains of input 'domain_weights'.*no weight for \['beta'\]"
    ):
        pretrain.run(ctx, pretrain_cfg({n: f"up-{n}" for n in inputs}))
    assert not (tmp_path / "run" / "resume" / "tokens").exists()  # nothing tokenized
    assert list(ctx.output.iterdir()) == []
