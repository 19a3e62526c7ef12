"""Reading manifests and locks a pull request may have written (issue 9 items 7, 8, 9)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hubflow import constants
from hubflow.errors import ManifestError
from hubflow.lock import Lock
from hubflow.manifest import load_manifest
from hubflow.yamlload import load_text

STAGE = "  - {name: a, kind: python, function: 'm:f', output: 'dataset:t/a'}\n"
BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def write(tmp_path: Path, text: str | bytes, name: str = "hubflow.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_safe_load_semantics_are_kept() -> None:
    text = "a: &x [1, 2]\nb: *x\nbase: &b {k: 1}\nm: {<<: *b, j: 2}\nt: !!str 3\n"
    assert load_text(text) == {"a": [1, 2], "b": [1, 2], "base": {"k": 1}, "m": {"k": 1, "j": 2}, "t": "3"}
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_text("x: !!python/object/apply:os.system ['true']\n")


def test_a_stage_key_given_twice_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "stages:\n  - name: a\n    kind: python\n    function: m:f\n"
        "    output: dataset:t/first\n    output: dataset:t/second\n",
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert f"{path}, line 6: key 'output' appears twice in one mapping (first on line 5)" in str(err.value)
    assert "keep one `output:`" in err.value.hint


def test_stages_given_twice_is_refused_not_silently_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n" + STAGE + "stages:\n" + STAGE.replace("t/a", "t/b"))
    with pytest.raises(
        ManifestError, match=r"line 3: key .stages. appears twice in one mapping \(first on line 1\)"
    ):
        load_manifest(path)


def test_an_alias_bomb_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    path = write(
        tmp_path, "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB + "stages:\n" + STAGE
    )
    start = time.monotonic()
    with pytest.raises(ManifestError, match="aliases expand it to more than 1,000,000 values") as err:
        load_manifest(path)
    assert time.monotonic() - start < 2 and "aliases" in err.value.hint


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(Exception, match="recursive alias"):
        load_text("a: &a [1, *a]\n")


def test_a_manifest_over_the_size_cap_is_refused_without_parsing(tmp_path: Path) -> None:
    filler = "# " + "x" * 97 + "\n"
    path = write(tmp_path, "stages:\n" + STAGE + filler * (constants.MAX_MANIFEST_BYTES // 100 + 1))
    start = time.monotonic()
    with pytest.raises(ManifestError, match="is larger than 1 MiB") as err:
        load_manifest(path)
    assert time.monotonic() - start < 1 and "move large lists into files" in err.value.hint


@pytest.mark.parametrize("depth", [500, 200_000])
def test_deep_nesting_is_refused_not_crashed_on(tmp_path: Path, depth: int) -> None:
    """200,000 levels crash libyaml's C composer (segfault); 500 in `params` broke fingerprinting."""
    params = "{a: " * depth + "1" + "}" * depth
    path = write(
        tmp_path,
        f"stages:\n  - {{name: a, kind: python, function: 'm:f', output: 'dataset:t/a', params: {params}}}\n",
    )
    with pytest.raises(ManifestError, match=r"line 2: nested more than 64 levels deep") as err:
        load_manifest(path)
    assert "flatten" in err.value.hint


def test_a_binary_manifest_is_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, b"stages:\n\xff\xfe\x00binary")
    with pytest.raises(ManifestError, match=r"is not UTF-8 text \(byte 0xff at offset 8\)") as err:
        load_manifest(path)
    assert "save it as UTF-8" in err.value.hint


def test_a_hostile_lock_is_refused_like_a_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, "a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB, name="hubflow.lock")
    with pytest.raises(ManifestError, match="lock file .* is unreadable: .*aliases expand it") as err:
        Lock.read(path)
    assert "delete it" in err.value.hint
    with pytest.raises(ManifestError, match="key 'stages' appears twice"):
        Lock.read(write(tmp_path, "stages: {}\nstages: {}\n", name="b.lock"))
