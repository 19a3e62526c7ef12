"""The planner: pure. Graph + static fingerprint parts + lock + hub state -> plan.

It does no I/O: the caller resolves external refs and reads the fingerprint
tags of every output repo first (see :mod:`hubflow.state`), so the planner can
be tested on a graph of plain names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hubflow.constants import FINGERPRINT_TAG_PREFIX
from hubflow.fingerprint import diff_paths, stage_fingerprint
from hubflow.graph import Graph
from hubflow.lock import LockEntry
from hubflow.refs import RepoRef


def fingerprint_tag(fp: str) -> str:
    return f"{FINGERPRINT_TAG_PREFIX}{fp}"


@dataclass
class StagePlan:
    name: str
    kind: str
    action: Literal["run", "skip"]
    reasons: list[str]
    fingerprint: str | None = None
    """Known when every input revision is known at plan time."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name -> TYPE:NS/NAME@COMMIT, for the inputs known at plan time."""
    outputs: dict[str, str] = field(default_factory=dict)
    """For a skipped stage: output name -> TYPE:NS/NAME@COMMIT of its existing result."""
    components: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "action": self.action,
            "reasons": list(self.reasons),
            "fingerprint": self.fingerprint,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
        }


ConflictAction = Literal["reuse", "commit on top"]


def after_commit_conflict(
    fp: str, head: str, head_fingerprint: str | None, tagged: str | None
) -> tuple[ConflictAction, str]:
    """What publishing a finished output does when another writer moved the output's ``main``
    since it was read (a lost commit race): never throw the finished work away.

    ``head``: the branch's new head; ``head_fingerprint``: the fingerprint in its metadata;
    ``tagged``: the commit this fingerprint's tag names, if any. Returns the action and the
    sentence the run prints.
    """
    if head_fingerprint == fp or tagged == head:
        return "reuse", f"another run published this very result first ({head[:8]}): reusing it"
    return "commit on top", f"another writer moved main to {head[:8]} meanwhile: committing on top of it"


def published_outputs(
    fp: str, outputs: Mapping[str, RepoRef], tags: Mapping[RepoRef, Mapping[str, str]]
) -> dict[str, str] | None:
    """Output name -> ref@commit when every output holds the fingerprint tag, else None."""
    found: dict[str, str] = {}
    for out_name, repo in outputs.items():
        commit = tags.get(repo, {}).get(fingerprint_tag(fp))
        if commit is None:
            return None
        found[out_name] = f"{repo}@{commit}"
    return found


ChangeKind = Literal["kind", "config", "code", "schema", "input"]
"""What part of a fingerprint a change is in: ``code`` (the kind's VERSION, a library version, a
dependency such as a user module's source) is the part `hubflow accept` may declare result-neutral."""


def changes(
    old: LockEntry, static: Mapping[str, Any], inputs: Mapping[str, str] | None
) -> list[tuple[ChangeKind, str]]:
    """What differs between a lock entry's fingerprint parts and a stage's current ones: (part, sentence)."""
    out: list[tuple[ChangeKind, str]] = []
    before = old.components
    if before.get("kind") != static["kind"]:
        return [("kind", f"kind changed ({before.get('kind')} -> {static['kind']})")]
    changed = diff_paths(before.get("config", {}), static["config"])
    if changed:
        out.append(("config", f"config changed: {', '.join(changed)}"))
    if str(before.get("version")) != static["version"]:
        out.append(
            (
                "code",
                f"code changed: {static['kind']} stage v{before.get('version')} -> v{static['version']}",
            )
        )
    old_code, new_code = before.get("code", {}), static["code"]
    for lib in sorted(set(old_code) | set(new_code)):
        if old_code.get(lib) != new_code.get(lib):
            out.append(
                (
                    "code",
                    f"code changed: {lib} {old_code.get(lib, 'absent')} -> {new_code.get(lib, 'absent')}",
                )
            )
    for key in diff_paths(before.get("extra", {}), static["extra"]):
        out.append(("code", f"dependency changed: {key}"))
    if before.get("schema") != static["schema"]:
        out.append(
            ("schema", f"hubflow fingerprint schema changed ({before.get('schema')} -> {static['schema']})")
        )
    if inputs is not None:
        for name in sorted(set(old.inputs) | set(inputs)):
            a, b = old.inputs.get(name), inputs.get(name)
            if a != b:
                out.append(("input", f"input changed: {name} ({_short(a)} -> {_short(b)})"))
    return out


