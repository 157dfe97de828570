"""FixedUnscaleGrads works in place when it may and never when it may not.

See NOTE [direct forwarding] in fixed_loss_scale_kernels.cc: the kernel reuses
an input's buffer for its output only when it is the buffer's sole owner.
"""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from conftest import assert_bitwise_equal
from conftest import reference_unscale
from fixed_loss_scale import ops

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers",
                      "forwarding_peak.py")


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
  """With forwardable inputs unscaling allocates no second copy of the gradients:
  the step's peak memory is the gradients once (plus the variables), for one op
  and for unscale_gradients' CPU groups alike. Measured in a subprocess with
  TF's BFC allocator (tests/workers/forwarding_peak.py)."""
  result = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  grad_bytes = report["gradient_bytes"]
  assert report["none"] >= grad_bytes, report  # the statistics are real
  assert report["none_first_value"] == 2.0
  for arm in ("op", "groups"):
    assert report[arm + "_first_value"] == 0.25, report
    assert report[arm] < 1.25 * grad_bytes, report


def test_many_inputs_forward_and_scale():
  """10,000 inputs in one op (the direct path is O(1) per input)."""
  n = 10_000
  values = np.arange(n, dtype=np.float32).reshape(n, 1) + 1

  @tf.function
  def f(x):
    return ops.fixed_unscale_grads(tf.unstack(x * 2.0), 4.0)

  out = f(tf.constant(values))
  np.testing.assert_array_equal(np.stack([o.numpy() for o in out]), values * 0.5)
