"""LossScaleOptimizer: Keras 3's dynamic LossScaleOptimizer on the package's check and unscale ops.

A drop-in for `keras.optimizers.LossScaleOptimizer` (its source:
keras/src/optimizers/loss_scale_optimizer.py), of which it is a subclass: the
same constructor arguments, variables (`step_counter`, `dynamic_scale`, in that
order, then the inner optimizer's), `get_config`/`from_config` and checkpoint
layout, so checkpoints and weight files move between the two classes, and the
same trajectory of the scale (halved after a step with inf/NaN gradients,
which is skipped; doubled after `dynamic_growth_steps` finite steps). What
differs, on the TensorFlow backend (the only one this package supports):

- Keras checks every gradient with `all(isfinite(g))`, one op per gradient,
  and divides each by the scale in the branch where all are finite. Here the
  check is one op per group of gradients (apply_step.py, the step both Keras
  wrappers share): on a CPU the read-only FixedCheckGrads, the gradients
  unscaled inside the branch; on a GPU the fused FixedUnscaleGradsAndCheck,
  whose unscaled outputs the branch takes (scaling.py, NOTE [check before the
  skip]); eagerly and under XLA, arithmetic.
- With an inner `global_clipnorm`, the check also gives the squared norm and
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

import functools

import keras
import tensorflow as tf

from fixed_loss_scale import apply_step
from fixed_loss_scale import finite
from fixed_loss_scale import fused_update as fused_update_lib
from fixed_loss_scale import keras_base

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
# and doubles without a ceiling. The ops take any positive normal float32
# scale and computes TensorFlow's arithmetic there (NOTE [tensor loss scale
# range] in tf_ops/core/tensor_span.h), so the trajectory stays Keras's; one
# difference remains there: the flag is the unscaled gradients', so below 1 a
# finite gradient whose quotient overflows skips the step, where Keras (which
# checks the scaled gradients) applies an inf.


@keras.saving.register_keras_serializable(package="fixed_loss_scale", name="LossScaleOptimizer")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """`keras.optimizers.LossScaleOptimizer`, checked and unscaled by the
  package's ops (see the module docstring).

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

  `fused_update` (default True): where the inner optimizer is exactly SGD,
  Adam or AdamW and the step allows it (fused_update.py), the finite step is
  one FixedApplySgd / FixedApplyAdam op on the scaled gradients instead of the
  inner optimizer's `apply`: the same weights, slots and iterations. False
  keeps the inner `apply` always; `get_config` holds it only when False.
  """

  def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
               name=None, fused_update=True, **kwargs):
    super().__init__(inner_optimizer, initial_scale=initial_scale,
                     dynamic_growth_steps=dynamic_growth_steps, name=name, **kwargs)
    self._fused_update = fused_update_lib.check_fused_update_argument(
        fused_update, type(self).__name__)

  def get_config(self):
    config = super().get_config()
    if not self._fused_update:
      config["fused_update"] = False
    return config

  def _tf_apply(self, grads, trainable_variables=None):
    """Keras's `apply` calls this on TensorFlow: unscales and checks `grads` in
    one call, applies them with the inner optimizer if they are all finite on
    every replica, else skips the step, and updates the scale as Keras does
    (apply_step.py); with the fused update, checks them and the update
    unscales (fused_update.py, NOTE [fused update in the wrappers])."""
    grads = list(grads)
    variables = trainable_variables or self._trainable_variables
    update = fused_update_lib.plan_for(self, grads, variables)
    step = keras_base.prepare(self, grads, variables, tf.convert_to_tensor(self.dynamic_scale),
                              check=True, unscale_in_update=update is not None)
    apply_step.apply_if_finite(step, functools.partial(self._handle_finite_unscaled, update=update),
                               self._stateful_handle_non_finite_grads, args=(trainable_variables,))

  def _handle_finite_unscaled(self, step, trainable_variables, update=None):
    """Keras's `_stateful_handle_finite_grads` for a prepared step: the inner
    apply (or the fused `update`), then the growth schedule."""
    if update is None:
      keras_base.inner_apply(step, self, trainable_variables)
    else:
      fused_update_lib.apply_prepared(update, step)

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
