"""The "all gradients finite" flag: computed, remembered, found again, agreed on.

`scaling.unscale_and_check` computes a flag together with the unscaled
gradients; `LossScale.update(grads)` later asks `all_finite(grads)`, which
finds that flag instead of reading every gradient a second time, and checks
only the gradients it has no flag for. In a graph the flag is an output of the
FixedUnscaleGradsAndCheck op that produced the gradients, found from the
gradients themselves (NOTE [flag of the op]); eagerly and under XLA, where the
seam computes it with TF ops, it is `remember`ed against the gradients
(NOTE [flag registry]). `flag_in_sync` makes a flag the same on every replica
under tf.distribute (the one definition of that agreement), and
`all_finite_in_sync` is `all_finite` agreed so, as TF's `DynamicLossScale` and
Keras 3's `LossScaleOptimizer` need.
"""

import threading
import weakref

import tensorflow as tf

from fixed_loss_scale import ops


def dense_part(grad):
  """The tensor a gradient's check and unscaling read: IndexedSlices give their values."""
  return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def is_all_finite(tensors):
  """True (a bool scalar tensor) iff every element of every tensor is finite.

  TF's own `_is_all_finite` (tensorflow/python/training/experimental/
  loss_scale.py): `reduce_all(is_finite(t))` per tensor, then `reduce_all` of
  those; an empty list gives True.
  """
  per_tensor = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors]
  return tf.reduce_all(per_tensor)


# NOTE [flag registry]: a flag is remembered against the unscaled tensors it was
# computed from, keyed by the Python object (id plus a weak reference, since TF
# tensors are unhashable): nothing is kept alive by the registry but the flag,
# and an entry disappears with its tensor. A flag is only handed out where it
# can be used: eagerly, an eager flag; in a graph, a flag of that graph or of a
# graph it is nested in (a tf.function inside a tf.function, a cond branch).
# Anything else -- gradients clipped or cast after unscaling, a flag from
# another graph -- is not found and is checked again: a miss costs a pass over
# the gradients, never a wrong answer.
# Reentrant: a weak reference's callback (_forget) can run in a garbage
# collection triggered by an allocation while this thread holds the lock.
# Correctness never rests on it (a looked-up entry must still point at the
# very tensor); it only keeps concurrent replicas from losing entries.
_lock = threading.RLock()
_flags = {}  # id(tensor) -> (weakref to tensor, flag)


def _forget(key, ref):
  with _lock:
    entry = _flags.get(key)
    if entry is not None and entry[0] is ref:
      del _flags[key]


def remember(tensors, flag):
  """Records `flag` as the all-finite flag of each tensor in `tensors`."""
  for tensor in tensors:
    key = id(tensor)
    ref = weakref.ref(tensor, lambda r, key=key: _forget(key, r))
    with _lock:
      _flags[key] = (ref, flag)


def _usable_here(flag):
  """Whether `flag` can be used in the current context (NOTE [flag registry])."""
  flag_graph = getattr(flag, "graph", None)  # eager tensors have none (AttributeError)
  if tf.executing_eagerly():
    return flag_graph is None
  graph = tf.compat.v1.get_default_graph()
  while graph is not None:
    if graph is flag_graph:
      return True
    graph = getattr(graph, "outer_graph", None)
  return False


# NOTE [flag of the op]: a graph tensor written by one of the package's ops
# has its flag in the graph itself:
# - an unscaled_grads output of FixedUnscaleGradsAndCheck: that op's
#   all_finite output (the op checked exactly the values it wrote);
# - an output of FixedUnscaleGradsByTensor whose input is also read by a
#   FixedCheckGrads with the same loss_scale input: that check's all_finite
#   (it checked the same quotients, `g * (1 / scale)`, without writing them).
# Read from the graph, this needs no registry, survives a SavedModel round
# trip and finds the flag of ops built by `ops.*` directly. Only the ops' own
# outputs qualify: a tensor computed from them (clipped, cast, added) is a
# different op's output and is checked again.


