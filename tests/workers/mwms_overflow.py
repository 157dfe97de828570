"""Overflow on one replica only, under tf.distribute: the worker behind
tests/test_overflow_distributed.py.

Two modes:

  python mwms_overflow.py --out DIR [--deadline-s 240]
      One MultiWorkerMirroredStrategy worker (cluster from TF_CONFIG, set by the
      parent; loopback only, one CPU replica per worker). Trains a linear model
      (y = x @ w + b, sum of squares over the global batch) for STEPS steps
      with each of VARIANTS; a replica's loss is multiplied by inf on the steps
      where POISON names it (mostly worker 1 alone). Writes
      DIR/worker<task index>.npz: per variant the weights after every step
      ("<variant>_w" [STEPS, FEATURES, 1], "<variant>_b" [STEPS, 1]), the loss
      scale after every step ("_scales") and the optimizer's step counter
      ("_counters").

  python mwms_overflow.py --mirrored-fit --out DIR
      One process, MirroredStrategy on two logical CPUs: Keras `fit` with
      FixedLossScaleOptimizer(SGD with momentum, skip_non_finite=True) on
      batches of which some hold an inf in a row that replica 1 gets, and the
      reference, the inner SGD alone fitted on the clean batches only, under the
      same strategy. Writes DIR/fit.npz.

`train(variant, strategy)` is also the single-process reference: the test
calls it with the default strategy, where the one replica's loss is poisoned on
every step on which any replica's is.
"""

import argparse
import faulthandler
import json
import os
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FEATURES = 6
GLOBAL_BATCH = 16
STEPS = 10
LEARNING_RATE = 0.05
MOMENTUM = 0.9
SCALE = 1024.0
DYNAMIC = (1024.0, 2, 2.0)  # initial scale, increment period, multiplier
# step -> replicas (workers) whose loss overflows at that step
POISON = {1: (1,), 2: (1,), 5: (0,), 6: (0, 1), 9: (1,)}
VARIANTS = ("keras_fixed", "tf1_fixed", "tf1_dynamic")
# Keras fit on two logical CPUs: FIT_BATCHES batches of GLOBAL_BATCH rows; in
# FIT_POISONED ones a row of the second half (replica 1's) holds an inf.
FIT_BATCHES = 6
FIT_POISONED = (1, 4)


def make_data():
  """(x [STEPS, GLOBAL_BATCH, FEATURES], y [..., 1], w0 [FEATURES, 1]) as float32."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(23)
  x = rng.standard_normal((STEPS, GLOBAL_BATCH, FEATURES)).astype(np.float32)
  y = x @ rng.standard_normal((FEATURES, 1)) + 0.5 + 0.05 * rng.standard_normal(
      (STEPS, GLOBAL_BATCH, 1))
  w0 = (0.1 * rng.standard_normal((FEATURES, 1))).astype(np.float32)
  return x, y.astype(np.float32), w0


def poison_factors(num_replicas):
  """[STEPS, num_replicas] float32: inf where a replica's loss overflows, else 1.
  With one replica, inf on every step on which any of two replicas overflows."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  factors = np.ones((STEPS, num_replicas), np.float32)
  for step, replicas in POISON.items():
    factors[step, list(replicas) if num_replicas > 1 else [0]] = np.inf
  return factors


def train(variant, strategy):
  """Trains under `strategy`; returns {name: array} (see the module docstring)."""
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  import fixed_loss_scale as fls  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale.keras import FixedLossScaleOptimizer  # pylint: disable=import-outside-toplevel

  x, y, w0 = make_data()
  replicas = strategy.num_replicas_in_sync
  rows = GLOBAL_BATCH // replicas
  factors = poison_factors(replicas)
  with strategy.scope():
    if variant == "keras_fixed":
      layer = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(w0))
      layer.build((None, FEATURES))
      variables = [layer.kernel, layer.bias]
      opt = FixedLossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                                    SCALE, skip_non_finite=True)
      opt.build(variables)
    else:
      w = tf.Variable(w0, name="w")
      b = tf.Variable(tf.zeros([1]), name="b")
      variables = [w, b]
      loss_scale = (fls.FixedLossScale(SCALE, skip_non_finite=True) if variant == "tf1_fixed"
                    else fls.DynamicLossScale(*DYNAMIC))
      opt = fls.MixedPrecisionLossScaleOptimizer(
          tf.compat.v1.train.MomentumOptimizer(LEARNING_RATE, MOMENTUM), loss_scale)
      global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

  def replica_fn(xb, yb, factor):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    xs, ys = xb[replica * rows:(replica + 1) * rows], yb[replica * rows:(replica + 1) * rows]

    def loss_fn():
      pred = layer(xs) if variant == "keras_fixed" else tf.matmul(xs, w) + b
      # Replicas' gradients are summed: divide by the global batch.
      return tf.reduce_sum(tf.square(pred - ys)) / GLOBAL_BATCH * factor

    if variant == "keras_fixed":
      with tf.GradientTape() as tape:
        scaled = opt.scale_loss(loss_fn())
      opt.apply(tape.gradient(scaled, variables), variables)
    else:
      opt.minimize(loss_fn, var_list=variables, global_step=global_step)

  @tf.function
  def step_fn(xb, yb, factor):
    strategy.run(replica_fn, args=(xb, yb, factor))

  weights, biases, scales, counters = [], [], [], []
  for k in range(STEPS):
    factor = strategy.experimental_distribute_values_from_function(
        lambda ctx, k=k: tf.constant(factors[k, ctx.replica_id_in_sync_group]))
    step_fn(tf.constant(x[k]), tf.constant(y[k]), factor)
    weights.append(np.asarray(variables[0].numpy()))
    biases.append(np.asarray(variables[1].numpy()))
    if variant == "keras_fixed":
      scales.append(opt.loss_scale)
      counters.append(int(opt.iterations.numpy()))
    else:
      scales.append(float(loss_scale().numpy()))
      counters.append(int(global_step.numpy()))
  return {f"{variant}_w": np.stack(weights), f"{variant}_b": np.stack(biases),
          f"{variant}_scales": np.array(scales, np.float32),
          f"{variant}_counters": np.array(counters)}


