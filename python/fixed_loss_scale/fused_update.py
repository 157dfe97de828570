"""Keras 3's SGD, Adam and AdamW steps as one op that also unscales.

`FixedApplySgd` and `FixedApplyAdam` take the *scaled* gradients, the loss
scale, the all-finite flag and the step's scalars, and update every variable
and slot in place in one pass: each gradient is unscaled in registers with
FixedUnscaleGrads' numbers, and Keras's update is computed op for op in
float32, so the weights and slots are Keras's bit for bit (NOTE [fused update
numerics] in tf_ops/core/fused_update_math.h). Where the flag is false the op
writes nothing.

    update = fused_update.plan(optimizer, grads, variables)   # None: use Keras's apply
    if update is not None:
      update.apply(scaled_grads, scale, all_finite=flag, sum_of_squares=squares)

`plan` says whether the inner optimizer's whole `apply` can be this op: the
optimizer is exactly `keras.optimizers.SGD`, `Adam` or `AdamW` (a subclass may
change the step), without `use_ema`, `gradient_accumulation_steps`,
`clipnorm` or `clipvalue` (a `global_clipnorm` is applied from the squared
norm of the check pass), with Python-number hyperparameters; the variables are
known to it, float32, on the CPU or on a GPU where the library's GPU kernels
are registered, none is overwritten with its gradient;
the gradients are dense float32 tensors (None ones are left out, as Keras
does); and the op can run: a graph that XLA does not compile
(`scaling.uses_custom_ops`), no distribution strategy other than the default,
OneDevice or (Multi-worker) Mirrored, and no global clipping with more than one
replica (Keras clips each replica's gradients before summing them) or with
SGD (NOTE [weight decay stays Keras's]). `reason` says why not.

`apply` is Keras's `apply` for those gradients: the scalars come from Keras's
own expressions (the learning rate after its schedule, Adam's alpha from
`iterations + 1`), the gradients are summed over replicas as Keras's
`_all_reduce_sum_gradients` does (scaled, then unscaled by the op: the same
numbers for a power-of-two scale), Keras's own weight decay runs (NOTE
[weight decay stays Keras's]), the rest of the update is the op, constraints
follow, and `iterations` grows by one -- by the flag, when one is given: a step
the op skips does not count, as Keras's LossScaleOptimizer does not run its
inner `apply` on one.
"""

import functools

import keras
import tensorflow as tf

from fixed_loss_scale import _loader
from fixed_loss_scale import clipping
from fixed_loss_scale import scaling

_raw_ops = _loader.load_ops()
SGD_OP = "FixedApplySgd"
ADAM_OP = "FixedApplyAdam"

_STRATEGIES = ("_DefaultDistributionStrategy", "OneDeviceStrategy", "MirroredStrategy",
               "CollectiveAllReduceStrategy", "MultiWorkerMirroredStrategy")


def ineligible_reason(optimizer):
  """Why `optimizer` (a Keras 3 optimizer) can never take the fused update, or
  None if it can; the per-step conditions are `plan`'s."""
  kind = type(optimizer)
  if kind not in (keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW):
    return f"{kind.__name__} is not exactly keras.optimizers.SGD, Adam or AdamW"
  for name in ("use_ema", "gradient_accumulation_steps", "clipnorm", "clipvalue",
               "loss_scale_factor"):
    if getattr(optimizer, name, None):
      return f"{name}={getattr(optimizer, name)!r} is set"
  numbers = ["momentum"] if kind is keras.optimizers.SGD else ["beta_1", "beta_2", "epsilon"]
  for name in numbers:
    value = getattr(optimizer, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return f"{name} is {type(value).__name__}, not a Python number"
  decay = optimizer.weight_decay
  if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float))):
    return f"weight_decay is {type(decay).__name__}, not a Python number"
  return None


@functools.lru_cache(maxsize=None)
def _gpu_kernels_registered():
  """Whether this process's library registered the ops' GPU kernels (NOTE
  [where the GPU kernels run]: a CUDA build, on a driver and GPUs it runs on)."""
  from tensorflow.python.framework import kernels  # pylint: disable=import-outside-toplevel
  return any(k.device_type == "GPU"
             for k in kernels.get_registered_kernels_for_op("FixedApplyAdam").kernel)


