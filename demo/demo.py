"""The float16 underflow rescue, in a tf.function and in a TF1 Session.

A tiny linear model computes in float16 (float32 master weights cast to float16)
with targets of order 1e-5, so the gradient reaching the float16 matmul is of
order 1e-7: below what float16 can hold. Without loss scaling it underflows to
zero and nothing trains; with FixedLossScale(2**15) it survives, is unscaled by
FixedUnscaleGrads, and the model fits. Run with `make demo`.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402

STEPS = 300
LEARNING_RATE = 0.25
LOSS_SCALE = 2.0**15
BATCH, FEATURES = 256, 8


def make_data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
  true_w = (rng.standard_normal((FEATURES, 1)) * 1e-5).astype(np.float32)
  return x, x @ true_w


def forward_loss(w, x, y):
  """float16 compute, float32 loss: the usual mixed-precision split."""
  prediction = tf.matmul(tf.cast(x, tf.float16), tf.cast(w, tf.float16))
  residual = tf.cast(prediction, tf.float32) - y
  return tf.reduce_mean(tf.square(residual))


def train_with_tf_function(loss_scale, x, y):
  """Custom training loop in a tf.function.

  Returns (losses, the first step from which every gradient entry was zero or
  None if that never happened, the op types of the step's graph).
  """
  w = tf.Variable(tf.zeros([FEATURES, 1]))

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = forward_loss(w, x, y)
      scaled = loss_scale.scale_loss(loss) if loss_scale else loss
    grad = tape.gradient(scaled, w)
    if loss_scale:
      grad = loss_scale.unscale_gradients(grad)
    w.assign_sub(LEARNING_RATE * grad)
    return loss, tf.reduce_mean(tf.cast(tf.equal(grad, 0.0), tf.float32))

  losses, stalled_at = [], None
  for i in range(STEPS):
    loss, zeros = step()
    losses.append(float(loss))
    if float(zeros) < 1.0:
      stalled_at = None
    elif stalled_at is None:
      stalled_at = i
    if i % 100 == 0 or i == STEPS - 1:
      print(f"    step {i:3d}  loss {losses[-1]:.3e}", flush=True)
  op_types = {op.type for op in step.get_concrete_function().graph.get_operations()}
  return losses, stalled_at, op_types


def train_in_session(x, y):
  """The same model in a TF1 graph and Session, scaled and unscaled by FixedLossScale."""
  loss_scale = fls.FixedLossScale(LOSS_SCALE)
  with tf.Graph().as_default() as graph:
    w = tf.compat.v1.get_variable("w", [FEATURES, 1], initializer=tf.compat.v1.zeros_initializer())
    loss = forward_loss(w, tf.constant(x), tf.constant(y))
    (grad,) = tf.compat.v1.gradients(loss_scale.scale_loss(loss), [w])
    (grad,) = loss_scale.unscale_gradients([grad])
    train = tf.compat.v1.assign_sub(w, LEARNING_RATE * grad)
    losses = []
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for i in range(STEPS):
        losses.append(float(sess.run([loss, train])[0]))
        if i % 100 == 0 or i == STEPS - 1:
          print(f"    step {i:3d}  loss {losses[-1]:.3e}", flush=True)
    return losses, {op.type for op in graph.get_operations()}


def describe_stall(stalled_at):
  if stalled_at is None:
    return "the gradients never underflowed"
  return f"from step {stalled_at} on every float16 gradient underflowed to zero: training stalled"


def describe_ops(op_types):
  ours = [t for t in ("FixedScaleLoss", "FixedUnscaleGrads") if t in op_types]
  return ", ".join(ours) if ours else "none of ours"


def main():
  started = time.time()
  x, y = make_data()
  print(f"fixed_loss_scale {fls.__version__} on TensorFlow {tf.__version__}")
  print(f"float16 model, targets ~1e-5, {STEPS} steps of SGD (lr {LEARNING_RATE})\n")

  print("1. tf.function, no loss scaling")
  plain, plain_stalled_at, _ = train_with_tf_function(None, x, y)
  print(f"   loss {plain[0]:.3e} -> {plain[-1]:.3e}; "
        f"{describe_stall(plain_stalled_at)}\n")

  print(f"2. tf.function, FixedLossScale({LOSS_SCALE:g})")
  scaled, scaled_stalled_at, op_types = train_with_tf_function(
      fls.FixedLossScale(LOSS_SCALE), x, y)
  print(f"   loss {scaled[0]:.3e} -> {scaled[-1]:.3e}; {describe_stall(scaled_stalled_at)}")
  print(f"   custom ops in the step's graph: {describe_ops(op_types)}\n")

  print(f"3. TF1 Session graph, FixedLossScale({LOSS_SCALE:g})")
  session_losses, session_ops = train_in_session(x, y)
  print(f"   loss {session_losses[0]:.3e} -> {session_losses[-1]:.3e}")
  print(f"   custom ops in the Session graph: {describe_ops(session_ops)}\n")

  rescued = (plain_stalled_at is not None and scaled_stalled_at is None
             and scaled[-1] < 1e-2 * plain[-1])
  same_in_session = np.isclose(session_losses[-1], scaled[-1], rtol=1e-3, atol=0)
  print(f"Summary: unscaled training stalled at loss {plain[-1]:.2e} once its float16 "
        f"gradients underflowed; with a fixed scale of {LOSS_SCALE:g} it reached "
        f"{scaled[-1]:.2e} ({plain[-1] / max(scaled[-1], 1e-45):.0f}x lower), in a tf.function "
        f"and in a Session alike. {'OK' if rescued and same_in_session else 'UNEXPECTED RESULT'} "
        f"({time.time() - started:.1f} s)")
  return 0 if rescued and same_in_session else 1


if __name__ == "__main__":
  sys.exit(main())
