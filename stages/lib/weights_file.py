"""Domain weights as a dataset (``weights.json``): written by ``domain_weights``, read by ``curate``'s
mixing (``mix: {weights: from_input}``) and ``pretrain``'s sampling.

A consuming stage names the weights repo under the input :data:`WEIGHTS_INPUT`; its other dataset
inputs are the domains, by input name, and must be exactly the domains the weights cover (a domain
missing on either side is an error before any work, naming both lists). Pure Python (json only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

WEIGHTS_FILE = "weights.json"
WEIGHTS_INPUT = "domain_weights"
"""The input name under which curate and pretrain take a ``domain_weights`` stage's output."""


def write_weights(folder: Path, weights: dict[str, float], **extra: Any) -> Path:
    """Write ``weights.json``: ``{"domains": [...], "weights": {domain: w}, ...extra}`` (weights sum to 1)."""
    total = sum(weights.values())
    doc = {"domains": list(weights), "weights": {d: w / total for d, w in weights.items()}, **extra}
    path = Path(folder) / WEIGHTS_FILE
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def read_weights(
    folder: Path, domains: Sequence[str], *, input_name: str = WEIGHTS_INPUT, stage: str = "the stage"
) -> dict[str, float]:
    """The weights of ``domains`` (normalised to sum to 1) from a weights repo; raises a
    :class:`StageInputError` when the file is missing or corrupt or its domains differ from ``domains``."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise StageInputError(
            f"input {input_name!r} has no {WEIGHTS_FILE}",
            hint="point it at a `domain_weights` stage (its output dataset holds weights.json)",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        weights = {str(k): float(v) for k, v in doc["weights"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StageInputError(
            f"input {input_name!r}: {WEIGHTS_FILE} is not a weights file ({exc})",
            hint='it must hold {"weights": {DOMAIN: WEIGHT, ...}}; re-run the domain_weights stage',
        ) from exc
    bad = [d for d, w in weights.items() if not math.isfinite(w) or w < 0]
    if bad or not any(w > 0 for w in weights.values()):
        raise StageInputError(
            f"input {input_name!r}: {WEIGHTS_FILE} has negative, non-finite or all-zero weights ({weights})",
            hint="re-run the domain_weights stage",
        )
    want, have = set(domains), set(weights)
    if want != have:
        parts = []
        if want - have:
            parts.append(f"no weight for {sorted(want - have)}")
        if have - want:
            parts.append(f"weights for {sorted(have - want)} which are not inputs")
        raise StageInputError(
            f"{stage}: the domains of input {input_name!r} ({sorted(have)}) do not match its dataset "
            f"inputs ({sorted(want)}): {'; '.join(parts)}",
            hint="name the dataset inputs exactly as the domain_weights stage named its domain inputs "
            "(one input per domain), or re-run domain_weights over these domains",
        )
    total = sum(weights.values())
    return {d: weights[d] / total for d in domains}
