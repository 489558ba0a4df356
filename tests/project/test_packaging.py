"""Packaging metadata users and tools read: an SPDX license expression with its file (setuptools stops
building the TOML-table form in February 2027)."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_license_is_an_spdx_expression_with_its_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"] == "Apache-2.0"
    files = project.get("license-files") or []
    assert files and all((ROOT / f).is_file() for f in files)
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
