"""LocalHub: the Hub protocol over a folder."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from hubflow.errors import (
    CommitConflict,
    CorruptObject,
    EntryNotFound,
    HubError,
    RefError,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.hub.base import CommitAdd, CommitDelete, Hub
from hubflow.hub.local import LocalHub, sha256_file
from hubflow.refs import RepoRef

MODEL = RepoRef("model", "org/model")
DATA = RepoRef("dataset", "org/data")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


@pytest.fixture
def hub(tmp_path: Path) -> LocalHub:
    hub = LocalHub(tmp_path / "store")
    hub.create_repo(MODEL)
    return hub


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return tmp_path / "src"


def test_is_a_hub(hub: LocalHub) -> None:
    assert isinstance(hub, Hub)


def test_create_repo(hub: LocalHub) -> None:
    assert hub.repo_exists(MODEL)
    assert not hub.repo_exists(DATA)
    hub.create_repo(MODEL)  # exist_ok by default
    with pytest.raises(HubError, match="already exists"):
        hub.create_repo(MODEL, exist_ok=False)
    assert hub.list_refs(MODEL).branches == {}


def test_commit_and_read(hub: LocalHub, src: Path) -> None:
    info = hub.commit(
        MODEL,
        [
            CommitAdd("config.json", write(src / "c", "{}")),
            CommitAdd("w/a.bin", write(src / "a", b"\0" * 10)),
        ],
        message="first",
        metadata={"hubflow": {"stage": "train"}},
    )
    assert len(info.commit_id) == 40 and info.parents == ()
    assert hub.resolve(MODEL) == hub.resolve(MODEL, "main") == info.commit_id
    assert hub.read_file(MODEL, "config.json") == b"{}"
    files = hub.list_files(MODEL)
    assert [(f.path, f.size) for f in files] == [("config.json", 2), ("w/a.bin", 10)]
    assert files[1].sha256 == sha256_file(src / "a")


def test_history_newest_first(hub: LocalHub, src: Path) -> None:
    ids = []
    for i in range(3):
        info = hub.commit(
            MODEL, [CommitAdd(f"f{i}", write(src / f"f{i}", str(i)))], message=f"m{i}", metadata={"i": i}
        )
        ids.append(info.commit_id)
    history = hub.list_commits(MODEL)
    assert [c.commit_id for c in history] == ids[::-1]
    assert [c.message for c in history] == ["m2", "m1", "m0"]
    assert [c.metadata for c in history] == [{"i": 2}, {"i": 1}, {"i": 0}]
    assert history[0].parents == (ids[1],)
    assert [c.commit_id for c in hub.list_commits(MODEL, ids[1])] == ids[1::-1]
    assert [f.path for f in hub.list_files(MODEL)] == ["f0", "f1", "f2"]  # trees accumulate


def test_resolve_branch_tag_commit_prefix(hub: LocalHub, src: Path) -> None:
    first = hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1").commit_id
    second = hub.commit(MODEL, [CommitAdd("a", write(src / "b", "2"))], message="2").commit_id
    hub.create_tag(MODEL, "v1/rc", revision=first)
    hub.create_branch(MODEL, "dev/x", revision="v1/rc")
    assert hub.resolve(MODEL, "v1/rc") == first
    assert hub.resolve(MODEL, "dev/x") == first
    assert hub.resolve(MODEL, second) == second
    assert hub.resolve(MODEL, second[:7]) == second
    assert hub.read_file(MODEL, "a", "v1/rc") == b"1"
    assert hub.read_file(MODEL, "a") == b"2"


def test_replace_tree_and_delete(hub: LocalHub, src: Path) -> None:
    hub.commit(
        MODEL, [CommitAdd("a", write(src / "a", "1")), CommitAdd("b", write(src / "b", "2"))], message="1"
    )
    hub.commit(MODEL, [CommitDelete("a")], message="2")
    assert [f.path for f in hub.list_files(MODEL)] == ["b"]
    hub.commit(MODEL, [CommitAdd("c", write(src / "c", "3"))], message="3", replace_tree=True)
    assert [f.path for f in hub.list_files(MODEL)] == ["c"]
    with pytest.raises(EntryNotFound, match="'zzz'"):
        hub.commit(MODEL, [CommitDelete("zzz")], message="4")


def test_commit_folder(hub: LocalHub, src: Path) -> None:
    hub.commit(MODEL, [CommitAdd("old", write(src / "x", "x"))], message="1")
    folder = src / "out"
    write(folder / "model.safetensors", b"w" * 100)
    write(folder / "sub" / "deep" / "t.json", "{}")
    (folder / "empty").mkdir()
    info = hub.commit_folder(MODEL, folder, message="out")
    assert [f.path for f in hub.list_files(MODEL, info.commit_id)] == ["model.safetensors", "sub/deep/t.json"]
    assert len(hub.list_commits(MODEL)) == 2


def test_commit_folder_rejects_symlinks(hub: LocalHub, src: Path) -> None:
    write(src / "out" / "real", "r")
    os.symlink(src / "out" / "real", src / "out" / "link")
    with pytest.raises(HubError, match="'link' is a symlink"):
        hub.commit_folder(MODEL, src / "out", message="x")
    assert hub.list_refs(MODEL).branches == {}


def test_dedup_across_repos_and_recommit(hub: LocalHub, src: Path, tmp_path: Path) -> None:
    hub.create_repo(DATA)
    payload = os.urandom(4096)
    hub.commit(MODEL, [CommitAdd("w.bin", write(src / "a", payload))], message="m")
    hub.commit(DATA, [CommitAdd("data/w.bin", write(src / "b", payload))], message="d")
    blobs = blob_files(tmp_path / "store")
    assert len(blobs) == 1
    before = [(p, p.stat().st_ino, p.stat().st_size) for p in blobs]
    hub.commit(MODEL, [CommitAdd("again.bin", write(src / "c", payload))], message="again")
    assert [(p, p.stat().st_ino, p.stat().st_size) for p in blob_files(tmp_path / "store")] == before
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_copy_mode_keeps_sources(tmp_path: Path, src: Path) -> None:
    hub = LocalHub(tmp_path / "store", link_sources=False)
    hub.create_repo(MODEL)
    source = write(src / "a", b"abc")
    hub.commit(MODEL, [CommitAdd("a", source)], message="m")
    assert source.stat().st_nlink == 1 and source.stat().st_mode & stat.S_IWUSR
    (blob,) = blob_files(tmp_path / "store")
    assert blob.stat().st_ino != source.stat().st_ino and blob.read_bytes() == b"abc"
    assert not blob.stat().st_mode & 0o222


def test_link_mode_links_sources(hub: LocalHub, src: Path, tmp_path: Path) -> None:
    source = write(src / "a", b"abc")
    hub.commit(MODEL, [CommitAdd("a", source)], message="m")
    (blob,) = blob_files(tmp_path / "store")
    assert blob.stat().st_ino == source.stat().st_ino


def test_branches_and_tags(hub: LocalHub, src: Path) -> None:
    first = hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1").commit_id
    second = hub.commit(MODEL, [CommitAdd("a", write(src / "b", "2"))], message="2").commit_id
    hub.create_branch(MODEL, "dev")  # from main's head
    hub.create_tag(MODEL, "fp-abc", revision=first)
    refs = hub.list_refs(MODEL)
    assert refs.branches == {"main": second, "dev": second} and refs.tags == {"fp-abc": first}
    with pytest.raises(HubError, match="already exists"):
        hub.create_tag(MODEL, "fp-abc", revision=second)
    hub.create_tag(MODEL, "fp-abc", revision=second, exist_ok=True)
    assert hub.resolve(MODEL, "fp-abc") == second
    with pytest.raises(HubError, match="already exists"):
        hub.create_branch(MODEL, "dev")
    hub.commit(MODEL, [CommitAdd("b", write(src / "c", "3"))], message="on dev", branch="dev")
    assert hub.resolve(MODEL) == second != hub.resolve(MODEL, "dev")
    hub.delete_branch(MODEL, "dev")
    hub.delete_tag(MODEL, "fp-abc")
    assert hub.list_refs(MODEL) == type(refs)(branches={"main": second}, tags={})
    with pytest.raises(HubError, match="default branch"):
        hub.delete_branch(MODEL, "main")
    with pytest.raises(RevisionNotFound):
        hub.delete_tag(MODEL, "fp-abc")
    with pytest.raises(RevisionNotFound):
        hub.delete_branch(MODEL, "dev")


@pytest.mark.parametrize("name", ["../x", "a/../../b", "-/..", ".lock/a.lock", "a b"])
def test_bad_ref_names(hub: LocalHub, src: Path, name: str) -> None:
    hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1")
    with pytest.raises((RefError, HubError)):
        hub.create_tag(MODEL, name, revision="main")
    with pytest.raises((RefError, HubError)):
        hub.create_branch(MODEL, name)


def test_unknown_repo(tmp_path: Path, src: Path) -> None:
    hub = LocalHub(tmp_path / "store")
    with pytest.raises(RepoNotFound, match="create_repo"):
        hub.commit(DATA, [CommitAdd("a", write(src / "a", "1"))], message="x")
    with pytest.raises(RepoNotFound):
        hub.resolve(DATA)


def test_unknown_revision_lists_refs(hub: LocalHub, src: Path) -> None:
    with pytest.raises(RevisionNotFound, match="no commits yet"):
        hub.resolve(MODEL)
    hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1")
    hub.create_tag(MODEL, "v1", revision="main")
    with pytest.raises(RevisionNotFound, match="'nope'") as err:
        hub.resolve(MODEL, "nope")
    assert "main" in err.value.hint and "v1" in err.value.hint
    with pytest.raises(RevisionNotFound):
        hub.resolve(MODEL, "0" * 40)


def test_unknown_file(hub: LocalHub, src: Path) -> None:
    hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1")
    with pytest.raises(EntryNotFound, match=r"'b' is not in model:org/model@main"):
        hub.read_file(MODEL, "b")


@pytest.mark.parametrize(
    "path", ["../x", "/abs", "a//b", "a/./b", "a\\b", "", "a/", ".git/config", "x/.GIT/y"]
)
def test_bad_path_in_repo(hub: LocalHub, src: Path, path: str) -> None:
    with pytest.raises(HubError, match="invalid path_in_repo") as err:
        hub.commit(MODEL, [CommitAdd(path, write(src / "a", "1"))], message="x")
    assert repr(path) in str(err.value)
    assert hub.list_refs(MODEL).branches == {}


def test_file_and_folder_clash(hub: LocalHub, src: Path) -> None:
    hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1")
    with pytest.raises(HubError, match="needs 'a' to be a folder"):
        hub.commit(MODEL, [CommitAdd("a/b", write(src / "b", "2"))], message="2")


def test_parent_commit_conflict(hub: LocalHub, src: Path) -> None:
    with pytest.raises(CommitConflict, match="does not exist"):
        hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="x", parent_commit="a" * 40)
    first = hub.commit(MODEL, [CommitAdd("a", write(src / "a", "1"))], message="1", parent_commit=None)
    second = hub.commit(
        MODEL, [CommitAdd("a", write(src / "b", "2"))], message="2", parent_commit=first.commit_id
    )
    with pytest.raises(CommitConflict, match=first.commit_id) as err:
        hub.commit(MODEL, [CommitAdd("a", write(src / "c", "3"))], message="3", parent_commit=first.commit_id)
    assert second.commit_id in str(err.value) and "retry" in err.value.hint
    assert hub.resolve(MODEL) == second.commit_id
    with pytest.raises(HubError, match="40-hex"):
        hub.commit(MODEL, [], message="x", parent_commit=second.commit_id[:7])


def test_snapshot(hub: LocalHub, src: Path, tmp_path: Path) -> None:
    folder = src / "out"
    write(folder / "model.safetensors", b"w" * 1000)
    write(folder / "config.json", "{}")
    write(folder / "extra" / "big.bin", b"b" * 1000)
    hub.commit_folder(MODEL, folder, message="out")
    dest = tmp_path / "snap"
    dest.mkdir()
    write(dest / "config.json", "stale")
    assert hub.snapshot(MODEL, "main", dest, allow_patterns=["*.json", "*.safetensors"]) == dest
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "config.json",
        "model.safetensors",
    ]
    assert (dest / "config.json").read_text() == "{}"
    blobs = tmp_path / "store" / "objects" / "sha256"
    for path in dest.iterdir():
        st = path.stat()
        assert not st.st_mode & 0o222  # read-only
        assert st.st_nlink == 1  # a private copy: no inode shared with the store
        digest = sha256_file(path)
        assert (blobs / digest[:2] / digest[2:]).stat().st_ino != st.st_ino
    linked = hub.snapshot(MODEL, "main", tmp_path / "linked", allow_patterns=["*.json"], link=True)
    st = (linked / "config.json").stat()
    assert not st.st_mode & 0o222 and st.st_nlink > 1  # link=True: a hardlink to the blob
    assert (blobs / sha256_file(linked / "config.json")[:2]).is_dir()
    full = hub.snapshot(MODEL, "main", tmp_path / "full")
    assert (full / "extra" / "big.bin").read_bytes() == b"b" * 1000
    assert not [p for p in full.rglob("*") if p.name.startswith(".hubflow-tmp")]
    hub.snapshot(MODEL, "main", full)  # again, over itself


def test_snapshot_detects_corruption(hub: LocalHub, src: Path, tmp_path: Path) -> None:
    hub.commit(MODEL, [CommitAdd("w.bin", write(src / "a", b"good" * 100))], message="1")
    (blob,) = blob_files(tmp_path / "store")
    blob.chmod(0o644)
    blob.write_bytes(b"evil" * 100)
    with pytest.raises(CorruptObject, match="w.bin") as err:
        hub.snapshot(MODEL, "main", tmp_path / "snap")
    assert str(blob) in str(err.value) and "hubflow fsck" in err.value.hint
    with pytest.raises(CorruptObject):
        hub.read_file(MODEL, "w.bin")
    blob.unlink()
    with pytest.raises(CorruptObject, match="missing"):
        hub.snapshot(MODEL, "main", tmp_path / "snap")


def test_metadata_must_be_json(hub: LocalHub) -> None:
    with pytest.raises(HubError, match="JSON"):
        hub.commit(MODEL, [], message="x", metadata={"x": object()})


def test_copy_mode_detects_source_changed(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hubflow.hub.local.files as local

    hub = LocalHub(tmp_path / "store", link_sources=False)
    hub.create_repo(MODEL)
    source = write(src / "a", b"before")
    real_hash = local.hash_file

    def hash_then_edit(path: Path) -> tuple[str, int]:
        result = real_hash(path)
        time.sleep(0.01)
        write(Path(path), b"after!")
        return result

    monkeypatch.setattr(local, "hash_file", hash_then_edit)
    with pytest.raises(HubError, match="changed while it was being committed"):
        hub.commit(MODEL, [CommitAdd("a", source)], message="x")
    assert blob_files(tmp_path / "store") == [] and hub.list_refs(MODEL).branches == {}


def test_copy_without_copy_file_range(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    hub = LocalHub(tmp_path / "store", link_sources=False)
    hub.create_repo(MODEL)
    payload = os.urandom(3 * (1 << 20) + 5)
    hub.commit(MODEL, [CommitAdd("a", write(src / "a", payload))], message="x")
    assert hub.read_file(MODEL, "a") == payload


def test_writing_to_a_snapshot_cannot_reach_the_store_even_as_root(
    hub: LocalHub, src: Path, tmp_path: Path
) -> None:
    """Issue 9 item 4: a snapshot file is a private copy; root ignores its read-only mode."""
    from hubflow.hub.fsck import fsck

    hub.commit(MODEL, [CommitAdd("data.txt", write(src / "a", b"stored" * 100))], message="1")
    dest = hub.snapshot(MODEL, "main", tmp_path / "snap")
    target = dest / "data.txt"
    os.chmod(target, 0o644)  # what a careless stage (or root, without even this) can do
    with open(target, "r+b") as f:
        f.write(b"CHANGED")
    assert target.read_bytes().startswith(b"CHANGED")
    assert hub.read_file(MODEL, "data.txt") == b"stored" * 100
    assert fsck(hub.root).ok


def test_commit_objects_use_the_one_canonical_json(hub: LocalHub, src: Path) -> None:
    """Issue 10 item 4: the store and the fingerprint serialise the same data to the same bytes."""
    import json

    from hubflow.fingerprint import canonical_json

    info = hub.commit(
        MODEL, [CommitAdd("a", write(src / "a", "1"))], message="ünïcode ✓", metadata={"k": "é"}
    )
    path = hub.layout.commit_file(hub.layout.repo_dir(MODEL), info.commit_id)
    data = path.read_bytes()
    assert data == canonical_json(json.loads(data)) and data.isascii()
