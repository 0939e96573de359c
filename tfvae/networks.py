"""The paper's fully-convolutional encoder and decoder (Zimmerer et al. 2019, as used by Zhou et al.).

Encoder: one 4x4 stride-2 convolution without bias per level (feature maps 16-32-64-256 at 64x64),
each followed by LeakyReLU(0.01), halving the image down to 4x4; then a 4x4 valid convolution to
``2 * latent_dim`` channels at 1x1, split into mu and log sigma.

Decoder, the mirror image: a 4x4 transposed convolution from z (1x1) to 4x4 with the last level's
feature maps, then one 4x4 stride-2 transposed convolution per level (without bias, LeakyReLU)
doubling the size, the last one to one channel with a bias and a linear output.

The number of stride-2 levels is ``log2(image_size / 4)``: 4 at 64x64, 3 at 32x32, 5 at 128x128.

The 4x4 convolution from the 4x4 feature map to 1x1, and the 4x4 transposed convolution from 1x1
back to 4x4, touch every input position exactly once: they *are* dense layers on the flattened
map, and are implemented as ``Dense`` (same parameters, same outputs), which TensorFlow runs about
3x faster on CPU than its convolution kernels for this shape (see ``docs/performance.md``).
"""

from __future__ import annotations

import math

import keras
from keras import layers

PAPER_FILTERS = (16, 32, 64, 256)
LEAKY_SLOPE = 0.01


def num_levels(image_size: int) -> int:
    levels = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2**levels != image_size:
        raise ValueError(f"image_size must be a power of 2 and at least 8, got {image_size}")
    return levels


def default_filters(image_size: int) -> tuple[int, ...]:
    """16-32-64-256 at 64x64; fewer levels drop the first ones, more levels prepend halvings."""
    levels = num_levels(image_size)
    if levels <= len(PAPER_FILTERS):
        return PAPER_FILTERS[len(PAPER_FILTERS) - levels:]
    extra = levels - len(PAPER_FILTERS)
    return tuple(max(PAPER_FILTERS[0] >> (extra - i), 1) for i in range(extra)) + PAPER_FILTERS


def resolve_filters(image_size: int, filters) -> tuple[int, ...]:
    if filters is None:
        return default_filters(image_size)
    levels = num_levels(image_size)
    if len(filters) != levels:
        raise ValueError(
            f"model.filters has {len(filters)} entries but image_size {image_size} needs {levels} "
            f"(one per stride-2 level down to 4x4), got {list(filters)}")
    return tuple(int(f) for f in filters)


def build_encoder(image_size: int, latent_dim: int, filters) -> keras.Model:
    """x (B, S, S, 1) -> concatenated (mu, log_sigma) of shape (B, 2 * latent_dim)."""
    x = inputs = keras.Input((image_size, image_size, 1), name="x")
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 4, strides=2, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.LeakyReLU(LEAKY_SLOPE, name=f"act{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(2 * latent_dim, name="to_latent")(x)  # = a 4x4 valid convolution to 1x1
    return keras.Model(inputs, outputs, name="encoder")


def build_decoder(image_size: int, latent_dim: int, filters) -> keras.Model:
    """z (B, latent_dim) -> mean of p(x|z), shape (B, S, S, 1), linear output."""
    z = inputs = keras.Input((latent_dim,), name="z")
    x = layers.Dense(4 * 4 * filters[-1], use_bias=False, name="from_latent")(z)  # = a 4x4 transposed conv
    x = layers.Reshape((4, 4, filters[-1]), name="to_4x4")(x)
    x = layers.LeakyReLU(LEAKY_SLOPE, name="act0")(x)
    targets = list(reversed(filters[:-1]))
    for i, f in enumerate(targets):
        x = layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=False, name=f"deconv{i + 1}")(x)
        x = layers.LeakyReLU(LEAKY_SLOPE, name=f"act{i + 1}")(x)
    outputs = layers.Conv2DTranspose(1, 4, strides=2, padding="same", name="to_image")(x)
    return keras.Model(inputs, outputs, name="decoder")


def layer_flops(layer) -> int:
    """Floating-point operations (a multiply-add counts 2) of one slice through a convolution,
    transposed convolution or dense layer (biases and activations, a few per mille, are not
    counted); 0 for other layers."""
    if isinstance(layer, layers.Conv2DTranspose):
        _, h, w, c_in = layer.input.shape
        return 2 * h * w * c_in * layer.filters * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        return 2 * h * w * c_out * layer.input.shape[-1] * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass of one slice through ``model`` (see ``layer_flops``)."""
    return int(sum(forward_flops(l) if isinstance(l, keras.Model) else layer_flops(l) for l in model.layers))