def _flag_of_op(tensor):
  """The flag of `tensor` from the op that wrote it (NOTE [flag of the op]), else None."""
  op = getattr(tensor, "op", None)  # eager tensors have no op (AttributeError)
  op_type = getattr(op, "type", None)
  if op_type == ops.CHECK_OP:
    num_grads = len(op.outputs) - 2  # the unscaled grads, all_finite, sum_of_squares
    return op.outputs[num_grads] if tensor.value_index < num_grads else None
  if op_type == ops.UNSCALE_BY_TENSOR_OP:
    scaled, scale = op.inputs[tensor.value_index], op.inputs[len(op.inputs) - 1]
    for check in scaled.consumers():
      if check.type == ops.CHECK_ONLY_OP and check.inputs[len(check.inputs) - 1] is scale:
        return check.outputs[0]
  return None


def recorded_flag(tensor):
  """The flag of `tensor` (dense part) if usable here, else None: the flag
  output of the op that wrote it (NOTE [flag of the op]) or the one remembered
  for it (NOTE [flag registry])."""
  try:
    flag = _flag_of_op(tensor)
  except AttributeError:
    flag = None
  if flag is not None and _usable_here(flag):
    return flag
  with _lock:
    entry = _flags.get(id(tensor))
  if entry is None or entry[0]() is not tensor or not _usable_here(entry[1]):
    return None
  return entry[1]


def all_finite(grads):
  """This replica's flag for the nested `grads` (None skipped, IndexedSlices by
  their values): the remembered flags of the gradients that have one, and a
  check of the others. No new op when all gradients share one remembered flag."""
  flags, unchecked = [], []
  for grad in tf.nest.flatten(grads):
    if grad is None:
      continue
    tensor = dense_part(grad)
    flag = recorded_flag(tensor)
    if flag is None:
      unchecked.append(tensor)
    elif not any(flag is seen for seen in flags):
      flags.append(flag)
  if unchecked or not flags:
    flags.append(_check(unchecked))
  return flags[0] if len(flags) == 1 else tf.reduce_all(tf.stack(flags))


def _check(tensors):
  """A check of `tensors`: scaling.check_finite (the read-only op in graphs)."""
  # scaling imports this module (remember, dense_part), so it is looked up here.
  from fixed_loss_scale import scaling  # pylint: disable=import-outside-toplevel
  return scaling.check_finite(tensors)


def flag_in_sync(flag):
  """True iff `flag` is True on every replica, as TF's `DynamicLossScale.update`
  decides it: the flags cast to float32, summed across replicas, equal to the
  number of replicas.

  - No strategy, or one replica in a replica context: `flag` itself.
  - Replica context (inside `strategy.run`): `flag` is this replica's bool
    flag; the sum is an all-reduce.
  - Cross-replica context (a merge_call, TF's compat optimizer wrapper):
    `flag` holds each replica's flag already cast to float32 (per-replica
    values); the sum is the strategy's reduce.
  """
  if not tf.distribute.has_strategy():
    return flag
  if tf.distribute.in_cross_replica_context():
    strategy = tf.distribute.get_strategy()
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, flag, axis=None)
    return tf.equal(total, strategy.num_replicas_in_sync)
  context = tf.distribute.get_replica_context()
  if context.num_replicas_in_sync == 1:
    return flag
  total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(flag, tf.float32))
  return tf.equal(total, context.num_replicas_in_sync)


def all_finite_in_sync(grads):
  """`all_finite(grads)`, agreed across replicas by `flag_in_sync`: in a
  cross-replica context (TF's compat optimizer wrapper calls `update` there,
  with per-replica gradients) each replica's flag is found in that replica."""
  if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
    strategy = tf.distribute.get_strategy()
    return flag_in_sync(strategy.extended.call_for_each_replica(
        lambda g: tf.cast(all_finite(g), tf.float32), args=(grads,)))
  return flag_in_sync(all_finite(grads))
