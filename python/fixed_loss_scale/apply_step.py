"""The optimizer wrappers' apply step: unscale, check, clip, agree, then apply or skip.

Layer: the optimizer wrappers call this (keras.py and keras_dynamic.py through
keras_base.py, the tf_keras wrapper directly); it calls scaling.py (unscaling
and the check), finite.py (flags) and clipping.py's rule for which clipping is
fused. It imports no Keras: whatever depends on the framework comes in as an
argument -- which variables take their gradient as it is, the clipping
expression, and what "apply" means.

    step = prepare(grads, variables, scale, check=..., keep=..., clip=...)
    step = given(grads, check=...)
    apply_if_finite(step, apply_fn, on_non_finite=None, args=())

`prepare` makes one step's gradients ready for the apply branch:

- `grads`: a list (None allowed); `variables`: the matching variables, read
  only by `keep`; `scale`: a fixed scale (Python or numpy number) or a
  float32 scalar tensor (a dynamic scale, read once by the caller).
- `keep(variable)`: True for a variable whose gradient is applied as it is,
  neither unscaled nor clipped (Keras's float8 overwrite-with-gradient
  variables); its gradient is still checked. None: no such variable.
- `check`: whether `step.flag` is computed (a skip follows).
- `clip(grads, sum_of_squares)`: the framework's global-norm clipping given
  the squared norm of `grads`; the sum then comes from the unscaling pass and
  `step.clipped` is True (the inner optimizer must not clip again). None: no
  fused clipping.

`given(grads, check)` is a step for gradients the caller already unscaled:
applied as they are, the flag from `finite.all_finite` (the flag recorded for
them by the unscaling, else a check).

A `Step` has `flag` (this replica's all-finite flag, a bool scalar tensor, or
None without `check`), `clipped`, and `gradients()`: the gradients to apply, in
the positions given (None and kept ones as given, the others unscaled and
clipped). Call `gradients()` where they are consumed, inside the apply branch:
how they are produced -- already unscaled before the decision, or unscaled on
the way into the update -- is the step's business, decided in `prepare`. An
update that unscales by itself (a fused update taking the scaled gradients,
the scale and the flag) reads `step.scaled`, `step.scale` and
`step.sum_of_squares` instead; `scaled` is None when `prepare` has already
unscaled them.

`apply_if_finite(step, apply_fn, on_non_finite, args)` runs
`apply_fn(step, *args)` in a replica context when `step.flag` is True on every
replica (finite.flag_in_sync), else `on_non_finite()`, and returns what the
cond returns (the two must return the same structure; None for Keras 3). As
Keras 3's `LossScaleOptimizer` on TensorFlow: where the strategy supports no
merge_call the cond stays in the replica context; elsewhere (MirroredStrategy)
the flags and the cond go to the cross-replica context through merge_call --
a cond in a replica context cannot hold the inner optimizer's own merge_call --
and `apply_fn` runs per replica. `args` travel through merge_call (per-replica
values are regrouped and handed back to each replica); anything else
`apply_fn` closes over must be the same on every replica.
"""

import tensorflow as tf

from fixed_loss_scale import finite
from fixed_loss_scale import scaling


class Step:
  """One step's gradients between the check and the update (module docstring)."""

  def __init__(self, carried, flag=None, clipped=False, scale=None, sum_of_squares=None,
               scaled=False):
    self._carried = carried  # the list the apply branch starts from
    self.flag = flag
    self.clipped = clipped
    self.scale = scale
    self.sum_of_squares = sum_of_squares
    self._scaled = scaled  # whether `_carried` still holds the scaled gradients

  @property
  def scaled(self):
    """The gradients as given, if not unscaled yet; else None."""
    return list(self._carried) if self._scaled else None

  def gradients(self):
    """The gradients to apply (see the module docstring)."""
    return list(self._carried)

  def _tensors(self):
    """What differs per replica: through merge_call with the flag."""
    return self._carried, self.scale, self.sum_of_squares

  def _rebuilt(self, tensors):
    carried, scale, sum_of_squares = tensors
    return Step(list(carried), None, self.clipped, scale, sum_of_squares, self._scaled)


def _split(grads, variables, keep):
  """Which positions keep their gradient as given (None, and `keep`'s variables)."""
  return [g is None or (keep is not None and bool(keep(v))) for g, v in zip(grads, variables)]


def _merge(grads, kept, processed):
  """`grads` with the positions not kept taken, in order, from `processed`."""
  it = iter(processed)
  return [g if k else next(it) for g, k in zip(grads, kept)]


def prepare(grads, variables, scale, check=True, keep=None, clip=None):
  """One step's gradients ready for the apply branch (module docstring)."""
  grads = list(grads)
  kept = _split(grads, variables, keep)
  to_unscale = [g for g, k in zip(grads, kept) if not k]
  if not check and clip is None:
    # Nothing follows that needs a flag or a norm: the grouped unscale, no barrier.
    unscaled = scaling.unscale_gradients(to_unscale, scale)
    return Step(_merge(grads, kept, unscaled), scale=scale)
  with_sum = clip is not None and bool(to_unscale)
  result = scaling.unscale_and_check(to_unscale, scale, sum_of_squares=with_sum)
  unscaled, flag = result[0], result[1]
  squares = result[2] if with_sum else None
  if with_sum:
    unscaled = clip(unscaled, squares)
  given_grads = [g for g, k in zip(grads, kept) if k and g is not None]
  if given_grads:
    # Keras's check_finite covers every non-None gradient, kept ones included.
    flag = tf.logical_and(
        flag, finite.is_all_finite([finite.dense_part(g) for g in given_grads]))
  return Step(_merge(grads, kept, unscaled), flag, with_sum, scale, squares)


def given(grads, check=True):
  """A step for gradients already unscaled: applied as they are; with `check`,
  the flag `finite.all_finite` finds for them."""
  grads = list(grads)
  return Step(grads, finite.all_finite(grads) if check else None)


def apply_if_finite(step, apply_fn, on_non_finite=None, args=(), caller="apply()"):
  """`apply_fn(step, *args)` if `step.flag` holds on every replica, else
  `on_non_finite()` (module docstring). Raises ValueError, naming `caller`,
  in a cross-replica context (Keras's words)."""
  if tf.distribute.in_cross_replica_context():
    raise ValueError(f"{caller} must be called in a replica context.")
  if on_non_finite is None:
    on_non_finite = lambda: None  # noqa: E731
  if tf.__internal__.distribute.strategy_supports_no_merge_call():
    return tf.cond(finite.flag_in_sync(step.flag), lambda: apply_fn(step, *args), on_non_finite)

  def in_cross_replica_context(distribution, tensors, flag, args):
    del distribution  # finite.flag_in_sync finds the strategy

    def apply_each(tensors, *args):
      return apply_fn(step._rebuilt(tensors), *args)  # pylint: disable=protected-access

    def apply_all():
      return tf.distribute.get_strategy().extended.call_for_each_replica(
          apply_each, args=(tensors,) + tuple(args))

    return tf.cond(finite.flag_in_sync(flag), apply_all, on_non_finite)

  return tf.distribute.get_replica_context().merge_call(
      in_cross_replica_context,
      args=(step._tensors(), tf.cast(step.flag, tf.float32), tuple(args)))  # pylint: disable=protected-access
