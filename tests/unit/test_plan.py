"""The planner on graphs of plain names: no hub, no manifest."""

from hubflow.fingerprint import stage_fingerprint
from hubflow.graph import build_graph
from hubflow.lock import LockEntry
from hubflow.plan import fingerprint_tag, make_plan
from hubflow.refs import RepoRef

EXT = "model:org/base@" + "e" * 40


def R(name):
    return RepoRef("dataset", f"t/{name}")


GRAPH = build_graph(
    {
        "a": ({}, {"output": R("a")}),
        "b": ({"x": "a"}, {"output": R("b")}),
        "c": ({"x": "b", "m": "model:org/base"}, {"output": R("c")}),
        "d": ({}, {"output": R("d")}),
    }
)
KINDS = dict.fromkeys(GRAPH.nodes, "python")
EXTERNAL = {"c": {"m": EXT}}


def static(lr=1, version="1", torch="2.13.0"):
    base = {"schema": 1, "kind": "python", "version": version, "code": {"torch": torch}, "extra": {}}
    return {n: {**base, "config": {"lr": lr if n == "b" else 0}} for n in GRAPH.nodes}


def publish_all(st):
    """Simulate a full run: returns (tags, lock)."""
    tags, lock, outs = {}, {}, {}
    for i, name in enumerate(GRAPH.order):
        node = GRAPH.nodes[name]
        inputs = dict(EXTERNAL.get(name, {}))
        inputs.update({k: outs[e.stage] for k, e in node.stage_inputs.items()})
        fp, comp = stage_fingerprint(st[name], inputs)
        commit = f"{i:x}{fp[:39]}"
        tags.setdefault(node.outputs["output"], {})[fingerprint_tag(fp)] = commit
        outs[name] = f"{node.outputs['output']}@{commit}"
        lock[name] = LockEntry("python", fp, inputs, {"output": outs[name]}, comp)
    return tags, lock


def plan(st, tags, lock, **kw):
    p = make_plan(GRAPH, static=st, kinds=KINDS, external=EXTERNAL, tags=tags, lock=lock, **kw)
    return {s.name: (s.action, s.reasons) for s in p}


def test_everything_new():
    result = plan(static(), {}, {})
    assert result["a"] == ("run", ["new stage"])
    assert result["b"] == ("run", ["input x will be re-made by stage a"])
    assert result["d"] == ("run", ["new stage"])


def test_nothing_to_do_after_a_run():
    tags, lock = publish_all(static())
    assert {n: a for n, (a, _) in plan(static(), tags, lock).items()} == dict.fromkeys("abcd", "skip")


def test_config_change_runs_the_stage_and_its_dependents_only():
    tags, lock = publish_all(static())
    result = plan(static(lr=2), tags, lock)
    assert result["a"][0] == "skip" and result["d"][0] == "skip"
    assert result["b"] == ("run", ["config changed: config.lr"] if False else ["config changed: lr"])
    assert result["c"] == ("run", ["input x will be re-made by stage b"])


def test_revert_finds_the_earlier_result_by_fingerprint():
    tags1, lock1 = publish_all(static())
    tags2, lock2 = publish_all(static(lr=2))
    merged = {r: {**tags1.get(r, {}), **tags2.get(r, {})} for r in set(tags1) | set(tags2)}
    result = plan(static(), merged, lock2)  # lock says lr=2, manifest is back at lr=1
    assert all(a == "skip" for a, _ in result.values())
    assert result["b"][1] == ["up to date: an earlier result with this fingerprint is reused"]


def test_code_and_input_changes_are_explained():
    tags, lock = publish_all(static())
    result = plan(static(torch="2.14.0"), tags, lock)
    assert "code changed: torch 2.13.0 -> 2.14.0" in result["a"][1]
    moved = {"c": {"m": "model:org/base@" + "f" * 40}}
    p = make_plan(GRAPH, static=static(), kinds=KINDS, external=moved, tags=tags, lock=lock)
    c = next(s for s in p if s.name == "c")
    assert c.action == "run" and c.reasons == [
        f"input changed: m (model:org/base@{'e' * 8} -> model:org/base@{'f' * 8})"
    ]


