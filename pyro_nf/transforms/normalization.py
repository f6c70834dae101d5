"""Activation normalization (ActNorm) with data-dependent initialization.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions", Sec. 3.1:
a per-dimension affine map whose parameters are initialized from the first batch of data so
that the activations have zero mean and unit variance, and are then trained freely.

Direction. pyro-nf layers map base -> data with the forward map, y = loc + exp(log_scale) * x.
In density estimation the data y reach the layer through the *inverse* (``log_prob`` calls
``inv``), so data-dependent initialization happens on the inverse pass and chooses
loc = mean(y), exp(log_scale) = std(y) + eps, which makes the inverse outputs
x = (y - loc) exp(-log_scale) standardized. Forward passes never initialize: in variational
inference the forward input is a base sample, for which the identity is the right start.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_nf.transforms.base import Flow
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


@register("actnorm", paper="Kingma & Dhariwal (2018), Glow: Generative Flow with Invertible "
          "1x1 Convolutions, Sec. 3.1 (actnorm)", inverse="exact", kind="elementwise")
class ActNorm(Flow):
    """ActNorm: y = loc + exp(log_scale) * x per dimension, with data-dependent initialization.

    log|det J| = sum_i log_scale_i (constant over the batch). Inverse exact:
    x = (y - loc) * exp(-log_scale).

    Initialization. The layer is constructed as exactly the identity (loc = 0, log_scale = 0).
    With ``data_init=True``, the first call of :meth:`inverse_and_log_det` (in or out of
    ``torch.no_grad()``: evaluation code and warm-up passes are usually gradient-free) on a
    non-empty batch sets, over all batch dimensions of that batch y,

        loc = mean(y),   log_scale = log(std(y) + eps)   (population std, correction 0),

    so that the inverse outputs have mean 0 and standard deviation 1 per dimension, and sets
    the boolean buffer ``initialized`` (saved in the state dict, so a reloaded layer does not
    re-initialize). Where the std is undefined or zero (a single-element batch, a constant
    dimension) the scale falls back to 1. If the parameters have already been moved away from
    their identity values before any inverse call (set by hand, loaded, or trained through
    forward passes as in VI), data initialization is skipped and the layer is marked
    initialized: data-dependent initialization never overwrites values someone chose or
    trained. :meth:`initialize` performs the initialization explicitly, whatever ``data_init``
    says. Forward calls never initialize.

    Args:
        dim: the event size D.
        data_init: initialize from the first inverse batch (False: never; the layer then
            starts and stays at its parameters, the identity until trained).
        eps: added to the std before taking the log.
    """

    kind = "elementwise"

    def __init__(self, dim: int, data_init: bool = True, eps: float = 1e-6) -> None:
        super().__init__(dim)
        if not isinstance(data_init, bool):
            raise TypeError(f"ActNorm: data_init must be a bool, got {data_init!r}")
        if not float(eps) >= 0:
            raise ValueError(f"ActNorm: eps must be >= 0, got {eps!r}")
        self.data_init = data_init
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    # -- data-dependent initialization ------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, data: Tensor) -> None:
        """Set loc, log_scale from data-space samples ``data`` of shape (..., D) so that
        ``inv(data)`` has mean 0 and (population) std 1 per dimension; mark initialized.

        Raises:
            ValueError: if ``data`` is empty, has the wrong event size or gives non-finite
                statistics.
        """
        self._check_input(data, "initialization data")
        flat = data.detach().reshape(-1, self.dim)
        if flat.shape[0] == 0:
            raise ValueError("ActNorm: initialize needs at least one data point, got an empty "
                             "batch")
        mean = flat.mean(0)
        if flat.shape[0] > 1:
            std = flat.std(0, correction=0)
            scale = torch.where(std > 0, std + self.eps, torch.ones_like(std))
        else:  # one point: the spread is undefined
            scale = torch.ones_like(mean)
        log_scale = torch.log(scale)
        if not (torch.isfinite(mean).all() and torch.isfinite(log_scale).all()):
            raise ValueError("ActNorm: data-dependent initialization got non-finite mean or "
                             "std; check the data for NaN/inf")
        self.loc.copy_(mean)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)

    def _maybe_initialize(self, y: Tensor) -> None:
        if not self.data_init or bool(self.initialized) or y.numel() == 0:
            return
        with torch.no_grad():
            untouched = bool((self.loc == 0).all() and (self.log_scale == 0).all())
        if untouched:
            self.initialize(y)
        else:  # parameters were set or trained already: keep them
            self.initialized.fill_(True)

    # -- the two passes --------------------------------------------------------------------------
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = loc + exp(log_scale) * x; never initializes."""
        y = self.loc + torch.exp(self.log_scale) * x
        return y, self.log_scale.sum(-1).expand(x.shape[:-1])

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """x = (y - loc) * exp(-log_scale), data-initializing first if due."""
        self._maybe_initialize(y)
        x = (y - self.loc) * torch.exp(-self.log_scale)
        return x, self.log_scale.sum(-1).expand(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, data_init={self.data_init}, initialized={bool(self.initialized)}"
