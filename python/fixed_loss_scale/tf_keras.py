"""LossScaleOptimizer for tf_keras (Keras 2), on this package's ops.

A drop-in for `tf_keras.mixed_precision.LossScaleOptimizer` (its source:
tf_keras/src/mixed_precision/loss_scale_optimizer.py), for code that stayed on
Keras 2 (`tf.keras` under TF_USE_LEGACY_KERAS=1, TensorFlow Model Garden's
`configure_optimizer`):

```python
opt = fixed_loss_scale.tf_keras.LossScaleOptimizer(tf_keras.optimizers.Adam(1e-3))
opt = fixed_loss_scale.tf_keras.LossScaleOptimizer(sgd, dynamic=False, initial_scale=1024)
```

Like tf_keras's class it builds `LossScaleOptimizerV3` for an optimizer of
`tf_keras.optimizers` and `LossScaleOptimizer` (exported here as
`LegacyLossScaleOptimizer`) for one of `tf_keras.optimizers.legacy`; each is a
subclass of tf_keras's class of that name, so the arguments (`inner_optimizer`,
`dynamic`, `initial_scale`, `dynamic_growth_steps`), variables, checkpoints,
`get_config` (TF <= 2.3 configs holding a FixedLossScale or DynamicLossScale
included), errors and `apply_gradients` -- aggregation, the skip, `iterations`,
tf.distribute -- are tf_keras's own. What differs:

- a fixed scale scales the loss with FixedScaleLoss and unscales every
  gradient with FixedUnscaleGrads (scaling.py; arithmetic eagerly and under
  XLA); tf_keras multiplies each gradient by the reciprocal in its own op;
- a dynamic scale (and a fixed one with `skip_non_finite=True`) unscales with
  `scaling.unscale_and_check`: one FixedUnscaleGradsAndCheck read gives the
  unscaled gradients and the all-finite flag, and the scale's `update` takes
  that flag (finite.py) instead of checking every gradient again, wherever the
  gradients it is given are the unscaled ones unchanged (one replica: the
  all-reduce is an identity, NOTE [flag through identities]); otherwise it
  checks them, as tf_keras does;
- `skip_non_finite=True` (opt-in, fixed scale only) skips a step whose
  gradients hold an inf or NaN, as a dynamic scale does (the inner optimizer
  does not run; `iterations` still counts the step, as in tf_keras's skip);
  the scale never changes. Saved by `get_config` only when True.

Numbers: float32 gradients (float32 variables, as under `mixed_float16`) give
tf_keras's weights, scales and step counts bit for bit, fixed and dynamic, with
overflows (tests/test_tf_keras.py); float16 gradients or a float16 loss may
differ in the last bit where the scale or its reciprocal is not a float16
number (tf_keras rounds it to float16 first, the ops do not).

Needs the tf-keras package (`pip install 'tf-fixed-loss-scale[tf-keras]'`);
without it importing this module raises ImportError saying so. Importing it
leaves `tf.keras` and Keras 3 as they are; in tf_keras it wraps
`convert_to_legacy_optimizer`, which then converts this package's V3 wrapper
to its legacy one and everything else as before (NOTE [legacy conversion]).
"""

import functools
import importlib
import sys

import numpy as np
import tensorflow as tf

try:
  import tf_keras
  from tf_keras.src.mixed_precision import loss_scale_optimizer as _tfk_lso
except ImportError as _error:
  raise ImportError(
      "fixed_loss_scale.tf_keras needs the tf-keras package (Keras 2), pinned to TensorFlow's "
      "minor version: pip install 'tf-fixed-loss-scale[tf-keras]' (or pip install "
      f"'tf-keras=={tf.__version__.rsplit('.', 1)[0]}.*'); import error: {_error}") from _error

from fixed_loss_scale import dynamic as _dynamic
from fixed_loss_scale import finite
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

_LegacyOptimizer = tf_keras.optimizers.legacy.Optimizer
_Optimizer = tf_keras.optimizers.Optimizer

# NOTE [flag through identities]: tf_keras all-reduces the gradients between
# the unscaling and the scale's update, and under the default strategy (one
# replica) that all-reduce is an IdentityN of them: the same values in new
# tensors, whose flag finite.py cannot find. `update` looks through Identity
# and IdentityN to the tensors they copy -- identical values, so the flag of
# the unscaling that wrote those holds -- and checks anything else (a real
# all-reduce, a custom gradient aggregator) as tf_keras does.
_IDENTITIES = ("Identity", "IdentityN")


