"""A float32 model of many rows: the full-data density summed to float64 precision cheaply, an
L-BFGS path that stops at the density's float resolution, a Laplace anchor centered on the
mode, candidates compared on common draws, and the fit's ELBO read over all the data
(pyro_nf.densities.logdensity.sum64, quasi_newton.resolution, guides.anchor)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from helpers import LONG_SEEDS, mean_tolerance, sd_ratio_tolerance

import pyro_nf
from pyro_nf.approximations import gaussian
from pyro_nf.approximations.pathfinder import LowRankSqrt, reads_all_rows, resolution
from pyro_nf.densities.logdensity import LogDensity, sum64
from pyro_nf.guides import anchor

PRIOR_SD, D = 10.0, 5


def regression(x, y, batch=None):
    """y_i ~ N(x_i b, 1), b ~ N(0, PRIOR_SD^2 I): the posterior and evidence are known."""
    b = pyro.sample("b", dist.Normal(x.new_zeros(D), PRIOR_SD).to_event(1))
    with pyro.plate("data", len(x), subsample_size=batch) as i:
        # b x^T: a batch of draws is one matrix product over the rows
        mean = torch.nn.functional.linear(b.reshape(-1, D), x[i])
        pyro.sample("y", dist.Normal(mean.reshape(b.shape[:-2] + (len(i),)), 1.0), obs=y[i])


def exact(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior mean and covariance, and log evidence (y ~ N(0, I + s^2 X X^T), by Woodbury
    and the determinant lemma), in float64."""
    x, y = x.double(), y.double()
    precision = x.T @ x + torch.eye(D, dtype=x.dtype) / PRIOR_SD ** 2
    xty = x.T @ y
    log_z = (-0.5 * len(y) * math.log(2 * math.pi)
             - 0.5 * float(torch.logdet(PRIOR_SD ** 2 * precision))
             - 0.5 * float(y @ y - xty @ torch.linalg.solve(precision, xty)))
    return torch.linalg.solve(precision, xty), torch.linalg.inv(precision), log_z


def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated features and responses, simulated in float64 and stored in float32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    x[:, 1] += 0.9 * x[:, 0]
    beta = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    y = x @ beta + torch.randn(n, generator=g, dtype=torch.float64)
    return x.float(), y.float()


def test_sum64_is_float64_exact_without_casting_every_term():
    g = torch.Generator().manual_seed(1)
    terms = (-0.7 + 0.3 * torch.randn(3, 10 ** 6 + 17, generator=g, dtype=torch.float64))
    want = terms.sum(-1)
    got = sum64(terms.float())
    assert got.dtype == torch.float64
    # the float32 terms' own rounding is the only error left: compare with their exact sum
    exact_of_float32 = terms.float().double().sum(-1)
    assert float((got - exact_of_float32).abs().max()) < 1e-3
    assert float((terms.float().sum(-1).double() - exact_of_float32).abs().max()) > \
        float((got - exact_of_float32).abs().max())  # better than a float32 sum
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)
    short = torch.randn(4, 100, generator=g)  # below two blocks: a plain float64 sum
    torch.testing.assert_close(sum64(short), short.double().sum(-1))


def test_resolution_is_the_models_float_epsilon():
    x, y = rows(50)
    assert resolution(LogDensity(regression, x, y)) == torch.finfo(torch.float32).eps
    assert resolution(LogDensity(regression, x.double(), y.double())) == \
        torch.finfo(torch.float64).eps
    assert resolution(lambda theta: theta.sum()) == 0.0  # no dtype: no floor


def test_only_a_subsampled_models_paths_are_scored_on_probe_draws_first():
    x, y = rows(50)
    subsampled = LogDensity(regression, x, y, batch=10)
    assert reads_all_rows(subsampled) and reads_all_rows(anchor._Target(subsampled, None))
    assert not reads_all_rows(LogDensity(regression, x, y))


