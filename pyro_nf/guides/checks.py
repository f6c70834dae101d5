"""Model checks shared by the guides: what a joint (global) flow guide cannot represent is an
error naming the sites and saying what to use instead, never a silently wrong posterior."""

from __future__ import annotations

from typing import Any


def subsampled_sites(trace: Any) -> dict[str, list[str]]:
    """Latent sites inside a plate that subsamples (size < full size), with those plates."""
    out: dict[str, list[str]] = {}
    for name, site in trace.iter_stochastic_nodes():
        plates = [f.name for f in site["cond_indep_stack"]
                  if f.full_size is not None and f.size != f.full_size]
        if plates:
            out[name] = plates
    return out


def check_global_continuous(guide: Any, trace: Any) -> None:
    """Raise ``ValueError`` if ``trace`` has latent sites in subsampled plates (discrete sites
    are already refused, with a clear message, by Pyro's ``AutoContinuous``)."""
    label = type(guide).__name__
    local = subsampled_sites(trace)
    if local:
        described = ", ".join(f"{k!r} (plate {', '.join(v)})" for k, v in local.items())
        raise ValueError(
            f"{label} learns one joint posterior over a fixed-size latent vector, but the "
            f"latent site(s) {described} sit in a subsampled plate, so their size changes "
            f"with each minibatch and the posterior would be silently wrong. Use an amortized "
            f"guide for per-data-point latents, or an AutoGuideList with {label} over the "
            f"global sites (poutine.block(model, hide={list(local)})) and "
            f"AutoNormal over the local ones (poutine.block(model, expose={list(local)}))."
        )
