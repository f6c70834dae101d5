"""AmortizedFlow: a normalizing-flow guide for per-data-point (local) latents.

For every data point n in a plate, an encoder network of that point's observations x_n gives
a context h_n = e(x_n), the base location m(h_n) and scale s(h_n), and a *conditional* flow
whose parameters depend on h_n maps the base sample to the local latent (in unconstrained
space, then through the site's ``biject_to``)::

    z0_n ~ N(m(h_n), diag s(h_n)^2),    z_n = f_K(. ; h_n) o ... o f_1(z0_n ; h_n),
    log q(z_n | x_n) = log N(z0_n) - sum_k log|det J_{f_k}(z_{k-1} ; h_n)|.

This is the amortized variational family of Rezende & Mohamed (2015, section 4), with the
flow parameters produced per data point as in van den Berg et al. (2018, Sylvester flows) and
Kingma et al. (2016, IAF with an encoder context). The cost per step is independent of the
data-set size, so the guide supports minibatch SVI through subsampled plates: the plate's
subsample indices are shared by the guide and the model (Pyro replays the guide's plate into
the model), and the encoder sees exactly the subsampled points.

Global latents (outside the plate) are not this guide's job: combine it with
:class:`~pyro_nf.AutoFlow` through Pyro's ``AutoGuideList``::

    guide = AutoGuideList(model)
    guide.append(AutoFlow(poutine.block(model, hide=["theta"])))
    guide.append(AmortizedFlow(poutine.block(model, expose=["theta", "y", "data"]),
                               flow="iaf*2"))

where ``theta`` is the local latent, ``y`` the observation and ``data`` the plate: the default
encoder input is the plate's observed values for the current subsample, so the blocked model
must show them (or pass ``encoder_input=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn
from torch.distributions import biject_to

from pyro_nf.transforms.base import softplus_inverse

DEFAULT_AMORTIZED_FLOW = "iaf*2"


def _plate_of(name: str, site: dict) -> Any:
    frames = [f for f in site["cond_indep_stack"] if f.vectorized]
    if len(frames) != 1:
        where = ", ".join(f.name for f in frames) or "no plate"
        raise ValueError(
            f"AmortizedFlow: latent site {name!r} is in {where}; the guide handles latents in "
            f"exactly one data plate. Hide global sites with poutine.block(model, "
            f"hide=[...]) and put them in an AutoFlow combined through AutoGuideList.")
    return frames[0]


class AmortizedFlow(AutoGuide):
    """Amortized normalizing-flow guide for the latent sites of one data plate.

    Args:
        model: a Pyro model whose latent sites all sit in one (possibly subsampled) plate; block
            global sites out (``poutine.block(model, expose=[...])``) and guide them with
            :class:`~pyro_nf.AutoFlow` in an ``AutoGuideList``.
        flow: a flow spec of layers that take a context, built by
            ``pyro_nf.transforms.build_flow(flow, D, context_dim=H)`` (e.g. ``"planar*10"``,
            ``"sylvester_orthogonal*4"``, ``"iaf*2"``; ``available(conditional=True)`` lists
            them), or ``None`` for the plain diagonal-Gaussian encoder of a VAE.
        encoder: a network mapping the per-point encoder input (N, F) to features (N, H);
            the features are the flow's context and feed linear heads for the base location
            and scale. Default: an MLP with ``hidden`` ELU layers, H = ``hidden[-1]``.
        encoder_dim: H, required with a custom ``encoder``.
        encoder_input: ``f(*args, **kwargs) -> Tensor`` giving the encoder input per data point,
            either for the whole plate (first dimension = the plate's full size; the guide
            indexes it by the subsample) or for the current subsample. Default: the values of
            the observed sites in the plate, read from a run of the model in which the model's
            plate picks the subsample (general, but it costs one model evaluation per step;
            pass ``encoder_input`` to avoid it).
        hidden: widths of the default encoder.
        init_scale: the base scale at initialization.
        flow_options: options passed to every conditional layer (e.g. ``hidden``).
        create_plates: as in Pyro's autoguides: ``f(*args, **kwargs)`` returning the data
            plate, so that its size and subsample follow the call (new data, another batch
            size). Without it (and with ``encoder_input``), the plate is created with the sizes
            of the first call, Pyro's autoguide convention.
    """

    def __init__(self, model: Callable, *, flow: Any = DEFAULT_AMORTIZED_FLOW,
                 encoder: nn.Module | None = None, encoder_dim: int | None = None,
                 encoder_input: Callable[..., Tensor] | None = None,
                 hidden: Sequence[int] = (128, 128), init_scale: float = 1.0,
                 flow_options: dict[str, Any] | None = None,
                 create_plates: Callable | None = None) -> None:
        if encoder is not None and encoder_dim is None:
            raise ValueError("AmortizedFlow: a custom encoder needs encoder_dim= (the size of "
                             "its output features)")
        if not init_scale > 0:
            raise ValueError(f"AmortizedFlow: init_scale must be positive, got {init_scale}")
        if not hidden and encoder is None:
            raise ValueError("AmortizedFlow: hidden= needs at least one layer width")
        super().__init__(model, create_plates=create_plates)
        self.flow_spec = flow
        self.encoder_input = encoder_input
        self.hidden = tuple(hidden)
        self.init_scale = float(init_scale)
        self.flow_options = dict(flow_options or {})
        self._custom_encoder = (encoder,)  # a tuple: registered once, as .encoder, when built
        self._encoder_dim = encoder_dim

    # ----------------------------------------------------------------------------- set-up
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        trace = self.prototype_trace
        latents = list(trace.iter_stochastic_nodes())
        if not latents:
            raise ValueError("AmortizedFlow: the model has no latent sites")
        frames = {name: _plate_of(name, site) for name, site in latents}
        plates = {f.name for f in frames.values()}
        if len(plates) != 1:
            raise ValueError(f"AmortizedFlow: latent sites are spread over plates "
                             f"{sorted(plates)}; give each plate its own AmortizedFlow")
        frame = next(iter(frames.values()))
        self._plate, self._plate_dim = frame.name, frame.dim
        self._sites: list[tuple[str, Any, torch.Size, int]] = []  # name, fn, event, size
        dim = 0
        for name, site in latents:
            fn = site["fn"]
            if fn.support.is_discrete:
                raise ValueError(f"AmortizedFlow: site {name!r} is discrete; enumerate it out "
                                 f"(config_enumerate) or use a discrete guide")
            unconstrained = biject_to(fn.support).inv(site["value"].detach())
            batch_dims = unconstrained.dim() - fn.event_dim
            event = unconstrained.shape[batch_dims:]
            batch = unconstrained.shape[:batch_dims]
            others = [s for i, s in enumerate(batch) if i != batch_dims + frames[name].dim]
            if any(s != 1 for s in others):
                raise ValueError(
                    f"AmortizedFlow: site {name!r} has batch shape {tuple(batch)} with "
                    f"dimensions outside plate {frames[name].name!r}; declare them as event "
                    f"dimensions (.to_event) so that each data point owns one latent vector")
            size = max(1, math.prod(event))
            self._sites.append((name, fn, event, size))
            dim += size
        self.latent_dim = dim
        proto = latents[0][1]["value"]
        self._dtype, self._device = proto.dtype, proto.device
        # the prototype trace hides observed sites; the encoder's default input needs them
        full = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        self._observed = [name for name, site in full.nodes.items()
                          if site["type"] == "sample" and site["is_observed"]
                          and any(f.name == self._plate for f in site["cond_indep_stack"])]
        features = self._encoder_features(full, *args, **kwargs)
        self._build(features.shape[-1])

    def _build(self, in_dim: int) -> None:
        factory = {"dtype": self._dtype, "device": self._device}
        if self._custom_encoder[0] is None:
            self.encoder = _DefaultEncoder(in_dim, self.hidden)
            width = self.hidden[-1]
        else:
            self.encoder, width = self._custom_encoder[0], int(self._encoder_dim)
        self.loc_head = nn.Linear(width, self.latent_dim)
        self.scale_head = nn.Linear(width, self.latent_dim)
        nn.init.zeros_(self.scale_head.weight)
        with torch.no_grad():
            self.scale_head.bias.fill_(float(softplus_inverse(torch.tensor(self.init_scale))))
        if self.flow_spec is None:
            self.flow = None
        else:
            from pyro_nf.transforms import build_flow

            self.flow = build_flow(self.flow_spec, self.latent_dim, context_dim=width,
                                   **self.flow_options)
        for module in (self.encoder, self.loc_head, self.scale_head, self.flow):
            if module is not None:
                module.to(**factory)

    # ----------------------------------------------------------------------------- inputs
    def _encoder_features(self, trace: Any, *args: Any, **kwargs: Any) -> Tensor:
        """Encoder input (size, F) for the points of the plate in ``trace``."""
        if self.encoder_input is not None:
            x = self.encoder_input(*args, **kwargs)
            if not isinstance(x, Tensor):
                raise TypeError(f"AmortizedFlow: encoder_input must return a tensor, got "
                                f"{type(x).__name__}")
            return x.reshape(x.shape[0], -1)
        if not self._observed:
            raise ValueError(f"AmortizedFlow: no observed site in plate {self._plate!r} to "
                             f"encode; pass encoder_input=f(*args, **kwargs) -> Tensor")
        parts = []
        for name in self._observed:
            site = trace.nodes[name]
            value = site["value"]
            batch_dims = value.dim() - site["fn"].event_dim
            value = value.movedim(batch_dims + self._plate_dim, 0)
            parts.append(value.reshape(value.shape[0], -1))
        return torch.cat(parts, dim=-1)

    def _model_indices(self, trace: Any, expected: Tensor | None) -> Tensor:
        """The data points the model's plate used in ``trace``; an error rather than a guide
        that encodes other points than the model scores."""
        site = trace.nodes.get(self._plate)
        if site is None or site["type"] != "sample":
            frame = next(f for _, s in trace.iter_stochastic_nodes()
                         for f in s["cond_indep_stack"] if f.name == self._plate)
            if frame.full_size not in (None, frame.size):
                raise ValueError(
                    f"AmortizedFlow: plate {self._plate!r} subsamples, but its subsample is "
                    f"hidden from the guide (poutine.block?); expose it, e.g. poutine.block("
                    f"model, expose=[<local sites>, <observed sites>, {self._plate!r}]), or "
                    f"pass encoder_input=")
            return torch.arange(frame.size, device=self._device)
        if expected is not None and not torch.equal(site["value"].cpu(), expected.cpu()):
            raise ValueError(f"AmortizedFlow: the model's plate {self._plate!r} did not reuse "
                             f"the guide's subsample; is the plate created with an explicit "
                             f"subsample= in the model? Pass create_plates= to share it")
        return site["value"]

    def _inputs(self, plate: Any, *args: Any, **kwargs: Any) -> Tensor:
        indices = plate.indices
        if self.encoder_input is not None:
            x = self._encoder_features(None, *args, **kwargs)
            if x.shape[0] == plate.size and plate.size != plate.subsample_size:
                x = x.index_select(0, indices.to(x.device))
            elif x.shape[0] != plate.subsample_size:
                raise ValueError(
                    f"AmortizedFlow: encoder_input returned {x.shape[0]} rows, but plate "
                    f"{self._plate!r} has size {plate.size} and subsample size "
                    f"{plate.subsample_size}")
        else:
            replay = poutine.Trace()
            replay.add_node(self._plate, name=self._plate, type="sample", is_observed=False,
                            value=indices, infer={}, fn=None, args=(), kwargs={})
            with poutine.block():
                trace = poutine.trace(poutine.replay(self.model, trace=replay)).get_trace(
                    *args, **kwargs)
            self._model_indices(trace, indices)
            x = self._encoder_features(trace)
        return x.to(dtype=self._dtype, device=self._device)

    # ----------------------------------------------------------------------------- guide
    def conditional(self, x: Tensor) -> dist.TorchDistribution:
        """q(z | x) over the unconstrained latent vector, batched over the rows of ``x``:
        a diagonal Normal base pushed through the flow conditioned on the encoder's features.
        Its ``log_prob`` works at any point (through the layers' inverses)."""
        base, transform = self._parts(x)
        return base if transform is None else _FlowPosterior(base, transform, (len(x),))

    def _parts(self, x: Tensor) -> tuple[dist.TorchDistribution, Any]:
        h = self.encoder(x)
        loc = self.loc_head(h)
        scale = nn.functional.softplus(self.scale_head(h)) + torch.finfo(h.dtype).tiny
        base = dist.Normal(loc, scale).to_event(1)
        return base, (None if self.flow is None else self.flow.condition(h))

    def _plate_and_inputs(self, *args: Any, **kwargs: Any) -> tuple[Any, Tensor]:
        if self.encoder_input is None and self.master is None and self.create_plates is None:
            # The model's own plate picks the subsample; the guide's plate reuses it, and
            # Pyro replays the guide's plate into the model, so both see the same points.
            with poutine.block():
                trace = poutine.trace(self.model).get_trace(*args, **kwargs)
            indices = self._model_indices(trace, None)
            full = trace.nodes[self._plate]["fn"].size if self._plate in trace else len(indices)
            plate = pyro.plate(self._plate, full, subsample=indices, dim=self._plate_dim)
            x = self._encoder_features(trace)
            return plate, x.to(dtype=self._dtype, device=self._device)
        plate = self._create_plates(*args, **kwargs)[self._plate]
        return plate, self._inputs(plate, *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plate, x = self._plate_and_inputs(*args, **kwargs)
        base, transform = self._parts(x)
        shape = (x.shape[0],) + (1,) * (-1 - self._plate_dim)
        result: dict[str, Tensor] = {}
        with plate:
            latent = pyro.sample(f"_{self._pyro_name}_latent",
                                 _FlowPosterior(base, transform, shape),
                                 infer={"is_auxiliary": True})
            offset = 0
            for name, fn, event, size in self._sites:
                u = latent[..., offset:offset + size].reshape(latent.shape[:-1] + tuple(event))
                offset += size
                transform = biject_to(fn.support)
                value = transform(u)
                log_density = transform.inv.log_abs_det_jacobian(value, u)
                extra = log_density.dim() - (latent.dim() - 1)
                if extra > 0:
                    log_density = log_density.sum(tuple(range(-extra, 0)))
                result[name] = pyro.sample(name, dist.Delta(value, log_density=log_density,
                                                            event_dim=fn.event_dim))
        return result


class _DefaultEncoder(nn.Module):
    """MLP ``F -> hidden...`` with ELU after every layer: the features h(x)."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _FlowPosterior(dist.TorchDistribution):
    """q(z | x) for N data points, seen with batch shape ``shape`` (the plate's size at its
    dim, ones elsewhere) so that it sits in a plate at any dim.

    ``rsample`` runs the base draw through the conditioned layers once, returning the output
    and accumulating log q = log q0(z0) - sum_k log|det J_k| in the same pass; ``log_prob`` of
    exactly that returned tensor (an identity check, as the layers' own log-det memo) reuses
    it, and of any other value it inverts the flow (exactly or numerically, per layer).
    """

    arg_constraints: dict = {}
    support = dist.constraints.real_vector

    def __init__(self, base: dist.TorchDistribution, transform: Any, shape: tuple[int, ...],
                 leading: tuple[int, ...] = ()) -> None:
        self.base, self.transform = base, transform
        self._shape, self._leading = tuple(shape), tuple(leading)
        self._memo: tuple[Tensor, Tensor] | None = None
        super().__init__(torch.Size(self._leading + self._shape), base.event_shape,
                         validate_args=False)

    def expand(self, batch_shape: torch.Size | tuple, _instance=None) -> _FlowPosterior:
        """Extra leading batch dims (e.g. vectorized particles) are independent draws."""
        batch_shape = tuple(batch_shape)
        k = len(self._shape)
        if batch_shape[len(batch_shape) - k:] != self._shape:
            raise ValueError(f"AmortizedFlow: cannot expand a batch of {self._shape} points "
                             f"to {batch_shape}")
        return _FlowPosterior(self.base, self.transform, self._shape,
                              batch_shape[:len(batch_shape) - k])

    has_rsample = True

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        sample_shape = torch.Size(sample_shape) + self._leading
        z = self.base.rsample(sample_shape)
        log_q = self.base.log_prob(z)
        if self.transform is not None:
            for part in self.transform.parts:
                if hasattr(part, "forward_and_log_det"):
                    z, ladj = part.forward_and_log_det(z)
                else:
                    z_next = part(z)
                    ladj = part.log_abs_det_jacobian(z, z_next)
                    z = z_next
                log_q = log_q - ladj
        out = z.reshape(sample_shape + self._shape + self.event_shape)
        self._memo = (out, log_q.reshape(out.shape[:-1]))
        return out

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._memo is not None and value is self._memo[0]:
            return self._memo[1]
        n = self._shape[0]
        flat = value.reshape(value.shape[:value.dim() - len(self._shape) - 1] + (n, -1))
        q = self.base if self.transform is None else dist.TransformedDistribution(
            self.base, [self.transform])
        return q.log_prob(flat).reshape(value.shape[:-1])


__all__ = ["AmortizedFlow", "DEFAULT_AMORTIZED_FLOW"]
