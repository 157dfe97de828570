"""Python wrappers for the FixedScaleLoss, FixedUnscaleGrads,
FixedUnscaleGradsAndCheck, FixedCheckGrads and FixedUnscaleGradsByTensor ops,
and their gradients.

The wrappers validate their arguments with messages that name the op, the
argument and the offending dtype or value, then emit the raw op. They work in
graph mode and eagerly. FixedScaleLoss, FixedUnscaleGrads and
FixedUnscaleGradsByTensor are linear, so each is its own gradient;
FixedUnscaleGradsAndCheck's unscaled outputs are linear in its grads too, and
its sum of squares is quadratic in them. FixedCheckGrads has none (NOTE [no
gradient for the check], below).
"""

import math
import numbers
import reprlib

import numpy as np
import tensorflow as tf

from fixed_loss_scale import _loader

SUPPORTED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_SUPPORTED_NAMES = "half, bfloat16, float32, float64"
_raw_ops = _loader.load_ops()
# The largest loss scale whose float32 reciprocal is a normal number (2**-126):
# the op library's own bound (NOTE [loss scale range], tf_ops/core/tensor_span.h).
MAX_LOSS_SCALE = float(_loader.c_api().fls_max_loss_scale())


def validate_loss_scale(value, what="loss_scale", at_most=MAX_LOSS_SCALE):
  """Returns `value` as a Python float if it is a usable fixed loss scale.

  Accepts Python and numpy real scalars (and one-element numpy arrays); rejects
  bool, strings, tensors and anything else with a TypeError, and values below 1,
  NaN, Inf or above `at_most` (default MAX_LOSS_SCALE, 2**126) with a
  ValueError. A dynamic scale's start and multiplier pass `at_most=None`: any
  float32 up to its max (the scale is a tensor there, NOTE [tensor loss scale
  range]).
  """
  if isinstance(value, np.ndarray):
    if value.size != 1:
      raise TypeError(f"{what} must be a single number, got an array of shape {value.shape}")
    value = value.reshape(()).item() if value.dtype.kind in "iuf" else value
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError(f"{what} must be a Python or numpy int or float, got "
                    f"{type(value).__name__}: {value!r}")
  try:
    value = float(value)
  except OverflowError:  # an int or Fraction beyond any float
    raise ValueError(f"{what} must fit in float32, got {reprlib.repr(value)}") from None
  if math.isnan(value) or math.isinf(value):
    raise ValueError(f"{what} must be finite, got {value}")
  if value < 1:
    raise ValueError(f"{what} must be at least 1, got {value}")
  if value > float(np.finfo(np.float32).max):
    raise ValueError(f"{what} must fit in float32, got {value}")
  if at_most is not None and float(np.float32(value)) > at_most:
    # 1/loss_scale would be a float32 subnormal, which TensorFlow's CPU threads
    # flush to zero: gradients would silently become 0 and Inf would become NaN.
    raise ValueError(f"{what} must be at most 2**126 (its float32 reciprocal must be a "
                     f"normal number), got {value}")
  return value


def as_float_tensor(value, op_name, arg_name):
  """Converts `value` to a tensor of a supported float dtype, or raises TypeError."""
  if isinstance(value, tf.SparseTensor):
    raise TypeError(f"{op_name}: {arg_name} is a SparseTensor; pass a dense tensor or "
                    "tf.IndexedSlices")
  if not tf.is_tensor(value):
    try:
      value = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
      raise TypeError(f"{op_name}: {arg_name} cannot be converted to a tensor: {error}") from None
  if value.dtype.base_dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"{op_name}: {arg_name} has dtype {value.dtype.name}; expected one of "
                    f"{_SUPPORTED_NAMES}")
  return value


def fixed_scale_loss(loss, loss_scale, name=None):
  """Returns `loss * loss_scale` through the FixedScaleLoss op."""
  loss = as_float_tensor(loss, "FixedScaleLoss", "loss")
  return _raw_ops.fixed_scale_loss(loss, loss_scale=validate_loss_scale(loss_scale), name=name)


def fixed_unscale_grads(grads, loss_scale, name=None):
  """Returns `[g * (1 / loss_scale) for g in grads]` through one FixedUnscaleGrads op."""
  loss_scale = validate_loss_scale(loss_scale)
  grads = [as_float_tensor(g, "FixedUnscaleGrads", f"grads[{i}]") for i, g in enumerate(grads)]
  if not grads:
    return []
  return list(_raw_ops.fixed_unscale_grads(grads, loss_scale=loss_scale, name=name))


