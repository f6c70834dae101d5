"""The posteriors of ``benchmarks.big_data``: simulated data, and each model in Pyro (with a
minibatched plate) and in NumPyro (reading every row). Not a script.

* ``logistic``: logistic regression, D = 20 standard normal features and an intercept,
  b ~ N(0, 1), a ~ N(0, 5);
* ``poisson``: Poisson regression with a log link, D = 5 features and an intercept;
* ``student_t``: robust regression, y ~ StudentT(nu, a + x b, sigma);
* ``hier_logistic``: hierarchical logistic regression, 10 rows in each of N / 10 groups, D = 3
  features, group intercepts a_j ~ N(mu, tau). NumPyro samples the intercepts (non-centered);
  the Pyro model integrates each out by Gauss-Hermite quadrature, so AutoFlow fits the five
  globals and a minibatch is a set of groups. Both have the same posterior of the globals,
  up to the quadrature's error: 10^-4 nats over all 10^4 groups at the simulated tau = 0.8
  (against 100 nodes), 0.2 at tau = 1.5; the posterior of tau sits within 0.1 of 0.8.
"""

from __future__ import annotations

import math

import numpy as np

STUDENT_D = 5
POISSON_D = 5
LOGISTIC_D = 20
HIER_D = 3
#: the hierarchical posterior's rows per group (10^5 rows: 10^4 groups), and the Gauss-Hermite
#: nodes of its Pyro model's integral over each group's intercept
ROWS_PER_GROUP = 10
QUADRATURE_NODES = 24
#: sites of a NumPyro model that are local (one per group): left out of the draws compared
LOCAL_SITES = {"hier_logistic": ("z",)}
#: rows in each element of a Pyro model's subsampled plate (1 where the plate is the rows)
ROWS_PER_ELEMENT = {"hier_logistic": ROWS_PER_GROUP}


# ------------------------------------------------------------------------------ the data
def simulate(name: str, n: int) -> dict[str, np.ndarray]:
    """Features and responses of posterior ``name`` with ``n`` rows (fixed seed)."""
    rng = np.random.default_rng(0)
    if name == "logistic":
        beta = rng.normal(0, 0.5, LOGISTIC_D)
        x = rng.normal(size=(n, LOGISTIC_D)).astype(np.float32)
        p = 1 / (1 + np.exp(-(x @ beta + 0.3)))
        return {"x": x, "y": (rng.random(n) < p).astype(np.float32)}
    if name == "hier_logistic":
        groups = n // ROWS_PER_GROUP
        beta = rng.normal(0, 0.5, HIER_D)
        x = rng.normal(size=(groups, ROWS_PER_GROUP, HIER_D)).astype(np.float32)
        a = -0.5 + 0.8 * rng.normal(size=(groups, 1))
        p = 1 / (1 + np.exp(-(x @ beta + a)))
        return {"x": x, "y": (rng.random(p.shape) < p).astype(np.float32)}
    if name == "poisson":
        beta = rng.normal(0, 0.3, POISSON_D)
        x = rng.normal(size=(n, POISSON_D)).astype(np.float32)
        return {"x": x, "y": rng.poisson(np.exp(x @ beta + 0.5)).astype(np.float32)}
    beta = rng.normal(0, 1, STUDENT_D)
    x = rng.normal(size=(n, STUDENT_D)).astype(np.float32)
    y = x @ beta - 1.0 + 0.5 * rng.standard_t(4.0, n)
    return {"x": x, "y": y.astype(np.float32)}


# ------------------------------------------------------------------------------ the models
def _linear(x, b):
    """x @ b for a b that may carry batch dims in front of the data plate's (draws, particles):
    b (..., 1, D) gives (..., N); b (D,) gives (N,). Written as b x^T (b's draws as rows) so that a
    batch of draws is one matrix product (GEMM) over the rows, not one matrix-vector product
    per draw as ``x @ b[..., None]`` broadcasts: 20x faster for 30 draws of 10^5 rows."""
    import torch

    out = torch.nn.functional.linear(b.reshape(-1, b.shape[-1]), x)
    return out.reshape(b.shape[:-2] + out.shape[-1:])


