"""tf_keras model.fit under MirroredStrategy over two logical CPUs, ours and tf_keras's.

Logical devices must be configured before TensorFlow initializes its devices,
so tests/test_tf_keras_fit.py runs this in its own process:

    python tests/workers/tf_keras_mirrored.py OUT_DIR

For each optimizer family and a dynamic and a fixed scale it trains the model
of tests/tf_keras_models.py (batches that overflow) with
fixed_loss_scale.tf_keras.LossScaleOptimizer and with tf_keras's class, and
writes OUT_DIR/results.json (scale, counter, iterations, replicas) and
OUT_DIR/arrays.npz (final weights); the test compares them.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import tf_keras  # noqa: E402

from fixed_loss_scale import tf_keras as ftk  # noqa: E402
from tf_keras_models import FAMILIES, MixedFloat16, fit, make, state  # noqa: E402


def main(out_dir):
  results, arrays = {}, {}
  for family in sorted(FAMILIES):
    for setting in ("dynamic", "fixed"):
      key = f"{family}-{setting}"
      results[key] = {}
      for name, lso_class in (("ours", ftk.LossScaleOptimizer),
                              ("theirs", tf_keras.mixed_precision.LossScaleOptimizer)):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with MixedFloat16(), strategy.scope():
          model = make(lso_class, family, setting)
        with MixedFloat16():
          fit(model)
          got = state(model)
        for i, w in enumerate(got.pop("weights")):
          arrays[f"{key}-{name}-{i}"] = w
        got.update(num_weights=i + 1, replicas=strategy.num_replicas_in_sync)
        results[key][name] = got
        print(key, name, got, flush=True)
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
