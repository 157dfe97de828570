"""MirroredStrategy over two logical CPU devices: runs each integration, writes results.

Logical devices must be configured before TensorFlow initializes its devices,
so tests/test_distribute.py runs this in its own process:

    python tests/workers/mirrored_checks.py OUT_DIR

It writes OUT_DIR/results.json (op types and devices, flags) and
OUT_DIR/arrays.npz (inputs, outputs and final weights); the assertions, against
TF's compat wrapper, Keras's loss_scale_factor and numpy, live in the test.
"""

import json
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
CUSTOM_OPS = ("FixedScaleLoss", "FixedUnscaleGrads", "FixedApplyAdam")
DEVICES = ["/cpu:0", "/cpu:1"]


def custom_ops_with_devices(graph):
  """[(type, device)] of the custom ops in a graph and in the functions it calls."""
  found = [(op.type, op.device) for op in graph.get_operations() if op.type in CUSTOM_OPS]
  for function in graph._functions.values():  # pylint: disable=protected-access
    found += [(node.op, node.device) for node in function.definition.node_def
              if node.op in CUSTOM_OPS]
  return found


def per_replica_ops(arrays, results):
  """scale_loss / unscale_gradients inside strategy.run, one op per replica."""
  strategy = tf.distribute.MirroredStrategy(DEVICES)
  loss_scale = fls.FixedLossScale(1024)
  rng = np.random.default_rng(5)
  inputs = {
      "loss": rng.standard_normal((2,)).astype(np.float32),
      "g16": (rng.standard_normal((2, 5)) * 1e3).astype(np.float16),
      "g32": (rng.standard_normal((2, 7)) * 1e3).astype(np.float32),
      "g64": (rng.standard_normal((2, 3)) * 1e3).astype(np.float64),
  }
  arrays.update({f"per_replica_in_{k}": v for k, v in inputs.items()})
  values = strategy.experimental_distribute_values_from_function(
      lambda ctx: {k: tf.constant(v[ctx.replica_id_in_sync_group]) for k, v in inputs.items()})

  @tf.function
  def run(values):

    def replica_fn(v):
      return loss_scale.scale_loss(v["loss"]), loss_scale.unscale_gradients(
          [v["g16"], v["g32"], v["g64"]])

    return strategy.run(replica_fn, args=(values,))

  scaled, unscaled = run(values)
  for r, local in enumerate(strategy.experimental_local_results(scaled)):
    arrays[f"per_replica_out_loss_{r}"] = local.numpy()
  for name, per_replica in zip(["g16", "g32", "g64"], unscaled):
    for r, local in enumerate(strategy.experimental_local_results(per_replica)):
      arrays[f"per_replica_out_{name}_{r}"] = local.numpy()
  results["per_replica_ops"] = custom_ops_with_devices(run.get_concrete_function(values).graph)

  # Cross-replica context: update is (no-op, True), calling gives the scale.
  with strategy.scope():
    assert tf.distribute.in_cross_replica_context()
    update_op, should_apply = loss_scale.update([tf.ones([2])])
    results["cross_replica_eager_update"] = [update_op is None, should_apply is True]
    results["cross_replica_call"] = float(loss_scale().numpy())

  @tf.function
  def cross_replica():
    update_op, should_apply = loss_scale.update([tf.ones([2])])
    results["cross_replica_graph_update"] = [update_op.type, should_apply is True]
    return loss_scale()

  with strategy.scope():
    results["cross_replica_graph_call"] = float(cross_replica().numpy())


def tf1_data():
  rng = np.random.default_rng(9)
  return (rng.standard_normal((2, 8, 6)).astype(np.float32),
          rng.standard_normal((2, 8, 1)).astype(np.float32),
          (rng.standard_normal((6, 1)) * 0.5).astype(np.float32))


def replica_batch(strategy, x, y):
  """This replica's (x, y) of tf1_data: half each on two replicas, all 16 rows on one."""
  replica = tf.distribute.get_replica_context().replica_id_in_sync_group
  if strategy.num_replicas_in_sync == 1:
    return tf.reshape(x, (16, 6)), tf.reshape(y, (16, 1))
  return tf.gather(x, replica), tf.gather(y, replica)


def tf1_wrapper(arrays, results, name, wrap, strategy):
  """Four momentum steps of a TF1 optimizer wrapper, replicas fed half a batch each.

  TF1 optimizers under tf.distribute (outside Estimator) sum the replicas'
  gradients, so each replica's loss is divided by the global batch size.
  """
  x, y, w0 = tf1_data()
  with strategy.scope():
    w = tf.Variable(w0, name="w")
    opt = wrap(v1.train.MomentumOptimizer(0.05, 0.9), 512)

  def replica_fn():
    xs, ys = replica_batch(strategy, x, y)
    opt.minimize(lambda: tf.reduce_sum(tf.square(tf.matmul(xs, w) - ys)) / 16.0, var_list=[w])

  @tf.function
  def step():
    strategy.run(replica_fn)

  for _ in range(4):
    step()
  arrays[f"tf1_{name}"] = w.numpy()
  results[f"tf1_{name}_ops"] = custom_ops_with_devices(step.get_concrete_function().graph)


