"""FixedUnscaleGradsAndCheck: unscale and check a gradient list in one op.

Independent references: the numpy oracle of conftest.py and FixedUnscaleGrads
for the unscaled values, numpy's isfinite and TF's reduce_all(is_finite) for
the flag, a numpy float64 sum for the sum of squares, and the derivative
written out for the gradient. The seam that emits the op (scaling.
unscale_and_check): tests/test_fused_seam.py.
"""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from conftest import ALL_DTYPES
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import random_values
from conftest import reference_unscale
from fixed_loss_scale import _loader
from fixed_loss_scale import finite
from fixed_loss_scale import ops

RAW = _loader.load_ops()
OP = "FixedUnscaleGradsAndCheck"
v1 = tf.compat.v1
SCALES = [1.0, 2.0, 1000.5, 2.0**15, 12345.678, 2.0**126]
QUIET_NAN_BITS = 0x7FC00000

# The bound of NOTE [sum of squares] in tf_ops/core/cpu/scale_loop.h, not a
# guess from a few runs: float32 accumulators of at most B = 256 squares, their
# partial sums added in float64, the total rounded once, give a relative error
# of at most (B + 2) * 2**-24 ~= 1.5e-5 (the squares here are far above
# float32's subnormal range, so the absolute term of that NOTE is 0). Sums whose
# float32 accumulation is exact are compared exactly below.
SUM_RTOL = (256 + 2) * 2.0**-24


def _fused(grads, scale, sum_of_squares=False):
  return ops.fixed_unscale_grads_and_check(grads, scale, sum_of_squares=sum_of_squares)


def _in_graph(fn, *args):
  return tf.function(fn)(*args)


def mixed_list(rng, sizes):
  dtypes = [ALL_DTYPES[i % len(ALL_DTYPES)] for i in range(len(sizes))]
  return [random_values(rng, (n,), NP_DTYPES[d]) for n, d in zip(sizes, dtypes)]


def _numpy_sum_of_squares(arrays):
  return float(sum(np.sum(np.square(a.astype(np.float64))) for a in arrays))


def _assert_sum_close(actual, arrays):
  """`actual` against the float64 sum of squares of `arrays` rounded to
  float32: SUM_RTOL, plus 2**-126 per element (a square below float32's normal
  range is flushed to 0, NOTE [sum of squares])."""
  count = sum(a.size for a in arrays)
  expected = np.float32(_numpy_sum_of_squares(arrays))
  np.testing.assert_allclose(actual, expected, rtol=SUM_RTOL, atol=count * 2.0**-126)


def _float_bits(value):
  return int(np.asarray(value, np.float32).view(np.uint32))


# ---- the unscaled values: FixedUnscaleGrads bit for bit --------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("in_place", [False, True], ids=["allocated", "in_place"])
def test_unscaled_values_are_fixed_unscale_grads_bit_for_bit(scale, in_place, rng):
  """Mixed dtypes in one op; inputs that are the function's arguments (outputs
  allocated) or fresh buffers made inside it that the op alone reads
  (forwarded: NOTE [direct forwarding])."""
  values = mixed_list(rng, [1, 7, 33, 257, 0, 4099, 3, 1000])

  def fresh(grads):  # a new buffer per gradient, owned by nothing else
    return [tf.gather(g, tf.range(tf.size(g))) for g in grads]

  @tf.function
  def both(grads):
    reference = RAW.fixed_unscale_grads(fresh(grads) if in_place else list(grads),
                                        loss_scale=scale)
    fused, flag, squares = _fused(fresh(grads) if in_place else grads, scale,
                                  sum_of_squares=True)
    return reference, fused, flag, squares

  reference, fused, flag, _ = both([tf.constant(v) for v in values])
  assert bool(flag.numpy())
  for v, r, f in zip(values, reference, fused):
    assert f.dtype == r.dtype
    assert_bitwise_equal(f.numpy(), r.numpy())
    assert_bitwise_equal(f.numpy(), reference_unscale(v, scale))


