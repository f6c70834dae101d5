"""Variational auto-encoder with amortized normalizing flows on binarized MNIST.

The experiment of Rezende & Mohamed (2015, section 6.2) in Pyro: a prior N(0, I) over a
40-dimensional latent z, an MLP decoder giving Bernoulli logits for the 784 pixels, and a guide
made of an MLP encoder (base location and scale of z_0, and a context h) followed by K
amortized flow layers whose parameters are functions of h (pyro_nf.AmortizedFlow). The loss is
the negative ELBO per image, with the KL terms warmed up linearly from beta0 to 1 over the first
epochs as in the papers (Bowman et al. 2016; Sonderby et al. 2016). Minibatches come from a
subsampled plate over the whole training set: the guide and the model share the subsample.

At the end: the test -ELBO and the importance-sampled test -log p(x) with S samples per image
(log p(x) >= log mean_s p(x, z_s) / q(z_s | x), Burda et al. 2016).

    python examples/vae_mnist.py --flow planar --layers 10 --epochs 20 --out out/vae
    python examples/vae_mnist.py --flow none                      # the plain VAE
    python examples/vae_mnist.py --flow sylvester --layers 4 --resume out/vae/checkpoint.pt
    python examples/vae_mnist.py --quick                          # a few hundred images
    python examples/vae_mnist.py --arch conv --latent 64 --device cuda

Flows: none, planar, radial, sylvester (orthogonal), iaf, spline (spline autoregressive).

Amortization (``--amortize``) of the hypernetwork flows (planar, radial, Sylvester): ``linear``
(the default, as in Rezende & Mohamed 2015) makes every flow parameter a linear map of the
encoder's last hidden layer; ``mlp`` puts a two-layer MLP per flow layer in between.

Architectures (``--arch``): ``mlp`` (784-H-H ELU encoder, H-H-784 decoder, the seeds') and
``conv``, the gated convolutional encoder and decoder of van den Berg et al. (2018, after
Tomczak & Welling 2018) whose tables use latent 64; on a CPU it is slow, meant for a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import nn

from pyro_nf import AmortizedFlow
from pyro_nf.datasets import binarized_mnist

FLOWS = {"none": None, "planar": "planar", "radial": "radial",
         "sylvester": "sylvester_orthogonal", "iaf": "iaf", "spline": "spline_autoregressive"}
PIXELS = 784


class Decoder(nn.Module):
    """z (latent) -> hidden -> hidden -> 784 Bernoulli logits."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, hidden),
                                 nn.ELU(), nn.Linear(hidden, PIXELS))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Gated(nn.Module):
    """A gated convolution: ``conv_h(x) * sigmoid(conv_g(x))`` (Dauphin et al. 2017)."""

    def __init__(self, conv: type, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: int = 0, **extra: int) -> None:
        super().__init__()
        self.h = conv(c_in, c_out, kernel, stride, padding, **extra)
        self.g = conv(c_in, c_out, kernel, stride, padding, **extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


# (in, out, kernel, stride, padding): 28x28 -> 28 -> 14 -> 14 -> 7 -> 7 -> 1x1 features
CONV_ENCODER = [(1, 32, 5, 1, 2), (32, 32, 5, 2, 2), (32, 64, 5, 1, 2), (64, 64, 5, 2, 2),
                (64, 64, 5, 1, 2)]
CONV_FEATURES = 256


class ConvEncoder(nn.Module):
    """784 pixels -> 256 features by six gated convolutions (the last a 7x7 to one pixel)."""

    def __init__(self) -> None:
        super().__init__()
        layers = [Gated(nn.Conv2d, *spec) for spec in CONV_ENCODER]
        self.net = nn.Sequential(*layers, Gated(nn.Conv2d, 64, CONV_FEATURES, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 1, 28, 28)).reshape(*x.shape[:-1], CONV_FEATURES)


class ConvDecoder(nn.Module):
    """z -> 7x7 -> 14x14 -> 28x28 by gated transposed convolutions -> 784 Bernoulli logits."""

    def __init__(self, latent: int) -> None:
        super().__init__()
        up = nn.ConvTranspose2d
        self.net = nn.Sequential(
            Gated(up, latent, 64, 7), Gated(up, 64, 64, 5, 1, 2),
            Gated(up, 64, 32, 5, 2, 2, output_padding=1), Gated(up, 32, 32, 5, 1, 2),
            Gated(up, 32, 32, 5, 2, 2, output_padding=1), Gated(up, 32, 32, 5, 1, 2),
            nn.Conv2d(32, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z.reshape(-1, z.shape[-1], 1, 1))
        return out.reshape(*z.shape[:-1], PIXELS)


def data_plate(x: torch.Tensor, beta: float = 1.0, batch_size: int | None = None):
    """The plate over images; with ``batch_size`` it subsamples minibatches."""
    return pyro.plate("data", len(x), subsample_size=batch_size)


def make_model(decoder: nn.Module, latent: int, frozen: bool = False):
    """The generative model; ``frozen``: the decoder is a fixed function (not trained)."""
    def model(x: torch.Tensor, beta: float = 1.0, batch_size: int | None = None) -> None:
        if not frozen:
            pyro.module("decoder", decoder)
        zeros = x.new_zeros(latent)
        with data_plate(x, beta, batch_size) as idx:
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1),
                        obs=x.index_select(0, idx))
    return model


