"""FixedLossScaleOptimizer: a Keras 3 optimizer wrapper with a fixed loss scale.

Keras 3's `LossScaleOptimizer` is dynamic only (`dynamic=False` raises), and the
fixed-scale replacement it suggests, the base optimizer's `loss_scale_factor`,
divides each gradient in its own op by a Python float -- for float16 gradients
that float is converted to float16, so scales of 65536 and above overflow to inf
and every gradient becomes zero. Under the `mixed_float16` policy
`model.compile` also wraps any optimizer that is not a `LossScaleOptimizer` in a
dynamic one and clears its `loss_scale_factor`, so that fixed scale is silently
replaced by dynamic scaling unless `auto_scale_loss=False` is passed.

`FixedLossScaleOptimizer` subclasses `keras.optimizers.LossScaleOptimizer` (so
`compile` keeps it as it is under `mixed_float16`, and Keras callbacks find its
`inner_optimizer`), replaces the dynamic machinery by a constant, scales the loss
with `FixedScaleLoss` and unscales all gradients with `FixedUnscaleGrads` (one
op, or on CPU one per 1 MiB group: scaling.py NOTE [CPU groups]) before the
inner optimizer clips (`clipnorm`, `global_clipnorm`, `clipvalue`) and applies
them. Inside XLA (`jit_compile=True`, or Keras's default
`jit_compile="auto"` where it turns XLA on) and eagerly the same numbers come
from plain arithmetic. TensorFlow backend only.
"""

import threading
import warnings

import keras

from fixed_loss_scale import scaling
from fixed_loss_scale.optimizer import as_fixed_loss_scale

if keras.backend.backend() != "tensorflow":
  raise ImportError("fixed_loss_scale.keras needs the TensorFlow Keras backend; "
                    f"KERAS_BACKEND is {keras.backend.backend()!r}")


class _UnscaledByCaller:
  """Per-thread flag: `get_unscaled_gradients` ran and `apply` has not run since.

  A plain object (not a dict), so that Keras/TF attribute tracking ignores it.
  Per thread, because MirroredStrategy runs each replica in its own thread.
  """

  def __init__(self):
    self._threads = set()

  def set(self):
    self._threads.add(threading.get_ident())

  def pop(self):
    ident = threading.get_ident()
    was_set = ident in self._threads
    self._threads.discard(ident)
    return was_set


@keras.saving.register_keras_serializable(package="fixed_loss_scale",
                                          name="FixedLossScaleOptimizer")
class FixedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """An optimizer wrapper that scales the loss by a fixed factor.

  ```python
  keras.mixed_precision.set_global_policy("mixed_float16")
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(1e-3, clipnorm=1.0), 1024)
  model.compile(optimizer=opt, loss="mse")   # jit_compile False, True or "auto"
  model.fit(x, y)
  ```

  In a custom loop, either the Keras 3 way (what `fit` does):

  ```python
  with tf.GradientTape() as tape:
    scaled_loss = opt.scale_loss(loss_fn())
  opt.apply(tape.gradient(scaled_loss, variables), variables)  # unscales, then applies
  ```

  or the tf.keras 2 way, unchanged from code written for tf.keras 2's
  `LossScaleOptimizer`:

  ```python
  scaled_loss = opt.get_scaled_loss(loss)
  grads = opt.get_unscaled_gradients(tape.gradient(scaled_loss, variables))
  grads, _ = tf.clip_by_global_norm(grads, 1.0)       # anything in between
  opt.apply_gradients(zip(grads, variables))          # does not unscale again
  ```

  `apply`/`apply_gradients` unscale the gradients they are given unless
  `get_unscaled_gradients` was called (in the same thread, i.e. the same
  replica) since the previous `apply`; then they take them as already unscaled.

  Args:
    inner_optimizer: The `keras.optimizers.Optimizer` to wrap. Create it (and
      the model) inside the distribution strategy's scope when using one. Its
      `loss_scale_factor`, if set, is cleared (with a warning) so that
      gradients are not unscaled twice.
    loss_scale: A Python or numpy number (at least 1, at most 2**126) or
      a `FixedLossScale`.
    name: Optional name of this optimizer.
  """

  def __init__(self, inner_optimizer, loss_scale, name=None, **kwargs):
    if kwargs:
      raise ValueError("FixedLossScaleOptimizer does not support arguments: "
                       f"`{'`, `'.join(kwargs)}`; set them on the inner optimizer")
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
      raise ValueError("inner_optimizer must be a keras.optimizers.Optimizer, got "
                       f"{type(inner_optimizer).__name__}")
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
      raise ValueError("inner_optimizer is already a LossScaleOptimizer; wrap its "
                       "inner_optimizer instead")
    loss_scale = as_fixed_loss_scale(
        loss_scale, dynamic_hint="keras.optimizers.LossScaleOptimizer").loss_scale_value
    # LossScaleOptimizer.__init__ is skipped: it sets up dynamic scaling.
    keras.optimizers.Optimizer.__init__(self, learning_rate=0.0, name=name)
    self.inner_optimizer = inner_optimizer
    self._loss_scale_value = loss_scale
    self._unscaled_by_caller = _UnscaledByCaller()
    if inner_optimizer.loss_scale_factor is not None:
      warnings.warn(
          f"FixedLossScaleOptimizer: clearing inner_optimizer.loss_scale_factor="
          f"{inner_optimizer.loss_scale_factor}; the wrapper's loss_scale={loss_scale} is "
          "applied instead", stacklevel=2)
      inner_optimizer.loss_scale_factor = None

  @property
  def loss_scale(self):
    """The fixed scale, a Python float."""
    return self._loss_scale_value

  @property
  def initial_scale(self):
    """The scale (for code written against LossScaleOptimizer)."""
    return self.loss_scale

  @property
  def dynamic(self):
    """Always False (tf.keras 2 API)."""
    return False

  def build(self, var_list):
    if not self.inner_optimizer.built:
      self.inner_optimizer.build(var_list)
    keras.optimizers.Optimizer.build(self, var_list)

  def scale_loss(self, loss):
    """Returns `loss * loss_scale` (FixedScaleLoss in graphs)."""
    return scaling.scale_loss(loss, self._loss_scale_value)

  def get_scaled_loss(self, loss):
    """tf.keras 2 name of `scale_loss`."""
    return self.scale_loss(loss)

  def get_unscaled_gradients(self, grads):
    """Returns the list `grads` divided by the scale (FixedUnscaleGrads in graphs);
    None stays None, tf.IndexedSlices keep their indices."""
    self._unscaled_by_caller.set()
    return list(scaling.unscale_gradients(list(grads), self._loss_scale_value))

  def apply(self, grads, trainable_variables=None):
    """Unscales `grads` (unless `get_unscaled_gradients` already did) and lets the
    inner optimizer clip and apply them."""
    if not self.built:
      with keras.name_scope(self.name, caller=self):
        self.build(trainable_variables)
      self.built = True
    grads = list(grads)
    if not self._unscaled_by_caller.pop():
      variables = (list(trainable_variables)
                   if trainable_variables is not None else self._trainable_variables)
      # Variables updated by overwriting with their gradient (float8 scale and
      # amax history) get their gradient as it is, as in LossScaleOptimizer.
      keep = [
          g is None or self._overwrite_variable_with_gradient(v)
          for g, v in zip(grads, variables)
      ]
      unscaled = iter(scaling.unscale_gradients([g for g, k in zip(grads, keep) if not k],
                                                self._loss_scale_value))
      grads = [g if k else next(unscaled) for g, k in zip(grads, keep)]
    self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

  def stateless_apply(self, optimizer_variables, grads, trainable_variables):
    raise ValueError("FixedLossScaleOptimizer does not support stateless_apply "
                     "(the TensorFlow backend has none)")

  def get_config(self):
    return {
        "name": self.name,
        "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        "loss_scale": self.loss_scale,
    }

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    inner_optimizer = keras.saving.deserialize_keras_object(
        config.pop("inner_optimizer"), custom_objects=custom_objects)
    return cls(inner_optimizer, **config)

  def __repr__(self):
    return (f"FixedLossScaleOptimizer({type(self.inner_optimizer).__name__}, "
            f"loss_scale={self.loss_scale!r})")
