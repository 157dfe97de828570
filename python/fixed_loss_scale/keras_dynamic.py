"""LossScaleOptimizer: Keras 3's dynamic LossScaleOptimizer, unscaled and checked in one call.

A drop-in for `keras.optimizers.LossScaleOptimizer` (its source:
keras/src/optimizers/loss_scale_optimizer.py), of which it is a subclass: the
same constructor arguments, variables (`step_counter`, `dynamic_scale`, in that
order, then the inner optimizer's), `get_config`/`from_config` and checkpoint
layout, so checkpoints and weight files move between the two classes, and the
same trajectory of the scale (halved after a step with inf/NaN gradients,
which is skipped; doubled after `dynamic_growth_steps` finite steps). What
differs, on the TensorFlow backend (the only one this package supports):

- Keras checks every gradient with `all(isfinite(g))` and, in the branch
  where all are finite, divides each by the scale: two reads of every
  gradient. Here one call, `scaling.unscale_and_check(grads,
  self.dynamic_scale)` (the fused FixedUnscaleGradsAndCheck op in graphs,
  arithmetic eagerly and under XLA), unscales and gives the flag, and the
  branch takes the unscaled gradients (NOTE [fused check seam] in scaling.py).
- With an inner `global_clipnorm`, that call also gives the squared norm and
  the wrapper clips with Keras's own expression; the inner optimizer does not
  read the gradients again (clipping.py, NOTE [fused global clipping]).
- Under a distribution strategy the flag is summed across replicas: an
  overflow on any replica skips the step on all of them. Keras's class takes
  the first replica's flag when the strategy needs merge_call
  (MirroredStrategy), so an overflow on another replica alone is applied there.

Numbers (NOTE [Keras drop-in numerics]): float32 gradients (float32 variables,
as under `mixed_float16`) and a power-of-two scale -- Keras's default 2**15, and
every scale it reaches from one -- give bit-identical weights and scales.
"""

import keras
import tensorflow as tf

from fixed_loss_scale import clipping
from fixed_loss_scale import finite
from fixed_loss_scale import scaling

if keras.backend.backend() != "tensorflow":
  raise ImportError("fixed_loss_scale.keras needs the TensorFlow Keras backend; "
                    f"KERAS_BACKEND is {keras.backend.backend()!r}")

# NOTE [Keras drop-in numerics]: Keras divides a gradient by the scale
# (`ops.divide(g, scale)`, float32), the seam multiplies by the float32
# reciprocal (FixedUnscaleGrads' numerics). For a power-of-two scale both are
# exact, so float32 gradients give the same bits; for another scale (an
# `initial_scale` of 1000, say) a value may differ by one float32 ulp. Keras
# divides a float16 or bfloat16 gradient in float32 and hands a float32 gradient
# on; the seam rounds the quotient once to the gradient's dtype (the ops'
# contract), so float16 *variables* may update by a different last bit.
#
# Keras's scale can leave the fixed scales' range [1, 2**126]: it halves
# without a floor (after 16 overflowing steps in a row from 2**15 it is below 1)
# and doubles without a ceiling. The fused op takes any positive normal float32
# scale and computes TensorFlow's arithmetic there (NOTE [tensor loss scale
# range] in tf_ops/core/tensor_span.h), so the trajectory stays Keras's; one
# difference remains there: the flag is the unscaled gradients', so below 1 a
# finite gradient whose quotient overflows skips the step, where Keras (which
# checks the scaled gradients) applies an inf.


def flag_in_sync(flag):
  """A replica's all-finite flag agreed across replicas (replica context): the
  flags summed, as finite.all_finite_in_sync does; the flag itself elsewhere."""
  if not tf.distribute.has_strategy():
    return flag
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return flag
  total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(flag, tf.float32))
  return tf.equal(total, context.num_replicas_in_sync)


class _Step:
  """One step's unscaled gradients (in the positions of the given ones), this
  replica's all-finite flag, and whether they are already clipped."""

  def __init__(self, grads, flag, clipped):
    self.grads = grads
    self.flag = flag
    self.clipped = clipped


