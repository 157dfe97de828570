"""FixedScaleLoss and FixedUnscaleGrads numerics against numpy and TF's own arithmetic."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import ALL_DTYPES
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import random_values
from conftest import reference_scale
from conftest import reference_unscale
from fixed_loss_scale import ops

SCALES = [1.0, 2.0, 1024.0, 2.0**15, 2.0**24, 3.0, 1000.0, 12345.678, 1.0 + 2.0**-20]


def run_in_graph(fn, *args):
  """Runs fn inside a tf.function, where the custom ops are emitted."""
  return tf.function(fn)(*args)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("scale", SCALES)
def test_unscale_matches_numpy_bit_for_bit(dtype, scale, rng):
  values = [random_values(rng, shape, NP_DTYPES[dtype]) for shape in [(7,), (3, 5), (), (1000,)]]
  out = ops.fixed_unscale_grads([tf.constant(v) for v in values], scale)
  for v, o in zip(values, out):
    assert o.dtype == dtype
    assert_bitwise_equal(o.numpy(), reference_unscale(v, scale))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("scale", SCALES)
def test_scale_loss_matches_numpy_bit_for_bit(dtype, scale, rng):
  loss = random_values(rng, (4, 3), NP_DTYPES[dtype])
  out = run_in_graph(lambda x: ops.fixed_scale_loss(x, scale), tf.constant(loss))
  assert out.dtype == dtype
  assert_bitwise_equal(out.numpy(), reference_scale(loss, scale))


@pytest.mark.parametrize("scale", SCALES)
def test_float32_unscale_is_bit_identical_to_tf_reciprocal_multiply(scale, rng):
  """TF's compat optimizer computes grad * (1 / loss_scale) with a float32 loss scale."""
  grads = [tf.constant(random_values(rng, (257,), np.float32)) for _ in range(5)]

  @tf.function
  def both(gs):
    reciprocal = 1 / tf.constant(scale, tf.float32)
    return ops.fixed_unscale_grads(gs, scale), [g * reciprocal for g in gs]

  ours, tfs = both(grads)
  for a, b in zip(ours, tfs):
    assert_bitwise_equal(a.numpy(), b.numpy())


def test_mixed_dtype_list_in_one_op(rng):
  dtypes = [tf.float16, tf.float32, tf.bfloat16, tf.float64, tf.float16, tf.float32]
  values = [random_values(rng, (n,), NP_DTYPES[d]) for n, d in zip([3, 100, 17, 5, 0, 4096], dtypes)]

  @tf.function
  def unscale(gs):
    return ops.fixed_unscale_grads(gs, 3.0)

  grads = [tf.constant(v) for v in values]
  out = unscale(grads)
  for v, o, d in zip(values, out, dtypes):
    assert o.dtype == d
    assert_bitwise_equal(o.numpy(), reference_unscale(v, 3.0))
  op_types = [op.type for op in unscale.get_concrete_function(grads).graph.get_operations()]
  assert op_types.count("FixedUnscaleGrads") == 1
  assert "Mul" not in op_types and "Cast" not in op_types


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_zero_sized_and_scalar_tensors(dtype):
  np_dtype = NP_DTYPES[dtype]
  values = [np.zeros((0,), np_dtype), np.zeros((3, 0, 2), np_dtype), np.array(6, np_dtype)]
  out = run_in_graph(lambda gs: ops.fixed_unscale_grads(gs, 2.0), [tf.constant(v) for v in values])
  for v, o in zip(values, out):
    assert o.shape == v.shape and o.dtype == dtype
    assert_bitwise_equal(o.numpy(), reference_unscale(v, 2.0))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_nan_and_inf_pass_through(dtype):
  np_dtype = NP_DTYPES[dtype]
  v = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np_dtype)
  unscaled = ops.fixed_unscale_grads([tf.constant(v)], 8.0)[0].numpy()
  assert_bitwise_equal(unscaled, reference_unscale(v, 8.0))
  scaled = ops.fixed_scale_loss(tf.constant(v), 8.0).numpy()
  assert_bitwise_equal(scaled, reference_scale(v, 8.0))


def test_float16_overflow_and_rounding_edges():
  """Values that overflow float16 when scaled, and ties that round to even."""
  v = np.array([65504, 60000, 2049, 2051, 1e-7, 6e-8, -65504], np.float16)
  scaled = ops.fixed_scale_loss(tf.constant(v), 2.0).numpy()
  assert_bitwise_equal(scaled, reference_scale(v, 2.0))
  assert np.isinf(scaled[0]) and np.isinf(scaled[1])
  odd_scale = ops.fixed_scale_loss(tf.constant(v), 3.0).numpy()
  assert_bitwise_equal(odd_scale, reference_scale(v, 3.0))


def test_all_float16_and_bfloat16_bit_patterns():
  """Every 16-bit pattern, scaled and unscaled by awkward factors."""
  bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  for np_dtype in (np.float16, NP_DTYPES[tf.bfloat16]):
    x = bits.view(np_dtype)
    for scale in (3.0, 2.0**15, 1.5):
      assert_bitwise_equal(ops.fixed_unscale_grads([tf.constant(x)], scale)[0].numpy(),
                           reference_unscale(x, scale))
      assert_bitwise_equal(ops.fixed_scale_loss(tf.constant(x), scale).numpy(),
                           reference_scale(x, scale))


