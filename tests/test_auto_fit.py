"""fit without num_steps: the pilot, the stopping rule on a model whose optimum is known, the
averaged parameters and the last check against AutoFlow's Gaussian anchor."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEEDS, mean_tolerance, sd_ratio_tolerance
from pyro.infer.autoguide import AutoNormal

import pyro_nf.training.checks as checks
import pyro_nf.training.schedules as auto
from pyro_nf import AutoFlow, fit
from pyro_nf.approximations.pathfinder import normal_of
from pyro_nf.training import Engine
from pyro_nf.training.schedules import FixedSchedule, SelfTuningSchedule, schedule_options

DATA = torch.tensor([1.3, 0.2, 2.1, 1.7, 0.9, 1.1, 2.4, 0.5])


def conjugate(x=DATA):
    """mu ~ N(0, 1), x_i ~ N(mu, 1): mu | x ~ N(sum x / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


POST_MEAN = float(DATA.sum()) / (len(DATA) + 1)
POST_SD = 1 / math.sqrt(len(DATA) + 1)


@pytest.fixture(autouse=True)
def _short_windows(monkeypatch):
    """Shorter stages than the defaults, so the test runs in seconds; the rule is the same."""
    monkeypatch.setattr(auto, "WINDOW", 100)
    monkeypatch.setattr(auto, "PILOT_STEPS", 40)
    pyro.clear_param_store()


def test_stops_by_itself_at_the_known_optimum_with_averaged_parameters():
    """Over SEEDS: the averaged iterate (parameters, no Monte Carlo in the check) sits at the
    exact optimum to within 0.1 posterior sd, its scale within 10%."""
    for seed in SEEDS:
        pyro.clear_param_store()
        guide = AutoNormal(conjugate)
        result = fit(conjugate, guide, seed=seed)
        assert result.stage == "average" and "stationary" in result.stop_reason, seed
        assert result.steps < auto.MAX_STEPS and result.converged, seed
        assert result.lr in auto.PILOT_LRS
        assert set(result.pilot) == {str(v) for v in auto.PILOT_LRS}
        mu_loc = pyro.param("AutoNormal.locs.mu").item()
        mu_scale = pyro.param("AutoNormal.scales.mu").item()
        assert abs(mu_loc - POST_MEAN) < 0.1 * POST_SD, (seed, mu_loc)
        assert abs(mu_scale / POST_SD - 1) < 0.1, (seed, mu_scale)
        assert result.elbo_estimate is not None and result.recommendation is None, seed


def test_explicit_num_steps_keeps_the_fixed_schedule():
    result = fit(conjugate, AutoNormal(conjugate), num_steps=30, seed=0, progress=False)
    assert result.steps == 30 and result.stage == "fixed" and result.lr is None


#: a valid value of every schedule option, to pass where it does not belong
FIXED_VALUES = {"num_steps": 5, "lr": 0.5, "optim": pyro.optim.Adam({"lr": 0.01}),
                "lr_schedule": lambda step: 1.0, "lr_decay": 0.9, "warmup_steps": 3,
                "convergence_window": 50, "convergence_tol": 1e-3, "stop_when_converged": True}
TUNING_VALUES = {"accuracy": 0.2, "max_steps": 100, "certify": False,
                 "refine": False}


def test_every_option_of_one_schedule_given_to_the_other_is_an_error_naming_it(tmp_path):
    """No option is accepted and ignored: each FixedSchedule option without num_steps (the
    self-tuning schedule), each SelfTuningSchedule option with num_steps, and the engine's
    fixed-only options under the self-tuning schedule raise before any step."""
    assert set(FIXED_VALUES) == set(schedule_options(FixedSchedule))
    assert set(TUNING_VALUES) == set(schedule_options(SelfTuningSchedule))
    guide = AutoNormal(conjugate)
    for name, value in FIXED_VALUES.items():
        if name == "num_steps":
            continue
        with pytest.raises(ValueError, match=f"{name} is an option of FixedSchedule, not of "
                                             "SelfTuningSchedule"):
            fit(conjugate, guide, **{name: value})
    for name, value in TUNING_VALUES.items():
        with pytest.raises(ValueError, match=f"{name} is an option of SelfTuningSchedule, not "
                                             "of FixedSchedule"):
            fit(conjugate, guide, num_steps=5, **{name: value})
    with pytest.raises(ValueError, match="checkpoint is not supported by SelfTuningSchedule"):
        fit(conjugate, guide, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="lr given beside schedule=FixedSchedule"):
        fit(conjugate, guide, schedule=FixedSchedule(5), lr=0.1)
    with pytest.raises(TypeError, match="unknown option 'data'.*model_kwargs"):
        fit(conjugate, guide, data=torch.zeros(3))
    with pytest.raises(ValueError, match="SelfTuningSchedule: checkpoints and resume"):
        SelfTuningSchedule().run(Engine(conjugate, guide, checkpoint=tmp_path / "c.pt"))
    assert pyro.get_param_store().keys() == set()  # nothing ran


def test_model_keywords_go_in_model_kwargs_even_when_named_like_options():
    def model(seed=None, lr=None):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(float(seed) + float(lr)))

    result = fit(model, AutoNormal(model), num_steps=3, progress=False,
                 model_kwargs={"seed": 1, "lr": 0.5})
    assert result.steps == 3


