"""The synthetic stage: deterministic task data, held-out families, preference pairs and the gold judge."""

from __future__ import annotations

import json
import os
from pathlib import Path
from random import Random

import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext
from stages import synthetic as syn
from stages.lib.tasks import COT_TRIGGERS, FAMILIES, Knobs, join_prompt, render

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

ALL_OUTPUTS = {k: f"dataset:demo/{k}" for k in syn.OUTPUT_KINDS}


def _cfg(**kw) -> syn.Config:
    base = {"name": "syn", "kind": "synthetic", "outputs": ALL_OUTPUTS, "num_examples": 40}
    return syn.Config(**{**base, **kw})


def _run(tmp_path: Path, cfg: syn.Config):
    outs = {name: tmp_path / name for name in cfg.outputs}
    for p in outs.values():
        p.mkdir(parents=True)
    (tmp_path / "logs").mkdir(exist_ok=True)
    ctx = StageContext("syn", "0" * 64, {}, outs, tmp_path / "resume", tmp_path, tmp_path / "logs")
    return outs, syn.run(ctx, cfg)


def _read(folder: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cfg = _cfg(cot_ratio=0.5, heldout_families=["min", "sort_words"])
    return _run(tmp_path_factory.mktemp("syn"), cfg)


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys; from stages.synthetic import score, families; "
        "bad = [m for m in ('torch', 'transformers', 'pyarrow', 'datasets') if m in sys.modules]; "
        "assert not bad, bad; assert len(families()) >= 5"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_families_have_templates_and_graded_difficulty():
    names = syn.families()
    assert len(names) >= 5 and set(names) == set(FAMILIES)
    assert {FAMILIES[n].difficulty for n in names} == {1, 2, 3}
    assert [FAMILIES[n].difficulty for n in names] == sorted(FAMILIES[n].difficulty for n in names)
    for n in names:
        assert len(FAMILIES[n].templates) >= 3, n


def test_deterministic_bytes_and_seed_changes_them(tmp_path):
    cfg = _cfg(cot_ratio=0.3, heldout_families=["count"])
    a, _ = _run(tmp_path / "a", cfg)
    b, _ = _run(tmp_path / "b", cfg)
    c, _ = _run(tmp_path / "c", _cfg(cot_ratio=0.3, heldout_families=["count"], seed=99))
    for name in syn.OUTPUT_KINDS:
        for split in ("train", "test"):
            rel = Path("data") / f"{split}-00000-of-00001.parquet"
            assert (a[name] / rel).read_bytes() == (b[name] / rel).read_bytes(), (name, split)
            assert (a[name] / rel).read_bytes() != (c[name] / rel).read_bytes(), (name, split)


def test_a_family_does_not_depend_on_the_others(tmp_path):
    one, _ = _run(tmp_path / "one", _cfg(families=["arithmetic"], outputs={"prompts": "dataset:d/p"}))
    many, _ = _run(tmp_path / "many", _cfg(outputs={"prompts": "dataset:d/p"}))
    arith = sorted(
        r["id"] + r["prompt"][0]["content"]
        for r in _read(many["prompts"], "train")
        if r["family"] == "arithmetic"
    )
    assert arith == sorted(r["id"] + r["prompt"][0]["content"] for r in _read(one["prompts"], "train"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_judge_on_every_family(family):
    fam = FAMILIES[family]
    rng = Random(family)
    for i in range(30):
        slots = fam.sample(rng, Knobs())
        for t in range(len(fam.templates)):
            instruction, inp = render(fam, slots, t)
            for trigger in (None, *COT_TRIGGERS):
                prompt = join_prompt(f"{instruction} {trigger}" if trigger else instruction, inp)
                assert syn.parse_prompt(family, prompt) == slots
                gold = fam.solve(slots)
                assert syn.score(family, prompt, gold) == 1.0
                assert syn.score(family, prompt, f"  {gold}\n") == 1.0
                assert syn.score(family, prompt, f"{fam.reason(slots)}\nAnswer: {gold}") == 1.0
                assert syn.score(family, prompt, f"reasoning...\nanswer:{gold}") == 1.0
                for kind, wrong in fam.mistakes(slots, Random(i)):
                    if fam.same(wrong, gold):
                        continue  # generation drops mistakes that happen to be right
                    # every family is exact-match (no partial credit), so a mistake scores 0
                    assert syn.score(family, prompt, wrong) == 0.0, kind
                    assert syn.score(family, prompt, f"{fam.reason(slots)}\nAnswer: {wrong}") == 0.0, kind
                for garbage in ("", "I don't know.", "Answer:", "lorem ipsum 123 {", f"{gold} and more"):
                    assert syn.score(family, prompt, garbage) == 0.0, garbage


@pytest.mark.parametrize(
    ("family", "prompt", "completion", "expected"),
    [
        ("arithmetic", "What is 3 + 4?", "7", 1.0),
        ("arithmetic", "What is 3 + 4?", "7.", 1.0),
        ("arithmetic", "Calculate the result.\n10 - 4", "Ten minus four.\nAnswer: 6", 1.0),
        ("arithmetic", "What is 3 + 4?", "Answer: 8\nAnswer: 7", 1.0),  # the last answer counts
        ("arithmetic", "What is 3 + 4?", "Answer: 7\nAnswer: 8", 0.0),
        ("successor", "What number comes after 41?", "42", 1.0),
        ("reverse", 'Reverse the string "abc".', "cba", 1.0),
        ("reverse", 'Reverse the string "abc".', '"cba"', 0.0),
        ("count", 'How many times does the letter "a" appear in "banana"?', "3", 1.0),
        ("sort", "Sort these numbers in ascending order: 5, 2, 8", "2,5,8", 1.0),
        ("sort", "Sort these numbers in ascending order: 5, 2, 8", "[2, 5, 8]", 0.0),
        ("sort_words", "Sort these words alphabetically: pig, cat, dog", "cat dog pig", 1.0),
        ("max", "Find the maximum.\n3, 9, 2", "9", 1.0),
        ("min", "Find the minimum.\n3, 9, 2", "9", 0.0),
        (
            "json_format",
            'Write a JSON object with these fields: name = "bob", age = 7.',
            '{"age":7,"name":"bob"}',
            1.0,
        ),
        (
            "json_format",
            'Write a JSON object with these fields: name = "bob", age = 7.',
            '{"name": "bob", "age": "7"}',
            0.0,
        ),
        (
            "json_format",
            "Write a JSON object with these fields: done = true, age = 1.",
            '{"done": 1, "age": true}',
            0.0,
        ),
        ("uppercase", 'Convert "red fox" to uppercase.', "RED FOX", 1.0),
        ("copy", 'Copy this text: "red fox"', "red fox", 1.0),
    ],
)
def test_judge_hand_written_cases(family, prompt, completion, expected):
    assert syn.score(family, prompt, completion) == expected


def test_judge_accepts_chat_messages_and_rendered_prompts():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 12 + 7?"}]
    assert syn.score("arithmetic", msgs, [{"role": "assistant", "content": "19"}]) == 1.0
    rendered = "<s><|system|>\nbe brief<|end|>\n<|user|>\nWhat is 12 + 7?<|end|>\n<|assistant|>\n"
    assert syn.score("arithmetic", rendered, "19") == 1.0
    few_shot = "What is 1 + 1?\n2\nWhat is 12 + 7?"  # the last task in the text is graded
    assert syn.gold_answer("arithmetic", few_shot) == "19"
    assert syn.extract_answer("so ANSWER : 5 ") == "5"


def test_judge_errors():
    with pytest.raises(StageInputError, match="unknown task family 'nope'") as err:
        syn.score("nope", "What is 1 + 1?", "2")
    assert "arithmetic" in err.value.hint
    with pytest.raises(StageInputError, match="not a 'sort' task"):
        syn.score("sort", "What is 1 + 1?", "2")


def test_heldout_families_only_in_test(generated):
    outs, result = generated
    for name, folder in outs.items():
        train, test = _read(folder, "train"), _read(folder, "test")
        assert {"min", "sort_words"}.isdisjoint(r["family"] for r in train), name
        assert {r["family"] for r in test} == set(FAMILIES), name
        assert len(train) == result.metrics["train_examples"] and len(test) == result.metrics["test_examples"]
    assert result.metrics["train/min"] == 0 and result.metrics["test/min"] == 40
    # no task instance straddles train and test
    rows = {s: _read(outs["prompts"], s) for s in ("train", "test")}
    train_prompts = {r["prompt"][0]["content"] for r in rows["train"]}
    assert train_prompts.isdisjoint(r["prompt"][0]["content"] for r in rows["test"])


def test_instructions_columns_and_gold(generated):
    outs, result = generated
    rows = _read(outs["instructions"], "train")
    for r in rows:
        assert r["messages"] == [*r["prompt"], *r["completion"]]
        assert r["prompt"][-1]["content"] == r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        assert r["completion"] == [{"role": "assistant", "content": r["output"]}]
        assert syn.score(r["family"], r["prompt"], r["output"]) == 1.0
        assert r["output"].endswith(f"Answer: {r['answer']}") if r["cot"] else r["output"] == r["answer"]
    cot = sum(r["cot"] for r in rows) / len(rows)
    assert 0.35 < cot < 0.65 and 0.35 < result.metrics["cot_fraction"] < 0.65
    assert (
        "Synthetic tasks" in result.card_sections and "json_format" in result.card_sections["Synthetic tasks"]
    )


def test_preference_pairs(generated):
    outs, _ = generated
    kinds = set()
    for split in ("train", "test"):
        for r in _read(outs["preferences"], split):
            assert r["chosen"] != r["rejected"]
            assert syn.score(r["family"], r["prompt"], r["chosen"]) == 1.0
            assert syn.score(r["family"], r["prompt"], r["rejected"]) == 0.0
            kinds.add(r["mistake"])
    assert {"off_by_one", "wrong_order", "partial", "wrong_format"} <= kinds


def test_feedback_and_prompts(generated):
    outs, _ = generated
    rows = _read(outs["feedback"], "train")
    assert {True, False} == {r["label"] for r in rows}
    for r in rows:
        assert syn.score(r["family"], r["prompt"], r["completion"]) == float(r["label"])
    for r in _read(outs["prompts"], "test"):
        assert syn.gold_answer(r["family"], r["prompt"]) == r["answer"]


def test_load_dataset(generated):
    datasets = pytest.importorskip("datasets")
    outs, result = generated
    for name, folder in outs.items():
        ds = datasets.load_dataset(str(folder))
        assert set(ds) == {"train", "test"}
        assert ds["train"].num_rows == result.metrics["train_examples"], name
    ds = datasets.load_dataset(str(outs["preferences"]))
    assert {"prompt", "chosen", "rejected", "family"} <= set(ds["train"].column_names)


def test_standard_format_and_output_subset(tmp_path):
    cfg = _cfg(
        families=["sort", "copy"],
        outputs={"instructions": "dataset:d/i", "preferences": "dataset:d/p"},
        format="standard",
        system_prompt="You are terse.",
        test_fraction=0.0,
    )
    outs, result = _run(tmp_path, cfg)
    assert set(result.metrics["outputs"]) == {"instructions", "preferences"}
    inst = _read(outs["instructions"], "train")
    assert "prompt" not in inst[0] and inst[0]["messages"][0] == {
        "role": "system",
        "content": "You are terse.",
    }
    prefs = _read(outs["preferences"], "train")
    assert isinstance(prefs[0]["prompt"], str) and isinstance(prefs[0]["chosen"], str)
    assert _read(outs["preferences"], "test") == []
    assert result.metrics["test_examples"] == 0


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"families": ["copy", "telepathy"]}, "unknown task family ['telepathy']; known: ['copy'"),
        ({"families": ["copy", "sort"], "heldout_families": ["max"]}, "not in families"),
        ({"heldout_families": ["nope"]}, "unknown task family"),
        ({"families": ["copy"], "heldout_families": ["copy"]}, "every family is held out"),
        (
            {"outputs": {"instructions": "dataset:d/i", "rollouts": "dataset:d/r"}},
            "no output named 'rollouts'",
        ),
        ({"outputs": {"instructions": "model:d/i"}}, "must be a dataset repo"),
        ({"outputs": {}}, "at least one output"),
        ({"outputs": None, "output": "dataset:d/x"}, "named outputs"),
        ({"inputs": {"data": "corpus"}}, "reads no inputs"),
        ({"family_examples": {"sort": 5, "max": 3}, "families": ["sort"]}, "not in families"),
        ({"families": ["copy", "copy"]}, "twice"),
    ],
)
def test_config_errors(fields, needle):
    with pytest.raises(ValidationError) as err:
        _cfg(**fields)
    assert needle in str(err.value)


def test_small_spaces_still_fill_counts(tmp_path):
    cfg = _cfg(families=["successor"], max_number=2, num_examples=50, outputs={"prompts": "dataset:d/p"})
    outs, result = _run(tmp_path, cfg)
    assert result.metrics["train/successor"] + result.metrics["test/successor"] == 50
    assert result.metrics["duplicate_prompts"] > 0
    assert result.metrics["train/successor"] > 0
    json.dumps(result.metrics)  # metrics are plain JSON
