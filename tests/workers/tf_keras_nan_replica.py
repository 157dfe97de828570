"""tf_keras's testNanOnOneReplicaOnly over two logical CPUs, ours and tf_keras's.

Upstream runs that case on cpu:0 and gpu:0 and skips it without a GPU; two
logical CPU devices, which must be configured before TensorFlow starts, give
the same two replicas here:

    python tests/workers/tf_keras_nan_replica.py OUT_DIR

For each class ("ours", "tf_keras"), family and tf.function or not: var
[1, 2], SGD(1.0), a dynamic scale starting at 2 (growth steps 2), the loss
var * 2 on replica 0 and var * [1, NaN] on replica 1. Writes the var and the
scale to OUT_DIR/results.json; tests/upstream/test_tf_keras_lso_restated.py
asserts upstream's values.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import tf_keras  # noqa: E402

from fixed_loss_scale import tf_keras as ftk  # noqa: E402

CLASSES = {"ours": ftk.LossScaleOptimizer, "tf_keras": tf_keras.mixed_precision.LossScaleOptimizer}
SGD = {"new": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}


def run(which, family, use_tf_function):
  with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope() as strategy:
    var = tf.Variable([1.0, 2.0])
    opt = CLASSES[which](SGD[family](1.0), initial_scale=2, dynamic_growth_steps=2)

    def loss():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      return tf.cond(tf.equal(replica, 0), lambda: var * 2.0,
                     lambda: var * tf.constant([1.0, float("NaN")]))

    def run_fn():
      opt.minimize(loss, var_list=[var])

    strategy.experimental_run(tf.function(run_fn) if use_tf_function else run_fn)
    assert strategy.num_replicas_in_sync == 2
    return {"var": var.numpy().tolist(), "scale": float(opt.loss_scale.numpy())}


def main(out_dir):
  results = {}
  for which in CLASSES:
    for family in SGD:
      for use_tf_function in ((False, True) if family == "new" else (False,)):
        results[f"nan-{which}-{family}-{use_tf_function}"] = run(which, family, use_tf_function)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
