"""Each pixel predictor against an independent computation (finite differences, numpy)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae.model.vae import BetaVAE
from tfvae.maps.predictors import PixelPredictors, min_max, reference_kernel, smooth, smooth_reference
from tfvae.maps.projection import CompiledProjection, energy, project

BETA = 3.0


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    m = BetaVAE(image_size=8, latent_dim=3, beta=BETA, filters=[6], seed=1)
    # make the weights large enough that every term has a clear gradient
    for w in m.trainable_weights:
        w.assign(w * 3.0)
    return m


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)


def finite_difference(model, x, term, slice_index, pixel, eps=1e-2):
    """Central difference of ``term`` of slice ``slice_index`` w.r.t. one of its pixels (float64 sums)."""
    values = []
    for sign in (1, -1):
        shifted = x.copy()
        shifted[(slice_index, *pixel, 0)] += sign * eps
        values.append(np.float64(model.loss_terms(shifted, sample=False)[term].numpy()[slice_index]))
    return (values[0] - values[1]) / (2 * eps)


PIXELS = [(0, (1, 2)), (1, (4, 4)), (2, (7, 0)), (2, (3, 6))]


@pytest.mark.parametrize("term, key", [("rec", "d_rec"), ("kl", "d_kl"), ("loss", "d_loss")])
def test_signed_gradients_match_finite_differences(model, x, term, key):
    grads = PixelPredictors(model).signed_maps(x)[key].numpy()
    for slice_index, pixel in PIXELS:
        fd = finite_difference(model, x, term, slice_index, pixel)
        analytic = grads[(slice_index, *pixel, 0)]
        assert abs(analytic - fd) <= 2e-2 * max(1.0, abs(fd)), (term, slice_index, pixel, analytic, fd)
    assert np.abs(grads).max() > 1e-2  # the gradient is not trivially zero


def test_each_slice_gets_the_gradient_of_its_own_loss(model, x):
    alone = PixelPredictors(model).signed_maps(x[1:2])["d_rec"].numpy()
    batched = PixelPredictors(model).signed_maps(x)["d_rec"].numpy()
    np.testing.assert_allclose(batched[1:2], alone, rtol=1e-4, atol=1e-5)


def test_maps_are_the_absolute_values_and_elbo_grad_is_the_signed_sum(model, x):
    predictors = PixelPredictors(model, smooth_gradients=False, combi="paper")
    signed = {k: v.numpy() for k, v in predictors.signed_maps(x).items()}
    maps = predictors(x)
    np.testing.assert_allclose(signed["d_loss"], signed["d_rec"] + BETA * signed["d_kl"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["elbo_grad"], np.abs(signed["d_rec"] + BETA * signed["d_kl"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["kl_grad"], np.abs(signed["d_kl"]), rtol=1e-6)
    np.testing.assert_allclose(maps["rec_grad"], np.abs(signed["d_rec"]), rtol=1e-6)
    # |a + b| differs from |a| + |b| somewhere: the sum is taken before the absolute value
    assert np.abs(maps["elbo_grad"] - (maps["rec_grad"] + BETA * maps["kl_grad"])).max() > 1e-3
    np.testing.assert_allclose(maps["rec_error"], (x - model(x).numpy()) ** 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["combi"], maps["kl_grad"] * maps["rec_error"], rtol=1e-6)
    np.testing.assert_array_equal(maps["intensity"], x)


def test_the_reference_elbo_grad_has_no_beta_weight(model, x):
    """Zimmerer et al.'s ELBO is Lrec + KL: its gradient, by finite differences of rec + kl, unlike the default's."""
    reference = PixelPredictors(model, smooth_gradients=False, elbo_grad="reference")
    signed = {k: v.numpy() for k, v in reference.signed_maps(x).items()}
    for slice_index, pixel in PIXELS:
        fd = finite_difference(model, x, "rec", slice_index, pixel) + finite_difference(model, x, "kl", slice_index, pixel)
        assert abs(signed["d_loss"][(slice_index, *pixel, 0)] - fd) <= 2e-2 * max(1.0, abs(fd))
    default = PixelPredictors(model, smooth_gradients=False)(x)["elbo_grad"]
    assert np.abs(reference(x)["elbo_grad"] - default).max() > 1e-3  # they differ at beta 3
    with pytest.raises(ValueError, match="elbo_grad must be one of beta, reference"):
        PixelPredictors(model, elbo_grad="paper")


def hand_kernel():
    """utils/util.py::smooth_tensor written out: kernel_size 8 -> 7, sigma 3, centred, sum 1."""
    k = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            k[i, j] = np.exp(-((i - 3) ** 2 + (j - 3) ** 2) / (2 * 3.0 ** 2)) / (2 * np.pi * 9.0)
    return k / k.sum()


def hand_smooth(maps):
    """Zero-padded 7x7 convolution of every slice, pixel by pixel."""
    k = hand_kernel()
    b, h, w, _ = maps.shape
    padded = np.zeros((b, h + 6, w + 6))
    padded[:, 3:-3, 3:-3] = maps[..., 0]
    out = np.zeros((b, h, w, 1))
    for i in range(h):
        for j in range(w):
            out[:, i, j, 0] = (padded[:, i:i + 7, j:j + 7] * k).sum(axis=(1, 2))
    return out


def test_reference_kernel_and_smoothing_match_a_hand_built_7x7_gaussian(x):
    np.testing.assert_allclose(reference_kernel(), hand_kernel(), rtol=1e-12)
    assert reference_kernel().shape == (7, 7) and reference_kernel(kernel_size=7).shape == (7, 7)
    np.testing.assert_allclose(smooth_reference(x), hand_smooth(x), rtol=1e-5, atol=1e-6)
    # zero padding: a constant image loses mass at its border but keeps it in the middle
    ones = np.ones((1, 16, 16, 1), np.float32)
    assert smooth_reference(ones)[0, 0, 0, 0] < 0.6 and smooth_reference(ones)[0, 8, 8, 0] == pytest.approx(1.0)


def test_the_smoothing_of_non_square_maps_is_the_7x7_correlation_with_zero_padding():
    from scipy import ndimage

    maps = np.random.default_rng(1).random((2, 9, 13, 1)).astype(np.float32)
    want = ndimage.correlate(maps.astype(np.float64), hand_kernel()[None, :, :, None], mode="constant", cval=0.0)
    np.testing.assert_allclose(smooth_reference(maps), want, rtol=1e-5, atol=1e-6)


def test_gradient_maps_are_smoothed_and_rec_error_is_not(model, x):
    smoothed = PixelPredictors(model)(x)  # the reference's default: gradients smoothed
    plain = PixelPredictors(model, smooth_gradients=False)(x)
    for name in ("elbo_grad", "kl_grad", "rec_grad"):
        np.testing.assert_allclose(smoothed[name], hand_smooth(plain[name]), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(smoothed["rec_error"], plain["rec_error"])
    extra = PixelPredictors(model, smooth_gradients=False, smooth_sigma=1.5)(x)
    np.testing.assert_allclose(extra["rec_grad"], smooth(plain["rec_grad"], 1.5), rtol=1e-6)
    assert extra["rec_grad"].std() < plain["rec_grad"].std()


def test_per_pixel_negative_log_likelihood_is_tfp_normal():
    import math

    import tensorflow_probability as tfp

    rng = np.random.default_rng(3)
    x, g = rng.normal(size=50), rng.normal(size=50)
    nll = -tfp.distributions.Normal(g, 1.0).log_prob(x).numpy()
    np.testing.assert_allclose(nll, 0.5 * (x - g) ** 2 + 0.5 * math.log(2 * math.pi), rtol=1e-6)


def test_zimmerer_combi_is_the_reference_formula(model, x):
    plain = PixelPredictors(model, smooth_gradients=False)(x)
    kl, rec = plain["kl_grad"].astype(np.float64), plain["rec_error"].astype(np.float64)
    nll = 0.5 * rec + 0.5 * np.log(2 * np.pi)  # the reference's per-pixel rec term, constant included
    # without a fixed range: min-max over the whole batch, as utils/util.py::normalize does
    batch = PixelPredictors(model)(x)["combi"]
    np.testing.assert_allclose(batch, hand_smooth((kl - kl.min()) / (kl.max() - kl.min())) * nll, rtol=1e-4, atol=1e-7)
    # with a fixed range (taken from healthy validation maps): a slice's map no longer depends on its batch
    fixed = PixelPredictors(model, kl_range=(0.0, 2.0 * float(kl.max())))
    np.testing.assert_allclose(fixed(x)["combi"], hand_smooth(kl / (2.0 * kl.max())) * nll, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fixed(x[1:2])["combi"], fixed(x)["combi"][1:2], rtol=1e-4, atol=1e-7)
    assert not np.allclose(PixelPredictors(model)(x[1:2])["combi"], batch[1:2], rtol=1e-3)
    # the paper's product is kept as a variant
    np.testing.assert_allclose(PixelPredictors(model, combi="paper", smooth_gradients=False)(x)["combi"],
                               plain["kl_grad"] * plain["rec_error"], rtol=1e-6)
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])


def test_sampled_maps_average_over_z(model, x):
    keras.utils.set_random_seed(0)
    sampled = PixelPredictors(model, n_samples=64)(x)
    at_mu = PixelPredictors(model)(x)
    # the KL term does not depend on z: its gradient is the same up to float error
    np.testing.assert_allclose(sampled["kl_grad"], at_mu["kl_grad"], rtol=1e-3, atol=1e-5)
    assert not np.allclose(sampled["rec_error"], at_mu["rec_error"])


def total_energy(model, x, x0, lam):
    return energy(model, tf.constant(x), tf.constant(x0), lam).numpy()


def test_projection_lowers_the_energy_and_stays_closer_to_x0_as_lambda_grows(model, x):
    distances = []
    for lam in (0.1, 0.5, 2.0):
        projected, _, _ = CompiledProjection(model, steps=40, lam=lam, lr=0.03)(x)
        assert np.all(total_energy(model, projected, x, lam) < total_energy(model, x, x, lam))
        distances.append(np.abs(projected - x).sum())
    assert distances[0] > distances[1] > distances[2]


def test_projection_score_is_the_reconstruction_error_of_the_projected_image(model, x):
    projected, score, reconstruction = CompiledProjection(model, steps=10)(x)
    np.testing.assert_allclose(reconstruction, model(projected).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, (x - reconstruction) ** 2, rtol=1e-5, atol=1e-6)
    _, zero_steps, _ = CompiledProjection(model, steps=0)(x)
    np.testing.assert_allclose(zero_steps, PixelPredictors(model)(x)["rec_error"], rtol=1e-5, atol=1e-6)


def test_compiled_and_eager_projection_agree(model, x):
    compiled, _, _ = CompiledProjection(model, steps=25, lam=0.5, lr=0.03)(x)
    eager = project(model, x, 25, 0.5, 0.03).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)
    assert np.abs(eager - x).max() > 0.1  # it moved


def test_masked_energy_is_the_weighted_l1_data_term_computed_by_hand(model, x):
    rng = np.random.default_rng(0)
    x1 = (x + rng.normal(0, 0.2, x.shape)).astype(np.float32)
    weights = (rng.random(x.shape) > 0.5).astype(np.float32)
    rec = model.loss_terms(tf.constant(x1), sample=False)["rec"].numpy()
    got = energy(model, tf.constant(x1), tf.constant(x), 0.7, tf.constant(weights)).numpy()
    np.testing.assert_allclose(got, rec + 0.7 * (weights * np.abs(x1 - x)).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_masked_projection_with_unit_weights_from_x0_is_the_projection(model, x):
    projection = CompiledProjection(model, steps=15, lam=0.5, lr=0.03)
    _, _, reconstruction = projection(x)
    masked = projection.masked(x, x, np.ones_like(x))
    np.testing.assert_allclose(masked, reconstruction, rtol=1e-5, atol=1e-6)


def test_a_freed_region_follows_the_model_while_the_rest_stays_at_its_data(model, x):
    free = np.zeros_like(x)
    free[:, 2:6, 2:6] = 1.0
    x_t = project(model, x, 30, 1e4, 0.03, weights=tf.constant(1.0 - free)).numpy()
    moved = np.abs(x_t - x)
    assert moved[free == 1].mean() > 0.02 and moved[free == 0].max() < 0.03 * moved[free == 1].mean() + 1e-3
    start = (x * (1 - free)).astype(np.float32)  # the freed region started elsewhere: only there the start matters
    again = project(model, x, 30, 1e4, 0.03, x_init=tf.constant(start), weights=tf.constant(1.0 - free)).numpy()
    assert np.abs(again - x_t)[free == 1].mean() > np.abs(again - x_t)[free == 0].mean()


def test_the_scorer_computes_only_what_is_asked(model, x, monkeypatch):
    from tfvae import config as config_lib
    from tfvae.maps.scoring import Scorer

    config = config_lib.resolve({}, ["data.image_size=8"])
    calls = {"gradients": 0}
    real = PixelPredictors.network

    def counted(self, batch):
        calls["gradients"] += 1
        return real(self, batch)

    monkeypatch.setattr(PixelPredictors, "network", counted)
    only = Scorer(model, config, ["intensity"])(x)
    assert calls["gradients"] == 0 and set(only) == {"intensity"}
    rec = Scorer(model, config, ["rec_error", "intensity"])(x)
    assert calls["gradients"] == 0
    full = Scorer(model, config, ["rec_error", "rec_grad"])(x)
    assert calls["gradients"] == 1
    np.testing.assert_allclose(rec["rec_error"], full["rec_error"], rtol=1e-5, atol=1e-6)


def test_every_map_equals_the_numpy_made_maps_to_1e5(model, x):
    """The maps made in one graph (gradients, |.|, the reference's smoothing as products with banded
    matrices, the three maps in one call) and
    the Combi against the same maps made the earlier way: signed gradients, then float64 numpy
    (scipy.ndimage.correlate with the 7x7 kernel, zero padding) -- to 1e-5 of each map's range."""
    from scipy import ndimage

    kl_range = (0.0, 0.5)
    predictors = PixelPredictors(model, kl_range=kl_range)
    signed = {k: v.numpy().astype(np.float64) for k, v in predictors.signed_maps(x).items()}
    kernel = hand_kernel()[None, :, :, None]

    def numpy_smooth(m):
        return ndimage.correlate(m, kernel, mode="constant", cval=0.0)

    kl = np.abs(signed["d_kl"])
    expected = {"rec_error": signed["rec_error"], "elbo_grad": numpy_smooth(np.abs(signed["d_loss"])),
                "kl_grad": numpy_smooth(kl), "rec_grad": numpy_smooth(np.abs(signed["d_rec"])),
                "combi": numpy_smooth((kl - kl_range[0]) / (kl_range[1] - kl_range[0]))
                * (0.5 * signed["rec_error"] + 0.5 * np.log(2 * np.pi))}
    maps = predictors(x)
    for name, want in expected.items():
        np.testing.assert_allclose(maps[name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name)