def networks(arch: str, hidden: int, latent: int) -> tuple[nn.Module, nn.Module, int]:
    """The encoder (pixels -> features), the decoder and the number of features."""
    if arch == "conv":
        return ConvEncoder(), ConvDecoder(latent), CONV_FEATURES
    encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ELU(), nn.Linear(hidden, hidden),
                            nn.ELU())
    return encoder, Decoder(latent, hidden), hidden


def make_guide(model, flow: str | None, layers: int, encoder: nn.Module, features: int,
               amortize: str = "linear"):
    spec = None if flow is None else f"{flow}*{layers}"
    if flow in ("iaf", "spline_autoregressive"):
        options = {"hidden": [features]}
    else:  # hypernetwork flows: [] makes the parameters a linear map of the features
        options = {"hidden": []} if amortize == "linear" and flow is not None else {}
    guide = AmortizedFlow(model, flow=spec, encoder=encoder, encoder_dim=features,
                          encoder_input=lambda x, beta=1.0, batch_size=None: x,
                          create_plates=data_plate, flow_options=options)

    def scaled(x: torch.Tensor, beta: float = 1.0, batch_size: int | None = None):
        with poutine.scale(scale=beta):  # KL warm-up scales log q as well as log p(z)
            return guide(x, beta, batch_size)
    return guide, scaled


