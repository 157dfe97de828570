"""unscale_gradients on CPU: one FixedUnscaleGrads per run of consecutive
gradients of at most CPU_GROUP_BYTES (scaling.py NOTE [CPU groups]), one op for
small lists and wherever a GPU is present; the numbers are the same either way."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

pytestmark = pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")),
                                reason="with a GPU the list stays one op")

SCALE = 3.0
# float32 elements in a quarter of a group.
QUARTER = scaling.CPU_GROUP_BYTES // 4 // 4


def unscale_fn():
  return tf.function(lambda gs: scaling.unscale_gradients(gs, SCALE))


def op_count(fn, *args):
  return graph_op_types(fn.get_concrete_function(*args)).count("FixedUnscaleGrads")


def test_small_lists_stay_one_op():
  values = [np.full(100, i + 1, np.float32) for i in range(50)]
  assert op_count(unscale_fn(), [tf.constant(v) for v in values]) == 1


def test_large_lists_are_split_into_runs_of_consecutive_gradients(rng):
  # Groups: [4 quarters] [2 quarters] [5 quarters alone] [7 elements].
  sizes = [QUARTER] * 6 + [5 * QUARTER, 7]
  values = [rng.standard_normal(n).astype(np.float32) for n in sizes]
  fn = unscale_fn()
  inputs = [tf.constant(v) for v in values]
  assert op_count(fn, inputs) == 4
  for got, want in zip(fn(inputs), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_group_bytes_count_each_dtype_by_its_size(rng):
  """Four float16 tensors of a quarter group's bytes each fill one group; a
  float64 tensor of a quarter group's bytes starts the next."""
  half_values = [rng.standard_normal(2 * QUARTER).astype(np.float16) for _ in range(4)]
  double_value = rng.standard_normal(QUARTER // 2)  # an eighth of a group
  fn = unscale_fn()
  inputs = [tf.constant(v) for v in half_values] + [tf.constant(double_value)]
  assert op_count(fn, inputs) == 2
  for got, want in zip(fn(inputs), half_values + [double_value]):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_none_and_indexed_slices_keep_their_places_across_groups(rng):
  dense = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(3)]
  slice_values = rng.standard_normal((2, 4)).astype(np.float32)

  @tf.function
  def f():
    slices = tf.IndexedSlices(tf.constant(slice_values), tf.constant([0, 3]),
                              tf.constant([5, 4]))
    grads = {"a": tf.constant(dense[0]), "b": None, "c": [slices, tf.constant(dense[1])],
             "d": tf.constant(dense[2])}
    out = scaling.unscale_gradients(grads, SCALE)
    assert out["b"] is None and isinstance(out["c"][0], tf.IndexedSlices)
    return out["a"], out["c"][0].values, out["c"][0].indices, out["c"][1], out["d"]

  assert op_count(f) == 3
  a, values, indices, c1, d = f()
  for got, want in ((a, dense[0]), (values, slice_values), (c1, dense[1]), (d, dense[2])):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))
  np.testing.assert_array_equal(indices.numpy(), [0, 3])


def test_gradients_of_unknown_size_are_a_group_of_their_own(rng):
  values = [rng.standard_normal(n).astype(np.float32) for n in (10, 20, 30)]
  fn = tf.function(lambda a, b, c: scaling.unscale_gradients([a, b, c], SCALE),
                   input_signature=[tf.TensorSpec([10]), tf.TensorSpec([None]),
                                    tf.TensorSpec([30])])
  assert op_count(fn) == 3
  for got, want in zip(fn(*values), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_with_a_gpu_the_whole_list_is_one_op(monkeypatch, rng):
  """The GPU rule, checked by pretending a GPU is visible (the kernels placed
  on CPU here are the same op)."""
  real = tf.config.list_logical_devices
  monkeypatch.setattr(tf.config, "list_logical_devices",
                      lambda kind=None: [object()] if kind == "GPU" else real(kind))
  values = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(4)]
  assert len(scaling.unscale_groups([tf.constant(v) for v in values])) == 1
  fn = unscale_fn()
  assert op_count(fn, [tf.constant(v) for v in values]) == 1


def test_the_raw_op_wrapper_is_always_one_op(rng):
  values = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(4)]
  fn = tf.function(lambda gs: ops.fixed_unscale_grads(gs, SCALE))
  assert op_count(fn, [tf.constant(v) for v in values]) == 1
