"""The same figures as ``tfvae.studies.benchmark`` from a plain PyTorch implementation of the same network,
to compare tfvae with (``scripts/benchmark.py --peer``; needs ``torch``, an optional dependency).

What it implements, float32 on the CPU, ``torch.set_num_threads(os.cpu_count())``:

- the network of Zimmerer et al.'s code, in its layout: 4x4 stride-2 convolutions without bias and
  LeakyReLU(0.01) at 16-32-64-256 feature maps down to 4x4, a 4x4 valid convolution to
  2 x latent (mu, log sigma), and the mirror image with transposed convolutions, a linear output
  (``tfvae.model.networks`` is the same maths, its two 4x4 <-> 1x1 ends written as dense layers);
- a training step: one reparameterised sample, L = Lrec + beta * KL (Gaussian NLL with unit
  variance; the closed-form KL), the batch mean, ``torch.optim.Adam``;
- the maps tfvae's predictor figure times (``tfvae.maps.predictors``): |dLrec/dx| and |dKL/dx| from two
  backward passes through one forward pass at z = mu, ELBO-grad by the sum rule, the squared
  error, the reference's 7x7 Gaussian smoothing of the three gradient maps and its Combi, made as
  the reference code makes them (``F.conv2d``, zero padding);
- the projection: ``torch.optim.Adam`` on the input, E(x) = Lrec(x) + lambda * |x - x0|_1, then the
  projected image's reconstruction and its squared error against the input (the proj_rec_error
  map): what ``tfvae.maps.projection.CompiledProjection`` returns.

Run as ``python -m tfvae.studies.benchmark_peer --batch 64 --size 64 --latent 64 --repeats 3 --steps 15
--projection-steps 10``: prints one JSON object with ``train_slices_per_s``,
``predictor_maps_slices_per_s``, ``projection_slice_steps_per_s`` and the versions. With
``--serve`` it builds once and prints such a line for each line read from stdin (the interleaved
rounds of ``tfvae.studies.benchmark.rounds``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from tfvae.utils.timing import median_time

LEAKY_SLOPE = 0.01
FILTERS = (16, 32, 64, 256)
KERNEL_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # what limits both libraries' kernels
# the kernel classes of tfvae.studies.benchmark.rounds: both libraries limited to AVX2 + FMA, or not limited
KERNEL_CLASSES = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def build(latent: int, filters=FILTERS):
    import torch
    from torch import nn

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [], 1
            for f in filters:
                layers += [nn.Conv2d(c, f, 4, 2, 1, bias=False), nn.LeakyReLU(LEAKY_SLOPE)]
                c = f
            self.encoder = nn.Sequential(*layers, nn.Conv2d(c, 2 * latent, 4))
            layers = [nn.ConvTranspose2d(latent, c, 4, bias=False), nn.LeakyReLU(LEAKY_SLOPE)]
            for f in reversed(filters[:-1]):
                layers += [nn.ConvTranspose2d(c, f, 4, 2, 1, bias=False), nn.LeakyReLU(LEAKY_SLOPE)]
                c = f
            self.decoder = nn.Sequential(*layers, nn.ConvTranspose2d(c, 1, 4, 2, 1))

        def terms(self, x, sample: bool):
            mu, log_sigma = self.encoder(x).flatten(1).chunk(2, dim=1)
            z = mu + torch.exp(log_sigma) * torch.randn_like(mu) if sample else mu
            g = self.decoder(z[:, :, None, None])
            d = x[0].numel()
            rec = 0.5 * ((x - g) ** 2).sum(dim=(1, 2, 3)) + 0.5 * d * math.log(2 * math.pi)
            kl = 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 1.0 - 2 * log_sigma).sum(dim=1)
            return rec, kl, g

    return VAE()


class Peer:
    """The peer's model, optimizer and input, built once; ``figures()`` times the three figures
    (each the median of ``repeats`` calls after a warm-up) and can be called again: the rounds of
    ``tfvae.studies.benchmark.rounds`` call it once per round in one process (the model keeps training)."""

    def __init__(self, batch: int, size: int, latent: int, repeats: int, steps: int, projection_steps: int):
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        self.batch, self.repeats, self.steps, self.projection_steps = batch, repeats, steps, projection_steps
        self.x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, 1, size, size)).astype(np.float32))
        self.model = build(latent)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        offsets = np.arange(7) - 3.0  # the reference's 7x7 Gaussian, sigma 3, normalised (utils/util.py)
        kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 18.0)
        self.kernel = torch.from_numpy((kernel / kernel.sum()).astype(np.float32))[None, None]

    def versions(self) -> dict:
        """PyTorch's version, its threads and the kernels it picked (``ATEN_CPU_CAPABILITY`` limits them)."""
        import torch

        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def train(self):
        model, optimizer, x = self.model, self.optimizer, self.x
        for _ in range(self.steps):
            optimizer.zero_grad(set_to_none=True)
            rec, kl, _ = model.terms(x, sample=True)
            (rec + kl).mean().backward()
            optimizer.step()

    def maps(self):
        import torch
        import torch.nn.functional as F

        x = self.x

        def smooth(m):
            return F.conv2d(m, self.kernel, padding=3)

        xg = x.clone().requires_grad_(True)
        rec, kl, g = self.model.terms(xg, sample=False)
        d_rec, = torch.autograd.grad(rec.sum(), xg, retain_graph=True)
        d_kl, = torch.autograd.grad(kl.sum(), xg)
        rec_error = (x - g.detach()) ** 2
        kl_abs = d_kl.abs()
        lo, hi = kl_abs.min(), kl_abs.max()
        combi = smooth((kl_abs - lo) / (hi - lo)) * (0.5 * rec_error + 0.5 * math.log(2 * math.pi))
        return (rec_error, smooth((d_rec + d_kl).abs()), smooth(kl_abs), smooth(d_rec.abs()), combi)

    def projection(self):
        import torch

        model, x0 = self.model, self.x
        xt = x0.clone().requires_grad_(True)
        adam = torch.optim.Adam([xt], lr=0.03)
        for _ in range(self.projection_steps):
            adam.zero_grad(set_to_none=True)
            rec, _, _ = model.terms(xt, sample=False)
            (rec.sum() + 1.0 * (xt - x0).abs().sum()).backward()
            adam.step()
        with torch.no_grad():
            _, _, g = model.terms(xt, sample=False)
            return xt.detach(), (x0 - g) ** 2, g

    def figures(self) -> dict:
        """Training slices/s, all maps slices/s and projection slice-steps/s, with the versions."""
        out = self.versions()
        out["train_slices_per_s"] = self.steps * self.batch / median_time(self.train, self.repeats)
        out["predictor_maps_slices_per_s"] = self.batch / median_time(self.maps, self.repeats)
        parameters = list(self.model.parameters())
        for p in parameters:  # the projection differentiates by the input only
            p.requires_grad_(False)
        try:
            seconds = median_time(self.projection, self.repeats)
        finally:
            for p in parameters:
                p.requires_grad_(True)
        out["projection_slice_steps_per_s"] = self.batch * self.projection_steps / seconds
        return out


