"""Matrix sweeps: one stage written once, expanded at manifest load into one stage per combination.

``matrix: {beta: [0.1, 0.3], learning_rate: [1.0e-4, 3.0e-4]}`` on a stage gives four ordinary stages,
each with its own config, fingerprint, cache and output repos. A key is a field of the stage's kind;
a dotted key addresses a nested field (``peft.r``, ``params.beta`` of a ``python`` stage). Pure: no I/O.

Names (stable: they depend on the values, never on where they are listed):

- a member is ``NAME`` + one ``-LABELVALUE`` per key, keys in sorted order; LABEL is the key's last
  dotted part; a ``_`` separates LABEL from a VALUE that starts with a letter
  (``dpo-beta0p1-learning_rate0p0003``, ``sft-lr_scheduler_type_cosine``);
- VALUE is the value as written: numbers in Python's shortest form (``0.0003``, ``1e-05``), ``.``
  written ``p``, a leading ``-`` written ``m``, ``true`` / ``false``, ``none``; any character other
  than letters, digits, ``_`` and ``-`` becomes ``_``; a list or mapping value is ``h`` + 8 hex digits
  of its canonical JSON's sha256;
- every output repo gets the same suffix (``model:demo/dpo`` -> ``model:demo/dpo-beta0p1-...``).

Two values that give the same name (``a b`` and ``a/b``) are an error, as is a name too long for a
stage (100 characters) or a Hub repo.

A stage over a whole sweep names it ``SWEEP[*]`` (or ``SWEEP[*].OUTPUT``) as an input: it expands into
one stage per member, with the member's suffix (``eval`` over ``dpo[*]`` -> ``eval-beta0p1-...``
reading ``dpo-beta0p1-...``), and is itself a sweep with the same values, so a stage may follow it in
turn. One member is named by its expanded name.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hubflow.errors import ManifestError, RefError
from hubflow.fingerprint import digest
from hubflow.refs import parse_repo, validate_repo_id
from hubflow.stage import MAX_STAGE_NAME, StageConfig, _model_types, is_hashed

MATRIX_KEY = "matrix"
ALL_MEMBERS = "[*]"
"""``SWEEP[*]`` as an input: every member of the sweep, one downstream stage each."""
MAX_MEMBERS = 256
"""More combinations than this is almost surely a mistake (each is a stage that runs)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
MATRIX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "array", "minItems": 1},
    "description": (
        "Sweep: field (dotted for a nested one, e.g. `params.beta`) -> the values to try. The stage "
        "expands into one stage per combination, named and published with a suffix per key "
        "(`dpo-beta0p1-learning_rate0p0003`, see docs/sweeps.md); a stage over all of them names "
        "the sweep `NAME[*]` as an input. Fields marked `fingerprint: false` cannot be swept."
    ),
}
"""What `hubflow schema` says about ``matrix:`` on every stage."""


@dataclass(frozen=True)
class Member:
    name: str
    suffix: str
    values: dict[str, Any]
    """Dotted key -> the value of this combination."""


@dataclass
class Sweep:
    """A stage written with a ``matrix:`` (or over a sweep's ``[*]``), and what it expanded to."""

    name: str
    keys: tuple[str, ...]
    members: list[Member] = field(default_factory=list)
    follows: str | None = None
    """The sweep whose members this one's stages read (``inputs: {model: dpo[*]}``)."""

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]


