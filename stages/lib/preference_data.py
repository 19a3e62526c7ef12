"""Preference rows as token ids, their batches, and the reference pass (seed §4.7 steps 2 and 3.2, §4.8.2).

- pairs ``(x, y_w, y_l)`` are encoded by :func:`stages.lib.pairs.encode_pairs`; pointwise rows
  ``(x, y, b)`` by :func:`encode_pointwise`, with the same truncation (TRL's);
- KTO's KL baseline scores *mismatched* pairs: :func:`kl_completions` rotates the completions by one
  within consecutive groups of ``kl_batch_size`` rows, as TRL's ``KTOTrainer`` does within each
  per-device batch: ``(x_1, y_n), (x_2, y_1), …, (x_n, y_{n-1})``. A training batch is then one group;
- a batch holds prompt ⊕ completion right-padded; for pairs the chosen rows come first, then the
  rejected ones (one forward of 2B sequences, as TRL);
- the reference pass (:func:`pair_reference`, :func:`point_reference`) gives log π_ref(y | x) as a
  **sum** over the completion's tokens, in float32, under ``no_grad``.

The ``reference_logprobs`` kind publishes these as a dataset (:func:`write_reference`) and the training
kinds read it back (:func:`read_reference`, :func:`check_reference`, :func:`match_rows`), refusing an
artifact made with other tokenisation settings, another dataset or reference revision, or other tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubflow.errors import StageInputError

REFERENCE_FILE = "reference_logprobs.json"
PAIR_COLUMNS = ("row", "prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
POINT_COLUMNS = (
    "row",
    "prompt_ids",
    "completion_ids",
    "label",
    "kl_completion_ids",
    "ref_logps",
    "ref_kl_logps",
)
TOKEN_FIELDS = {
    "pairs": ("prompt_ids", "chosen_ids", "rejected_ids"),
    "pointwise": ("prompt_ids", "completion_ids", "kl_completion_ids"),
}


@dataclass(frozen=True)
class EncodedPoint:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    row: int = 0


def fit(prompt: list[int], completion: list[int], max_length: int, max_prompt_length: int | None) -> tuple:
    """TRL's truncation: the prompt keeps its last ``max_prompt_length`` tokens, the completion is cut so
    prompt ⊕ completion fits ``max_length``."""
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    return list(prompt), list(completion[: max(0, max_length - len(prompt))])


def encode_pointwise(
    tok: Any, points: Sequence[Any], *, max_length: int, max_prompt_length: int | None = None
) -> tuple[list[EncodedPoint], int]:
    """(encoded rows, rows dropped because the prompt alone fills ``max_length``)."""
    from stages.lib.chat import split_prompt_completion

    out, dropped = [], 0
    for point in points:
        prompt, completion = split_prompt_completion(tok, point.prompt, point.completion)
        p, c = fit(prompt, completion, max_length, max_prompt_length)
        if not c:
            dropped += 1
            continue
        out.append(EncodedPoint(p, c, bool(point.label), point.row))
    return out, dropped


def kl_groups(n: int, size: int) -> list[list[int]]:
    """Consecutive groups of ``size`` row indices (``size`` ≥ 2); a last group of one row joins the group
    before it (a single row has no mismatched partner)."""
    if size < 2:
        raise ValueError(f"KL groups need at least 2 rows each, got size {size}")
    groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        last = groups.pop()
        groups[-1] = groups[-1] + last
    return groups


def kl_completions(
    rows: Sequence[EncodedPoint], size: int, *, max_length: int, max_prompt_length: int | None = None
) -> list[list[int]]:
    """The mismatched completion of each row: the previous row's within its group (the first row takes the
    last's), cut to fit ``max_length`` after the row's own prompt."""
    out: list[list[int]] = [[] for _ in rows]
    for group in kl_groups(len(rows), size):
        for k, i in enumerate(group):
            j = group[k - 1]  # k = 0 -> the group's last row
            out[i] = fit(rows[i].prompt_ids, rows[j].completion_ids, max_length, max_prompt_length)[1]
    return out


# -- batches and the reference pass ----------------------------------------------------------------


def pair_batch(rows: Sequence[Any], pad_id: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, completion_mask) [2B, L]: the B chosen sequences, then the B rejected."""
    from stages.lib.pairs import completion_batch

    prompts = [r.prompt_ids for r in rows]
    return completion_batch(
        prompts * 2, [r.chosen_ids for r in rows] + [r.rejected_ids for r in rows], pad_id
    )


