"""FixedCheckGrads (the check without writes) and FixedUnscaleGradsByTensor
(the unscale by a tensor scale, without the check), through TensorFlow.

References: FixedUnscaleGradsAndCheck's flag and sum (bit for bit) and its
unscaled outputs, FixedUnscaleGrads, the numpy oracle of conftest.py, numpy's
isfinite and float64 sum of squares. The CPU loops themselves, path by path:
tests/test_check_grads_cpu.py. Bad inputs are rejected with messages naming
the op, the argument and the value, eagerly, in tf.function and in TF1 graphs.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import conftest
from conftest import ALL_DTYPES
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import random_values
from conftest import reference_unscale
from fixed_loss_scale import _loader
from fixed_loss_scale import ops
from test_bad_input import BAD_DTYPES
from test_bad_input import BAD_SCALES
from test_bad_input import MODES
from test_bad_input import bad_tensor
from test_bad_input import cpp_float_string

RAW = _loader.load_ops()
CHECK = "FixedCheckGrads"
BY_TENSOR = "FixedUnscaleGradsByTensor"
# Tensor scales (NOTE [tensor loss scale range]): in [1, 2**126], below 1
# (finite gradients can overflow) and above 2**126 (float32 factor flushed).
SCALES = [1.0, 3.0, 1000.5, 2.0**126, 0.5, 2.0**-30, 2.0**127]
# The bytes above which the kernel shards a list over threads (NOTE [shard plan]).
MIN_SHARDED_BYTES = _loader.c_api().fls_min_sharded_bytes()


def tensor_reference(x, scale):
  """numpy oracle of a tensor scale's unscale (NOTE [tensor loss scale range]):
  reference_unscale's, the float32 factor flushed to 0 when subnormal."""
  factor32 = np.float32(1) / np.float32(scale)
  factor32 = np.float32(0) if factor32 < np.finfo(np.float32).tiny else factor32
  return conftest._compute_in(x, factor32, 1.0 / np.float64(np.float32(scale)))


def _bits(value):
  return np.asarray(value).tobytes()


def mixed_list(rng, sizes):
  dtypes = [ALL_DTYPES[i % len(ALL_DTYPES)] for i in range(len(sizes))]
  return [random_values(rng, (n,), NP_DTYPES[d]) for n, d in zip(sizes, dtypes)]


@tf.function
def _check_and_fused(grads, scale, with_squares):
  flag, total = ops.fixed_check_grads(grads, scale, sum_of_squares=with_squares)
  unscaled, fused_flag, fused_total = ops.fixed_unscale_grads_and_check(
      grads, scale, sum_of_squares=with_squares)
  by_tensor = ops.fixed_unscale_grads_by_tensor(grads, scale)
  return flag, total, fused_flag, fused_total, unscaled, by_tensor


def assert_same_as_fused(grads, scale, with_squares=True):
  """FixedCheckGrads' flag and sum are FixedUnscaleGradsAndCheck's bit for
  bit, FixedUnscaleGradsByTensor's outputs its unscaled outputs; returns
  (flag, sum, unscaled) as numpy."""
  flag, total, fused_flag, fused_total, unscaled, by_tensor = _check_and_fused(
      [tf.constant(g) for g in grads], tf.constant(np.float32(scale)), with_squares)
  assert bool(flag) == bool(fused_flag)
  assert _bits(total.numpy()) == _bits(fused_total.numpy()), (total, fused_total)
  for u, b in zip(unscaled, by_tensor):
    assert_bitwise_equal(b.numpy(), u.numpy())
  return bool(flag), total.numpy(), [u.numpy() for u in unscaled]


