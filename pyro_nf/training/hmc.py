"""Many HMC chains as one batch: the sampler behind :func:`~pyro_nf.training.refinement.refine`.

Every chain takes the same number of leapfrog steps in an iteration, so one call of the
target's batched log density (and one backward pass) moves all chains at once: on a CPU
that costs little more than one chain, and it is what an accelerator wants. NUTS builds a
tree per chain and cannot share its steps; in a fitted flow's coordinates the target is
nearly a standard normal, where a fixed trajectory is as good as a tree.

Adaptation during warm-up, all shared by the chains:

- the step size by dual averaging of the log step size (Hoffman & Gelman 2014, "The No-U-Turn
  sampler", section 3.2) on the harmonic mean of the chains' acceptance probabilities, which a
  chain stuck in a narrow region pulls down (Hoffman, Radul & Sountsov 2021, "An adaptive MCMC
  scheme for setting trajectory lengths in Hamiltonian Monte Carlo", ChEES-HMC);
- a diagonal mass matrix from the chains' pooled variances in two windows, shrunk towards
  the identity as Stan does (Stan reference manual, "HMC algorithm parameters");
- the trajectory length by ChEES (the same paper): the change in the chains' squared distance
  from their mean, whose gradient in the log trajectory length Adam follows. Each iteration
  jitters the length by a Halton sequence so no length resonates with the target.

A proposal whose energy error exceeds ``DIVERGENCE`` (or is not finite) is divergent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: an energy error (nats) beyond which a trajectory is called divergent (Stan's threshold)
DIVERGENCE = 1000.0
#: the target of the harmonic-mean acceptance probability (ChEES-HMC's default)
TARGET_ACCEPT = 0.75
#: the most leapfrog steps of one iteration (NUTS's tree depth 10 allows 1023)
MAX_LEAPFROG = 256
#: the longest trajectory (in time units): with the mass matrix set to the target's variances
#: a Gaussian target's coordinates oscillate with period 2 pi, so a longer trajectory only
#: turns back; ChEES's gradient is flat there and its noise would let the length drift
MAX_TRAJECTORY = 2 * math.pi

Target = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def value_and_grad(log_prob: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                   fallback: Callable | None = None) -> Target:
    """``u -> (log density, its gradient, aux)`` for a batch u of shape (chains, D), from
    ``log_prob(u) -> (log density, aux)`` (aux: what the chains record, e.g. the point in the
    model's coordinates). A non-finite value comes back as -inf with a zero gradient (the
    proposal is then rejected); so does a point where the model raises (a Cholesky that fails
    at an extreme kernel), found by evaluating the batch's points one by one with
    ``fallback`` (default ``log_prob``) when the batch raises."""
    def one_batch(f: Callable, u: torch.Tensor) -> tuple:
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            lp, aux = f(u)
            grad, = torch.autograd.grad(lp.sum(), u)
        lp, grad = lp.detach(), grad.detach()
        bad = ~torch.isfinite(lp) | ~torch.isfinite(grad).all(-1)
        lp = torch.where(bad, torch.full_like(lp, -math.inf), lp)
        return lp, torch.where(bad[:, None], torch.zeros_like(grad), grad), aux.detach()

    def one_by_one(u: torch.Tensor) -> tuple:
        rows = []
        for i in range(len(u)):
            try:
                rows.append(one_batch(fallback or log_prob, u[i:i + 1]))
            except Exception:  # noqa: BLE001 - a point the model cannot evaluate: rejected
                rows.append((torch.full_like(u[i:i + 1, 0], -math.inf),
                             torch.zeros_like(u[i:i + 1]), torch.full_like(u[i:i + 1], math.nan)))
        return tuple(torch.cat(part) for part in zip(*rows))

    def target(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return one_batch(log_prob, u)
        except Exception:  # noqa: BLE001 - find the point that raised
            return one_by_one(u)
    return target


@dataclass
class State:
    """The chains' positions, log densities and gradients, and the kernel's parameters."""

    u: torch.Tensor
    lp: torch.Tensor
    grad: torch.Tensor
    aux: torch.Tensor
    step_size: float
    trajectory: float
    inv_mass: torch.Tensor
    iteration: int = 0
    gradients: int = 0  # gradient evaluations per chain so far


@dataclass
class Step:
    """What one iteration did: per chain, its acceptance probability, whether it diverged and
    its energy; for all chains, the number of leapfrog steps."""

    accept_prob: torch.Tensor
    diverging: torch.Tensor
    energy: torch.Tensor
    num_steps: int
    chees_grad: float = 0.0


def halton(i: int, base: int = 2) -> float:
    """The i-th (i >= 1) term of the van der Corput sequence in ``base``, in (0, 1)."""
    out, f = 0.0, 1.0
    while i > 0:
        f /= base
        out += f * (i % base)
        i //= base
    return out


def leapfrog(target: Target, state: State, p: torch.Tensor, n: int) -> tuple:
    """``n`` leapfrog steps of size ``state.step_size`` from (state.u, p): the end's position,
    momentum, log density, gradient and aux."""
    eps, m = state.step_size, state.inv_mass
    u, grad, lp, aux = state.u, state.grad, state.lp, state.aux
    p = p + 0.5 * eps * grad
    for i in range(n):
        u = u + eps * m * p
        lp, grad, aux = target(u)
        p = p + (eps if i < n - 1 else 0.5 * eps) * grad
    return u, p, lp, grad, aux


def kinetic(p: torch.Tensor, inv_mass: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p * p * inv_mass).sum(-1)


def transition(target: Target, state: State, generator: torch.Generator | None = None,
               chees: bool = False) -> Step:
    """One HMC iteration of every chain (in place on ``state``); ``chees``: with ChEES's
    gradient in the trajectory length (warm-up only)."""
    state.iteration += 1
    u0 = state.u
    p0 = torch.randn(u0.shape, dtype=u0.dtype, device=u0.device, generator=generator)
    p0 = p0 / state.inv_mass.sqrt()
    length = state.trajectory * halton(state.iteration)
    n = int(min(MAX_LEAPFROG, max(1, math.ceil(length / state.step_size))))
    u1, p1, lp1, g1, aux1 = leapfrog(target, state, p0, n)
    h0 = -state.lp + kinetic(p0, state.inv_mass)
    h1 = -lp1 + kinetic(p1, state.inv_mass)
    delta = torch.nan_to_num(h0 - h1, nan=-math.inf)
    accept_prob = delta.clamp(max=0.0).exp()
    diverging = -delta > DIVERGENCE
    coin = torch.rand(accept_prob.shape, dtype=u0.dtype, device=u0.device, generator=generator)
    accept = coin < accept_prob
    gradient = _chees_grad(u0, u1, p1, state.inv_mass, accept_prob, length) if chees else 0.0
    state.u = torch.where(accept[:, None], u1, u0)
    state.lp = torch.where(accept, lp1, state.lp)
    state.grad = torch.where(accept[:, None], g1, state.grad)
    state.aux = torch.where(accept[:, None], aux1, state.aux)
    state.gradients += n
    energy = torch.where(accept, h1, h0)
    return Step(accept_prob, diverging, energy, n, gradient)


def _chees_grad(u0: torch.Tensor, u1: torch.Tensor, p1: torch.Tensor, inv_mass: torch.Tensor,
                accept_prob: torch.Tensor, length: float) -> float:
    """ChEES's gradient estimate in the log trajectory length: the acceptance-weighted mean
    over chains of t (|u1 - mean u1|^2 - |u0 - mean u0|^2) (u1 - mean u1) . p1, the squared
    distances in the mass-whitened metric (where position times velocity is u . p)."""
    if len(u0) < 2:
        return 0.0
    u0, u1, p1, inv_mass = (t.double() for t in (u0, u1, p1, inv_mass))
    w = accept_prob.double().nan_to_num(0.0)
    good = torch.isfinite(u1).all(-1) & torch.isfinite(p1).all(-1) & (w > 0)
    if good.sum() < 2:
        return 0.0
    u0, u1, p1, w = u0[good], u1[good], p1[good], w[good]
    c0, c1 = u0 - u0.mean(0), u1 - u1.mean(0)
    change = (c1 * c1 / inv_mass).sum(-1) - (c0 * c0 / inv_mass).sum(-1)
    g = float((w * length * change * (c1 * p1).sum(-1)).sum() / w.sum())
    return g if math.isfinite(g) else 0.0


def harmonic_mean(p: torch.Tensor) -> float:
    p = p.clamp(min=1e-10)
    return float(len(p) / (1.0 / p).sum())


@dataclass
class DualAveraging:
    """Nesterov's dual averaging of the log step size (Hoffman & Gelman 2014, section 3.2)."""

    mu: float
    target: float = TARGET_ACCEPT
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75
    count: int = 0
    h_bar: float = 0.0
    log_avg: float = 0.0

    def update(self, accept: float) -> float:
        """The next step size after an iteration with (harmonic-mean) acceptance ``accept``."""
        self.count += 1
        eta = 1.0 / (self.count + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept)
        log_eps = self.mu - math.sqrt(self.count) / self.gamma * self.h_bar
        w = self.count ** -self.kappa
        self.log_avg = w * log_eps + (1 - w) * self.log_avg
        return math.exp(log_eps)

    @property
    def final(self) -> float:
        return math.exp(self.log_avg)