CHECK_OP = "FixedUnscaleGradsAndCheck"


def loss_scale_tensor(loss_scale, op_name=CHECK_OP):
  """The loss_scale input of FixedUnscaleGradsAndCheck: a Python or numpy
  number, validated (validate_loss_scale) and made a float32 constant, or a
  float32 scalar tensor or variable, taken as it is (its value is checked by
  the op when it runs). TypeError or ValueError naming `op_name` and the
  argument otherwise."""
  what = f"{op_name}: loss_scale"
  if isinstance(loss_scale, tf.Variable) or tf.is_tensor(loss_scale):
    if loss_scale.dtype.base_dtype != tf.float32:
      raise TypeError(f"{what} must be a Python or numpy number or a float32 scalar tensor, "
                      f"got a {loss_scale.dtype.base_dtype.name} tensor: {loss_scale!r}")
    if loss_scale.shape.rank is not None and loss_scale.shape.rank != 0:
      raise ValueError(f"{what} must be a scalar, got a tensor of shape {loss_scale.shape}: "
                       f"{loss_scale!r}")
    return loss_scale
  return tf.constant(np.float32(validate_loss_scale(loss_scale, what)), tf.float32)


def fixed_unscale_grads_and_check(grads, loss_scale, sum_of_squares=False, name=None):
  """Unscales `grads` and checks them in one read: one FixedUnscaleGradsAndCheck op.

  Args:
    grads: a list of tensors of half, bfloat16, float32 or float64, any mix.
    loss_scale: a Python or numpy number (validated as a fixed scale: at
      least 1, at most 2**126) or a float32 scalar tensor or variable (a
      dynamic scale; the op checks its value when it runs: any positive,
      finite, normal float32, outside [1, 2**126] with TensorFlow's CPU
      arithmetic, NOTE [tensor loss scale range] in tf_ops/core/tensor_span.h;
      InvalidArgumentError otherwise).
    sum_of_squares: whether to compute the third output (a Python bool).
    name: the op's name.

  Returns:
    `(unscaled, all_finite, sum_of_squares)`: the list of `g * (1 / loss_scale)`
    bit for bit as `fixed_unscale_grads` gives them; a bool scalar, True iff
    every unscaled value is finite (True for an empty list); a float32 scalar,
    the sum of the squares of every unscaled value (NOTE [sum of squares] in
    tf_ops/core/cpu/scale_loop.h) or, without `sum_of_squares`, a quiet NaN.
  """
  _check_bool(sum_of_squares, CHECK_OP, "sum_of_squares")
  loss_scale = loss_scale_tensor(loss_scale)
  grads = [as_float_tensor(g, CHECK_OP, f"grads[{i}]") for i, g in enumerate(grads)]
  unscaled, all_finite, squares = _raw_ops.fixed_unscale_grads_and_check(
      grads, loss_scale, with_sum_of_squares=bool(sum_of_squares), name=name)
  return list(unscaled), all_finite, squares


CHECK_ONLY_OP = "FixedCheckGrads"
UNSCALE_BY_TENSOR_OP = "FixedUnscaleGradsByTensor"


def _check_bool(value, op_name, arg_name):
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{op_name}: {arg_name} must be True or False, got "
                    f"{type(value).__name__}: {value!r}")


def fixed_check_grads(grads, loss_scale, sum_of_squares=False, name=None):
  """The check of `fixed_unscale_grads_and_check` without its writes: one
  FixedCheckGrads op, which reads `grads` and writes no gradient.

  Args and the flag and sum: as `fixed_unscale_grads_and_check`, bit for bit
  (the flag and sum of the *unscaled* values, `g * (1 / loss_scale)`).

  Returns:
    `(all_finite, sum_of_squares)`: a bool scalar and a float32 scalar (a
    quiet NaN without `sum_of_squares`). Not differentiable: a gradient
    through it raises LookupError.
  """
  _check_bool(sum_of_squares, CHECK_ONLY_OP, "sum_of_squares")
  loss_scale = loss_scale_tensor(loss_scale, CHECK_ONLY_OP)
  grads = [as_float_tensor(g, CHECK_ONLY_OP, f"grads[{i}]") for i, g in enumerate(grads)]
  all_finite, squares = _raw_ops.fixed_check_grads(
      grads, loss_scale, with_sum_of_squares=bool(sum_of_squares), name=name)
  return all_finite, squares