def unscale_check_and_clip(optimizer, grads, variables, scale):
  """The unscaling half of a wrapper's `apply` (shared by both Keras wrappers).

  Gradients that are None or belong to variables overwritten with their
  gradient (float8 scale and amax history) are kept as given; the others go
  through one `unscale_and_check` call, with the sum of squares when the inner
  optimizer's global clipping is fused (NOTE [fused global clipping]), and are
  then clipped. The flag covers every non-None gradient, as Keras's
  `check_finite` does.
  """
  inner = optimizer.inner_optimizer
  keep = [g is None or optimizer._overwrite_variable_with_gradient(v)  # pylint: disable=protected-access
          for g, v in zip(grads, variables)]
  to_unscale = [g for g, k in zip(grads, keep) if not k]
  clip_norm = clipping.fused_global_clipnorm(inner)
  with_sum = clip_norm is not None and bool(to_unscale)
  result = scaling.unscale_and_check(to_unscale, scale, sum_of_squares=with_sum)
  unscaled, flag = result[0], result[1]
  if with_sum:
    unscaled = clipping.keras_clip_by_global_norm(unscaled, result[2], clip_norm)
  kept = [g for g, k in zip(grads, keep) if k and g is not None]
  if kept:
    flag = tf.logical_and(flag, finite.is_all_finite([finite.dense_part(g) for g in kept]))
  it = iter(unscaled)
  return _Step([g if k else next(it) for g, k in zip(grads, keep)], flag, with_sum)


def inner_apply(optimizer, grads, trainable_variables, clipped):
  """The inner optimizer's apply; without its global clipping when `clipped`."""
  if clipped:
    with clipping.inner_global_clipping_skipped(optimizer.inner_optimizer):
      optimizer.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
  else:
    optimizer.inner_optimizer.apply(grads, trainable_variables=trainable_variables)


@keras.saving.register_keras_serializable(package="fixed_loss_scale", name="LossScaleOptimizer")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """`keras.optimizers.LossScaleOptimizer`, with the unscaling and the finite
  check in one call (see the module docstring).

  ```python
  keras.mixed_precision.set_global_policy("mixed_float16")
  opt = fixed_loss_scale.keras.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
  model.compile(optimizer=opt, loss="mse")   # jit_compile False, True or "auto"
  ```

  Arguments, variables, config and checkpoints are Keras's
  (`inner_optimizer`, `initial_scale=2**15`, `dynamic_growth_steps=2000`,
  `name`); the `.keras` config names this class
  ("fixed_loss_scale>LossScaleOptimizer"). TensorFlow backend only;
  `stateless_apply` is Keras's (on TensorFlow the inner optimizer refuses it).
  """

  def apply(self, grads, trainable_variables=None):
    """Unscales and checks `grads` in one call; applies them with the inner
    optimizer if they are all finite on every replica, else skips the step,
    and updates the scale as Keras does."""
    if not self.built:
      with keras.name_scope(self.name, caller=self):
        self.build(trainable_variables)
      self.built = True
    self._tf_apply(grads, trainable_variables)

  def _tf_apply(self, grads, trainable_variables=None):
    if tf.distribute.in_cross_replica_context():
      raise ValueError("apply() must be called in a replica context.")  # Keras's words
    grads = list(grads)
    variables = trainable_variables or self._trainable_variables
    step = unscale_check_and_clip(self, grads, variables, tf.convert_to_tensor(self.dynamic_scale))
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
      tf.cond(flag_in_sync(step.flag),
              lambda: self._handle_finite_unscaled(step.grads, trainable_variables, step.clipped),
              self._stateful_handle_non_finite_grads)
      return

    def handle_cross_replica(distribution, grads, trainable_variables, flag):
      total = distribution.reduce(tf.distribute.ReduceOp.SUM, flag, axis=None)

      def apply_fn():
        distribution.extended.call_for_each_replica(
            self._handle_finite_unscaled, args=(grads, trainable_variables, step.clipped))

      # In the cross-replica context, as Keras's: a cond in a replica context
      # cannot hold the inner optimizer's merge_call.
      tf.cond(tf.equal(total, distribution.num_replicas_in_sync), apply_fn,
              self._stateful_handle_non_finite_grads)

    tf.distribute.get_replica_context().merge_call(
        handle_cross_replica,
        args=(step.grads, trainable_variables, tf.cast(step.flag, tf.float32)))

  def _handle_finite_unscaled(self, grads, trainable_variables, clipped):
    """Keras's `_stateful_handle_finite_grads` for gradients already unscaled:
    the inner apply, then the growth schedule."""
    inner_apply(self, grads, trainable_variables, clipped)

    def upscale():
      self.step_counter.assign(0)
      self.dynamic_scale.assign(keras.ops.multiply(self.dynamic_scale, 2.0))

    def increment():
      self.step_counter.assign_add(1)

    keras.ops.cond(keras.ops.equal(self.step_counter, self.dynamic_growth_steps - 1),
                   upscale, increment)

  def check_finite(self, grads):
    """Keras's `check_finite`: True iff every non-None gradient is finite; the
    flag remembered by `unscale_and_check` where there is one (finite.py)."""
    return finite.all_finite([g for g in grads if g is not None])
