"""scale_loss / unscale_gradients: custom ops in graphs, plain arithmetic elsewhere.

Inside a graph (tf.function, TF1 Session graphs, tf.distribute replicas) these
emit FixedScaleLoss and FixedUnscaleGrads: one for all dense gradients where a
GPU is present or the gradients total at most CPU_GROUP_BYTES, else one per run
of consecutive gradients of at most that size (NOTE [CPU groups]). Executing
eagerly, or inside an XLA context (jit_compile=True, where custom ops have no
kernel), they compute the same numbers with TensorFlow arithmetic: half and
bfloat16 in float32 rounded once, float32 with the float32 reciprocal, float64
with the float64 reciprocal of the float32 scale.

`unscale_and_check` unscales and checks in one read: in graphs one
FixedUnscaleGradsAndCheck per group, for a number and for a loss scale that is
a float32 scalar tensor (a variable: a dynamic scale) alike (NOTE [fused check
seam]). `unscale_gradients` with a tensor scale computes the arithmetic above,
in graphs too. For an update that waits for the flag or the norm,
`check_before_update` and `unscale_deferred` split that call around the wait
(NOTE [check before the skip]); `check_finite` is the read-only check alone.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from fixed_loss_scale import finite
from fixed_loss_scale import ops


def uses_custom_ops():
  """True where the custom ops run: building a graph that XLA does not compile."""
  if tf.executing_eagerly():
    return False
  graph = tf.compat.v1.get_default_graph()
  return not control_flow_util.GraphOrParentsInXlaContext(graph)


def _factor(value, dtype):
  return value if tf.is_tensor(value) else tf.constant(value, dtype)


def _multiply(x, factor32, factor64):
  """x * factor with the ops' numerics (see the module docstring); the factors
  are numbers or, for a tensor scale, float32 and float64 scalar tensors."""
  if x.dtype == tf.float64:
    return x * _factor(factor64, tf.float64)
  if x.dtype == tf.float32:
    return x * _factor(factor32, tf.float32)
  y = tf.cast(tf.cast(x, tf.float32) * _factor(factor32, tf.float32), x.dtype)
  if x.dtype == tf.bfloat16:
    # TF's vectorised float32->bfloat16 Cast drops the sign of NaN; the op (and
    # ml_dtypes) give sign|0x7fc0. Only a NaN input gives NaN (the factor is a
    # finite normal number), so restore the input's sign there.
    sign = tf.bitwise.bitwise_and(tf.bitcast(x, tf.uint16), tf.constant(0x8000, tf.uint16))
    nan = tf.bitwise.bitwise_or(sign, tf.constant(0x7FC0, tf.uint16))
    y = tf.bitcast(tf.where(tf.math.is_nan(x), nan, tf.bitcast(y, tf.uint16)), tf.bfloat16)
  return y


# No data-dependent control flow: AutoGraph need not convert it (and would warn
# that it cannot read the generated op wrappers' source).
@tf.autograph.experimental.do_not_convert
def scale_loss(loss, loss_scale):
  """Returns `loss * loss_scale` (FixedScaleLoss in graphs)."""
  loss_scale = ops.validate_loss_scale(loss_scale)
  if uses_custom_ops():
    return ops.fixed_scale_loss(loss, loss_scale)
  loss = ops.as_float_tensor(loss, "FixedScaleLoss", "loss")
  scale32 = np.float32(loss_scale)
  return _multiply(loss, scale32, float(scale32))


_dense_part = finite.dense_part


def _rebuild(grad, unscaled):
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(unscaled, grad.indices, grad.dense_shape)
  return unscaled


# NOTE [CPU groups]: on CPU one op over all gradients is a barrier. It starts
# when the last gradient exists, so gradients that TensorFlow would otherwise
# produce, unscale and hand to the optimizer one by one while they are in cache
# all go out to memory and come back: one more pass over every gradient at DRAM
# speed, the same cost as Keras 3's LossScaleOptimizer (whose all-finite check
# feeds a cond). Grouping runs of consecutive gradients -- neighbours in the list
# are produced together by backprop -- into ops of at most CPU_GROUP_BYTES (the
# best of 1-8 MiB in A/B runs on a 2-core Zen 3 with 512 KiB of L2 per core; a
# larger gradient is its own group, still split over TensorFlow's CPU threads)
# lets each group run as soon as its gradients exist, while they are in cache.
# Measured on BERT-sized float32 gradients with Keras 3 SGD (docs/BENCHMARKS.md,
# "Optimizer steps"). On a GPU the kernels of a stream run one after another
# anyway, and one launch for the whole list is the point, so a GPU's gradients
# stay one op there.
#
# Which gradients are on a CPU is read from the gradients themselves: each
# tensor's `.device`, parsed with tf.DeviceSpec, as it stands in the graph being
# built. An unplaced gradient (empty device string) goes where TensorFlow's
# placer will put it, the process's first device of `unplaced_device_type`,
# which the caller passes in ("GPU" where the process has a logical GPU, else
# "CPU"): that bit is the only process state involved, and unscale_groups
# itself is a pure function of its arguments. A device string is taken as
# written: a graph built under tf.device("/GPU:0") on a machine without a GPU
# keeps that string and is grouped as on a GPU (soft placement moves it to the
# CPU only when it runs; the numbers are the same either way).
CPU_GROUP_BYTES = 1 << 20


def _static_bytes(tensor):
  """Bytes of a tensor of fully known shape; CPU_GROUP_BYTES (a group of its
  own) when its shape is not known while tracing."""
  count = tensor.shape.num_elements()
  return CPU_GROUP_BYTES if count is None else count * tensor.dtype.size


def _device_key(device, unplaced_device_type):
  """(job, replica, task, type, index) of a device string; missing fields are
  the process's defaults (localhost, 0, 0, `unplaced_device_type`, 0)."""
  spec = tf.DeviceSpec.from_string(device or "")
  return (spec.job or "localhost", spec.replica or 0, spec.task or 0,
          (spec.device_type or unplaced_device_type).upper(), spec.device_index or 0)


