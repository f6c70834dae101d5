"""Every example runs in its --quick mode, so none can rot."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_example_quick_mode_runs(name, tmp_path):
    result = _load(name).main(["--quick", "--out", str(tmp_path)])
    assert result, f"{name}.main returned nothing to check"
    for value in result.values():
        assert math.isfinite(value)