def test_inputs_read_elsewhere_are_not_overwritten():
  """A gradient another op still reads, and a variable's buffer, keep their
  values: the op allocates their outputs (as test_forwarding.py checks for
  FixedUnscaleGrads)."""
  v = tf.Variable(np.arange(1, 9, dtype=np.float32))

  @tf.function
  def f(x):
    g = tf.nn.relu(v * x)
    unscaled, flag, _ = _fused([g, v.read_value(), g], tf.constant(4.0))
    return unscaled, flag, g + 0.0

  unscaled, flag, g_after = f(tf.constant(2.0))
  g = np.arange(1, 9, dtype=np.float32) * 2
  np.testing.assert_array_equal(g_after.numpy(), g)
  np.testing.assert_array_equal(v.numpy(), np.arange(1, 9, dtype=np.float32))
  assert_bitwise_equal(unscaled[0].numpy(), g / 4)
  assert_bitwise_equal(unscaled[2].numpy(), g / 4)
  assert bool(flag.numpy())


def test_eager_op_and_tensor_scale(rng):
  values = mixed_list(rng, [5, 64, 9, 300])
  for scale in (3.0, tf.constant(3.0), tf.Variable(3.0)):
    out, flag, squares = _fused([tf.constant(v) for v in values], scale)
    assert flag.dtype == tf.bool and flag.shape == () and bool(flag.numpy())
    assert squares.dtype == tf.float32 and squares.shape == ()
    for v, o in zip(values, out):
      assert_bitwise_equal(o.numpy(), reference_unscale(v, 3.0))


def test_two_thousand_small_tensors_in_one_op(rng):
  values = mixed_list(rng, [int(n) for n in rng.integers(0, 40, size=2000)])

  @tf.function
  def run(grads):
    return _fused(grads, 1024.0, sum_of_squares=True)

  grads = [tf.constant(v) for v in values]
  out, flag, squares = run(grads)
  assert graph_op_types(run.get_concrete_function(grads)).count(OP) == 1
  unscaled = [reference_unscale(v, 1024.0) for v in values]
  for u, o in zip(unscaled, out):
    assert_bitwise_equal(o.numpy(), u)
  assert bool(flag.numpy())
  _assert_sum_close(squares.numpy(), unscaled)
  last = max(i for i, v in enumerate(values) if v.size)
  values[last][-1] = np.nan
  assert not run([tf.constant(v) for v in values])[1].numpy()


