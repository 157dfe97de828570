"""FixedLossScale's contract, checked against TF's own tf.compat.v1 FixedLossScale."""

import math

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale

TFFixedLossScale = tf.compat.v1.mixed_precision.FixedLossScale


def test_is_a_tf_compat_fixed_loss_scale():
  ours = fls.FixedLossScale(8)
  assert isinstance(ours, tf.compat.v1.mixed_precision.LossScale)
  # What TF's and tf_keras's isinstance checks ask, and the attribute they read.
  assert isinstance(ours, TFFixedLossScale)
  assert ours._loss_scale_value == TFFixedLossScale(8)._loss_scale_value == 8.0  # pylint: disable=protected-access


@pytest.mark.parametrize("value", [1, 123, 2**15, 1000.5, np.float32(3)])
def test_repr_is_tfs(value):
  assert repr(fls.FixedLossScale(value)) == repr(TFFixedLossScale(float(value)))
  with tf.Graph().as_default():
    assert repr(fls.FixedLossScale(value)) == repr(TFFixedLossScale(float(value)))


@pytest.mark.parametrize("value", [1, 8, 2**15, 1000.5, 3.0])
def test_call_matches_tf_reference(value):
  ours, theirs = fls.FixedLossScale(value)(), TFFixedLossScale(value)()
  assert ours.dtype == theirs.dtype == tf.float32
  assert ours.shape == theirs.shape == ()
  assert ours.numpy() == theirs.numpy()


def test_update_eagerly_returns_none_and_python_true():
  ours_op, ours_apply = fls.FixedLossScale(4).update([tf.ones([2])])
  theirs_op, theirs_apply = TFFixedLossScale(4).update([tf.ones([2])])
  assert ours_op is None and theirs_op is None
  assert ours_apply is True and isinstance(ours_apply, bool)
  assert theirs_apply is True


def test_update_in_graph_returns_noop_and_python_true():
  with tf.Graph().as_default():
    update_op, should_apply = fls.FixedLossScale(4).update([tf.ones([2]), None])
    theirs_op, _ = TFFixedLossScale(4).update([tf.ones([2])])
    assert update_op.type == theirs_op.type == "NoOp"
    assert should_apply is True and isinstance(should_apply, bool)


def test_config_round_trip_and_repr():
  ls = fls.FixedLossScale(2**15)
  assert ls.get_config() == TFFixedLossScale(2**15).get_config() == {"loss_scale_value": 32768.0}
  rebuilt = fls.FixedLossScale.from_config(ls.get_config())
  assert isinstance(rebuilt, fls.FixedLossScale)
  assert rebuilt.loss_scale_value == 32768.0
  assert repr(ls) == "FixedLossScale(32768.0)"
  assert fls.deserialize(fls.serialize(ls)).get_config() == ls.get_config()


def test_get_identifiers():
  assert isinstance(fls.get(128), fls.FixedLossScale) and fls.get(128).loss_scale_value == 128.0
  existing = fls.FixedLossScale(2)
  assert fls.get(existing) is existing
  assert fls.get(None) is None
  assert isinstance(fls.get("dynamic"), tf.compat.v1.mixed_precision.DynamicLossScale)
  assert fls.get({"class_name": "FixedLossScale", "config": {"loss_scale_value": 4.0}})() == 4.0
  for bad in ["static", [1], object()]:
    with pytest.raises(ValueError):
      fls.get(bad)


@pytest.mark.parametrize("bad", [0, 0.5, -1, math.nan, math.inf, -math.inf, 1e39])
def test_bad_values_raise_value_error(bad):
  with pytest.raises(ValueError, match="loss_scale_value"):
    fls.FixedLossScale(bad)


@pytest.mark.parametrize("bad", [True, False, "8", None, [8], tf.constant(8.0), np.array([2.0, 4.0])])
def test_non_numbers_raise_type_error(bad):
  with pytest.raises(TypeError, match="loss_scale_value"):
    fls.FixedLossScale(bad)


