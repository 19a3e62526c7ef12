"""Locating a `python` stage's module without executing anything (hubflow/usercode.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hubflow.errors import ManifestError
from hubflow.usercode import USER_PACKAGE, import_module, locate

MARK = "import pathlib; pathlib.Path(__file__).with_name('RAN-' + __name__).touch()\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_modules_beside_the_manifest_are_files(tmp_path: Path) -> None:
    flat = write(tmp_path / "steps.py", MARK)
    nested = write(tmp_path / "pkg" / "mod.py", MARK)
    package = write(tmp_path / "pkg" / "sub" / "__init__.py", MARK)
    write(tmp_path / "pkg" / "__init__.py", MARK)
    assert locate("steps", tmp_path).path == flat and locate("steps", tmp_path).beside_manifest
    assert locate("pkg.mod", tmp_path).path == nested
    assert locate("pkg.sub", tmp_path).path == package
    assert locate("pkg.mod", tmp_path).import_name == f"{USER_PACKAGE}.pkg.mod"
    assert not list(tmp_path.rglob("RAN-*"))


def test_an_installed_package_is_found_without_running_its_init(tmp_path: Path, monkeypatch) -> None:
    site = tmp_path / "site"
    write(site / "fakepkg_7c1e" / "__init__.py", MARK + "raise SystemExit('executed at plan time')\n")
    mod = write(site / "fakepkg_7c1e" / "mod.py", MARK)
    monkeypatch.syspath_prepend(str(site))
    found = locate("fakepkg_7c1e.mod", tmp_path / "elsewhere")
    assert found.path == mod and not found.beside_manifest and found.import_name == "fakepkg_7c1e.mod"
    assert "fakepkg_7c1e" not in sys.modules and not list(site.rglob("RAN-*"))


def test_the_manifest_folder_wins_over_an_installed_module_of_the_same_name(tmp_path: Path) -> None:
    mine = write(tmp_path / "yaml.py", "def f(inputs, output, params): pass\n")
    assert locate("yaml", tmp_path).path == mine  # not PyYAML: it is a file beside the manifest


@pytest.mark.parametrize("name", ["a..b", ".a", "a.", "1a", "a-b"])
def test_a_bad_module_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ManifestError, match="is not a dotted module name"):
        locate(name, tmp_path)


def test_import_puts_user_modules_in_the_private_package(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "stages.py", "from . import helpers\nWHO = helpers.WHO\n")
    write(tmp_path / "helpers.py", "WHO = 'user'\n")
    for name in [m for m in sys.modules if m == USER_PACKAGE or m.startswith(USER_PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    module = import_module("stages", tmp_path)
    assert module.__name__ == f"{USER_PACKAGE}.stages" and module.WHO == "user"
    import stages  # hubflow's own package is untouched

    assert Path(stages.__file__).parent.name == "stages" and sys.modules["stages"] is stages
