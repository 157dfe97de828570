"""The fixed-scale cases of TensorFlow's own tests for the classes this package mirrors.

TensorFlow's tensorflow/python/training/experimental/loss_scale_test.py and
loss_scale_optimizer_test.py are not in the wheel. These tests make, in this
suite's own words, the assertions those files make about a fixed scale, against
this package's FixedLossScale and MixedPrecisionLossScaleOptimizer, in a TF1
graph and eagerly, without and with a (one-device) MirroredStrategy, next to
TF's compat classes as the reference wherever those can run the same case:

- FixedLossScale: `update` returns a Python bool True, for finite and NaN
  gradients, and the scale does not move; `get(123)` -> `get_config` ->
  `from_config` gives 123; calling it gives a tensor.
- MixedPrecisionLossScaleOptimizer: the gradient that reaches the loss is the
  scale (divided by the number of replicas); `minimize` applies the unscaled
  gradient; `compute_gradients` scales the loss; None is refused with
  "loss_scale cannot be None".

Their dynamic-scale cases are in tests/test_dynamic_loss_scale.py, which
compares fixed_loss_scale.DynamicLossScale with TF's class step by step.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls

v1 = tf.compat.v1
TFFixedLossScale = v1.mixed_precision.FixedLossScale
TFWrapper = v1.mixed_precision.MixedPrecisionLossScaleOptimizer

LOSS_SCALES = {"ours": fls.FixedLossScale, "tf": TFFixedLossScale}
WRAPPERS = {"ours": fls.MixedPrecisionLossScaleOptimizer, "tf": TFWrapper}


def in_graph_or_eager(mode, fn):
  """Runs fn(evaluate) in a fresh TF1 graph with a Session, or eagerly."""
  if mode == "eager":
    return fn(lambda x: tf.nest.map_structure(
        lambda t: t if t is None or isinstance(t, (bool, float)) else t.numpy(), x))
  with tf.Graph().as_default(), v1.Session() as sess:
    return fn(lambda x: sess.run(x) if x is not None else None)


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("which", sorted(LOSS_SCALES))
def test_fixed_loss_scale_update_allows_applying_even_nan_gradients(mode, which):

  def check(evaluate):
    loss_scale = LOSS_SCALES[which](1000)
    for grad in (0.0, float("nan")):
      update_op, should_apply = loss_scale.update([tf.constant(grad)])
      if mode == "graph":
        evaluate(update_op)
      # A Python bool, so that callers need no tf.cond.
      assert isinstance(should_apply, bool) and should_apply is True
      assert evaluate(loss_scale()) == 1000.0

  in_graph_or_eager(mode, check)


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_fixed_loss_scale_get_config_from_config_and_call_type(mode):

  def check(evaluate):
    loss_scale = fls.get(123)
    assert isinstance(loss_scale, fls.FixedLossScale)
    rebuilt = fls.FixedLossScale.from_config(loss_scale.get_config())
    assert evaluate(rebuilt()) == evaluate(TFFixedLossScale.from_config(
        TFFixedLossScale(123).get_config())()) == 123.0
    assert tf.is_tensor(rebuilt()) and tf.is_tensor(TFFixedLossScale(123)())

  in_graph_or_eager(mode, check)


def one_device_mirrored():
  return tf.distribute.MirroredStrategy(["/cpu:0"])


STRATEGIES = {"default": tf.distribute.get_strategy, "mirrored": one_device_mirrored}


def identity_recording_its_gradient(seen):
  """An identity whose backward pass appends the gradient it receives to `seen`."""

  @tf.custom_gradient
  def identity(x):
    def grad(upstream):
      seen.append(upstream)
      return tf.identity(upstream)
    return tf.identity(x), grad

  return identity


@pytest.mark.parametrize("strategy_name", sorted(STRATEGIES))
@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("which", sorted(WRAPPERS))
def test_minimize_scales_the_loss_and_applies_the_unscaled_gradient(which, mode, strategy_name):
  # var 5, loss = identity(var) / replicas, plain SGD with learning rate 2 and
  # a scale of 10: the gradient reaching the identity is 10 / replicas (the
  # scaled loss's), the applied one 1, so var becomes 5 - 2 * 1 = 3.

  def check(evaluate):
    seen = []
    identity = identity_recording_its_gradient(seen)
    with STRATEGIES[strategy_name]().scope() as strategy:
      var = tf.Variable([5.0])
      opt = WRAPPERS[which](v1.train.GradientDescentOptimizer(2.0), 10.0)
      replicas = strategy.num_replicas_in_sync

      def step():
        return opt.minimize(lambda: identity(var) / replicas, var_list=[var])

      if mode == "graph":
        train_op = strategy.run(step) if strategy_name == "mirrored" else step()
        evaluate(v1.global_variables_initializer())
        evaluate(train_op)
        seen_values = evaluate(seen)
      else:
        strategy.run(step) if strategy_name == "mirrored" else step()  # pylint: disable=expression-not-assigned
        seen_values = evaluate(seen)
      assert len(seen_values) == replicas
      for value in seen_values:
        np.testing.assert_array_equal(value, [10.0 / replicas])
      np.testing.assert_array_equal(evaluate(var.read_value()), [3.0])

  in_graph_or_eager(mode, check)


@pytest.mark.parametrize("which", sorted(WRAPPERS))
def test_compute_gradients_scales_the_loss_in_a_graph(which):
  seen = []
  identity = identity_recording_its_gradient(seen)
  with tf.Graph().as_default(), v1.Session() as sess:
    var = tf.Variable([2.0])
    opt = WRAPPERS[which](v1.train.GradientDescentOptimizer(1.0), 10.0)
    grads = [g for g, _ in opt.compute_gradients(identity(var), [var])]
    sess.run(v1.global_variables_initializer())
    upstream, unscaled = sess.run([seen, grads])
  np.testing.assert_array_equal(upstream, [[10.0]])  # the scaled loss's gradient
  np.testing.assert_array_equal(unscaled, [[1.0]])  # handed back unscaled


@pytest.mark.parametrize("which", sorted(WRAPPERS))
def test_none_loss_scale_is_refused_in_tensorflows_words(which):
  with pytest.raises(ValueError, match=r"loss_scale cannot be None"):
    WRAPPERS[which](v1.train.GradientDescentOptimizer(1.0), None)


@pytest.mark.parametrize("which", sorted(WRAPPERS))
def test_a_non_tf1_optimizer_is_refused_in_tensorflows_words(which):
  with pytest.raises(ValueError, match=r'"opt" must be an instance of Optimizer, but got'):
    WRAPPERS[which](tf.keras.optimizers.SGD(), 8)
