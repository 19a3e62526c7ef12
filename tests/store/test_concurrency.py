"""Concurrent writers: a branch moves from one commit to the next, never loses one."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from hubflow.errors import CommitConflict
from hubflow.hub.base import CommitAdd
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REPO = RepoRef("model", "org/race")
CTX = mp.get_context("fork")


def _commit(root: Path, name: str, parent: str | None, barrier: Any, results: Any) -> None:
    hub = LocalHub(root)
    source = root.parent / f"src-{name}"
    source.write_bytes(name.encode() * 100_000)
    barrier.wait()
    try:
        info = hub.commit(REPO, [CommitAdd(f"{name}.bin", source)], message=name, parent_commit=parent)
        results.put((name, "ok", info.commit_id))
    except CommitConflict as err:
        results.put((name, "conflict", str(err)))


def _race(root: Path, names: list[str], parent: str | None) -> list[tuple[str, str, str]]:
    barrier, results = CTX.Barrier(len(names)), CTX.Queue()
    procs = [CTX.Process(target=_commit, args=(root, n, parent, barrier, results)) for n in names]
    for p in procs:
        p.start()
    out = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def test_same_parent_exactly_one_wins(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "store")
    hub.create_repo(REPO)
    (tmp_path / "base").write_text("base")
    base = hub.commit(REPO, [CommitAdd("base", tmp_path / "base")], message="base").commit_id
    for round_ in range(3):
        parent = hub.resolve(REPO)
        out = _race(tmp_path / "store", [f"a{round_}", f"b{round_}"], parent)
        wins = [r for r in out if r[1] == "ok"]
        losses = [r for r in out if r[1] == "conflict"]
        assert len(wins) == 1 and len(losses) == 1, out
        assert hub.resolve(REPO) == wins[0][2]
        assert hub.list_commits(REPO)[0].parents == (parent,)
        assert parent in losses[0][2]
    assert len(hub.list_commits(REPO)) == 4 and hub.list_commits(REPO)[-1].commit_id == base


def test_unchecked_commits_all_land(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path / "store")
    hub.create_repo(REPO)
    names = ["w0", "w1", "w2", "w3"]
    out = _race(tmp_path / "store", names, None)
    assert all(r[1] == "ok" for r in out)
    history = hub.list_commits(REPO)
    assert sorted(c.message for c in history) == names  # no lost update
    assert [f.path for f in hub.list_files(REPO)] == [f"{n}.bin" for n in names]
