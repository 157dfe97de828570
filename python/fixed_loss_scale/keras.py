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
them; with `global_clipnorm`, an `apply` that unscales also gets the squared
global norm from its check pass and clips with it, so the gradients are not
read again for the norm (clipping.py, NOTE [fused global clipping]). Inside XLA
(`jit_compile=True`, or Keras's default `jit_compile="auto"` where it turns XLA
on) and eagerly the same numbers come from plain arithmetic. TensorFlow backend
only. For dynamic scaling: `LossScaleOptimizer` (keras_dynamic.py), Keras 3's
class on the package's check and unscale ops (docs/OVERFLOW.md).

Whether `apply`/`apply_gradients` unscale is fixed when the wrapper is built, by
its `unscale_in_apply` argument (saved in its config), and never inferred from
earlier calls: True (the default) for `fit` and Keras 3 loops, False for
tf.keras 2 loops that call `get_unscaled_gradients` before `apply_gradients`.

With `skip_non_finite=True` (or a `FixedLossScale(s, skip_non_finite=True)`)
`apply` skips a step whose gradients hold an inf or NaN on any replica: the
inner optimizer does not run, its `iterations` included, as in Keras 3's
`LossScaleOptimizer`; the scale stays fixed.

`LossScaleOptimizer` (keras_dynamic.py) is Keras 3's dynamic
`LossScaleOptimizer`, drop-in, on the same apply step (apply_step.py).
"""

import warnings

import keras

from fixed_loss_scale import apply_step
from fixed_loss_scale import fused_update as fused_update_lib
from fixed_loss_scale import keras_base
from fixed_loss_scale import scaling
from fixed_loss_scale.keras_dynamic import LossScaleOptimizer  # noqa: F401  (public name)
from fixed_loss_scale.loss_scale import as_fixed_loss_scale

# The base-optimizer arguments that Keras 3's LossScaleOptimizer refuses unless
# they have these values (older saved configs carry them); this class likewise.
_BASE_OPTIMIZER_DEFAULTS = {
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


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

  In a custom loop, either the Keras 3 way (what `fit` does), with the default
  `unscale_in_apply=True`:

  ```python
  with tf.GradientTape() as tape:
    scaled_loss = opt.scale_loss(loss_fn())
  opt.apply(tape.gradient(scaled_loss, variables), variables)  # unscales, then applies
  ```

  or the tf.keras 2 way, for code written against tf.keras 2's
  `LossScaleOptimizer`, with `unscale_in_apply=False`:

  ```python
  opt = FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 1024, unscale_in_apply=False)
  scaled_loss = opt.get_scaled_loss(loss)
  grads = opt.get_unscaled_gradients(tape.gradient(scaled_loss, variables))
  grads, _ = tf.clip_by_global_norm(grads, 1.0)       # anything in between
  opt.apply_gradients(zip(grads, variables))          # applies them as they are
  ```

  What `apply` does depends on `unscale_in_apply` only, never on what was
  called before: `get_unscaled_gradients` just returns unscaled copies (use it
  to log gradients in either mode).

  Args:
    inner_optimizer: The `keras.optimizers.Optimizer` to wrap. Create it (and
      the model) inside the distribution strategy's scope when using one. Its
      `loss_scale_factor`, if set, is cleared (with a warning) so that
      gradients are not unscaled twice.
    loss_scale: A Python or numpy number (at least 1, at most 2**126) or
      a `FixedLossScale`.
    name: Optional name of this optimizer.
    skip_non_finite: None (default): as `loss_scale` says (a
      `FixedLossScale`'s `skip_non_finite`; False for a number). True: `apply`
      skips a step where any gradient is inf or NaN on any replica (the flag
      comes from the check before the decision, apply_step.py, and is agreed
      across replicas). Saved by `get_config` when True.
    unscale_in_apply: True (default): `apply` and `apply_gradients` divide the
      gradients they are given by the scale, as Keras 3's `LossScaleOptimizer`
      does; `fit` needs this. False: they pass the gradients to the inner
      optimizer as given, which must then already be unscaled (tf.keras 2
      loops: `get_unscaled_gradients`, then `apply_gradients`); `scale_loss`,
      which `fit` calls before `apply`, then raises ValueError, and the
      tf.keras 2 name `get_scaled_loss` scales the loss. Saved by
      `get_config`, so `.keras` files keep it.
    fused_update: True (default): where the inner optimizer is exactly SGD,
      Adam or AdamW and the step allows it (fused_update.py), `apply` (with
      `unscale_in_apply`) is one FixedApplySgd / FixedApplyAdam op on the
      scaled gradients instead of the inner optimizer's `apply`: the same
      weights, slots and iterations. False: the inner `apply` always. Saved by
      `get_config` only when False.

  Raises:
    ValueError: for a base-optimizer argument (`clipnorm`, ...: set it on the
      inner optimizer), any other unknown argument, an `inner_optimizer` that is
      not a Keras optimizer or is already a `LossScaleOptimizer`, a
      `loss_scale` that is not a usable fixed scale, an `unscale_in_apply`
      that is not a bool, or a `skip_non_finite` of False for a
      `FixedLossScale` that skips.
    TypeError: for a `skip_non_finite` that is not None or a bool (as
      `FixedLossScale` says).
  """

  def __init__(self, inner_optimizer, loss_scale, name=None, unscale_in_apply=True,
               skip_non_finite=None, fused_update=True, **kwargs):
    for arg_name, default_value in _BASE_OPTIMIZER_DEFAULTS.items():
      if arg_name in kwargs:
        value = kwargs.pop(arg_name)
        if value is not default_value and value != default_value:
          # Keras 3's LossScaleOptimizer's words, then ours.
          if arg_name == "loss_scale_factor":
            hint = ("; but this wrapper's scale is its `loss_scale` argument, and it clears "
                    "the inner optimizer's loss_scale_factor so gradients are not unscaled twice")
          else:
            hint = ("; the wrapper unscales the gradients first, then the inner optimizer "
                    "clips, decays and applies the true gradients")
          raise ValueError(
              f"FixedLossScaleOptimizer does not support `{arg_name}`. Instead, set "
              f"`{arg_name}` on the `inner_optimizer`{hint}")
    if kwargs:
      raise ValueError("FixedLossScaleOptimizer does not support arguments: "
                       f"`{'`, `'.join(kwargs)}`.")
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
      raise ValueError("inner_optimizer must be a keras.optimizers.Optimizer, got "
                       f"{type(inner_optimizer).__name__}")
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
      raise ValueError("inner_optimizer is already a LossScaleOptimizer; wrap its "
                       "inner_optimizer instead")
    if not isinstance(unscale_in_apply, bool):
      raise ValueError("unscale_in_apply must be True (apply unscales: fit, Keras 3 loops) "
                       "or False (apply takes unscaled gradients: tf.keras 2 loops), got "
                       f"{unscale_in_apply!r}")
    fixed = as_fixed_loss_scale(loss_scale, dynamic_hint="keras.optimizers.LossScaleOptimizer")
    if skip_non_finite is None:
      skip_non_finite = fixed.skip_non_finite
    elif not isinstance(skip_non_finite, bool):
      raise TypeError("skip_non_finite must be None (as loss_scale says), True or False, got "
                      f"{skip_non_finite!r}")
    elif fixed.skip_non_finite and not skip_non_finite:
      raise ValueError(f"skip_non_finite=False contradicts loss_scale={fixed!r}")
    loss_scale = fixed.loss_scale_value
    # LossScaleOptimizer.__init__ is skipped: it sets up dynamic scaling.
    keras.optimizers.Optimizer.__init__(self, learning_rate=0.0, name=name)
    self.inner_optimizer = inner_optimizer
    self._loss_scale_value = loss_scale
    self._unscale_in_apply = unscale_in_apply
    self._skip_non_finite = skip_non_finite
    self._fused_update = fused_update_lib.check_fused_update_argument(
        fused_update, type(self).__name__)
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

  @property
  def unscale_in_apply(self):
    """Whether `apply`/`apply_gradients` unscale the gradients they are given
    (the constructor argument; it cannot change)."""
    return self._unscale_in_apply

  @property
  def skip_non_finite(self):
    """Whether `apply` skips steps with inf/NaN gradients (the constructor argument)."""
    return self._skip_non_finite

  def build(self, var_list):
    if not self.inner_optimizer.built:
      self.inner_optimizer.build(var_list)
    keras.optimizers.Optimizer.build(self, var_list)

  def scale_loss(self, loss):
    """Returns `loss * loss_scale` (FixedScaleLoss in graphs).

    Raises:
      ValueError: if built with `unscale_in_apply=False`, where `apply` would
        take the scaled gradients that `fit` (which calls `scale_loss`) passes
        it as unscaled ones.
    """
    if not self._unscale_in_apply:
      raise ValueError(
          "FixedLossScaleOptimizer was built with unscale_in_apply=False: apply() takes the "
          "gradients it is given as already unscaled, so the Keras 3 pair scale_loss()/apply() "
          "(and so model.fit) would apply gradients loss_scale times too large. Use "
          "get_scaled_loss() and get_unscaled_gradients() before apply_gradients() (tf.keras 2 "
          "style), or build the wrapper with unscale_in_apply=True (the default)")
    return scaling.scale_loss(loss, self._loss_scale_value)

  def get_scaled_loss(self, loss):
    """tf.keras 2 name of `scale_loss`: returns `loss * loss_scale`, whatever
    `unscale_in_apply` is."""
    return scaling.scale_loss(loss, self._loss_scale_value)

  def get_unscaled_gradients(self, grads):
    """Returns the list `grads` divided by the scale (FixedUnscaleGrads in graphs);
    None stays None, tf.IndexedSlices keep their indices. It changes nothing
    else: whether `apply` unscales again is `unscale_in_apply`'s business.
    With `skip_non_finite`, their flag is remembered for `apply`."""
    return list(self._unscale(list(grads)))

  def _unscale(self, grads):
    if self._skip_non_finite:
      return scaling.unscale_and_check(grads, self._loss_scale_value)[0]
    return scaling.unscale_gradients(grads, self._loss_scale_value)

  def _tf_apply(self, grads, trainable_variables=None):
    """Keras's `apply` calls this on TensorFlow: unscales `grads` if
    `unscale_in_apply` (the default) and lets the inner optimizer clip and
    apply them; with an inner `global_clipnorm`, the check pass also gives the
    squared global norm and the wrapper clips (clipping.py, NOTE [fused global
    clipping]). With `skip_non_finite` the inner optimizer runs only if every
    gradient is finite on every replica (apply_step.apply_if_finite; the flag
    comes from the check before the decision or, for gradients unscaled before
    `apply_gradients`, from finite.all_finite, which finds the flag
    `get_unscaled_gradients` computed: finite.py, NOTE [flag of the op], NOTE
    [flag registry]). Unlike Keras's class, the flag is summed over the
    replicas rather than taken from the first one, so an overflow on any
    replica skips the step on all of them."""
    grads = list(grads)
    check = self._skip_non_finite
    update = None
    if self._unscale_in_apply:
      variables = (list(trainable_variables)
                   if trainable_variables is not None else self._trainable_variables)
      update = fused_update_lib.plan_for(self, grads, variables)
      if update is not None and not check and update.clip_norm is None:
        # NOTE [fused update in the wrappers]: no flag and no norm to wait for.
        update.apply(grads, self._loss_scale_value)
        return
      step = keras_base.prepare(self, grads, variables, self._loss_scale_value, check=check,
                                unscale_in_update=update is not None)
    else:
      step = apply_step.given(grads, check=check)
    apply_fn = keras_base.inner_apply
    if update is not None:
      apply_fn = lambda step, *_: fused_update_lib.apply_prepared(update, step)  # noqa: E731
    if check:
      apply_step.apply_if_finite(step, apply_fn, args=(self, trainable_variables))
    else:
      apply_fn(step, self, trainable_variables)

  def stateless_apply(self, optimizer_variables, grads, trainable_variables):
    raise ValueError("FixedLossScaleOptimizer does not support stateless_apply "
                     "(the TensorFlow backend has none)")

  def get_config(self):
    """The constructor arguments; `skip_non_finite` only when True, so configs
    without it load with the default (no skipping, as before it existed)."""
    config = {
        "name": self.name,
        "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        "loss_scale": self.loss_scale,
        "unscale_in_apply": self.unscale_in_apply,
    }
    if self._skip_non_finite:
      config["skip_non_finite"] = True
    if not self._fused_update:
      config["fused_update"] = False
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    """Rebuilds the wrapper; a config saved before `unscale_in_apply` existed
    gets the default, True."""
    config = dict(config)
    inner_optimizer = keras.saving.deserialize_keras_object(
        config.pop("inner_optimizer"), custom_objects=custom_objects)
    return cls(inner_optimizer, **config)

  def __repr__(self):
    skip = ", skip_non_finite=True" if self._skip_non_finite else ""
    return (f"FixedLossScaleOptimizer({type(self.inner_optimizer).__name__}, "
            f"loss_scale={self.loss_scale!r}, unscale_in_apply={self.unscale_in_apply!r}{skip})")
