"""The benchmark's PyTorch peer: the same network, and skipped in one line without torch."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tfvae import benchmark, benchmark_peer


def test_without_torch_the_peer_is_skipped_not_an_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert benchmark.peer_figures(True, 2, 2, 1) is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (optional) is not installed")
def test_the_peer_is_the_same_network_and_its_figures_come_back():
    import torch

    from tfvae.model import BetaVAE

    torch.manual_seed(0)
    peer = benchmark_peer.build(latent=64)
    ours = BetaVAE(image_size=64, latent_dim=64, seed=0)
    assert sum(p.numel() for p in peer.parameters()) == ours.count_params()
    # its terms are the model's: Normal(g, 1) NLL and KL(q || N(0, I)), against torch.distributions
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32))
    rec, kl, g = peer.terms(x, sample=False)
    mu, log_sigma = peer.encoder(x).flatten(1).chunk(2, dim=1)
    normal = torch.distributions.Normal
    expected_kl = torch.distributions.kl_divergence(normal(mu, log_sigma.exp()), normal(0.0, 1.0)).sum(dim=1)
    expected_rec = -normal(g, 1.0).log_prob(x).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(kl.detach().numpy(), expected_kl.detach().numpy(), rtol=1e-4)
    np.testing.assert_allclose(rec.detach().numpy(), expected_rec.detach().numpy(), rtol=1e-4)
    done = subprocess.run([sys.executable, "-m", "tfvae.benchmark_peer", "--batch", "4", "--repeats", "1",
                           "--steps", "1", "--projection-steps", "1"], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout)
    assert all(figures[k] > 0 for k in ("train_slices_per_s", "predictor_maps_slices_per_s",
                                        "projection_slice_steps_per_s"))
