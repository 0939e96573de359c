"""On-the-fly augmentation of training slices (the paper: random noise, rotation, "colour").

``augment(images, config, seed)`` transforms one slice (H, W, C) or a batch (B, H, W, C) with
stateless random ops: the same ``seed`` (a shape-[2] integer tensor) gives the same result. Each
slice of a batch draws its own parameters. In order:

1. ``flip`` -- left-right mirror (the canonical x axis, i.e. the columns) with probability 1/2.
2. ``rotation_deg`` / ``scale`` -- one bilinear affine warp about the image centre: a rotation by
   an angle uniform in [-rotation_deg, rotation_deg] (positive = counter-clockwise as displayed,
   row 0 at the top, like ``np.rot90``) and a zoom by a factor uniform in [1 - scale, 1 + scale]
   (or in [low, high] when ``scale`` is a pair, e.g. the reference's [0.9, 1.2]); pixels from
   outside the image are 0 (the background of the z-scored slices).
3. Intensity ("colour"), inside the brain only (pixels != 0 after the warp; the background stays 0
   as in the test data): ``gamma`` (exponent exp(U(-g, g)) applied to the brain's min-max
   normalised intensities, then mapped back to the same range), ``contrast`` (multiply by
   U(1 - c, 1 + c), or by U(low, high) for a pair: the reference's multiplicative brightness
   [0.95, 1.1]), ``brightness`` (add U(-b, b)).
4. ``noise_std`` -- Gaussian noise of that std added inside the brain; a pair [low, high] draws
   each slice's std from U(low, high) (the reference: [0, 0.05], applied everywhere).

The paper configs (``configs/beta*.json``, ``latent*.json``) use the reference's augmentation
(Zimmerer et al., ``data/brain_ds.py``): mirror, rotation +-0.1 rad (5.73 degrees), zoom 0.9-1.2,
multiplicative brightness 0.95-1.1 (our ``contrast``) and Gaussian noise.

A transform whose setting is 0 / false is skipped entirely, so the default config leaves the images
untouched. ``tfvae.data.pipelines.images(..., augment=config["augment"], seed=...)`` applies this to the
training split only, with a fresh seed per batch and epoch.
"""

from __future__ import annotations

import math

import tensorflow as tf

KEYS = ("noise_std", "rotation_deg", "scale", "flip", "brightness", "contrast", "gamma")


def is_active(config: dict | None) -> bool:
    """Whether ``config`` (the ``augment`` section) turns on any transform."""
    return bool(config) and any(bool(config.get(k)) for k in KEYS)


def warp_transforms(angles, scales, height: int, width: int) -> tf.Tensor:
    """(B, 8) projective transforms (output pixel -> input pixel, as ImageProjectiveTransformV3
    wants) of a rotation by ``angles`` (radians, counter-clockwise as displayed) and a zoom by
    ``scales`` about the image centre."""
    angles = tf.cast(angles, tf.float32)
    inv = 1.0 / tf.cast(scales, tf.float32)
    cos, sin = tf.cos(angles) * inv, tf.sin(angles) * inv
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # input (x, y) = centre + M (output - centre); x = column, y = row (pointing down)
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = tf.zeros_like(cos)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images, angles, scales) -> tf.Tensor:
    """Rotate (radians, counter-clockwise) and zoom a batch (B, H, W, C) bilinearly; 0 outside."""
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=warp_transforms(angles, scales, height, width),
        output_shape=tf.constant([height, width], tf.int32), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def factor_range(value) -> tuple[float, float] | None:
    """A zoom / contrast setting as the (low, high) range of its factor: a number s means
    [1 - s, 1 + s], a pair is the range itself; None when off (0, or the range [1, 1])."""
    if isinstance(value, (list, tuple)):
        low, high = map(float, value)
    else:
        low, high = 1.0 - float(value or 0.0), 1.0 + float(value or 0.0)
    return None if low == high == 1.0 else (low, high)


def _seeds(seed, n: int):
    """``n`` independent stateless seeds derived from ``seed``."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n), axis=0)


def augment(images, config: dict, seed) -> tf.Tensor:
    """Augment one slice (H, W, C) or a batch (B, H, W, C) as ``config`` (the ``augment`` section)
    says; deterministic given ``seed`` (shape [2] integers)."""
    images = tf.convert_to_tensor(images, tf.float32)
    single = images.shape.rank == 3
    x = images[None] if single else images
    if not is_active(config):
        return images
    batch = tf.shape(x)[0]
    s = _seeds(seed, 8)
    per_image = tf.reshape(batch, [1])

    def uniform(k, low, high):
        return tf.random.stateless_uniform(per_image, s[k], low, high)

    def per_pixel(v):
        return tf.reshape(v, [-1, 1, 1, 1])

    if config.get("flip"):
        flip = uniform(0, 0.0, 1.0) < 0.5
        x = tf.where(per_pixel(flip), tf.reverse(x, axis=[2]), x)
    rotation = float(config.get("rotation_deg", 0.0))
    scale = factor_range(config.get("scale", 0.0))
    if rotation or scale:
        angles = (uniform(1, -rotation, rotation) * (math.pi / 180.0) if rotation
                  else tf.zeros(per_image, tf.float32))
        scales = uniform(2, *scale) if scale else tf.ones(per_image, tf.float32)
        x = warp(x, angles, scales)
    brain = tf.cast(tf.not_equal(x, 0.0), tf.float32)
    gamma = float(config.get("gamma", 0.0))
    if gamma:
        big = tf.constant(3.0e38, tf.float32)
        low = tf.reduce_min(tf.where(brain > 0, x, big), axis=[1, 2, 3], keepdims=True)
        high = tf.reduce_max(tf.where(brain > 0, x, -big), axis=[1, 2, 3], keepdims=True)
        has_brain = high > low
        low, high = tf.where(has_brain, low, 0.0), tf.where(has_brain, high, 1.0)
        unit = tf.clip_by_value((x - low) / (high - low), 0.0, 1.0)
        exponent = per_pixel(tf.exp(uniform(3, -gamma, gamma)))
        x = tf.where(brain > 0, low + (high - low) * tf.pow(unit, exponent), x)
    contrast = factor_range(config.get("contrast", 0.0))
    if contrast:
        x = x * (1.0 + (per_pixel(uniform(4, *contrast)) - 1.0) * brain)
    brightness = float(config.get("brightness", 0.0))
    if brightness:
        x = x + per_pixel(uniform(5, -brightness, brightness)) * brain
    noise = config.get("noise_std", 0.0)
    if noise:
        low, high = noise if isinstance(noise, (list, tuple)) else (noise, noise)
        std = per_pixel(uniform(7, low, high)) if high > low else float(high)
        x = x + tf.random.stateless_normal(tf.shape(x), s[6]) * std * brain
    return x[0] if single else x