def unscale_groups(dense, unplaced_device_type, cpu_group_bytes=CPU_GROUP_BYTES):
  """Splits `dense` into groups that get one FixedUnscaleGrads each (NOTE [CPU groups]).

  A pure function of the tensors' devices, static shapes and dtypes and of
  `unplaced_device_type`:

  - the gradients on one non-CPU device (a GPU) form one group, wherever they
    are in the list;
  - the gradients on one CPU device form runs, in list order, of at most
    `cpu_group_bytes` (a larger gradient, or one of unknown size, is a group
    of its own; 0: one gradient per group); gradients on other devices in
    between do not break a run;
  - gradients on different devices never share a group.

  Args:
    dense: a list of tensors (graph tensors; eager tensors work too).
    unplaced_device_type: the device type an unplaced gradient (empty
      `.device`) will run on, e.g. "GPU" or "CPU". Required: callers decide it
      (unscale_gradients passes "GPU" where the process has a logical GPU).

  Returns:
    A list of lists of positions into `dense`, each in increasing order, the
    groups ordered by their first position; every position appears once.
  """
  if not isinstance(unplaced_device_type, str) or not unplaced_device_type:
    raise ValueError("unplaced_device_type must be a device type such as 'GPU' or 'CPU', "
                     f"got {unplaced_device_type!r}")
  groups = []
  open_group = {}  # device key -> [group, its bytes] (CPU: the run still filling)
  for position, tensor in enumerate(dense):
    key = _device_key(tensor.device, unplaced_device_type)
    current = open_group.get(key)
    if key[3] != "CPU":
      if current is None:
        current = open_group[key] = [[], 0]
        groups.append(current[0])
      current[0].append(position)
      continue
    size = _static_bytes(tensor)
    if current is None or (current[0] and current[1] + size > cpu_group_bytes):
      current = open_group[key] = [[], 0]
      groups.append(current[0])
    current[0].append(position)
    current[1] += size
  return groups