def value_text(value: Any) -> str:
    """How a value appears in a member's name (see the module docstring)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, (int, float)):
        text = re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value)).replace("e+", "e")  # 1e-05 -> 1e-5
    elif isinstance(value, str):
        text = value
    else:
        return "h" + digest(value)[:8]
    if text.startswith("-"):
        text = "m" + text[1:]
    return re.sub(r"[^A-Za-z0-9_-]", "_", text.replace(".", "p"))


def member_suffix(values: Mapping[str, Any]) -> str:
    """``-LABELVALUE`` for each key in sorted order."""
    parts = []
    for key in sorted(values):
        label, text = key.rsplit(".", 1)[-1], value_text(values[key])
        parts.append(f"-{label}{'_' if text[:1].isalpha() else ''}{text}")
    return "".join(parts)


def check_key(cls: type[StageConfig], key: str) -> None:
    """Raise ValueError unless ``key`` (dotted) is a hashed field of ``cls`` (or a key inside a free
    mapping such as a python stage's ``params``)."""
    if not _KEY.match(key):
        raise ValueError(f"matrix key {key!r} is not a field name (dotted for a nested field: `peft.r`)")
    if key in ("kind", MATRIX_KEY):
        raise ValueError(f"`{key}` cannot be swept")
    parts = key.split(".")
    candidates: list[Any] = [cls]  # models, or ``dict`` for a free mapping
    for depth, part in enumerate(parts):
        walked = ".".join(parts[: depth + 1])
        nxt: list[Any] = []
        known: set[str] = set()
        matched = False
        for model in candidates:
            if model is dict:
                matched = True
                nxt.append(dict)
                continue
            known |= set(model.model_fields)
            info = model.model_fields.get(part)
            if info is None:
                continue
            matched = True
            if not is_hashed(info):
                if walked == "inputs":
                    raise ValueError(
                        f"matrix key {key!r}: inputs cannot be swept (they are hashed as the revisions "
                        "they resolve to)"
                    )
                raise ValueError(
                    f"matrix key {key!r}: field `{walked}` is not in the fingerprint (it cannot change the "
                    "result), so a sweep over it would publish one result under several names"
                )
            nxt += _model_types(info.annotation)
            if _is_mapping(info.annotation):
                nxt.append(dict)
        if not matched:
            raise ValueError(
                f"matrix key {key!r}: `{walked}` is not a field of this kind"
                + (f" (fields there: {', '.join(sorted(known))})" if known else "")
            )
        if depth < len(parts) - 1 and not nxt:
            raise ValueError(f"matrix key {key!r}: `{walked}` has no nested fields")
        candidates = nxt


def _is_mapping(annotation: Any) -> bool:
    from typing import get_args, get_origin

    if annotation is dict or get_origin(annotation) is dict:
        return True
    return any(_is_mapping(a) for a in get_args(annotation))


def _set(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ManifestError(
                f"{where}: matrix key {key!r}: `{'.'.join(parts[: i + 1])}` is set to a value, not a mapping",
                hint=f"remove `{'.'.join(parts[: i + 1])}` from the stage, or sweep it as a whole",
            )
        node = child
    if parts[-1] in node:
        raise ManifestError(
            f"{where}: field `{key}` is set both in the stage and in its matrix",
            hint="remove one of them",
        )
    node[parts[-1]] = value


def _suffixed_outputs(raw: dict[str, Any], suffix: str, where: str) -> None:
    for key in ("output", "outputs"):
        value = raw.get(key)
        texts = {key: value} if key == "output" else value
        if not isinstance(texts, dict):
            continue
        out: dict[str, Any] = {}
        for name, text in texts.items():
            if not isinstance(text, str):
                out[name] = text
                continue
            try:
                repo = parse_repo(text)
                validate_repo_id(repo.repo_id + suffix)
            except RefError as exc:
                raise ManifestError(
                    f"{where}: output {text!r} with the sweep suffix {suffix!r}: {exc.message}",
                    hint="shorten the output repo's name or the swept values (a name fits in 96 characters)",
                ) from None
            out[name] = f"{repo.repo_type}:{repo.repo_id}{suffix}"
        raw[key] = out[key] if key == "output" else out


def _members(matrix: Any, cls: type[StageConfig] | None, where: str) -> list[dict[str, Any]]:
    if not isinstance(matrix, dict) or not matrix:
        raise ManifestError(
            f"{where}: `matrix` must map fields to lists of values",
            hint="e.g. `matrix: {beta: [0.1, 0.3]}`",
        )
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise ManifestError(
                f"{where}: matrix key {key!r} needs a non-empty list of values, got {values!r}",
                hint=f"e.g. `{key}: [{values!r}, ...]`, or set `{key}` on the stage if it takes one value",
            )
        if cls is not None:
            try:
                check_key(cls, str(key))
            except ValueError as exc:
                raise ManifestError(
                    f"{where}: {exc}", hint="see `hubflow schema` for the kind's fields"
                ) from None
    keys = sorted(matrix)
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(matrix[k] for k in keys))]
    if len(combos) > MAX_MEMBERS:
        raise ManifestError(
            f"{where}: the matrix has {len(combos)} combinations (more than {MAX_MEMBERS})",
            hint="sweep fewer values, or split it into several stages",
        )
    return combos


def _member_name(base: str, suffix: str, where: str) -> str:
    name = f"{base}{suffix}"
    if len(name) > MAX_STAGE_NAME or not _NAME.match(name):
        raise ManifestError(
            f"{where}: member name {name!r} is not a valid stage name (letters, digits, '_', '-'; "
            f"at most {MAX_STAGE_NAME} characters)",
            hint="shorten the stage name or the swept values",
        )
    return name


