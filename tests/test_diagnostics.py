"""Diagnostics with real Pyro and ArviZ, against known answers."""

from __future__ import annotations

import math
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_nf
from pyro_nf.diagnostics import (
    compare_posteriors,
    diagnose,
    diagnose_weights,
    energy_distance,
    format_comparison,
    from_mcmc,
    from_posteriordb,
    plots,
    to_inference_data,
    verdict,
)
from pyro_nf.utils import arviz_compat

SHARED = Path(__file__).resolve().parents[2] / "shared" / "posteriordb"
X = torch.tensor([0.5, 1.5, -0.2, 1.1, 0.9])


def conjugate(x=X):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs_plate", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    pyro.deterministic("mu_doubled", 2 * mu)


POST_VAR = 1.0 / (1.0 + len(X))
POST_MEAN = float(X.sum()) * POST_VAR


def exact_guide(x=X, width=1.0):
    pyro.sample("mu", dist.Normal(POST_MEAN, width * math.sqrt(POST_VAR)))


def log_evidence() -> float:
    n = len(X)
    cov = torch.eye(n, dtype=torch.float64) + torch.ones(n, n, dtype=torch.float64)
    return float(dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
                 .log_prob(X.double()))


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


@pytest.mark.parametrize("s", [1.5, 3.0])
def test_psis_sign_convention_known_answer(s):
    """q = N(0, 1), p = N(0, s^2): the ratios' tail has k = 1 - 1/s^2."""
    x = np.random.default_rng(1).standard_normal(20000)
    lw = (-0.5 * x ** 2 / s ** 2 - math.log(s)) + 0.5 * x ** 2
    report = diagnose_weights(lw)
    assert abs(report.khat - (1 - 1 / s ** 2)) < 0.15, report.khat
    light = diagnose_weights(-lw)  # bounded ratios: no heavy tail
    assert light.khat < 0.3


def test_exact_guide_on_conjugate_model_hits_known_answers():
    idata = to_inference_data(conjugate, exact_guide, num_samples=4000)
    report = diagnose(idata)
    # draws alone cannot show a missed mode or missed mass: the verdict says so
    assert report.khat < 0.3 and report.verdict.startswith("usable with care: modes not run")
    with_model = diagnose(conjugate, exact_guide, num_samples=1000)
    assert with_model.verdict.startswith("reliable"), with_model.verdict
    assert [c.status for c in with_model.checks] == ["pass"] * 4
    assert report.ess > 0.95 * 4000
    # with q equal to the posterior every log weight is log p(x) exactly
    assert abs(report.iw_bound - log_evidence()) < 1e-3
    assert abs(report.elbo - log_evidence()) < 1e-3
    raw, reweighted = report.means["mu"]
    assert abs(raw - POST_MEAN) < 0.03 and abs(reweighted - POST_MEAN) < 0.03
    text = str(report)
    assert "PSIS k-hat" in text and "reliable" in text and "IW bound" in text


def test_too_narrow_guide_is_unreliable():
    idata = to_inference_data(conjugate, lambda x=X: exact_guide(x, width=0.4),
                              num_samples=4000)
    report = diagnose(idata)
    assert report.khat > 0.7 and report.verdict.startswith("unreliable: importance")
    assert report.ess < 0.5 * 4000
    assert report.iw_bound > report.elbo  # the IW bound is the tighter one


def test_verdict_thresholds():
    assert [verdict(k) for k in (0.2, 0.5, 0.69, 0.7, float("nan"))] == [
        "reliable", "usable with care", "usable with care", "unreliable", "unreliable"]


def test_inference_data_groups_dims_attrs_and_netcdf_round_trip(tmp_path):
    guide = pyro_nf.AutoFlow(conjugate, flow="iaf")
    result = pyro_nf.fit(conjugate, guide, num_steps=50, progress=False)
    idata = to_inference_data(conjugate, guide, num_samples=300, batch_size=128,
                              fit_result=result, posterior_predictive=True)
    post = idata.posterior
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (1, 300)
    assert "mu_doubled" in post and np.allclose(post["mu_doubled"], 2 * post["mu"])
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs_plate")
    assert idata.posterior_predictive["x"].shape == (1, 300, 5)
    stats = idata.sample_stats
    assert np.allclose(stats["log_weight"], stats["log_p"] - stats["log_q"])
    assert post.attrs["guide"] == "AutoFlow" and post.attrs["flow"] == "iaf"
    assert post.attrs["steps"] == 50 and post.attrs["vectorized"] == 1
    path = tmp_path / "run.nc"
    idata.to_netcdf(str(path))  # as a user would: the declared h5netcdf engine is found
    back = az.from_netcdf(str(path))
    assert np.array_equal(back.posterior["mu"].values, post["mu"].values)
    assert back.posterior.attrs["flow"] == "iaf"
    assert "mu" in az.summary(back, var_names=["mu"]).index
    assert np.isfinite(arviz_compat.loo(back)[0])


def test_pyro_autoguides_and_a_model_that_does_not_vectorize():
    for guide in (AutoNormal(conjugate), AutoMultivariateNormal(conjugate)):
        pyro_nf.fit(conjugate, guide, num_steps=20, progress=False)
        idata = to_inference_data(conjugate, guide, num_samples=100)
        assert idata.posterior["mu"].shape == (1, 100)
        assert idata.posterior.attrs["guide"] == type(guide).__name__

    def branchy(x=X):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = 1.0 if float(mu) > 0 else 2.0  # python control flow on a value
        with pyro.plate("obs_plate", len(x)):
            pyro.sample("x", dist.Normal(mu, scale), obs=x)

    guide = AutoNormal(branchy)
    guide()
    idata = to_inference_data(branchy, guide, num_samples=20)
    assert idata.posterior.attrs["vectorized"] == 0 and idata.posterior["mu"].shape == (1, 20)


