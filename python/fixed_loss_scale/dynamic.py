"""DynamicLossScale: TF's compat dynamic loss scale, checked by this package's seam.

The algorithm, variables, checkpoint keys, constructor arguments and config of
`tf.compat.v1.mixed_precision.DynamicLossScale` (its source:
tensorflow/python/training/experimental/loss_scale.py), of which it is a
subclass, so TF's own `MixedPrecisionLossScaleOptimizer` treats it as dynamic
(it asks `update` only of DynamicLossScale instances) and checkpoints move
between the two classes. What differs:

- the finite check comes from `scaling.unscale_and_check` (NOTE [fused check
  seam]): `unscale_gradients` unscales and checks, and `update` reuses that
  flag instead of reading the gradients again (in graphs the fused
  FixedUnscaleGradsAndCheck op, whose flag update finds from the op, finite.py
  NOTE [flag of the op]; eagerly and under XLA, NOTE [flag registry]);
  gradients from elsewhere are checked as TF's class does;
- `unscale_gradients` handles float16, bfloat16 and float64 gradients (TF's
  compat wrapper's float32 reciprocal cannot multiply them), bit-identical to
  TF's wrapper on float32;
- the constructor validates its arguments, naming the argument and value
  (`ops.validate_loss_scale`, the package's one check of a scale).

Its repr, config and the types it accepts are TF's.

The scale's trajectory is TF's, bit for bit: the same ops update the same
variables (`current_loss_scale * multiplier` kept only if finite, `maximum(
current_loss_scale / multiplier, 1)`, the good-steps counter).
"""

import math
import numbers

import numpy as np
import tensorflow as tf
from tensorflow.python.training.experimental import loss_scale as tf_loss_scale

from fixed_loss_scale import finite
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

def _increment_period(value):
  """TF's `int(increment_period)` (a float such as 2. or 2.5 truncates, as in
  TF's class), refusing what TF would turn into a silent surprise: bool,
  strings, NaN, Inf and periods below 1."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise TypeError("increment_period must be a Python or numpy number, got "
                    f"{type(value).__name__}: {value!r}")
  if isinstance(value, numbers.Integral) or math.isfinite(value):
    period = int(value)
    if period >= 1:
      return period
  raise ValueError(f"increment_period must be at least 1, got {value}")


def _op_in_graph_mode(tensor):
  """The tensor eagerly, its op in a graph (what cond branches return in TF's class)."""
  return tensor if tf.executing_eagerly() else tensor.op


def _assign_if_finite(variable, value):
  return tf.compat.v1.cond(
      tf.math.is_finite(value), lambda: _op_in_graph_mode(variable.assign(value)), tf.no_op)


def update_scale(scale, good_steps, increment_period, multiplier, is_finite):
  """TF's dynamic algorithm, one step (also tf_keras's `_DynamicLossScaleState`
  and the tf_keras wrapper's): with finite gradients count the step, and after
  `increment_period` of them multiply the scale (kept only if the product is
  finite) and reset the count; otherwise divide it (never below 1) and reset
  the count. `scale` (float32) and `good_steps` (int64) are variables; returns
  the update (an op in a graph)."""

  def update_if_finite_grads():
    def increase_loss_scale():
      return tf.group(_assign_if_finite(scale, scale * multiplier), good_steps.assign(0))

    return tf.compat.v1.cond(good_steps + 1 >= increment_period, increase_loss_scale,
                             lambda: _op_in_graph_mode(good_steps.assign_add(1)))

  def update_if_not_finite_grads():
    return tf.group(good_steps.assign(0), scale.assign(tf.maximum(scale / multiplier, 1)))

  return tf.compat.v1.cond(is_finite, update_if_finite_grads, update_if_not_finite_grads)


class DynamicLossScale(tf_loss_scale.DynamicLossScale):
  """Loss scale that doubles every `increment_period` finite steps and halves on inf/NaN.

  TF's `tf.compat.v1.mixed_precision.DynamicLossScale`, with the finite check
  taken from `unscale_gradients` (see the module docstring). Use it with
  `fixed_loss_scale.MixedPrecisionLossScaleOptimizer` (which also takes
  `"dynamic"` for `DynamicLossScale()`), TF's own compat wrapper, or a custom
  loop:

  ```python
  loss_scale = fixed_loss_scale.DynamicLossScale()
  scaled = loss_scale.scale_loss(loss)          # under the tape
  grads = loss_scale.unscale_gradients(tape.gradient(scaled, variables))
  update_op, should_apply = loss_scale.update(grads)   # no second read of grads
  ```

  Args:
    initial_loss_scale: The scale to start from, a Python or numpy number in
      [1, float32 max] (default 2**15).
    increment_period: The scale is multiplied by `multiplier` after this many
      consecutive steps with finite gradients; a number, truncated to an int as
      TF's class does (2.5 gives 2), at least 1 (default 2000).
    multiplier: Factor by which the scale grows, and shrinks (never below 1)
      after a step with non-finite gradients; a number in [1, float32 max]
      (default 2). With 1 the scale stays fixed and non-finite steps are
      skipped -- a fixed scale that skips, for TF's own compat wrapper.

  Raises:
    TypeError: if an argument is not a number of the right kind (bool included).
    ValueError: if it is out of range.
  """

  # TF's __init__ (deprecated, logging so) is replaced, not called: the same
  # weights, created in the same order under the same names.
  def __init__(self, initial_loss_scale=2**15, increment_period=2000, multiplier=2.):  # pylint: disable=super-init-not-called
    tf_loss_scale.LossScale.__init__(self)  # pylint: disable=non-parent-init-called
    self._initial_loss_scale = ops.validate_loss_scale(
        initial_loss_scale, "initial_loss_scale", at_most=None)
    self._increment_period = _increment_period(increment_period)
    self._multiplier = ops.validate_loss_scale(multiplier, "multiplier", at_most=None)
    self._current_loss_scale = self._add_weight(
        name="current_loss_scale", dtype=tf.float32, initial_value=self._initial_loss_scale)
    # Consecutive steps with finite gradients since the last non-finite one or
    # change of the scale.
    self._num_good_steps = self._add_weight(name="good_steps", dtype=tf.int64, initial_value=0)

  def scale_loss(self, loss):
    """`loss * cast(scale, loss.dtype)`, as TF's compat wrapper scales it."""
    loss = tf.convert_to_tensor(loss)
    return loss * tf.cast(self(), loss.dtype)

  def unscale_gradients(self, grads):
    """The nested `grads` divided by the current scale (scaling.unscale_and_check:
    float32 reciprocal, half and bfloat16 in float32, float64 with the float64
    reciprocal; the fused op in graphs); `update` finds their flag."""
    return scaling.unscale_and_check(grads, self())[0]

  def update(self, grads):
    """Updates the scale from whether the nested `grads` are all finite.

    Returns `(update_op, should_apply)` as TF's class does: eagerly the scale
    is updated at once; in a graph `update_op` does it. `should_apply` is a
    bool tensor, the same on every replica (finite.all_finite_in_sync), found
    without reading gradients again when they came from `unscale_gradients`.
    """
    is_finite = finite.all_finite_in_sync(tf.nest.flatten(grads))
    update_op = update_scale(self._current_loss_scale, self._num_good_steps,
                             self._increment_period, self._multiplier, is_finite)
    return update_op, is_finite
