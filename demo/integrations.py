"""Short runs of each integration, printing the loss going down and the ops used.

  1. fixed_loss_scale.MixedPrecisionLossScaleOptimizer in a TF1 Session graph
     (the op types that actually executed, from the Session's step stats);
  2. Keras model.fit under mixed_float16 with fixed_loss_scale.keras.FixedLossScaleOptimizer;
  3. a tf.distribute.MirroredStrategy over two logical CPU devices, one
     FixedScaleLoss and one FixedUnscaleGrads per replica, on its device;
  4. tf_keras (Keras 2) model.fit under mixed_float16 with
     fixed_loss_scale.tf_keras.LossScaleOptimizer next to tf_keras's own
     class: the same weights bit for bit, the package's op in the graph.

Run standalone: .venv/bin/python demo/integrations.py [--section tf1|keras|mirrored|tf_keras]
Logical devices must be configured before TensorFlow initializes its devices;
if that has already happened in this process, the MirroredStrategy section
reruns this script in a subprocess.
"""

import time

_START = time.time()

import argparse  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

CUSTOM_OPS = ("FixedScaleLoss", "FixedUnscaleGrads")
v1 = tf.compat.v1


def _configure_two_logical_cpus():
  """True if this process now has two logical CPUs (must precede device init)."""
  try:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
  except RuntimeError:  # devices already initialized
    pass
  return len(tf.config.list_logical_devices("CPU")) >= 2


def _data(seed=0, n=64):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 8)).astype(np.float32)
  y = (x @ rng.standard_normal((8, 1)) + 0.3).astype(np.float32)
  return x, y


def _fmt(losses):
  return " -> ".join(f"{loss:.4f}" for loss in losses)


def _custom_ops(types):
  counts = Counter(t for t in types if t in CUSTOM_OPS)
  return ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())) or "none"


def tf1_session():
  import fixed_loss_scale as fls  # pylint: disable=import-outside-toplevel
  print("== 1. TF1 Session: fixed_loss_scale.MixedPrecisionLossScaleOptimizer(Momentum, 1024)")
  x, y = _data()
  graph = tf.Graph()
  with graph.as_default():
    w1 = tf.Variable(np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32) * 0.3)
    w2 = tf.Variable(np.zeros((16, 1), np.float32))
    hidden = tf.nn.relu(tf.matmul(tf.cast(x, tf.float16), tf.cast(w1, tf.float16)))
    prediction = tf.cast(tf.matmul(hidden, tf.cast(w2, tf.float16)), tf.float32)
    loss = tf.reduce_mean(tf.square(prediction - y))
    global_step = v1.train.get_or_create_global_step()
    opt = fls.MixedPrecisionLossScaleOptimizer(v1.train.MomentumOptimizer(0.02, 0.9), 1024)
    train_op = opt.minimize(loss, global_step=global_step)
    op_type = {op.name: op.type for op in graph.get_operations()}
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      losses, ran = [], []
      for step in range(30):
        metadata = v1.RunMetadata() if step == 0 else None
        options = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE) if step == 0 else None
        loss_value, _ = sess.run([loss, train_op], options=options, run_metadata=metadata)
        losses.append(loss_value)
        if metadata is not None:
          ran = [op_type.get(node.node_name.split(":")[0], "")
                 for dev in metadata.step_stats.dev_stats for node in dev.node_stats]
      print(f"   loss every 5 steps: {_fmt(losses[::5] + [losses[-1]])}")
      print(f"   global_step: {sess.run(global_step)}")
      print(f"   custom ops in the graph: {_custom_ops(op_type.values())}; executed in a step: "
            f"{_custom_ops(ran)}")
      print("   (Grappler constant-folds the gradient's FixedScaleLoss, whose input is a constant, "
            "and prunes the forward one when the scaled loss is not fetched)")
  return losses


def keras_fit():
  import keras  # pylint: disable=import-outside-toplevel

  from fixed_loss_scale.keras import FixedLossScaleOptimizer  # pylint: disable=import-outside-toplevel
  print("== 2. Keras model.fit, mixed_float16, FixedLossScaleOptimizer(Adam(clipnorm=1), 1024)")
  x, y = _data(2, 256)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(1)])
    optimizer = FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2, clipnorm=1.0), 1024)
    model.compile(optimizer=optimizer, loss="mse")  # jit_compile="auto"
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  losses = history.history["loss"]
  step_fn = inspect.getclosurevars(model.train_function).nonlocals["multi_step_on_iterator"]
  types = []
  for cf in step_fn._list_all_concrete_functions():  # pylint: disable=protected-access
    types += [op.type for op in cf.graph.get_operations()]
    for function in cf.graph._functions.values():  # pylint: disable=protected-access
      types += [node.op for node in function.definition.node_def]
  print(f"   loss per epoch: {_fmt(losses)}")
  print(f"   model.optimizer: {model.optimizer!r} (compile kept it; jit_compile resolved to "
        f"{model.jit_compile})")
  print(f"   custom ops in the train step graph: {_custom_ops(types)}"
        + ("  (XLA: arithmetic path)" if model.jit_compile else ""))
  return losses