def test_large_tensors_split_across_threads(rng):
  """Well above the sharding threshold (fls_min_sharded_bytes): the byte space
  is split into shards that end inside tensors, and every shard's check counts."""
  min_sharded = int(_loader.c_api().fls_min_sharded_bytes())
  sizes = [min_sharded // 2 + 3, 3 * min_sharded + 1, min_sharded // 4 + 7, 2 * min_sharded + 5]
  values = [random_values(rng, (n,), NP_DTYPES[d])
            for n, d in zip(sizes, [tf.float32, tf.float16, tf.float64, tf.bfloat16])]
  unscaled_reference = [reference_unscale(v, 2.0**15) for v in values]
  run = tf.function(lambda gs: _fused(gs, 2.0**15, sum_of_squares=True))
  out, flag, squares = run([tf.constant(v) for v in values])
  assert bool(flag.numpy())
  for o, r in zip(out, unscaled_reference):
    assert_bitwise_equal(o.numpy(), r)
  _assert_sum_close(squares.numpy(), unscaled_reference)
  # Deterministic: the same shards, combined in the same order.
  again = run([tf.constant(v) for v in values])[2]
  assert _float_bits(again.numpy()) == _float_bits(squares.numpy())
  # A single inf in the last shard, in the middle, in the first.
  for tensor, index in [(1, sizes[1] - 1), (3, sizes[3] // 2), (0, 0)]:
    poisoned = [v.copy() for v in values]
    poisoned[tensor][index] = np.inf
    _, flag, squares = run([tf.constant(v) for v in poisoned])
    assert not flag.numpy(), (tensor, index)
    assert np.isinf(squares.numpy())


# ---- the flag ---------------------------------------------------------------------


def _special_finite_values(np_dtype):
  info = ml_dtypes.finfo(np_dtype)
  values = [info.smallest_subnormal, info.tiny, info.max]
  return [np_dtype(v) for v in values] + [np_dtype(-v) for v in values]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("poison", [None, np.inf, -np.inf, np.nan])
def test_flag_flips_on_inf_or_nan_at_random_positions(dtype, poison, rng):
  np_dtype = NP_DTYPES[dtype]
  run = tf.function(lambda gs, s: _fused(gs, s), reduce_retracing=True)
  tf_check = tf.function(lambda gs: finite.is_all_finite(gs), reduce_retracing=True)
  for size in [1, 8, 17, 33, 257, 4099, 70000]:
    values = [random_values(rng, (size,), np_dtype), random_values(rng, (13,), np.float32)]
    for special in _special_finite_values(np_dtype):  # they must not flip the flag
      values[0][rng.integers(size)] = special
    if poison is not None:
      values[0][rng.integers(size)] = poison
    grads = [tf.constant(v) for v in values]
    for scale in (1.0, 2.0**126):
      _, flag = run(grads, tf.constant(scale))[:2]
      expected = poison is None
      assert bool(flag.numpy()) is expected, (size, scale)
      assert bool(tf_check(grads).numpy()) is expected


def test_extreme_finite_values_stay_finite_at_every_scale():
  values = [np.array(_special_finite_values(NP_DTYPES[d])) for d in ALL_DTYPES]
  for scale in SCALES:
    out, flag, _ = _in_graph(lambda gs: _fused(gs, scale), [tf.constant(v) for v in values])
    assert bool(flag.numpy()), scale
    for v, o in zip(values, out):
      assert_bitwise_equal(o.numpy(), reference_unscale(v, scale))


# ---- the sum of squares -------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1000.5, 2.0**15])
def test_sum_of_squares_against_numpy(scale, rng):
  values = mixed_list(rng, [1, 31, 4099, 100003, 7, 20000])
  out, flag, squares = _in_graph(lambda gs: _fused(gs, scale, sum_of_squares=True),
                                 [tf.constant(v) for v in values])
  assert bool(flag.numpy())
  unscaled = [o.numpy() for o in out]
  _assert_sum_close(squares.numpy(), unscaled)
  # TF's own squared global norm (float32 inputs only: TF's needs one dtype).
  float32s = [tf.constant(u) for u in unscaled if u.dtype == np.float32]
  tf_norm = tf.linalg.global_norm(float32s).numpy() ** 2
  only32 = _in_graph(lambda gs: _fused(gs, 1.0, sum_of_squares=True), float32s)[2]
  np.testing.assert_allclose(only32.numpy(), tf_norm, rtol=SUM_RTOL)


def test_sum_of_squares_is_exact_when_every_partial_sum_is():
  """0.25**2 = 2**-4: float32 accumulators of a few thousand such terms, and
  every sum of them, are exact, so the result is exact whatever the blocks."""
  values = [np.full(1_000_003, 0.25, np.float32), np.full(4097, -0.25, np.float16),
            np.full(3, 0.25, np.float64), np.full(65, 0.25, ml_dtypes.bfloat16)]
  _, _, squares = _in_graph(lambda gs: _fused(gs, 1.0, sum_of_squares=True),
                            [tf.constant(v) for v in values])
  assert squares.numpy() == np.float32(sum(v.size for v in values) / 16)


def test_sum_of_squares_overflow_and_non_finite_values():
  big = np.full(4, 1e30, np.float32)  # finite values whose squares overflow float32
  _, flag, squares = _in_graph(lambda gs: _fused(gs, 1.0, sum_of_squares=True), [tf.constant(big)])
  assert bool(flag.numpy()) and np.isinf(squares.numpy())
  # float64 values square in float64: 1e30**2 is a float64, summed and rounded to inf.
  _, flag, squares = _fused([tf.constant(big.astype(np.float64))], 1.0, sum_of_squares=True)
  assert bool(flag.numpy()) and np.isinf(squares.numpy())
  for bad in (np.inf, np.nan):
    _, flag, squares = _fused([tf.constant([1.0, bad], tf.float16)], 2.0, sum_of_squares=True)
    assert not flag.numpy() and not np.isfinite(squares.numpy())


def test_sum_of_squares_not_requested_is_quiet_nan(rng):
  values = mixed_list(rng, [3, 70000])
  for fn in (lambda gs: _fused(gs, 8.0), tf.function(lambda gs: _fused(gs, 8.0))):
    _, flag, squares = fn([tf.constant(v) for v in values])
    assert bool(flag.numpy()) and _float_bits(squares.numpy()) == QUIET_NAN_BITS
  _, _, squares = _fused([], 8.0)
  assert _float_bits(squares.numpy()) == QUIET_NAN_BITS


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_empty_list_and_empty_tensors(mode):
  run = (lambda *a, **k: _fused(*a, **k)) if mode == "eager" else (
      lambda gs, s, **k: tf.function(lambda g: _fused(g, s, **k))(gs))
  out, flag, squares = run([], 8.0, sum_of_squares=True)
  assert out == [] and bool(flag.numpy()) and squares.numpy() == 0.0
  empties = [tf.zeros([0], d) for d in ALL_DTYPES] + [tf.zeros([3, 0, 2], tf.float16)]
  out, flag, squares = run(empties, 8.0, sum_of_squares=True)
  assert bool(flag.numpy()) and squares.numpy() == 0.0
  assert [o.shape.as_list() for o in out] == [[0]] * 4 + [[3, 0, 2]]
  assert [o.dtype for o in out] == [e.dtype for e in empties]


# ---- the scale as a tensor -------------------------------------------------------------


def test_variable_scale_changes_between_calls_of_one_function(rng):
  values = mixed_list(rng, [9, 300, 5, 70])
  scale = tf.Variable(2.0)

  @tf.function
  def run(grads):
    return _fused(grads, scale, sum_of_squares=True)

  grads = [tf.constant(v) for v in values]
  for value in [2.0, 1000.5, 1.0, 2.0**126, 3.0]:
    scale.assign(value)
    out, flag, squares = run(grads)
    assert bool(flag.numpy())
    unscaled = [reference_unscale(v, value) for v in values]
    for o, u in zip(out, unscaled):
      assert_bitwise_equal(o.numpy(), u)
    _assert_sum_close(squares.numpy(), unscaled)
  assert run.experimental_get_tracing_count() == 1


def test_shape_function():
  @tf.function(input_signature=[tf.TensorSpec(None, tf.float16),
                                tf.TensorSpec([None, 3], tf.float32)])
  def shapes(a, b):
    out, flag, squares = _fused([a, b], 8.0)
    assert out[0].shape.rank is None and out[1].shape.as_list() == [None, 3]
    assert flag.shape.as_list() == [] and squares.shape.as_list() == []
    assert flag.dtype == tf.bool and squares.dtype == tf.float32
    return flag

  assert shapes(tf.ones([2, 2], tf.float16), tf.ones([4, 3])).numpy()


# ---- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.5, np.nan, 2.0**127, np.inf, -1.0, 0.0])
def test_bad_fixed_scale_numbers(bad):
  """A Python number is a fixed scale: [1, 2**126], as for FixedUnscaleGrads."""
  with pytest.raises(ValueError, match=f"{OP}: loss_scale must be"):
    _fused([tf.ones([3])], bad)


TENSOR_SCALE_MESSAGE = f"{OP}: loss_scale must be a positive, finite, normal float32"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, 0.0, -0.0, 1e-40,
                                 float(np.finfo(np.float32).tiny) / 2])
def test_bad_tensor_scale_values(bad):
  """A tensor scale may leave [1, 2**126] (NOTE [tensor loss scale range]), but
  not be zero, negative, subnormal, Inf or NaN."""
  x = [tf.ones([3])]
  variable = tf.Variable(np.float32(bad))
  for run in (lambda: _fused(x, variable), tf.function(lambda: _fused(x, variable))):
    with pytest.raises(tf.errors.InvalidArgumentError, match=TENSOR_SCALE_MESSAGE):
      run()
  # A constant in a graph: the shape function, when the graph is built.
  with tf.Graph().as_default():
    with pytest.raises(ValueError) as info:
      RAW.fixed_unscale_grads_and_check([tf.ones([3])], tf.constant(np.float32(bad)))
    assert TENSOR_SCALE_MESSAGE in str(info.value)
    assert f"= {OP}[" in str(info.value)  # the node that was rejected


def test_bad_scale_value_names_it():
  with pytest.raises(tf.errors.InvalidArgumentError, match="got -2.5"):
    RAW.fixed_unscale_grads_and_check([tf.ones([2])], tf.constant(np.float32(-2.5)))
  with pytest.raises(tf.errors.InvalidArgumentError, match="got -inf"):
    RAW.fixed_unscale_grads_and_check([tf.ones([2])], tf.constant(np.float32(-np.inf)))
  # A subnormal scale is refused too; TF's CPU threads read it as 0 (DAZ).
  with pytest.raises(tf.errors.InvalidArgumentError, match=TENSOR_SCALE_MESSAGE):
    RAW.fixed_unscale_grads_and_check([tf.ones([2])], tf.constant(np.float32(1e-40)))


def test_tensor_scale_outside_the_fixed_range():
  """Outside [1, 2**126] the op computes TF's CPU arithmetic g * (1 / scale)
  (NOTE [tensor loss scale range]), checked against numpy: above 2**126 the
  float32 reciprocal is subnormal and flushed to 0 (Inf * 0 = NaN), float64
  keeps its normal reciprocal; below 1 the factor exceeds 1, and a finite
  gradient that overflows when unscaled is not finite."""
  f32 = np.array([3.0, -2.0, np.inf, 1e-30], np.float32)
  f64 = np.array([3.0, -2.0, 1e300], np.float64)
  f16 = np.array([1.0, 40000.0, -3.0], np.float16)
  (u32, u64, u16), flag, squares = _fused([f32, f64, f16], tf.Variable(np.float32(2.0**127)),
                                          sum_of_squares=True)
  expected32 = np.array([0.0, -0.0, np.nan, 0.0], np.float32)
  assert_bitwise_equal(u32.numpy()[[0, 1, 3]], expected32[[0, 1, 3]])
  assert np.isnan(u32.numpy()[2]) and not flag.numpy() and np.isnan(squares.numpy())
  assert_bitwise_equal(u64.numpy(), f64 * (1.0 / np.float64(np.float32(2.0**127))))
  assert_bitwise_equal(u16.numpy(), np.zeros(3, np.float16) * np.sign(f16))
  (u16,), flag, _ = _fused([f16], tf.Variable(np.float32(0.5)))
  with np.errstate(over="ignore"):  # 80000 overflows float16, as it should
    assert_bitwise_equal(u16.numpy(), (f16.astype(np.float32) * 2).astype(np.float16))
  assert np.isinf(u16.numpy()[1]) and not flag.numpy()  # 80000 overflows float16
  (u16,), flag, _ = _fused([f16[[0, 2]]], tf.Variable(np.float32(0.5)))
  assert flag.numpy()