@torch.no_grad()
def log_weights(model, guide, x: torch.Tensor, samples: int, chunk: int = 20000) -> torch.Tensor:
    """log p(x, z) - log q(z | x) for ``samples`` draws per image: shape (samples, len(x))."""
    rows = []
    for s0 in range(0, samples, max(1, chunk // len(x))):
        s = min(samples - s0, max(1, chunk // len(x)))
        xs = x.repeat(s, 1)
        g = poutine.trace(guide).get_trace(xs)
        m = poutine.trace(poutine.replay(model, trace=g)).get_trace(xs)
        total = xs.new_zeros(len(xs))
        for tr, sign in ((m, 1.0), (g, -1.0)):
            for site in tr.nodes.values():
                if site["type"] == "sample" and not site["name"] == "data":
                    total = total + sign * site["fn"].log_prob(site["value"]).reshape(len(xs))
        rows.append(total.reshape(s, len(x)))
    return torch.cat(rows)


def evaluate(model, guide, x: torch.Tensor, samples: int, batch: int = 500) -> dict:
    """-ELBO (mean over the draws of each image) and importance-sampled -log p(x), averaged
    over the images, with the standard error of that average over images; ``per_image``: the
    images' -log p(x) (to compare two guides image by image)."""
    elbo, iw = [], []
    for i in range(0, len(x), batch):
        lw = log_weights(model, guide, x[i:i + batch], samples)
        elbo.append(lw.mean(0))
        iw.append(torch.logsumexp(lw, 0) - math.log(samples))
    per_image = -torch.cat(iw)
    se = per_image.std().item() / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return {"neg_elbo": -torch.cat(elbo).mean().item(), "neg_log_px": per_image.mean().item(),
            "neg_log_px_se": se, "per_image": per_image}


def save_grids(decoder: nn.Module, guide, x: torch.Tensor, out: Path, latent: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(images: torch.Tensor, rows: int) -> torch.Tensor:
        images = images.reshape(rows, -1, 28, 28).cpu()
        return images.permute(0, 2, 1, 3).reshape(rows * 28, -1)

    # the test rows are sorted by digit: take 32 spread over the set to show every digit
    shown = x[torch.linspace(0, len(x) - 1, 32, device=x.device).long()]
    with torch.no_grad():
        z = torch.randn(64, latent, dtype=x.dtype, device=x.device)
        samples = torch.sigmoid(decoder(z))
        q = guide.conditional(shown)
        recon = torch.sigmoid(decoder(q.sample()))
    pairs = torch.stack([shown, recon], 1).reshape(64, PIXELS)
    files = [out / "samples.png", out / "reconstructions.png"]
    plt.imsave(files[0], grid(samples, 8).numpy(), cmap="gray")
    plt.imsave(files[1], grid(pairs, 8).numpy(), cmap="gray")
    return files


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flow", choices=sorted(FLOWS), default="planar")
    parser.add_argument("--layers", type=int, default=10, help="K flow layers")
    parser.add_argument("--amortize", choices=["linear", "mlp"], default="linear",
                        help="hypernetwork flows: parameters linear in the encoder's features, "
                             "or through a two-layer MLP per flow layer")
    parser.add_argument("--arch", choices=["mlp", "conv"], default="mlp",
                        help="encoder/decoder: the seeds' MLP or van den Berg et al.'s gated "
                             "convolutions")
    parser.add_argument("--latent", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=5, help="epochs of KL warm-up")
    parser.add_argument("--beta0", type=float, default=0.01, help="KL weight at the start")
    parser.add_argument("--iw-samples", type=int, default=5000,
                        help="importance samples per test image for -log p(x)")
    parser.add_argument("--train-size", type=int, default=None, help="use the first N images")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="path to binarized_mnist.npz")
    parser.add_argument("--out", default="out/vae_mnist")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from")
    parser.add_argument("--freeze-decoder", default=None, metavar="CHECKPOINT",
                        help="train only the guide, on the fixed decoder of this checkpoint "
                             "(the guide's own gap to the posterior, Cremer et al. 2018)")
    parser.add_argument("--quick", action="store_true", help="a few hundred images, one epoch")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs, args.iw_samples = 300, 100, 1, 10
        args.hidden, args.layers, args.warmup = 64, min(args.layers, 2), 1
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch here")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = binarized_mnist(args.data, device=device)
    train, valid, test = data.train, data.valid, data.test
    if args.train_size:
        train, valid = train[:args.train_size], valid[:max(1, args.train_size // 5)]
    if args.test_size:
        test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
                    [:args.test_size].to(device)]

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    encoder, decoder, features = networks(args.arch, args.hidden, args.latent)
    decoder = decoder.to(device)
    if args.freeze_decoder:
        state = torch.load(args.freeze_decoder, map_location=device, weights_only=False)
        decoder.load_state_dict(state["decoder"])
        decoder.requires_grad_(False)
    model = make_model(decoder, args.latent, frozen=bool(args.freeze_decoder))
    guide, scaled_guide = make_guide(model, FLOWS[args.flow], args.layers, encoder.to(device),
                                     features, args.amortize)
    guide(train[:2], 1.0)  # set up the guide's networks before the optimizer sees them
    optim = ClippedAdam({"lr": args.lr, "clip_norm": 10.0})
    svi = SVI(model, scaled_guide, optim, Trace_ELBO())
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    history, start = [], 0
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        state = torch.load(args.resume, map_location=device, weights_only=False)
        decoder.load_state_dict(state["decoder"])
        guide.load_state_dict(state["guide"])
        # load_state_dict copies in place into the tensors Pyro's param store already holds,
        # so the optimizer keeps stepping the very tensors the networks use
        optim.set_state(state["optim"])
        start, history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"])
        print(f"resumed from {args.resume} after epoch {start}")

    from tqdm.auto import tqdm

    # seconds accumulate across resumed runs
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for epoch in range(start, args.epochs):
        total, beta = 0.0, 1.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress or args.quick, leave=False)
        for step in bar:
            progress = (epoch * steps_per_epoch + step) / max(1, args.warmup * steps_per_epoch)
            beta = min(1.0, args.beta0 + (1 - args.beta0) * progress)
            loss = svi.step(train, beta, args.batch_size) / len(train)
            total += loss
            bar.set_postfix(loss=f"{loss:.2f}", beta=f"{beta:.2f}")
        val = evaluate(model, guide, valid, samples=1)
        history.append({"epoch": epoch + 1, "train_neg_elbo": total / steps_per_epoch,
                        "valid_neg_elbo": val["neg_elbo"], "beta": beta,
                        "seconds": time.perf_counter() - t0})
        print(f"epoch {epoch + 1}: train -ELBO {total / steps_per_epoch:.2f} (beta {beta:.2f})"
              f"  valid -ELBO {val['neg_elbo']:.2f}")
        torch.save({"decoder": decoder.state_dict(), "guide": guide.state_dict(),
                    "optim": optim.get_state(),
                    "epoch": epoch + 1, "history": history, "rng": torch.get_rng_state()},
                   checkpoint)
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = evaluate(model, guide, test, samples=args.iw_samples)
    files = save_grids(decoder, guide, test, out, args.latent)
    summary = {"flow": args.flow, "layers": 0 if args.flow == "none" else args.layers,
               "arch": args.arch, "amortize": args.amortize, "latent": args.latent,
               "frozen_decoder": args.freeze_decoder,
               "epochs": args.epochs, "test_images": len(test), "iw_samples": args.iw_samples,
               "test_neg_elbo": result["neg_elbo"], "test_neg_log_px": result["neg_log_px"],
               "test_neg_log_px_se": result["neg_log_px_se"], "train_seconds": train_seconds,
               "eval_seconds": time.perf_counter() - t1,
               "history": history}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    torch.save(result["per_image"].cpu(), out / "test_neg_log_px.pt")  # image by image
    print(f"test -ELBO {result['neg_elbo']:.2f}   test -log p(x) {result['neg_log_px']:.2f} "
          f"({args.iw_samples} importance samples per image, {len(test)} images)")
    print(f"wrote {', '.join(str(f) for f in files)}, {out / 'summary.json'}, {checkpoint}")
    return {"test_neg_elbo": result["neg_elbo"], "test_neg_log_px": result["neg_log_px"]}


if __name__ == "__main__":
    main()
