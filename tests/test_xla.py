"""XLA (jit_compile=True): the integrations take the plain-arithmetic path, same numbers.

Custom ops have no XLA kernel, so inside an XLA context the package must not
emit them. These tests check that each integration compiles under XLA with no
custom op in its graph, and that its results equal the numpy oracles, the
custom-op path, TF's compat wrapper under XLA, and Keras's loss_scale_factor
under XLA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import ALL_DTYPES
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import random_values
from conftest import reference_scale
from conftest import reference_unscale
from conftest import train_custom_loop
from fixed_loss_scale.keras import FixedLossScaleOptimizer

CUSTOM_OPS = {"FixedScaleLoss", "FixedUnscaleGrads"}
v1 = tf.compat.v1


def test_raw_custom_op_cannot_compile_under_xla():
  # Why the dispatch exists: the op itself has no XLA kernel.
  @tf.function(jit_compile=True)
  def raw(x):
    return fls.ops.fixed_scale_loss(x, 8.0)

  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="No registered 'FixedScaleLoss' OpKernel for XLA"):
    raw(tf.constant(1.0))


@pytest.mark.parametrize("scale", [1024, 1000.5])
def test_fixed_loss_scale_under_xla_matches_oracle_and_custom_op_path(scale, rng):
  loss_scale = fls.FixedLossScale(scale)
  loss = tf.constant(random_values(rng, (7,), np.float32))
  grads = [tf.constant(random_values(rng, (33,), NP_DTYPES[d])) for d in ALL_DTYPES]
  indexed = tf.IndexedSlices(tf.constant(random_values(rng, (2, 4), np.float16)),
                             tf.constant([0, 3]), tf.constant([5, 4]))

  def body(loss, grads, values, indices):
    unscaled = loss_scale.unscale_gradients(
        grads + [tf.IndexedSlices(values, indices, tf.constant([5, 4]))])
    return loss_scale.scale_loss(loss), unscaled[:-1], unscaled[-1].values

  xla = tf.function(body, jit_compile=True)
  graph = tf.function(body)
  args = (loss, grads, indexed.values, indexed.indices)
  xla_out, graph_out = xla(*args), graph(*args)

  assert not CUSTOM_OPS & set(graph_op_types(xla.get_concrete_function(*args)))
  assert CUSTOM_OPS <= set(graph_op_types(graph.get_concrete_function(*args)))
  assert_bitwise_equal(xla_out[0].numpy(), reference_scale(loss.numpy(), scale))
  for g, out in zip(grads, xla_out[1]):
    assert_bitwise_equal(out.numpy(), reference_unscale(g.numpy(), scale))
  assert_bitwise_equal(xla_out[2].numpy(), reference_unscale(indexed.values.numpy(), scale))
  for a, b in zip(tf.nest.flatten(xla_out), tf.nest.flatten(graph_out)):
    assert_bitwise_equal(a.numpy(), b.numpy())


def test_inner_tf_function_inside_xla_uses_arithmetic():
  @tf.function
  def inner(x):
    return fls.scale_loss(x, 64), fls.unscale_gradients([x], 64)[0]

  @tf.function(jit_compile=True)
  def outer(x):
    return inner(x)

  x = tf.constant([1.5, -3.0, 65504.0], tf.float16)
  scaled, unscaled = outer(x)
  assert_bitwise_equal(scaled.numpy(), reference_scale(x.numpy(), 64))  # 65504*64 -> inf
  assert_bitwise_equal(unscaled.numpy(), reference_unscale(x.numpy(), 64))
  assert not CUSTOM_OPS & set(graph_op_types(outer.get_concrete_function(x)))


def _tf1_train(wrap, jit_compile, steps=3):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 6)).astype(np.float32)
  y = rng.standard_normal((16, 1)).astype(np.float32)
  w = tf.Variable(rng.standard_normal((6, 1)).astype(np.float32))
  opt = wrap(v1.train.MomentumOptimizer(0.05, 0.9), 512)

  @tf.function(jit_compile=jit_compile)
  def step():
    opt.minimize(lambda: tf.reduce_mean(tf.square(tf.matmul(x, w) - y)), var_list=[w])

  for _ in range(steps):
    step()
  return w.numpy(), graph_op_types(step.get_concrete_function())


def test_tf1_wrapper_under_xla_bit_identical_to_tf_wrapper():
  ours, ops = _tf1_train(fls.MixedPrecisionLossScaleOptimizer, True)
  theirs, _ = _tf1_train(v1.mixed_precision.MixedPrecisionLossScaleOptimizer, True)
  assert_bitwise_equal(ours, theirs)
  assert not CUSTOM_OPS & set(ops)
  # Same training without XLA (custom ops); XLA may reorder the model's own
  # reductions, so only closeness is expected across the two compilers.
  graph_mode, graph_ops = _tf1_train(fls.MixedPrecisionLossScaleOptimizer, False)
  assert CUSTOM_OPS <= set(graph_ops)
  np.testing.assert_allclose(ours, graph_mode, rtol=1e-6, atol=1e-6)


def test_keras_custom_loop_under_xla_bit_identical_to_loss_scale_factor():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 8)).astype(np.float32)
  y = rng.standard_normal((32, 1)).astype(np.float32)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    results = []
    for optimizer in (FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), 4096),
                      keras.optimizers.Adam(1e-2, loss_scale_factor=4096.0)):
      keras.utils.set_random_seed(5)
      model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(1)])
      results.append(train_custom_loop(model, x, y, 8, optimizer.scale_loss, optimizer.apply,
                                       jit_compile=True))
  finally:
    keras.mixed_precision.set_global_policy(previous)
  (ours, ops), (theirs, _) = results
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert not CUSTOM_OPS & set(ops)
