"""Smoke test of benchmarks/refine.py: its ``--quick`` run on funnel10 (refine and NumPyro's
NUTS; Pyro's NUTS rows are left to the benchmark, for CI's time) writes the report and its
JSON, with a refine row of finite seconds and a positive ESS (the numbers mean nothing at
these budgets). NumPyro's row runs where numpyro is installed and says "not installed" where
it is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import refine


def _row(text: str, method: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| funnel10 | 0 | {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_refine_benchmark_quick_funnel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # main sets it; restored after the test
    threads = torch.get_num_threads()
    out = tmp_path / "refine.md"
    try:
        assert refine.main(["--quick", "--posteriors", "funnel10", "--methods", "refine",
                            "NumPyro NUTS", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"refine", "NumPyro NUTS"}
    (ref,) = [r for r in rows if r["method"] == "refine"]
    assert math.isfinite(ref["seconds"]) and ref["seconds"] > 0
    assert ref["min_bulk_ess"] > 0 and ref["chains"] == 16
    assert ref["parts"]["fit"] > 0 and ref["parts"]["refine"] > 0
    assert "sd(v)" in ref["accuracy"] and "P(v<-4)" in ref["accuracy"]
    cells = _row(text, "refine")
    assert math.isfinite(float(cells[3].split()[0])) and float(cells[6]) > 0
    numpyro = _row(text, "NumPyro NUTS")
    assert (numpyro[3] == "not installed") is (not refine.numpyro_available())