def fixed_unscale_grads_by_tensor(grads, loss_scale, name=None):
  """`[g * (1 / loss_scale) for g in grads]` with the scale as a tensor, no
  check: one FixedUnscaleGradsByTensor op. The results are bit for bit
  `fixed_unscale_grads_and_check`'s unscaled list (and `fixed_unscale_grads`'
  for a scale in [1, 2**126]); `loss_scale` as there."""
  loss_scale = loss_scale_tensor(loss_scale, UNSCALE_BY_TENSOR_OP)
  grads = [as_float_tensor(g, UNSCALE_BY_TENSOR_OP, f"grads[{i}]") for i, g in enumerate(grads)]
  if not grads:
    return []
  return list(_raw_ops.fixed_unscale_grads_by_tensor(grads, loss_scale, name=name))


def _register_gradient(op_type):
  """tf.RegisterGradient that tolerates this module being imported again
  (importlib.reload, notebook autoreload): the first registration stays."""
  def register(fn):
    try:
      tf.RegisterGradient(op_type)(fn)
    except KeyError:  # "Registering two gradient with name ..."
      pass
    return fn
  return register


@_register_gradient("FixedScaleLoss")
def _fixed_scale_loss_grad(op, grad):
  """d(loss * s)/d(loss) = s: the upstream gradient scaled by the same op."""
  return _raw_ops.fixed_scale_loss(grad, loss_scale=op.get_attr("loss_scale"))


@_register_gradient("FixedUnscaleGrads")
def _fixed_unscale_grads_grad(op, *grads):
  """Each output is input * (1/s): upstream gradients are unscaled the same way."""
  grads = [tf.zeros_like(x) if g is None else g for g, x in zip(grads, op.inputs)]
  if not grads:
    return []
  return list(_raw_ops.fixed_unscale_grads(grads, loss_scale=op.get_attr("loss_scale")))


@_register_gradient(CHECK_OP)
def _fixed_unscale_grads_and_check_grad(op, *upstream):
  """d unscaled_i / d grads_i = 1/s; with `with_sum_of_squares`,
  d sum_of_squares / d grads_i = 2 * unscaled_i * (1/s).

  Both are applied to the upstream gradients of the grads' outputs at once:
  unscaled_i's upstream plus `2 * upstream(sum_of_squares) * unscaled_i` (in
  float32, float64 for float64, rounded once to the gradient's dtype) is
  unscaled by the same op with the same loss_scale input. No gradient flows to
  loss_scale (None: a loss scale is not trained) nor from all_finite (a bool).
  Without `with_sum_of_squares` the third output is a constant NaN, not a
  function of the grads, and its upstream gradient is ignored.
  """
  num_grads = len(op.inputs) - 1
  loss_scale = op.inputs[num_grads]
  if num_grads == 0:
    return [None]
  squares_upstream = upstream[num_grads + 1]
  total = []
  for i in range(num_grads):
    grad, unscaled = upstream[i], op.outputs[i]
    if squares_upstream is not None and op.get_attr("with_sum_of_squares"):
      grad = None if grad is None else tf.convert_to_tensor(grad)
      wide = tf.float64 if unscaled.dtype == tf.float64 else tf.float32
      from_squares = (tf.cast(2 * squares_upstream, wide) * tf.cast(unscaled, wide))
      grad = from_squares if grad is None else tf.cast(grad, wide) + from_squares
      grad = tf.cast(grad, unscaled.dtype)
    total.append(tf.zeros_like(op.inputs[i]) if grad is None else grad)
  unscaled_upstream = _raw_ops.fixed_unscale_grads_and_check(total, loss_scale)[0]
  return list(unscaled_upstream) + [None]


@_register_gradient(UNSCALE_BY_TENSOR_OP)
def _fixed_unscale_grads_by_tensor_grad(op, *grads):
  """Each output is input * (1/s): upstream gradients are unscaled by the same
  op and loss_scale input; none flows to loss_scale (a loss scale is not
  trained)."""
  loss_scale = op.inputs[-1]
  grads = [tf.zeros_like(x) if g is None else g for g, x in zip(grads, op.inputs[:-1])]
  if not grads:
    return [None]
  return list(_raw_ops.fixed_unscale_grads_by_tensor(grads, loss_scale)) + [None]


# NOTE [no gradient for the check]: FixedCheckGrads registers no gradient, so
# differentiating through it raises LookupError naming the op. A zero gradient
# (tf.no_gradient) would be wrong without a word: its sum_of_squares depends on
# the grads. It feeds a skip decision or a clipping factor, which no one
# differentiates; a caller who does wants FixedUnscaleGradsAndCheck, whose sum
# has a gradient.