def test_numpy_scalars_accepted():
  assert fls.FixedLossScale(np.float32(8))() == 8.0
  assert fls.FixedLossScale(np.int64(8)).loss_scale_value == 8.0


def test_graph_mode_emits_ops_one_unscale_for_many_grads():
  ls = fls.FixedLossScale(2**10)
  grads_in = [tf.ones([n]) for n in range(1, 41)]

  @tf.function
  def step(gs):
    return ls.scale_loss(tf.reduce_sum(gs[0])), ls.unscale_gradients(gs)

  types = graph_op_types(step.get_concrete_function(grads_in))
  assert types.count("FixedScaleLoss") == 1
  assert types.count("FixedUnscaleGrads") == 1
  assert "Mul" not in types and "RealDiv" not in types
  loss, grads = step(grads_in)
  assert loss.numpy() == 1024.0
  for g in grads:
    np.testing.assert_array_equal(g.numpy(), np.full(g.shape, 1 / 1024, np.float32))


def test_tf1_session_graph_emits_ops():
  with tf.Graph().as_default() as graph:
    ls = fls.FixedLossScale(16)
    x = tf.compat.v1.placeholder(tf.float32, [3])
    scaled = ls.scale_loss(tf.reduce_sum(x))
    unscaled = ls.unscale_gradients([x * 1.0, None])
    assert unscaled[1] is None
    types = [op.type for op in graph.get_operations()]
    assert "FixedScaleLoss" in types and "FixedUnscaleGrads" in types
    with tf.compat.v1.Session() as sess:
      scaled_value, unscaled_value = sess.run([scaled, unscaled[0]], {x: [1.0, 2.0, 4.0]})
      assert scaled_value == 7 * 16
      np.testing.assert_array_equal(unscaled_value, np.float32([1, 2, 4]) / 16)


def test_eager_falls_back_to_same_numbers(rng):
  ls = fls.FixedLossScale(3.0)
  values = [rng.standard_normal(50).astype(t) for t in (np.float16, np.float32, np.float64)]
  eager = ls.unscale_gradients([tf.constant(v) for v in values])
  graph = tf.function(ls.unscale_gradients)([tf.constant(v) for v in values])
  for v, e, g in zip(values, eager, graph):
    assert_bitwise_equal(e.numpy(), reference_unscale(v, 3.0))
    assert_bitwise_equal(g.numpy(), e.numpy())


def test_nested_structure_none_and_indexed_slices():
  ls = fls.FixedLossScale(4)

  @tf.function
  def unscale():
    slices = tf.IndexedSlices(tf.constant([[4.0, 8.0]]), tf.constant([2]), tf.constant([5, 2]))
    return ls.unscale_gradients({"dense": [tf.constant([8.0]), None], "sparse": (slices,)})

  out = unscale()
  np.testing.assert_array_equal(out["dense"][0].numpy(), [2.0])
  assert out["dense"][1] is None
  sparse = out["sparse"][0]
  assert isinstance(sparse, tf.IndexedSlices)
  np.testing.assert_array_equal(sparse.values.numpy(), [[1.0, 2.0]])
  np.testing.assert_array_equal(sparse.indices.numpy(), [2])
  np.testing.assert_array_equal(sparse.dense_shape.numpy(), [5, 2])
  assert graph_op_types(unscale.get_concrete_function()).count("FixedUnscaleGrads") == 1


def test_all_none_or_empty_needs_no_op():
  ls = fls.FixedLossScale(4)

  @tf.function
  def unscale():
    return ls.unscale_gradients([None, None]), ls.unscale_gradients([])

  assert unscale() == ([None, None], [])
  assert "FixedUnscaleGrads" not in graph_op_types(unscale.get_concrete_function())


