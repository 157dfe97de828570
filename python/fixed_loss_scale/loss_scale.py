"""FixedLossScale, a TF1 `LossScale` whose graph path runs the fused custom ops.

It subclasses TensorFlow's own `tf.compat.v1.mixed_precision.FixedLossScale`, so
every `isinstance` check in TF and tf_keras accepts it (TF's
`MixedPrecisionLossScaleOptimizer`, `enable_mixed_precision_graph_rewrite`,
tf_keras's converter of TF's loss-scale objects and its TF <= 2.3 configs), and
follows the TF 2.4 `FixedLossScale` contract: calling it gives the
scale as a float32 scalar, `update` is a no-op that always allows applying
gradients, and it round-trips through `get_config`/`from_config`. With
`skip_non_finite=True` (opt-in) `update` instead answers whether all gradients
are finite, so that the optimizer wrappers skip a step that overflowed.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_ops

from fixed_loss_scale import finite
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

LossScale = tf.compat.v1.mixed_precision.LossScale
# What TF's FixedLossScale says of a value that is not a Python int or float.
_TF_NOT_A_NUMBER = "loss_scale_value must be a Python int or float."


class LossScaleValueTypeError(TypeError, ValueError):
  """A `loss_scale_value` that is not a number, where TF's FixedLossScale
  refuses it too: a TypeError, as this package refuses a wrong type, and the
  ValueError TF's class raises for it, so that code written for either
  (`except ValueError` around TF's class included) catches it."""

  # Exception's own constructor: raised inside a tf.function, the error keeps
  # its class only if autograph finds this one (it rebuilds the error).
  __init__ = Exception.__init__


class FixedLossScale(tf.compat.v1.mixed_precision.FixedLossScale):
  """Loss scale with a fixed value that never changes.

  Args:
    loss_scale_value: A Python or numpy int or float, at least 1 and finite.
      Too small a scale lets small float16 gradients underflow; too large a
      scale overflows to inf or nan. There is no single right value.
    skip_non_finite: False (default): TF 2.4's contract, `update` returns
      `(no-op, True)` and a step whose gradients overflowed is applied, inf and
      NaN included. True: `unscale_gradients` also computes whether every
      unscaled gradient is finite (`scaling.unscale_and_check`), and
      `update(grads)` returns that as `should_apply`, a bool tensor, the same
      on every replica; this package's optimizer wrappers then skip the step
      (TF's own compat wrapper does not: it asks `update` only of a
      DynamicLossScale). The scale never changes either way.

  Raises:
    TypeError: If `loss_scale_value` is not a real number (bool included), or
      `skip_non_finite` is not a bool. Where TF's class raises ValueError (any
      such value but a bool), a `LossScaleValueTypeError`, also a ValueError,
      whose message starts with TF's.
    ValueError: If `loss_scale_value` is below 1, NaN, Inf or too large for
      float32.
  """

  # TF's __init__ (deprecated, logging so) is replaced, not called: the same
  # attribute, `_loss_scale_value` (which tf_keras reads), validated here.
  def __init__(self, loss_scale_value, skip_non_finite=False):  # pylint: disable=super-init-not-called
    LossScale.__init__(self)  # pylint: disable=non-parent-init-called
    # A Python float, not a tensor: a tensor made here could live on another
    # device or in another graph than the one that uses it.
    try:
      self._loss_scale_value = ops.validate_loss_scale(loss_scale_value, "loss_scale_value")
    except TypeError as error:
      if isinstance(loss_scale_value, (int, float)):  # a bool: TF's class takes it
        raise
      raise LossScaleValueTypeError(f"{_TF_NOT_A_NUMBER} {error}") from None
    if not isinstance(skip_non_finite, (bool, np.bool_)):
      raise TypeError("skip_non_finite must be True or False, got "
                      f"{type(skip_non_finite).__name__}: {skip_non_finite!r}")
    self._skip_non_finite = bool(skip_non_finite)

  @property
  def loss_scale_value(self):
    """The scale as a Python float."""
    return self._loss_scale_value

  @property
  def skip_non_finite(self):
    """Whether `update` reports non-finite gradients (the constructor argument)."""
    return self._skip_non_finite

  def __call__(self):
    """Returns the loss scale as a scalar float32 tensor."""
    return tf.convert_to_tensor(self._loss_scale_value, tf.float32)

  def update(self, grads):
    """A fixed scale never changes: returns `(no-op or None, should_apply)`.

    `should_apply` is the Python bool True unless `skip_non_finite`; with it, a
    scalar bool tensor, True iff every gradient in the nested `grads` is finite
    on every replica. Gradients that came out of `unscale_gradients` are not
    read again: their flag was computed there, by the fused op in graphs
    (finite.py, NOTE [flag of the op], NOTE [flag registry]); other gradients
    are checked here. Callable in a cross-replica
    context (TF's compat wrapper, with per-replica gradients), in a replica
    context (the flag is all-reduced) and without a strategy.
    """
    if not self._skip_non_finite:
      del grads
      return control_flow_ops.no_op(), True
    return control_flow_ops.no_op(), finite.all_finite_in_sync(grads)

  def scale_loss(self, loss):
    """Returns `loss * scale`: FixedScaleLoss in graphs, arithmetic eagerly or under XLA."""
    return scaling.scale_loss(loss, self._loss_scale_value)

  def unscale_gradients(self, grads):
    """Divides every gradient in the nested `grads` by the scale (FixedUnscaleGrads
    in graphs); with `skip_non_finite`, through `scaling.unscale_and_check`, so
    that `update` finds their flag."""
    if self._skip_non_finite:
      return scaling.unscale_and_check(grads, self._loss_scale_value)[0]
    return scaling.unscale_gradients(grads, self._loss_scale_value)

  def get_config(self):
    """`{'loss_scale_value': v}`, TF 2.4's config (which TF's compat class also
    reads), plus `'skip_non_finite': True` only when it is on: configs without
    the key load with the default, False."""
    config = {"loss_scale_value": self._loss_scale_value}
    if self._skip_non_finite:
      config["skip_non_finite"] = True
    return config

  def __repr__(self):
    """TF's repr, `FixedLossScale(1024.0)`, naming `skip_non_finite` only when on."""
    if self._skip_non_finite:
      return f"FixedLossScale({self._loss_scale_value!r}, skip_non_finite=True)"
    return f"FixedLossScale({self._loss_scale_value!r})"


def as_fixed_loss_scale(
    loss_scale, dynamic_hint="tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer"):
  """Returns `loss_scale` as a `fixed_loss_scale.FixedLossScale`: the fixed
  scales the optimizer wrappers accept (the TF1 compat wrapper, the Keras 3
  FixedLossScaleOptimizer; `dynamic_hint` names the class to use instead).

  Accepts a Python or numpy number, this package's `FixedLossScale`, or TF's own
  `tf.compat.v1.mixed_precision.FixedLossScale` (converted, same value).

  Raises:
    ValueError: for None, 'dynamic', a DynamicLossScale or anything else that is
      not a fixed scale, and for numbers that are not a usable scale.
  """
  if isinstance(loss_scale, FixedLossScale):
    return loss_scale
  if isinstance(loss_scale, tf.compat.v1.mixed_precision.FixedLossScale):
    return FixedLossScale(loss_scale._loss_scale_value)  # pylint: disable=protected-access
  if loss_scale is None:
    # TF's MixedPrecisionLossScaleOptimizer's words, then ours.
    raise ValueError("loss_scale cannot be None; pass a number (at least 1) or a "
                     f"FixedLossScale, or for dynamic loss scaling use {dynamic_hint}")
  if isinstance(loss_scale, (str, LossScale, dict)):
    raise ValueError(
        f"loss_scale must be a number or a FixedLossScale, got {loss_scale!r}; for dynamic "
        f"loss scaling use {dynamic_hint}")
  try:
    return FixedLossScale(loss_scale)
  except TypeError as error:
    raise ValueError(f"loss_scale must be a number or a FixedLossScale: {error}") from None


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
