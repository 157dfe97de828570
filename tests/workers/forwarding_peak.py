"""Worker for tests/test_forwarding.py: peak allocator bytes of one step that
produces 64 float32 gradients (16 MiB) and unscales them in place.

Runs in its own process with TF_CPU_ALLOCATOR_USE_BFC=true: TensorFlow's default
CPU allocator keeps statistics only where oneDNN picks its BFC allocator (CPUs
with AVX-512 VNNI, bfloat16 or AMX), so elsewhere there would be nothing to
read. Prints one JSON line: the gradients' bytes and the peak above the
variables for "none" (produce only), "op" (one FixedUnscaleGrads) and "groups"
(unscale_gradients, several ops on CPU).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"

import tensorflow as tf  # noqa: E402

from fixed_loss_scale import ops  # noqa: E402
from fixed_loss_scale import scaling  # noqa: E402

N, SIZE = 64, 1 << 16


def main():
  variables = [tf.Variable(tf.ones([SIZE])) for _ in range(N)]
  report = {"gradient_bytes": N * SIZE * 4}
  for arm in ("none", "op", "groups"):

    @tf.function
    def step(x, arm=arm):
      grads = [tf.nn.relu(v * x) for v in variables]
      if arm == "op":
        grads = ops.fixed_unscale_grads(grads, 8.0)
      elif arm == "groups":
        grads = scaling.unscale_gradients(grads, 8.0)
      return grads

    step(tf.constant(2.0))
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    out = step(tf.constant(2.0))
    report[arm] = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    report[arm + "_first_value"] = float(out[0][0])
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
