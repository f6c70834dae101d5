"""Every example runs in its --quick mode, so none can rot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.common import load_example as _load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_example_quick_mode_runs(name, tmp_path):
    result = _load(name).main(["--quick", "--out", str(tmp_path)])
    assert result, f"{name}.main returned nothing to check"
    for value in result.values():
        assert math.isfinite(value)


def test_eight_schools_example_fits_eight_schools(tmp_path):
    """The example runs the demo's workflow on eight schools, not on the demo's funnel."""
    from pyro_nf.diagnostics import _arviz

    _load("eight_schools").main(["--quick", "--out", str(tmp_path)])
    posterior = _arviz.from_netcdf(tmp_path / "AutoFlow.nc").posterior
    assert {"mu", "tau", "theta"} <= set(posterior.data_vars)
