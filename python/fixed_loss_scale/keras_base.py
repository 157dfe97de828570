"""The Keras 3 side of the apply step (apply_step.py), shared by both Keras wrappers.

keras.py's `FixedLossScaleOptimizer` and keras_dynamic.py's `LossScaleOptimizer`
subclass `keras.optimizers.LossScaleOptimizer` and keep its `apply` (build on
first use, then `_tf_apply`); each overrides `_tf_apply` with a few calls to
this module:

- `prepare(optimizer, grads, variables, scale, check)`: `apply_step.prepare`
  with Keras 3's rules: the variables Keras overwrites with their gradient
  keep it as given, and an inner `global_clipnorm` is clipped from the
  unscaling pass with Keras's own expression (clipping.py, NOTE [fused global
  clipping]);
- `inner_apply(step, optimizer, trainable_variables)`: the inner optimizer's
  `apply` of `step.gradients()`, its global clipping skipped when the step
  clipped; an `apply_fn` for `apply_step.apply_if_finite`.

TensorFlow backend only: importing this module (so either wrapper) under
another Keras backend raises ImportError.
"""

import functools

import keras

from fixed_loss_scale import apply_step
from fixed_loss_scale import clipping

if keras.backend.backend() != "tensorflow":
  raise ImportError("fixed_loss_scale.keras needs the TensorFlow Keras backend; "
                    f"KERAS_BACKEND is {keras.backend.backend()!r}")


def prepare(optimizer, grads, variables, scale, check, unscale_in_update=False):
  """`apply_step.prepare` for a Keras 3 wrapper `optimizer` (module docstring);
  `unscale_in_update`: the update unscales (the fused update)."""
  clip_norm = clipping.fused_global_clipnorm(optimizer.inner_optimizer)
  clip = None
  if clip_norm is not None:
    clip = functools.partial(clipping.keras_clip_by_global_norm, clip_norm=clip_norm)
  return apply_step.prepare(grads, variables, scale, check=check,
                            keep=optimizer._overwrite_variable_with_gradient,  # pylint: disable=protected-access
                            clip=clip, unscale_in_update=unscale_in_update)


def inner_apply(step, optimizer, trainable_variables):
  """The inner optimizer's apply of `step.gradients()`; without its global
  clipping when the step clipped them."""
  inner = optimizer.inner_optimizer
  grads = step.gradients()
  if step.clipped:
    with clipping.inner_global_clipping_skipped(inner):
      inner.apply(grads, trainable_variables=trainable_variables)
  else:
    inner.apply(grads, trainable_variables=trainable_variables)
