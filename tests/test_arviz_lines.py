"""The ArviZ adapter on whichever line is installed (0.x on Python 3.11, 1.x on 3.12; CI runs
both): k-hat where the Pareto fit breaks down, attrs, netCDF, LOO, ESS/MCSE and ArviZ's own
plotting on pyro-nf's InferenceData."""

from __future__ import annotations

import math
import sys

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf.diagnostics import diagnose, diagnose_weights, to_inference_data, verdict
from pyro_nf.utils import arviz_compat

RNG = np.random.default_rng(3)
X = RNG.standard_normal(4000)


@pytest.mark.parametrize("spread", [0.0, 1e-12, 4e-6, 2e-4])
def test_khat_of_weights_equal_up_to_rounding_is_minus_inf(spread):
    report = diagnose_weights(-3.0 + spread * X)
    assert report.khat == -math.inf and report.verdict == "reliable"
    assert report.ess == pytest.approx(4000, rel=1e-3)
    assert "-inf" in str(report)


def test_khat_of_float32_rounded_ratios_is_reliable_on_both_lines():
    """log p - log q of size 1e5 in float32 is spaced by 0.008: ties the Pareto fit cannot
    read (ArviZ 0.x gave inf, 1.x NaN); the weights are within 1.1x of their mean."""
    lw = (1e5 + 0.01 * X).astype(np.float32).astype(np.float64)
    assert np.unique(lw).size <= 10
    report = diagnose_weights(lw)
    assert report.verdict == "reliable" and report.khat < 0.5


@pytest.mark.parametrize("lw", [1e3 * X, 1e5 * X, np.r_[np.zeros(3999), 1e6],
                                np.r_[np.zeros(3999), 50.0]],
                         ids=["spread-1e3", "spread-1e5", "one-at-1e6", "one-at-50"])
def test_khat_of_weights_dominated_by_a_few_draws_is_inf(lw):
    report = diagnose_weights(lw)
    assert report.khat == math.inf and report.verdict == "unreliable"
    assert report.ess < 2.0


def test_khat_is_unchanged_where_the_fit_is_well_posed():
    lw = 0.3 * X
    smoothed, khat = arviz_compat.psis(lw)
    assert -0.5 < khat < 0.3
    assert np.isclose(np.logaddexp.reduce(smoothed), 0.0)
    assert verdict(-math.inf) == "reliable" and verdict(math.inf) == "unreliable"


def test_ess_and_mcse_of_independent_draws():
    draws = RNG.standard_normal((2, 2000, 3))
    ess = arviz_compat.ess(draws)
    assert ess.shape == (3,) and np.all(np.abs(ess / 4000 - 1) < 0.15)
    mcse = arviz_compat.mcse(draws[..., 0])
    assert mcse == pytest.approx(draws[..., 0].std() / math.sqrt(4000), rel=0.15)
    sticky = np.repeat(RNG.standard_normal((1, 400)), 10, axis=1)  # each draw 10 times
    assert float(arviz_compat.ess(sticky)) < 800


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    n = len(x)
    pyro.sample("mu", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))


@pytest.fixture
def idata():
    pyro.set_rng_seed(0)
    return to_inference_data(model, guide, torch.tensor([0.3, -1.2, 0.8, 2.0]), num_samples=500)


def test_attrs_label_netcdf_and_loo(idata, tmp_path):
    attrs = arviz_compat.attrs(idata)
    assert attrs["guide"] == "function" and attrs["arviz_version"] == az.__version__
    assert "function" in str(diagnose(idata))
    path = arviz_compat.to_netcdf(idata, tmp_path / "run.nc")
    back = arviz_compat.from_netcdf(path)
    assert set(arviz_compat.groups(back)) == set(arviz_compat.groups(idata))
    assert np.array_equal(arviz_compat.group(back, "posterior")["mu"].values,
                          arviz_compat.group(idata, "posterior")["mu"].values)
    assert arviz_compat.attrs(back)["guide"] == "function"
    assert diagnose(back).khat == diagnose(idata).khat
    elpd, se = arviz_compat.loo(back)
    assert np.isfinite(elpd) and se > 0


def test_arviz_own_plots_and_loo_take_our_inference_data(idata):
    """What a user of either line calls by ArviZ's own names."""
    import matplotlib

    matplotlib.use("Agg")
    if arviz_compat.ARVIZ_MAJOR >= 1:
        import arviz_stats

        assert np.isfinite(arviz_stats.loo(idata).elpd)
        assert az.plot_dist(idata, var_names=["mu"]) is not None
        assert az.plot_khat(az.loo(idata, pointwise=True)) is not None
    else:
        assert np.isfinite(az.loo(idata).elpd_loo)
        assert az.plot_posterior(idata, var_names=["mu"]) is not None
        assert az.plot_khat(az.loo(idata, pointwise=True)) is not None
    assert "mu" in str(az.summary(idata, var_names=["mu"]))


def test_each_lane_runs_the_arviz_line_its_python_resolves():
    """CI's two lanes: Python 3.11 resolves ArviZ 0.x and Python >= 3.12 ArviZ 1.x."""
    assert arviz_compat.ARVIZ_MAJOR == (1 if sys.version_info >= (3, 12) else 0)
