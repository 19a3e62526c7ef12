import pytest

from hubflow.errors import ManifestError
from hubflow.lock import Lock, LockEntry


def entry(fp="f" * 64):
    return LockEntry(
        "python",
        fp,
        {"x": "dataset:a/b@" + "1" * 40},
        {"output": "dataset:a/c@" + "2" * 40},
        {"config": {"k": 1}},
    )


def test_round_trip_and_prune(tmp_path):
    lock = Lock(tmp_path / "hubflow.lock")
    lock.record("s1", entry())
    lock.record("s2", entry("e" * 64))
    again = Lock.read(tmp_path / "hubflow.lock")
    assert again.stages["s1"].to_dict() == entry().to_dict()
    again.record("s1", entry("d" * 64), keep={"s1"})
    assert set(Lock.read(tmp_path / "hubflow.lock").stages) == {"s1"}
    assert (tmp_path / "hubflow.lock").read_text().startswith("# hubflow.lock")
    assert not list(tmp_path.glob(".hubflow.lock.*")), "no temp file left behind"


def test_missing_lock_is_empty(tmp_path):
    assert Lock.read(tmp_path / "none.lock").stages == {}


def test_corrupt_lock_says_how_to_recover(tmp_path):
    (tmp_path / "hubflow.lock").write_text("stages: [1, 2")
    with pytest.raises(ManifestError, match=r"(?s)unreadable.*fix: restore it"):
        Lock.read(tmp_path / "hubflow.lock")