def _sweep_inputs(raw: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Input name -> (sweep, '.OUTPUT' or '') for each ``SWEEP[*]`` input."""
    out: dict[str, tuple[str, str]] = {}
    inputs = raw.get("inputs")
    for input_name, target in inputs.items() if isinstance(inputs, dict) else []:
        if isinstance(target, str) and ALL_MEMBERS in target:
            stage, _, rest = target.partition(ALL_MEMBERS)
            out[str(input_name)] = (stage, rest)
    return out


def expand(
    raws: list[Any], path: Any, config_cls: Callable[[str], type[StageConfig] | None]
) -> tuple[list[Any], dict[str, Sweep]]:
    """The manifest's stage mappings with every sweep expanded in place, and the sweeps by name.
    ``config_cls``: kind -> its Config (None for an unknown kind: the stage is left for validation
    to report)."""
    by_name: dict[str, dict[str, Any]] = {}
    for r in raws:
        if isinstance(r, dict) and isinstance(r.get("name"), str):
            if r["name"] in by_name:
                raise ManifestError(
                    f"{path}: two stages are named {r['name']!r}", hint="stage names must be unique"
                )
            by_name[r["name"]] = r
    sweeps: dict[str, Sweep] = {}
    expanded: dict[str, list[dict[str, Any]]] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in expanded or name in visiting:
            return  # a cycle is reported by the graph
        raw = by_name[name]
        where = f"{path}: stage {name!r}"
        over = _sweep_inputs(raw)
        if MATRIX_KEY not in raw and not over:
            return
        visiting.add(name)
        kind = raw.get("kind")
        cls = config_cls(kind) if isinstance(kind, str) else None
        if MATRIX_KEY in raw and over:
            raise ManifestError(
                f"{where}: a stage over a sweep (`{'`, `'.join(s + ALL_MEMBERS for s, _ in over.values())}`) "
                "cannot have its own `matrix`",
                hint="sweep the upstream stage over these values too, or write one stage per member",
            )
        base = {k: v for k, v in raw.items() if k != MATRIX_KEY}
        members: list[tuple[str, dict[str, Any], dict[str, str]]] = []  # suffix, values, inputs
        if MATRIX_KEY in raw:
            combos = _members(raw[MATRIX_KEY], cls, where)
            sweep = Sweep(name, tuple(sorted(raw[MATRIX_KEY])))
            members = [(member_suffix(c), c, {}) for c in combos]
        else:
            ups: list[Sweep] = []
            for input_name, (stage, _rest) in over.items():
                if stage in by_name:
                    visit(stage)
                if stage not in sweeps:
                    raise ManifestError(
                        f"{where}: input {input_name!r}: `{stage}{ALL_MEMBERS}` names no sweep",
                        hint="`NAME[*]` names every member of a stage with a `matrix:`"
                        + (f" (sweeps: {', '.join(sweeps)})" if sweeps else ""),
                    )
                ups.append(sweeps[stage])
            first = ups[0]
            for other in ups[1:]:
                if [m.suffix for m in other.members] != [m.suffix for m in first.members]:
                    raise ManifestError(
                        f"{where}: its inputs are over sweeps {first.name!r} and {other.name!r}, whose members "
                        "differ",
                        hint="a stage can follow several sweeps only when they sweep the same values",
                    )
            sweep = Sweep(name, first.keys, follows=first.name)
            for i, m in enumerate(first.members):
                ins = {
                    input_name: f"{sweeps[stage].members[i].name}{rest}"
                    for input_name, (stage, rest) in over.items()
                }
                members.append((m.suffix, dict(m.values), ins))
        out: list[dict[str, Any]] = []
        seen: dict[str, dict[str, Any]] = {}
        for suffix, values, ins in members:
            member = _member_name(name, suffix, where)
            if member in seen:
                raise ManifestError(
                    f"{where}: matrix values {seen[member]} and {values} both give the stage name {member!r}",
                    hint="use values that differ in their letters and digits (docs/sweeps.md: names)",
                )
            if member in by_name:
                raise ManifestError(
                    f"{where}: member {member!r} of its matrix has the name of another stage",
                    hint="rename one of them",
                )
            seen[member] = values
            data = copy.deepcopy(base)
            data["name"] = member
            if MATRIX_KEY in raw:
                for key, value in values.items():
                    _set(data, key, copy.deepcopy(value), where)
            if ins:
                data["inputs"] = {**data.get("inputs", {}), **ins}
            _suffixed_outputs(data, suffix, where)
            out.append(data)
            sweep.members.append(Member(member, suffix, dict(values)))
        sweeps[name] = sweep
        expanded[name] = out
        visiting.discard(name)

    for name in by_name:
        visit(name)
    result: list[Any] = []
    for raw in raws:
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in expanded:
            result.extend(expanded[name])
        else:
            result.append(raw)
    _check_bare_references(result, sweeps, path)
    return result, sweeps


def _check_bare_references(raws: list[Any], sweeps: Mapping[str, Sweep], path: Any) -> None:
    """An input naming a sweep itself (not one member, not ``[*]``) says how to name them."""
    for raw in raws:
        inputs = raw.get("inputs") if isinstance(raw, dict) else None
        for input_name, target in inputs.items() if isinstance(inputs, dict) else []:
            stage = target.partition(".")[0] if isinstance(target, str) else None
            if stage in sweeps:
                members = sweeps[stage].member_names
                raise ManifestError(
                    f"{path}: stage {raw.get('name')!r}, input {input_name!r}: {stage!r} is a sweep of "
                    f"{len(members)} stages",
                    hint=f"name one member ({', '.join(members[:4])}{', ...' if len(members) > 4 else ''}) "
                    f"or all of them: `{stage}{ALL_MEMBERS}` (one stage per member)",
                )


def schema_with_matrix(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a manifest's JSON Schema) with ``matrix`` described on every stage kind's Config."""
    for definition in schema.get("$defs", {}).values():
        props = definition.get("properties")
        if isinstance(props, dict) and "kind" in props and "inputs" in props and "output" in props:
            props[MATRIX_KEY] = dict(MATRIX_SCHEMA)
    return schema


def describe(sweep: Sweep) -> str:
    """One line for `validate` / `plan`: ``sweep dpo: 4 stages over beta × learning_rate``."""
    over = (
        f"over the members of sweep {sweep.follows!r}" if sweep.follows else "over " + " × ".join(sweep.keys)
    )
    return f"sweep {sweep.name}: {len(sweep.members)} stages {over}"


_OWN = ("name", "description", "output", "outputs")
"""What makes an implied stage one member's rather than another's; the rest is what it computes."""


def share_implied(
    implied: Mapping[str, list[tuple[str, dict[str, Any]]]], sweeps: Mapping[str, Sweep]
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The stages each stage implies (its kind's ``auxiliary_stages``), with those that the members of
    a sweep imply identically made one stage: a dpo sweep over ``beta`` computes its reference
    log-probs once. Shared by every member, it is named for the sweep (``dpo-reference``, output
    ``dataset:NS/dpo-reference-logprobs``); shared by some, it keeps the first member's name."""
    out = {name: list(items) for name, items in implied.items()}
    for sweep in sweeps.values():
        members = [m for m in sweep.members if m.name in implied]
        if len(members) < 2:
            continue
        groups: dict[tuple[str, str], list[Member]] = {}
        for m in members:
            for input_name, raw in implied[m.name]:
                key = (input_name, digest({k: v for k, v in raw.items() if k not in _OWN}))
                groups.setdefault(key, []).append(m)
        for (input_name, _), group in groups.items():
            if len(group) < 2:
                continue
            first = dict(next(r for i, r in implied[group[0].name] if i == input_name))
            if len(group) == len(sweep.members):
                first = _for_sweep(first, sweep.name, group[0])
            for m in group:
                out[m.name] = [(i, first if i == input_name else r) for i, r in out[m.name]]
    return out


def _for_sweep(raw: dict[str, Any], sweep: str, member: Member) -> dict[str, Any]:
    """A member's implied stage renamed for its whole sweep (the member's suffix dropped)."""
    raw = dict(raw)
    if isinstance(raw.get("name"), str) and raw["name"].startswith(member.name):
        raw["name"] = sweep + raw["name"][len(member.name) :]
    if isinstance(raw.get("description"), str):
        raw["description"] = raw["description"].replace(member.name, sweep)
    if isinstance(raw.get("output"), str):
        raw["output"] = raw["output"].replace(member.suffix, "", 1)
    if isinstance(raw.get("outputs"), dict):
        raw["outputs"] = {k: str(v).replace(member.suffix, "", 1) for k, v in raw["outputs"].items()}
    return raw