@dataclass
class Adam:
    """Adam on one scalar (the log trajectory length), with ChEES-HMC's beta1 = 0."""

    lr: float = 0.05
    beta2: float = 0.95
    v: float = 0.0
    count: int = 0

    def ascend(self, x: float, grad: float) -> float:
        if not math.isfinite(grad):
            return x
        self.count += 1
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        v_hat = self.v / (1 - self.beta2 ** self.count)
        return x + self.lr * grad / (math.sqrt(v_hat) + 1e-8)


def initial_step_size(target: Target, state: State, generator: torch.Generator | None
                      ) -> float:
    """Halve (or double) the step size until one leapfrog step's harmonic-mean acceptance
    crosses 0.5 (Hoffman & Gelman 2014, Algorithm 4, shared by the chains)."""
    eps = state.step_size
    direction = 0
    for _ in range(30):
        state.step_size = eps
        p0 = torch.randn(state.u.shape, dtype=state.u.dtype, device=state.u.device,
                         generator=generator) / state.inv_mass.sqrt()
        _, p1, lp1, _, _ = leapfrog(target, state, p0, 1)
        state.gradients += 1
        delta = (-lp1 + kinetic(p1, state.inv_mass)) - (-state.lp + kinetic(p0, state.inv_mass))
        accept = harmonic_mean(torch.nan_to_num(-delta, nan=-math.inf).clamp(max=0).exp())
        up = accept > 0.5
        if direction == 0:
            direction = 1 if up else -1
        elif (direction == 1) != up:
            break
        eps = eps * 2.0 if direction == 1 else eps / 2.0
    return eps


