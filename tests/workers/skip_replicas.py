"""MirroredStrategy on two logical CPUs with an overflow on one replica only.

Logical devices must be configured before TensorFlow initializes its devices,
so tests/test_skip_non_finite.py runs this in its own process:

    python tests/workers/skip_replicas.py OUT_DIR

Each run trains a linear model for STEPS steps, each replica on its half of the
batch, its loss multiplied by a per-replica factor that is inf on the steps
and replicas in POISON (an overflow on one replica, then the other, then
both). It writes OUT_DIR/arrays.npz: the weights on each replica after every
step, the loss scale per step where there is one, and the step counters; the
assertions (against TF's compat classes and a numpy reference) live in the test.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402
from fixed_loss_scale.keras import FixedLossScaleOptimizer  # noqa: E402

v1 = tf.compat.v1
STEPS = 8
# step -> replicas whose loss overflows at that step
POISON = {1: (1,), 3: (0,), 4: (0, 1), 6: (1,)}
LEARNING_RATE = 0.1
SCALE = 256.0


def data():
  """(x, y, w0): two replicas' halves of a batch of 16 rows, initial weights."""
  rng = np.random.default_rng(11)
  return (rng.standard_normal((2, 8, 3)).astype(np.float32),
          rng.standard_normal((2, 8, 1)).astype(np.float32),
          rng.standard_normal((3, 1)).astype(np.float32))


def poison_factors():
  """[STEPS, 2] float32: inf where a replica overflows, else 1."""
  factors = np.ones((STEPS, 2), np.float32)
  for step, replicas in POISON.items():
    factors[step, list(replicas)] = np.inf
  return factors


def run(strategy, make_optimizer, kind):
  """Trains; returns (weights on each replica after each step, scales, counters)."""
  x, y, w0 = data()
  factors = poison_factors()
  with strategy.scope():
    w = tf.Variable(w0, name="w")
    opt = make_optimizer()
    if kind == "keras":
      opt.build([w])
    else:
      global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

  def replica_fn(factor):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    xs, ys = tf.gather(x, replica), tf.gather(y, replica)

    def loss():  # summed over the replicas by the optimizers: divide by 16 rows
      return tf.reduce_sum(tf.square(tf.matmul(xs, w) - ys)) / 16.0 * factor

    if kind == "keras":
      with tf.GradientTape() as tape:
        scaled = opt.scale_loss(loss())
      opt.apply(tape.gradient(scaled, [w]), [w])
    else:
      opt.minimize(loss, var_list=[w], global_step=global_step)

  @tf.function
  def step(factor):
    strategy.run(replica_fn, args=(factor,))

  weights, scales, counters = [], [], []
  for i in range(STEPS):
    factor = strategy.experimental_distribute_values_from_function(
        lambda ctx, i=i: tf.constant(factors[i, ctx.replica_id_in_sync_group]))
    step(factor)
    weights.append(np.stack([v.numpy() for v in strategy.experimental_local_results(w)]))
    loss_scale = getattr(opt, "_loss_scale", None)  # the TF1 wrappers' LossScale
    scales.append(float(loss_scale().numpy()) if callable(loss_scale) else np.nan)
    counters.append(int(opt.iterations.numpy()) if kind == "keras" else
                    int(global_step.numpy()))
  return np.stack(weights), np.array(scales, np.float32), np.array(counters)


def replica_context_flags(strategy):
  """FixedLossScale(skip_non_finite=True).update inside strategy.run: the flag
  each replica gets for (replica 0, replica 1) factors."""
  loss_scale = fls.FixedLossScale(8, skip_non_finite=True)

  @tf.function
  def flags(factor):
    def replica_fn(factor):
      return loss_scale.update(loss_scale.unscale_gradients([tf.ones([3]) * factor]))[1]
    return strategy.run(replica_fn, args=(factor,))

  cases = [(1.0, 1.0), (1.0, np.inf), (np.nan, 1.0), (np.inf, np.inf)]
  out = []
  for case in cases:
    factor = strategy.experimental_distribute_values_from_function(
        lambda ctx, case=case: tf.constant(case[ctx.replica_id_in_sync_group], tf.float32))
    out.append([bool(f.numpy()) for f in strategy.experimental_local_results(flags(factor))])
  return np.array(out)


def main(out_dir):
  assert len(tf.config.list_logical_devices("CPU")) == 2
  devices = ["/cpu:0", "/cpu:1"]
  runs = {
      # A fixed scale that skips, in this package's TF1 wrapper, and its
      # reference: TF's wrapper with TF's DynamicLossScale(s, huge period,
      # multiplier 1), a fixed scale that TF's own code skips with.
      "tf1_fixed_skip": (lambda: fls.MixedPrecisionLossScaleOptimizer(
          v1.train.GradientDescentOptimizer(LEARNING_RATE),
          fls.FixedLossScale(SCALE, skip_non_finite=True)), "tf1"),
      "tf1_tf_dynamic_multiplier_1": (lambda: v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
          v1.train.GradientDescentOptimizer(LEARNING_RATE),
          v1.mixed_precision.DynamicLossScale(SCALE, 10**9, 1.0)), "tf1"),
      # Dynamic: ours in our wrapper against TF's in TF's wrapper.
      "tf1_ours_dynamic": (lambda: fls.MixedPrecisionLossScaleOptimizer(
          v1.train.GradientDescentOptimizer(LEARNING_RATE),
          fls.DynamicLossScale(SCALE, 2, 2.0)), "tf1"),
      "tf1_tf_dynamic": (lambda: v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
          v1.train.GradientDescentOptimizer(LEARNING_RATE),
          v1.mixed_precision.DynamicLossScale(SCALE, 2, 2.0)), "tf1"),
      "keras_fixed_skip": (lambda: FixedLossScaleOptimizer(
          keras.optimizers.SGD(LEARNING_RATE), SCALE, skip_non_finite=True), "keras"),
  }
  # One strategy for all runs: collective instance keys are allocated per
  # strategy, and two strategies in one process can give the same key to
  # all-reduces of different shapes.
  strategy = tf.distribute.MirroredStrategy(devices)
  arrays = {"poison": poison_factors(), "replica_context_flags": replica_context_flags(strategy)}
  for name, (make, kind) in runs.items():
    weights, scales, counters = run(strategy, make, kind)
    arrays[f"{name}_weights"] = weights
    arrays[f"{name}_scales"] = scales
    arrays[f"{name}_counters"] = counters
  x, y, w0 = data()
  arrays.update(x=x, y=y, w0=w0)
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)


if __name__ == "__main__":
  main(sys.argv[1])