def test_float32_model_of_many_rows_anchors_at_the_exact_posterior_and_stops_at_start():
    """Over LONG_SEEDS: each mean within 0.03 sd (the float32 anchor's allowance) plus 4 Monte Carlo
    standard errors of the 4000 draws' mean, each sd within 1% plus 4 standard errors of the
    sample sd; the exact guide's ELBO within 0.01 nats of log Z."""
    x, y = rows(200_000)
    mean, cov, log_z = exact(x, y)
    sd = cov.diagonal().sqrt()
    for seed in LONG_SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_nf.AutoFlow(regression)
        result = pyro_nf.fit(regression, guide, x, y, model_kwargs={"batch": 500}, seed=seed,
                             progress=False)
        # the paths stop at float32's resolution instead of backtracking on its rounding
        # noise (71 gradient evaluations without that floor)
        assert guide.anchor_info["gradient_evaluations"] < 40
        assert result.stage == "start" and result.steps == 0, seed
        draws = guide.get_posterior(x, y, batch=500).sample((4000,)).double()
        error = (draws.mean(0) - mean).abs()
        assert bool((error < mean_tolerance(sd, 4000, bias=0.03)).all()), (seed, error / sd)
        ratio = draws.std(0) / sd
        assert bool(((ratio - 1).abs() < sd_ratio_tolerance(4000, bias=0.01)).all()), \
            (seed, ratio)
        # the ELBO reads all the rows: the exact guide's is log Z, not a minibatch estimate
        assert abs(result.elbo_estimate - log_z) < 0.01, (seed, result.elbo_estimate - log_z)


def _two_gaussians(far: float) -> tuple[LowRankSqrt, LowRankSqrt]:
    exact_one = LowRankSqrt.dense(torch.zeros(2, dtype=torch.float64),
                                  torch.eye(2, dtype=torch.float64))
    shifted = LowRankSqrt.dense(torch.full((2,), far, dtype=torch.float64),
                                torch.eye(2, dtype=torch.float64))
    return exact_one, shifted


def _standard_normal_counting() -> tuple[list[int], object]:
    calls = [0]

    def log_p(x):
        calls[0] += x.shape[0]
        return dist.Normal(x.new_zeros(()), 1.0).log_prob(x).sum(-1)

    return calls, log_p


def test_candidate_elbos_settle_in_one_round_when_one_is_clearly_better():
    good, bad = _two_gaussians(3.0)
    calls, log_p = _standard_normal_counting()
    generator = torch.Generator().manual_seed(0)
    elbos = anchor.candidate_elbos(log_p, {"good": good, "bad": bad}, generator)
    assert calls[0] == 2 * anchor.ELBO_ROUND
    assert abs(elbos["good"]) < 1e-9  # the exact Gaussian: every log weight is log Z = 0
    assert elbos["bad"] < -4  # KL = 9 nats


def test_candidate_elbos_of_indistinguishable_gaussians_settle_in_one_round():
    near, nearer = _two_gaussians(1e-4)  # their difference is known to within 0.01 nats
    calls, log_p = _standard_normal_counting()
    generator = torch.Generator().manual_seed(0)
    anchor.candidate_elbos(log_p, {"a": nearer, "b": near}, generator)
    assert calls[0] == 2 * anchor.ELBO_ROUND


def test_candidate_elbos_as_good_as_each_other_but_unlike_use_every_draw():
    """A shifted and a widened Gaussian with the same KL (0.09 nats over two dimensions): their
    paired difference stays within its noise, which stays above 0.01 nats."""
    _, shifted = _two_gaussians(0.3)
    wide = LowRankSqrt.dense(torch.zeros(2, dtype=torch.float64),
                             1.488 * torch.eye(2, dtype=torch.float64))
    calls, log_p = _standard_normal_counting()
    generator = torch.Generator().manual_seed(0)
    elbos = anchor.candidate_elbos(log_p, {"shifted": shifted, "wide": wide}, generator)
    assert calls[0] == 2 * anchor.ELBO_DRAWS
    assert abs(elbos["shifted"] + 0.09) < 0.05 and abs(elbos["wide"] + 0.09) < 0.05


def test_an_iterate_clearly_below_the_best_is_scored_on_its_probe_draws_only():
    good, bad = _two_gaussians(3.0)
    calls, log_p = _standard_normal_counting()
    generator = torch.Generator().manual_seed(0)
    best = gaussian.elbo_unless_below(log_p, good, 25, generator, -math.inf)
    assert calls[0] == 25 and abs(best) < 1e-9
    worse = gaussian.elbo_unless_below(log_p, bad, 25, generator, best)
    assert calls[0] == 25 + gaussian.PROBE_DRAWS and worse < -4
    again = gaussian.elbo_unless_below(log_p, good, 25, generator, best)
    assert calls[0] == 50 + gaussian.PROBE_DRAWS and abs(again) < 1e-9  # not below: all


