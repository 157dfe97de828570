"""TensorFlow's loss_scale_test.py, restated, run against this package's loss scales.

Upstream: tensorflow/tensorflow, tensorflow/python/training/experimental/
loss_scale_test.py at commit aeeb115816644ae91978ef16c6b38049592bc5e1 (the
version TF 2.21's classes carry), Copyright 2019 The TensorFlow Authors,
Apache License 2.0. It is not in the TensorFlow wheel; this file restates every
one of its cases -- the same inputs, the same assertions -- in this suite's own
words (no upstream code is copied). Where the original is supplied
(tests/test_tf_dynamic_upstream.py, $FLS_TF_LOSS_SCALE_TEST), it runs unchanged
too.

Each case runs for `which`: "ours" (fixed_loss_scale.FixedLossScale,
DynamicLossScale and get, what CI checks) and "tf" (TF's classes: the control
that shows the restatement asks what upstream asks). Upstream's decorators
become parameters: `mode` is run_in_graph_and_eager_modes, `strategy` its
TESTCASES (base, distribute).
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.training.experimental import loss_scale as tf_loss_scale

import fixed_loss_scale as fls
from upstream_modes import STRATEGIES
from upstream_modes import run_in_mode

CLASSES = {
    "ours": (fls.FixedLossScale, fls.DynamicLossScale, fls.get),
    "tf": (tf_loss_scale.FixedLossScale, tf_loss_scale.DynamicLossScale, tf_loss_scale.get),
}
MODES = ["graph", "eager"]
F32_MAX = np.finfo(np.float32).max

which_param = pytest.mark.parametrize("which", sorted(CLASSES))
mode_param = pytest.mark.parametrize("mode", MODES)
strategy_param = pytest.mark.parametrize("strategy", sorted(STRATEGIES))


def every_strategy_class_and_mode(test):
  """Upstream's TESTCASES x run_in_graph_and_eager_modes, for each class."""
  return strategy_param(which_param(mode_param(test)))


# FixedLossScaleTest


@which_param
@mode_param
def test_fixed_basic(which, mode):
  fixed = CLASSES[which][0]

  def case(evaluate):
    loss_scale = fixed(1000)
    for grad in (0., float("nan")):
      update_op, should_apply = loss_scale.update([tf.constant(grad)])
      evaluate(update_op)
      # A Python bool, so that the caller needs no tf.cond in its graph.
      assert isinstance(should_apply, bool) and should_apply
      assert evaluate(loss_scale()) == 1000

  run_in_mode(mode, case)


@which_param
@mode_param
def test_fixed_serialization(which, mode):
  fixed, _, get = CLASSES[which]

  def case(evaluate):
    loss_scale = fixed.from_config(get(123).get_config())
    assert evaluate(loss_scale()) == 123.

  run_in_mode(mode, case)


@which_param
@mode_param
def test_fixed_call_type(which, mode):
  assert run_in_mode(mode, lambda _: isinstance(CLASSES[which][0](123)(), tf.Tensor))


@which_param
@mode_param
def test_fixed_repr(which, mode):
  assert run_in_mode(mode, lambda _: repr(CLASSES[which][0](123))) == "FixedLossScale(123.0)"


# DynamicLossScaleTest


def _gradient(is_finite):
  """1. where `is_finite`, NaN otherwise; under a strategy only replica 0's is
  that tensor, the others get 1."""
  tensor = tf.compat.v1.cond(is_finite, lambda: 1., lambda: float("nan"))
  if not tf.distribute.has_strategy():
    return tensor

  def per_replica():
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return tf.compat.v1.cond(tf.equal(replica, 0), lambda: tensor, lambda: 1.)

  return tf.distribute.get_strategy().extended.call_for_each_replica(per_replica)


def _trajectory(dynamic, mode, inputs, initial_loss_scale=1., increment_period=2, multiplier=2):
  """Upstream's _test_helper: one update per input (whether its gradient is
  finite), asserting should_apply == the input each step; returns the scale
  read after each step."""

  def case(evaluate):
    loss_scale = dynamic(initial_loss_scale=initial_loss_scale,
                         increment_period=increment_period, multiplier=multiplier)
    dataset = tf.data.Dataset.from_tensor_slices(inputs)
    iterator = tf.compat.v1.data.make_one_shot_iterator(dataset)

    def update():
      is_finite = iterator.get_next()
      update_op, should_apply = loss_scale.update([_gradient(is_finite)])
      check = tf.debugging.assert_equal(should_apply, is_finite)
      if tf.executing_eagerly():
        return None
      with tf.control_dependencies([check]):
        return tf.group(update_op)

    scales = []
    step = None if tf.executing_eagerly() else update()
    if step is not None:
      evaluate(tf.compat.v1.global_variables_initializer())
    for _ in inputs:
      if step is None:
        update()
      else:
        evaluate(step)
      scales.append(evaluate(loss_scale()))
    return scales

  return run_in_mode(mode, case)