def _through_identities(tensor):
  op = getattr(tensor, "op", None) if not tf.executing_eagerly() else None
  while op is not None and op.type in _IDENTITIES:
    tensor = op.inputs[tensor.value_index]
    op = tensor.op
  return tensor


def _flag(grads):
  """This replica's all-finite flag of `grads` (the unscaling's where found)."""
  dense = [_through_identities(finite.dense_part(g)) for g in grads if g is not None]
  return finite.all_finite(dense)


def _agreed_flag(grads):
  """tf_keras's `update` rule for the flag: in a cross-replica context (its
  merge_call path) each replica's flag of the all-reduced gradients, the first
  one taken (they are equal); in a replica context this replica's."""
  grads = tf.nest.flatten(grads)
  if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
    strategy = tf.distribute.get_strategy()
    per_replica = strategy.extended.call_for_each_replica(_flag, args=(grads,))
    return strategy.experimental_local_results(per_replica)[0]
  return _flag(grads)


class _FusedDynamicState(_tfk_lso._DynamicLossScaleState):  # pylint: disable=protected-access
  """tf_keras's dynamic state -- the same object, variables and checkpoint
  keys -- whose `update` takes the flag of the unscaling (module docstring)."""

  def update(self, grads):
    is_finite = _agreed_flag(grads)
    update_op = _dynamic.update_scale(self.current_loss_scale, self.counter, self.growth_steps,
                                      self.multiplier, is_finite)
    return update_op, is_finite


class _FixedSkipState(_tfk_lso._DynamicLossScaleState):  # pylint: disable=protected-access
  """A fixed scale that skips non-finite steps: tf_keras's apply_gradients asks
  `update` of a `_DynamicLossScaleState` only, so this is one, without
  variables; the scale never changes."""

  def __init__(self, value):  # pylint: disable=super-init-not-called
    self._weights = {}
    self.value = value

  def update(self, grads):
    return tf.no_op(), _agreed_flag(grads)


def _check_skip(skip_non_finite, dynamic):
  if not isinstance(skip_non_finite, (bool, np.bool_)):
    raise TypeError("skip_non_finite must be True or False, got "
                    f"{type(skip_non_finite).__name__}: {skip_non_finite!r}")
  if skip_non_finite and dynamic is not False:
    raise ValueError('"skip_non_finite" is for a fixed scale (dynamic=False): a dynamic '
                     "scale always skips a step with inf or NaN gradients")