def pooled_variance(draws: list[torch.Tensor]) -> torch.Tensor:
    """Each coordinate's variance over the chains' draws pooled, shrunk towards 1 as Stan's
    windowed adaptation does (n / (n + 5) var + 5 / (n + 5) 1e-3, here towards 1: the flow's
    coordinates are already scaled)."""
    x = torch.stack(draws)  # (iterations, chains, D)
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[0]
    var = x.var(0)
    var = torch.nan_to_num(var, nan=1.0).clamp(1e-4, 1e4)
    return n / (n + 5.0) * var + 5.0 / (n + 5.0)


def warmup(target: Target, state: State, iterations: int,
           generator: torch.Generator | None = None) -> list[Step]:
    """Adapt ``state``'s step size, mass matrix and trajectory length over ``iterations``
    iterations (the draws are discarded): a fast start, two mass windows (the trajectory
    length averaged over the second), a last stretch of step size alone."""
    state.step_size = initial_step_size(target, state, generator)
    first, second = int(0.15 * iterations), int(0.6 * iterations)
    dual = DualAveraging(mu=math.log(10 * state.step_size))
    adam, log_t = Adam(), math.log(state.trajectory)
    window: list[torch.Tensor] = []
    steps, late = [], []
    for i in range(iterations):
        step = transition(target, state, generator, chees=i < second)
        steps.append(step)
        state.step_size = dual.update(harmonic_mean(step.accept_prob))
        if i < second:
            log_t = adam.ascend(log_t, step.chees_grad)
            log_t = min(max(log_t, math.log(state.step_size)),
                        math.log(min(MAX_LEAPFROG * state.step_size, MAX_TRAJECTORY)))
            state.trajectory = math.exp(log_t)
            if i >= first:
                late.append(log_t)
        elif late:  # ChEES's estimate is noisy: its average over the second window
            state.trajectory, late = math.exp(sum(late) / len(late)), []
        if i >= first // 2:
            window.append(state.u)
        if i + 1 in (first, second) and len(window) > 1:
            state.inv_mass = pooled_variance(window).to(state.u)
            window = []
            dual = DualAveraging(mu=math.log(10 * state.step_size))
    state.step_size = dual.final
    return steps
