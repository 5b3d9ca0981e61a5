"""The README is a front page and the guides in docs/ hold together: the README is short and opens
with the two commands a newcomer needs (the second exactly what CI runs), every relative link in
the README and the guides resolves (files and #anchors), and every ``hpsearch`` command the README
shows is one that ``hpsearch --help`` lists."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300
# every markdown file a reader can reach, minus the logs of past runs kept beside their guides
PAGES = sorted(
    [README, *(ROOT / "docs").rglob("*.md"), *(ROOT / "deploy").rglob("*.md")],
    key=str,
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def code_blocks(text: str) -> list[str]:
    """The indented (4 spaces) and fenced code blocks of a markdown page, each as one string."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            blocks.append("\n".join(lines[i + 1 : j]))
            i = j + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            blocks.append("\n".join(line[4:] for line in lines[i:j]))
            i = j
        else:
            i += 1
    return blocks


def prose(text: str) -> str:
    """The page without its code (links in code are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    blocks = code_blocks(README.read_text())
    first, second = blocks[0], blocks[1]
    assert "pip install -e" in first and "hpsearch run" in first, first
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = ci.split("--- the README's test command, exactly ---", 1)[1].strip()
    assert second.strip() == test_command, (second, test_command)


def test_the_docs_have_the_guides() -> None:
    guides = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"architecture.md", "study-files.md", "workers-and-gpus.md", "results.md"} <= guides


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for m in LINK.finditer(prose(page.read_text())):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@cache
def subcommands(*path: str) -> frozenset[str]:
    """The subcommands ``hpsearch [PATH] --help`` lists in its usage line."""
    out = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *path, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"\{([a-z,_-]+)\}\s+\.\.\.", out)  # subparsers: "{a,b} ...", not choices
    return frozenset(m.group(1).split(",")) if m else frozenset()


def shown_commands(text: str) -> list[list[str]]:
    """Each ``hpsearch WORD [WORD]`` the page's code blocks run: a line (or a part of one after
    ``&&``, ``;`` or ``|``) that, after a ``$`` prompt and environment assignments, starts with
    ``hpsearch`` or a path to it (``.venv/bin/hpsearch``). Output lines are not commands."""
    found = []
    command = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:\S*/)?hpsearch((?:[ \t]+[a-z][a-z-]*)+)")
    for block in code_blocks(text):
        for line in block.splitlines():
            if line.startswith((" ", "\t")):
                continue  # output, indented
            for part in re.split(r"&&|;|\|", line.removeprefix("$ ")):
                m = command.match(part.strip())
                if m:
                    found.append(m.group(1).split()[:2])
    return found


def test_every_command_the_readme_shows_exists() -> None:
    shown = shown_commands(README.read_text())
    assert len(shown) >= 5  # the reader finds them at all
    missing = []
    for words in shown:
        nested = subcommands(words[0]) if words[0] in subcommands() else None
        if nested is None or (nested and (len(words) < 2 or words[1] not in nested)):
            missing.append(" ".join(words))
    assert not missing, f"not in hpsearch --help: {sorted(set(missing))}"


def test_the_command_reader_tells_commands_from_output() -> None:
    page = (
        "    $ hpsearch bogus --study x\n    study 'x': 3 trials\n"
        "      hpsearch engine   172.3\n\n"
        "    python3 -m venv .venv && HPSEARCH_DATA=d .venv/bin/hpsearch data prepare z.zip\n"
    )
    assert shown_commands(page) == [["bogus"], ["data", "prepare"]]