def test_laplace_from_a_point_off_the_mode_is_centered_on_the_mode():
    """One Newton step with the exact Hessian: on a Gaussian posterior it lands on the mode."""
    x, y = (t.double() for t in rows(1000))
    mean, cov, _ = exact(x, y)
    target = anchor._Target(LogDensity(regression, x, y), None)
    off = mean + 0.5 * cov.diagonal().sqrt()
    laplace = anchor._laplace(target, off)
    torch.testing.assert_close(laplace.loc, mean, atol=1e-8, rtol=0)
    torch.testing.assert_close(laplace.covariance(), cov, atol=1e-10, rtol=1e-6)


def test_a_subsampled_models_check_decides_on_its_first_draws_where_it_can():
    from pyro_nf.approximations.pathfinder import normal_of
    from pyro_nf.training import checks as auto

    x, y = (t.double() for t in rows(2000))
    mean, cov, _ = exact(x, y)
    exact_q = normal_of(LowRankSqrt.dense(mean, cov))
    off_q = normal_of(LowRankSqrt.dense(mean + 3 * cov.diagonal().sqrt(), cov))
    for q, passes in ((exact_q, True), (off_q, False)):
        log_density = LogDensity(regression, x, y, batch=100)
        assert log_density.batched  # (its set-up's own evaluations, before counting)
        before = log_density.evaluations
        check = auto.importance_check(log_density, q, accuracy=0.1)
        assert check.within(0.1) is passes
        assert log_density.evaluations - before == auto.LOOP_CHECK_DRAWS
        before = log_density.evaluations
        again = auto.importance_check(log_density, q)  # no accuracy: every draw
        assert log_density.evaluations - before == auto.CHECK_DRAWS
        assert again.within(0.1) is passes


def logistic(x, y, batch=None):
    b = pyro.sample("b", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=batch) as i:
        logits = torch.nn.functional.linear(b.reshape(-1, D), x[i])
        pyro.sample("y", dist.Bernoulli(logits=logits.reshape(b.shape[:-2] + (len(i),))),
                    obs=y[i])


def test_a_subsampled_models_pilot_scores_step_sizes_by_the_full_data_elbo():
    """A minibatch ELBO of 100 of 2000 rows has a spread of nats even over 256 draws: the
    pilot's scores are the full data's, each within 0.5 nats below log Z (log Z by importance
    sampling from the Laplace anchor, 20,000 draws), over LONG_SEEDS; a score may exceed log Z only
    by Monte Carlo error, 0.05 nats (about 4 standard errors of a 256-draw ELBO of this
    near-exact anchor)."""
    from pyro_nf.training.checks import full_data_elbo

    x, _ = (t.double() for t in rows(2000))
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0],
                                                       dtype=x.dtype)),
                        generator=torch.Generator().manual_seed(3))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the same log Z estimate whatever ran before
    guide = pyro_nf.AutoFlow(logistic)
    guide(x, y, batch=100)
    log_density = LogDensity(logistic, x, y, batch=100)
    with torch.no_grad():
        q = guide.anchor_posterior(x, y, batch=100)
        z = q.sample((20000,))
        lw = log_density(z) - q.log_prob(z)
    log_z = float(torch.logsumexp(lw, 0)) - math.log(len(lw))
    assert abs(full_data_elbo(log_density, q) - log_z) < 0.1  # a good anchor: a tight bound
    start = {k: v.detach().clone() for k, v in guide.state_dict().items()}
    for seed in LONG_SEEDS:
        guide.load_state_dict(start)
        result = pyro_nf.fit(logistic, guide, x, y, model_kwargs={"batch": 100}, seed=seed,
                             progress=False,
                             accuracy=1e-4, max_steps=100)  # a bound no check passes: steps
        assert len(result.pilot) == 3
        for score in result.pilot.values():
            assert log_z - 0.5 < score < log_z + 0.05, (seed, score - log_z)
