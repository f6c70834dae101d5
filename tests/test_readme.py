"""The README's code blocks run, and its flows table is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyro_nf.transforms import registry

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    before = set(registry.available())
    try:
        exec(compile(BLOCKS[index], f"README block {index}", "exec"), {})
    finally:
        for name in set(registry.available()) - before:
            registry._REGISTRY.pop(name)


def test_readme_flows_table_matches_the_registry():
    table = README.split("<!-- flows-table")[1].split("-->", 1)[1].split("<!-- end")[0]
    assert table.strip() == registry.markdown_table().strip()
