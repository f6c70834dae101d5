"""The 2-D energies of Rezende & Mohamed (2015) and their normalizing constants."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_nf.datasets.energies import NAMES, Z1_SCALE, energy, log_normalizer

# U2-U4 are Gaussian in z2 given z1 (U3, U4: a sum of two), times the factor N(0, 2^2) on z1,
# so their integrals are closed-form: sqrt(2 pi) Z1_SCALE * sqrt(2 pi) * (sum of the sds).
CLOSED_FORM = {"U2": (0.4,), "U3": (0.35, 0.35), "U4": (0.4, 0.35)}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_log_normalizer_equals_the_closed_form(name):
    exact = math.log(2 * math.pi * Z1_SCALE * sum(CLOSED_FORM[name]))
    assert log_normalizer(name) == pytest.approx(exact, abs=1e-9)


def test_log_normalizer_of_u1_agrees_with_importance_sampling():
    """U1 has no closed form: an importance-sampling estimate from a wide Gaussian, whose
    standard error is about 0.005 here, must agree within four of them."""
    torch.manual_seed(0)
    proposal = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 2.5)
    z = proposal.sample((400_000,))
    log_w = -energy("U1")(z) - proposal.log_prob(z).sum(-1)
    estimate = float(torch.logsumexp(log_w, 0)) - math.log(len(z))
    assert log_normalizer("U1") == pytest.approx(estimate, abs=0.02)
    assert log_normalizer("U1", step=0.02) == pytest.approx(log_normalizer("U1"), abs=1e-9)


def test_proper_energies_add_the_z1_factor_and_the_paper_ones_are_flat_in_z1():
    z = torch.tensor([[0.0, 0.3], [4.0, 0.3]], dtype=torch.float64)  # w1 has period 4
    for name in ("U2", "U3", "U4"):
        paper = energy(name, proper=False)(z)
        proper = energy(name)(z)
        torch.testing.assert_close(proper - paper, 0.5 * (z[:, 0] / Z1_SCALE) ** 2)
    assert energy("U1") is energy("U1", proper=False)


def test_unknown_energy_is_a_clear_error():
    with pytest.raises(ValueError, match="U1"):
        energy("U5")


def test_energies_benchmark_quick_run_reports_every_cell(tmp_path):
    from benchmarks import energies

    out = tmp_path / "energies.md"
    assert energies.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for name in NAMES:
        assert f"| {name} |" in text
    assert text.count("+-") >= len(NAMES) * (len(energies.FLOWS) + 2)


def test_figure_three_draws_every_energy_and_fit(tmp_path):
    from benchmarks.common import load_example

    example = load_example("energy_2d")
    normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    path = tmp_path / "figure.png"
    example.figure({(name, "normal"): normal for name in NAMES}, ["normal"], path)
    assert path.stat().st_size > 1000