# (inputs, expected scales, initial_loss_scale, increment_period, multiplier,
#  whether the helper runs inside the strategy's scope: upstream's
#  test_decrease_every_step calls it after the scope closed).
TRAJECTORIES = {
    "increase": ([True] * 6, [1, 2, 2, 4, 4, 8], 1., 2, 2, True),
    "keep_increasing_until_capped": (
        [True] * 6, [F32_MAX / 4, F32_MAX / 4 * 2, F32_MAX / 4 * 2, F32_MAX, F32_MAX, F32_MAX],
        F32_MAX / 4, 2, 2, True),
    "decrease_every_step": ([False] * 6, [512, 256, 128, 64, 32, 16], 1024, 2, 2, False),
    "keep_decreasing_until_one": ([False] * 6, [8, 4, 2, 1, 1, 1], 16, 2, 2, True),
    "nan_clear_good_step": ([True, True, True, False, True], [1, 2, 2, 1, 1], 1., 2, 2, True),
    "trigger_loss_scale_update_each_step": (
        [True] * 3 + [False, True, True], [2, 4, 8, 4, 8, 16], 1, 1, 2, True),
    "alternating_good_and_bad_gradients_trigger_each_step": (
        [True, False] * 4 + [True], [2, 1, 2, 1, 2, 1, 2, 1, 2], 1, 1, 2, True),
    "alternating_good_and_bad_gradients_trigger_every_other_step": (
        [True, False] * 3 + [True], [32, 16, 16, 8, 8, 4, 4], 32, 2, 2, True),
    "nondefault_multiplier": ([True, True, False, True, True], [4, 12, 4, 4, 12], 4, 2, 3, True),
    "random_mix_good_and_bad_gradients": (
        [False, True, True, True, False, True, False, True, True, True, False],
        [2, 2, 4, 4, 2, 2, 1, 1, 2, 2, 1], 4, 2, 2, True),
}


@pytest.mark.parametrize("name", sorted(TRAJECTORIES))
@every_strategy_class_and_mode
def test_dynamic_trajectory(name, strategy, which, mode):
  inputs, expected, initial, period, multiplier, in_scope = TRAJECTORIES[name]
  dynamic = CLASSES[which][1]
  strategy_obj = STRATEGIES[strategy]()
  if in_scope:
    with strategy_obj.scope():
      scales = _trajectory(dynamic, mode, inputs, initial, period, multiplier)
  else:
    with strategy_obj.scope():
      pass
    scales = _trajectory(dynamic, mode, inputs, initial, period, multiplier)
  assert scales == expected


@every_strategy_class_and_mode
def test_dynamic_single_tensor_gradient(strategy, which, mode):

  def case(evaluate):
    with STRATEGIES[strategy]().scope():
      _, should_apply = CLASSES[which][1]().update(tf.constant(4.0))
      assert evaluate(should_apply)

  run_in_mode(mode, case)


@which_param
@mode_param
def test_dynamic_serialization(which, mode):
  dynamic = CLASSES[which][1]

  def case(evaluate):
    config = dynamic(initial_loss_scale=1, increment_period=2, multiplier=3).get_config()
    loss_scale = dynamic.from_config(config)
    evaluate(tf.compat.v1.global_variables_initializer())
    assert evaluate(loss_scale()) == 1
    assert loss_scale.increment_period == 2 and loss_scale.multiplier == 3

  run_in_mode(mode, case)


@which_param
@mode_param
def test_dynamic_update_with_none_gradients(which, mode):
  run_in_mode(mode, lambda _: CLASSES[which][1]().update([None]))


@which_param
@mode_param
def test_dynamic_get(which, mode):
  _, dynamic, get = CLASSES[which]

  def case(_):
    from_get, made = get("dynamic"), dynamic()
    assert from_get.initial_loss_scale == made.initial_loss_scale
    assert from_get.increment_period == made.increment_period
    assert from_get.multiplier == made.multiplier

  run_in_mode(mode, case)


@which_param
@mode_param
def test_dynamic_call_type(which, mode):
  assert run_in_mode(mode, lambda _: isinstance(CLASSES[which][1]()(), tf.Tensor))


@every_strategy_class_and_mode
def test_dynamic_repr(strategy, which, mode):

  def case(_):
    with STRATEGIES[strategy]().scope():
      loss_scale = CLASSES[which][1](initial_loss_scale=1, increment_period=2, multiplier=3)
      if tf.executing_eagerly():
        assert repr(loss_scale) == (
            "DynamicLossScale(current_loss_scale=1.0, num_good_steps=0, "
            "initial_loss_scale=1.0, increment_period=2, multiplier=3.0)")
      else:
        assert repr(loss_scale) == (
            "DynamicLossScale(initial_loss_scale=1.0, increment_period=2, multiplier=3.0)")

  run_in_mode(mode, case)
