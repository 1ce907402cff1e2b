"""The wheel holds every package: ``pyproject.toml`` lists packages by hand (the source tree maps ``compiler/`` and
``runtime/`` into ``lmqc``), and an editable install hides a missing one (it serves the directories)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = setup.get("package-dir", {})
    found = set()
    for name in listed | set(dirs):
        if "." in name and name.rsplit(".", 1)[0] in dirs and name not in dirs:
            continue  # a subpackage: reached from its mapped parent below
        base = ROOT / dirs.get(name, name.replace(".", "/"))
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((name, *rel)))
    assert found, "no package found"
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