def test_gradient_through_fixed_scale_loss_is_the_scale():
  ls = fls.FixedLossScale(2**12)
  x = tf.Variable([1.0, -2.0, 3.0])

  @tf.function
  def grads():
    with tf.GradientTape() as tape:
      loss = ls.scale_loss(tf.reduce_sum(x * x))
    return tape.gradient(loss, x)

  np.testing.assert_array_equal(grads().numpy(), 2 * x.numpy() * 2**12)
  with tf.GradientTape() as tape:
    tape.watch(x)
    scaled = fls.ops.fixed_scale_loss(tf.reduce_sum(x), 8.0)
  np.testing.assert_array_equal(tape.gradient(scaled, x).numpy(), [8.0, 8.0, 8.0])


def test_gradient_through_fixed_unscale_grads_is_the_reciprocal():
  x = tf.Variable([1.0, 2.0])
  y = tf.Variable([3.0], dtype=tf.float64)
  with tf.GradientTape() as tape:
    a, b = fls.ops.fixed_unscale_grads([x, y], 4.0)
    total = tf.reduce_sum(a) + tf.cast(tf.reduce_sum(b), tf.float32)
  gx, gy = tape.gradient(total, [x, y])
  np.testing.assert_array_equal(gx.numpy(), [0.25, 0.25])
  np.testing.assert_array_equal(gy.numpy(), [0.25])


def test_works_with_tf_compat_mixed_precision_optimizer():
  """TF's own compat wrapper accepts our LossScale (it subclasses TF's base)."""
  opt = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(1.0), fls.FixedLossScale(128))
  with tf.Graph().as_default():
    v = tf.compat.v1.Variable([1.0])
    train = opt.minimize(tf.reduce_sum(v * 2.0), var_list=[v])
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(train)
      np.testing.assert_array_equal(sess.run(v), [-1.0])


def test_float16_underflow_rescue():
  """A float32 variable cast to float16, times two factors of 1e-4: the float16
  gradient underflows to zero without scaling and survives with 2**15."""
  v = tf.Variable(1.0)

  @tf.function
  def grad(loss_scale):
    with tf.GradientTape() as tape:
      h = tf.cast(v, tf.float16)
      loss = h * tf.constant(1e-4, tf.float16) * tf.constant(1e-4, tf.float16)
      if loss_scale is not None:
        loss = loss_scale.scale_loss(loss)
    g = tape.gradient(loss, v)
    return loss_scale.unscale_gradients(g) if loss_scale is not None else g

  assert grad(None).numpy() == 0.0
  rescued = grad(fls.FixedLossScale(2**15)).numpy()
  assert rescued == pytest.approx(1e-8, rel=2e-3)


@pytest.mark.parametrize("bad", ["abc", "8", None, [8], (8.0,), {"v": 8}, np.bool_(True),
                                 np.array([2.0, 4.0]), 8 + 0j, tf.constant(8.0)],
                         ids=lambda v: type(v).__name__)
def test_non_numbers_raise_what_tfs_class_raises_in_its_words_first(bad):
  with pytest.raises(Exception) as tf_error:
    TFFixedLossScale(bad)
  assert type(tf_error.value) is ValueError
  with pytest.raises(ValueError) as ours:
    fls.FixedLossScale(bad)
  assert isinstance(ours.value, TypeError)  # this package's type for a wrong type, too
  assert str(ours.value).startswith(str(tf_error.value))
  assert type(bad).__name__ in str(ours.value) or "shape" in str(ours.value)


def test_a_traced_tensor_raises_what_tfs_class_raises():
  errors = []
  for cls in (TFFixedLossScale, fls.FixedLossScale):
    @tf.function
    def build(x, cls=cls):
      return cls(x)

    with pytest.raises(ValueError) as error:
      build(tf.constant(8.0))
    # autograph's message: the trace, then "<class name>: <the error's words>".
    errors.append((error.value, str(error.value).strip().splitlines()[-1].split(": ", 1)[1]))
  (_, tf_words), (ours, our_words) = errors
  assert isinstance(ours, TypeError) and our_words.startswith(tf_words)