def test_compare_known_distances():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4000, 2)), rng.standard_normal((4000, 2))
    assert energy_distance(a[:1500], b[:1500]) < 0.01
    df = compare_posteriors({"ref": {"z": a}, "same": {"z": b}, "shifted": {"z": b + 0.5}},
                            reference="ref")
    same, shifted = df.loc["same"], df.loc["shifted"]
    assert (same["std_mean_error"] < 0.06).all()
    assert np.allclose(shifted["std_mean_error"], 0.5, atol=0.06)
    assert np.allclose(shifted["sd_ratio"], 1.0, atol=0.05)
    # share of N(0,1) mass inside [q5 + 0.5, q95 + 0.5] of a unit normal
    expected = 0.5 * (math.erf((1.6449 + 0.5) / math.sqrt(2)) - math.erf(
        (-1.6449 + 0.5) / math.sqrt(2)))
    assert np.allclose(shifted["coverage90"], expected, atol=0.03)
    summary = df.attrs["summary"]
    assert list(summary.index)[-1] == "shifted"
    assert summary.loc["shifted", "energy_distance"] > 10 * summary.loc["same",
                                                                         "energy_distance"]
    assert "ranked" in format_comparison(df)
    with pytest.raises(ValueError, match="lacks"):
        compare_posteriors({"a": {"z": a}, "b": {"w": b}}, reference="a")
    with pytest.raises(ValueError, match="reference"):
        compare_posteriors({"a": {"z": a}}, reference="nope")


def test_mcmc_and_guide_line_up_without_renaming():
    mcmc = MCMC(NUTS(conjugate), num_samples=150, warmup_steps=100, disable_progbar=True)
    mcmc.run(X)
    nuts = from_mcmc(mcmc)
    idata = to_inference_data(conjugate, exact_guide, num_samples=1000)
    assert set(nuts.posterior.data_vars) <= set(idata.posterior.data_vars)
    df = compare_posteriors({"NUTS": nuts, "exact": idata}, reference="NUTS",
                            var_names=["mu"])
    assert df.loc[("exact", "mu"), "std_mean_error"] < 0.4
    with pytest.raises(ValueError, match="log_weight"):
        diagnose(nuts)


def test_from_posteriordb_reference_draws():
    ref = from_posteriordb(SHARED, "eight_schools-eight_schools_noncentered")
    post = ref.posterior
    assert post["theta"].shape == (10, 1000, 8) and post["mu"].shape == (10, 1000)
    assert 4.0 < float(post["mu"].mean()) < 4.8 and float(post["tau"].min()) > 0
    with pytest.raises(FileNotFoundError, match="available"):
        from_posteriordb(SHARED, "no_such_posterior")
    with pytest.raises(FileNotFoundError, match="posteriordb"):
        from_posteriordb(SHARED / "nowhere", "x")


def test_plots_return_figures_and_save(tmp_path):
    idata = to_inference_data(conjugate, exact_guide, num_samples=500)
    wide = to_inference_data(conjugate, lambda x=X: exact_guide(x, 2.0), num_samples=500)
    posts = {"exact": idata, "wide": wide}
    reports = {"exact": diagnose(idata), "wide": diagnose(wide)}
    fig = plots.plot_marginals(posts, ["mu", "mu_doubled"], path=tmp_path / "m.png",
                               title="conjugate", reports=reports)
    assert fig.axes and (tmp_path / "m.png").stat().st_size > 1000
    title = fig._suptitle.get_text()
    assert "exact: k-hat" in title and "(usable with care)" in title
    plots.plot_pair(posts, ["mu", "mu_doubled"], path=tmp_path / "p.png")
    plots.plot_elbo({"a": [3.0, 2.0, 1.5] * 40}, path=tmp_path / "e.png", smooth=10)
    assert (tmp_path / "p.png").exists() and (tmp_path / "e.png").exists()


def test_posterior_predictive_is_resampled_and_factors_are_not_data():
    def model(x=X):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("soft_constraint", -0.5 * mu ** 2)
        with pyro.plate("obs_plate", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    idata = to_inference_data(model, exact_guide, num_samples=300, posterior_predictive=True)
    pp = idata.posterior_predictive["x"].values[0]
    assert pp.std(0).min() > 0.5  # draws from the likelihood, not copies of the data
    assert list(idata.log_likelihood.data_vars) == ["x"]
    assert "soft_constraint" not in idata.observed_data
    assert np.isfinite(arviz_compat.loo(idata)[0])


def test_undeclared_data_dimension_does_not_mix_draws_with_data():
    """Without a plate, the draw dimension can broadcast against the data silently; the
    first batch is re-scored draw by draw and the loop is used instead."""
    n = 50
    data = torch.linspace(-1, 1, n)

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(mu, 1.0).expand([n]).to_event(1), obs=data)

    def guide():
        pyro.sample("mu", dist.Normal(0.0, 0.3))

    idata = to_inference_data(model, guide, num_samples=100, batch_size=n)
    mu = torch.as_tensor(idata.posterior["mu"].values[0])
    exact = (dist.Normal(0.0, 1.0).log_prob(mu)
             + dist.Normal(mu[:, None], 1.0).log_prob(data).sum(-1))
    np.testing.assert_allclose(idata.sample_stats["log_p"].values[0], exact.numpy(),
                               rtol=1e-4, atol=1e-3)