class _FusedScaling:
  """What both families change in tf_keras's class (module docstring); first
  in their bases, so that these methods take precedence."""

  def _fused_init(self, inner_optimizer, dynamic, initial_scale, dynamic_growth_steps,
                  skip_non_finite, tf_keras_class):
    _check_skip(skip_non_finite, dynamic)
    if dynamic is False and initial_scale is not None:
      # Before tf_keras's __init__ marks the inner optimizer as wrapped.
      initial_scale = ops.validate_loss_scale(initial_scale, "initial_scale")
    tf_keras_class.__init__(self, inner_optimizer, dynamic=dynamic, initial_scale=initial_scale,
                            dynamic_growth_steps=dynamic_growth_steps)
    state = object.__getattribute__(self, "_loss_scale")
    if isinstance(state, _tfk_lso._DynamicLossScaleState):  # pylint: disable=protected-access
      # The same object keeps its variables and its checkpoint dependency.
      state.__class__ = _FusedDynamicState
    elif skip_non_finite:
      # Not tracked (no variables; tf_keras's checkpoint layout stays).
      object.__setattr__(self, "_loss_scale", _FixedSkipState(state))

  @property
  def skip_non_finite(self):
    """Whether a fixed scale skips non-finite steps (a dynamic one always does)."""
    return isinstance(self._loss_scale, _FixedSkipState)

  def _fixed_value(self):
    state = self._loss_scale
    return state.value if isinstance(state, _FixedSkipState) else state

  @property
  def dynamic(self):
    return isinstance(self._loss_scale, _FusedDynamicState)

  @property
  def loss_scale(self):
    if self.dynamic:
      return tf.convert_to_tensor(self._loss_scale.current_loss_scale)
    return tf.convert_to_tensor(self._fixed_value())

  @property
  def dynamic_counter(self):
    return self._loss_scale.counter if self.dynamic else None

  @property
  def initial_scale(self):
    return self._loss_scale.initial_loss_scale if self.dynamic else self._fixed_value()

  @property
  def dynamic_growth_steps(self):
    return self._loss_scale.growth_steps if self.dynamic else None

  def get_scaled_loss(self, loss):
    """`loss` times the scale: tf_keras's `loss * cast(scale, loss.dtype)` for a
    dynamic scale, FixedScaleLoss (scaling.scale_loss) for a fixed one. A
    callable gives a callable."""
    if self.dynamic:
      return super().get_scaled_loss(loss)
    self._loss_has_been_scaled = True
    value = self._fixed_value()
    if callable(loss):
      return lambda: scaling.scale_loss(loss(), value)
    return scaling.scale_loss(loss, value)

  def get_unscaled_gradients(self, grads):
    """The list `grads` divided by the scale (None stays None, IndexedSlices
    keep their indices): FixedUnscaleGrads for a fixed scale, one
    FixedUnscaleGradsAndCheck read where a flag is needed (dynamic, or
    `skip_non_finite`), which the scale's `update` then finds."""
    self._gradients_have_been_unscaled = True
    grads = list(grads)
    if self.dynamic:
      return list(scaling.unscale_and_check(grads, self.loss_scale)[0])
    if self.skip_non_finite:
      return list(scaling.unscale_and_check(grads, self._fixed_value())[0])
    return list(scaling.unscale_gradients(grads, self._fixed_value()))

  def get_config(self):
    config = super().get_config()
    if self.skip_non_finite:
      config["skip_non_finite"] = True
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    """tf_keras's `from_config`; a TF <= 2.3 config whose `loss_scale` is this
    package's FixedLossScale with `skip_non_finite` keeps the skip."""
    config = dict(config)
    loss_scale = config.get("loss_scale")
    if isinstance(loss_scale, dict) and loss_scale.get("config", {}).get("skip_non_finite"):
      inner = {k: v for k, v in loss_scale["config"].items() if k != "skip_non_finite"}
      config["loss_scale"] = dict(loss_scale, config=inner)
      config["skip_non_finite"] = True
    return super().from_config(config, custom_objects=custom_objects)


class _Dispatch(_tfk_lso.LossScaleOptimizerMetaclass):
  """`LossScaleOptimizer(inner, ...)` builds the class for `inner`'s family,
  as tf_keras's metaclass does; the concrete classes build themselves."""

  def __call__(cls, inner_optimizer, *args, **kwargs):
    if cls is LossScaleOptimizer:
      if isinstance(inner_optimizer, _LegacyOptimizer):
        cls = LegacyLossScaleOptimizer
      elif isinstance(inner_optimizer, _Optimizer):
        cls = LossScaleOptimizerV3
      else:
        # tf_keras's words.
        raise TypeError(
            '"inner_optimizer" must be an instance of `tf.keras.optimizers.Optimizer` or '
            "`tf.keras.optimizers.experimental.Optimizer`, but got: "
            f"{inner_optimizer}.")
    return type.__call__(cls, inner_optimizer, *args, **kwargs)


class LossScaleOptimizer(_tfk_lso.BaseLossScaleOptimizer, metaclass=_Dispatch):
  """`tf_keras.mixed_precision.LossScaleOptimizer` on this package's ops (see
  the module docstring): builds a `LegacyLossScaleOptimizer` for a
  `tf_keras.optimizers.legacy` optimizer, a `LossScaleOptimizerV3` for a
  `tf_keras.optimizers` one. Both are instances of this class and of tf_keras's.

  Args:
    inner_optimizer: the tf_keras optimizer to wrap.
    dynamic: True (default): tf_keras's dynamic loss scaling. False: a fixed
      scale, `initial_scale`.
    initial_scale: the scale (fixed: a number in [1, 2**126], required) or
      the dynamic scale's start (default 2**15).
    dynamic_growth_steps: steps between increases of a dynamic scale (default
      2000); None for a fixed scale.
    skip_non_finite: a fixed scale only: skip a step whose gradients hold an
      inf or NaN (default False: applied, as tf_keras does).
  """


@tf_keras.saving.register_keras_serializable(package="fixed_loss_scale",
                                             name="LossScaleOptimizer")
