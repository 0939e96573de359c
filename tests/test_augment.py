"""tfvae.data.augment: deterministic, each transform on/off, rotation and flip orientation, and the
pipeline: only the training split is ever augmented."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfvae.data import augment as A
from tfvae import config as config_lib
from tfvae.data import pipelines as data
from tfvae.runs.run import Run

OFF = config_lib.defaults()["augment"]
ON = {"noise_std": 0.1, "rotation_deg": 20.0, "scale": 0.1, "flip": True, "brightness": 0.2, "contrast": 0.2,
      "gamma": 0.3}


def _brain_batch(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    brain = ((x - 7.0) ** 2 / 30 + (y - 8.0) ** 2 / 45) < 1
    images = np.where(brain[None, ..., None], rng.normal(0, 1, (n, size, size, 1)) + x[None, ..., None] / size, 0)
    return images.astype(np.float32)


def _run(images, settings, seed=(1, 2)):
    return A.augment(images, settings, tf.constant(seed, tf.int64)).numpy()


def test_same_seed_same_result_other_seed_other_result():
    x = _brain_batch()
    first, again, other = _run(x, ON, (3, 4)), _run(x, ON, (3, 4)), _run(x, ON, (3, 5))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("key, value", [(k, True if k == "flip" else ON[k]) for k in A.KEYS])
def test_each_transform_changes_images_when_on_and_nothing_when_off(key, value):
    x = _brain_batch(n=8)
    on = _run(x, {**OFF, key: value})
    assert on.shape == x.shape
    assert not np.allclose(on, x), key
    np.testing.assert_array_equal(_run(x, {**OFF, key: 0 if key != "flip" else False}), x)


def test_all_off_is_the_identity_also_for_one_slice():
    x = _brain_batch(n=1)[0]
    assert not A.is_active(OFF) and A.is_active({**OFF, "gamma": 0.1})
    np.testing.assert_array_equal(_run(x, OFF), x)
    assert _run(x, ON).shape == x.shape


def test_intensity_transforms_leave_the_background_at_zero():
    x = _brain_batch()
    out = _run(x, {**OFF, "noise_std": 0.5, "brightness": 0.5, "contrast": 0.5, "gamma": 0.5})
    assert np.all(out[x == 0] == 0) and not np.allclose(out[x != 0], x[x != 0])


def test_a_90_degree_rotation_is_np_rot90_and_the_flip_is_np_flip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    x[:, 1, 6] = 5.0  # an asymmetric marker
    rotated = A.warp(x, tf.constant([math.pi / 2] * 2), tf.constant([1.0, 1.0])).numpy()
    np.testing.assert_allclose(rotated, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)
    assert not np.allclose(rotated, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-2)
    # zoom 2 about the centre: the centre pixel stays, a corner comes from nearer the centre
    zoomed = A.warp(x, tf.constant([0.0, 0.0]), tf.constant([1.0, 2.0])).numpy()
    np.testing.assert_allclose(zoomed[0], x[0], atol=1e-6)
    # output (0, 0) samples the input at 3.5 + (0 - 3.5) / 2 = 1.75 along rows and columns
    w = np.array([0.25, 0.75])
    np.testing.assert_allclose(zoomed[1, 0, 0, 0], w @ x[1, 1:3, 1:3, 0] @ w, atol=1e-5)
    flipped = _run(x, {**OFF, "flip": True}, (0, 0))
    for i in range(2):
        assert (np.array_equal(flipped[i], np.flip(x[i], axis=1)) or np.array_equal(flipped[i], x[i]))
    many = _brain_batch(n=32)
    out = _run(many, {**OFF, "flip": True})
    decisions = [np.array_equal(o, np.flip(m, axis=1)) for o, m in zip(out, many)]
    assert all(d or np.array_equal(o, m) for d, o, m in zip(decisions, out, many))
    assert 4 < sum(decisions) < 28  # about half are flipped


def _examples(n=24, size=16):
    """Slices stored volume by volume, as the builders store them (4 volumes)."""
    ids = np.repeat([f"vol{i}" for i in range(4)], n // 4)
    return tf.data.Dataset.from_tensor_slices({"image": _brain_batch(n=n, size=size), "volume_id": ids})


def _epochs(ds, n=2):
    return [np.concatenate(list(ds.as_numpy_iterator())) for _ in range(n)]


def test_the_pipeline_augments_deterministically_and_differently_each_epoch():
    first = _epochs(data.images(_examples(), 8, shuffle_buffer=24, seed=3, augment=ON))
    again = _epochs(data.images(_examples(), 8, shuffle_buffer=24, seed=3, augment=ON))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])
    plain = _epochs(data.images(_examples(), 8, shuffle_buffer=24, seed=3))
    for a, b in zip(plain, _epochs(data.images(_examples(), 8, shuffle_buffer=24, seed=3, augment=OFF))):
        np.testing.assert_array_equal(a, b)  # the default config changes nothing
    evaluation = np.concatenate(list(data.images(_examples(), 8).as_numpy_iterator()))
    np.testing.assert_array_equal(evaluation, _brain_batch(n=24))  # no augment argument: untouched


def test_training_augments_the_train_split_only(tiny_data_dir, tmp_path, monkeypatch):
    calls = []
    real = data.images

    def spy(examples, batch_size, **kwargs):
        calls.append(kwargs.get("augment"))
        return real(examples, batch_size, **kwargs)

    monkeypatch.setattr(data, "images", spy)
    config = config_lib.resolve({"name": "aug"}, [
        "data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}", "model.filters=null",
        "model.latent_dim=4", "train.epochs=1", "train.batch_size=32", "augment.rotation_deg=10",
        "augment.noise_std=0.1"])
    run = str(tmp_path / "run")
    Run.create(run, config).train(verbose=0)
    active = [c for c in calls if A.is_active(c)]
    assert len(active) == 1 and active[0]["rotation_deg"] == 10.0  # train; validation and previews plain
    assert len(calls) >= 3


def test_reference_ranges_for_zoom_contrast_and_noise():
    x = _brain_batch(n=64)
    brain = x != 0
    # contrast as a factor range: every slice's brain is multiplied by one factor inside [0.95, 1.1]
    out = _run(x, {**OFF, "contrast": [0.95, 1.1]})
    ratio = out[brain].reshape(-1) / x[brain].reshape(-1)
    per_slice = [np.median((out[i][brain[i]] / x[i][brain[i]])) for i in range(len(x))]
    assert 0.95 - 1e-5 <= ratio.min() and ratio.max() <= 1.1 + 1e-5
    assert min(per_slice) < 0.99 and max(per_slice) > 1.05  # both sides of 1 are drawn
    # a noise range draws each slice's std: some slices nearly clean, some noisy
    noisy = _run(x, {**OFF, "noise_std": [0.0, 0.5]})
    stds = [np.std(noisy[i][brain[i]] - x[i][brain[i]]) for i in range(len(x))]
    assert min(stds) < 0.1 and max(stds) > 0.35
    # a zoom range [1.0, 1.0] is off; [0.9, 1.2] changes the images
    np.testing.assert_array_equal(_run(x, {**OFF, "scale": [1.0, 1.0]}), x)
    assert not np.allclose(_run(x, {**OFF, "scale": [0.9, 1.2]}), x)
    assert A.factor_range(0.1) == (0.9, 1.1) and A.factor_range([0.9, 1.2]) == (0.9, 1.2)
    assert A.factor_range(0.0) is None


def test_training_shuffles_the_volume_order_every_epoch():
    """Slices stored volume by volume, a buffer far smaller than the split: a batch can still hold
    slices of the first and the last volume, and the first batch differs between epochs."""
    n_volumes, per = 5, 8
    images = np.repeat(np.arange(n_volumes, dtype=np.float32), per)[:, None, None, None] * np.ones((1, 4, 4, 1))
    ids = np.repeat([f"vol{i}" for i in range(n_volumes)], per)
    examples = tf.data.Dataset.from_tensor_slices({"image": images.astype(np.float32), "volume_id": ids})
    ds = data.images(examples, 4, shuffle_buffer=4, seed=0)
    firsts, mixed_ends = [], False
    for _ in range(12):
        batches = [sorted(set(b[:, 0, 0, 0].astype(int).tolist())) for b in ds.as_numpy_iterator()]
        firsts.append(tuple(batches[0]))
        mixed_ends |= any(0 in b and n_volumes - 1 in b for b in batches)
        # every slice once per epoch
        assert sorted(np.concatenate(list(ds.as_numpy_iterator()))[:, 0, 0, 0].tolist()) == sorted(images[:, 0, 0, 0].tolist())
    assert any(n_volumes - 1 in f for f in firsts)  # the last volume can come first
    assert len(set(firsts)) > 1
    assert mixed_ends
    assert ds.cardinality().numpy() == n_volumes * per // 4  # Keras knows an epoch's length
