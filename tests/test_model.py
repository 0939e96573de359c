"""The beta-VAE: architecture, ELBO terms against closed forms, KL against TFP, saving."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.model import networks
from tfvae.model.vae import BetaVAE


def tiny_model(beta=2.0, image_size=32, latent_dim=6, seed=3):
    return BetaVAE(image_size=image_size, latent_dim=latent_dim, beta=beta, seed=seed)


def inputs(n=3, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 1)).astype(np.float32)


def numpy_terms(model, x):
    """The loss of Eq. 2 at z = mu, computed in numpy from the networks' raw outputs."""
    out = model.encoder(x).numpy().astype(np.float64)
    mu, log_sigma = np.split(out, 2, axis=-1)
    sigma2 = np.exp(2 * log_sigma)
    g = model.decoder(mu.astype(np.float32)).numpy().astype(np.float64)
    d = np.prod(x.shape[1:])
    rec = 0.5 * ((x - g) ** 2).reshape(len(x), -1).sum(1) + 0.5 * d * np.log(2 * np.pi)
    kl = 0.5 * (mu**2 + sigma2 - 1.0 - np.log(sigma2)).sum(1)
    return rec, kl, g


@pytest.mark.parametrize("size, levels", [(32, 3), (64, 4), (128, 5)])
def test_architecture_matches_the_paper(size, levels):
    model = BetaVAE(image_size=size, latent_dim=16)
    convs = [l for l in model.encoder.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == levels
    for layer in convs:
        assert layer.kernel_size == (4, 4) and layer.strides == (2, 2) and not layer.use_bias
    assert [c.filters for c in convs] == list(networks.default_filters(size))
    to_latent = model.encoder.get_layer("to_latent")
    assert to_latent.kernel.shape == (4 * 4 * convs[-1].filters, 32)  # a 4x4 conv from 4x4 to 1x1
    deconvs = [l for l in model.decoder.layers if isinstance(l, keras.layers.Conv2DTranspose)]
    assert len(deconvs) == levels and all(d.strides == (2, 2) and d.kernel_size == (4, 4) for d in deconvs)
    acts = [l for l in model.encoder.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert len(acts) == levels and all(abs(a.negative_slope - 0.01) < 1e-9 for a in acts)
    assert model.encoder.output_shape == (None, 32)
    assert model.decoder.output_shape == (None, size, size, 1)
    assert model.decoder.layers[-1].activation.__name__ == "linear"
    if size == 64:
        assert model.filters == (16, 32, 64, 256)


def test_the_dense_ends_equal_the_papers_4x4_convolutions():
    """to_latent is a 4x4 valid convolution 4x4 -> 1x1; from_latent a 4x4 transposed one 1x1 -> 4x4."""
    model = BetaVAE(image_size=32, latent_dim=5, seed=0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 4, 4, 256)).astype(np.float32)
    dense = model.encoder.get_layer("to_latent")
    kernel = dense.kernel.numpy().reshape(4, 4, 256, 10)
    conv = tf.nn.conv2d(features, kernel, strides=1, padding="VALID")[:, 0, 0] + dense.bias.numpy()
    np.testing.assert_allclose(dense(features.reshape(2, -1)).numpy(), conv.numpy(), rtol=1e-5, atol=1e-4)
    z = rng.normal(size=(2, 5)).astype(np.float32)
    up = model.decoder.get_layer("from_latent")
    kernel = up.kernel.numpy().reshape(5, 4, 4, 256).transpose(1, 2, 3, 0)  # (kh, kw, out, in)
    deconv = tf.nn.conv2d_transpose(z[:, None, None, :], kernel, (2, 4, 4, 256), strides=1, padding="VALID")
    np.testing.assert_allclose(up(z).numpy().reshape(2, 4, 4, 256), deconv.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, channels", [(4, 1), (16, 16), (32, 3)])
def test_to_phases_is_the_stride_2_transposed_convolution_to_one_channel(size, channels):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, size, size, channels)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, 1, channels)).astype(np.float32)
    expected = tf.nn.conv2d_transpose(x, kernel, (2, 2 * size, 2 * size, 1), strides=2, padding="SAME").numpy()
    got = networks.to_phases(x, kernel).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_interleave_phases_is_depth_to_space_also_with_unknown_sizes():
    y = np.random.default_rng(0).normal(size=(3, 5, 7, 4)).astype(np.float32)
    want = tf.nn.depth_to_space(y, 2).numpy()
    np.testing.assert_array_equal(networks.interleave_phases(tf.constant(y)).numpy(), want)
    unknown = tf.function(networks.interleave_phases, input_signature=[tf.TensorSpec([None, None, None, 4])])
    np.testing.assert_array_equal(unknown(tf.constant(y)).numpy(), want)
    assert networks.interleave_phases(tf.zeros((0, 2, 2, 4))).shape == (0, 4, 4, 1)


