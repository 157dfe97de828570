"""Worker for tests/test_crash_resume.py: a small float16 training run that
checkpoints as it goes and resumes from its latest checkpoint when restarted.

  python crash_resume.py FLAVOR DIR [--die-at N] [--throttle-after N]

FLAVOR is one of
  custom  a tf.function training step with FixedLossScale (scale_loss /
          unscale_gradients, i.e. the custom ops), momentum kept in tf.Variables,
          tf.train.Checkpoint + CheckpointManager every 5 steps;
  tf1     a TF1 graph, fixed_loss_scale.MixedPrecisionLossScaleOptimizer around
          MomentumOptimizer, tf.compat.v1.train.Saver every 5 steps;
  keras   Keras 3 `fit` under mixed_float16 with
          fixed_loss_scale.keras.FixedLossScaleOptimizer(SGD with momentum) and
          keras.callbacks.BackupAndRestore (end of every epoch).
Every step's data depends only on its index, and op determinism is on, so a
resumed run must end with exactly the weights of an uninterrupted one.

Prints "resumed K" (K = steps already done) first, then "progress K" after
every step (flushed); at the end writes DIR/final.npz and prints "done".
--die-at N: SIGKILL itself right after step N (work since the last checkpoint
is lost). --throttle-after N: sleep 0.2 s after each step past N, leaving the
caller time to SIGKILL it from outside at an arbitrary point.
"""

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402
from workers.resume_data import BATCH  # noqa: E402
from workers.resume_data import data  # noqa: E402
from workers.resume_data import initial_weights  # noqa: E402

STEPS = 30           # custom and tf1
EPOCHS, BATCHES = 5, 6  # keras: 30 steps of 16 examples
SCALE = 1024.0
CHECKPOINT_EVERY = 5
WEIGHTS_SEED = 1234


class Progress:
  """Reports steps and carries out --die-at / --throttle-after."""

  def __init__(self, args):
    self.args = args

  def resumed(self, done):
    print(f"resumed {done}", flush=True)

  def step(self, done):
    print(f"progress {done}", flush=True)
    if self.args.die_at is not None and done == self.args.die_at:
      os.kill(os.getpid(), signal.SIGKILL)
    if self.args.throttle_after is not None and done >= self.args.throttle_after:
      time.sleep(0.2)


def finish(directory, weights):
  np.savez(os.path.join(directory, "final.npz"), *weights)
  print("done", flush=True)


# ---- custom loop, tf.train.Checkpoint ----------------------------------------


def run_custom(directory, progress):
  w1, w2 = (tf.Variable(w) for w in initial_weights(WEIGHTS_SEED))
  velocity = [tf.Variable(tf.zeros_like(w)) for w in (w1, w2)]
  step = tf.Variable(0, dtype=tf.int64)
  loss_scale = fls.FixedLossScale(SCALE)
  checkpoint = tf.train.Checkpoint(w1=w1, w2=w2, velocity=velocity, step=step)
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(directory, "ckpt"), max_to_keep=2)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_consumed()

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      h = tf.nn.relu(tf.matmul(tf.cast(x, tf.float16), tf.cast(w1, tf.float16)))
      out = tf.matmul(h, tf.cast(w2, tf.float16))
      loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y))
      scaled = loss_scale.scale_loss(loss)
    grads = loss_scale.unscale_gradients(tape.gradient(scaled, [w1, w2]))
    for w, v, g in zip((w1, w2), velocity, grads):
      v.assign(0.9 * v + g)
      w.assign_sub(0.05 * v)
    step.assign_add(1)

  progress.resumed(int(step))
  while int(step) < STEPS:
    train_step(*data(int(step)))
    if int(step) % CHECKPOINT_EVERY == 0:
      manager.save(checkpoint_number=int(step))
    progress.step(int(step))
  finish(directory, [w1.numpy(), w2.numpy()])


# ---- TF1 graph, optimizer wrapper, Saver --------------------------------------


def run_tf1(directory, progress):
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 8])
    y = tf.compat.v1.placeholder(tf.float32, [None, 2])
    w1_init, w2_init = initial_weights(WEIGHTS_SEED)
    w1 = tf.compat.v1.get_variable("w1", initializer=w1_init)
    w2 = tf.compat.v1.get_variable("w2", initializer=w2_init)
    global_step = tf.compat.v1.train.get_or_create_global_step()
    h = tf.nn.relu(tf.matmul(tf.cast(x, tf.float16), tf.cast(w1, tf.float16)))
    out = tf.matmul(h, tf.cast(w2, tf.float16))
    loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y))
    optimizer = fls.MixedPrecisionLossScaleOptimizer(
        tf.compat.v1.train.MomentumOptimizer(0.05, 0.9), SCALE)
    train = optimizer.minimize(loss, global_step=global_step)
    saver = tf.compat.v1.train.Saver(max_to_keep=2)
    prefix = os.path.join(directory, "ckpt", "model")
    with tf.compat.v1.Session(graph=graph) as session:
      latest = tf.compat.v1.train.latest_checkpoint(os.path.dirname(prefix))
      if latest:
        saver.restore(session, latest)
      else:
        session.run(tf.compat.v1.global_variables_initializer())
      done = int(session.run(global_step))
      progress.resumed(done)
      while done < STEPS:
        xs, ys = data(done)
        session.run(train, {x: xs, y: ys})
        done = int(session.run(global_step))
        if done % CHECKPOINT_EVERY == 0:
          saver.save(session, prefix, global_step=done)
        progress.step(done)
      finish(directory, session.run([w1, w2]))


# ---- Keras fit, BackupAndRestore ---------------------------------------------


def run_keras(directory, progress):
  import keras
  from fixed_loss_scale.keras import FixedLossScaleOptimizer

  keras.utils.set_random_seed(0)
  keras.mixed_precision.set_global_policy("mixed_float16")
  w1_init, w2_init = initial_weights(WEIGHTS_SEED)
  model = keras.Sequential([
      keras.Input((8,)),
      keras.layers.Dense(16, activation="relu", use_bias=False),
      keras.layers.Dense(2, use_bias=False),
      keras.layers.Activation("linear", dtype="float32"),
  ])
  model.layers[0].kernel.assign(w1_init)
  model.layers[1].kernel.assign(w2_init)
  optimizer = FixedLossScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), SCALE)
  model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
  xs, ys = zip(*(data(i) for i in range(BATCHES)))
  x, y = np.concatenate(xs), np.concatenate(ys)

  class Report(keras.callbacks.Callback):

    def on_train_begin(self, logs=None):
      progress.resumed((self.model._initial_epoch or 0) * BATCHES)  # set by BackupAndRestore

    def on_train_batch_end(self, batch, logs=None):
      progress.step(self.epoch * BATCHES + batch + 1)

    def on_epoch_begin(self, epoch, logs=None):
      self.epoch = epoch

  model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
                       Report()])
  finish(directory, [v.numpy() for v in model.trainable_variables] +
         [np.asarray(v) for v in optimizer.variables])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("flavor", choices=["custom", "tf1", "keras"])
  parser.add_argument("directory")
  parser.add_argument("--die-at", type=int)
  parser.add_argument("--throttle-after", type=int)
  args = parser.parse_args()
  tf.config.experimental.enable_op_determinism()
  {"custom": run_custom, "tf1": run_tf1, "keras": run_keras}[args.flavor](
      args.directory, Progress(args))


if __name__ == "__main__":
  sys.exit(main())
