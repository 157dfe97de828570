"""FixedLossScale, a TF1 `LossScale` whose graph path runs the fused custom ops.

It subclasses TensorFlow's own `tf.compat.v1.mixed_precision.LossScale`, so TF's
`MixedPrecisionLossScaleOptimizer` and `enable_mixed_precision_graph_rewrite`
accept it, and follows the TF 2.4 `FixedLossScale` contract: calling it gives the
scale as a float32 scalar, `update` is a no-op that always allows applying
gradients, and it round-trips through `get_config`/`from_config`.
"""

import tensorflow as tf
from tensorflow.python.ops import control_flow_ops

from fixed_loss_scale import ops
from fixed_loss_scale import scaling

LossScale = tf.compat.v1.mixed_precision.LossScale


class FixedLossScale(LossScale):
  """Loss scale with a fixed value that never changes.

  Args:
    loss_scale_value: A Python or numpy int or float, at least 1 and finite.
      Too small a scale lets small float16 gradients underflow; too large a
      scale overflows to inf or nan. There is no single right value.

  Raises:
    TypeError: If `loss_scale_value` is not a real number (bool included).
    ValueError: If it is below 1, NaN, Inf or too large for float32.
  """

  def __init__(self, loss_scale_value):
    super().__init__()
    # A Python float, not a tensor: a tensor made here could live on another
    # device or in another graph than the one that uses it.
    self._loss_scale_value = ops.validate_loss_scale(loss_scale_value, "loss_scale_value")

  @property
  def loss_scale_value(self):
    """The scale as a Python float."""
    return self._loss_scale_value

  def __call__(self):
    """Returns the loss scale as a scalar float32 tensor."""
    return tf.convert_to_tensor(self._loss_scale_value, tf.float32)

  def update(self, grads):
    """A fixed scale never changes: returns (no-op or None, True)."""
    del grads
    return control_flow_ops.no_op(), True

  def scale_loss(self, loss):
    """Returns `loss * scale`: FixedScaleLoss in graphs, arithmetic eagerly or under XLA."""
    return scaling.scale_loss(loss, self._loss_scale_value)

  def unscale_gradients(self, grads):
    """Divides every gradient in the nested `grads` by the scale (FixedUnscaleGrads in graphs)."""
    return scaling.unscale_gradients(grads, self._loss_scale_value)

  def get_config(self):
    return {"loss_scale_value": self._loss_scale_value}

  def __repr__(self):
    return f"FixedLossScale({self._loss_scale_value!r})"


def serialize(loss_scale):
  """Returns a `{'class_name', 'config'}` dict describing `loss_scale`."""
  if not isinstance(loss_scale, LossScale):
    raise ValueError(f"Cannot serialize {loss_scale!r}: not a LossScale")
  return {"class_name": type(loss_scale).__name__, "config": loss_scale.get_config()}


def deserialize(config, custom_objects=None):
  """Rebuilds a loss scale from `serialize`'s dict."""
  classes = {
      "FixedLossScale": FixedLossScale,
      "DynamicLossScale": tf.compat.v1.mixed_precision.DynamicLossScale,
  }
  classes.update(custom_objects or {})
  if not isinstance(config, dict) or "class_name" not in config:
    raise ValueError(f"Could not interpret loss scale config: {config!r}")
  cls = classes.get(config["class_name"])
  if cls is None:
    raise ValueError(f"Unknown loss scale class: {config['class_name']!r}")
  return cls.from_config(config.get("config", {}))


def get(identifier):
  """Returns a loss scale: a number gives a FixedLossScale, 'dynamic' TF's
  DynamicLossScale, a dict is deserialized, a LossScale is returned as is and
  None gives None; anything else raises ValueError."""
  if identifier is None or isinstance(identifier, LossScale):
    return identifier
  if isinstance(identifier, dict):
    return deserialize(identifier)
  if isinstance(identifier, str) and identifier == "dynamic":
    return tf.compat.v1.mixed_precision.DynamicLossScale()
  try:
    return FixedLossScale(identifier)
  except TypeError:
    raise ValueError(f"Could not interpret loss scale identifier: {identifier!r}") from None