def test_one_channel_layers_equal_keras_layers_with_their_gradients(monkeypatch):
    """conv1 (input gradient through to_phases) and to_image (forward through to_phases) against
    Keras's own layers with the same weights: outputs, input and weight gradients; every other
    configuration takes Keras's own path."""
    calls = []
    for name in ("_from_one_channel", "_to_one_channel"):
        monkeypatch.setattr(networks, name, lambda *a, _f=getattr(networks, name): calls.append(1) or _f(*a))
    rng = np.random.default_rng(1)
    conv, deconv = dict(strides=2, padding="same", use_bias=False), dict(strides=2, padding="same")
    phase_path = [("Conv2D", 16, 4, conv, (3, 32, 32, 1)), ("Conv2DTranspose", 1, 4, deconv, (3, 16, 16, 16))]
    keras_path = [("Conv2D", 4, 4, conv, (2, 33, 20, 1)),  # odd: "same" pads unevenly
                  ("Conv2D", 4, 4, {**conv, "padding": "valid"}, (2, 16, 16, 1)),
                  ("Conv2D", 4, 4, {**conv, "strides": 1}, (2, 16, 16, 1)),
                  ("Conv2D", 4, 3, conv, (2, 16, 16, 1)),
                  ("Conv2D", 4, 4, {**conv, "strides": 1, "dilation_rate": 2}, (2, 16, 16, 1)),
                  ("Conv2D", 4, 4, {**conv, "groups": 2}, (2, 16, 16, 2)),  # one input channel per group
                  ("Conv2DTranspose", 2, 4, deconv, (2, 8, 8, 3)),
                  ("Conv2DTranspose", 1, 4, {**deconv, "padding": "valid"}, (2, 8, 8, 3)),
                  ("Conv2DTranspose", 1, 3, deconv, (2, 8, 8, 3))]
    for cases, expect_phase_path in ((phase_path, True), (keras_path, False)):
        for kind, filters, size, options, shape in cases:
            ours, theirs = getattr(networks, kind)(filters, size, **options), getattr(keras.layers, kind)(filters, size, **options)
            x = tf.constant(rng.normal(size=shape).astype(np.float32))
            ours.build(shape), theirs.build(shape)
            theirs.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in theirs.get_weights()])
            ours.set_weights(theirs.get_weights())
            upstream = tf.constant(rng.normal(size=theirs(x).shape).astype(np.float32))
            results, calls[:] = [], []
            for layer in (ours, theirs):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x)
                    total = tf.reduce_sum(y * upstream)
                results.append([y] + tape.gradient(total, [x] + layer.trainable_weights))
            assert bool(calls) == expect_phase_path, (kind, options, shape)
            assert len(results[0]) == len(results[1]) >= 3
            for a, b in zip(*results):
                b = b.numpy()
                assert a.shape == b.shape, (kind, options, shape)
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_weights_saved_with_keras_layers_load_into_the_one_channel_layers(tmp_path, monkeypatch):
    """Keras files weights under class names: a model built with Keras's own Conv2D and
    Conv2DTranspose (runs saved before the one-channel layers) loads into today's, same outputs."""
    with monkeypatch.context() as patch:
        patch.setattr(networks, "Conv2D", keras.layers.Conv2D)
        patch.setattr(networks, "Conv2DTranspose", keras.layers.Conv2DTranspose)
        before = tiny_model(seed=4)
    assert type(before.encoder.get_layer("conv1")) is keras.layers.Conv2D
    path = str(tmp_path / "before.weights.h5")
    before.save_weights(path)
    today = tiny_model(seed=9)
    assert type(today.encoder.get_layer("conv1")) is networks.Conv2D
    today.load_weights(path)
    x = inputs(n=4, seed=2)
    np.testing.assert_allclose(today(x).numpy(), before(x).numpy(), rtol=1e-5, atol=1e-5)
    # the layers are registered: a network saved on its own loads with them
    today.encoder.save(tmp_path / "encoder.keras")
    encoder = keras.models.load_model(tmp_path / "encoder.keras")
    assert type(encoder.get_layer("conv1")) is networks.Conv2D
    np.testing.assert_array_equal(encoder(x).numpy(), today.encoder(x).numpy())


