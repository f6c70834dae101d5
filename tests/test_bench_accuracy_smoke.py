"""Smoke tests of the accuracy and time-to-accuracy benchmarks' code paths on tiny budgets
(the numbers are meaningless; the pipeline, the pass rule and the tables must hold)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import accuracy, common, modes, posteriordb, time_to_accuracy


def test_accuracy_row_and_table():
    post = posteriordb.load("kidiq-kidscore_momiq", dtype=torch.float32)
    rows = [accuracy.evaluate(post, g, steps=10, draws=200)
            for g in ("AutoNormal", "AutoFlow (default)")]
    for r in rows:
        for key in ("khat", "worst_std_mean_error", "worst_sd_ratio", "min_coverage90",
                    "energy_distance", "seconds"):
            assert isinstance(r[key], float) and not math.isnan(r[key]), (key, r)
        assert r["passes"] == common.passes(r)
        assert r["passes"] or r["why"]  # every failure says which criterion it misses
        assert r["worst_mean_param"].split("[")[0] in post.reference
    text = accuracy.markdown(rows, 10, {})
    assert "| kidiq-kidscore_momiq | 3 |" in text and "AutoFlow (default)" in text


def test_pass_rule():
    good = {"khat": 0.5, "worst_std_mean_error": 0.05, "worst_sd_ratio": 1.05}
    assert common.passes(good)
    for key, bad in (("khat", 0.7), ("worst_std_mean_error", 0.1), ("worst_sd_ratio", 0.89),
                     ("worst_sd_ratio", 1.11)):
        assert not common.passes({**good, key: bad})
        assert common.why({**good, key: bad, "worst_mean_param": "a", "worst_sd_param": "b"})


def test_hier100_reference_is_the_exact_posterior():
    """The exact Gaussian posterior: its draws' mean solves the normal equations."""
    y = time_to_accuracy.hier100_data(torch.float64)
    ref = time_to_accuracy.hier100_reference(y, draws=40000)
    # conditional mean of theta_j given mu: shrinkage of the group mean towards mu
    k, s2, t2 = time_to_accuracy.K, time_to_accuracy.SIGMA ** 2, time_to_accuracy.TAU ** 2
    mu = ref["mu"].mean()
    expected = (y.sum(1).numpy() / s2 + mu / t2) / (k / s2 + 1 / t2)
    np.testing.assert_allclose(ref["theta"].mean(0), expected, atol=0.03)
    np.testing.assert_allclose(ref["theta"].std(0), (k / s2 + 1 / t2) ** -0.5, rtol=0.05,
                               atol=0.0)


@pytest.mark.slow
def test_time_to_accuracy_paths():
    y32 = time_to_accuracy.hier100_data(torch.float32)
    ref = time_to_accuracy.hier100_reference(y32.double(), draws=2000)
    af = time_to_accuracy.autoflow_time(time_to_accuracy.hier100_model(y32), ref, (5, 10))
    assert af["steps"] in (5, 10) and af["seconds"] > 0 and "khat" in af
    nu = time_to_accuracy.nuts_time(time_to_accuracy.hier100_model(y32.double()),
                                    list(ref), warmup=5, samples=10)
    assert nu["seconds"] > 0 and nu["min_bulk_ess"] > 0 and nu["extrapolated"]


def test_modes_benchmark_quick(tmp_path):
    """One mixture, one seed: the default AutoFlow misses the 0.3 mode and the check reports
    it; modes='auto' keeps both masses."""
    out = tmp_path / "modes.md"
    assert modes.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 2-D, 0.3 / 0.7 | 0 | 0.30 / 0.70 |" in text and "Worst mass error" in text
    row = json.loads(out.with_suffix(".json").read_text())["mixtures"][0]
    assert row["reported"] >= row["missed"] and row["max_error"] < 0.05


@pytest.mark.slow
def test_big_data_benchmark_quick(tmp_path):
    """The large-data benchmark's smoke run without NumPyro (not in make test): the fit on
    minibatches, the full-data criterion and the table and plot."""
    from benchmarks import big_data

    out = tmp_path / "big.md"
    assert big_data.main(["--quick", "--no-numpyro", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    (row,) = rows
    a = row["autoflow"]
    assert row["rows"] == 1000 and a["steps"] <= 300 and a["seconds"] > 0
    assert 0.5 < a["worst_sd_ratio"] < 2 and a["worst_std_mean_error"] < 1  # sane, not exact
    assert a["passes"] == common.passes(a) and "numpyro" not in row
    assert "| logistic | 1e+03 |" in out.read_text() and out.with_suffix(".png").exists()


@pytest.mark.slow
def test_mnist_sweep_quick(tmp_path):
    """The flow-length sweep's smoke run: three runs in parallel processes, the image-by-image
    gains over the plain VAE (their own standard errors), the table and the plot; then the same
    table again from the runs' folders (--from)."""
    from benchmarks import mnist

    out, work = tmp_path / "sweep.md", tmp_path / "runs"
    assert mnist.main(["--sweep", "--quick", "--jobs", "2", "--work", str(work),
                       "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["flow"], r["layers"]) for r in rows] == [("none", 0), ("planar", 2),
                                                        ("radial", 2)]
    assert all(math.isfinite(r["gain"]) and r["gain_se"] > 0 for r in rows[1:])
    assert rows[0]["gain"] == 0.0 and out.with_suffix(".png").exists()
    again = tmp_path / "again.md"
    assert mnist.main(["--sweep", "--quick", "--from", str(work), "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_a_posterior_that_does_not_load_is_a_row_with_its_reason(tmp_path):
    out = tmp_path / "accuracy.md"
    assert accuracy.main(["--only", "no_such-posterior", "--guides", "AutoNormal",
                          "--steps", "5", "--out", str(out)]) == 0
    text = out.read_text()
    assert ("| no_such-posterior | AutoNormal | error: float32: ValueError: unknown "
            "posterior") in text
    row = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert row["passes"] is False and "float32" in row["error"] and "float64" in row["error"]


def test_gp_pois_regr_loads_in_float32_or_float64():
    """Its float32 trace may fail a Cholesky at a random prior draw: then it runs in float64."""
    post, dtype, problem = accuracy.load_in_float32_or_64("gp_pois_regr-gp_pois_regr")
    assert post is not None and problem is None and dtype in ("float32", "float64")
    assert post.dim == 13
