"""The evaluate stage: loss/perplexity against a direct torch computation, exact match and
gold-judge accuracy per family, real greedy generation, adapter-or-full loading, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hubflow.errors import StageInputError
from hubflow.stage import StageContext

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from stages import evaluate, synthetic  # noqa: E402
from stages import tokenizer as tok_stage  # noqa: E402
from stages.evaluate import job as evaluate_job  # noqa: E402
from stages.evaluate import scoring  # noqa: E402

BASE_REV = "a" * 40


def write_split(folder: Path, rows: list[dict[str, Any]], split: str = "test") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def make_ctx(tmp_path: Path, inputs: dict[str, Path], refs: dict[str, str] | None = None) -> StageContext:
    out = tmp_path / "out"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir()
    (tmp_path / "logs").mkdir(exist_ok=True)
    return StageContext(
        stage_name="eval",
        fingerprint="0" * 64,
        inputs=inputs,
        input_refs=refs or {},
        outputs={"output": out},
        resume_dir=tmp_path / "resume",
        base_dir=tmp_path,
        log_dir=tmp_path / "logs",
    )


def cfg(
    datasets: tuple[str, ...] = ("tasks",), extra_inputs: tuple[str, ...] = (), **kw: Any
) -> evaluate.Config:
    inputs = {"model": "m", **{d: d for d in datasets}, **{e: e for e in extra_inputs}}
    return evaluate.Config(name="eval", kind="evaluate", inputs=inputs, output="dataset:demo/eval", **kw)


def synthetic_rows(tmp_path: Path, families: list[str], n: int = 12) -> Path:
    """The synthetic stage's instructions output (conversational prompt/completion + messages)."""
    out = tmp_path / "syn"
    out.mkdir()
    scfg = synthetic.Config(
        name="syn",
        kind="synthetic",
        outputs={"instructions": "dataset:demo/syn"},
        families=families,
        num_examples=n,
        test_fraction=0.5,
    )
    ctx = StageContext("syn", "0" * 64, {}, {"instructions": out}, tmp_path / "r", tmp_path, tmp_path)
    synthetic.run(ctx, scfg)
    return out


def make_tokenizer(tmp_path: Path, texts: list[str]) -> Path:
    """The tokenizer stage's output (byte-level BPE, chat template with <|end|>) trained on texts."""
    corpus = write_split(tmp_path / "corpus", [{"text": t} for t in texts], split="train")
    out = tmp_path / "tok"
    out.mkdir()
    tcfg = tok_stage.Config(
        name="tok",
        kind="tokenizer",
        inputs={"data": "c"},
        output="model:demo/tok",
        vocab_size=360,
        heldout_fraction=0,
    )
    ctx = StageContext("tok", "0" * 64, {"data": corpus}, {"output": out}, tmp_path / "r", tmp_path, tmp_path)
    tok_stage.run(ctx, tcfg)
    return out


def make_model(folder: Path, tok_dir: Path, *, hidden: int = 32, seed: int = 0) -> Any:
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    for f in tok_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    return model


def read_results(ctx: StageContext) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(ctx.output / "data" / "train-00000-of-00001.parquet").to_pylist()


