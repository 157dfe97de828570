"""scale_loss / unscale_gradients: custom ops in graphs, plain arithmetic elsewhere.

Inside a graph (tf.function, TF1 Session graphs, tf.distribute replicas) these
emit FixedScaleLoss and FixedUnscaleGrads: one for all dense gradients where a
GPU is present or the gradients total at most CPU_GROUP_BYTES, else one per run
of consecutive gradients of at most that size (NOTE [CPU groups]). Executing
eagerly, or inside an XLA context (jit_compile=True, where custom ops have no
kernel), they compute the same numbers with TensorFlow arithmetic: half and
bfloat16 in float32 rounded once, float32 with the float32 reciprocal, float64
with the float64 reciprocal of the float32 scale.
"""

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from fixed_loss_scale import ops


def uses_custom_ops():
  """True where the custom ops run: building a graph that XLA does not compile."""
  if tf.executing_eagerly():
    return False
  graph = tf.compat.v1.get_default_graph()
  return not control_flow_util.GraphOrParentsInXlaContext(graph)


def _multiply(x, factor32, factor64):
  """x * factor with the ops' numerics (see the module docstring)."""
  if x.dtype == tf.float64:
    return x * tf.constant(factor64, tf.float64)
  if x.dtype == tf.float32:
    return x * tf.constant(factor32, tf.float32)
  y = tf.cast(tf.cast(x, tf.float32) * tf.constant(factor32, tf.float32), x.dtype)
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


def _dense_part(grad):
  """The tensor a gradient's unscaling applies to: IndexedSlices scale their values."""
  return grad.values if isinstance(grad, tf.IndexedSlices) else grad


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
# anyway, and one launch for the whole list is the point, so the list stays one
# op there.
CPU_GROUP_BYTES = 1 << 20


def _static_bytes(tensor):
  """Bytes of a tensor of fully known shape; CPU_GROUP_BYTES (a group of its
  own) when its shape is not known while tracing."""
  count = tensor.shape.num_elements()
  return CPU_GROUP_BYTES if count is None else count * tensor.dtype.size


def unscale_groups(dense):
  """`dense` split into lists of consecutive tensors, one FixedUnscaleGrads each
  (NOTE [CPU groups])."""
  if tf.config.list_logical_devices("GPU"):
    return [dense]
  groups, current, current_bytes = [], [], 0
  for tensor in dense:
    size = _static_bytes(tensor)
    if current and current_bytes + size > CPU_GROUP_BYTES:
      groups.append(current)
      current, current_bytes = [], 0
    current.append(tensor)
    current_bytes += size
  groups.append(current)
  return groups


@tf.autograph.experimental.do_not_convert
def unscale_gradients(grads, loss_scale):
  """Returns `grads` with every gradient divided by `loss_scale`.

  `grads` is any nested structure; None stays None, tf.IndexedSlices keep their
  indices and dense shape, and the structure is preserved. In graphs the dense
  parts go through FixedUnscaleGrads: a single op where a GPU is present or they
  total at most CPU_GROUP_BYTES, else one per group of consecutive gradients
  (NOTE [CPU groups]); `ops.fixed_unscale_grads` is always one op.
  """
  loss_scale = ops.validate_loss_scale(loss_scale)
  flat = tf.nest.flatten(grads)
  positions = [i for i, g in enumerate(flat) if g is not None]
  dense = [
      ops.as_float_tensor(_dense_part(flat[i]), "FixedUnscaleGrads", f"grads[{i}]")
      for i in positions
  ]
  if not dense:
    return grads
  if uses_custom_ops():
    unscaled = [u for group in unscale_groups(dense)
                for u in ops.fixed_unscale_grads(group, loss_scale)]
  else:
    scale32 = np.float32(loss_scale)
    reciprocal32 = np.float32(1) / scale32
    reciprocal64 = 1.0 / float(scale32)
    unscaled = [_multiply(g, reciprocal32, reciprocal64) for g in dense]
  result = list(flat)
  for i, u in zip(positions, unscaled):
    result[i] = _rebuild(flat[i], u)
  return tf.nest.pack_sequence_as(grads, result)
