"""Python wrappers for the FixedScaleLoss and FixedUnscaleGrads ops, and their gradients.

The wrappers validate their arguments with messages that name the op, the
argument and the offending dtype or value, then emit the raw op. They work in
graph mode and eagerly. Both ops are linear, so each is its own gradient.
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


def validate_loss_scale(value, what="loss_scale"):
  """Returns `value` as a Python float if it is a usable fixed loss scale.

  Accepts Python and numpy real scalars (and one-element numpy arrays); rejects
  bool, strings, tensors and anything else with a TypeError, and values below 1,
  NaN, Inf or above MAX_LOSS_SCALE (2**126) with a ValueError.
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
  if float(np.float32(value)) > MAX_LOSS_SCALE:
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