def keras_fit(arrays, results, name, make_optimizer, strategy, auto_scale_loss=True):
  keras.mixed_precision.set_global_policy("mixed_float16")
  rng = np.random.default_rng(4)
  x = rng.standard_normal((64, 8)).astype("float32")
  y = (x[:, :1] - x[:, 1:2]).astype("float32")
  with strategy.scope():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=make_optimizer(), loss="mse", auto_scale_loss=auto_scale_loss)
  history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
  for i, weight in enumerate(model.trainable_weights):
    arrays[f"keras_{name}_{i}"] = weight.numpy()
  results[f"keras_{name}_loss"] = history.history["loss"]
  results[f"keras_{name}_optimizer"] = type(model.optimizer).__name__
  results[f"keras_{name}_jit_compile"] = bool(model.jit_compile)
  import inspect  # pylint: disable=import-outside-toplevel
  step_fn = inspect.getclosurevars(model.train_function).nonlocals["multi_step_on_iterator"]
  results[f"keras_{name}_ops"] = [
      pair for cf in step_fn._list_all_concrete_functions()  # pylint: disable=protected-access
      for pair in custom_ops_with_devices(cf.graph)]
  keras.mixed_precision.set_global_policy("float32")


def keras_custom_loop(arrays, name, strategy, style):
  """Keras wrapper in a strategy.run loop, in one of three styles:

  - "keras3": scale_loss, apply (default unscale_in_apply=True);
  - "tf_keras2": get_scaled_loss, get_unscaled_gradients, apply_gradients,
    with unscale_in_apply=False;
  - "keras3_logged": as "keras3", but each replica also calls
    get_unscaled_gradients (to log them) eagerly before the step is first
    traced, and inside the step on the gradients it then passes to apply --
    which must unscale them all the same.
  """
  x, y, w0 = tf1_data()
  with strategy.scope():
    layer = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(w0))
    layer.build((None, 6))
    variables = [layer.kernel, layer.bias]
    opt = FixedLossScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), 512,
                                  unscale_in_apply=style != "tf_keras2")
    opt.build(variables)

  def replica_fn():
    xs, ys = replica_batch(strategy, x, y)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer(xs) - ys)) / 16.0
      scaled = opt.get_scaled_loss(loss) if style == "tf_keras2" else opt.scale_loss(loss)
    grads = tape.gradient(scaled, variables)
    if style == "tf_keras2":
      opt.apply_gradients(zip(opt.get_unscaled_gradients(grads), variables))
    else:
      if style == "keras3_logged":
        opt.get_unscaled_gradients(grads)  # logged, thrown away
      opt.apply(grads, variables)

  if style == "keras3_logged":
    strategy.run(lambda: opt.get_unscaled_gradients([tf.ones([6, 1]) * 512.0]))  # eagerly

  @tf.function
  def step():
    strategy.run(replica_fn)

  for _ in range(4):
    step()
  arrays["keras_loop_w0"] = w0
  arrays[f"keras_loop_{name}_w"] = layer.kernel.numpy()
  arrays[f"keras_loop_{name}_b"] = layer.bias.numpy()


def main(out_dir):
  arrays, results = {}, {}
  results["logical_cpus"] = len(tf.config.list_logical_devices("CPU"))
  per_replica_ops(arrays, results)
  mirrored = tf.distribute.MirroredStrategy(DEVICES)
  single = tf.distribute.OneDeviceStrategy("/cpu:0")
  ours = fls.MixedPrecisionLossScaleOptimizer
  theirs = v1.mixed_precision.MixedPrecisionLossScaleOptimizer
  tf1_wrapper(arrays, results, "ours_mirrored", ours, mirrored)
  tf1_wrapper(arrays, results, "theirs_mirrored", theirs, mirrored)
  tf1_wrapper(arrays, results, "ours_single", ours, single)
  keras_fit(arrays, results, "ours_mirrored",
            lambda: FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), 1024), mirrored)
  keras_fit(arrays, results, "factor_mirrored",
            lambda: keras.optimizers.Adam(1e-2, loss_scale_factor=1024.0), mirrored,
            auto_scale_loss=False)
  keras_fit(arrays, results, "ours_single",
            lambda: FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), 1024), single)
  keras_custom_loop(arrays, "keras3_style", mirrored, "keras3")
  keras_custom_loop(arrays, "tf_keras2_style", mirrored, "tf_keras2")
  keras_custom_loop(arrays, "keras3_logged", mirrored, "keras3_logged")
  keras_custom_loop(arrays, "single", single, "keras3")
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1])
