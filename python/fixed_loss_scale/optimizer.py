"""MixedPrecisionLossScaleOptimizer for `tf.compat.v1.train` optimizers.

A subclass of TensorFlow's own compat wrapper
(`tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer`) that keeps all
of its behaviour -- `minimize`, `compute_gradients`/`apply_gradients`, callable
losses, `global_step`, tf.distribute handling, checkpoint dependencies
(`base_optimizer`, `loss_scale`) -- and changes only the two places where it
touches the scale:

- the loss is scaled by `FixedScaleLoss` (TF: `loss * cast(scale, loss.dtype)`);
- all gradients are unscaled by `FixedUnscaleGrads` (one op, or on CPU one per
  1 MiB group of consecutive gradients: scaling.py NOTE [CPU groups]; TF: one
  `grad * (1 / scale)` per gradient, with a float32 reciprocal, which fails for
  float16, bfloat16 and float64 gradients).

Eagerly and inside XLA (`jit_compile=True`) the same numbers come from plain
arithmetic (see `fixed_loss_scale.scaling`). For float32 the results are
bit-identical to TF's wrapper with the same scale.

A dynamic scale (`"dynamic"`, `fixed_loss_scale.DynamicLossScale` or TF's
compat `DynamicLossScale`) runs TF's own algorithm, its loss scaled as TF's
wrapper does and its gradients unscaled by the same arithmetic with the
scale as a tensor (`scaling.unscale_and_check`); a fixed scale with
`skip_non_finite=True` is treated like a dynamic one by `apply_gradients`
(`update`, then a conditional apply in a cross-replica context), so that a
step with inf/NaN gradients is skipped, `global_step` included.
"""

from tensorflow.python.training import optimizer as tf1_optimizer
from tensorflow.python.training.experimental import loss_scale as tf_loss_scale
from tensorflow.python.training.experimental import loss_scale_optimizer as tf_lso

from fixed_loss_scale import dynamic
from fixed_loss_scale import loss_scale as loss_scale_module
from fixed_loss_scale import scaling
from fixed_loss_scale.loss_scale import as_fixed_loss_scale


def as_loss_scale(loss_scale):
  """What the TF1 wrapper accepts: `as_fixed_loss_scale`'s fixed scales, and
  for dynamic scaling `"dynamic"` (a new `fixed_loss_scale.DynamicLossScale()`)
  or a DynamicLossScale object (this package's or TF's compat one, used as it
  is, its variables included).

  Raises:
    ValueError: for None, other strings, dicts, other LossScale classes and
      numbers that are not a usable scale, with TF's words first in the
      messages.
  """
  if isinstance(loss_scale, tf_loss_scale.DynamicLossScale):
    return loss_scale
  if isinstance(loss_scale, str) and loss_scale == "dynamic":
    return dynamic.DynamicLossScale()
  hint = "'dynamic' or a DynamicLossScale (fixed_loss_scale.DynamicLossScale, or TF's compat one)"
  if loss_scale is None:
    # TF's MixedPrecisionLossScaleOptimizer's words, then ours.
    raise ValueError("loss_scale cannot be None; pass a number (at least 1) or a "
                     f"FixedLossScale, or for dynamic loss scaling {hint}")
  fixed = (loss_scale_module.FixedLossScale, tf_loss_scale.FixedLossScale)
  if (isinstance(loss_scale, (str, dict)) or
      (isinstance(loss_scale, tf_loss_scale.LossScale) and not isinstance(loss_scale, fixed))):
    raise ValueError(f"loss_scale must be a number, a FixedLossScale, {hint}; got "
                     f"{loss_scale!r}")
  return as_fixed_loss_scale(loss_scale)


class MixedPrecisionLossScaleOptimizer(tf_lso.MixedPrecisionLossScaleOptimizer):
  """Wraps a `tf.compat.v1.train.Optimizer` and applies a loss scale.

  Usage is the same as TF's compat wrapper:

  ```python
  opt = tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)
  opt = fixed_loss_scale.MixedPrecisionLossScaleOptimizer(opt, loss_scale=1024)
  train_op = opt.minimize(loss, global_step=global_step)
  ```

  Args:
    opt: The `tf.compat.v1.train.Optimizer` to wrap.
    loss_scale: A Python or numpy number (at least 1, at most 2**126), a
      `FixedLossScale` (this package's, `skip_non_finite` honoured, or TF's
      compat one), `"dynamic"` (a new `fixed_loss_scale.DynamicLossScale()`)
      or a DynamicLossScale (this package's or TF's compat one).

  Raises:
    ValueError: if `opt` is not a TF1 optimizer or `loss_scale` is none of the
      above.
  """

  def __init__(self, opt, loss_scale):
    if not isinstance(opt, tf1_optimizer.Optimizer):
      # TF's wrapper's words, then ours.
      raise ValueError(f'"opt" must be an instance of Optimizer, but got: {type(opt)}; it '
                       "must be a tf.compat.v1.train.Optimizer (for a Keras optimizer use "
                       "fixed_loss_scale.keras.FixedLossScaleOptimizer)")
    super().__init__(opt, as_loss_scale(loss_scale))

  @property
  def loss_scale(self):
    """The loss scale in use: a `FixedLossScale` or a `DynamicLossScale`."""
    return self._loss_scale

  def _doing_dynamic_loss_scaling(self):
    """True where `apply_gradients` must ask `update` whether to apply: a
    dynamic scale, or a fixed one that skips non-finite steps."""
    return (isinstance(self._loss_scale, tf_loss_scale.DynamicLossScale) or
            getattr(self._loss_scale, "skip_non_finite", False))

  def _scale_loss(self, loss):
    loss_scale = self._loss_scale
    if not hasattr(loss_scale, "scale_loss"):  # TF's compat DynamicLossScale
      return super()._scale_loss(loss)
    if callable(loss):

      def scaled_loss():
        return loss_scale.scale_loss(loss())

      return scaled_loss
    return loss_scale.scale_loss(loss)

  def _unscale_grads(self, grads):
    if not hasattr(self._loss_scale, "unscale_gradients"):  # TF's compat DynamicLossScale
      return list(scaling.unscale_gradients(list(grads), self._loss_scale()))
    return list(self._loss_scale.unscale_gradients(list(grads)))
