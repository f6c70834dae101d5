"""refine (pyro_nf.training.refinement) and its sampler (pyro_nf.training.hmc), each against a
known answer: a funnel whose marginals are known, a Student-t target, an exact guide, the
default fit's last stage, and the sampler's own pieces on a Gaussian."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroParam

import pyro_nf
from pyro_nf import AutoFlow, fit, refine
from pyro_nf.models import neals_funnel
from pyro_nf.training import hmc


def funnel5():
    neals_funnel(dim=5)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def funnel_abs_x_median() -> float:
    """The median of |x_i| under the funnel: a with E_v[2 Phi(a exp(-v/2)) - 1] = 1/2, the
    expectation over v ~ N(0, 3) by quadrature on a fine grid."""
    v = np.linspace(-30, 30, 20001)
    w = np.exp(-0.5 * (v / 3) ** 2)
    w /= w.sum()
    lo, hi = 1e-6, 1e6
    for _ in range(200):
        a = math.sqrt(lo * hi)
        inside = float((w * (2 * normal_cdf(a * np.exp(-v / 2)) - 1)).sum())
        lo, hi = (a, hi) if inside < 0.5 else (lo, a)
    return a


def test_refine_finds_the_funnels_exact_marginals_from_a_rough_flow():
    """A flow fitted for 300 steps misses the funnel's neck; refine's draws have v ~ N(0, 3)
    (mean, sd, P(v < -4) = Phi(-4/3)) and the known median of |x|, within their Monte Carlo
    error, with no divergences."""
    guide = AutoFlow(funnel5)
    fit(funnel5, guide, num_steps=300, seed=0, progress=False)
    result = refine(funnel5, guide, seed=1)
    assert result.converged and result.ess_bulk >= 400 and result.rhat < 1.01, result
    assert result.divergences == 0
    v = result.samples["v"].reshape(-1).double()
    se = 3.0 / math.sqrt(result.ess_bulk)
    assert abs(float(v.mean())) < 4 * se
    assert float(v.std()) == pytest.approx(3.0, rel=4 / math.sqrt(2 * result.ess_bulk))
    tail = float((v < -4).double().mean())
    exact = float(normal_cdf(np.array(-4 / 3)))
    assert abs(tail - exact) < 4 * math.sqrt(exact * (1 - exact) / result.ess_bulk)
    x = result.samples["x"].abs().reshape(-1).double()
    assert float(x.median()) == pytest.approx(funnel_abs_x_median(), rel=0.15)
    assert result.samples["v"].shape == (16, result.num_draws)
    assert result.samples["x"].shape == (16, result.num_draws, 4)


def test_refine_of_a_gaussian_guide_on_a_student_t_target_has_its_tails():
    """A Gaussian guide cannot hold a Student-t's tails (df = 3); refine in its coordinates
    draws them: the 0.95 quantile of |z| is t_{0.975, 3} = 3.182."""
    def model():
        pyro.sample("z", dist.StudentT(3.0, 0.0, 1.0).expand([2]).to_event(1))

    guide = AutoMultivariateNormal(model)
    fit(model, guide, num_steps=200, seed=0, progress=False)
    result = refine(model, guide, seed=0)
    assert result.converged and result.divergences == 0, result
    z = result.samples["z"].abs().reshape(-1)
    assert float(torch.quantile(z.double(), 0.95)) == pytest.approx(3.182, rel=0.15)
    assert float(torch.quantile(z.double(), 0.5)) == pytest.approx(0.765, rel=0.1)


def correlated_gaussian():
    """z ~ N(mu, S) with correlation 0.99 and scales 1 and 10: exact moments known."""
    mu = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[1.0, 0.99 * 10], [0.99 * 10, 100.0]])

    def model():
        pyro.sample("z", dist.MultivariateNormal(mu, cov))

    return model, mu, cov


def test_refine_of_an_exact_guide_takes_few_gradients_and_matches_the_exact_moments():
    """With the guide set to the exact posterior (correlation 0.99, scales 1 and 10) the chains
    see a standard normal: a step size near 1, a few leapfrog steps per iteration, and the
    exact mean, sds and correlation."""
    model, mu, cov = correlated_gaussian()
    exact = AutoMultivariateNormal(model)
    exact._setup_prototype()
    tril = torch.linalg.cholesky(cov)
    exact.loc = torch.nn.Parameter(mu.clone())
    exact.scale = PyroParam(tril.diagonal().clone(), exact.scale_constraint)
    exact.scale_tril = PyroParam(tril / tril.diagonal()[:, None], exact.scale_tril_constraint)
    result = refine(model, exact, seed=0)
    assert result.converged and result.divergences == 0, result
    iterations = result.warmup_iterations + result.num_draws
    assert result.gradient_evaluations / result.num_chains < 8 * iterations, result
    assert result.step_size[0] > 0.5, result.step_size
    z = result.samples["z"].reshape(-1, 2).double()
    se = cov.diagonal().sqrt().double() / math.sqrt(result.ess_bulk)
    assert ((z.mean(0) - mu.double()).abs() < 4 * se).all(), z.mean(0)
    assert torch.cov(z.T).diagonal().sqrt() == pytest.approx(
        cov.diagonal().sqrt().double(), rel=4 / math.sqrt(2 * result.ess_bulk))
    assert float(torch.corrcoef(z.T)[0, 1]) == pytest.approx(0.99, abs=0.005)


def test_the_default_fit_refines_where_its_checks_fail_and_says_which_draws_are_which():
    """A 10-D funnel fitted for at most 300 steps fails the checks; the default fit then
    draws by refine (result.source == "refined"), whose v has the exact sd 3, and says so in
    its warning; refine=False keeps the flow's draws only."""
    guide = AutoFlow(neals_funnel)
    with pytest.warns(RuntimeWarning, match="result.refined"):
        result = fit(neals_funnel, guide, seed=0, max_steps=300, progress=False)
    assert result.verdict.startswith("unreliable"), result.verdict
    assert result.source == "refined" and result.refined.converged, result.refined
    assert "source='refined'" in repr(result)
    v = result.refined.samples["v"].reshape(-1).double()
    assert float(v.std()) == pytest.approx(3.0, rel=4 / math.sqrt(2 * result.refined.ess_bulk))
    pyro.clear_param_store()
    guide = AutoFlow(neals_funnel)
    with pytest.warns(RuntimeWarning, match="unreliable"):
        kept = fit(neals_funnel, guide, seed=0, max_steps=300, progress=False, refine=False)
    assert kept.source == "flow" and kept.refined is None