def mirrored():
  import fixed_loss_scale as fls  # pylint: disable=import-outside-toplevel
  print("== 3. MirroredStrategy on two logical CPUs: FixedLossScale(512) per replica")
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  x, y = _data(3)
  loss_scale = fls.FixedLossScale(512)
  with strategy.scope():
    w = tf.Variable(tf.zeros([8, 1]))
    b = tf.Variable(tf.zeros([1]))
  half = x.shape[0] // 2

  def replica_fn():
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    xs, ys = x[:half], y[:half]
    if replica != 0:  # a Python int in MirroredStrategy
      xs, ys = x[half:], y[half:]
    with tf.GradientTape() as tape:
      pred = tf.cast(tf.matmul(tf.cast(xs, tf.float16), tf.cast(w, tf.float16)), tf.float32) + b
      loss = tf.reduce_sum(tf.square(pred - ys)) / x.shape[0]  # divided by the global batch
      scaled = loss_scale.scale_loss(loss)
    grads = loss_scale.unscale_gradients(tape.gradient(scaled, [w, b]))
    grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
    w.assign_sub(0.1 * grads[0])
    b.assign_sub(0.1 * grads[1])
    return loss

  @tf.function
  def step():
    return strategy.reduce("sum", strategy.run(replica_fn), axis=None)

  losses = [float(step()) for _ in range(40)]
  graph = step.get_concrete_function().graph
  placed = Counter((op.type, op.device.split("/")[-1]) for op in graph.get_operations()
                   if op.type in CUSTOM_OPS)
  print(f"   loss every 10 steps: {_fmt(losses[::10] + [losses[-1]])}")
  print("   custom ops per device: " + ", ".join(
      f"{t} x{n} on {d}" for (t, d), n in sorted(placed.items(), key=lambda kv: kv[0][::-1])))
  return losses


def tf_keras_fit():
  try:
    import tf_keras  # pylint: disable=import-outside-toplevel

    from fixed_loss_scale import tf_keras as fls_tf_keras  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    print(f"== 4. tf_keras: skipped ({error})")
    return [1.0, 0.0]
  print("== 4. tf_keras model.fit, mixed_float16, fixed_loss_scale.tf_keras.LossScaleOptimizer(SGD)")
  x, y = _data(4, 128)  # at 2**15 the first scaled float16 gradients overflow: the scale halves
  runs = {}
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    for name, lso in (("ours", fls_tf_keras.LossScaleOptimizer),
                      ("tf_keras", tf_keras.mixed_precision.LossScaleOptimizer)):
      tf_keras.utils.set_random_seed(0)
      model = tf_keras.Sequential([tf_keras.layers.Dense(32, activation="relu", input_shape=(8,)),
                                   tf_keras.layers.Dense(1, dtype="float32")])
      model.compile(optimizer=lso(tf_keras.optimizers.SGD(1e-2), dynamic_growth_steps=4),
                    loss="mse")
      losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
      runs[name] = (model, losses, float(model.optimizer.loss_scale))
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  model, losses, scale = runs["ours"]
  same = all(np.array_equal(a.view(np.uint32), b.view(np.uint32))
             for a, b in zip(model.get_weights(), runs["tf_keras"][0].get_weights()))
  types = [op.type for op in tf.function(model.train_step).get_concrete_function(
      (tf.constant(x[:16]), tf.constant(y[:16]))).graph.get_operations()]
  print(f"   loss per epoch: {_fmt(losses)}; loss scale now {scale:g} "
        f"(tf_keras's class: {runs['tf_keras'][2]:g})")
  print(f"   same weights bit for bit as tf_keras's class: {same}; "
        f"FixedUnscaleGradsAndCheck in the train step: {'FixedUnscaleGradsAndCheck' in types}")
  return losses if same and scale == runs["tf_keras"][2] else None


def _run_mirrored_in_subprocess():
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--section", "mirrored"],
                        timeout=180, check=False)
  return proc.returncode


def main(argv=None):
  parser = argparse.ArgumentParser(description="fixed_loss_scale integrations demo")
  parser.add_argument("--section", choices=["all", "tf1", "keras", "mirrored", "tf_keras"],
                      default="all")
  args = parser.parse_args(argv)
  two_cpus = _configure_two_logical_cpus() if args.section in ("all", "mirrored") else False
  failures = []
  sections = {"tf1": tf1_session, "keras": keras_fit, "mirrored": mirrored,
              "tf_keras": tf_keras_fit}
  for name in (sections if args.section == "all" else [args.section]):
    if name == "mirrored" and not two_cpus:
      if args.section == "mirrored" or _run_mirrored_in_subprocess() != 0:
        failures.append(name)
      continue
    losses = sections[name]()
    if losses is None or not losses[-1] < losses[0]:
      failures.append(name)
  print(f"integrations demo: {'OK' if not failures else 'FAILED: ' + ', '.join(failures)} "
        f"({time.time() - _START:.1f} s including imports)")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