def test_large_tensor_is_split_across_threads_correctly(rng):
  """Big enough for several shards; sizes not multiples of anything."""
  values = [random_values(rng, (n,), np.float32) for n in (3_000_001, 17, 1_234_567)]
  values.append(random_values(rng, (2_000_003,), np.float16))
  out = ops.fixed_unscale_grads([tf.constant(v) for v in values], 7.0)
  for v, o in zip(values, out):
    assert_bitwise_equal(o.numpy(), reference_unscale(v, 7.0))


def test_empty_list_needs_no_op():
  assert ops.fixed_unscale_grads([], 4.0) == []


def test_shape_functions_pass_shapes_through():
  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec(None, tf.float16)])
  def unscale(a, b):
    out = ops.fixed_unscale_grads([a, b], 2.0)
    assert out[0].shape.as_list() == [None, 3]
    assert out[1].shape.rank is None
    scaled = ops.fixed_scale_loss(a, 2.0)
    assert scaled.shape.as_list() == [None, 3]
    return out

  out = unscale(tf.ones([2, 3]), tf.ones([4, 1, 2], tf.float16))
  assert out[0].shape == (2, 3) and out[1].shape == (4, 1, 2)


@pytest.mark.parametrize("bad", [0.0, 0.5, -2.0, float("nan"), float("inf")])
def test_raw_op_rejects_bad_loss_scale(bad):
  from fixed_loss_scale import _loader
  raw = _loader.load_ops()
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="loss_scale"):
    raw.fixed_unscale_grads([tf.ones([2])], loss_scale=bad)
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="loss_scale"):
    tf.function(lambda x: raw.fixed_scale_loss(x, loss_scale=bad))(tf.ones([2]))


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [2.0, 3.0, 7.0, 1000.0, 32768.0])
def test_flush_to_zero_boundary(np_dtype, scale, rng):
  """Around the smallest normal, where x86 flushes tiny results *after* rounding."""
  tiny = np.finfo(np_dtype).tiny
  edges = np.array([tiny * k for k in (1, 2, 3, 4, 8, 1024, 32768)], np_dtype)
  values = np.concatenate([
      edges, np.nextafter(edges, np_dtype(0)), np.nextafter(edges, np_dtype(1)),
      (tiny * np.exp2(rng.uniform(0, 16, 4000)) * rng.choice([-1, 1], 4000)).astype(np_dtype)])
  expected = reference_unscale(values, scale)
  assert_bitwise_equal(ops.fixed_unscale_grads([tf.constant(values)], scale)[0].numpy(), expected)
  in_graph = run_in_graph(lambda g: ops.fixed_unscale_grads([g], scale), tf.constant(values))
  assert_bitwise_equal(in_graph[0].numpy(), expected)


# ---- FixedUnscaleGradsAndCheck: the same numbers as FixedUnscaleGrads --------------


def _fused(grads, scale):
  return ops.fixed_unscale_grads_and_check(grads, scale)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("scale", SCALES)
def test_fused_unscale_matches_numpy_bit_for_bit(dtype, scale, rng):
  values = [random_values(rng, shape, NP_DTYPES[dtype]) for shape in [(7,), (3, 5), (), (1000,)]]
  for as_tensor in (False, True):
    loss_scale = tf.constant(scale, tf.float32) if as_tensor else scale
    out, flag, _ = run_in_graph(lambda gs: _fused(gs, loss_scale), [tf.constant(v) for v in values])
    assert bool(flag.numpy())
    for v, o in zip(values, out):
      assert o.dtype == dtype
      assert_bitwise_equal(o.numpy(), reference_unscale(v, scale))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_fused_nan_and_inf_pass_through_and_clear_the_flag(dtype):
  np_dtype = NP_DTYPES[dtype]
  v = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np_dtype)
  out, flag, _ = _fused([tf.constant(v)], 8.0)
  assert_bitwise_equal(out[0].numpy(), reference_unscale(v, 8.0))
  assert not flag.numpy()


def test_fused_all_float16_and_bfloat16_bit_patterns():
  bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
  for np_dtype in (np.float16, NP_DTYPES[tf.bfloat16]):
    x = bits.view(np_dtype)
    finite = x[np.isfinite(x.astype(np.float32))]
    for scale in (3.0, 2.0**15, 1.5):
      out, flag, _ = _fused([tf.constant(x)], scale)
      assert_bitwise_equal(out[0].numpy(), reference_unscale(x, scale))
      assert not flag.numpy()
      out, flag, _ = _fused([tf.constant(finite)], scale)
      assert_bitwise_equal(out[0].numpy(), reference_unscale(finite, scale))
      assert flag.numpy()


@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_fused_flush_to_zero_boundary(np_dtype, rng):
  tiny = np.finfo(np_dtype).tiny
  values = (tiny * np.exp2(rng.uniform(0, 16, 4000)) * rng.choice([-1, 1], 4000)).astype(np_dtype)
  for scale in (3.0, 32768.0):
    out, flag, _ = run_in_graph(lambda g: _fused([g], scale), tf.constant(values))
    assert_bitwise_equal(out[0].numpy(), reference_unscale(values, scale))
    assert flag.numpy()
