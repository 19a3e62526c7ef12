"""Parquet writing of the ``synthetic`` stage's outputs (explicit schemas: byte-identical reruns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.synthetic.generate import Example


def _messages(role_texts: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in role_texts]


def _columns(out_name: str, ex: Example, cfg: Any) -> dict[str, Any]:
    chat = cfg.format == "conversational"
    system = [("system", cfg.system_prompt)] if cfg.system_prompt else []
    prompt: Any = _messages([*system, ("user", ex.prompt)]) if chat else ex.prompt

    def reply(text: str) -> Any:
        return _messages([("assistant", text)]) if chat else text

    meta = {"id": ex.id, "family": ex.family, "difficulty": ex.difficulty, "cot": ex.cot, "answer": ex.answer}
    if out_name == "instructions":
        row = {"instruction": ex.instruction, "input": ex.input, "output": ex.output}
        row["messages"] = _messages([*system, ("user", ex.prompt), ("assistant", ex.output)])
        if chat:  # string prompt/completion next to `messages` would confuse TRL's format detection
            row.update(prompt=prompt, completion=reply(ex.output))
        return {**row, **meta}
    if out_name == "preferences":
        return {
            "prompt": prompt,
            "chosen": reply(ex.output),
            "rejected": reply(ex.rejected),
            "mistake": ex.mistake,
            **meta,
        }
    if out_name == "feedback":
        completion = ex.output if ex.desirable else ex.rejected
        mistake = "" if ex.desirable else ex.mistake
        return {
            "prompt": prompt,
            "completion": reply(completion),
            "label": ex.desirable,
            "mistake": mistake,
            **meta,
        }
    if out_name == "prompts":
        return {"prompt": prompt, **meta}
    raise ValueError(f"unknown synthetic output {out_name!r}")


def _schema(out_name: str, cfg: Any) -> Any:
    import pyarrow as pa

    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = msgs if cfg.format == "conversational" else pa.string()
    meta = [("id", pa.string()), ("family", pa.string()), ("difficulty", pa.int32()), ("cot", pa.bool_())]
    meta.append(("answer", pa.string()))
    fields: list[tuple[str, Any]]
    if out_name == "instructions":
        fields = [
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("messages", msgs),
        ]
        if cfg.format == "conversational":
            fields += [("prompt", msgs), ("completion", msgs)]
    elif out_name == "preferences":
        fields = [("prompt", text), ("chosen", text), ("rejected", text), ("mistake", pa.string())]
    elif out_name == "feedback":
        fields = [("prompt", text), ("completion", text), ("label", pa.bool_()), ("mistake", pa.string())]
    else:
        fields = [("prompt", text)]
    return pa.schema(fields + meta)


def write_output(folder: Path, out_name: str, splits: dict[str, list[Example]], cfg: Any) -> None:
    """data/{split}-00000-of-00001.parquet for train and test (written even when a split is empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(out_name, cfg)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        rows = [_columns(out_name, ex, cfg) for ex in examples]
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet", compression="zstd")
