"""The optimizer wrappers' apply step: unscale, check, clip, agree, then apply or skip.

Layer: the Keras 3 wrappers call this (keras.py and keras_dynamic.py through
keras_base.py); it calls scaling.py (unscaling and the check) and finite.py
(flags). The tf_keras wrapper keeps tf_keras's own apply_gradients and only
gives its scale the flag (tf_keras.py). It imports no Keras: whatever depends
on the framework comes in as an argument -- which variables take their
gradient as it is, the clipping expression, and what "apply" means.

    step = prepare(grads, variables, scale, check=..., keep=..., clip=...,
                   unscale_in_update=False)
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
  the squared norm of `grads`; the sum then comes from the check's pass and
  `step.clipped` is True (the inner optimizer must not clip again). None: no
  fused clipping.
- `unscale_in_update`: the update unscales by itself (a fused update taking
  the scaled gradients, the scale and the flag): every gradient is only
  checked before the decision, and `step.scaled` holds them.

With a skip to decide, the gradients are checked before the decision and
unscaled after it where that is cheaper: on a CPU the read-only check runs
first and `gradients()` unscales inside the branch; on a GPU the fused
unscale-and-check runs first (scaling.py, NOTE [check before the skip]). A
clip without a skip gets the fused op (nothing would gate a later unscale);
the clipping itself runs in `gradients()`. With neither, the grouped unscale
runs in `prepare`, as the fixed scale's plain path always has.

`given(grads, check)` is a step for gradients the caller already unscaled:
applied as they are, the flag from `finite.all_finite` (the flag recorded for
them by the unscaling, else a check).

A `Step` has `flag` (this replica's all-finite flag, a bool scalar tensor, or
None without `check`), `clipped`, and `gradients()`: the gradients to apply, in
the positions given (None and kept ones as given, the others unscaled and
clipped). Call `gradients()` where they are consumed, inside the apply branch:
how they are produced is decided in `prepare`. An update that unscales by
itself reads `step.scaled`, `step.scale` and `step.sum_of_squares` instead;
`scaled` is None when some gradient is unscaled already.

`apply_if_finite(step, apply_fn, on_non_finite, args)` runs
`apply_fn(step, *args)` in a replica context when `step.flag` is True on every
replica (finite.flag_in_sync), else `on_non_finite()`, and returns what the
cond returns: the two must return the same structure (None for Keras 3); with
no `on_non_finite`, what `apply_fn` returns is dropped. As
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

  def __init__(self, carried, flag=None, scale=None, sum_of_squares=None, deferred=None,
               clip=None, positions=()):
    self._carried = carried  # the list the apply branch starts from
    self.flag = flag
    self.scale = scale
    self.sum_of_squares = sum_of_squares
    # Per position: still scaled, to be unscaled in gradients() (a list of
    # bools, so that it can differ between replicas through merge_call).
    self._deferred = deferred or [False] * len(carried)
    self._clip = clip
    self._positions = list(positions)  # the gradients unscaled (and clipped): not kept

  @property
  def clipped(self):
    """Whether gradients() are clipped by global norm (the inner optimizer must not clip)."""
    return self._clip is not None

  @property
  def scaled(self):
    """The gradients as given, when none is unscaled yet (else None): for an
    update that unscales by itself."""
    if all(self._deferred[i] for i in self._positions):
      return list(self._carried)
    return None

  def gradients(self):
    """The gradients to apply (see the module docstring)."""
    grads = list(self._carried)
    deferred = [i for i, d in enumerate(self._deferred) if d]
    if deferred:
      grads = scaling.unscale_deferred(grads, deferred, self.scale)
    if self._clip is not None:
      clipped = self._clip([grads[i] for i in self._positions], self.sum_of_squares)
      for i, g in zip(self._positions, clipped):
        grads[i] = g
    return grads

  def _tensors(self):
    """What may differ per replica: through merge_call with the flag."""
    return self._carried, self.scale, self.sum_of_squares, self._deferred

  def _rebuilt(self, tensors):
    carried, scale, sum_of_squares, deferred = tensors
    return Step(list(carried), None, scale, sum_of_squares, list(deferred), self._clip,
                self._positions)


def _split(grads, variables, keep):
  """Which positions keep their gradient as given (None, and `keep`'s variables)."""
  return [g is None or (keep is not None and bool(keep(v))) for g, v in zip(grads, variables)]


def prepare(grads, variables, scale, check=True, keep=None, clip=None, unscale_in_update=False):
  """One step's gradients ready for the apply branch (module docstring)."""
  grads = list(grads)
  kept = _split(grads, variables, keep)
  positions = [i for i, k in enumerate(kept) if not k]
  to_unscale = [grads[i] for i in positions]
  carried = list(grads)
  if not check and clip is None:
    # Nothing follows that needs a flag or a norm: the grouped unscale, no barrier.
    for i, u in zip(positions, scaling.unscale_gradients(to_unscale, scale)):
      carried[i] = u
    return Step(carried, scale=scale, positions=positions)
  with_sum = clip is not None and bool(to_unscale)
  if check or unscale_in_update:
    checked, later, flag, squares = scaling.check_before_update(
        to_unscale, scale, sum_of_squares=with_sum, defer_everywhere=unscale_in_update)
  else:
    # A clip and no skip: no decision gates a deferred unscale, which would run
    # as early as the check; one fused read (NOTE [check before the skip]).
    checked, flag, squares = scaling.unscale_and_check(to_unscale, scale, sum_of_squares=True)
    later = []
  deferred = [False] * len(grads)
  for i, g in zip(positions, checked):
    carried[i] = g
  for j in later:
    deferred[positions[j]] = True
  given_grads = [g for g, k in zip(grads, kept) if k and g is not None]
  if given_grads:
    # Keras's check_finite covers every non-None gradient, kept ones included.
    flag = tf.logical_and(
        flag, scaling.check_finite([finite.dense_part(g) for g in given_grads]))
  if not with_sum:
    clip = None
  return Step(carried, flag, scale, squares, deferred, clip, positions)


def given(grads, check=True):
  """A step for gradients already unscaled: applied as they are; with `check`,
  the flag `finite.all_finite` finds for them."""
  grads = list(grads)
  # Every gradient counts as unscaled already: `scaled` is None.
  return Step(grads, finite.all_finite(grads) if check else None,
              positions=[i for i, g in enumerate(grads) if g is not None])


def _dropping_result(fn):
  def call(*args):
    fn(*args)
  return call


def apply_if_finite(step, apply_fn, on_non_finite=None, args=(), caller="apply()"):
  """`apply_fn(step, *args)` if `step.flag` holds on every replica, else
  `on_non_finite()` (module docstring). Raises ValueError, naming `caller`,
  in a cross-replica context (Keras's words)."""
  if tf.distribute.in_cross_replica_context():
    raise ValueError(f"{caller} must be called in a replica context.")
  if on_non_finite is None:
    # Nothing to do on a skip: whatever apply_fn returns is dropped.
    on_non_finite = lambda: None  # noqa: E731
    apply_fn = _dropping_result(apply_fn)
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
