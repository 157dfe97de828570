"""What careful users and fuzzers pass in: bad dtypes, bad loss scales, odd shapes.

Op level: the raw ops (`_loader.load_ops()`) and the `fixed_loss_scale.ops`
wrappers, eagerly, traced by tf.function and in a TF1 graph. Python level:
gradients that are not tensors (what FixedLossScale and `get` accept as the
scale: tests/test_fixed_loss_scale_values.py). Every accepted input is checked
against the numpy oracle of conftest.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import ALL_DTYPES
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import random_values
from conftest import reference_scale
from conftest import reference_unscale
from fixed_loss_scale import _loader
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

RAW = _loader.load_ops()

# ---- the three ways an op is built ----------------------------------------------


def run_eager(fn):
  return fn()


def run_tf_function(fn):
  return tf.function(fn)()


def run_tf1_graph(fn):
  with tf.Graph().as_default():
    result = fn()
    if isinstance(result, list) and not result:
      return result
    with tf.compat.v1.Session() as session:
      return session.run(result)


MODES = {"eager": run_eager, "tf.function": run_tf_function, "tf1_graph": run_tf1_graph}


def as_numpy(x):
  return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


# ---- bad dtypes -------------------------------------------------------------------

BAD_DTYPES = [tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64,
              tf.complex64, tf.complex128, tf.string, tf.bool]


def bad_tensor(dtype):
  if dtype == tf.string:
    return tf.constant(["a", "b"])
  if dtype == tf.bool:
    return tf.constant([True, False])
  return tf.zeros([2], dtype)


# (what is called, op type in the message, argument in the message)
def _raw_scale(bad):
  return RAW.fixed_scale_loss(bad, loss_scale=8.0)


def _raw_unscale(bad):
  return RAW.fixed_unscale_grads([tf.ones([3]), bad], loss_scale=8.0)


def _wrapper_scale(bad):
  return ops.fixed_scale_loss(bad, 8.0)


def _wrapper_unscale(bad):
  return ops.fixed_unscale_grads([tf.ones([3]), bad], 8.0)


def _wrapper_unscale_and_check(bad):
  return ops.fixed_unscale_grads_and_check([tf.ones([3]), bad], 8.0)


def _seam_unscale_and_check(bad):
  return scaling.unscale_and_check([tf.ones([3]), bad], 8.0)


def _api_scale(bad):
  return fls.scale_loss(bad, 8.0)


def _api_unscale(bad):
  return fls.unscale_gradients([tf.ones([3]), bad], 8.0)


CALLERS = {
    "raw.fixed_scale_loss": (_raw_scale, "FixedScaleLoss", "loss"),
    "raw.fixed_unscale_grads": (_raw_unscale, "FixedUnscaleGrads", "grads"),
    "ops.fixed_scale_loss": (_wrapper_scale, "FixedScaleLoss", "loss"),
    "ops.fixed_unscale_grads": (_wrapper_unscale, "FixedUnscaleGrads", "grads[1]"),
    "scale_loss": (_api_scale, "FixedScaleLoss", "loss"),
    "unscale_gradients": (_api_unscale, "FixedUnscaleGrads", "grads[1]"),
    "ops.fixed_unscale_grads_and_check": (_wrapper_unscale_and_check,
                                          "FixedUnscaleGradsAndCheck", "grads[1]"),
    "unscale_and_check": (_seam_unscale_and_check, "FixedUnscaleGradsAndCheck", "grads[1]"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: d.name)
def test_non_float_dtypes_rejected_naming_op_argument_and_dtype(dtype, caller, mode):
  fn, op_type, argument = CALLERS[caller]
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)) as info:
    MODES[mode](lambda: fn(bad_tensor(dtype)))
  message = str(info.value)
  assert op_type in message, message
  assert argument in message, message
  assert dtype.name in message, message


@pytest.mark.parametrize("caller", ["ops.fixed_unscale_grads", "unscale_gradients"])
def test_bad_dtype_in_a_long_list_names_its_position(caller):
  fn = ops.fixed_unscale_grads if caller.startswith("ops") else fls.unscale_gradients
  grads = [tf.ones([2]) for _ in range(40)]
  grads[37] = tf.zeros([2], tf.int64)
  with pytest.raises(TypeError, match=r"FixedUnscaleGrads: grads\[37\] has dtype int64"):
    fn(grads, 4.0)


# ---- bad loss scales ---------------------------------------------------------------

BAD_SCALES = [0.0, -0.0, 0.5, 0.999, 1.0 - 2.0**-24, -1.0, -8.0, math.nan, math.inf, -math.inf,
              2.0**127, 3.0e38]


def cpp_float_string(value):
  """How the C++ side prints a float attr (absl StrCat: six significant digits)."""
  value = float(np.float32(value))
  if math.isnan(value):
    return "nan"
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return f"{value:.6g}"


def _bad_for(op, bad):
  """Whether `bad` is a bad scale for `op`: FixedUnscaleGradsAndCheck takes its
  scale as a tensor, and any positive, finite, normal float32 there (NOTE
  [tensor loss scale range]; tests/test_fused_op.py checks those numbers)."""
  return op != "FixedUnscaleGradsAndCheck" or not (
      math.isfinite(bad) and np.float32(bad) >= np.finfo(np.float32).tiny)


OPS_AND_BAD_SCALES = [(op, bad)
                      for op in ("FixedScaleLoss", "FixedUnscaleGrads", "FixedUnscaleGradsAndCheck")
                      for bad in BAD_SCALES if _bad_for(op, bad)]


@pytest.mark.parametrize("op,bad", OPS_AND_BAD_SCALES)
def test_raw_op_eager_rejects_bad_loss_scale_with_invalid_argument(op, bad):
  x = tf.ones([3])
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    if op == "FixedScaleLoss":
      RAW.fixed_scale_loss(x, loss_scale=bad)
    elif op == "FixedUnscaleGrads":
      RAW.fixed_unscale_grads([x], loss_scale=bad)
    else:  # the scale is an input: the kernel checks its value (a numpy
      # value: eager tf.constant caches Python scalars, and -0.0 == 0.0)
      RAW.fixed_unscale_grads_and_check([x], tf.constant(np.array(bad, np.float32)))
  message = str(info.value)
  assert f"{op}: loss_scale must be" in message, message
  assert f"got {cpp_float_string(bad)}" in message, message


@pytest.mark.parametrize("op,bad", OPS_AND_BAD_SCALES)
@pytest.mark.parametrize("mode", ["tf.function", "tf1_graph"])
def test_raw_op_rejects_bad_loss_scale_when_the_graph_is_built(op, mode, bad):
  """The shape function returns InvalidArgument; TF raises it as ValueError while building
  (FixedUnscaleGradsAndCheck: for a constant scale input)."""
  tensor_scale = op == "FixedUnscaleGradsAndCheck"

  def build():
    x = tf.ones([3])
    if op == "FixedScaleLoss":
      return RAW.fixed_scale_loss(x, loss_scale=bad)
    if op == "FixedUnscaleGrads":
      return RAW.fixed_unscale_grads([x], loss_scale=bad)
    scale = tf.constant(np.array(bad, np.float32))
    return RAW.fixed_unscale_grads_and_check([x], scale).all_finite

  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as info:
    MODES[mode](build)
  message = str(info.value)
  if tensor_scale:
    assert "loss_scale must be a positive, finite, normal float32 (>= 2^-126)" in message, message
  else:
    assert "loss_scale must be finite, >= 1 and <= 2^126" in message, message
  assert f"got {cpp_float_string(bad)}" in message, message
  assert f"= {op}[" in message, message  # the node that was rejected


@pytest.mark.parametrize("bad", BAD_SCALES + [1e39, -1e39])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("caller", ["ops.fixed_scale_loss", "ops.fixed_unscale_grads",
                                    "scale_loss", "unscale_gradients",
                                    "ops.fixed_unscale_grads_and_check", "unscale_and_check"])
def test_wrappers_reject_bad_loss_scale_naming_the_value(caller, mode, bad):
  fn = {"ops.fixed_scale_loss": lambda: ops.fixed_scale_loss(tf.ones([2]), bad),
        "ops.fixed_unscale_grads": lambda: ops.fixed_unscale_grads([tf.ones([2])], bad),
        "scale_loss": lambda: fls.scale_loss(tf.ones([2]), bad),
        "unscale_gradients": lambda: fls.unscale_gradients([tf.ones([2])], bad),
        "ops.fixed_unscale_grads_and_check":
            lambda: ops.fixed_unscale_grads_and_check([tf.ones([2])], bad)[1],
        "unscale_and_check": lambda: scaling.unscale_and_check([tf.ones([2])], bad)[1]}[caller]
  with pytest.raises(ValueError) as info:
    MODES[mode](fn)
  assert f"got {float(bad)}" in str(info.value), str(info.value)


def test_largest_accepted_loss_scale_is_exact_and_its_reciprocal_is_normal():
  """2**126 is accepted everywhere and gives exact results; the next float32 is not."""
  x = np.array([1.0, -3.0, 2.0**100, np.inf], np.float32)
  out = tf.function(lambda v: ops.fixed_unscale_grads([v], 2.0**126))(tf.constant(x))[0]
  assert_bitwise_equal(out.numpy(), x * np.float32(2.0**-126))
  assert fls.FixedLossScale(2**126).loss_scale_value == 2.0**126
  next_up = float(np.nextafter(np.float32(2.0**126), np.float32(np.inf)))
  with pytest.raises(ValueError, match="at most 2\\*\\*126"):
    fls.FixedLossScale(next_up)
  with pytest.raises(tf.errors.InvalidArgumentError, match="<= 2\\^126"):
    RAW.fixed_unscale_grads([tf.constant(x)], loss_scale=next_up)


# ---- empty lists, rank 0, zero-sized and unknown shapes ----------------------------


@pytest.mark.parametrize("mode", MODES)
def test_empty_list_returns_empty_list(mode):
  assert MODES[mode](lambda: RAW.fixed_unscale_grads([], loss_scale=8.0)) == []
  assert MODES[mode](lambda: ops.fixed_unscale_grads([], 8.0)) == []
  assert MODES[mode](lambda: fls.unscale_gradients([], 8.0)) == []
  assert MODES[mode](lambda: fls.FixedLossScale(8).unscale_gradients([])) == []
  assert MODES[mode](lambda: ops.fixed_unscale_grads_and_check([], 8.0)[0]) == []
  assert MODES[mode](lambda: scaling.unscale_and_check([], 8.0)[0]) == []
  assert as_numpy(MODES[mode](lambda: ops.fixed_unscale_grads_and_check([], 8.0)[1]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", ["raw", "ops", "scaling", "fused", "seam"])
def test_rank0_and_zero_sized_inputs(api, mode, rng):
  shapes = [(), (0,), (3, 0, 2), (0, 0), (), (1,), (5, 0)]
  values = [random_values(rng, shape, NP_DTYPES[dtype])
            for shape, dtype in zip(shapes * 4, [d for d in ALL_DTYPES for _ in shapes])]
  unscale = {"raw": lambda gs: RAW.fixed_unscale_grads(gs, loss_scale=3.0),
             "ops": lambda gs: ops.fixed_unscale_grads(gs, 3.0),
             "scaling": lambda gs: fls.unscale_gradients(gs, 3.0),
             "fused": lambda gs: ops.fixed_unscale_grads_and_check(gs, 3.0)[0],
             "seam": lambda gs: scaling.unscale_and_check(gs, 3.0)[0]}[api]
  scale = {"raw": lambda x: RAW.fixed_scale_loss(x, loss_scale=3.0),
           "ops": lambda x: ops.fixed_scale_loss(x, 3.0),
           "scaling": lambda x: fls.scale_loss(x, 3.0),
           "fused": lambda x: ops.fixed_scale_loss(x, 3.0),
           "seam": lambda x: fls.scale_loss(x, 3.0)}[api]

  out = MODES[mode](lambda: list(unscale([tf.constant(v) for v in values])))
  assert len(out) == len(values)
  for v, o in zip(values, out):
    assert_bitwise_equal(as_numpy(o), reference_unscale(v, 3.0))
  for v in values[:7]:
    o = MODES[mode](lambda: scale(tf.constant(v)))
    assert_bitwise_equal(as_numpy(o), reference_scale(v, 3.0))


@pytest.mark.parametrize("signature_shape,value_shape", [
    (None, (4, 1, 2)), (None, ()), ([None], (0,)), ([None, 3], (5, 3)), ([2, None, None], (2, 0, 7)),
])
def test_unknown_shapes_in_tf_function(signature_shape, value_shape, rng):
  x = random_values(rng, value_shape, np.float16)

  @tf.function(input_signature=[tf.TensorSpec(signature_shape, tf.float16)])
  def both(v):
    out = ops.fixed_unscale_grads([v, v * 2], 8.0)
    scaled = ops.fixed_scale_loss(v, 8.0)
    # The shape functions pass through what is known, and nothing more.
    for t in out + [scaled]:
      if signature_shape is None:
        assert t.shape.rank is None
      else:
        assert t.shape.as_list() == signature_shape
    return out, scaled

  out, scaled = both(tf.constant(x))
  assert_bitwise_equal(out[0].numpy(), reference_unscale(x, 8.0))
  doubled = (x.astype(np.float32) * 2).astype(np.float16)
  assert_bitwise_equal(out[1].numpy(), reference_unscale(doubled, 8.0))
  assert_bitwise_equal(scaled.numpy(), reference_scale(x, 8.0))


def test_unknown_rank_placeholders_in_tf1_session(rng):
  with tf.Graph().as_default():
    a = tf.compat.v1.placeholder(tf.float32, shape=None)
    b = tf.compat.v1.placeholder(tf.bfloat16, shape=[None, 2])
    out = RAW.fixed_unscale_grads([a, b], loss_scale=1000.0)
    assert out[0].shape.rank is None
    assert out[1].shape.as_list() == [None, 2]
    loss = RAW.fixed_scale_loss(a, loss_scale=1000.0)
    va = random_values(rng, (2, 3, 4), np.float32)
    vb = random_values(rng, (7, 2), NP_DTYPES[tf.bfloat16])
    with tf.compat.v1.Session() as session:
      for shape_a in [(2, 3, 4), (), (0, 5)]:
        va = random_values(rng, shape_a, np.float32)
        got_a, got_b, got_loss = session.run(out + [loss], {a: va, b: vb})
        assert_bitwise_equal(got_a, reference_unscale(va, 1000.0))
        assert_bitwise_equal(got_b, reference_unscale(vb, 1000.0))
        assert_bitwise_equal(got_loss, reference_scale(va, 1000.0))




@pytest.mark.parametrize("mode", MODES)
def test_non_tensor_gradients_are_converted_and_unscaled(mode, rng):
  np16 = random_values(rng, (5,), np.float16)
  np32 = random_values(rng, (2, 3), np.float32)
  np64 = random_values(rng, (4,), np.float64)
  grads = {"a": np16, "b": [np32, 6.0], "c": (np64, None), "d": np.float32(3.0)}

  def unscale():
    result = fls.unscale_gradients(grads, 4.0)
    assert result["c"][1] is None  # the structure, None included, is kept
    flat = [t for t in tf.nest.flatten(result) if t is not None]
    assert all(tf.is_tensor(t) for t in flat), [type(t) for t in flat]
    return flat

  got = [as_numpy(t) for t in MODES[mode](unscale)]
  expected = [np16, np32, 6.0, np64, np.float32(3.0)]
  expected_dtypes = [np.float16, np.float32, np.float32, np.float64, np.float32]
  assert len(got) == len(expected)
  for g, e, d in zip(got, expected, expected_dtypes):
    assert_bitwise_equal(g, reference_unscale(np.asarray(e, d), 4.0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("caller", ["ops.fixed_unscale_grads", "unscale_gradients"])
@pytest.mark.parametrize("bad,says", [
    (np.arange(3), "int64"),
    (np.arange(3, dtype=np.int32), "int32"),
    (7, "int32"),
    (True, "bool"),
    ("grad", "string"),
    (np.array([1 + 2j]), "complex128"),
    (np.array([object()]), "cannot be converted to a tensor"),
    (object(), "cannot be converted to a tensor"),
])
def test_unconvertible_gradients_rejected_clearly(caller, mode, bad, says):
  fn = ops.fixed_unscale_grads if caller.startswith("ops") else fls.unscale_gradients
  with pytest.raises(TypeError) as info:
    MODES[mode](lambda: fn([tf.ones([1]), bad], 2.0))
  message = str(info.value)
  assert "FixedUnscaleGrads: grads[1]" in message and says in message, message


def test_sparse_tensor_gradient_rejected_clearly():
  sparse = tf.sparse.from_dense(tf.constant([[0.0, 2.0]]))
  with pytest.raises(TypeError, match="grads\\[0\\] is a SparseTensor"):
    fls.unscale_gradients([sparse], 2.0)


def test_scale_loss_converts_python_and_numpy_losses():
  for loss, np_dtype in [(3.0, np.float32), (np.float16(3.0), np.float16),
                         (np.array([3.0, 5.0]), np.float64)]:
    out = tf.function(lambda: fls.scale_loss(loss, 1024.0))()
    assert_bitwise_equal(out.numpy(), reference_scale(np.asarray(loss, np_dtype), 1024.0))
    eager = fls.scale_loss(loss, 1024.0)
    assert_bitwise_equal(eager.numpy(), reference_scale(np.asarray(loss, np_dtype), 1024.0))
