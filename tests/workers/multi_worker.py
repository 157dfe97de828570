"""One MultiWorkerMirroredStrategy worker training with the fixed-loss-scale wrappers.

The cluster comes from TF_CONFIG (set by the parent, loopback addresses only).
For each wrapper named in --wrappers it trains a linear model
(y = x @ w + b, sum of squares over the global batch) with a custom loop:

  tf1    fixed_loss_scale.MixedPrecisionLossScaleOptimizer(
             tf.compat.v1.train.MomentumOptimizer(lr, momentum), loss_scale)
  keras  fixed_loss_scale.keras.FixedLossScaleOptimizer(
             keras.optimizers.SGD(lr, momentum=momentum), loss_scale),
         with a Dense(1) layer under the mixed_float16 policy

Each replica (one per worker) takes its half of every global batch; the data,
initial weights and global batch for step k are fixed by --seed, so a restart
from a checkpoint continues with the same batches. `reference_weights` below
gives the float64 numpy result of the same training.

    python tests/workers/multi_worker.py --out DIR [--wrappers tf1,keras]
        [--steps 5] [--loss-scale 1024] [--checkpoint-dir DIR] [--save-every N]
        [--exit-after-step K] [--deadline-s 240]

Writes DIR/worker<task index>.npz (final weights, "<wrapper>_w", "<wrapper>_b")
and DIR/worker<task index>.json (losses, steps run, restored step, op types).
With --checkpoint-dir it restores the latest checkpoint there (if any) before
training and saves every --save-every steps and at the end; the chief writes to
the directory, other workers to a temporary sub-directory, as TF requires.
--exit-after-step K ends the process abruptly (exit code 17) after step K, for
fault tests. --deadline-s bounds the whole run (exit code 124 when exceeded;
1 with a traceback if TensorFlow holds the GIL then),
so a worker whose peer died never hangs in a collective.
"""

import argparse
import faulthandler
import json
import os
import shutil
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workers.probes import graph_op_types  # noqa: E402

FEATURES = 6
GLOBAL_BATCH = 16
NUM_BATCHES = 4
LEARNING_RATE = 0.05
MOMENTUM = 0.9


def make_data(seed):
  """(x [NUM_BATCHES, GLOBAL_BATCH, FEATURES], y [..., 1], w0 [FEATURES, 1]) as float32."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((NUM_BATCHES, GLOBAL_BATCH, FEATURES)).astype(np.float32)
  true_w = rng.standard_normal((FEATURES, 1))
  y = (x @ true_w + 0.5 + 0.05 * rng.standard_normal((NUM_BATCHES, GLOBAL_BATCH, 1)))
  w0 = (0.1 * rng.standard_normal((FEATURES, 1))).astype(np.float32)
  return x, y.astype(np.float32), w0


def reference_weights(seed, steps):
  """float64 numpy: momentum SGD on the mean squared error of each global batch."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  x, y, w0 = make_data(seed)
  w, b = w0.astype(np.float64), np.zeros((1,))
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for step in range(steps):
    xb, yb = x[step % NUM_BATCHES].astype(np.float64), y[step % NUM_BATCHES].astype(np.float64)
    residual = xb @ w + b - yb
    gw, gb = 2 * xb.T @ residual / GLOBAL_BATCH, 2 * residual.sum(0) / GLOBAL_BATCH
    vw, vb = MOMENTUM * vw + gw, MOMENTUM * vb + gb  # TF1 Momentum and Keras SGD agree
    w, b = w - LEARNING_RATE * vw, b - LEARNING_RATE * vb
  return w, b


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--wrappers", default="tf1,keras")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--loss-scale", type=float, default=1024.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoint-dir")
  parser.add_argument("--save-every", type=int, default=0)
  parser.add_argument("--exit-after-step", type=int, default=-1)
  parser.add_argument("--deadline-s", type=float, default=240.0)
  return parser.parse_args(argv)


def _custom_op_types(concrete_function):
  return sorted(t for t in graph_op_types(concrete_function)
                if t in ("FixedScaleLoss", "FixedUnscaleGrads", "FixedApplySgd"))