def unplaced_device_type():
  """Where TensorFlow places an op without a device: "GPU" if this process has
  a logical GPU, else "CPU"."""
  return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _unscale_dense(dense, loss_scale):
  """`dense` (a list of tensors) divided by the scale, a validated Python float
  or a float32 scalar tensor."""
  if tf.is_tensor(loss_scale):
    # FixedUnscaleGrads takes its scale as an attr: for a tensor, the ops'
    # arithmetic, the reciprocals as TF's compat wrapper computes them (1 /
    # scale, a float32 RealDiv), which are ReciprocalFactorFor's.
    reciprocal32 = tf.constant(1.0, tf.float32) / loss_scale
    reciprocal64 = (tf.constant(1.0, tf.float64) / tf.cast(loss_scale, tf.float64)
                    if any(g.dtype == tf.float64 for g in dense) else None)
    return [_multiply(g, reciprocal32, reciprocal64) for g in dense]
  if uses_custom_ops():
    unscaled = [None] * len(dense)
    for group in unscale_groups(dense, unplaced_device_type()):
      for position, u in zip(group, ops.fixed_unscale_grads([dense[i] for i in group],
                                                              loss_scale)):
        unscaled[position] = u
    return unscaled
  scale32 = np.float32(loss_scale)
  reciprocal32 = np.float32(1) / scale32
  reciprocal64 = 1.0 / float(scale32)
  return [_multiply(g, reciprocal32, reciprocal64) for g in dense]


def _sum_of_squares(unscaled):
  """float32 sum of the squares of every element of `unscaled` (a list of
  tensors): each tensor's in float32 (float64 for float64), added in float64,
  rounded once to float32 (the arithmetic counterpart of the op's NOTE [sum of
  squares] in tf_ops/core/cpu/scale_loop.h)."""
  total = tf.constant(0.0, tf.float64)
  for u in unscaled:
    wide = u if u.dtype == tf.float64 else tf.cast(u, tf.float32)
    total += tf.cast(tf.reduce_sum(tf.square(wide)), tf.float64)
  return tf.cast(total, tf.float32)


def _combine(flags, squares, sum_of_squares):
  """One flag and sum for several groups: reduce_all of the flags; the float32
  sums added in float64 and rounded once, as the op's shards (NOTE [sum of
  squares], scale_loop.h)."""
  if len(flags) == 1:
    return flags[0], squares[0] if sum_of_squares else None
  flag = tf.reduce_all(tf.stack(flags))
  if not sum_of_squares:
    return flag, None
  total = tf.add_n([tf.cast(s, tf.float64) for s in squares])
  return flag, tf.cast(total, tf.float32)


def _checked_groups(dense, loss_scale, sum_of_squares, defer):
  """(outputs, deferred, flag, sum of squares or None) from one op per group of
  unscale_groups (NOTE [CPU groups]); `loss_scale` is a validated Python float
  or a float32 scalar tensor. A group gets FixedUnscaleGradsAndCheck (its
  outputs unscaled) or the read-only check (its outputs the gradients as
  given, `deferred`): on a CPU with `defer` "cpu", everywhere with "all"
  (NOTE [check before the skip])."""
  if not tf.is_tensor(loss_scale):
    loss_scale = ops.loss_scale_tensor(loss_scale)  # one Const for every group
  unplaced = unplaced_device_type()
  groups = unscale_groups(dense, unplaced) or [[]]
  outputs, deferred = [None] * len(dense), [False] * len(dense)
  flags, squares = [], []
  for group in groups:
    members = [dense[i] for i in group]
    later = defer == "all" or (
        defer == "cpu" and (not group or _device_key(members[0].device, unplaced)[3] == "CPU"))
    if later:
      flag, group_squares = ops.fixed_check_grads(members, loss_scale,
                                                  sum_of_squares=sum_of_squares)
      results = members
    else:
      results, flag, group_squares = ops.fixed_unscale_grads_and_check(
          members, loss_scale, sum_of_squares=sum_of_squares)
    for position, u in zip(group, results):
      outputs[position] = u
      deferred[position] = later
    flags.append(flag)
    squares.append(group_squares)
  return (outputs, deferred) + _combine(flags, squares, sum_of_squares)


@tf.autograph.experimental.do_not_convert
def check_finite(tensors):
  """True (a bool scalar tensor) iff every element of every tensor in the list
  `tensors` is finite. In graphs one read-only FixedCheckGrads per group of
  NOTE [CPU groups] (the scale 1: the quotients are the values); eagerly and
  under XLA TensorFlow's check, finite.is_all_finite. True for no tensors."""
  if not uses_custom_ops():
    return finite.is_all_finite(tensors)
  dense = [ops.as_float_tensor(t, ops.CHECK_ONLY_OP, f"grads[{i}]") for i, t in enumerate(tensors)]
  return _checked_groups(dense, 1.0, False, "all")[2]


