"""scaling.unscale_and_check, the seam that emits FixedUnscaleGradsAndCheck.

One fused op per CPU group and no second read of the gradients, the same
numbers and flag as the arithmetic computed eagerly (also for a dynamic scale
outside [1, 2**126]), FixedLossScale(skip_non_finite=True) skipping with the
fused flag, and under XLA the plain arithmetic. References: conftest's numpy
oracle, the seam's own eager arithmetic and finite.all_finite.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import random_values
from conftest import reference_unscale
from fixed_loss_scale import finite
from fixed_loss_scale import ops
from fixed_loss_scale import scaling
from test_fused_op import OP
from test_fused_op import SUM_RTOL
from test_fused_op import mixed_list


@pytest.mark.parametrize("scale_kind", ["number", "tensor"])
def test_seam_emits_one_op_and_no_second_read(scale_kind, rng):
  values = mixed_list(rng, [17, 300, 5])
  scale = 1000.5 if scale_kind == "number" else tf.Variable(1000.5)

  @tf.function
  def step(grads):
    unscaled, flag, squares = scaling.unscale_and_check(grads, scale, sum_of_squares=True)
    return unscaled, flag, squares, finite.all_finite(unscaled)

  grads = [tf.constant(v) for v in values]
  unscaled, flag, squares, found = step(grads)
  function = step.get_concrete_function(grads)
  types = graph_op_types(function)  # nested functions (cond branches) included
  assert types.count(OP) == 1 and "FixedUnscaleGrads" not in types
  assert "IsFinite" not in [op.type for op in function.graph.get_operations()]
  assert "IsFinite" not in types and "If" not in types and "StatelessIf" not in types
  assert bool(flag.numpy()) and bool(found.numpy())
  eager = scaling.unscale_and_check(grads, scale, sum_of_squares=True)  # the arithmetic
  for u, e, v in zip(unscaled, eager[0], values):
    assert_bitwise_equal(u.numpy(), e.numpy())
    assert_bitwise_equal(u.numpy(), reference_unscale(v, 1000.5))
  np.testing.assert_allclose(squares.numpy(), eager[2].numpy(), rtol=SUM_RTOL)


def _assert_equal_but_nan_signs(actual, expected):
  """Bit for bit, except the sign of a NaN made by Inf * 0 (a scale above
  2**126: its float32 reciprocal is flushed to 0), which x86's vector multiply
  gives negative and TF's half/bfloat16 casts may not: a step with such a
  gradient is skipped either way."""
  nan = np.isnan(actual.astype(np.float64))
  np.testing.assert_array_equal(nan, np.isnan(expected.astype(np.float64)))
  assert_bitwise_equal(actual[~nan], expected[~nan])


@pytest.mark.parametrize("value", [2.0**127, float(np.finfo(np.float32).max), 0.5])
def test_seam_tensor_scale_outside_the_fixed_range(value, rng):
  """A dynamic scale may leave [1, 2**126] (TF's algorithm grows it up to
  float32 max, Keras's halves below 1): the seam still emits the fused op, no
  cond, and it computes what the arithmetic computes eagerly, flag included
  (NOTE [tensor loss scale range])."""
  values = mixed_list(rng, [17, 300, 5, 9])
  scale = tf.Variable(value)
  step = tf.function(lambda gs: scaling.unscale_and_check(gs, scale, sum_of_squares=True))
  for poison in (False, True):
    if poison:
      values[1][3] = np.inf
    grads = [tf.constant(v) for v in values]
    unscaled, flag, squares = step(grads)
    types = graph_op_types(step.get_concrete_function(grads))
    assert types.count(OP) == 1 and "IsFinite" not in types and "If" not in types
    eager = scaling.unscale_and_check(grads, scale, sum_of_squares=True)
    for u, e in zip(unscaled, eager[0]):
      _assert_equal_but_nan_signs(u.numpy(), e.numpy())
    assert bool(flag.numpy()) is bool(eager[1].numpy())
    if value < 1:
      # Factor 2: random values may overflow float16 when unscaled.
      assert bool(flag.numpy()) is (not poison and all(
          np.isfinite(u.numpy()).all() for u in unscaled))
    else:
      assert bool(flag.numpy()) is (not poison)
    np.testing.assert_allclose(squares.numpy(), eager[2].numpy(), rtol=SUM_RTOL)
  scale.assign(4.0)  # back in range, in the same function
  unscaled, flag, _ = step([tf.constant(v) for v in values])
  assert not flag.numpy()
  for u, v in zip(unscaled, values):
    assert_bitwise_equal(u.numpy(), reference_unscale(v, 4.0))


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")),
                    reason="a GPU's gradients are one group")
def test_seam_cpu_groups_reduce_their_flags_and_sums(rng):
  """Several CPU groups (NOTE [CPU groups]): one op each, their flags reduced
  and their sums of squares added in float64."""
  n = scaling.CPU_GROUP_BYTES // 4
  values = [random_values(rng, (n,), np.float32) for _ in range(3)]

  @tf.function
  def step(grads):
    return scaling.unscale_and_check(grads, 4.0, sum_of_squares=True)

  grads = [tf.constant(v) for v in values]
  unscaled, flag, squares = step(grads)
  assert graph_op_types(step.get_concrete_function(grads)).count(OP) == 3
  assert bool(flag.numpy())
  per_group = [ops.fixed_unscale_grads_and_check([g], 4.0, sum_of_squares=True)[2].numpy()
               for g in grads]
  assert squares.numpy() == np.float32(sum(float(s) for s in per_group))
  values[2][-1] = np.nan
  assert not step([tf.constant(v) for v in values])[1].numpy()


def test_fixed_loss_scale_skips_with_the_fused_flag():
  loss_scale = fls.FixedLossScale(8, skip_non_finite=True)

  @tf.function
  def step(a, b):
    return loss_scale.update(loss_scale.unscale_gradients([a, b]))[1]

  args = (tf.constant([8.0, 16.0]), tf.constant([1.0], tf.float16))
  types = graph_op_types(step.get_concrete_function(*args))
  assert OP in types and "IsFinite" not in types
  assert step(*args).numpy()
  assert not step(tf.constant([8.0, np.inf]), args[1]).numpy()


@pytest.mark.parametrize("scale_kind", ["number", "tensor"])
def test_seam_under_xla_keeps_the_arithmetic(scale_kind, rng):
  """jit_compile=True: no custom op (XLA has no kernel for it); the same
  numbers and flag, found again by finite.all_finite from the registry."""
  values = mixed_list(rng, [17, 300, 5])
  scale = 1000.5 if scale_kind == "number" else tf.Variable(1000.5)

  @tf.function(jit_compile=True)
  def step(grads):
    unscaled, flag = scaling.unscale_and_check(grads, scale)
    return unscaled, flag, finite.all_finite(unscaled)

  grads = [tf.constant(v) for v in values]
  unscaled, flag, found = step(grads)
  types = graph_op_types(step.get_concrete_function(grads))
  assert OP not in types and types.count("IsFinite") == len(values)
  assert bool(flag.numpy()) and bool(found.numpy())
  for u, v in zip(unscaled, values):
    assert_bitwise_equal(u.numpy(), reference_unscale(v, 1000.5))
  values[2][0] = np.nan
  assert not step([tf.constant(v) for v in values])[1].numpy()