def to_device(model: Any, *tensors: Any) -> list[Any]:
    device = next(model.parameters()).device
    return [t.to(device) for t in tensors]


def summed_logps(model: Any, ids: Any, mask: Any, comp: Any) -> tuple[Any, Any]:
    """(Σ log π over the completion's tokens [N], [N, L-1] per-token log-probs, 0 elsewhere)."""
    from stages.lib.pairs import completion_token_logps

    token = completion_token_logps(model, ids, mask, comp)
    return token.sum(dim=1), token


def pair_logps(model: Any, rows: Sequence[Any], pad_id: int) -> tuple[Any, Any, Any, Any, Any]:
    """One forward over the 2B sequences of B pairs: (chosen sums, rejected sums, chosen lengths, rejected
    lengths, per-token log-probs [2B, L-1] over every real next token with the completion mask)."""
    from stages.lib.pairs import completion_token_logps

    ids, mask, comp = to_device(model, *pair_batch(rows, pad_id))
    every = completion_token_logps(model, ids, mask, mask)  # all real tokens after the first
    in_completion = comp[:, 1:].to(every.dtype)
    sums = (every * in_completion).sum(dim=1)
    lengths = in_completion.sum(dim=1)
    b = len(rows)
    return sums[:b], sums[b:], lengths[:b], lengths[b:], (every, mask[:, 1:].to(every.dtype), in_completion)


def pair_reference(
    model: Any, rows: Sequence[Any], *, pad_id: int, batch_size: int
) -> tuple[list[float], list[float]]:
    """log π_ref(y_w | x) and log π_ref(y_l | x) of every pair (sums, float32, no gradient)."""
    import torch

    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            ids, mask, comp = to_device(model, *pair_batch(part, pad_id))
            sums, _ = summed_logps(model, ids, mask, comp)
            chosen += [float(v) for v in sums[: len(part)].cpu()]
            rejected += [float(v) for v in sums[len(part) :].cpu()]
    return chosen, rejected


def completion_sums(
    model: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
) -> list[float]:
    """log π(completion | prompt) of each row (sums, no gradient)."""
    import torch

    from stages.lib.pairs import completion_batch

    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = completion_batch(
                prompts[start : start + batch_size], completions[start : start + batch_size], pad_id
            )
            sums, _ = summed_logps(model, *to_device(model, *batch))
            out += [float(v) for v in sums.cpu()]
    return out


def point_reference(
    model: Any, rows: Sequence[EncodedPoint], kl_ids: Sequence[Sequence[int]], *, pad_id: int, batch_size: int
) -> tuple[list[float], list[float]]:
    """log π_ref(y | x) of every row and log π_ref(y' | x) of its mismatched completion y'."""
    prompts = [r.prompt_ids for r in rows]
    own = completion_sums(
        model, prompts, [r.completion_ids for r in rows], pad_id=pad_id, batch_size=batch_size
    )
    kl = completion_sums(model, prompts, kl_ids, pad_id=pad_id, batch_size=batch_size)
    return own, kl


