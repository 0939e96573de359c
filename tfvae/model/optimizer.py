"""``FusedAdam``: ``keras.optimizers.Adam`` with each variable's update in one TensorFlow kernel.

Keras 3's Adam updates a variable with about ten element-wise operations (the two moment updates,
the bias correction, the step); TensorFlow's ``ResourceApplyAdam`` kernel does the same update in
one operation. The formula is the same (Kingma & Ba 2015, Algorithm 1, with the bias correction
folded into the step size, as both write it):

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m <- m + (1 - beta_1) * (g - m);   v <- v + (1 - beta_2) * (g^2 - v)
    w <- w - alpha * m / (sqrt(v) + epsilon)

so the weights it gives equal Keras's to float rounding (``tests/test_model.py``). On the CPU the
paper's network trains about 2 % faster with it (``docs/performance.md``). AMSGrad and dtypes the
kernel does not take go through Keras's own update. The optimizer's variables (iterations, the
moments) are Keras's, so checkpoints and saved runs made with ``keras.optimizers.Adam`` resume
with it and back.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_KERNEL_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


@keras.saving.register_keras_serializable(package="tfvae")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments, same variables) updating each variable with
    ``tf.raw_ops.ResourceApplyAdam``."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = tf.as_dtype(variable.dtype)
        if self.amsgrad or dtype not in _KERNEL_DTYPES:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)
