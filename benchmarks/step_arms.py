"""The arms of the `--overflow` optimizer steps: what each step runs.

Owns the inner optimizers (Keras 3 SGD with momentum, Adam, AdamW), the
wrappers around them (Keras's LossScaleOptimizer; ours, the dynamic drop-in
and the fixed scale that skips, each with and without the fused update), the
hybrid controls built from the public ops (NOTE [hybrid arms]), and the
tf.function step each arm is timed as.
"""

import inspect

import tensorflow as tf

from fixed_loss_scale import ops

from benchmarks.common import LOSS_SCALE

KINDS = ("sgd", "adam", "adamw")
LEARNING_RATE = 1e-3

WRAPPER_ARMS = ("bare", "bare_again", "keras_lso", "ours_dynamic", "ours_dynamic_fused",
                "ours_fixed_skip", "ours_fixed_skip_fused")
HYBRID_ARMS = ("hybrid_tf_check_divide", "hybrid_tf_check_grouped",
               "hybrid_fused_dropped_grouped", "hybrid_fused_outputs", "hybrid_check_grouped",
               "hybrid_check_per_variable")
LABELS = {
    "bare": "inner optimizer alone, no loss scaling",
    "bare_again": "inner optimizer again (control: two traces of one step)",
    "keras_lso": "keras.optimizers.LossScaleOptimizer",
    "ours_dynamic": "fixed_loss_scale.keras.LossScaleOptimizer, fused_update=False",
    "ours_dynamic_fused": "fixed_loss_scale.keras.LossScaleOptimizer, fused update",
    "ours_fixed_skip": "FixedLossScaleOptimizer(skip_non_finite=True), fused_update=False",
    "ours_fixed_skip_fused": "FixedLossScaleOptimizer(skip_non_finite=True), fused update",
    "hybrid_tf_check_divide": "TF's per-tensor check | Keras's per-variable g / scale",
    "hybrid_tf_check_grouped": "TF's per-tensor check | grouped FixedUnscaleGrads",
    "hybrid_fused_dropped_grouped": "FixedUnscaleGradsAndCheck, outputs dropped | grouped "
                                    "FixedUnscaleGrads",
    "hybrid_fused_outputs": "FixedUnscaleGradsAndCheck | its unscaled outputs",
    "hybrid_check_grouped": "read-only check | grouped FixedUnscaleGrads",
    "hybrid_check_per_variable": "read-only check | one FixedUnscaleGrads per gradient",
}
# Ours and the hybrids against Keras's: overhead over the bare step.
RATIO_BASE = "keras_lso"


def inner_optimizer(kind):
  import keras  # pylint: disable=import-outside-toplevel
  if kind == "sgd":
    return keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9)
  if kind == "adam":
    return keras.optimizers.Adam(learning_rate=LEARNING_RATE)
  if kind == "adamw":
    return keras.optimizers.AdamW(learning_rate=LEARNING_RATE)
  raise ValueError(f"optimizer kind {kind!r} is not one of {KINDS}")


def _takes_fused_update(cls):
  return "fused_update" in inspect.signature(cls.__init__).parameters


# NOTE [shared slots]: the step arms of one model and optimizer kind wrap ONE
# inner optimizer (`inner`): the same variables, the same slot variables, the
# same memory, so that where an optimizer's slots landed is not one of the
# differences between arms. It does not make identical arms agree: two traces
# of the very same bare step, sharing everything, still differed steadily by
# 2-20 ms on bert_like Adam in single runs (the bare_again control; 3 traces
# per arm called in turn agreed within 1 ms). So gaps between arms below the
# bare_again control's are not read as real. A wrapper's own state (its scale,
# its step counter) is a few scalars; Keras's optimizers build once (`build`
# returns when built), so a wrapper over a built inner optimizer reuses its
# slots.
def wrapper_optimizers(kind, arms=WRAPPER_ARMS, inner=None):
  """({arm: optimizer}, {arm: why it is not there}) for the wrapper arms: each
  wraps `inner` (NOTE [shared slots]) or, where it is None, its own new inner
  optimizer of `kind`."""
  import keras  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale import keras as fls_keras  # pylint: disable=import-outside-toplevel
  dynamic = getattr(fls_keras, "LossScaleOptimizer", None)
  if dynamic is keras.optimizers.LossScaleOptimizer:
    dynamic = None
  fixed = fls_keras.FixedLossScaleOptimizer
  optimizers, missing = {}, {}

  def an_inner():
    return inner if inner is not None else inner_optimizer(kind)

  for arm in arms:
    if arm in ("bare", "bare_again"):
      optimizers[arm] = an_inner()
      continue
    if arm == "keras_lso":
      optimizers[arm] = keras.optimizers.LossScaleOptimizer(an_inner(), initial_scale=LOSS_SCALE)
      continue
    cls = dynamic if arm.startswith("ours_dynamic") else fixed
    if cls is None:
      missing[arm] = "fixed_loss_scale.keras.LossScaleOptimizer is not in this build"
      continue
    kwargs = {}
    if _takes_fused_update(cls):
      kwargs["fused_update"] = arm.endswith("_fused")
    elif arm.endswith("_fused"):
      missing[arm] = f"{cls.__name__} takes no fused_update argument in this build"
      continue
    if cls is fixed:
      optimizers[arm] = cls(an_inner(), LOSS_SCALE, skip_non_finite=True, **kwargs)
    else:
      optimizers[arm] = cls(an_inner(), initial_scale=LOSS_SCALE, **kwargs)
  return optimizers, missing


