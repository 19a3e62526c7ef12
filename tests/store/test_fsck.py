"""fsck: finds damage, tolerates orphans, repairs only what is stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hubflow.hub.base import CommitAdd
from hubflow.hub.fsck import fsck
from hubflow.hub.local import LocalHub
from hubflow.refs import RepoRef

REPO = RepoRef("dataset", "org/d")


@pytest.fixture
def hub(tmp_path: Path) -> LocalHub:
    hub = LocalHub(tmp_path / "store")
    hub.create_repo(REPO)
    for i in range(2):
        source = tmp_path / f"f{i}"
        source.write_bytes(os.urandom(1000))
        hub.commit(REPO, [CommitAdd(f"f{i}", source)], message=str(i))
    return hub


def test_clean_store_is_ok(hub: LocalHub) -> None:
    report = fsck(hub.root)
    assert report.ok, report.summary()
    assert report.blobs_checked == 2 and report.commits_checked == 2
    assert report.orphans == []


def test_corrupt_blob(hub: LocalHub) -> None:
    entry = hub.list_files(REPO)[0]
    blob = hub.layout.blob(entry.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"rot")
    report = fsck(hub.root)
    assert not report.ok
    assert report.corrupt_blobs == [blob.relative_to(hub.root).as_posix()]


def test_missing_blob(hub: LocalHub) -> None:
    entry = hub.list_files(REPO)[0]
    hub.layout.blob(entry.sha256).unlink()
    report = fsck(hub.root)
    assert not report.ok and len(report.missing_blobs) == 1
    assert entry.sha256 in report.missing_blobs[0] and repr(entry.path) in report.missing_blobs[0]


def test_dangling_ref(hub: LocalHub) -> None:
    rdir = hub.layout.repo_dir(REPO)
    (rdir / "refs" / "tags" / "ghost").write_text("f" * 40 + "\n")
    report = fsck(hub.root)
    assert not report.ok
    assert report.dangling_refs == [f"{REPO} tag ghost -> {'f' * 40}"]


def test_corrupt_commit(hub: LocalHub) -> None:
    head = hub.resolve(REPO)
    path = hub.layout.commit_file(hub.layout.repo_dir(REPO), head)
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"1"', '"one"'))
    report = fsck(hub.root)
    assert not report.ok and len(report.corrupt_commits) == 1 and report.dangling_refs


def test_repair_removes_stale_tmp_and_orphans(hub: LocalHub) -> None:
    tmp_file = hub.layout.tmp / "123-abc.tmp"
    tmp_file.write_bytes(b"partial")
    orphan = hub.layout.objects / "ab" / ("c" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x")  # wrong name too: corrupt and orphan
    report = fsck(hub.root)
    assert len(report.orphans) == 2
    report = fsck(hub.root, repair=True)  # nothing is older than the default grace period
    assert report.removed == [] and tmp_file.exists()
    time.sleep(0.05)
    report = fsck(hub.root, repair=True, grace_seconds=0.01)
    assert sorted(report.removed) == sorted(p.relative_to(hub.root).as_posix() for p in (tmp_file, orphan))
    assert not tmp_file.exists() and not orphan.exists()
    assert fsck(hub.root).ok and fsck(hub.root).orphans == []
    # referenced blobs are never removed, however old
    assert all(hub.layout.blob(f.sha256).exists() for f in hub.list_files(REPO))


def test_removed_orphan_is_reingested(hub: LocalHub, tmp_path: Path) -> None:
    """A commit that reuses an orphan blob fsck has just removed still publishes it."""
    source = tmp_path / "again"
    source.write_bytes(b"content only an abandoned commit had")
    hub.blobs.link_sources = False
    blob = hub.blobs.ingest(source)  # an abandoned commit: blob stored, never referenced
    time.sleep(0.05)
    assert fsck(hub.root, repair=True, grace_seconds=0.01).removed
    assert not hub.layout.blob(blob.sha256).exists()
    original = hub.blobs.ingest
    hub.blobs.ingest = lambda path: original(path) if path != source else blob  # type: ignore[method-assign]
    hub.commit(REPO, [CommitAdd("again", source)], message="reuse")
    assert hub.read_file(REPO, "again") == source.read_bytes()
    assert fsck(hub.root).ok
