"""The base class every pyro-nf flow layer derives from, and the numerical tools they share.

A flow layer is a bijection f: R^D -> R^D on ``constraints.real_vector`` (event_dim 1). By the
change of variables, a base density q_0 pushed through layers f_1..f_K has

    log q_K(z_K) = log q_0(z_0) - sum_k log|det J_{f_k}(z_{k-1})|.

Each layer implements *one* pass that returns the output and log|det J| together
(:meth:`Flow.forward_and_log_det`) and one for the inverse (:meth:`Flow.inverse_and_log_det`).
The Pyro/torch ``Transform`` protocol (``__call__``, ``inv``, ``log_abs_det_jacobian``) is built
on these two. The log-det of the last pass is remembered together with *both* tensors it belongs
to, and reused only when ``log_abs_det_jacobian`` is asked about exactly that pair (object
identity); for any other pair it is recomputed from ``x``. The memo is a speed-up, never a
condition for correctness.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import constraints

Tensor = torch.Tensor

#: Residual tolerance of numerical inverses, per dtype: |f(x) - y| <= tol * max(1, |y|).
INVERSE_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5,
                     torch.float64: 1e-10}


class InverseNotConvergedError(RuntimeError):
    """A numerical inverse did not reach its tolerance within its iteration budget."""


def inverse_tolerance(dtype: torch.dtype) -> float:
    """The residual tolerance numerical inverses promise for ``dtype`` (1e-5 float32, 1e-10
    float64)."""
    return INVERSE_TOLERANCE.get(dtype, 1e-5)


def softplus_inverse(y: float) -> float:
    """x such that softplus(x) = y, for y > 0 (a Python float, used to place initial values)."""
    if y <= 0:
        raise ValueError(f"softplus_inverse needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))


def softplus_exact(x: Tensor) -> Tensor:
    """log(1 + e^x), exact for every x (``F.softplus`` returns x itself above x = 20, an error
    of e^-20 ~ 2e-9 that float64 would see)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def sech2(a: Tensor) -> Tensor:
    """sech^2(a) = 4 e^{-2|a|} / (1 + e^{-2|a|})^2: no overflow and no NaN gradient for large
    |a| (where 1 / cosh(a)^2 would give inf / inf)."""
    e = torch.exp(-2 * a.abs())
    return 4 * e / (1 + e) ** 2


def check_positive_int(value: object, name: str, layer: str) -> int:
    """Validate a positive integer argument ``name`` of ``layer`` and return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return value


def check_dim(dim: object, layer: str) -> int:
    """Validate a layer's event dimension and return it as an int."""
    return check_positive_int(dim, "dim", layer)


def check_context_dim(context_dim: object, layer: str) -> int:
    """Validate a layer's (or flow's) context size C and return it as an int: 0 for no context
    (an unconditional layer), C > 0 for a conditional one."""
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"{layer}: context_dim must be a non-negative integer (0: no context), "
                         f"got {context_dim!r}")
    return context_dim


