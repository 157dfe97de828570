"""Global-norm clipping whose norm comes from the unscaling pass.

`clip_by_global_norm(grads, clip_norm, loss_scale=None)` is
`tf.clip_by_global_norm` with the squared global norm taken from
`scaling.unscale_and_check(..., sum_of_squares=True)` (the fused op in graphs)
instead of one `L2Loss` per gradient, and with the loss scale, when given,
divided out in the same call.

The Keras wrappers (`keras.FixedLossScaleOptimizer`, `keras.LossScaleOptimizer`)
clip with the sum from their check pass when their inner optimizer has
`global_clipnorm`, and keep the inner optimizer from clipping a second time
(NOTE [fused global clipping]).
"""

import contextlib
import threading

import tensorflow as tf

from fixed_loss_scale import scaling


# NOTE [clipping tolerance]: the sum of squares is not summed in TensorFlow's
# (or Keras's) order (NOTE [sum of squares] in tf_ops/core/cpu/scale_loop.h), so the global norm,
# and with it every clipped value (through clip_norm / norm), may differ from
# `tf.clip_by_global_norm`'s and Keras's `clip_by_global_norm`'s; given the
# same norm the clipped values are the same bits, since the factor is computed
# with their own expression. The sums are of non-negative terms, so each is
# within n * 2**-24 (relative) of the exact sum for n additions into one
# float32 accumulator: a few thousand at most in the op's blocks (about 1e-4
# in the worst case), fewer in TensorFlow's reduction tree; for gradients the
# rounding errors mostly cancel, as a random walk (about sqrt(n) * 2**-24).
# The square root halves the relative error. The tests compare norms and
# clipped values with rtol=1e-5: about five times the random-walk estimate for
# blocks of 4096 (2e-6 on the norm), far more than the float32 ulp or two
# measured; a norm
# within that tolerance of `clip_norm` may clip on one side and not on the
# other, so the tests keep away from it.


def _check_sequence(grads):
  # tf.clip_by_global_norm's check and words.
  if not isinstance(grads, (list, tuple)):
    raise TypeError(f"`t_list` should be a sequence of tensors. Received {type(grads)}.")


@tf.autograph.experimental.do_not_convert
def clip_by_global_norm(grads, clip_norm, loss_scale=None, name=None):
  """Clips `grads` by the ratio of `clip_norm` to their global norm.

  Returns what `tf.clip_by_global_norm(grads, clip_norm)` returns -- the list
  of clipped gradients (None stays None, tf.IndexedSlices stay IndexedSlices
  with their indices; each value times `cast(scale, dtype)` where `scale =
  clip_norm * min(1 / norm, 1 / clip_norm)`) and the global norm, a float32
  scalar -- with the squared norm taken from `scaling.unscale_and_check(...,
  sum_of_squares=True)`: one read of every gradient for the norm (the fused op
  in graphs), instead of TensorFlow's `L2Loss` per gradient.

  With `loss_scale` (a Python or numpy number, or a float32 scalar tensor or
  variable such as a dynamic scale), `grads` are first divided by it in that
  same call, as `scaling.unscale_gradients` would: the result is the clipped
  *unscaled* gradients and their global norm. `tf.math.is_finite(norm)` then
  says whether every unscaled value is finite (it is also False when the
  squares of finite values overflow float32).

  Differences from `tf.clip_by_global_norm`:

  - the norm equals TensorFlow's within the tolerance of NOTE [clipping
    tolerance], not bit for bit;
  - gradients of different dtypes may be mixed (TensorFlow's `global_norm`
    stacks per-tensor norms of each dtype and fails); squares are summed in
    float32 (float64 for float64), so float16 gradients do not overflow where
    TensorFlow's float16 `L2Loss` does, and the norm is always float32;
  - a list of None only gives norm 0 and returns the Nones (TensorFlow fails);
  - there is no `use_norm` argument (pass it to `tf.clip_by_global_norm`).

  As in TensorFlow, a norm that is inf or NaN (a gradient holds inf or NaN)
  makes every clipped value NaN.

  Args:
    grads: a list or tuple of tensors, tf.IndexedSlices or None.
    clip_norm: the clipping ratio, a positive number or float32 scalar tensor.
    loss_scale: None (no unscaling) or the scale to divide `grads` by first.
    name: optional name scope.

  Raises:
    TypeError: if `grads` is not a list or tuple (TensorFlow's message).
  """
  _check_sequence(grads)
  grads = list(grads)
  with tf.name_scope(name or "clip_by_global_norm"):
    unscaled, _, sum_of_squares = scaling.unscale_and_check(
        grads, 1.0 if loss_scale is None else loss_scale, sum_of_squares=True)
    norm = tf.sqrt(sum_of_squares, name="global_norm")
    # TensorFlow's own scaling step, given the norm: the same bits from the same norm.
    return tf.clip_by_global_norm(unscaled, clip_norm, use_norm=norm)