def train(wrapper, args, strategy, task_index, is_chief):
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  import fixed_loss_scale as fls  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale.keras import FixedLossScaleOptimizer  # pylint: disable=import-outside-toplevel

  x, y, w0 = make_data(args.seed)
  half = GLOBAL_BATCH // strategy.num_replicas_in_sync
  keras.mixed_precision.set_global_policy("mixed_float16" if wrapper == "keras" else "float32")
  with strategy.scope():
    step_counter = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
    if wrapper == "tf1":
      w = tf.Variable(w0, name="w")
      b = tf.Variable(tf.zeros([1]), name="b")
      variables = [w, b]
      opt = fls.MixedPrecisionLossScaleOptimizer(
          tf.compat.v1.train.MomentumOptimizer(LEARNING_RATE, MOMENTUM), args.loss_scale)
      trackables = {"w": w, "b": b}
    else:
      layer = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(w0))
      layer.build((None, FEATURES))
      variables = [layer.kernel, layer.bias]
      opt = FixedLossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                                    args.loss_scale)
      opt.build(variables)
      trackables = {"layer": layer}
  checkpoint = tf.train.Checkpoint(optimizer=opt, step=step_counter, **trackables)

  def replica_fn(xb, yb):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    xs = xb[replica * half:(replica + 1) * half]
    ys = yb[replica * half:(replica + 1) * half]

    def loss_fn():
      pred = layer(xs) if wrapper == "keras" else tf.matmul(xs, w) + b
      # Replicas' gradients are summed: divide by the global batch.
      return tf.reduce_sum(tf.square(tf.cast(pred, tf.float32) - ys)) / GLOBAL_BATCH

    if wrapper == "tf1":
      loss = loss_fn()  # for reporting: read before the update (automatic control deps)
      opt.minimize(loss_fn, var_list=variables)
    else:
      with tf.GradientTape() as tape:
        loss = loss_fn()
        scaled = opt.scale_loss(loss)
      opt.apply(tape.gradient(scaled, variables), variables)
    return loss

  @tf.function
  def step_fn(xb, yb):
    per_replica_loss = strategy.run(replica_fn, args=(xb, yb))
    step_counter.assign_add(1)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

  manager = write_dir = None
  restored_step = 0
  if args.checkpoint_dir:
    base = os.path.join(args.checkpoint_dir, wrapper)
    write_dir = base if is_chief else os.path.join(base, f"tmp_worker{task_index}")
    latest = tf.train.latest_checkpoint(base)
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
      restored_step = int(step_counter.numpy())
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=2)

  losses = []
  while int(step_counter.numpy()) < args.steps:
    k = int(step_counter.numpy())
    loss = step_fn(tf.constant(x[k % NUM_BATCHES]), tf.constant(y[k % NUM_BATCHES]))
    losses.append(float(loss.numpy()))
    print(f"worker {task_index} {wrapper} step {k + 1} loss {losses[-1]:.6f}", flush=True)
    if manager and args.save_every and (k + 1) % args.save_every == 0:
      manager.save(checkpoint_number=k + 1)
    if k + 1 == args.exit_after_step:
      print(f"worker {task_index} exiting abruptly after step {k + 1}", flush=True)
      os._exit(17)  # pylint: disable=protected-access
  if manager:
    manager.save(checkpoint_number=int(step_counter.numpy()))
    if not is_chief:
      shutil.rmtree(write_dir, ignore_errors=True)
  op_types = _custom_op_types(step_fn.get_concrete_function(
      tf.constant(x[0]), tf.constant(y[0]))) if losses else []
  weights = {f"{wrapper}_w": np.asarray(variables[0].numpy()),
             f"{wrapper}_b": np.asarray(variables[1].numpy())}
  return weights, {"losses": losses, "restored_step": restored_step,
                   "steps": int(step_counter.numpy()), "op_types": op_types}


def main(argv=None):
  args = _parse(argv if argv is not None else sys.argv[1:])
  watchdog = threading.Timer(args.deadline_s, lambda: os._exit(124))  # pylint: disable=protected-access
  watchdog.daemon = True
  watchdog.start()
  # The Timer needs the GIL, which TensorFlow holds while it waits for a peer
  # that died before the cluster formed; faulthandler's C watchdog does not.
  faulthandler.dump_traceback_later(args.deadline_s + 5.0, exit=True)

  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  tf_config = json.loads(os.environ["TF_CONFIG"])
  task_index = int(tf_config["task"]["index"])
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.RING,
      timeout_seconds=max(10.0, args.deadline_s / 2))
  strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  is_chief = task_index == 0
  os.makedirs(args.out, exist_ok=True)
  all_weights, summary = {}, {"task_index": task_index,
                              "num_replicas": strategy.num_replicas_in_sync}
  for wrapper in args.wrappers.split(","):
    weights, info = train(wrapper, args, strategy, task_index, is_chief)
    all_weights.update(weights)
    summary[wrapper] = info
  np.savez(os.path.join(args.out, f"worker{task_index}.npz"), **all_weights)
  with open(os.path.join(args.out, f"worker{task_index}.json"), "w") as f:
    json.dump(summary, f)
  print(f"worker {task_index} done", flush=True)
  watchdog.cancel()


if __name__ == "__main__":
  main()
