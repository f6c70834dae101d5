"""The code blocks of the README and of docs/ run, and docs/layers.md's flows table is the
registry's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyro_nf.transforms import registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(ROOT).as_posix(), block) for page in PAGES
          for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


def test_readme_and_docs_have_python_blocks():
    assert len(BLOCKS) >= 6
    assert any(name == "README.md" for name, _ in BLOCKS)


def test_the_readme_is_a_users_page():
    """About 150 lines: the reference lives in docs/, results in benchmarks/results/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{name}-{i}" for i, (name, _) in enumerate(BLOCKS)])
def test_block_runs(index):
    name, block = BLOCKS[index]
    before = set(registry.available())
    try:
        exec(compile(block, f"{name} block {index}", "exec"), {})
    finally:
        for added in set(registry.available()) - before:
            registry.unregister(added)


def test_flows_table_matches_the_registry():
    text = (ROOT / "docs" / "layers.md").read_text()
    table = text.split("<!-- flows-table")[1].split("-->", 1)[1].split("<!-- end")[0]
    assert table.strip() == registry.markdown_table().strip()
