"""Python stages of the quickstart manifest (the `python` stage kind calls these)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def topic_stats(inputs: dict[str, Path], output: Path, params: dict) -> dict:
    """Count documents per topic in the ingested notes and write them as JSON."""
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((inputs["notes"] / "data").glob("train-*.parquet")))
    counts = Counter(table.column(params.get("column", "topic")).to_pylist())
    (output / "topic_counts.json").write_text(json.dumps(dict(sorted(counts.items())), indent=2))
    return {"documents": table.num_rows, "topics": len(counts)}