def cpu_groups(grads, limit=None):
  """Runs of consecutive gradients of at most `limit` bytes (a larger one alone):
  the package's CPU groups, rebuilt here so that the hybrids keep their shape
  whatever the package's wrappers do."""
  if limit is None:
    from fixed_loss_scale import scaling  # pylint: disable=import-outside-toplevel
    limit = getattr(scaling, "CPU_GROUP_BYTES", 1 << 20)
  groups, size = [], 0
  for g in grads:
    nbytes = g.shape.num_elements() * g.dtype.size
    if not groups or (size + nbytes > limit and groups[-1]):
      groups.append([])
      size = 0
    groups[-1].append(g)
    size += nbytes
  return groups


def _all(flags):
  return tf.reduce_all(tf.stack(flags))


def _tf_check(grads):
  # Keras 3's check_finite: one reduce_all(is_finite(g)) per gradient.
  return _all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])


def _grouped_unscale(grads):
  return [u for group in cpu_groups(grads) for u in ops.fixed_unscale_grads(group, LOSS_SCALE)]


def _grouped_fused(grads, scale):
  flags, unscaled = [], []
  for group in cpu_groups(grads):
    outputs, flag, _ = ops.fixed_unscale_grads_and_check(group, scale)
    flags.append(flag)
    unscaled += list(outputs)
  return _all(flags), unscaled


def _grouped_check(grads, scale):
  return _all([ops.fixed_check_grads(group, scale)[0] for group in cpu_groups(grads)])


# NOTE [hybrid arms]: each hybrid is one skip decision, a tf.cond on a flag
# computed before it, whose true branch unscales and calls the bare inner
# optimizer's apply, as Keras's LossScaleOptimizer does. They differ only in
# what runs before the cond and what inside, and are built from the public
# ops (ops.fixed_unscale_grads, ops.fixed_unscale_grads_and_check,
# ops.fixed_check_grads) and TF's own, so that they keep measuring the same
# shapes whatever the package's wrappers run: the first is Keras's design
# rebuilt, the fused-op pair the design the wrappers had before the read-only
# check, the last two the design they have now on CPU, with the unscale
# grouped as the check is or one op per gradient, next to its update.
def _hybrid_passes(arm, grads, scale):
  """(flag, a function giving the gradients to apply inside the branch)."""
  if arm == "hybrid_tf_check_divide":
    return _tf_check(grads), lambda: [g / scale for g in grads]
  if arm == "hybrid_tf_check_grouped":
    return _tf_check(grads), lambda: _grouped_unscale(grads)
  if arm == "hybrid_fused_dropped_grouped":
    return _grouped_fused(grads, scale)[0], lambda: _grouped_unscale(grads)
  if arm == "hybrid_fused_outputs":
    flag, unscaled = _grouped_fused(grads, scale)
    return flag, lambda: unscaled
  if arm == "hybrid_check_grouped":
    return _grouped_check(grads, scale), lambda: _grouped_unscale(grads)
  if arm == "hybrid_check_per_variable":
    return _grouped_check(grads, scale), lambda: [ops.fixed_unscale_grads([g], LOSS_SCALE)[0]
                                                  for g in grads]
  raise ValueError(arm)


def step_function(arm, opt, variables, scale=None):
  """tf.function(x): produce the gradients (`relu(v * x)`) and apply them with
  `opt`; a wrapper unscales and checks in `apply`, as under `fit`; a hybrid arm
  decides with its own flag (NOTE [hybrid arms]) around `opt`, a bare optimizer."""
  hybrid = arm.startswith("hybrid_")

  @tf.function(autograph=False)
  def step(x):
    grads = [tf.nn.relu(v * x) for v in variables]
    if not hybrid:
      opt.apply(grads, variables)
      return tf.constant(0)
    flag, inside = _hybrid_passes(arm, grads, scale.read_value())

    def apply():
      opt.apply(inside(), variables)
      return tf.constant(True)

    tf.cond(flag, apply, lambda: tf.constant(False))
    return tf.constant(0)

  return step