class LegacyLossScaleOptimizer(_FusedScaling, LossScaleOptimizer, _tfk_lso.LossScaleOptimizer):
  """tf_keras's `LossScaleOptimizer` for `tf_keras.optimizers.legacy`
  optimizers (its type name too), on this package's ops."""

  __qualname__ = "LossScaleOptimizer"

  def __init__(self, inner_optimizer, dynamic=True, initial_scale=None,
               dynamic_growth_steps=None, skip_non_finite=False):
    self._fused_init(inner_optimizer, dynamic, initial_scale, dynamic_growth_steps,
                     skip_non_finite, _tfk_lso.LossScaleOptimizer)


LegacyLossScaleOptimizer.__name__ = "LossScaleOptimizer"


@tf_keras.saving.register_keras_serializable(package="fixed_loss_scale",
                                             name="LossScaleOptimizerV3")
class LossScaleOptimizerV3(_FusedScaling, LossScaleOptimizer, _tfk_lso.LossScaleOptimizerV3):
  """tf_keras's `LossScaleOptimizerV3` for `tf_keras.optimizers` optimizers,
  on this package's ops."""

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def __init__(self, inner_optimizer, dynamic=True, initial_scale=None,
               dynamic_growth_steps=None, skip_non_finite=False):
    self._fused_init(inner_optimizer, dynamic, initial_scale, dynamic_growth_steps,
                     skip_non_finite, _tfk_lso.LossScaleOptimizerV3)


BaseLossScaleOptimizer = LossScaleOptimizer


# NOTE [legacy conversion]: tf_keras's `convert_to_legacy_optimizer` (public
# as `tf_keras.__internal__.optimizers.convert_to_legacy_optimizer`; its
# `optimizers.get`, so `compile`, calls it when TF2 behaviour is off) rebuilds a
# V3 wrapper from its class name lowercased, "lossscaleoptimizer", looked up
# in the custom objects first and then in tf_keras's own table. Left alone it
# turns our LossScaleOptimizerV3 into tf_keras's LossScaleOptimizer (tf_keras's
# arithmetic, not the ops) and refuses a `skip_non_finite` config. Nothing a
# class can declare reaches that lookup (not its registered name, not its
# `from_config`), and binding the bare name globally would turn tf_keras's own
# wrappers into ours too. So the function is wrapped, and only for an instance
# of ours does the wrapper differ: it runs tf_keras's converter unchanged
# inside a custom_object_scope (thread-local, consulted first) that binds that
# one name to LegacyLossScaleOptimizer, so the inner optimizer, the config and
# the variables are what tf_keras's conversion makes, in our class. Anything
# else goes to tf_keras's function as it is. The wrapper replaces the function
# under each name tf_keras holds it by (modules imported later copy it from
# tf_keras.src.optimizers), keeps it as `__wrapped__`, and
# `_restore_tf_keras_converter()` puts it back.
_CONVERTER = "convert_to_legacy_optimizer"
_CONVERTER_MODULES = ("tf_keras.src.optimizers", "tf_keras.__internal__.optimizers",
                      "tf_keras.api._v2.keras.__internal__.optimizers")


def _tf_keras_converter():
  current = getattr(importlib.import_module(_CONVERTER_MODULES[0]), _CONVERTER)
  return current.__wrapped__ if getattr(current, "_fls_wrapper", False) else current


def _set_tf_keras_converter(function):
  """Binds `function` wherever tf_keras holds its converter or a wrapper of it."""
  original = _tf_keras_converter()
  for name in _CONVERTER_MODULES:
    module = sys.modules.get(name)
    held = getattr(module, _CONVERTER, None)
    if held is not None and (held is original or getattr(held, "__wrapped__", None) is original):
      setattr(module, _CONVERTER, function)


def _install_tf_keras_converter():
  original = _tf_keras_converter()

  @functools.wraps(original)
  def convert_to_legacy_optimizer(optimizer):
    if isinstance(optimizer, LossScaleOptimizerV3):
      with tf_keras.saving.custom_object_scope({"lossscaleoptimizer": LegacyLossScaleOptimizer}):
        return original(optimizer)
    return original(optimizer)

  convert_to_legacy_optimizer._fls_wrapper = True  # pylint: disable=protected-access
  _set_tf_keras_converter(convert_to_legacy_optimizer)


def _restore_tf_keras_converter():
  """Gives tf_keras its own `convert_to_legacy_optimizer` back (NOTE [legacy
  conversion]); `_install_tf_keras_converter()` wraps it again."""
  _set_tf_keras_converter(_tf_keras_converter())


_install_tf_keras_converter()

__all__ = ["BaseLossScaleOptimizer", "LegacyLossScaleOptimizer", "LossScaleOptimizer",
           "LossScaleOptimizerV3"]