def test_flop_count_of_the_papers_network():
    """Per slice at 64x64, latent 64: each layer's 2 * outputs * kernel taps * input channels."""
    encoder = [2 * 32 * 32 * 16 * 16 * 1, 2 * 16 * 16 * 32 * 16 * 16, 2 * 8 * 8 * 64 * 16 * 32,
               2 * 4 * 4 * 256 * 16 * 64, 2 * 4 * 4 * 256 * 128]
    decoder = [2 * 64 * 4 * 4 * 256, 2 * 4 * 4 * 256 * 16 * 64, 2 * 8 * 8 * 64 * 16 * 32,
               2 * 16 * 16 * 32 * 16 * 16, 2 * 32 * 32 * 16 * 16 * 1]
    assert networks.forward_flops(BetaVAE(image_size=64, latent_dim=64)) == sum(encoder) + sum(decoder)
    assert abs(sum(encoder) + sum(decoder) - 36e6) < 0.5e6  # the paper's network: ~36 MFLOP


def test_filters_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="model.filters has 4 entries but image_size 32 needs 3"):
        BetaVAE(image_size=32, filters=[16, 32, 64, 256])


def test_loss_terms_at_mu_equal_the_closed_form():
    model = tiny_model(beta=2.5)
    x = inputs()
    terms = model.loss_terms(x, sample=False)
    rec, kl, g = numpy_terms(model, x)
    np.testing.assert_allclose(terms["rec"].numpy(), rec, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["loss"].numpy(), rec + 2.5 * kl, rtol=1e-5)
    np.testing.assert_allclose(terms["reconstruction"].numpy(), g, atol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), g, atol=1e-6)


def test_kl_equals_tfp_and_the_analytic_formula():
    model = tiny_model()
    x = inputs(n=4, seed=1)
    terms = model.loss_terms(x, sample=False)
    mu, sigma = terms["mu"].numpy().astype(np.float64), terms["sigma"].numpy().astype(np.float64)
    analytic = 0.5 * (mu**2 + sigma**2 - 1 - 2 * np.log(sigma)).sum(1)
    tfd = tfp.distributions
    mvn = tfd.kl_divergence(tfd.MultivariateNormalDiag(mu, sigma),
                            tfd.MultivariateNormalDiag(np.zeros_like(mu), np.ones_like(sigma))).numpy()
    np.testing.assert_allclose(terms["kl"].numpy(), analytic, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms["kl"].numpy(), mvn, rtol=1e-4, atol=1e-6)
    assert (analytic > 0).all()


def test_sampled_reconstruction_term_averages_to_the_expectation():
    """E_q[-log p(x|z)] by averaging sampled terms equals a numpy Monte Carlo estimate of it."""
    model = tiny_model()
    x = np.repeat(inputs(n=1, seed=2), 400, axis=0)
    sampled = model.loss_terms(x, sample=True)["rec"].numpy()
    at_mu = model.loss_terms(x[:1], sample=False)["rec"].numpy()[0]
    assert sampled.std() > 0  # z really is sampled
    terms = model.loss_terms(x[:1], sample=False)
    mu, sigma = terms["mu"].numpy(), terms["sigma"].numpy()
    z = mu + sigma * np.random.default_rng(0).normal(size=(400, mu.shape[1])).astype(np.float32)
    g = model.decoder(z).numpy()
    mc = (0.5 * ((x[:1] - g) ** 2).reshape(400, -1).sum(1) + 0.5 * x[0].size * np.log(2 * np.pi))
    assert abs(sampled.mean() - mc.mean()) < 4 * (mc.std() / np.sqrt(400)) + 1e-3 * abs(at_mu)


