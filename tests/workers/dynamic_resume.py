"""Worker for tests/test_dynamic_resume.py: float16 training with
fixed_loss_scale.DynamicLossScale that checkpoints as it goes and resumes from
its latest checkpoint when restarted.

  python dynamic_resume.py DIR [--throttle-after N]

A custom loop (tf.function step): float32 weights computed in float16, the
loss scaled by the dynamic scale, gradients unscaled and checked by it, a step
applied (momentum SGD in tf.Variables) only where `update` says so. The scale
starts at INITIAL_SCALE, which overflows float16 by itself, and the loss is
multiplied by inf on the steps in INJECTED, so the scale falls and rises
through the run. tf.train.CheckpointManager saves the weights, the velocities,
the step and the loss scale (its scale and good-steps counter) every
CHECKPOINT_EVERY steps. Every step's data depends only on its index and op
determinism is on, so a resumed run must retrace an uninterrupted one exactly.

Prints "resumed K scale S good G" first (K steps already done, the restored
state), then after every step "progress K scale S good G applied A digest D"
(A: whether the step was applied; D: SHA-256 of the weights and velocities),
flushed; at the end writes DIR/final.npz and prints "done".
--throttle-after N: sleep 0.2 s after each step past N, so that the caller can
SIGKILL it at an arbitrary point of a running step.
"""

import argparse
import hashlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402
from workers.resume_data import data  # noqa: E402
from workers.resume_data import initial_weights  # noqa: E402

STEPS = 30
CHECKPOINT_EVERY = 5
WEIGHTS_SEED = 4321
INITIAL_SCALE = 2.0**24
INCREMENT_PERIOD = 4
INJECTED = (7, 12, 18, 21, 26)
LEARNING_RATE, MOMENTUM = 0.05, 0.9


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("directory")
  parser.add_argument("--throttle-after", type=int)
  args = parser.parse_args()
  tf.config.experimental.enable_op_determinism()

  weights = [tf.Variable(w) for w in initial_weights(WEIGHTS_SEED)]
  velocity = [tf.Variable(tf.zeros_like(w)) for w in weights]
  step = tf.Variable(0, dtype=tf.int64)
  loss_scale = fls.DynamicLossScale(INITIAL_SCALE, increment_period=INCREMENT_PERIOD)
  checkpoint = tf.train.Checkpoint(weights=weights, velocity=velocity, step=step,
                                   loss_scale=loss_scale)
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(args.directory, "ckpt"),
                                       max_to_keep=2)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_consumed()

  @tf.function
  def train_step(x, y, factor):
    w1, w2 = weights
    with tf.GradientTape() as tape:
      h = tf.nn.relu(tf.matmul(tf.cast(x, tf.float16), tf.cast(w1, tf.float16)))
      out = tf.matmul(h, tf.cast(w2, tf.float16))
      loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y)) * factor
      scaled = loss_scale.scale_loss(loss)
    grads = loss_scale.unscale_gradients(tape.gradient(scaled, weights))
    _, should_apply = loss_scale.update(grads)

    def apply():
      for w, v, g in zip(weights, velocity, grads):
        v.assign(MOMENTUM * v + g)
        w.assign_sub(LEARNING_RATE * v)
      return tf.constant(True)

    applied = tf.cond(should_apply, apply, lambda: tf.constant(False))
    step.assign_add(1)
    return applied

  def state():
    return (f"scale {float(loss_scale._current_loss_scale.numpy())!r} "  # pylint: disable=protected-access
            f"good {int(loss_scale._num_good_steps.numpy())}")  # pylint: disable=protected-access

  print(f"resumed {int(step)} {state()}", flush=True)
  while int(step) < STEPS:
    done = int(step)
    x, y = data(done)
    applied = bool(train_step(x, y, np.float32(np.inf if done in INJECTED else 1.0)))
    done = int(step)
    if done % CHECKPOINT_EVERY == 0:
      manager.save(checkpoint_number=done)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights + velocity))
    print(f"progress {done} {state()} applied {int(applied)} digest {digest.hexdigest()[:16]}",
          flush=True)
    if args.throttle_after is not None and done >= args.throttle_after:
      time.sleep(0.2)
  np.savez(os.path.join(args.directory, "final.npz"),
           *[v.numpy() for v in weights + velocity],
           np.float32(loss_scale._current_loss_scale.numpy()),  # pylint: disable=protected-access
           np.int64(loss_scale._num_good_steps.numpy()))  # pylint: disable=protected-access
  print("done", flush=True)


if __name__ == "__main__":
  sys.exit(main())
