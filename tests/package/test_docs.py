"""What the code-block run cannot see by running the blocks: that every page is in the site, that
the reference shows public names, that no block is skipped without a reason, that install
commands work today, and that the ops get parameters, not state_dicts. (The blocks themselves run
as tests through pytest-codeblocks.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

codeblocks = pytest.importorskip("pytest_codeblocks")


def blocks(syntax: str):
    """(page, block) for every block of this syntax in README.md and docs/, as the plugin reads them."""
    return [(page, block) for page in PAGES for block in codeblocks.extract_from_file(page) if block.syntax == syntax]


def nav_pages(entries) -> set[str]:
    found = set()
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            found |= nav_pages(value) if isinstance(value, list) else {value}
    return found


def test_every_page_is_in_the_site_nav():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = nav_pages(config["nav"])
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from mkdocs.yml's nav (mkdocs build --strict refuses them)"
    assert in_nav - pages == set(), "nav entries without a page"


def test_the_reference_shows_public_names():
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        for path in re.findall(r"^::: (\S+)", page.read_text(), re.M):
            private = [part for part in path.split(".") if part.startswith("_")]
            assert not private, f"{page.name}: '::: {path}' shows a private path as the heading"


def test_every_skipped_block_says_why():
    all_blocks = blocks("python") + blocks("bash") + blocks("sh")
    assert blocks("python")
    for page, block in all_blocks:
        for mark in block.marks:
            if mark.startswith("pytest.mark.skip"):
                assert re.search(r"reason=\"[^\"]{10,}\"", mark), f"{page.name}:{block.lineno} skipped without a reason"


def test_install_commands_install_from_a_checkout_until_the_package_is_published():
    for page, block in blocks("bash") + blocks("sh"):
        for line in block.code.splitlines():
            command = line.split("#")[0]
            assert not re.search(r"pip install\s+(-\S+\s+)*['\"]?fomo-core", command), (
                f"{page.name}:{block.lineno}: {line.strip()!r} installs fomo-core from the index, where it is not yet"
            )


OPS = r"(?:fomo_step|compute_weights|first_order_scores|apply_update|candidate_distances|plan)"


def test_the_ops_get_parameters_not_state_dicts():
    for page, block in blocks("python"):
        code = block.code
        state_dicts = set(re.findall(r"^\s*(\w+)\s*=\s*[\w.\[\]]+\.state_dict\(\)", code, re.M))
        for first in re.findall(rf"\b{OPS}\(\s*([^,)]+)", code):
            assert "state_dict()" not in first and first.strip() not in state_dicts, (
                f"{page.name}:{block.lineno}: an op gets a state_dict ({first.strip()}): pass the parameters"
            )
