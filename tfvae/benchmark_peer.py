"""The same figures as ``tfvae.benchmark`` from a plain PyTorch implementation of the same network,
to compare tfvae with (``scripts/benchmark.py --peer``; needs ``torch``, an optional dependency).

What it implements, float32 on the CPU, ``torch.set_num_threads(os.cpu_count())``:

- the network of Zimmerer et al.'s code, in its layout: 4x4 stride-2 convolutions without bias and
  LeakyReLU(0.01) at 16-32-64-256 feature maps down to 4x4, a 4x4 valid convolution to
  2 x latent (mu, log sigma), and the mirror image with transposed convolutions, a linear output
  (``tfvae.networks`` is the same maths, its two 4x4 <-> 1x1 ends written as dense layers);
- a training step: one reparameterised sample, L = Lrec + beta * KL (Gaussian NLL with unit
  variance; the closed-form KL), the batch mean, ``torch.optim.Adam``;
- the maps tfvae's predictor figure times (``tfvae.predictors``): |dLrec/dx| and |dKL/dx| from two
  backward passes through one forward pass at z = mu, ELBO-grad by the sum rule, the squared
  error, the reference's 7x7 Gaussian smoothing of the three gradient maps and its Combi, made as
  the reference code makes them (``F.conv2d``, zero padding);
- the projection: ``torch.optim.Adam`` on the input, E(x) = Lrec(x) + lambda * |x - x0|_1, then the
  projected image's reconstruction and its squared error against the input (the proj_rec_error
  map): what ``tfvae.projection.CompiledProjection`` returns.

Run as ``python -m tfvae.benchmark_peer --batch 64 --size 64 --latent 64 --repeats 3 --steps 15
--projection-steps 10``: prints one JSON object with ``train_slices_per_s``,
``predictor_maps_slices_per_s``, ``projection_slice_steps_per_s`` and the versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from tfvae.timing import median_time

LEAKY_SLOPE = 0.01
FILTERS = (16, 32, 64, 256)


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


def measure(batch: int, size: int, latent: int, repeats: int, steps: int, projection_steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, 1, size, size)).astype(np.float32))
    model = build(latent)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        rec, kl, _ = model.terms(x, sample=True)
        (rec + kl).mean().backward()
        optimizer.step()

    def train():
        for _ in range(steps):
            train_step()

    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    out["train_slices_per_s"] = steps * batch / median_time(train, repeats)

    offsets = np.arange(7) - 3.0  # the reference's 7x7 Gaussian, sigma 3, normalised (utils/util.py)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 18.0)
    kernel = torch.from_numpy((kernel / kernel.sum()).astype(np.float32))[None, None]

    def smooth(m):
        return F.conv2d(m, kernel, padding=3)

    def maps():
        xg = x.clone().requires_grad_(True)
        rec, kl, g = model.terms(xg, sample=False)
        d_rec, = torch.autograd.grad(rec.sum(), xg, retain_graph=True)
        d_kl, = torch.autograd.grad(kl.sum(), xg)
        rec_error = (x - g.detach()) ** 2
        kl_abs = d_kl.abs()
        lo, hi = kl_abs.min(), kl_abs.max()
        combi = smooth((kl_abs - lo) / (hi - lo)) * (0.5 * rec_error + 0.5 * math.log(2 * math.pi))
        return (rec_error, smooth((d_rec + d_kl).abs()), smooth(kl_abs), smooth(d_rec.abs()), combi)

    out["predictor_maps_slices_per_s"] = batch / median_time(maps, repeats)

    for p in model.parameters():
        p.requires_grad_(False)

    def projection():
        x0 = x
        xt = x0.clone().requires_grad_(True)
        adam = torch.optim.Adam([xt], lr=0.03)
        for _ in range(projection_steps):
            adam.zero_grad(set_to_none=True)
            rec, _, _ = model.terms(xt, sample=False)
            (rec.sum() + 1.0 * (xt - x0).abs().sum()).backward()
            adam.step()
        with torch.no_grad():
            _, _, g = model.terms(xt, sample=False)
            return xt.detach(), (x0 - g) ** 2, g

    out["projection_slice_steps_per_s"] = batch * projection_steps / median_time(projection, repeats)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64, choices=[64], help="slice size (the 16-32-64-256 layout is 64x64)")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=15, help="training steps per timed repeat")
    p.add_argument("--projection-steps", type=int, default=10)
    args = p.parse_args(argv)
    result = measure(args.batch, args.size, args.latent, args.repeats, args.steps, args.projection_steps)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