def _device_reason(variable):
  """Why the ops cannot update `variable` (a tf.Variable, or a replica's
  component) where it lives, or None: on a CPU, or on a GPU where the GPU
  kernels are registered (the op runs where its resources live)."""
  device = tf.DeviceSpec.from_string(variable.device or "")
  kind = (device.device_type or scaling.unplaced_device_type()).upper()
  if kind == "CPU" or (kind == "GPU" and _gpu_kernels_registered()):
    return None
  if kind == "GPU":
    return "is on a GPU, and this library's GPU kernels are not registered here"
  return f"is on a {kind}, where the ops have no kernel"


def _strategy_reason(clipping):
  strategy = tf.distribute.get_strategy()
  if type(strategy).__name__ not in _STRATEGIES:
    return f"distribution strategy {type(strategy).__name__}"
  context = tf.distribute.get_replica_context()
  if context is None:
    return "called in a cross-replica context"
  if clipping and context.num_replicas_in_sync > 1:
    return "global clipping with several replicas (Keras clips each replica's gradients)"
  return None


def _tf_variable(variable):
  return variable.value if isinstance(variable, keras.Variable) else variable


def _pairs_reason(optimizer, grads, variables):
  """(the (grad, variable) pairs the update takes, or None, and why not)."""
  pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
  if not pairs:
    return None, "no gradient"  # Keras's apply raises; let it
  known = optimizer._trainable_variables_indices  # pylint: disable=protected-access
  for g, v in pairs:
    name = getattr(v, "path", getattr(v, "name", "?"))
    if optimizer._var_key(v) not in known:  # pylint: disable=protected-access
      return None, f"variable {name} is unknown to the optimizer"
    if getattr(v, "overwrite_with_gradient", False):
      return None, f"variable {name} is overwritten with its gradient"
    if isinstance(g, tf.IndexedSlices) or not tf.is_tensor(g):
      return None, f"the gradient of {name} is not a dense tensor"
    if g.dtype != tf.float32 or v.dtype != tf.float32:
      return None, f"variable {name} or its gradient is not float32"
    where = _device_reason(_tf_variable(v))
    if where is not None:
      return None, f"variable {name} {where}"
  return pairs, None