def test_the_last_check_recommends_the_anchor_when_the_flow_is_worse():
    pyro.set_rng_seed(0)  # the same start whatever ran before (the check's margin is wide)
    guide = AutoFlow(conjugate, flow="iaf")
    guide()
    anchor = normal_of(guide.anchor_transform())
    with torch.no_grad():  # a flow far from the identity: a much too narrow guide
        guide.scale = torch.full_like(guide.scale, 0.2)
    result = fit(conjugate, guide, num_steps=0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.last_check(result, conjugate, guide, (), {})
    assert result.recommendation == "anchor" and result.khat > 0.7 > result.anchor_khat
    assert any("reset_to_anchor" in str(w.message) for w in caught)
    guide.reset_to_anchor()
    z = torch.randn(8, 1)
    with torch.no_grad():
        torch.testing.assert_close(guide.get_posterior().log_prob(z), anchor.log_prob(z),
                                   rtol=1e-5, atol=1e-5)


def standard_normal():
    pyro.sample("x", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.05, 1.0), (0.3, 1.0), (0.0, 1.5)])
def test_importance_check_estimates_the_known_chi_square(shift, scale):
    """p = N(0, 1), q = N(shift, scale^2): chi^2(p || q) = scale / sqrt(2 - 1 / scale^2)
    * exp(shift^2 / (2 scale^2 - 1)) - 1, which is exp(shift^2) - 1 at scale 1."""
    from pyro_nf.densities.logdensity import LogDensity

    q = dist.Normal(torch.tensor([shift]), scale).to_event(1)
    check = checks.importance_check(LogDensity(standard_normal), q, num=4000)
    exact = scale / math.sqrt(2 - scale ** -2) * math.exp(shift ** 2 / (2 * scale ** 2 - 1)) - 1
    assert abs(check.chi2 - exact) <= 4 * check.chi2_se + 1e-6
    # within 0.1 exactly where sqrt(chi^2) <= 0.1 with room for two standard errors
    assert check.within(0.1) == (exact < 0.005)


def test_a_point_mass_is_never_within_any_accuracy():
    from pyro_nf.densities.logdensity import LogDensity

    q = dist.Delta(torch.zeros(1), event_dim=1)
    assert not checks.importance_check(LogDensity(standard_normal), q).within(1.0)


def test_an_exact_anchor_stops_before_the_first_step():
    """The conjugate posterior is Gaussian, so AutoFlow's Laplace anchor is exact: the fit
    proves it by importance sampling and takes no step (over SEEDS; the 4000 draws' mean
    within 4 Monte Carlo standard errors, its sd within 4 standard errors of the sample sd,
    no bias allowance: the anchor is exact); accuracy=None runs the schedule."""
    for seed in SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoFlow(conjugate)
        result = fit(conjugate, guide, seed=seed)
        assert result.stage == "start" and result.steps == 0, seed
        assert "accuracy" in result.stop_reason, seed
        assert result.chi2 < 0.01 and result.khat < 0.5, (seed, result.chi2, result.khat)
        assert result.recommendation == "flow", seed
        assert result.verdict.startswith("reliable"), (seed, result.verdict)
        with torch.no_grad():
            z = guide.get_posterior().sample((4000,))
        assert abs(z.mean().item() - POST_MEAN) < mean_tolerance(POST_SD, 4000, bias=0.0)
        assert abs(z.std().item() / POST_SD - 1) < sd_ratio_tolerance(4000, bias=0.0)
    pyro.clear_param_store()
    scheduled = fit(conjugate, AutoFlow(conjugate), seed=0, accuracy=None)
    assert scheduled.stage == "average" and scheduled.steps > 0


def test_a_guide_that_reaches_the_accuracy_stops_at_its_first_stationary_loss():
    """Over SEEDS; the location is a parameter (no Monte Carlo): within 0.15 posterior sd,
    what fit's accuracy bound (chi^2 <= 0.01: every mean within 0.1 guide sd) allows."""
    from pyro.infer.autoguide import AutoMultivariateNormal

    for seed in SEEDS:
        pyro.clear_param_store()
        guide = AutoMultivariateNormal(conjugate)
        result = fit(conjugate, guide, seed=seed)
        assert result.stage == "optimize" and "accuracy" in result.stop_reason, seed
        assert result.steps < auto.WINDOW * (2 + 2 + auto.HALVINGS + auto.AVERAGE_WINDOWS)
        loc = pyro.param("AutoMultivariateNormal.loc").item()
        assert abs(loc - POST_MEAN) < 0.15 * POST_SD, (seed, loc)


@pytest.mark.parametrize("elbo,anchor_elbo,khat,anchor_khat,expected", [
    (-10.0, -9.0, 0.3, 0.3, "anchor"),   # the anchor's ELBO clearly higher
    (-10.0, -10.01, 0.3, 0.3, "flow"),   # within the noise
    (-10.0, -10.0, 0.8, 0.5, "anchor"),  # unreliable flow, reliable anchor, same ELBO
    (-10.0, -10.2, 0.8, 0.5, "flow"),    # ... but the flow's ELBO is higher: k-hat alone
    (-10.0, -10.0, 0.8, 0.75, "flow"),   # both unreliable
])
def test_the_recommendation_rule(elbo, anchor_elbo, khat, anchor_khat, expected):
    assert checks.recommend(elbo, 0.01, anchor_elbo, khat, anchor_khat) == expected
