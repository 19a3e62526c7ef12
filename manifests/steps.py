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


def stdlib_text(inputs: dict[str, Path], output: Path, params: dict) -> dict:
    """A raw corpus every machine has: docstrings and comment blocks of the
    installed Python standard library (it holds real near-duplicates: licence
    headers, boilerplate docstrings, copied paragraphs)."""
    import ast
    import io
    import sysconfig
    import tokenize

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    files = files[: int(params.get("max_files", 400))]
    min_chars = int(params.get("min_chars", 80))
    rows: list[dict] = []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        rel = str(path.relative_to(root))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    rows.append({"text": doc, "source": rel, "type": "docstring"})
        block: list[str] = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type == tokenize.COMMENT:
                    block.append(tok.string.lstrip("#").strip())
                elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                    text = " ".join(b for b in block if b)
                    if len(text) >= min_chars:
                        rows.append({"text": text, "source": rel, "type": "comment"})
                    block = []
        except (tokenize.TokenError, IndentationError):
            pass
    (output / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), output / "data" / "train-00000-of-00001.parquet")
    return {"documents": len(rows), "files": len(files)}