# NOTE [weight decay stays Keras's]: the ops can fuse the weight decay (their
# `decay` attr and weight_decay / weight_decay_lr inputs: NOTE [scalar factors]
# in tf_ops/core/fused_update_math.h), but Keras's `variable * wd * lr` is
# rounded in whatever order Grappler gives its graph, and that order depends
# on where the step runs: measured with an ExponentialDecay schedule, Keras's
# graph computes variable * (wd * lr) in a tf.function step and variable *
# ((wd * initial) * decay ** p) in `fit`'s step (the schedule's product joins
# the tree), so no order fixed in the op is Keras's everywhere. The update
# therefore runs Keras's own `_apply_weight_decay` first, exactly as its
# `apply` does (the same graph, the same rewrite, the same bits), and the op
# does the rest: one more pass over the decayed variables, where a fused
# decay would have cost none.
class FusedUpdate:
  """One step's fused update for `optimizer` over the (gradient, variable)
  pairs `plan` accepted (module docstring)."""

  def __init__(self, optimizer, positions, variables, clip_norm):
    self.optimizer = optimizer
    self._positions = positions
    self.variables = variables
    self._clip_norm = clip_norm

  @property
  def clip_norm(self):
    """The global_clipnorm the update clips by (`apply` then needs
    `sum_of_squares`), or None."""
    return self._clip_norm

  def apply(self, scaled_grads, scale, all_finite=None, sum_of_squares=None):
    """Keras's `apply` of `scaled_grads / scale` (a list in `plan`'s positions;
    `scale` a number or float32 scalar tensor): the fused op, constraints,
    `iterations`. `all_finite`: the flag (a bool scalar tensor; None: true);
    `sum_of_squares`: the squared global norm of the unscaled gradients,
    required when the optimizer has a `global_clipnorm`. Returns the op."""
    optimizer = self.optimizer
    grads = [scaled_grads[i] for i in self._positions]
    if self._clip_norm is not None and sum_of_squares is None:
      raise ValueError(f"{type(optimizer).__name__} has global_clipnorm="
                       f"{self._clip_norm}: the fused update needs the squared global norm")
    flag = tf.constant(True) if all_finite is None else tf.convert_to_tensor(all_finite)
    scale = tf.convert_to_tensor(scale, tf.float32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    with tf.name_scope(optimizer.name):
      if optimizer.weight_decay is not None:
        # NOTE [weight decay stays Keras's]: its own code, before the update.
        self._decay(all_finite is None, flag, context)
      update = self._op(grads, scale, flag, self._clip_factor(sum_of_squares))
      with tf.control_dependencies([update]):
        for variable in self.variables:
          if variable.constraint is not None:
            variable.assign(variable.constraint(variable))
        increment = tf.cast(flag, optimizer.iterations.dtype)
        optimizer._iterations.assign_add(increment)  # pylint: disable=protected-access
    return update

  def _decay(self, always, flag, context):
    """Keras's weight decay of the variables: always (the caller's branch
    decided), or where `flag` holds."""
    def decay():
      self.optimizer._apply_weight_decay(self.variables)  # pylint: disable=protected-access

    if always:
      decay()
      return
    if context is not None and context.num_replicas_in_sync > 1:
      # Keras decays through merge_call, which a cond in a replica context cannot hold.
      raise ValueError("fused_update: with several replicas, a weight-decaying update takes "
                       "no all_finite flag; call apply in the branch that decided (as "
                       "apply_step.apply_if_finite does)")
    tf.cond(flag, decay, lambda: None)

  def _clip_factor(self, sum_of_squares):
    """Keras's clip_by_global_norm factor (base_optimizer.py), from the squared
    norm; 1 without global clipping."""
    if self._clip_norm is None:
      return tf.constant(1.0, tf.float32)
    use_norm = tf.sqrt(sum_of_squares)
    scale_for_finite = self._clip_norm * tf.minimum(1.0 / use_norm, 1.0 / self._clip_norm)
    return scale_for_finite + (use_norm - use_norm)

  def _slots(self, slots):
    optimizer = self.optimizer
    return [_tf_variable(slots[optimizer._get_variable_index(v)]).handle  # pylint: disable=protected-access
            for v in self.variables]

  def _op(self, grads, scale, flag, clip):
    optimizer = self.optimizer
    lr = tf.cast(optimizer.learning_rate, tf.float32)
    # NOTE [weight decay stays Keras's]: the op's own weight decay is not used.
    wd = tf.constant(0.0, tf.float32)
    decayed = []
    handles = [_tf_variable(v).handle for v in self.variables]
    options = tf.config.optimizer.get_experimental_options()
    # NOTE [scalar factors] (tf_ops/core/fused_update_math.h).
    factors_first = (options.get("arithmetic_optimization", True) is not False
                     and not options.get("disable_meta_optimizer", False))
    if isinstance(optimizer, keras.optimizers.SGD):
      momentums = self._slots(optimizer.momentums) if optimizer.momentum != 0 else []
      return _raw_ops.fixed_apply_sgd(
          handles, momentums, grads, scale, flag, clip, lr,
          tf.constant(optimizer.momentum, tf.float32), wd, wd,
          nesterov=bool(optimizer.nesterov),
          decay=decayed, scalar_factors_first=factors_first)
    # Adam's scalars, as its update_step computes them.
    local_step = keras.ops.cast(optimizer.iterations + 1, "float32")
    beta_1_power = keras.ops.power(keras.ops.cast(optimizer.beta_1, "float32"), local_step)
    beta_2_power = keras.ops.power(keras.ops.cast(optimizer.beta_2, "float32"), local_step)
    alpha = lr * keras.ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    vhat = self._slots(optimizer._velocity_hats) if optimizer.amsgrad else []  # pylint: disable=protected-access
    return _raw_ops.fixed_apply_adam(
        handles, self._slots(optimizer._momentums), self._slots(optimizer._velocities),  # pylint: disable=protected-access
        vhat, grads, scale, flag, clip, lr, alpha,
        tf.constant(1 - optimizer.beta_1, tf.float32),
        tf.constant(1 - optimizer.beta_2, tf.float32),
        tf.constant(optimizer.epsilon, tf.float32), wd, wd, decay=decayed,
        scalar_factors_first=factors_first)


def plan(optimizer, grads, variables, global_clipnorm=None):
  """A FusedUpdate for Keras 3 `optimizer` (built) applying `grads` (scaled,
  as a list aligned with `variables`), or None where Keras's own `apply` must
  run (module docstring; `reason` says why). `global_clipnorm`: the norm the
  caller clips by from its squared-norm pass (clipping.fused_global_clipnorm),
  None for no clipping."""
  return None if reason(optimizer, grads, variables, global_clipnorm) else _plan(
      optimizer, grads, variables, global_clipnorm)


def reason(optimizer, grads, variables, global_clipnorm=None):
  """Why `plan` returns None for these arguments, or None if it does not."""
  why = ineligible_reason(optimizer)
  if why is None and not scaling.uses_custom_ops():
    why = "not in a graph the custom ops run in (eager, or an XLA context)"
  if why is None and not optimizer.built:
    why = "the optimizer is not built"
  if why is None and getattr(optimizer, "global_clipnorm", None) and global_clipnorm is None:
    why = "global_clipnorm without the squared norm of a check pass"
  if why is None and global_clipnorm is not None and isinstance(optimizer, keras.optimizers.SGD):
    # SGD's `gradient * lr` of a clipped gradient is a product of a tensor by
    # two scalars, rounded in the order Grappler gives it (NOTE [weight decay
    # stays Keras's]); Adam's clipped gradient enters no such product.
    why = "SGD with global clipping (Keras's (g * clip) * lr has no fixed rounding order)"
  if why is None:
    why = _strategy_reason(global_clipnorm is not None)
  if why is None:
    why = _pairs_reason(optimizer, list(grads), list(variables))[1]
  return why


def _plan(optimizer, grads, variables, global_clipnorm):
  grads, variables = list(grads), list(variables)
  positions = [i for i, g in enumerate(grads) if g is not None]
  return FusedUpdate(optimizer, positions, [variables[i] for i in positions], global_clipnorm)


# NOTE [fused update in the wrappers]: the Keras wrappers (keras.py,
# keras_dynamic.py) built with `fused_update=True` (the default) ask `plan_for`
# in `_tf_apply`; where it gives an update, the check before the cond is the
# read-only one (`prepare(..., unscale_in_update=True)`: the gradients stay
# scaled) and the apply branch is `apply_prepared(update, step)` instead of the
# inner optimizer's `apply`; elsewhere nothing changes. Without a skip and
# without global clipping no check runs at all: `update.apply(grads, scale)`.
def plan_for(wrapper, grads, variables):
  """The FusedUpdate of a Keras wrapper's `apply` (its inner optimizer, its
  global clipping from the check pass), or None: the wrapper's `fused_update`
  is False, or `plan` says no."""
  if not getattr(wrapper, "_fused_update", False):
    return None
  inner = wrapper.inner_optimizer
  return plan(inner, grads, variables, clipping.fused_global_clipnorm(inner))


def apply_prepared(update, step):
  """`update.apply` of an apply_step.Step prepared with unscale_in_update: its
  scaled gradients, scale and squared norm (the apply branch decides, so no
  flag). Returns None, as the inner `apply` it replaces."""
  update.apply(step.scaled, step.scale, sum_of_squares=step.sum_of_squares)


def check_fused_update_argument(value, owner):
  """The wrappers' `fused_update` constructor argument: a bool, else ValueError."""
  if not isinstance(value, bool):
    raise ValueError(f"{owner}: fused_update must be True (use the fused SGD/Adam/AdamW "
                     f"update where it applies) or False, got {value!r}")
  return value