def _unscale_arithmetic(dense, loss_scale, check, sum_of_squares):
  """(unscaled `dense`, flag or None, sum of squares or None) with TF ops."""
  unscaled = _unscale_dense(dense, loss_scale) if dense else []
  flag = finite.is_all_finite(unscaled) if check else None
  squares = _sum_of_squares(unscaled) if sum_of_squares else None
  return unscaled, flag, squares


def _unscale(grads, loss_scale, check, sum_of_squares=False, defer=None):
  """(unscaled `grads`, the all-finite flag of the unscaled dense parts, or None
  when not `check`, their float32 sum of squares, or None when not
  `sum_of_squares`, and the flat positions left scaled for later: NOTE [check
  before the skip], only with `defer` "cpu" or "all")."""
  op_name = ops.CHECK_OP if check else "FixedUnscaleGrads"
  if tf.is_tensor(loss_scale) or isinstance(loss_scale, tf.Variable):
    # A dynamic scale: its dtype and rank checked, its value read once here.
    loss_scale = tf.convert_to_tensor(ops.loss_scale_tensor(loss_scale, op_name))
  else:
    loss_scale = ops.validate_loss_scale(loss_scale)
  flat = tf.nest.flatten(grads)
  positions = [i for i, g in enumerate(flat) if g is not None]
  dense = [
      ops.as_float_tensor(_dense_part(flat[i]), op_name, f"grads[{i}]")
      for i in positions
  ]
  deferred = [False] * len(dense)
  if check and uses_custom_ops():
    unscaled, deferred, flag, squares = _checked_groups(dense, loss_scale, sum_of_squares, defer)
  else:
    unscaled, flag, squares = _unscale_arithmetic(dense, loss_scale, check, sum_of_squares)
    if check:
      finite.remember(unscaled, flag)
  later = [i for i, d in zip(positions, deferred) if d]
  if not dense:
    return grads, flag, squares, later
  result = list(flat)
  for i, u, d in zip(positions, unscaled, deferred):
    if not d:
      result[i] = _rebuild(flat[i], u)
  return tf.nest.pack_sequence_as(grads, result), flag, squares, later


@tf.autograph.experimental.do_not_convert
def unscale_gradients(grads, loss_scale):
  """Returns `grads` with every gradient divided by `loss_scale`.

  `grads` is any nested structure; None stays None, tf.IndexedSlices keep their
  indices and dense shape, and the structure is preserved. `loss_scale` is a
  Python or numpy number (validated as a fixed scale) or a float32 scalar
  tensor or variable (a dynamic scale). With a number, in graphs the dense
  parts go through FixedUnscaleGrads: a single op where a GPU is present or
  they total at most CPU_GROUP_BYTES, else one per group of consecutive
  gradients (NOTE [CPU groups]); `ops.fixed_unscale_grads` is always one op.
  With a tensor, TensorFlow arithmetic with the same numerics (checking too is
  `unscale_and_check`, which gives a tensor scale to its fused op).
  """
  return _unscale(grads, loss_scale, check=False)[0]