def _change_reasons(old: LockEntry, static: Mapping[str, Any], inputs: Mapping[str, str] | None) -> list[str]:
    return [sentence for _, sentence in changes(old, static, inputs)]


def accepted_reason(record: Mapping[str, Any]) -> str:
    """The plan's sentence for a result `hubflow accept` declared up to date under this fingerprint."""
    what = "; ".join(record.get("changes") or []) or "fingerprint changed"
    why = f": {record['reason']}" if record.get("reason") else ""
    when = str(record.get("at", ""))[:10]
    return f"up to date: accepted by {record.get('by', 'unknown')} on {when} ({what}){why}"


def _short(ref: str | None) -> str:
    if not ref:
        return "none"
    base, _, rev = ref.partition("@")
    return f"{base}@{rev[:8]}" if rev else base


def make_plan(
    graph: Graph,
    *,
    static: Mapping[str, Mapping[str, Any]],
    kinds: Mapping[str, str],
    external: Mapping[str, Mapping[str, str]],
    tags: Mapping[RepoRef, Mapping[str, str]],
    lock: Mapping[str, LockEntry],
    targets: set[str] | None = None,
    force: bool = False,
    downstream: bool = False,
) -> list[StagePlan]:
    """Plan every selected stage in topological order.

    ``static``: stage -> fingerprint parts known before inputs resolve.
    ``external``: stage -> input name -> TYPE:NS/NAME@COMMIT for external inputs.
    ``tags``: output repo -> tag -> commit (only fingerprint tags matter).
    ``targets``: stages asked for (None: all); their upstream is always included,
    and with ``downstream`` every stage that depends on them. ``force`` re-runs
    the targets (every stage when there are no targets) even when up to date.
    """
    selected = set(graph.order) if not targets else set(targets)
    if targets and downstream:
        selected = graph.downstream_of(selected)
    forced = set(selected) if force else set()
    selected = graph.upstream_of(selected)

    plans: dict[str, StagePlan] = {}
    for name in graph.order:
        if name not in selected:
            continue
        node = graph.nodes[name]
        st = static[name]
        inputs: dict[str, str] = dict(external.get(name, {}))
        pending: list[str] = []
        for input_name, edge in node.stage_inputs.items():
            up = plans[edge.stage]
            if up.action == "skip":
                inputs[input_name] = up.outputs[edge.output]
            else:
                pending.append(f"input {input_name} will be re-made by stage {edge.stage}")
        old = lock.get(name)
        plan = StagePlan(name=name, kind=kinds[name], action="run", reasons=[], inputs=inputs)
        if pending:
            plan.reasons = pending + (_change_reasons(old, st, None) if old else [])
            plans[name] = plan
            continue
        fp, components = stage_fingerprint(st, inputs)
        plan.fingerprint, plan.components = fp, components
        found = published_outputs(fp, node.outputs, tags)
        if name in forced:
            plan.reasons = ["forced"]
        elif found is not None:
            plan.action, plan.outputs = "skip", found
            accepted = old.acceptance() if old is not None and old.fingerprint == fp else None
            if accepted is not None and accepted.get("outputs") == found:
                plan.reasons = [accepted_reason(accepted)]
            elif old is None or old.fingerprint == fp:
                plan.reasons = ["up to date"]
            else:
                plan.reasons = ["up to date: an earlier result with this fingerprint is reused"]
        elif old is None:
            plan.reasons = ["new stage"]
        elif old.fingerprint == fp:
            missing = [str(r) for o, r in node.outputs.items() if fingerprint_tag(fp) not in tags.get(r, {})]
            plan.reasons = [f"output missing: {', '.join(missing)} has no commit with this fingerprint"]
        else:
            plan.reasons = _change_reasons(old, st, inputs) or ["fingerprint changed"]
        plans[name] = plan
    return list(plans.values())