@pytest.mark.slow
def test_training_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = tiny_model(beta=1.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    pattern = np.sin(np.linspace(0, 3, 32))[None, None, :, None]
    x = (2.0 + pattern * inputs(n=16, seed=4)[:, :1, :1] + np.zeros((16, 32, 32, 1))).astype(np.float32)
    before = float(tf.reduce_mean(model.loss_terms(x, sample=False)["loss"]))
    history = model.fit(x, epochs=30, batch_size=16, verbose=0)
    after = float(tf.reduce_mean(model.loss_terms(x, sample=False)["loss"]))
    assert after < before - 100
    assert set(history.history) == {"loss", "rec", "kl", "rec_sq"}


def test_save_and_load_give_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model(beta=10.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = inputs(n=8, seed=5)
    model.fit(x, epochs=2, batch_size=4, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, BetaVAE)
    assert (loaded.beta, loaded.latent_dim, loaded.image_size, loaded.filters) == (10.0, 6, 32, model.filters)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    a, b = model.loss_terms(x, sample=False), loaded.loss_terms(x, sample=False)
    for key in ("rec", "kl", "loss"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_adam_gives_keras_adams_weights(dtype):
    """``FusedAdam`` (one ResourceApplyAdam kernel a variable) against ``keras.optimizers.Adam`` and
    against Adam written out in numpy (Kingma & Ba, Algorithm 1), 30 steps of the same gradients."""
    from tfvae.model.optimizer import FusedAdam

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(40, 3)).astype(dtype)
    grads = [rng.normal(size=w0.shape).astype(dtype) for _ in range(30)]
    fused, plain = keras.Variable(w0, dtype=dtype), keras.Variable(w0, dtype=dtype)
    a, b = FusedAdam(1e-2), keras.optimizers.Adam(1e-2)
    for g in grads:
        a.apply_gradients([(tf.constant(g), fused)])
        b.apply_gradients([(tf.constant(g), plain)])
    w, m, v = w0.astype(np.float64), np.zeros(w0.shape), np.zeros(w0.shape)
    for t, g in enumerate(grads, start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
        w = w - 1e-2 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7 / np.sqrt(1 - 0.999 ** t))
    moved = np.abs(w - w0).max()
    assert moved > 0.05
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), atol=1e-5 * moved)
    np.testing.assert_allclose(fused.numpy(), w, atol=1e-5 * moved)
    assert int(a.iterations.numpy()) == 30


def test_a_run_trained_with_fused_adam_loads_in_a_fresh_process(tmp_path):
    """What ``tfvae.runs.training`` saves loads where only the model layer is imported (evaluate,
    localize and export load runs without importing training)."""
    import subprocess
    import sys

    from tfvae.model.optimizer import FusedAdam

    model = BetaVAE(image_size=32, latent_dim=4, seed=0)
    model.compile(optimizer=FusedAdam(1e-3))
    model.fit(np.zeros((4, 32, 32, 1), np.float32), epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    code = ("import sys; from tfvae.model.vae import load; m = load(sys.argv[1]); "
            "assert 'tfvae.runs.training' not in sys.modules; print(type(m.optimizer).__name__)")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "FusedAdam"


def test_a_model_saved_with_fused_adam_resumes_its_optimizer_state(tmp_path):
    from tfvae.model.optimizer import FusedAdam

    model = BetaVAE(image_size=32, latent_dim=4, seed=0)
    model.compile(optimizer=FusedAdam(1e-3))
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 1)).astype(np.float32)
    model.fit(x, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, FusedAdam) and int(loaded.optimizer.iterations.numpy()) == 2
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
