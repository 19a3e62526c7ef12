"""One contract, two backends: LocalHub directly, and HfHub -> huggingface_hub -> `hubflow serve`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from hubflow.errors import (
    CommitConflict,
    EntryNotFound,
    HubError,
    RefError,
    RefExists,
    RepoNotFound,
    RevisionNotFound,
)
from hubflow.hub.base import CommitAdd, CommitDelete, Hub
from hubflow.refs import RepoRef

BINARY = bytes(range(256)) * 40  # NUL bytes: an LFS file on the hf side
CONTENT = {
    "README.md": "# card\n",
    "config.json": '{"hidden": 8}\n',
    "weights.safetensors": BINARY,
    "data/train-00000-of-00001.parquet": b"PAR1" + b"\x00" * 100 + b"PAR1",
    "empty.txt": b"",
    "odd [name]*.txt": "brackets and stars\n",
}


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@pytest.fixture
def model(hub, ns) -> RepoRef:
    repo = RepoRef("model", f"{ns}/model")
    hub.create_repo(repo)
    return repo


def test_is_a_hub(hub) -> None:
    assert isinstance(hub, Hub)


def test_create_repo_and_exists(hub, ns) -> None:
    data = RepoRef("dataset", f"{ns}/data")
    assert not hub.repo_exists(data)
    hub.create_repo(data)
    assert hub.repo_exists(data)
    assert not hub.repo_exists(RepoRef("model", f"{ns}/data"))  # types are separate
    hub.create_repo(data, exist_ok=True)
    with pytest.raises(HubError, match="already exists"):
        hub.create_repo(data, exist_ok=False)
    assert hub.list_refs(data).branches == {} and hub.list_refs(data).tags == {}


def test_commit_folder_files_and_bytes(hub, model, files) -> None:
    info = hub.commit_folder(model, files(CONTENT), message="first")
    assert len(info.commit_id) == 40 and info.parents == ()
    assert hub.resolve(model, "main") == info.commit_id
    listed = {f.path: (f.size, f.sha256) for f in hub.list_files(model, info.commit_id)}
    listed.pop(".gitattributes", None)
    assert listed == {p: (len(c.encode() if isinstance(c, str) else c), sha(c)) for p, c in CONTENT.items()}
    for path, content in CONTENT.items():
        want = content.encode() if isinstance(content, str) else content
        assert hub.read_file(model, path, "main") == want
    with pytest.raises(EntryNotFound):
        hub.read_file(model, "missing.txt")


def test_metadata_and_message_round_trip(hub, model, files) -> None:
    meta = {"hubflow": {"stage": "sft", "inputs": {"d": "dataset:a/b@" + "0" * 40}, "n": 3, "ok": True}}
    message = "hubflow: stage sft (sft)\n\nsecond paragraph with ```fences``` and ünïcode"
    first = hub.commit_folder(model, files({"a.txt": "1"}), message=message, metadata=meta)
    second = hub.commit_folder(model, files({"a.txt": "2"}), message="plain", parent_commit=first.commit_id)
    assert first.metadata == meta and first.message == message
    history = hub.list_commits(model, "main")
    assert [c.commit_id for c in history] == [second.commit_id, first.commit_id]
    assert history[1].message == message and history[1].metadata == meta
    assert history[0].message == "plain" and history[0].metadata == {}
    assert history[0].parents == (first.commit_id,) and history[1].parents == ()
    assert second.parents == (first.commit_id,)
    assert [c.commit_id for c in hub.list_commits(model, first.commit_id)] == [first.commit_id]
    assert hub.commit_info(model, "main") == history[0]
    assert hub.commit_info(model, first.commit_id) == history[1]


def test_parent_commit_conflict_changes_nothing(hub, model, files) -> None:
    base = hub.commit_folder(model, files({"a.txt": "1"}), message="base")
    moved = hub.commit_folder(
        model, files({"a.txt": "2"}), message="other writer", parent_commit=base.commit_id
    )
    with pytest.raises(CommitConflict, match="expected the branch at"):
        hub.commit_folder(model, files({"a.txt": "3"}), message="stale", parent_commit=base.commit_id)
    assert hub.resolve(model, "main") == moved.commit_id
    assert hub.read_file(model, "a.txt") == b"2"
    with pytest.raises(CommitConflict):  # expecting a branch that does not exist yet
        hub.commit_folder(
            model, files({"b.txt": "x"}), message="new", branch="dev", parent_commit=base.commit_id
        )


def test_commit_operations_add_delete_and_replace(hub, model, files) -> None:
    src = files({"keep.txt": "k", "gone.txt": "g", "sub/x.txt": "x"})
    hub.commit_folder(model, src, message="one")
    extra = files({"new.bin": BINARY})
    info = hub.commit(
        model,
        [CommitAdd("sub/new.bin", extra / "new.bin"), CommitDelete("gone.txt")],
        message="ops",
    )
    paths = {f.path for f in hub.list_files(model, info.commit_id)} - {".gitattributes"}
    assert paths == {"keep.txt", "sub/x.txt", "sub/new.bin"}
    with pytest.raises(EntryNotFound):
        hub.commit(model, [CommitDelete("never.txt")], message="bad delete")
    replaced = hub.commit_folder(model, files({"only.txt": "o"}), message="replace")
    assert {f.path for f in hub.list_files(model, replaced.commit_id)} - {".gitattributes"} == {"only.txt"}
    with pytest.raises(HubError, match="invalid path_in_repo"):
        hub.commit(model, [CommitAdd("../escape.txt", extra / "new.bin")], message="evil")
    assert hub.resolve(model) == replaced.commit_id


def test_branches(hub, model, files) -> None:
    base = hub.commit_folder(model, files({"a.txt": "1"}), message="base")
    hub.create_branch(model, "dev", revision=base.commit_id)
    assert hub.list_refs(model).branches == {"main": base.commit_id, "dev": base.commit_id}
    on_dev = hub.commit_folder(model, files({"a.txt": "dev"}), message="dev work", branch="dev")
    assert on_dev.parents == (base.commit_id,)
    assert hub.resolve(model, "dev") == on_dev.commit_id and hub.resolve(model, "main") == base.commit_id
    with pytest.raises(RefExists, match="already exists"):  # leases rely on the class: one creator wins
        hub.create_branch(model, "dev")
    hub.create_branch(model, "feature/x")  # from main
    assert hub.resolve(model, "feature/x") == base.commit_id
    hub.delete_branch(model, "dev")
    assert "dev" not in hub.list_refs(model).branches
    with pytest.raises(HubError, match="default branch"):
        hub.delete_branch(model, "main")
    with pytest.raises(RevisionNotFound):
        hub.delete_branch(model, "dev")


def test_tags_and_resolve(hub, model, files) -> None:
    one = hub.commit_folder(model, files({"a.txt": "1"}), message="one")
    two = hub.commit_folder(model, files({"a.txt": "2"}), message="two")
    tag = "fp-" + "a" * 64
    hub.create_tag(model, tag, revision=one.commit_id)
    assert hub.resolve(model, tag) == one.commit_id
    hub.create_tag(model, tag, revision=one.commit_id, exist_ok=True)  # same target: no-op
    with pytest.raises(RefExists, match="already exists"):
        hub.create_tag(model, tag, revision="main")
    hub.create_tag(model, tag, revision="main", exist_ok=True)
    assert hub.list_refs(model).tags == {tag: two.commit_id}
    assert hub.resolve(model, one.commit_id) == one.commit_id
    hub.delete_tag(model, tag)
    assert hub.list_refs(model).tags == {}
    with pytest.raises(RevisionNotFound):
        hub.delete_tag(model, tag)
    with pytest.raises(RevisionNotFound, match="not found"):
        hub.resolve(model, "no-such-branch")
    with pytest.raises(RevisionNotFound):
        hub.resolve(model, "f" * 40)
    with pytest.raises(RefError):
        hub.resolve(model, "../main")


def test_missing_repo(hub, ns) -> None:
    ghost = RepoRef("model", f"{ns}/ghost")
    for call in (lambda: hub.resolve(ghost), lambda: hub.list_refs(ghost), lambda: hub.list_files(ghost)):
        with pytest.raises(RepoNotFound):
            call()


def test_snapshot_all_and_patterns(hub, model, files, tmp_path: Path) -> None:
    info = hub.commit_folder(model, files(CONTENT), message="snap")
    dest = hub.snapshot(model, info.commit_id, tmp_path / "all")
    got = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {".gitattributes"}
    assert got == set(CONTENT)
    for rel, content in CONTENT.items():
        path = dest / rel
        assert path.read_bytes() == (content.encode() if isinstance(content, str) else content)
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert [p.name for p in tmp_path.iterdir() if "download" in p.name] == []  # staging removed
    part = hub.snapshot(model, "main", tmp_path / "part", allow_patterns=["data/", "*.json"])
    got = {p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()}
    assert got == {"data/train-00000-of-00001.parquet", "config.json"}
    odd = hub.snapshot(model, "main", tmp_path / "odd", allow_patterns="odd*")
    assert [p.name for p in odd.iterdir()] == ["odd [name]*.txt"]
    empty = hub.snapshot(model, "main", tmp_path / "none", allow_patterns=["nothing/*"])
    assert list(empty.iterdir()) == []


def test_snapshot_of_an_older_revision(hub, model, files, tmp_path: Path) -> None:
    one = hub.commit_folder(model, files({"v.txt": "one", "w.bin": BINARY}), message="one")
    hub.commit_folder(model, files({"v.txt": "two"}), message="two")
    dest = hub.snapshot(model, one.commit_id, tmp_path / "old")
    assert (dest / "v.txt").read_text() == "one" and (dest / "w.bin").read_bytes() == BINARY
    os.chmod(dest / "v.txt", 0o644)  # replacing an earlier snapshot's file works
    hub.snapshot(model, "main", dest)
    assert (dest / "v.txt").read_text() == "two"


BAD_NEW_REFS = {  # name -> (error class, fragment of the message); refused by every backend alike
    ".": (HubError, "name '.' is not allowed"),
    "a" * 40: (HubError, "is not allowed"),
    "..": (RefError, "is not a valid branch, tag or commit id"),
    "../main": (RefError, "is not a valid"),
    "a/../b": (RefError, "is not a valid"),
    "/main": (RefError, "is not a valid"),
    "a//b": (RefError, "is not a valid"),
    "main/": (RefError, "is not a valid"),
    "x.lock": (RefError, "is not a valid"),
    "with space": (RefError, "is not a valid"),
    "tab\tname": (RefError, "is not a valid"),
    "ünï": (RefError, "is not a valid"),
    "": (RefError, "is not a valid"),
}
NEW_REF_OPS = ("commit", "create_branch", "create_tag")


@pytest.mark.parametrize("op", NEW_REF_OPS)
@pytest.mark.parametrize("name", sorted(BAD_NEW_REFS), ids=repr)
def test_both_backends_refuse_the_same_bad_ref_names(hub, model, files, op, name) -> None:
    """Issue 10 item 4: one rule for ref names (hubflow/hub/checks.py), whatever the backend."""
    base = hub.commit_folder(model, files({"a.txt": "1"}), message="base")
    before = hub.list_refs(model)
    cls, fragment = BAD_NEW_REFS[name]
    calls = {
        "commit": lambda: hub.commit_folder(model, files({"b.txt": "2"}), message="x", branch=name),
        "create_branch": lambda: hub.create_branch(model, name, revision=base.commit_id),
        "create_tag": lambda: hub.create_tag(model, name, revision=base.commit_id),
    }
    with pytest.raises(cls) as err:
        calls[op]()
    assert type(err.value) is cls and fragment in err.value.message and repr(name) in err.value.message
    assert hub.list_refs(model) == before


@pytest.mark.parametrize("name", ["..", "../main", "/main", "a//b", "x.lock", "with space", ""], ids=repr)
def test_both_backends_refuse_bad_names_when_reading_or_deleting(hub, model, files, name) -> None:
    hub.commit_folder(model, files({"a.txt": "1"}), message="base")
    for call in (
        lambda: hub.resolve(model, name),
        lambda: hub.delete_branch(model, name),
        lambda: hub.delete_tag(model, name),
        lambda: hub.list_files(model, name),
    ):
        with pytest.raises(RefError, match="is not a valid branch, tag or commit id"):
            call()
