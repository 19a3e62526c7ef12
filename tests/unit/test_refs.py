import pytest

from hubflow.errors import RefError
from hubflow.refs import Ref, RepoRef, parse_ref, parse_repo, validate_repo_id


def test_parse_and_format_round_trip():
    ref = parse_ref("model:my-org/base.v2@" + "a" * 40)
    assert ref == Ref("model", "my-org/base.v2", "a" * 40)
    assert ref.pinned
    assert str(ref) == "model:my-org/base.v2@" + "a" * 40
    assert str(parse_ref("dataset:ns/name")) == "dataset:ns/name"
    assert parse_ref("dataset:ns/name@main").revision == "main"
    assert not parse_ref("dataset:ns/name@main").pinned
    assert parse_ref("model:a/b").repo == RepoRef("model", "a/b")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("space:a/b", "unknown repo type"),
        ("model:ab", "exactly one '/'"),
        ("model:a/b/c", "exactly one '/'"),
        ("model:a/b--c", "'--' and '..'"),
        ("model:a/b..c", "'--' and '..'"),
        ("model:a/-b", "must start and end"),
        ("model:a/b.", "must start and end"),
        ("model:a/b c", "may only hold"),
        ("model:" + "a" * 50 + "/" + "b" * 50, "96"),
        ("model:a/b@", "empty revision"),
        ("model:a/b@../../etc", "not a valid branch"),
        ("model:a/b@/abs", "not a valid branch"),
        ("model:a/b@x;rm", "not a valid branch"),
        ("a/b", "is not a ref"),
    ],
)
def test_bad_refs_are_refused_with_a_reason(text, fragment):
    with pytest.raises(RefError) as exc:
        parse_ref(text)
    assert fragment in str(exc.value)


def test_output_refs_carry_no_revision():
    assert parse_repo("dataset:demo/clean") == RepoRef("dataset", "demo/clean")
    with pytest.raises(RefError, match="names a repo, not a revision"):
        parse_repo("dataset:demo/clean@main")


def test_repo_id_length_limit_is_inclusive():
    assert validate_repo_id("a" * 47 + "/" + "b" * 48)  # 96 chars
    with pytest.raises(RefError):
        validate_repo_id("a" * 48 + "/" + "b" * 48)  # 97 chars