def test_output_missing():
    tags, lock = publish_all(static())
    del tags[R("d")]
    assert plan(static(), tags, lock)["d"] == (
        "run",
        ["output missing: dataset:t/d has no commit with this fingerprint"],
    )


def test_targets_include_upstream_and_optionally_downstream_and_force():
    tags, lock = publish_all(static())
    assert set(plan(static(), tags, lock, targets={"b"})) == {"a", "b"}
    assert set(plan(static(), tags, lock, targets={"b"}, downstream=True)) == {"a", "b", "c"}
    forced = plan(static(), tags, lock, targets={"b"}, force=True)
    assert forced["b"] == ("run", ["forced"]) and forced["a"][0] == "skip"
    everything = plan(static(), tags, lock, force=True)
    assert all(r == ("run", ["forced"]) or r[1][0].startswith("input") for r in everything.values())


def test_a_lost_commit_race_reuses_the_same_result_or_commits_on_top():
    from hubflow.plan import after_commit_conflict

    fp, head = "f" * 64, "a" * 40
    assert after_commit_conflict(fp, head, fp, None)[0] == "reuse"  # the head carries the fingerprint
    assert after_commit_conflict(fp, head, None, head)[0] == "reuse"  # the fingerprint tag names the head
    action, why = after_commit_conflict(fp, head, "e" * 64, "b" * 40)
    assert action == "commit on top" and "aaaaaaaa" in why and "committing on top" in why


def _accept(st, tags, lock, name, by="ada", reason="same numbers"):
    """What `hubflow accept` writes, on plain data: the new fingerprint's tag on the same commit and
    the lock entry with its record (hubflow/accept.py)."""
    from hubflow.accept import acceptable_changes

    sp = {
        p.name: p for p in make_plan(GRAPH, static=st, kinds=KINDS, external=EXTERNAL, tags=tags, lock=lock)
    }[name]
    old = lock.get(name)
    what = acceptable_changes(name, sp, old, st[name], GRAPH.nodes[name].outputs, f"hubflow run {name}")
    commit = old.outputs["output"].split("@")[1]
    tags[GRAPH.nodes[name].outputs["output"]][fingerprint_tag(sp.fingerprint)] = commit
    record = {"from": old.fingerprint, "to": sp.fingerprint, "outputs": old.outputs, "changes": what}
    record |= {"by": by, "at": "2026-12-02T05:00:00Z", "reason": reason}
    lock[name] = LockEntry("python", sp.fingerprint, sp.inputs, old.outputs, sp.components, accepted=[record])
    return what


def test_an_accepted_library_upgrade_is_up_to_date_and_says_who_accepted_it():
    tags, lock = publish_all(static())
    upgraded = static(torch="2.14.0", version="2")
    assert plan(upgraded, tags, lock)["a"] == (
        "run",
        ["code changed: python stage v1 -> v2", "code changed: torch 2.13.0 -> 2.14.0"],
    )
    for name in ("a", "b", "d"):  # c: its input b is the same commit, so it follows b
        _accept(upgraded, tags, lock, name)
    result = plan(upgraded, tags, lock)
    assert result["a"] == (
        "skip",
        [
            "up to date: accepted by ada on 2026-12-02 (code changed: python stage v1 -> v2; "
            "code changed: torch 2.13.0 -> 2.14.0): same numbers"
        ],
    )
    assert result["c"][0] == "run" and result["c"][1] == [
        "code changed: python stage v1 -> v2",
        "code changed: torch 2.13.0 -> 2.14.0",
    ]


def test_accept_refuses_a_config_change_and_a_pending_input():
    import pytest

    from hubflow.errors import NotAcceptable

    tags, lock = publish_all(static())
    with pytest.raises(NotAcceptable, match=r"cannot be accepted: config changed: lr\. Accept declares"):
        _accept(static(lr=2), tags, lock, "b")
    with pytest.raises(NotAcceptable, match=r"input x will be re-made by stage a") as info:
        _accept(static(version="2"), tags, lock, "b")
    assert "accept a first" in info.value.hint
    with pytest.raises(NotAcceptable, match="has no published result"):
        _accept(static(version="2"), tags, {}, "a")