def keras_clip_by_global_norm(grads, sum_of_squares, clip_norm):
  """Keras 3's `clip_by_global_norm(grads, clip_norm)`
  (keras/src/optimizers/base_optimizer.py) with the norm given by its square:
  the same expression, so the same bits for the same norm (inf or NaN norm:
  NaN values, as Keras)."""
  use_norm = tf.sqrt(sum_of_squares)
  scale_for_finite = clip_norm * tf.minimum(1.0 / use_norm, 1.0 / clip_norm)
  scale = scale_for_finite + (use_norm - use_norm)
  return [g * scale if g is not None else g for g in grads]


# NOTE [fused global clipping]: Keras optimizers clip in `apply`
# (`_backend_apply_gradients` -> `_clip_gradients`), reading every gradient
# again for `global_clipnorm`. A wrapper's check pass (apply_step.prepare:
# the fused op or the read-only check, with the sum of squares) already has
# the squared norm of exactly the gradients the inner optimizer would clip
# (the unscaled ones, without None and overwrite-with-gradient variables), so
# it clips them itself (`keras_clip_by_global_norm`) and calls the inner
# `apply` under `inner_global_clipping_skipped`, which makes the inner optimizer's
# `_clip_gradients` pass gradients through -- in that thread (tf.distribute
# replicas trace in threads of their own), during that call only. Nothing the
# user set changes: `global_clipnorm` keeps its value and `get_config` shows
# it; outside the call the inner optimizer has no trace of the hook (the
# instance attribute is removed when the last thread leaves).
#
# Only `global_clipnorm` is fused: Keras applies `clipnorm` first when both are
# set (they cannot be), `clipvalue` needs no norm, and with
# `gradient_accumulation_steps` Keras clips the accumulated mean, not this
# step's gradients, so the inner optimizer clips as usual then.
def fused_global_clipnorm(optimizer):
  """The `global_clipnorm` a wrapper clips with from the unscaling pass, or
  None where the inner `optimizer` must clip itself (NOTE [fused global
  clipping])."""
  clip_norm = getattr(optimizer, "global_clipnorm", None)
  if not clip_norm or clip_norm <= 0:
    return None
  if getattr(optimizer, "clipnorm", None) or getattr(optimizer, "gradient_accumulation_steps",
                                                         None):
    return None
  return clip_norm


class _Skipping(threading.local):
  def __init__(self):
    super().__init__()
    self.depth = {}  # id(optimizer) -> nesting depth in this thread


_skipping = _Skipping()
_hook_lock = threading.Lock()
_hook_users = {}  # id(optimizer) -> number of threads inside inner_global_clipping_skipped


def _install_hook(optimizer):
  original = type(optimizer)._clip_gradients  # pylint: disable=protected-access
  key = id(optimizer)

  def _clip_gradients(grads):
    if _skipping.depth.get(key):
      return grads
    return original(optimizer, grads)

  # object.__setattr__: Keras's tracking __setattr__ has no business with it.
  object.__setattr__(optimizer, "_clip_gradients", _clip_gradients)


@contextlib.contextmanager
def inner_global_clipping_skipped(optimizer):
  """Within this context, in this thread, `optimizer._clip_gradients` returns
  its gradients as given (NOTE [fused global clipping])."""
  key = id(optimizer)
  with _hook_lock:
    if _hook_users.get(key, 0) == 0:
      _install_hook(optimizer)
    _hook_users[key] = _hook_users.get(key, 0) + 1
  depth = _skipping.depth
  depth[key] = depth.get(key, 0) + 1
  try:
    yield
  finally:
    depth[key] -= 1
    if not depth[key]:
      del depth[key]
    with _hook_lock:
      _hook_users[key] -= 1
      if _hook_users[key] == 0:
        del _hook_users[key]
        object.__delattr__(optimizer, "_clip_gradients")
