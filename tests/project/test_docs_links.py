"""README.md and docs/**/*.md: every relative link resolves, the README stays an entry point.

A relative link ``[text](path)`` or ``[text](path#anchor)`` must name an existing file or folder (relative to
the page that holds it); an ``#anchor`` into a Markdown page must match one of its headings, slugged as GitHub
does (lower case, punctuation dropped, spaces to hyphens, ``-1``/``-2`` for repeats). Links inside code
fences and inline code are not links. Pure text parsing: well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_MAX_BYTES = 12_000

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")".
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str):
    """Yield (line number, line) outside code fences, with inline code blanked."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, _INLINE_CODE.sub("", line)


def slug(heading: str) -> str:
    """GitHub's heading anchor: markup removed, lower case, only word characters, spaces and hyphens kept."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def links(page: Path):
    for n, line in _prose_lines(page.read_text(encoding="utf-8")):
        for m in _LINK.finditer(line):
            yield n, m.group(1)
        m = _REF_DEF.match(line)
        if m:
            yield n, m.group(1)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for n, target in links(page):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and dest.is_file() and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_checker_catches_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Two words, `code`!\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# T\n[ok](docs/a.md) [ok](docs/a.md#two-words-code) [ok](#t) [web](https://example.com/x)\n"
        "`[not a link](nope.md)`\n```\n[in a fence](nope.md)\n```\n"
        "[gone](docs/missing.md) [bad anchor](docs/a.md#nope)\n",
        encoding="utf-8",
    )
    problems = broken_links(page, tmp_path)
    assert len(problems) == 2, problems
    assert "docs/missing.md: no such file" in problems[0]
    assert "no heading #nope" in problems[1]


def test_readme_is_an_entry_point():
    data = README.read_bytes()
    assert len(data) <= README_MAX_BYTES, f"README.md is {len(data)} bytes (limit {README_MAX_BYTES}): move text to docs/"
    text = data.decode("utf-8")
    first_block = text.split("```", 2)
    assert len(first_block) == 3, "README.md has no code block"
    preamble, block = first_block[0], first_block[1]
    assert [line for line in preamble.splitlines() if line.strip() and not line.startswith("# ")] == [], (
        "README.md must start with the title and the two commands"
    )
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"], commands