def measure(batch: int, size: int, latent: int, repeats: int, steps: int, projection_steps: int) -> dict:
    """One set of the three figures (``Peer.figures``) from a fresh model."""
    return Peer(batch, size, latent, repeats, steps, projection_steps).figures()


def serve(peer: Peer, commands=sys.stdin, out=sys.stdout) -> None:
    """One JSON line of ``peer.figures()`` (and the kernel settings its process sees) per line read
    from ``commands``, until it ends: the rounds of ``tfvae.studies.benchmark.rounds`` interleave it with
    tfvae's figures without starting PyTorch again."""
    for _ in commands:
        figures = peer.figures()
        figures["environment"] = {name: os.environ.get(name) for name in KERNEL_VARIABLES}
        out.write(json.dumps(figures) + "\n")
        out.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64, choices=[64], help="slice size (the 16-32-64-256 layout is 64x64)")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=15, help="training steps per timed repeat")
    p.add_argument("--projection-steps", type=int, default=10)
    p.add_argument("--serve", action="store_true", help="build once, then print one JSON line of figures per "
                                                        "line read from stdin (tfvae.studies.benchmark.rounds)")
    args = p.parse_args(argv)
    peer = Peer(args.batch, args.size, args.latent, args.repeats, args.steps, args.projection_steps)
    if args.serve:
        serve(peer)
        return 0
    result = peer.figures()
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
