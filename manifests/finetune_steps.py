"""Python stages of the fine-tuning quickstart (manifests/finetune.yaml)."""

from __future__ import annotations

from pathlib import Path


def task_text(inputs: dict[str, Path], output: Path, params: dict) -> dict:
    """A plain-text pretraining corpus from the synthetic tasks' train split.

    Each document is a request and its answer as plain text (no chat markers, no
    roles): the pretrained model sees the language of the tasks, but never the chat
    format the evaluation prompts use; that is what SFT teaches. The test split is
    never read, so the evaluation's instances stay unseen.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = inputs["tasks"]
    files = sorted((folder / "data").glob("train-*.parquet"))
    table = pq.read_table(files, columns=["messages"])
    docs = []
    for messages in table.column("messages").to_pylist():
        turns = [m["content"] for m in messages if m["role"] in ("user", "assistant")]
        docs.append("\n".join(turns))
    repeat = int(params.get("repeat", 1))
    (output / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": docs * repeat}), output / "data" / "train-00000-of-00001.parquet")
    return {"documents": len(docs) * repeat, "distinct_documents": len(docs)}
