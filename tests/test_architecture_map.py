"""docs/architecture.md's module map names every module of the packages, so that a new module cannot go unmapped
(the map had fallen 50 modules behind the code)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ems", "optimizer", "drivers", "controller", "simulations", "park")


def unmapped(text: str) -> list[str]:
    """The modules of :data:`PACKAGES` that ``text`` (the architecture page) names neither by path nor, in the row
    of their folder, by file name."""
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(ROOT).as_posix()
            folder = path.parent.relative_to(ROOT).as_posix() + "/"
            if f"`{rel}`" in text or any(row.startswith(f"| `{folder}`") and f"`{path.name}`" in row for row in rows):
                continue
            missing.append(rel)
    return missing


def test_every_module_is_in_the_architecture_module_map():
    assert unmapped((ROOT / "docs" / "architecture.md").read_text()) == []


def test_a_module_left_out_of_the_map_is_found():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert unmapped(text.replace("`optimizer/surplus.py`", "`optimizer/surplus`")) == ["optimizer/surplus.py"]
    assert unmapped(text.replace("`mqtt.py`", "mqtt")) == ["controller/telemetry/mqtt.py"]