def check_tensor(x: object, layer: str, what: str, size: int, size_name: str,
                 ref: Tensor | None, strict_dtype: bool = False) -> None:
    """The one input check of every layer: ``x`` a tensor whose last dimension is ``size``
    and whose dtype is that of the layer's parameters ``ref`` (any floating input; every input
    with ``strict_dtype``). Each error names the layer, the argument and the fix."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: {what} must be a torch.Tensor, got {type(x)}")
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(f"{layer}: {what} has shape {tuple(x.shape)}, but this layer was built "
                         f"for {size_name}={size}; the last dimension of {what} must be {size}")
    if ref is not None and ref.dtype != x.dtype and (x.is_floating_point() or strict_dtype):
        raise TypeError(f"{layer}: {what} is {x.dtype} but the layer's parameters are "
                        f"{ref.dtype}; convert one of them (e.g. layer.to({x.dtype}) or "
                        f"x.to({ref.dtype}))")


def check_permutation(perm: object, dim: int, what: str) -> Tensor:
    """Validate a permutation of ``range(dim)`` (``what`` names it in the error) and return it
    as a CPU long tensor."""
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    if perm.shape != (dim,) or not torch.equal(perm.sort().values, torch.arange(dim)):
        raise ValueError(f"{what} must be a permutation of range({dim}), got {perm.tolist()}")
    return perm


def permutation_sign(perm: Tensor) -> int:
    """The parity of a permutation, +1 or -1 (the determinant of its matrix): (-1)^(D - cycles)."""
    order = perm.tolist()
    seen = [False] * len(order)
    cycles = 0
    for start in range(len(order)):
        if not seen[start]:
            cycles += 1
            i = start
            while not seen[i]:
                seen[i] = True
                i = order[i]
    return -1 if (len(order) - cycles) % 2 else 1


class Flow(TransformModule):
    """Base class of pyro-nf's flow layers: a learnable bijection of R^D (event_dim 1).

    Subclasses implement :meth:`forward_and_log_det` and :meth:`inverse_and_log_det`; both
    return ``log|det J_f|`` of the *forward* map at the pre-image, with the batch shape of the
    input. They create every tensor on the input's device and dtype.

    Args:
        dim: the event size D.
        cache_size: torch's transform cache (0 or 1). With 1 (the Pyro default), ``inv`` of the
            tensor just returned by ``__call__`` is looked up instead of recomputed.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    #: True when log|det J| is identically zero.
    volume_preserving = False
    #: The registry kind (see registry.KINDS); decides where build_flow inserts permutations.
    kind: str | None = None
    #: The sign of det J (torch's ``Transform.sign``; Pyro's ComposeTransformModule and JIT
    #: tracing ask every part for it). +1 for every layer whose Jacobian is triangular with a
    #: positive diagonal, elementwise increasing, an even number of reflections, or a residual
    #: map under its invertibility constraint; permutations say their parity.
    sign = 1

    def __init__(self, dim: int, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.dim = check_dim(dim, type(self).__name__)
        self._ladj_memo: tuple[Tensor, Tensor, Tensor] | None = None

    # -- the two passes subclasses write --------------------------------------------------
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, log|det J_f(x)|)`` for ``y = f(x)``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, log|det J_f(x)|)`` for ``x = f^{-1}(y)`` (forward log-det at x)."""
        raise NotImplementedError

    # -- torch.distributions.Transform protocol ---------------------------------------------
    def _call(self, x: Tensor) -> Tensor:
        self._check_input(x, "input")
        y, ladj = self.forward_and_log_det(x)
        self._ladj_memo = (x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        self._check_input(y, "inverse input")
        x, ladj = self.inverse_and_log_det(y)
        self._ladj_memo = (x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        memo = self._ladj_memo
        if memo is not None and memo[0] is x and memo[1] is y:
            return memo[2]
        self._check_input(x, "input")
        return self.forward_and_log_det(x)[1]

    def _check_input(self, x: Tensor, what: str) -> None:
        check_tensor(x, self._name(), what, self.dim, "dim", self._reference_parameter())

    def _reference_parameter(self) -> Tensor | None:
        # The first floating parameter, looked up once: ``.to()``/``.double()`` and
        # ``load_state_dict`` change a parameter's data in place, never the object.
        found = self.__dict__.get("_ref_param")
        if found is None:
            found = (next((p for p in self.parameters() if p.is_floating_point()), None),)
            self.__dict__["_ref_param"] = found
        return found[0]

    def _name(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"

    def __getstate__(self):
        # drop the memo and torch's one-entry cache: they hold graph tensors that neither
        # pickle nor deepcopy accept, and are only valid for the objects they were made for
        state = super().__getstate__()
        state["_ladj_memo"] = None
        state.pop("_ref_param", None)
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def __repr__(self) -> str:  # torch's Transform.__repr__ would hide the module's structure
        return torch.nn.Module.__repr__(self)


def solve_monotone(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    layer: str,
    max_iter: int = 200,
) -> Tensor:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` with the root in [lo, hi].

    ``fn`` returns ``(value, derivative)``. Newton steps are taken where they stay inside the
    current bracket and the previous Newton step halved the residual, bisection otherwise, so
    the iteration converges quadratically near a root and always converges for a continuous
    increasing function, even where the derivative is wrong or overflows (Newton's steps would
    then stall). Runs without
    autograd; callers attach gradients with :func:`implicit_newton_step`. Converged means
    ``|fn(x) - target| <= tol * max(1, |target|)`` with ``tol`` from
    :func:`inverse_tolerance`, or a bracket narrower than a few ulps.

    Raises:
        InverseNotConvergedError: naming ``layer``, when some element did not converge.
    """
    tol = inverse_tolerance(target.dtype)
    eps = torch.finfo(target.dtype).eps
    with torch.no_grad():
        target = target.detach()
        lo, hi = torch.broadcast_tensors(lo.detach().clone(), hi.detach().clone())
        lo, hi = lo.clone(), hi.clone()
        scale = target.abs().clamp_min(1.0)
        x = 0.5 * (lo + hi)
        # |residual| where the last Newton step was taken from (inf after a bisection): a
        # Newton step must halve it, else the next step bisects (a step that barely moves, from
        # a derivative far too large, would otherwise stall inside the bracket)
        last = torch.full_like(x, math.inf)
        for _ in range(max_iter):
            value, deriv = fn(x)
            resid = value - target
            done = (resid.abs() <= tol * scale) | ((hi - lo) <= 4 * eps * x.abs().clamp_min(1.0))
            if bool(done.all()):
                return x
            above = resid > 0
            hi = torch.where(above, torch.minimum(hi, x), hi)
            lo = torch.where(above, lo, torch.maximum(lo, x))
            newton = x - resid / deriv
            ok = torch.isfinite(newton) & (newton > lo) & (newton < hi) & \
                (resid.abs() <= 0.5 * last)
            last = torch.where(ok, resid.abs(), torch.full_like(last, math.inf))
            x = torch.where(done, x, torch.where(ok, newton, 0.5 * (lo + hi)))
        value, _ = fn(x)
        worst = float((value - target).abs().div(scale).max())
    raise InverseNotConvergedError(
        f"{layer}: numerical inverse did not converge in {max_iter} iterations (worst relative "
        f"residual {worst:.3g}, tolerance {tol:g}); the layer's parameters may be extreme "
        "(check for non-finite values) or the input is outside the representable range"
    )


def implicit_newton_step(x_star: Tensor, residual: Tensor, derivative: Tensor) -> Tensor:
    """Attach implicit-function gradients to a root ``x_star`` found without autograd.

    ``residual = g(x_star, theta) - y`` must be computed *with* the graph to ``theta`` and ``y``
    but from the detached root; ``derivative`` is dg/dx at the root. The value returned equals
    ``x_star`` up to the solver's residual, and its gradient is the implicit one,
    dx/dtheta = -(dg/dtheta) / (dg/dx), so numerical inverses never give silent zero gradients.
    """
    return x_star - residual / derivative.detach()

