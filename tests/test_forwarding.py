"""FixedUnscaleGrads works in place when it may and never when it may not.

See NOTE [direct forwarding] in fixed_loss_scale_kernels.cc: the kernel reuses
an input's buffer for its output only when it is the buffer's sole owner.
"""

import numpy as np
import tensorflow as tf

from conftest import assert_bitwise_equal
from conftest import reference_unscale
from fixed_loss_scale import ops


def test_inputs_read_elsewhere_are_not_overwritten():
  """A gradient that another op still reads (or a variable's own buffer) keeps
  its value: the op allocates a new output for it."""
  v = tf.Variable(np.arange(1, 9, dtype=np.float32))
  w = tf.Variable(np.arange(1, 5, dtype=np.float16))

  @tf.function
  def f(x):
    g = tf.nn.relu(v * x)
    unscaled = ops.fixed_unscale_grads([g, v.read_value(), w.read_value(), g], 4.0)
    return unscaled, g + 0.0

  unscaled, g_after = f(tf.constant(2.0))
  g = np.arange(1, 9, dtype=np.float32) * 2
  np.testing.assert_array_equal(g_after.numpy(), g)
  assert_bitwise_equal(unscaled[0].numpy(), reference_unscale(g, 4.0))
  assert_bitwise_equal(unscaled[3].numpy(), reference_unscale(g, 4.0))
  np.testing.assert_array_equal(v.numpy(), np.arange(1, 9, dtype=np.float32))
  np.testing.assert_array_equal(w.numpy(), np.arange(1, 5, dtype=np.float16))


def test_sole_owner_inputs_are_scaled_in_place():
  """With forwardable inputs the op allocates no second copy of the gradients:
  the step's peak memory is the gradients once (plus the variables)."""
  n, size = 64, 1 << 16
  variables = [tf.Variable(tf.ones([size])) for _ in range(n)]
  grad_bytes = n * size * 4

  def peak_of(arm):

    @tf.function
    def f(x):
      grads = [tf.nn.relu(v * x) for v in variables]
      if arm == "ours":
        grads = ops.fixed_unscale_grads(grads, 8.0)
      return grads

    f(tf.constant(2.0))
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    out = f(tf.constant(2.0))
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    assert float(out[0][0]) == (0.25 if arm == "ours" else 2.0)
    return peak

  if peak_of("none") <= 0:
    import pytest  # pylint: disable=import-outside-toplevel
    pytest.skip("this TensorFlow reports no CPU allocator statistics")
  assert peak_of("ours") < 1.25 * grad_bytes


def test_many_inputs_forward_and_scale():
  """10,000 inputs in one op (the direct path is O(1) per input)."""
  n = 10_000
  values = np.arange(n, dtype=np.float32).reshape(n, 1) + 1

  @tf.function
  def f(x):
    return ops.fixed_unscale_grads(tf.unstack(x * 2.0), 4.0)

  out = f(tf.constant(values))
  np.testing.assert_array_equal(np.stack([o.numpy() for o in out]), values * 0.5)