TEXTS = [
    "the cat sat on the mat",
    "one two three four five",
    "a quick brown fox jumps over the lazy dog",
    "What comes after 3?",
    "Spell it backwards: abc",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tiny")
    tok_dir = make_tokenizer(tmp, TEXTS * 20)
    make_model(tmp / "model", tok_dir)
    return tmp / "model", tok_dir


def direct_nll(model: Any, ids: list[int], start: int) -> tuple[float, int]:
    """Sum of -log p(ids[t] | ids[:t]) for t >= start, computed in the plainest way (ids alone, no padding)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return -sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids))), len(ids) - start


def test_loss_and_perplexity_match_direct_computation(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    model_dir, _ = tiny
    docs = write_split(tmp_path / "docs", [{"text": t} for t in TEXTS[:3]])
    qa_rows = [
        {"prompt": "What comes after 3?", "completion": " 4"},
        {"prompt": "Spell it backwards: abc", "completion": " cba"},
    ]
    qa = write_split(tmp_path / "qa", qa_rows)
    chat_rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": c}],
        }
        for r, c in zip(qa_rows, ["4", "cba"], strict=True)
    ]
    chat = write_split(tmp_path / "chat", chat_rows)
    ctx = make_ctx(tmp_path, {"model": model_dir, "docs": docs, "qa": qa, "chat": chat})
    result = evaluate.run(ctx, cfg(("docs", "qa", "chat"), max_new_tokens=4))

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir)).eval()
    total, count = 0.0, 0
    for text in TEXTS[:3]:  # text format: every token of text + eos but the first
        nll, n = direct_nll(model, tok(text)["input_ids"] + [tok.eos_token_id], 1)
        total, count = total + nll, count + n
    assert result.metrics["docs/loss"] == pytest.approx(total / count, rel=1e-5)
    assert result.metrics["docs/perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert result.metrics["docs/loss_tokens"] == count

    total, count = 0.0, 0
    for row in qa_rows:  # completion only: prompt and completion tokenized apart, as the sft stage trains
        prompt = tok(row["prompt"])["input_ids"]
        completion = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        nll, n = direct_nll(model, prompt + completion, len(prompt))
        total, count = total + nll, count + n
    assert result.metrics["qa/loss"] == pytest.approx(total / count, rel=1e-5)

    total, count = 0.0, 0
    end = tok.convert_tokens_to_ids("<|end|>")
    for row in chat_rows:  # chat: the loss covers the assistant's content and its end marker, nothing else
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)["input_ids"]
        answer = tok(row["completion"][0]["content"], add_special_tokens=False)["input_ids"] + [end]
        assert full[: len(prompt) + len(answer)] == prompt + answer
        nll, n = direct_nll(model, prompt + answer, len(prompt))
        total, count = total + nll, count + n
    assert result.metrics["chat/loss"] == pytest.approx(total / count, rel=1e-5)
    assert result.metrics["chat/loss_tokens"] == count
    assert result.metrics["qa/examples"] == 2 and "qa/exact_match" in result.metrics
    rows = read_results(ctx)
    assert [r["dataset"] for r in rows] == ["chat"] * 2 + ["docs"] * 3 + ["qa"] * 2
    assert [r["generation"] is None for r in rows] == [False] * 2 + [True] * 3 + [False] * 2
    assert json.loads((ctx.log_dir / "metrics.jsonl").read_text().splitlines()[0])["dataset"] == "chat"


def test_exact_match_and_judge_per_family(tmp_path: Path, tiny: tuple[Path, Path], monkeypatch) -> None:
    """Generation is replaced by fixed outputs to test the scoring alone (real generation: next test)."""
    import pyarrow.parquet as pq

    model_dir, _ = tiny
    syn = synthetic_rows(tmp_path, ["successor", "uppercase", "reverse"])
    rows = pq.read_table(syn / "data" / "test-00000-of-00001.parquet").to_pylist()
    extra = write_split(tmp_path / "extra", [{"prompt": "p", "completion": "x y", "family": "mystery"}] * 2)

    def fixed(row: dict[str, Any]) -> str:
        if row["family"] == "successor":
            return row["completion"][-1]["content"]  # the reference itself
        if row["family"] == "uppercase":
            return "Answer:  " + row["answer"]  # right answer, other wording: judge yes, exact match no
        return row["answer"] + "x"  # wrong

    planned = {"tasks": [fixed(r) for r in rows], "extra": ["x  y", "nope"]}
    calls: list[int] = []

    def fake_generate(model: Any, tok: Any, prompts: list[list[int]], **kw: Any) -> list[str]:
        name = ["extra", "tasks"][len(calls)]  # datasets are scored in name order
        calls.append(len(prompts))
        return planned[name]

    monkeypatch.setattr(scoring, "generate", fake_generate)
    ctx = make_ctx(tmp_path, {"model": model_dir, "tasks": syn, "extra": extra})
    m = evaluate.run(ctx, cfg(("tasks", "extra"))).metrics
    assert calls == [2, len(rows)]

    fams = m["tasks/families"]
    assert set(fams) == {"successor", "uppercase", "reverse"}
    assert fams["successor"]["exact_match"] == 1.0 and fams["successor"]["judge_accuracy"] == 1.0
    assert fams["uppercase"]["exact_match"] == 0.0 and fams["uppercase"]["judge_accuracy"] == 1.0
    assert fams["reverse"]["exact_match"] == 0.0 and fams["reverse"]["judge_accuracy"] == 0.0
    n = {f: sum(r["family"] == f for r in rows) for f in fams}
    assert {f: fams[f]["examples"] for f in fams} == n
    assert m["tasks/exact_match"] == pytest.approx(round(n["successor"] / len(rows), 6))
    assert m["tasks/judge_accuracy"] == pytest.approx(round((n["successor"] + n["uppercase"]) / len(rows), 6))
    # a family the judge does not know: exact match only (whitespace collapsed), no judge score
    assert m["extra/exact_match"] == 0.5 and "judge_accuracy" not in m["extra/families"]["mystery"]
    assert "extra/judge_accuracy" not in m

    results = read_results(ctx)
    mystery = [r for r in results if r["family"] == "mystery"]
    assert [r["exact_match"] for r in mystery] == [True, False] and mystery[0]["judge_score"] is None
    card = evaluate_job._card(
        cfg(("tasks", "extra")),
        {"tasks": {**_strip(m, "tasks/")}},
        {"tasks": "x"},
        results,
        {"model_type": "full"},
    )
    assert "| successor | " in card and "| **all** |" in card


def _strip(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


def _overfit(model: Any, tok: Any, rows: list[dict[str, Any]], steps: int) -> None:
    """Train on the rendered conversations until the model reproduces them."""
    seqs = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)["input_ids"] for r in rows]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], labels[i, : len(s)] = torch.tensor(s), torch.tensor(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_real_generation_of_an_overfit_model_is_scored_right(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    syn = synthetic_rows(tmp_path, ["successor", "uppercase"], n=8)
    rows = pq.read_table(syn / "data" / "test-00000-of-00001.parquet").to_pylist()[:4]
    texts = [m["content"] for r in rows for m in r["prompt"] + r["completion"]]
    tok_dir = make_tokenizer(tmp_path, texts * 30)
    model = make_model(tmp_path / "model", tok_dir, hidden=64)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    _overfit(model, tok, rows, steps=120)
    model.save_pretrained(str(tmp_path / "model"))

    ctx = make_ctx(tmp_path, {"model": tmp_path / "model", "tasks": syn})
    m = evaluate.run(ctx, cfg(max_examples=4, max_new_tokens=12, batch_size=3)).metrics
    results = read_results(ctx)
    assert [r["generation"] for r in results] == [r["completion"][-1]["content"] for r in rows]
    assert m["exact_match"] == 1.0 and m["judge_accuracy"] == 1.0 and m["judged"] == 4
    assert m["loss"] < 0.1 and m["examples"] == 4


def test_adapter_with_base_or_full_model(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    model_dir, _ = tiny
    adapter = tmp_path / "adapter"
    torch.manual_seed(3)
    lora = get_peft_model(
        LlamaForCausalLM.from_pretrained(str(model_dir)),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(str(adapter))
    model_input = {"repo_type": "model", "repo_id": "demo/base", "revision": BASE_REV}
    (adapter / "lineage.json").write_text(json.dumps({"inputs": {"model": model_input}}))
    docs = write_split(tmp_path / "docs", [{"text": t} for t in TEXTS])

    ctx = make_ctx(
        tmp_path, {"model": adapter, "base": model_dir, "docs": docs}, {"base": f"model:demo/base@{BASE_REV}"}
    )
    m_adapter = evaluate.run(ctx, cfg(("docs",), ("base",))).metrics
    assert m_adapter["model_type"] == "adapter"
    ctx = make_ctx(tmp_path, {"model": model_dir, "docs": docs})
    m_full = evaluate.run(ctx, cfg(("docs",))).metrics
    assert m_full["model_type"] == "full"

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    peft_model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(model_dir)), str(adapter)
    ).eval()
    plain = LlamaForCausalLM.from_pretrained(str(model_dir)).eval()
    for model, metrics in ((peft_model, m_adapter), (plain, m_full)):
        sums = [direct_nll(model, tok(t)["input_ids"] + [tok.eos_token_id], 1) for t in TEXTS]
        assert metrics["loss"] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-5)
    assert abs(m_adapter["loss"] - m_full["loss"]) > 1e-3

    # a hubflow bottleneck adapter (the sft stage's `adapter` method) loads through the sft stage's loader
    from stages.lib.adapters import insert_adapters, load_with_adapter, save_adapter

    bottleneck = tmp_path / "bottleneck"
    torch.manual_seed(4)
    with_adapters = LlamaForCausalLM.from_pretrained(str(model_dir))
    insert_adapters(with_adapters, bottleneck=4, activation="gelu", positions=["attention", "mlp"])
    with torch.no_grad():
        for name, p in with_adapters.named_parameters():
            if ".up." in name:
                p.normal_(0, 0.5)  # W_up starts at zero: make the adapter matter
    save_adapter(with_adapters, bottleneck)
    ctx = make_ctx(tmp_path, {"model": bottleneck, "base": model_dir, "docs": docs})
    m_bottleneck = evaluate.run(ctx, cfg(("docs",), ("base",))).metrics
    reference = load_with_adapter(LlamaForCausalLM.from_pretrained(str(model_dir)), bottleneck).eval()
    sums = [direct_nll(reference, tok(t)["input_ids"] + [tok.eos_token_id], 1) for t in TEXTS]
    assert m_bottleneck["loss"] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-5)
    assert abs(m_bottleneck["loss"] - m_full["loss"]) > 1e-3

    ctx = make_ctx(tmp_path, {"model": adapter, "docs": docs})
    with pytest.raises(StageInputError, match="lora adapter .* no 'base' input") as err:
        evaluate.run(ctx, cfg(("docs",)))
    assert "add `base: STAGE_OR_REF`" in str(err.value)
    refs = {"base": f"model:demo/other@{BASE_REV}"}
    ctx = make_ctx(tmp_path, {"model": adapter, "base": model_dir, "docs": docs}, refs)
    with pytest.raises(
        StageInputError, match="adapter of model:demo/base@a+ .* but input 'base' is model:demo/other"
    ):
        evaluate.run(ctx, cfg(("docs",), ("base",)))


def test_bad_inputs_fail_before_the_model_loads(tmp_path: Path, tiny: tuple[Path, Path], monkeypatch) -> None:
    from stages.lib import models

    def no_loading(*args: Any, **kw: Any) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "_from_pretrained", no_loading)
    model_dir, _ = tiny
    bad = write_split(tmp_path / "bad", [{"question": "q", "answer": "a"}])
    ctx = make_ctx(tmp_path, {"model": model_dir, "tasks": bad})
    with pytest.raises(
        StageInputError, match=r"has none of the columns evaluate reads; it has \['question', 'answer'\]"
    ):
        evaluate.run(ctx, cfg())
    with pytest.raises(
        StageInputError,
        match=r"lacks column\(s\) \['prompt', 'completion'\]; it has \['question', 'answer'\]",
    ):
        evaluate.run(ctx, cfg(format="prompt_completion"))
    with pytest.raises(StageInputError, match=r"lacks column\(s\) \['query'\]") as err:
        evaluate.run(ctx, cfg(format="prompt_completion", prompt_column="query", completion_column="answer"))
    assert "prompt_column" in str(err.value)
    with pytest.raises(StageInputError, match="no 'validation' split"):
        evaluate.run(ctx, cfg(split="validation"))
    plain = write_split(tmp_path / "plain", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(StageInputError, match="judge: synthetic .* input 'tasks' has no 'family' column"):
        evaluate.run(make_ctx(tmp_path, {"model": model_dir, "tasks": plain}), cfg(judge="synthetic"))
    msgs = write_split(tmp_path / "msgs", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(StageInputError, match="last message has role 'user'"):
        evaluate.run(make_ctx(tmp_path, {"model": model_dir, "tasks": msgs}), cfg())

    # a tokenizer that was not made with the model
    big_tok = make_tokenizer(tmp_path / "big", [" ".join(str(i) for i in range(200))] * 5 + TEXTS)
    docs = write_split(tmp_path / "docs", [{"text": "one two"}])
    small = tmp_path / "small"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(str(small))
    ctx = make_ctx(tmp_path, {"model": small, "tokenizer": big_tok, "docs": docs})
    with pytest.raises(
        StageInputError,
        match=r"tokenizer \(input 'tokenizer'\) has \d+ tokens but the model's embedding has 300 rows",
    ):
        evaluate.run(ctx, cfg(("docs",), ("tokenizer",)))


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="at least one dataset input"):
        evaluate.Config(
            name="e", kind="evaluate", inputs={"model": "m", "base": "b"}, output="dataset:demo/e"
        )
    with pytest.raises(ValidationError, match="needs `inputs: {model:"):
        evaluate.Config(name="e", kind="evaluate", inputs={"data": "d"}, output="dataset:demo/e")
    with pytest.raises(ValidationError, match="must be a dataset repo"):
        evaluate.Config(name="e", kind="evaluate", inputs={"model": "m", "d": "d"}, output="model:demo/e")
    assert scoring.exact_match("  4 \n", "4") and not scoring.exact_match("4.", "4")


def test_prefix_tuning_adapter_generates_like_one_prompt_at_a_time(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    """peft prefix tuning: loss and generations equal peft's own, prompt by prompt (no padding effects)."""
    from peft import PeftModel, PrefixTuningConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    model_dir, _ = tiny
    torch.manual_seed(5)
    prefix = get_peft_model(
        LlamaForCausalLM.from_pretrained(str(model_dir)),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    )
    prefix.save_pretrained(str(tmp_path / "prefix"))
    prompts = ["What comes after 3?", "one", "Spell it backwards: abc"]
    qa = write_split(tmp_path / "qa", [{"prompt": p, "completion": " x"} for p in prompts])
    ctx = make_ctx(tmp_path, {"model": tmp_path / "prefix", "base": model_dir, "qa": qa})
    m = evaluate.run(ctx, cfg(("qa",), ("base",), max_new_tokens=5, check_base=False, batch_size=3)).metrics
    assert m["model_type"] == "adapter" and m["examples"] == 3

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    peft_model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(model_dir)), str(tmp_path / "prefix")
    )
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]  # eos and the chat end-of-turn marker
    expected = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        out = peft_model.eval().generate(
            input_ids=ids,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )
        new = out[0, ids.shape[1] :].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
        expected.append(tok.decode(new, skip_special_tokens=True).strip())
    assert [r["generation"] for r in read_results(ctx)] == expected


def test_sampled_completions_give_the_expected_gold_reward(
    tmp_path: Path, policy_factory, synthetic_tasks
) -> None:
    """`sampled`: K completions per prompt at temperature T, scored by the gold judge (what RL optimises)."""
    policy = policy_factory()
    ctx = make_ctx(tmp_path, {"model": policy, "tasks": synthetic_tasks["instructions"]})
    spec = {"samples": 4, "temperature": 1.0, "seed": 3}
    m = evaluate.run(ctx, cfg(max_examples=24, max_new_tokens=8, sampled=spec)).metrics
    rows = read_results(ctx)
    scores = [r["sampled_judge_score"] for r in rows]
    assert all(s in {0.0, 0.25, 0.5, 0.75, 1.0} for s in scores)  # means over 4 graded samples
    assert m["sampled_judge_accuracy"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    assert 0.0 < m["sampled_judge_accuracy"] < 1.0 and "sampled_judge_accuracy" in m["families"]["max"]
    again = evaluate.run(make_ctx(tmp_path, ctx.inputs), cfg(max_examples=24, max_new_tokens=8, sampled=spec))
    assert again.metrics["sampled_judge_accuracy"] == m["sampled_judge_accuracy"]  # seeded
