"""Leases in the hub (hubflow/lease.py) on both backends: LocalHub, and HfHub -> `hubflow serve`."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import asdict

import pytest

from hubflow import lease
from hubflow.lease import Owner, claim, is_stale, lease_branch, read_lease, take_over, try_acquire
from hubflow.refs import RepoRef

FP = "ab" * 32


@pytest.fixture
def repo(hub, ns) -> RepoRef:
    return RepoRef("dataset", f"{ns}/out")


def test_one_claim_wins_and_the_lease_names_its_owner(hub, repo) -> None:
    first = try_acquire(hub, repo, "s", FP, timeout=60)
    assert first is not None
    assert try_acquire(hub, repo, "s", FP, timeout=60) is None  # held
    head, owner = read_lease(hub, repo, FP)
    assert head == first.head and owner.token == first.owner.token and owner.stage == "s"
    branches = hub.list_refs(repo).branches
    assert lease_branch(FP) in branches and not any(b.startswith(lease.CLAIM_PREFIX) for b in branches)
    assert "main" not in branches  # a lease never touches main
    assert first.renew() and read_lease(hub, repo, FP)[0] == first.head != head  # heartbeat moved it
    first.release()
    assert read_lease(hub, repo, FP) is None
    again = try_acquire(hub, repo, "s", FP, timeout=60)  # free again
    assert again is not None
    again.release()


def test_racing_claims_have_exactly_one_winner(hub, repo, files) -> None:
    hub.create_repo(repo)
    hub.commit_folder(repo, files({"a.txt": "1"}), message="an earlier result")  # main exists
    barrier = threading.Barrier(4)
    won: list[lease.Lease] = []

    def race() -> None:
        barrier.wait()
        got = try_acquire(hub, repo, "s", FP, timeout=60)
        if got is not None:
            won.append(got)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert hub.list_files(repo, "main")[0].path in {"a.txt", ".gitattributes"}  # main untouched
    won[0].release()


def test_a_taken_over_lease_is_lost_by_its_old_owner(hub, repo) -> None:
    old = try_acquire(hub, repo, "s", FP, timeout=60)
    new = take_over(hub, repo, "s", FP, old.head, timeout=60)
    assert new is not None
    assert take_over(hub, repo, "s", FP, old.head, timeout=60) is None  # a second taker loses
    assert not old.renew() and old.lost  # its heartbeat finds the branch moved
    old.release()  # not its lease any more: nothing is deleted
    assert read_lease(hub, repo, FP)[1].token == new.owner.token
    new.release()
    assert read_lease(hub, repo, FP) is None


def ghost(heartbeat: float, host: str = "elsewhere", pid: int = 1) -> Owner:
    return Owner("t" * 32, host, pid, None, "s", FP, heartbeat)


def test_staleness_rules() -> None:
    here = socket.gethostname()
    live = {"alive": lambda pid, start: True, "host": here, "timeout": 60.0}
    assert is_stale(ghost(1000.0), now=1030.0, unchanged_for=30.0, **live) is None
    assert "heartbeat is 61s old" in is_stale(ghost(1000.0), now=1061.0, unchanged_for=0.0, **live)
    # a waiter whose clock is behind still sees the lease stop moving
    assert "not moved for 61s" in is_stale(ghost(5000.0), now=1000.0, unchanged_for=61.0, **live)
    dead = {**live, "alive": lambda pid, start: False}
    assert "is gone" in is_stale(ghost(1000.0, host=here), now=1000.0, unchanged_for=0.0, **dead)
    assert is_stale(ghost(1000.0), now=1000.0, unchanged_for=0.0, **dead) is None  # another host: wait


def plant(hub, repo: RepoRef, owner: Owner, tmp_path) -> None:
    """A lease left behind by a launcher that crashed."""
    hub.create_repo(repo, exist_ok=True)
    folder = tmp_path / "ghost"
    folder.mkdir()
    (folder / lease.LEASE_FILE).write_text(json.dumps(asdict(owner)))
    hub.commit_folder(repo, folder, message="ghost lease", branch=lease_branch(FP))


def test_claim_waits_then_reuses_what_the_holder_published(hub, repo) -> None:
    holder = try_acquire(hub, repo, "s", FP, timeout=60)
    said: list[str] = []
    result = {"output": f"{repo}@{'c' * 40}"}
    polls = iter([None, None, None, result])
    got = claim(hub, repo, "s", FP, published=lambda: next(polls), echo=said.append, timeout=60, poll=0.01)
    assert got == (None, result)
    assert len(said) == 1 and said[0].startswith("waiting: ") and "is running it" in said[0]
    holder.release()


def test_claim_takes_over_a_stale_lease(hub, repo, tmp_path) -> None:
    plant(hub, repo, ghost(heartbeat=0.0), tmp_path)  # its last heartbeat: 1970
    said: list[str] = []
    held, found = claim(hub, repo, "s", FP, published=lambda: None, echo=said.append, timeout=60, poll=0.01)
    assert found is None and held is not None
    assert any("took over the stale lease of elsewhere pid 1" in s for s in said)
    assert read_lease(hub, repo, FP)[1].token == held.owner.token
    held.release()


def test_the_heartbeat_thread_renews_until_release(local_hub, tmp_path) -> None:
    repo = RepoRef("dataset", "t/beat")
    held = try_acquire(local_hub, repo, "s", FP, timeout=2.0)  # a beat every 0.2 s
    first = held.head
    held.start()
    stop = threading.Event()
    stop.wait(0.7)
    assert read_lease(local_hub, repo, FP)[0] != first
    held.release()
    assert read_lease(local_hub, repo, FP) is None
