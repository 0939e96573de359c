"""The paper's fully-convolutional encoder and decoder (Zimmerer et al. 2019, as used by Zhou et al.).

Encoder: one 4x4 stride-2 convolution without bias per level (feature maps 16-32-64-256 at 64x64),
each followed by LeakyReLU(0.01), halving the image down to 4x4; then a 4x4 valid convolution to
``2 * latent_dim`` channels at 1x1, split into mu and log sigma.

Decoder, the mirror image: a 4x4 transposed convolution from z (1x1) to 4x4 with the last level's
feature maps, then one 4x4 stride-2 transposed convolution per level (without bias, LeakyReLU)
doubling the size, the last one to one channel with a bias and a linear output.

The number of stride-2 levels is ``log2(image_size / 4)``: 4 at 64x64, 3 at 32x32, 5 at 128x128.

The stride-2 4x4 transposed convolution to a single channel -- the last layer's forward pass, and
the first layer's input gradient (the projection and the gradient maps take it) -- is computed as a
3x3 stride-1 convolution to its four output phases, then interleaved (same kernel, same numbers
to float rounding): TensorFlow's oneDNN kernel for that shape takes ~2.4 ms per batch
of 64 where its mirror image takes ~0.5 ms (``docs/performance.md``). The two layers keep Keras's
class names, under which Keras files their weights, so runs saved before load unchanged.

The 4x4 convolution from the 4x4 feature map to 1x1, and the 4x4 transposed convolution from 1x1
back to 4x4, touch every input position exactly once: they *are* dense layers on the flattened
map, and are implemented as ``Dense`` (same parameters, same outputs), which TensorFlow runs about
3x faster on CPU than its convolution kernels for this shape (see ``docs/performance.md``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
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


# For output phase a (row parity of 2i + a), the input rows i + offset it reads and the kernel row
# ky each is weighted by, for a 4x4 stride-2 "same" transposed convolution (top padding 1).
_PHASE_TAPS = {0: ((0, 1), (-1, 3)), 1: ((1, 0), (0, 2))}


def _phase_index() -> np.ndarray:
    """(3, 3, 4) indices into the 16 taps of a 4x4 kernel (16: a zero tap) for ``phase_kernel``."""
    index = np.full((3, 3, 4), 16, np.int32)
    for a, rows in _PHASE_TAPS.items():
        for b, cols in _PHASE_TAPS.items():
            for dy, ky in rows:
                for dx, kx in cols:
                    index[dy + 1, dx + 1, 2 * a + b] = 4 * ky + kx
    return index


_PHASE_INDEX = _phase_index()


def phase_kernel(kernel):
    """The (4, 4, 1, C) kernel of a 4x4 stride-2 transposed convolution to one channel as the
    (3, 3, C, 4) kernel of a 3x3 stride-1 convolution giving its four output phases (``to_phases``):
    one gather from the flattened kernel and a zero."""
    channels = int(kernel.shape[-1])
    tap = _PHASE_INDEX[:, :, None, :]  # (3, 3, 1, 4)
    flat = np.where(tap < 16, tap * channels + np.arange(channels)[None, None, :, None], 16 * channels)
    taps = tf.concat([tf.reshape(kernel, (-1,)), tf.zeros((1,), kernel.dtype)], axis=0)
    return tf.gather(taps, flat.astype(np.int32))


def interleave_phases(y):
    """(B, H, W, 4) -> (B, 2H, 2W, 1): pixel (2i + a, 2j + b) from channel 2a + b of pixel (i, j) --
    ``tf.nn.depth_to_space(y, 2)``, as a reshape, a transpose and a reshape (the same numbers; half
    the time of TensorFlow's depth_to_space kernel on the CPU, ``docs/performance.md``)."""
    dims = [d if d is not None else tf.shape(y)[i] for i, d in enumerate(y.shape[:3])]
    b, h, w = dims
    y = tf.transpose(tf.reshape(y, [b, h, w, 2, 2]), [0, 1, 3, 2, 4])
    return tf.reshape(y, [b, 2 * h, 2 * w, 1])


def to_phases(x, kernel):
    """``conv2d_transpose(x, kernel, strides=2, padding="same")`` to one channel, (B, H, W, C) ->
    (B, 2H, 2W, 1), as a 3x3 convolution to the four output phases, interleaved (``interleave_phases``)."""
    return interleave_phases(tf.nn.conv2d(x, phase_kernel(kernel), 1, "SAME"))


def _filter_gradient(inputs, kernel, out_backprop):
    return tf.raw_ops.Conv2DBackpropFilter(input=inputs, filter_sizes=tf.shape(kernel), out_backprop=out_backprop,
                                           strides=[1, 2, 2, 1], padding="SAME")


@tf.custom_gradient
def _to_one_channel(x, kernel):
    """The transposed convolution to one channel; its gradients as TensorFlow's own."""
    def gradient(dy):
        return tf.nn.conv2d(dy, kernel, 2, "SAME"), _filter_gradient(dy, kernel, x)
    return to_phases(x, kernel), gradient


@tf.custom_gradient
def _from_one_channel(x, kernel):
    """The 4x4 stride-2 convolution of a one-channel image; its input gradient through ``to_phases``."""
    def gradient(dy):
        return to_phases(dy, kernel), _filter_gradient(x, kernel, dy)
    return tf.nn.conv2d(x, kernel, 2, "SAME"), gradient


def _one_channel_case(layer, channels: int) -> bool:
    return (channels == 1 and tuple(layer.kernel_size) == (4, 4) and tuple(layer.strides) == (2, 2)
            and layer.padding == "same" and tuple(layer.dilation_rate) == (1, 1)
            and layer.data_format == "channels_last")


@keras.saving.register_keras_serializable(package="tfvae")
class Conv2D(layers.Conv2D):
    """``keras.layers.Conv2D`` (and its class name, which files its weights), whose input gradient
    for a 4x4 stride-2 convolution of a one-channel image goes through ``to_phases``."""

    def convolution_op(self, inputs, kernel):
        # odd or unknown sizes pad "same" unevenly: TensorFlow's own gradient then
        even = all(size is not None and size % 2 == 0 for size in inputs.shape[1:3])
        if even and self.groups == 1 and _one_channel_case(self, inputs.shape[-1]):
            return _from_one_channel(inputs, tf.convert_to_tensor(kernel))
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="tfvae")
class Conv2DTranspose(layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` (and its class name, which files its weights), computed
    through ``to_phases`` for a 4x4 stride-2 transposed convolution to one channel."""

    def call(self, inputs):
        if not (_one_channel_case(self, self.filters) and self.output_padding is None):
            return super().call(inputs)
        outputs = _to_one_channel(inputs, tf.convert_to_tensor(self.kernel))
        if self.use_bias:
            outputs = outputs + tf.reshape(tf.convert_to_tensor(self.bias), (1, 1, 1, 1))
        return self.activation(outputs) if self.activation is not None else outputs


def build_encoder(image_size: int, latent_dim: int, filters) -> keras.Model:
    """x (B, S, S, 1) -> concatenated (mu, log_sigma) of shape (B, 2 * latent_dim)."""
    x = inputs = keras.Input((image_size, image_size, 1), name="x")
    for i, f in enumerate(filters):
        x = Conv2D(f, 4, strides=2, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
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
    outputs = Conv2DTranspose(1, 4, strides=2, padding="same", name="to_image")(x)
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
