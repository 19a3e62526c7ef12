"""``hubflow accept``: declare a stage's published result up to date under its new fingerprint.

After a change its user declares result-neutral (a library upgrade, a refactor that bumped a kind's
``VERSION``, a user module edited without changing what it computes) the plan says *run* with exactly
what differs. ``accept`` keeps the hash honest and gives the escape hatch: it does not re-run the
stage, it records that the existing result stands for the new fingerprint.

What it writes, for each output of each accepted stage:

- the tag ``fp-<new fingerprint>`` on the **same** commit as the accepted result, so the plan finds
  it and downstream stages, whose inputs are that commit, stay up to date (nothing re-runs);
- a small commit on ``main`` that only adds the acceptance to the card (``README.md``) and to
  ``lineage.json`` (files otherwise those of the result), with the record in its metadata: what
  ``hubflow log`` shows. ``hubflow run`` treats such a commit as showing the result (it does not
  "restore" main over it);
- each revision the result published (``step-N`` checkpoints, rounds: tags ``LABEL-<fp[:12]>``) tagged
  again under the new fingerprint on the same commit, so ``STAGE@LABEL`` inputs keep resolving;
- the lock entry: the new fingerprint and components, the same outputs, and the record appended
  to ``accepted`` (from, to, outputs, changes, by, at, reason), which is why the plan then says
  "up to date: accepted by ...".

Only the code part of a fingerprint may differ (the kind's VERSION, its LIBRARIES' versions, its
dependencies such as a module's source, hubflow's fingerprint schema): a change of kind, config or
inputs changes what is computed and is refused, as is a stage with nothing published.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hubflow import constants
from hubflow.errors import EntryNotFound, HubflowError, NotAcceptable, RepoNotFound, RevisionNotFound
from hubflow.graph import revision_tag
from hubflow.hub.base import CommitAdd
from hubflow.lock import LockEntry
from hubflow.plan import StagePlan, changes, fingerprint_tag
from hubflow.refs import RepoRef, parse_ref

ACCEPTABLE = frozenset({"code", "schema"})
"""The parts of a fingerprint (:data:`hubflow.plan.ChangeKind`) a user may declare result-neutral."""
RESULT_KEY = "accepted_result"
"""Commit metadata (under ``hubflow``) of a card commit: the result commit whose files it shows."""

Echo = Callable[[str], None]


def shows_result(metadata: Mapping[str, Any], revision: str) -> bool:
    """Whether a commit with this metadata is an acceptance card commit of the result ``revision``."""
    meta = metadata.get(constants.METADATA_KEY)
    return isinstance(meta, dict) and meta.get(RESULT_KEY) == revision


def acceptable_changes(
    name: str,
    sp: StagePlan,
    old: LockEntry | None,
    static: Mapping[str, Any],
    repos: Mapping[str, RepoRef],
    run: str,
) -> list[str]:
    """What accepting stage ``name`` declares result-neutral, as plan sentences; pure. Raises
    :class:`NotAcceptable` naming what is wrong and the fix. ``run``: the command that re-runs it."""
    if old is None or not old.outputs:
        raise NotAcceptable(
            f"stage {name!r} has no published result to accept (the lock has no entry for it)",
            hint=f"run it: `{run}`",
        )
    if sp.fingerprint is None:
        pending = "; ".join(sp.reasons)
        ups = sorted({r.rsplit(" ", 1)[-1] for r in sp.reasons if "will be re-made by stage" in r})
        raise NotAcceptable(
            f"stage {name!r} cannot be accepted yet: {pending}",
            hint=f"accept {', '.join(ups)} first if that change is result-neutral too "
            f"(`hubflow accept ... {' '.join(ups)} {name}`), or run it: `{run}`",
        )
    try:
        was = {out: parse_ref(text).repo for out, text in old.outputs.items()}
    except HubflowError:
        was = {}
    if was != dict(repos):
        raise NotAcceptable(
            f"stage {name!r}: its outputs moved ({', '.join(map(str, was.values()))} -> "
            f"{', '.join(map(str, repos.values()))}): there is no result in the new repos to accept",
            hint=f"run it: `{run}`",
        )
    if old.fingerprint == sp.fingerprint:
        raise NotAcceptable(
            f"stage {name!r}: nothing changed to accept; {'; '.join(sp.reasons)}",
            hint=f"run it: `{run}`",
        )
    found = changes(old, static, sp.inputs)
    refused = [sentence for part, sentence in found if part not in ACCEPTABLE]
    if refused:
        raise NotAcceptable(
            f"stage {name!r} cannot be accepted: {'; '.join(refused)}. Accept declares a change of code "
            "(a kind's VERSION, a library version, a dependency's source) result-neutral; a change of "
            "kind, config or inputs changes what is computed",
            hint=f"run it: `{run}` (a config field that cannot change results is marked UNHASHED in its kind)",
        )
    return [sentence for _, sentence in found] or ["fingerprint changed"]


def carry_revisions(hub: Any, repo: RepoRef, old: str, new: str) -> list[str]:
    """Tag every revision of the result with fingerprint ``old`` (tags ``LABEL-<old[:12]>``) as a
    revision of ``new`` on the same commit; returns the labels."""
    suffix = revision_tag("", old)
    labels = []
    for tag, commit in sorted(hub.list_refs(repo).tags.items()):
        label = tag[: -len(suffix)]
        if tag.endswith(suffix) and label and not tag.startswith("fp-"):
            hub.create_tag(repo, revision_tag(label, new), revision=commit, exist_ok=True)
            labels.append(label)
    return labels


def card_section(record: Mapping[str, Any]) -> str:
    """The Markdown an acceptance adds to a card."""
    lines = [
        "",
        f"## Accepted without re-running ({str(record['at'])[:10]})",
        "",
        f"- by: {record['by']}",
        f"- what changed: {'; '.join(record['changes'])}",
        f"- reason: {record.get('reason') or '(none given)'}",
        f"- fingerprint: `{record['from']}` -> `{record['to']}`",
        "",
        "This result was not re-made: its user declared the change result-neutral with `hubflow accept`.",
        "",
    ]
    return "\n".join(lines)


def _card_commit(
    project: Any, name: str, repo: RepoRef, commit: str, record: dict[str, Any], work: Path
) -> str:
    """Commit on ``main`` the result ``commit``'s files with the acceptance added to its card and lineage."""
    hub = project.hub
    head = hub.list_refs(repo).branches.get("main")
    base = commit
    if head is not None and head != commit and shows_result(hub.commit_info(repo, head).metadata, commit):
        base = head  # an earlier acceptance's card: add to it
    try:
        readme = hub.read_file(repo, "README.md", base).decode("utf-8")
    except EntryNotFound:
        readme = ""
    try:
        lineage = json.loads(hub.read_file(repo, "lineage.json", base))
    except (EntryNotFound, ValueError):
        lineage = {}
    if not isinstance(lineage, dict):
        lineage = {}
    lineage["accepted"] = [*lineage.get("accepted", []), record]
    shutil.rmtree(work, ignore_errors=True)
    if head == base:
        work.mkdir(parents=True)
        folder = work
    else:  # main is elsewhere: commit the result's whole tree on top of it
        folder = work / "tree"
        hub.snapshot(repo, commit, folder)
        for file in ("README.md", "lineage.json"):
            (folder / file).unlink(missing_ok=True)
    (folder / "README.md").write_text(readme.rstrip("\n") + "\n" + card_section(record), encoding="utf-8")
    (folder / "lineage.json").write_text(
        json.dumps(lineage, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    message = f"hubflow: accept stage {name} result {commit[:8]} under fingerprint {record['to'][:12]}"
    metadata = {
        constants.METADATA_KEY: {
            "stage": name,
            "kind": project.manifest.stages[name].kind,
            RESULT_KEY: commit,
            "accepted": record,
        }
    }
    if head == base:
        ops = [CommitAdd(f, folder / f) for f in ("README.md", "lineage.json")]
        info = hub.commit(repo, ops, message=message, metadata=metadata, parent_commit=head)
    else:
        info = hub.commit_folder(repo, folder, message=message, metadata=metadata, parent_commit=head)
    shutil.rmtree(work, ignore_errors=True)
    return info.commit_id


def accept(
    project: Any,
    names: Iterable[str],
    *,
    reason: str | None = None,
    by: str | None = None,
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Accept each named stage (in the graph's order, so a stage may follow an accepted upstream);
    returns the records written. Holds the run lock: no `hubflow run` changes the lock meanwhile."""
    from hubflow.runner import Runner

    names = project.expand_targets(list(names)) or []
    graph, manifest = project.graph, project.manifest
    unknown = [n for n in names if n not in graph.nodes]
    if unknown:
        raise NotAcceptable(
            f"no stage named {', '.join(map(repr, unknown))} in {manifest.path}",
            hint=f"stages are: {', '.join(graph.order)}",
        )
    if not names:
        raise NotAcceptable("name the stages to accept", hint="e.g. `hubflow accept hubflow.yaml sft`")
    by = by or constants.user_identity()
    records: list[dict[str, Any]] = []
    handle = Runner(project, echo=echo).acquire(wait=False)
    try:
        for name in [n for n in graph.order if n in set(names)]:
            sp = next(p for p in project.plan([name]) if p.name == name)
            if sp.action == "skip":
                echo(f"{name}: nothing to accept, {'; '.join(sp.reasons)}")
                continue
            lock = project.lock()
            old = lock.stages.get(name)
            cfg = manifest.stages[name]
            run = f"hubflow run {manifest.path.name} {name}"
            what = acceptable_changes(name, sp, old, project.static[name], cfg.output_repos(), run)
            assert old is not None and sp.fingerprint is not None
            for text in old.outputs.values():
                ref = parse_ref(text)
                try:
                    project.hub.commit_info(ref.repo, ref.revision or "main")
                except (RepoNotFound, RevisionNotFound):
                    raise NotAcceptable(
                        f"stage {name!r}: its result {text} (from the lock) is not in the hub",
                        hint=f"run it: `{run}`",
                    ) from None
            record = {
                "from": old.fingerprint,
                "to": sp.fingerprint,
                "outputs": dict(old.outputs),
                "changes": what,
                "by": by,
                "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "reason": reason or "",
            }
            for out_name, text in old.outputs.items():
                ref = parse_ref(text)
                assert ref.revision is not None
                work = manifest.state_dir / "work" / f"accept-{name}-{out_name}"
                card = _card_commit(project, name, ref.repo, ref.revision, record, work)
                project.hub.create_tag(
                    ref.repo, fingerprint_tag(sp.fingerprint), revision=ref.revision, exist_ok=True
                )
                labels = carry_revisions(project.hub, ref.repo, old.fingerprint, sp.fingerprint)
                carried = f", revisions {', '.join(labels)} with it" if labels else ""
                echo(
                    f"  {name}: {ref.repo}@{ref.revision[:8]} tagged {fingerprint_tag(sp.fingerprint)[:15]}…"
                    f"{carried}, card {card[:8]}"
                )
            entry = LockEntry(
                kind=old.kind,
                fingerprint=sp.fingerprint,
                inputs=dict(sp.inputs),
                outputs=dict(old.outputs),
                components=dict(sp.components),
                seconds=old.seconds,
                accepted=[*old.accepted, record],
            )
            lock.record(name, entry, keep=set(graph.nodes))
            echo(f"{name}: accepted ({'; '.join(what)}) by {by}; its result stands, nothing re-runs")
            records.append(record)
    finally:
        handle.release()
    return records