def test_refined_draws_make_an_inference_data_with_sample_stats_and_a_summary():
    model, mu, cov = correlated_gaussian()
    guide = AutoMultivariateNormal(model)
    fit(model, guide, num_steps=300, seed=0, progress=False)
    result = refine(model, guide, seed=0, chains=4, target_ess=100, max_rhat=1.05)
    idata = pyro_nf.from_mcmc(result)
    posterior = pyro_nf.diagnostics.inference_data.arviz_compat.group(idata, "posterior")
    assert posterior["z"].shape == (4, result.num_draws, 2)
    stats = pyro_nf.diagnostics.inference_data.arviz_compat.group(idata, "sample_stats")
    for name in ("diverging", "acceptance_rate", "energy", "n_steps", "step_size", "lp"):
        assert stats[name].shape == (4, result.num_draws), name
    assert int(stats["diverging"].values.sum()) == result.divergences
    table = result.summary()
    assert "n_eff" in table and "z[1]" in table and "Number of divergences" in table
    assert result.get_samples()["z"].shape == (4 * result.num_draws, 2)


def test_refine_rejects_what_it_cannot_use_with_one_line_errors():
    model, _, _ = correlated_gaussian()
    guide = AutoMultivariateNormal(model)
    guide._setup_prototype()
    with pytest.raises(ValueError, match="refine: chains must be an integer >= 2"):
        refine(model, guide, chains=1)
    with pytest.raises(ValueError, match="refine: max_rhat must be a number above 1"):
        refine(model, guide, max_rhat=1.0)
    with pytest.raises(TypeError, match="refine: AutoNormal has no get_posterior"):
        refine(model, AutoNormal(model))
    with pytest.raises(ValueError, match="refine: the guide's latent has 2 coordinates, the "
                                         "model's 5"):
        refine(funnel5, guide)


def test_the_sampler_conserves_energy_to_second_order_and_adapts_its_step_size():
    """On a standard normal, leapfrog's energy error shrinks as the step squared; warm-up's
    dual averaging brings the harmonic-mean acceptance to its target; Halton terms are the van
    der Corput sequence."""
    def log_prob(u):
        return -0.5 * (u * u).sum(-1), u

    target = hmc.value_and_grad(log_prob)
    u = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lp, grad, aux = target(u)
    errors = []
    for eps in (0.1, 0.05):
        state = hmc.State(u, lp, grad, aux, eps, 1.0, torch.ones(5, dtype=torch.float64))
        p = torch.ones_like(u)
        u1, p1, lp1, _, _ = hmc.leapfrog(target, state, p, int(1 / eps))
        errors.append(float(((-lp1 + hmc.kinetic(p1, state.inv_mass))
                             - (-lp + hmc.kinetic(p, state.inv_mass))).abs().max()))
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)
    state = hmc.State(u, lp, grad, aux, 1.0, 1.0, torch.ones(5, dtype=torch.float64))
    torch.manual_seed(0)
    hmc.warmup(target, state, 150)
    accept = [hmc.harmonic_mean(hmc.transition(target, state).accept_prob)
              for _ in range(100)]
    # the step size kept is dual averaging's average iterate, a little below the last one
    assert hmc.TARGET_ACCEPT - 0.1 < float(np.mean(accept)) < 0.95
    assert [hmc.halton(i) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]