def pair_records(
    rows: Sequence[Any], chosen: Sequence[float], rejected: Sequence[float]
) -> list[dict[str, Any]]:
    return [
        {
            "row": r.row,
            "prompt_ids": list(r.prompt_ids),
            "chosen_ids": list(r.chosen_ids),
            "rejected_ids": list(r.rejected_ids),
            "ref_chosen_logps": float(c),
            "ref_rejected_logps": float(j),
        }
        for r, c, j in zip(rows, chosen, rejected, strict=True)
    ]


def point_records(
    rows: Sequence[EncodedPoint], kl_ids: Sequence[Sequence[int]], own: Sequence[float], kl: Sequence[float]
) -> list[dict[str, Any]]:
    return [
        {
            "row": r.row,
            "prompt_ids": list(r.prompt_ids),
            "completion_ids": list(r.completion_ids),
            "label": bool(r.label),
            "kl_completion_ids": list(k),
            "ref_logps": float(a),
            "ref_kl_logps": float(b),
        }
        for r, k, a, b in zip(rows, kl_ids, own, kl, strict=True)
    ]


# -- a stage's splits -------------------------------------------------------------------------------


def stage_splits(ctx: Any, cfg: Any) -> list[str]:
    """The training split, then the held-out split when the ``data`` input has it."""
    from stages.lib.datasets import eval_split_of, input_folder

    held_out = eval_split_of(input_folder(ctx, "data"), cfg.eval_split)
    return [cfg.split] + ([held_out] if held_out and held_out != cfg.split else [])


def encode_pair_splits(ctx: Any, cfg: Any, tok: Any) -> tuple[dict[str, list], dict[str, int]]:
    """split -> encoded pairs of the ``data`` input (the held-out one cut to ``eval_examples``); the rows
    dropped per split. No training pair left is refused."""
    from stages.lib.datasets import input_folder
    from stages.lib.pairs import encode_pairs, read_pairs

    folder = input_folder(ctx, "data")
    splits, dropped = {}, {}
    for split in stage_splits(ctx, cfg):
        limit = cfg.eval_examples if split != cfg.split else None
        pairs = read_pairs(folder, split, input_name="data", limit=limit)
        splits[split], dropped[split] = encode_pairs(
            tok, pairs, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
    if not splits[cfg.split]:
        raise StageInputError(
            f"no training pair keeps a completion token within max_length={cfg.max_length}",
            hint="raise max_length (or lower max_prompt_length)",
        )
    return splits, dropped


# -- the artifact ----------------------------------------------------------------------------------


@dataclass
class ReferenceArtifact:
    """A ``reference_logprobs`` output: its description (``reference_logprobs.json``) and its rows per split."""

    info: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]]

    @property
    def format(self) -> str:
        return str(self.info.get("format"))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.info.get("settings") or {})