def pyro_model(name: str):
    """The Pyro model of ``name``: ``model(x, y, batch=None)``, minibatches of ``batch`` rows."""
    import pyro
    import pyro.distributions as dist
    import torch

    def logistic(x, y, batch=None):
        a = pyro.sample("a", dist.Normal(0.0, 5.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([LOGISTIC_D]).to_event(1))
        with pyro.plate("data", len(x), subsample_size=batch) as i:
            pyro.sample("y", dist.Bernoulli(logits=_linear(x[i], b) + a), obs=y[i])

    def poisson(x, y, batch=None):
        a = pyro.sample("a", dist.Normal(0.0, 5.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([POISSON_D]).to_event(1))
        with pyro.plate("data", len(x), subsample_size=batch) as i:
            pyro.sample("y", dist.Poisson(torch.exp(_linear(x[i], b) + a)), obs=y[i])

    def student_t(x, y, batch=None):
        a = pyro.sample("a", dist.Normal(0.0, 5.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([STUDENT_D]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        nu = pyro.sample("nu", dist.Gamma(2.0, 0.1))
        with pyro.plate("data", len(x), subsample_size=batch) as i:
            pyro.sample("y", dist.StudentT(nu, _linear(x[i], b) + a, sigma), obs=y[i])

    return {"logistic": logistic, "poisson": poisson, "student_t": student_t,
            "hier_logistic": hier_logistic}[name]


def hier_logistic(x, y, batch=None):
    """Hierarchical logistic regression: y_jr ~ Bernoulli(logit^-1(x_jr b + a_j)), a_j ~
    N(mu, tau) for groups j, with each group's intercept integrated out by Gauss-Hermite
    quadrature (``QUADRATURE_NODES`` nodes), so the latents are the globals mu, tau, b and the
    groups' plate is what a minibatch subsamples. x: (groups, rows, D), y: (groups, rows)."""
    import pyro
    import pyro.distributions as dist
    import torch

    zero = x.new_zeros(())  # the priors in the data's dtype
    mu = pyro.sample("mu", dist.Normal(zero, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(zero + 1.0))
    b = pyro.sample("b", dist.Normal(zero, 1.0).expand([HIER_D]).to_event(1))
    t, w = (torch.as_tensor(v, dtype=x.dtype) for v in np.polynomial.hermite.hermgauss(
        QUADRATURE_NODES))
    with pyro.plate("groups", len(x), subsample_size=batch) as j:
        xj, yj = x[j], y[j]
        eta = _linear(xj.reshape(-1, HIER_D), b)  # (..., groups x rows)
        eta = eta.reshape(eta.shape[:-1] + yj.shape)
        terms = []
        for node, weight in zip(t, w):  # one node at a time: memory of one pass over rows
            a = (mu + tau * math.sqrt(2.0) * node).unsqueeze(-1)  # (..., 1 group, 1 row)
            log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
                eta + a, yj.expand(eta.shape), reduction="none").sum(-1)
            terms.append(log_lik + math.log(weight / math.sqrt(math.pi)))
        pyro.factor("y", torch.logsumexp(torch.stack(terms, -1), -1))


def numpyro_model(name: str):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def logistic(x, y):
        a = numpyro.sample("a", nd.Normal(0.0, 5.0))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0).expand([LOGISTIC_D]).to_event(1))
        numpyro.sample("y", nd.Bernoulli(logits=x @ b + a), obs=y)

    def poisson(x, y):
        a = numpyro.sample("a", nd.Normal(0.0, 5.0))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0).expand([POISSON_D]).to_event(1))
        numpyro.sample("y", nd.Poisson(jnp.exp(x @ b + a)), obs=y)

    def student_t(x, y):
        a = numpyro.sample("a", nd.Normal(0.0, 5.0))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0).expand([STUDENT_D]).to_event(1))
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
        nu = numpyro.sample("nu", nd.Gamma(2.0, 0.1))
        numpyro.sample("y", nd.StudentT(nu, x @ b + a, sigma), obs=y)

    def hier_logistic(x, y):  # the intercepts as latents, non-centered
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfNormal(1.0))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0).expand([HIER_D]).to_event(1))
        with numpyro.plate("groups", x.shape[0]):
            z = numpyro.sample("z", nd.Normal(0.0, 1.0))
            logits = x @ b + (mu + tau * z)[:, None]
            numpyro.sample("y", nd.Bernoulli(logits=logits).to_event(1), obs=y)

    return {"logistic": logistic, "poisson": poisson, "student_t": student_t,
            "hier_logistic": hier_logistic}[name]


def scalars(draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Site draws (S, *shape) as one (S,) array per scalar: ``b[3]``."""
    out = {}
    for site, v in sorted(draws.items()):
        v = np.asarray(v, dtype=np.float64).reshape(len(v), -1)
        for j in range(v.shape[1]):
            out[site if v.shape[1] == 1 else f"{site}[{j}]"] = v[:, j]
    return out