# NOTE [fused check seam]: unscale_and_check unscales and checks in one read.
# In graphs (not XLA) that is one FixedUnscaleGradsAndCheck per group of NOTE
# [CPU groups], the scale its input (a Const for a number, the tensor itself
# for a dynamic scale: any positive normal float32, NOTE [tensor loss scale
# range] in tf_ops/core/tensor_span.h); several groups give reduce_all of
# their flags and the float64 sum of their sums, rounded once (_combine).
# finite.all_finite later finds the flag from the op (NOTE [flag of the op]).
# Eagerly and under XLA: the arithmetic above, TensorFlow's check and
# finite.remember. Either way the unscaled values are unscale_gradients' bit
# for bit, the flag is False iff one of them is inf or NaN (the quotients are
# checked, not the scaled values: they differ below a scale of 1), and the sum
# is `tf.linalg.global_norm(g)**2` up to float32 rounding (docs/OVERFLOW.md,
# "Tolerance of the norm").
#
# NOTE [check before the skip]: an update that waits for the flag (a skip)
# does not need the quotients before that barrier. The fused op writes every
# one of them to memory there, and the update reads them back after it. So on
# a CPU, check_before_update gives each group the read-only FixedCheckGrads
# (the same flag and sum), which runs as the group's gradients appear, while
# they are in cache, and writes nothing; unscale_deferred then divides them
# inside the apply branch, one op per gradient, each handed to a thread that
# runs its variable's update next (NOTE [dispatched in the apply branch] in
# fixed_loss_scale_kernels.cc), which finds the quotients in cache (the kernel
# reuses a gradient's buffer where nothing else reads it). Per gradient and
# dispatched measured faster than groups, and than inline ops, which all ran
# before any update (docs/BENCHMARKS.md, "Overflow safety").
# A GPU keeps the fused op: one launch instead of two, and no cache that would
# hold the gradients. A global-norm clip with no skip keeps it too: no
# decision would hold a later unscale back, so it would run as early as the
# check. DEFER_ON_CPU is the choice for CPUs; the optimizer-step arms of
# `python -m benchmarks --overflow` measure both shapes.
DEFER_ON_CPU = True
@tf.autograph.experimental.do_not_convert
def unscale_and_check(grads, loss_scale, sum_of_squares=False):
  """Returns `(unscaled grads, all_finite)`: `unscale_gradients(grads,
  loss_scale)` and a scalar bool tensor, True iff every unscaled value is
  finite (None gradients skipped, tf.IndexedSlices by their values; True for no
  gradients). The flag is this replica's: `finite.all_finite_in_sync` agrees
  across replicas. See NOTE [fused check seam].

  With `sum_of_squares=True`, returns `(unscaled grads, all_finite,
  sum_of_squares)`: the third is a float32 scalar tensor, the sum of the
  squares of every unscaled value (the squared global norm of
  `tf.clip_by_global_norm`; 0 for no gradients; Inf or NaN when a value is not
  finite), see docs/OVERFLOW.md, "Tolerance of the norm"."""
  unscaled, flag, squares, _ = _unscale(grads, loss_scale, check=True,
                                        sum_of_squares=sum_of_squares)
  return (unscaled, flag, squares) if sum_of_squares else (unscaled, flag)


@tf.autograph.experimental.do_not_convert
def check_before_update(grads, loss_scale, sum_of_squares=False, defer_everywhere=False):
  """`unscale_and_check` for an update that waits for the flag (a skip):
  returns `(grads, deferred, all_finite, sum_of_squares or None)`. `grads` is
  the list `grads` with the positions in `deferred` (a list of indices) still
  as given -- checked by the read-only op, to be divided by `unscale_deferred`
  where they are consumed -- and the others unscaled as `unscale_and_check`
  gives them; the flag and sum are `unscale_and_check`'s. `defer_everywhere`:
  every gradient is checked read-only and deferred, on any device (an update
  that unscales by itself).
  NOTE [check before the skip]."""
  checked, flag, squares, deferred = _unscale(
      list(grads), loss_scale, check=True, sum_of_squares=sum_of_squares,
      defer="all" if defer_everywhere else ("cpu" if DEFER_ON_CPU else None))
  return checked, deferred, flag, squares


@tf.autograph.experimental.do_not_convert
def unscale_deferred(grads, deferred, loss_scale):
  """`grads` (a list) with the positions in `deferred` divided by `loss_scale`
  (the scale given to `check_before_update`): the same numbers as
  `unscale_gradients`: one FixedUnscaleGradsByTensor per CPU gradient, one
  per other device (NOTE [check before the skip])."""
  grads = list(grads)
  if not deferred:
    return grads
  if not tf.is_tensor(loss_scale):
    loss_scale = ops.loss_scale_tensor(loss_scale)
  dense = [_dense_part(grads[i]) for i in deferred]
  for group in unscale_groups(dense, unplaced_device_type(), cpu_group_bytes=0):
    unscaled = ops.fixed_unscale_grads_by_tensor([dense[j] for j in group], loss_scale)
    for j, u in zip(group, unscaled):
      grads[deferred[j]] = _rebuild(grads[deferred[j]], u)
  return grads