def write_reference(folder: Path, info: dict[str, Any], splits: dict[str, list[dict[str, Any]]]) -> None:
    """``data/{split}-00000-of-00001.parquet`` per split and ``reference_logprobs.json`` into ``folder``."""
    import pyarrow as pa

    from stages.lib.datasets import write_split

    ids = pa.list_(pa.int32())
    fields = {
        "row": pa.int64(),
        "label": pa.bool_(),
        "ref_chosen_logps": pa.float64(),
        "ref_rejected_logps": pa.float64(),
        "ref_logps": pa.float64(),
        "ref_kl_logps": pa.float64(),
    }
    columns = PAIR_COLUMNS if info["format"] == "pairs" else POINT_COLUMNS
    schema = pa.schema([(c, fields.get(c, ids)) for c in columns])
    for split, rows in splits.items():
        write_split(folder, split, rows, schema=schema)
    (folder / REFERENCE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_reference(folder: Path, *, input_name: str) -> ReferenceArtifact:
    """The artifact in ``folder``; refuses a folder that is not a ``reference_logprobs`` output."""
    from stages.lib.datasets import has_split, read_rows

    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise StageInputError(
            f"input {input_name!r} is not a reference log-prob artifact (it has no {REFERENCE_FILE})",
            hint="feed it the output of a `reference_logprobs` stage",
        )
    info = json.loads(path.read_text(encoding="utf-8"))
    fmt = info.get("format")
    columns = PAIR_COLUMNS if fmt == "pairs" else POINT_COLUMNS
    splits = {}
    for split in info.get("splits") or {}:
        if has_split(Path(folder), split):
            splits[split] = read_rows(
                Path(folder),
                split,
                columns,
                input_name=input_name,
                hint="publish it again with the reference_logprobs stage",
            )
    return ReferenceArtifact(info, splits)


def _revision(ref: str | None) -> tuple[str, str] | None:
    if not ref or "@" not in ref:
        return None
    body = ref.split(":", 1)[-1]
    repo, _, rev = body.partition("@")
    return repo, rev


def check_reference(
    art: ReferenceArtifact,
    *,
    input_name: str,
    format: str,
    settings: dict[str, Any],
    splits: Sequence[str],
    refs: dict[str, tuple[str, str | None]],
) -> None:
    """Refuse an artifact of another format, other tokenisation settings (naming the setting), without a
    split this stage needs, or made from another revision of an input. ``refs``: artifact input name ->
    (this stage's input name, its exact ref); unknown refs are not compared."""
    if art.format != format:
        raise StageInputError(
            f"input {input_name!r} holds {art.format} reference log-probs; this stage needs {format}",
            hint=f"set `format: {format}` on the reference_logprobs stage",
        )
    theirs = art.settings
    for key, ours in settings.items():
        if theirs.get(key) != ours:
            raise StageInputError(
                f"input {input_name!r} was computed with {key}={theirs.get(key)!r}, this stage uses {key}={ours!r}: "
                "its tokens are not this stage's",
                hint=f"give the reference_logprobs stage `{key}: {ours}` (or this stage `{key}: {theirs.get(key)}`)",
            )
    missing = [s for s in splits if s not in art.splits]
    if missing:
        raise StageInputError(
            f"input {input_name!r} has no reference log-probs for split(s) {missing}; it has {sorted(art.splits)}",
            hint="give the reference_logprobs stage the same `split` / `eval_split` as this stage",
        )
    recorded = art.info.get("inputs") or {}
    for theirs_name, (our_name, our_ref) in refs.items():
        a, b = _revision(recorded.get(theirs_name)), _revision(our_ref)
        if a is not None and b is not None and a != b:
            raise StageInputError(
                f"input {input_name!r} was computed from {theirs_name} {a[0]}@{a[1][:12]}, but this stage's "
                f"{our_name!r} is {b[0]}@{b[1][:12]}",
                hint=f"feed the reference_logprobs stage the same `{theirs_name}` as this stage's `{our_name}`",
            )


def match_rows(
    art_rows: Sequence[dict[str, Any]],
    own: Sequence[dict[str, Any]],
    *,
    input_name: str,
    split: str,
    format: str,
) -> list[dict[str, Any]]:
    """The artifact's row for each of this stage's encoded rows (``own``: dicts with ``row`` and the token
    fields), refusing a missing row or different tokens (naming the row and the field)."""
    by_row = {int(r["row"]): r for r in art_rows}
    out = []
    for mine in own:
        theirs = by_row.get(int(mine["row"]))
        if theirs is None:
            raise StageInputError(
                f"input {input_name!r} ({split}) has no reference log-probs for dataset row {mine['row']}",
                hint="run the reference_logprobs stage on the same dataset revision and settings",
            )
        for field in TOKEN_FIELDS[format]:
            if field in mine and list(theirs[field]) != list(mine[field]):
                raise StageInputError(
                    f"input {input_name!r} ({split}) row {mine['row']}: its {field} differ from this stage's "
                    "tokenisation (another tokenizer or chat template)",
                    hint="compute the reference log-probs with this stage's tokenizer (give both the same "
                    "`tokenizer` input)",
                )
        out.append(theirs)
    return out