def test_refine_of_a_mixture_keeps_each_modes_chains_and_weight():
    """Two modes of weights 0.3 / 0.7 (known): each component's chains sample its part of the
    posterior (p times its share of the mixture) in its own coordinates, so none crosses to
    the other mode; chains shared 5 / 11 of 16, the pooled draws put 0.31 in the lighter mode
    (the weights to 1 / 32, the chains' rounding)."""
    from test_certify import two_modes

    model = two_modes(0.3)
    mixture = pyro_nf.AutoFlowMixture(model)
    fit(model, mixture, num_steps=300, seed=0, progress=False)
    result = refine(model, mixture, seed=0, target_ess=200, max_rhat=1.02)
    assert result.converged, result
    assert result.num_chains == 16
    z = result.samples["z"][..., 0]
    left = (z < 0).double().mean(1)  # each chain's share of draws in the left mode (0.3)
    assert sorted(set(left.round().tolist())) == [0.0, 1.0]  # no chain crosses
    assert float((z < 0).double().mean()) == pytest.approx(0.3, abs=1 / 32 + 0.01)
    assert sorted(result.component_weights) == pytest.approx([0.3, 0.7], abs=0.05)


def test_the_command_line_saves_refined_draws_and_reads_no_refine(tmp_path, capsys):
    """Where a fit refined, ``pyro-nf fit`` saves the MCMC draws (their netCDF reads back with
    the refined draws and sample_stats) and prints their summary; ``--no-refine`` is read."""
    from pyro_nf import cli
    from pyro_nf.training.result import FitResult
    from pyro_nf.utils import arviz_compat

    model, _, _ = correlated_gaussian()
    guide = AutoMultivariateNormal(model)
    fit(model, guide, num_steps=300, seed=0, progress=False)
    result = FitResult(guide=guide, verdict="unreliable: moments (a test)", source="refined",
                       refined=refine(model, guide, seed=0, chains=4, target_ess=100,
                                      max_rhat=1.05))
    assert cli._save_refined(result, tmp_path / "run.nc") == 0
    out = capsys.readouterr().out
    assert "the flow: unreliable" in out and "n_eff" in out and "z[0]" in out
    idata = arviz_compat.from_netcdf(tmp_path / "run.nc")
    stats = arviz_compat.group(idata, "sample_stats")
    assert stats["diverging"].shape == (4, result.refined.num_draws)
    assert np.allclose(arviz_compat.group(idata, "posterior")["z"].values,
                       result.refined.samples["z"].numpy())
    args = cli.build_parser().parse_args(["fit", "m.py:model", "--no-refine"])
    assert args.no_refine is True


def test_a_point_where_the_model_raises_is_rejected_not_fatal():
    """A batch whose evaluation raises at some points (a Cholesky failing at an extreme
    kernel) is evaluated point by point: those points get -inf and a zero gradient, the
    others their value and gradient."""
    def log_prob(u):
        if bool((u[:, 0] > 1).any()):
            raise torch.linalg.LinAlgError("not positive-definite")
        return -0.5 * (u * u).sum(-1), u

    target = hmc.value_and_grad(log_prob)
    u = torch.tensor([[0.5, 1.0], [2.0, 0.0], [-1.0, 3.0]], dtype=torch.float64)
    lp, grad, aux = target(u)
    assert lp[1] == -math.inf and torch.equal(grad[1], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(lp[[0, 2]], -0.5 * (u[[0, 2]] ** 2).sum(-1))
    assert torch.allclose(grad[[0, 2]], -u[[0, 2]])
    assert torch.equal(aux[0], u[0]) and torch.isnan(aux[1]).all()


def test_refined_draws_carry_the_models_deterministic_sites():
    """from_mcmc of a refine result has each pyro.deterministic site at every draw, as
    to_inference_data has it for a guide's draws."""
    def model():
        z = pyro.sample("z", dist.Normal(1.0, 2.0).expand([2]).to_event(1))
        pyro.deterministic("w", 2 * z + 1)

    guide = AutoMultivariateNormal(model)
    fit(model, guide, num_steps=100, seed=0, progress=False)
    result = refine(model, guide, seed=0, chains=4, target_ess=50, max_rhat=1.1)
    posterior = pyro_nf.diagnostics.inference_data.arviz_compat.group(
        pyro_nf.from_mcmc(result), "posterior")
    assert posterior["w"].shape == (4, result.num_draws, 2)
    assert np.allclose(posterior["w"].values, 2 * posterior["z"].values + 1, atol=1e-5)
