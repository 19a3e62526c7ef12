"""A small real-text corpus (~0.5M characters) for manifests/pretrain.yaml: the docstrings of standard-library
modules (English prose with code), one paragraph per document, with a held-out test split.

Used by a `python` stage: ``function: pretrain_corpus:stdlib_docstrings``.
"""

from __future__ import annotations

import importlib
import inspect
import random
import warnings
from pathlib import Path
from typing import Any

MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bz2", "calendar", "cmd", "codecs", "collections",
    "collections.abc", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "html.parser",
    "http.client", "http.server", "imaplib", "importlib", "inspect", "io", "itertools", "json", "locale",
    "logging", "lzma", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pkgutil", "plistlib", "pprint", "queue", "random", "re", "sched",
    "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl", "statistics", "string",
    "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit",
    "tokenize", "trace", "traceback", "tracemalloc", "types", "typing", "unittest", "unittest.mock",
    "urllib.parse", "urllib.request", "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile",
)  # fmt: skip


def stdlib_docstrings(inputs: dict[str, Path], output: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write data/train-*.parquet and data/test-*.parquet (column ``text``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs: list[str] = []
    warnings.simplefilter("ignore", DeprecationWarning)  # reading deprecated aliases' docstrings
    for name in params.get("modules", MODULES):
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj) if obj is not None else None
            if doc:
                docs.extend(
                    p.strip() for p in doc.split("\n\n") if len(p.strip()) >= params.get("min_chars", 40)
                )
    docs = list(dict.fromkeys(docs))
    random.Random(params.get("seed", 0)).shuffle(docs)
    n_test = max(1, int(len(docs) * params.get("test_fraction", 0.05)))
    (output / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs[n_test:]}), output / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": docs[:n_test]}), output / "data" / "test-00000-of-00001.parquet")
    return {
        "train_documents": len(docs) - n_test,
        "test_documents": n_test,
        "characters": sum(map(len, docs)),
    }