@pytest.mark.parametrize("scale", SCALES)
def test_flag_and_sum_are_the_fused_ops(scale, rng):
  """Mixed dtypes, sizes around the SIMD widths and tails, a list long enough
  to be sharded over threads; the flag is numpy's finiteness of the unscaled
  values, the sum close to numpy's, the unscaled values the oracle's."""
  values = mixed_list(rng, [1, 7, 33, 257, 0, 4099, 3, 1000, MIN_SHARDED_BYTES // 3 + 5])
  with np.errstate(over="ignore", invalid="ignore"):
    flag, total, unscaled = assert_same_as_fused(values, scale)
    expected = [tensor_reference(v, scale) for v in values]
    assert flag == all(np.all(np.isfinite(e.astype(np.float64))) for e in expected)
    for u, e in zip(unscaled, expected):
      assert_bitwise_equal(u, e)
    if flag:
      exact = sum(float(np.sum(np.square(e.astype(np.float64)))) for e in expected)
      np.testing.assert_allclose(total, np.float32(exact), rtol=(256 + 2) * 2.0**-24,
                                 atol=sum(v.size for v in values) * 2.0**-126)


@pytest.mark.parametrize("kind", [np.inf, -np.inf, np.nan])
def test_one_non_finite_value_at_shard_edges_and_tails(kind, rng):
  """A list sharded over threads (several shards), one non-finite value at the
  first and last element of each tensor, around byte offsets where shards
  begin, and in the middle: false, as the fused op says, with and without the
  sum; the same list finite again: true."""
  sizes = [MIN_SHARDED_BYTES // 4 + 13, 31, MIN_SHARDED_BYTES // 2 + 1, 5]
  values = [random_values(rng, (n,), np.float32) for n in sizes]
  flat = np.concatenate(values)
  positions = {0, flat.size - 1, flat.size // 2}
  for shard_edge in range(1, 8):  # elements near k * 256 KiB
    positions |= {shard_edge * (MIN_SHARDED_BYTES // 8) + d for d in (-1, 0, 1)}
  offsets = np.cumsum([0] + sizes)
  for t in range(len(sizes)):
    positions |= {int(offsets[t]), int(offsets[t + 1]) - 1}
  assert assert_same_as_fused(values, 3.0)[0]
  for position in sorted(p for p in positions if 0 <= p < flat.size):
    t = int(np.searchsorted(offsets, position, side="right")) - 1
    bad = [v.copy() for v in values]
    bad[t][position - offsets[t]] = kind
    for with_squares in (False, True):
      flag, total, _ = assert_same_as_fused(bad, 3.0, with_squares)
      assert not flag, f"{kind} at {position} not flagged"
      assert not np.isfinite(total)


def test_inputs_are_read_and_nothing_is_written(rng):
  """The grads keep their values (a fresh buffer the check alone reads would be
  forwarded by an op that writes), and the check has no gradient outputs."""
  values = [random_values(rng, (n,), np.float32) for n in (5, 300)]

  @tf.function
  def run(grads):
    fresh = [tf.gather(g, tf.range(tf.size(g))) for g in grads]
    flag, total = ops.fixed_check_grads(fresh, tf.constant(0.5), sum_of_squares=True)
    with tf.control_dependencies([flag, total]):
      return [tf.identity(f) for f in fresh], flag

  after, flag = run([tf.constant(v) for v in values])
  assert bool(flag)
  for a, v in zip(after, values):
    assert_bitwise_equal(a.numpy(), v)
  op = RAW.fixed_check_grads([tf.ones([2])], tf.constant(2.0))
  assert len(op) == 2


@pytest.mark.parametrize("mode", MODES)
def test_empty_list_and_empty_tensors(mode):
  """No grads, or only empty ones: true, 0 with the sum, the quiet NaN
  0x7fc00000 without it; the unscale returns an empty list or empty tensors."""
  def build():
    empty = [tf.zeros([0], tf.float16), tf.zeros([3, 0])]
    return (ops.fixed_check_grads([], 4.0), ops.fixed_check_grads(empty, 4.0, True),
            ops.fixed_unscale_grads_by_tensor(empty, 4.0))

  (flag, nan), (flag2, zero), unscaled = MODES[mode](build)
  assert bool(flag) and bool(flag2)
  assert int(np.asarray(nan, np.float32).view(np.uint32)) == 0x7FC00000
  assert float(zero) == 0.0
  assert [np.asarray(u).shape for u in unscaled] == [(0,), (3, 0)]
  assert ops.fixed_unscale_grads_by_tensor([], 4.0) == []


def test_shape_functions():
  @tf.function(input_signature=[tf.TensorSpec(None, tf.float16),
                                tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([], tf.float32)])
  def shapes(a, b, scale):
    flag, total = ops.fixed_check_grads([a, b], scale, sum_of_squares=True)
    assert flag.shape.as_list() == [] and total.shape.as_list() == []
    assert flag.dtype == tf.bool and total.dtype == tf.float32
    ua, ub = ops.fixed_unscale_grads_by_tensor([a, b], scale)
    assert ua.shape.rank is None and ub.shape.as_list() == [None, 3] and ua.dtype == tf.float16
    return flag

  assert bool(shapes(tf.ones([2, 2], tf.float16), tf.ones([4, 3]), tf.constant(2.0)))


def test_variable_scale_changes_between_calls_of_one_function(rng):
  values = mixed_list(rng, [9, 300, 5, 70])
  scale = tf.Variable(2.0)
  run = tf.function(lambda grads: (ops.fixed_check_grads(grads, scale, sum_of_squares=True),
                                   ops.fixed_unscale_grads_by_tensor(grads, scale)))
  grads = [tf.constant(v) for v in values]
  for value in [2.0, 1000.5, 1.0, 2.0**126, 3.0]:
    scale.assign(value)
    (flag, _), unscaled = run(grads)
    assert bool(flag)
    for u, v in zip(unscaled, values):
      assert_bitwise_equal(u.numpy(), reference_unscale(v, value))
  assert run.experimental_get_tracing_count() == 1


# ---- gradients ------------------------------------------------------------------------


def test_check_has_no_gradient():
  """NOTE [no gradient for the check] (ops.py): LookupError, not a silent 0."""
  x = tf.Variable([1.0, 2.0])
  with tf.GradientTape() as tape:
    _, total = ops.fixed_check_grads([x * 1.0], 2.0, sum_of_squares=True)
  with pytest.raises(LookupError, match=CHECK):
    tape.gradient(total, x)


def test_unscale_by_tensor_gradient_is_the_unscaled_upstream():
  x = tf.Variable([1.0, -2.0, 3.0])
  h = tf.Variable(np.array([4.0, 8.0], np.float16))
  scale = tf.Variable(4.0)
  with tf.GradientTape() as tape:
    ux, uh = ops.fixed_unscale_grads_by_tensor([x * 1.0, h * 1], scale)
    loss = tf.reduce_sum(ux * [1.0, 2.0, 3.0]) + tf.reduce_sum(tf.cast(uh, tf.float32))
  gx, gh, gs = tape.gradient(loss, [x, h, scale])
  assert_bitwise_equal(gx.numpy(), np.array([0.25, 0.5, 0.75], np.float32))
  assert_bitwise_equal(gh.numpy(), np.array([0.25, 0.25], np.float16))
  assert gs is None


# ---- bad inputs -----------------------------------------------------------------------

CALLERS = {
    "ops.fixed_check_grads": (lambda grads, s: ops.fixed_check_grads(grads, s), CHECK),
    "ops.fixed_unscale_grads_by_tensor": (ops.fixed_unscale_grads_by_tensor, BY_TENSOR),
}
RAW_CALLERS = {
    CHECK: lambda grads, s: RAW.fixed_check_grads(grads, s).all_finite,
    BY_TENSOR: lambda grads, s: RAW.fixed_unscale_grads_by_tensor(grads, s)[0],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: d.name)
def test_non_float_dtypes_rejected_naming_op_argument_and_dtype(dtype, caller, mode):
  fn, op = CALLERS[caller]
  with pytest.raises(TypeError) as info:
    MODES[mode](lambda: fn([tf.ones([3]), bad_tensor(dtype)], 8.0))
  assert f"{op}: grads[1] has dtype {dtype.name}" in str(info.value)


@pytest.mark.parametrize("caller", CALLERS)
def test_bad_scale_types_and_shapes_rejected_by_the_wrappers(caller):
  fn, op = CALLERS[caller]
  x = [tf.ones([3])]
  with pytest.raises(TypeError, match=f"{op}: loss_scale must be .* float32 scalar tensor, got a "
                                      "float64 tensor"):
    fn(x, tf.constant(8.0, tf.float64))
  with pytest.raises(ValueError, match=rf"{op}: loss_scale must be a scalar, got a tensor of "
                                       r"shape \(2,\)"):
    fn(x, tf.constant([8.0, 2.0]))
  with pytest.raises(ValueError, match=f"{op}: loss_scale must be at least 1, got 0.5"):
    fn(x, 0.5)  # a Python number is a fixed scale
  with pytest.raises(TypeError, match=f"{op}: grads.0. is a SparseTensor"):
    fn([tf.sparse.from_dense([1.0, 0.0])], 8.0)
  with pytest.raises(TypeError, match=f"{CHECK}: sum_of_squares must be True or False, got int"):
    ops.fixed_check_grads(x, 8.0, sum_of_squares=1)


BAD_TENSOR_SCALES = [b for b in BAD_SCALES
                     if not (math.isfinite(b) and np.float32(b) >= np.finfo(np.float32).tiny)]
BAD_TENSOR_SCALES += [1e-40, float(np.finfo(np.float32).tiny) / 2]


@pytest.mark.parametrize("op", RAW_CALLERS)
@pytest.mark.parametrize("bad", BAD_TENSOR_SCALES)
def test_bad_tensor_scale_values(op, bad):
  """Eagerly and from a variable in tf.function: the kernel's InvalidArgument;
  a constant in a graph: the shape function's, naming the node."""
  fn = RAW_CALLERS[op]
  message = f"{op}: loss_scale must be a positive, finite, normal float32 (>= 2^-126), got "
  variable = tf.Variable(np.float32(bad))
  for run in (lambda: fn([tf.ones([3])], tf.constant(np.array(bad, np.float32))),
              tf.function(lambda: fn([tf.ones([3])], variable))):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
      run()
    assert message + cpp_float_string(bad) in str(info.value), str(info.value)
  with tf.Graph().as_default():
    with pytest.raises(ValueError) as info:
      fn([tf.ones([3])], tf.constant(np.float32(bad)))
  assert message + cpp_float_string(bad) in str(info.value)
  assert f"= {op}[" in str(info.value)


@pytest.mark.parametrize("op", RAW_CALLERS)
def test_non_scalar_scale_rejected_by_the_raw_ops(op):
  fn = RAW_CALLERS[op]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=rf"{op}: loss_scale must be a scalar, got shape \[2\]"):
    fn([tf.ones([3])], tf.constant([2.0, 4.0]))
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match=rf"{op}: loss_scale must be a scalar, got shape \[2\]"):
      fn([tf.ones([3])], tf.constant([2.0, 4.0]))