def fit_data():
  """(x [FIT_BATCHES * GLOBAL_BATCH, FEATURES] with infs, y, w0, clean row indices)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(29)
  x = rng.standard_normal((FIT_BATCHES * GLOBAL_BATCH, FEATURES)).astype(np.float32)
  y = (x @ rng.standard_normal((FEATURES, 1)) + 0.5).astype(np.float32)
  w0 = (0.1 * rng.standard_normal((FEATURES, 1))).astype(np.float32)
  for b in FIT_POISONED:  # a row in the second half of the batch: replica 1's
    x[b * GLOBAL_BATCH + GLOBAL_BATCH // 2 + 3, 2] = np.inf
  clean = np.concatenate([np.arange(b * GLOBAL_BATCH, (b + 1) * GLOBAL_BATCH)
                          for b in range(FIT_BATCHES) if b not in FIT_POISONED])
  return x, y, w0, clean


def mirrored_fit(out_dir):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices("CPU")[0],
      [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
  import keras  # pylint: disable=import-outside-toplevel

  from fixed_loss_scale.keras import FixedLossScaleOptimizer  # pylint: disable=import-outside-toplevel

  x, y, w0, clean = fit_data()
  # One strategy for every run in the process (collective instance keys are
  # per strategy; see skip_replicas.py).
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

  # Which replica gets the non-finite rows when a batch is split (what fit does
  # with its dataset: experimental_distribute_dataset).
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
  nonfinite = []
  for xb, _ in strategy.experimental_distribute_dataset(dataset):
    nonfinite.append([not np.isfinite(t.numpy()).all()
                      for t in strategy.experimental_local_results(xb)])

  def fit(make_optimizer, xs, ys):
    with strategy.scope():
      model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(
          1, kernel_initializer=keras.initializers.Constant(w0))])
      optimizer = make_optimizer()
      model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    kernels = []

    class Record(keras.callbacks.Callback):

      def on_train_batch_end(self, batch, logs=None):
        kernels.append(np.stack([v.numpy() for v in strategy.experimental_local_results(
            model.layers[0].kernel.value)]))

    model.fit(xs, ys, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[Record()])
    return np.stack(kernels), int(optimizer.iterations.numpy())

  ours, our_iterations = fit(lambda: FixedLossScaleOptimizer(
      keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), SCALE, skip_non_finite=True), x, y)
  reference, reference_iterations = fit(
      lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), x[clean], y[clean])
  np.savez(os.path.join(out_dir, "fit.npz"), nonfinite=np.array(nonfinite), ours=ours,
           reference=reference, iterations=np.array([our_iterations, reference_iterations]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--mirrored-fit", action="store_true")
  parser.add_argument("--deadline-s", type=float, default=240.0)
  args = parser.parse_args(argv if argv is not None else sys.argv[1:])
  # A worker whose peer never comes must not hang (tests/workers/multi_worker.py):
  # a Timer for a wait that releases the GIL, faulthandler's C thread for one that does not.
  watchdog = threading.Timer(args.deadline_s, lambda: os._exit(124))  # pylint: disable=protected-access
  watchdog.daemon = True
  watchdog.start()
  faulthandler.dump_traceback_later(args.deadline_s + 5.0, exit=True)
  os.makedirs(args.out, exist_ok=True)
  if args.mirrored_fit:
    mirrored_fit(args.out)
  else:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    task_index = int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=max(10.0, args.deadline_s / 2))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    arrays = {}
    for variant in VARIANTS:
      arrays.update(train(variant, strategy))
      print(f"worker {task_index} {variant} done", flush=True)
    np.savez(os.path.join(args.out, f"worker{task_index}.npz"), **arrays)
  watchdog.cancel()
  faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
  main()
