"""FixedLossScaleOptimizer's unscale_in_apply is fixed by the constructor alone.

Whether apply unscales must not depend on earlier calls of
get_unscaled_gradients, eagerly, in another trace or with the result thrown
away, in the Keras 3 style (scale_loss + apply) and the tf.keras 2 style
(get_scaled_loss + get_unscaled_gradients + apply_gradients). The reference is
numpy's SGD step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from fixed_loss_scale.keras import FixedLossScaleOptimizer

# The reproduction: whether apply unscales must not depend on
# earlier calls of get_unscaled_gradients (eagerly, in another trace, or with
# the result thrown away). v = [1, 1], loss = sum(v) * 1024, SGD(1.0): each
# step subtracts the true gradient, 1, so after two steps v is [-1, -1]
# (numpy: 1 - 2 * 1.0). An unscale skipped gives -2047; unscaled twice,
# 1 - 2/1024.

REPRO_SCALE = 1024.0
REPRO_EXPECTED = np.ones(2, np.float32) - 2 * np.float32(1.0)


def _repro(unscale_in_apply):
  v = keras.Variable(np.ones(2, np.float32))
  opt = FixedLossScaleOptimizer(keras.optimizers.SGD(1.0), REPRO_SCALE,
                                unscale_in_apply=unscale_in_apply)
  opt.build([v])

  def log():  # e.g. to log the gradients; the result is thrown away
    opt.get_unscaled_gradients([tf.constant([REPRO_SCALE, REPRO_SCALE])])

  def keras3_step(log_inside=False):
    with tf.GradientTape() as tape:
      loss = opt.scale_loss(tf.reduce_sum(v))
    grads = tape.gradient(loss, [v])
    if log_inside:
      opt.get_unscaled_gradients(grads)  # thrown away
    opt.apply(grads, [v])

  def tf_keras2_step(log_inside=False):
    with tf.GradientTape() as tape:
      loss = opt.get_scaled_loss(tf.reduce_sum(v))
    grads = opt.get_unscaled_gradients(tape.gradient(loss, [v]))
    if log_inside:
      opt.get_unscaled_gradients(grads)  # thrown away
    opt.apply_gradients(zip(grads, [v]))

  return v, log, keras3_step if unscale_in_apply else tf_keras2_step


def _eager_log_then_traced(log, step):
  log()
  fn = tf.function(step)
  fn()
  fn()


def _traced_then_eager_log(log, step):
  fn = tf.function(step)
  fn()
  log()
  fn()


def _two_functions(log, step):
  log_fn = tf.function(log)
  log_fn()  # traced (and run) before the step function is traced
  fn = tf.function(step)
  log_fn()
  fn()
  fn()


def _retrace(log, step):
  fn = tf.function(lambda tag: step())
  fn(0)
  log()
  fn(1)  # a new Python argument: traced again, after the eager log
  assert fn.experimental_get_tracing_count() == 2


def _log_thrown_away_inside_the_trace(log, step):
  del log
  fn = tf.function(lambda: step(log_inside=True))
  fn()
  fn()


def _eager(log, step):
  log()
  step()
  log()
  step(log_inside=True)


ORDERS = {
    "eager_log_then_traced": _eager_log_then_traced,
    "traced_then_eager_log": _traced_then_eager_log,
    "two_functions": _two_functions,
    "retrace": _retrace,
    "log_thrown_away_inside_the_trace": _log_thrown_away_inside_the_trace,
    "eager": _eager,
}


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("style", ["keras3", "tf_keras2"])
def test_apply_does_not_depend_on_earlier_calls(order, style):
  v, log, step = _repro(unscale_in_apply=style == "keras3")
  ORDERS[order](log, step)
  assert_bitwise_equal(v.numpy(), REPRO_EXPECTED)


def test_issue_reproduction_verbatim():
  v = keras.Variable(np.ones(2, np.float32))
  opt = fls.keras.FixedLossScaleOptimizer(keras.optimizers.SGD(1.0), 1024.0)
  opt.build([v])
  opt.get_unscaled_gradients([tf.constant([1024.0, 1024.0])])  # e.g. to log them, eagerly

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = opt.scale_loss(tf.reduce_sum(v))
    opt.apply(tape.gradient(loss, [v]), [v])

  step()
  step()
  np.testing.assert_array_equal(v.numpy(), [-1.0, -1.0])


@pytest.mark.parametrize("traced", [False, True])
def test_each_mode_is_a_function_of_the_constructor_only(traced):
  # The same gradients through apply_gradients after a get_unscaled_gradients
  # call: the default unscales them, unscale_in_apply=False does not. The
  # reference is numpy: v - lr * g * float32(1/s) and v - lr * g.
  g = np.array([512.0, -2048.0], np.float32)
  for unscale_in_apply, applied in ((True, g * (np.float32(1) / np.float32(REPRO_SCALE))),
                                    (False, g)):
    v = keras.Variable(np.ones(2, np.float32))
    opt = FixedLossScaleOptimizer(keras.optimizers.SGD(1.0), REPRO_SCALE,
                                  unscale_in_apply=unscale_in_apply)
    opt.get_unscaled_gradients([tf.constant(g)])

    def apply():
      opt.apply_gradients([(tf.constant(g), v)])

    (tf.function(apply) if traced else apply)()
    assert_bitwise_equal(v.numpy(), np.ones(2, np.float32) - applied)
