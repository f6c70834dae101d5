"""The Pyro translations of the posteriordb posteriors (benchmarks/posteriordb).

Besides loading and shapes, each translation must satisfy the score (Stein) identity
E_posterior[grad_u log p(u | y)] = 0 in unconstrained coordinates u (log-Jacobians of
``biject_to`` included), checked at 1000 reference draws (every 10th of each of the 10
chains; the reference is already thinned, so nearly independent). A wrong prior, a missing
Jacobian or a wrong data transform moves the posterior, and the reference draws then no
longer zero the mean score (checked by hand: eight schools with mu ~ N(0, 1) gives
z = -27, garch without the beta1 Jacobian 7.5, mesquite with volume for log volume -95;
a prior change that the data overrule, such as sblrc's sigma ~ HalfNormal(1), is not seen
and barely moves the posterior). The
posteriors are proper, so the density in u vanishes at infinity and the identity holds also
for the flat priors. Needs ../shared/posteriordb (no skips: missing data is a failure).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

from benchmarks import posteriordb
from benchmarks.posteriordb.density import to_unconstrained, unconstrained_log_density

Z_LIMIT = 5.0  # |mean score| < 5 standard errors per component (~110 components in all)
THIN = 10  # 10 chains x 1000 draws -> 1000 draws
CHUNK = 250  # draws per batched evaluation (bounds memory of the T x T time-series products)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_CACHE: dict[str, posteriordb.Posterior] = {}


def _load(name: str) -> posteriordb.Posterior:
    if name not in _CACHE:
        try:
            _CACHE[name] = posteriordb.load(name)
        except FileNotFoundError as err:
            pytest.fail(f"posteriordb is required for these tests (CI has it at "
                        f"../shared/posteriordb): {err}")
    return _CACHE[name]


def _reference_latents(post: posteriordb.Posterior, thin: int = THIN
                       ) -> dict[str, torch.Tensor]:
    ref = {k: torch.as_tensor(v[:, ::thin].reshape((-1,) + v.shape[2:]))
           for k, v in post.reference.items()}
    return post.to_latent(ref)


def _score(post: posteriordb.Posterior) -> tuple[np.ndarray, torch.Tensor]:
    """Per-draw gradients (B, dim) of the unconstrained log density, and the densities."""
    u_all = to_unconstrained(post, _reference_latents(post))
    n = next(iter(u_all.values())).shape[0]
    grads, logps = [], []
    for start in range(0, n, CHUNK):
        u = {k: v[start:start + CHUNK].detach().requires_grad_() for k, v in u_all.items()}
        logp = unconstrained_log_density(post, u)
        grad = torch.autograd.grad(logp.sum(), list(u.values()))
        grads.append(torch.cat([g.reshape(g.shape[0], -1) for g in grad], -1))
        logps.append(logp.detach())
    return torch.cat(grads).numpy(), torch.cat(logps)


def test_names_and_errors():
    assert len(posteriordb.NAMES) == 15 == len(set(posteriordb.NAMES))
    with pytest.raises(ValueError, match="arK-arK"):
        posteriordb.load("no-such-posterior")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        posteriordb.load("arK-arK", root="/nowhere/posteriordb")


@pytest.mark.parametrize("name", posteriordb.NAMES)
def test_sites_match_reference(name):
    post = _load(name)
    assert post.reference, name
    ref = {k: torch.as_tensor(v[:, :3].reshape((-1,) + v.shape[2:]))
           for k, v in post.reference.items()}
    for k, v in post.reference.items():
        assert v.shape[:2] == (10, 1000), k
    # every reference site is a site of the model, with the reference's shape
    from pyro import poutine
    trace = poutine.trace(post.model).get_trace()
    for k, v in post.reference.items():
        assert k in trace.nodes, f"{name}: reference site {k} not in the model"
        assert tuple(trace.nodes[k]["value"].shape) == v.shape[2:], k
    latents = post.to_latent(ref)
    assert list(latents) == post.latent_sites
    dim = sum(u[0].numel() for u in to_unconstrained(post, latents).values())
    assert dim == post.dim


@pytest.mark.parametrize("name", posteriordb.NAMES)
def test_score_identity_at_reference_draws(name):
    post = _load(name)
    grads, logp = _score(post)
    assert torch.isfinite(logp).all(), f"{name}: log density not finite at reference draws"
    assert np.isfinite(grads).all()
    n = grads.shape[0]
    z = grads.mean(0) / (grads.std(0, ddof=1) / np.sqrt(n))
    assert np.abs(z).max() < Z_LIMIT, f"{name}: mean score z = {np.round(z, 1)}"


@pytest.mark.parametrize("name", posteriordb.NAMES)
def test_batched_density_matches_pyro_potential(name):
    """The batched density equals -potential_fn of Pyro's NUTS setup, draw by draw."""
    post = _load(name)
    u = to_unconstrained(post, _reference_latents(post, thin=500))  # 20 draws
    batched = unconstrained_log_density(post, u)
    _, potential, _, _ = initialize_model(post.model)
    for i in (0, 7, 19):
        single = -potential({k: v[i] for k, v in u.items()}).detach()
        assert torch.allclose(batched[i], single, rtol=1e-9, atol=1e-7), (i, batched[i], single)
