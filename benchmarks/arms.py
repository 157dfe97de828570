"""The TensorFlow arms and the loops they are timed in.

Owns what an arm runs (`unscale_arm`: ours, TF's per-tensor multiply, the
IdentityN floor, nothing), the while-loop around it with its barriers
(`loop_function`, NOTE [equal scaffolding]), the Grappler options the loops
are built under, and the checks, read from the optimized graphs TF actually
ran, that an arm's work was not optimized away.
"""

import contextlib

import numpy as np
import tensorflow as tf

from fixed_loss_scale import ops

from benchmarks.common import LOSS_SCALE, RECIPROCAL

TF_DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


def make_variables(shapes, dtypes, seed=1):
  rng = np.random.default_rng(seed)
  out = []
  for shape, dtype in zip(shapes, dtypes):
    value = (rng.standard_normal(shape, dtype=np.float32) + 0.5)
    out.append(tf.Variable(tf.cast(value, TF_DTYPES[dtype])))
  return out


def unscale_arm(arm, grads):
  if arm == "ours":
    return ops.fixed_unscale_grads(grads, LOSS_SCALE)
  if arm in ("tf", "tf_xla"):
    # What TF's compat MixedPrecisionLossScaleOptimizer does: one multiply per
    # gradient by the reciprocal cast to the gradient's dtype.
    return [g * tf.constant(RECIPROCAL, g.dtype) for g in grads]
  if arm == "none":
    return list(grads)
  if arm == "floor":
    # NOTE [op floor]: one op that takes every tensor and returns it, doing
    # nothing else: what TF's executor charges any single op over the list
    # (an edge in and out per tensor, a Tensor set per output). No op over n
    # tensors, ours included, can cost less than this.
    return list(tf.raw_ops.IdentityN(input=grads))
  raise ValueError(arm)


def barrier(tensors):
  """`tensors` passed on once all of them exist: one IdentityN, which forwards
  every buffer and waits for all its inputs. Grappler's dependency optimizer
  removes IdentityN (and NoOp-and-Identity barriers where it can prove them
  redundant, which depends on the arm: NOTE [equal scaffolding]);
  run_scenario turns it off, so every arm keeps the same two ops a loop
  iteration."""
  return list(tf.raw_ops.IdentityN(input=tensors))


# NOTE [equal scaffolding]: every arm's loop must run the same ops around the
# arm, so that subtracting the `none` loop leaves exactly the arm's own ops.
# With Grappler's dependency optimizer on, it does not: measured on TF 2.21,
# it removes the barriers, and around FixedUnscaleGrads (one op that takes
# every tensor is a barrier already) also the loop body's inlined input
# Identities, which it keeps in the `none` and per-tensor loops. Our loop then
# ran n Identity ops fewer than its baseline, and on `tiny` (100 tensors) came
# out below it. With the dependency optimizer off (while the scenarios' loops
# are built and timed; never for the optimizer steps, which measure Grappler's
# real effect), every loop keeps the same n input Identities and the two
# IdentityN barriers. The arithmetic optimizer, which could fold TF's
# multiply, stays on.
GRAPPLER_FOR_LOOPS = {"dependency_optimization": False}


@contextlib.contextmanager
def grappler_options(options):
  """Grappler `options` for the functions instantiated (first called) inside."""
  previous = tf.config.optimizer.get_experimental_options()
  tf.config.optimizer.set_experimental_options(options)
  try:
    yield
  finally:
    restored = {k: previous.get(k, True) for k in options}
    tf.config.optimizer.set_experimental_options(restored)


def loop_function(arm, variables, repeats, jit=False, pass_variable=None):
  """tf.function(x): produce the gradients, apply `arm` `repeats` times in a
  while_loop with parallel_iterations=1, return every loop output.

  With `pass_variable` (NOTE [one pass]) every arm's loop also carries one
  tensor of the gradients' total size; the `one_pass` arm unscales it (our op)
  and hands the gradients on untouched, every other arm does the reverse."""

  def step(x):
    grads = [tf.nn.relu(v * tf.cast(x, v.dtype)) for v in variables]
    extra = [] if pass_variable is None else [tf.nn.relu(pass_variable * x)]

    def body(i, *carried):
      # Barriers: the arm starts when every gradient of the iteration is there
      # and ends when its last output is, so its time is neither hidden in nor
      # charged with the loop's own per-variable ops (Switch, Merge, ...).
      carried = barrier(list(carried))
      passed, gs = carried[:len(extra)], carried[len(extra):]
      if arm == "one_pass":
        passed = unscale_arm("ours", passed)
      else:
        gs = unscale_arm(arm, gs)
      return [i + 1] + barrier(passed + list(gs))

    out = tf.while_loop(lambda i, *gs: i < repeats, body, [tf.constant(0)] + extra + grads,
                        parallel_iterations=1)
    return out[1:]  # every loop output, the passed tensor's too: Grappler prunes unused ones

  return tf.function(step, jit_compile=jit, autograph=False)


def optimized_op_counts(fn, x):
  """Op types and counts in the graphs TF actually ran for fn(x), after Grappler
  (read from the run metadata of one call)."""
  from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
  context.context().enable_run_metadata()
  context.context().enable_graph_collection()
  try:
    fn(x)
    metadata = context.context().export_run_metadata()
  finally:
    context.context().disable_graph_collection()
    context.context().disable_run_metadata()
  graphs = []
  for function_graph in metadata.function_graphs:
    graphs += list(function_graph.partition_graphs) or [function_graph.post_optimization_graph]
  return count_ops(graphs)


def count_ops(graph_defs):
  counts = {}
  for graph in graph_defs:
    for node in graph.node:
      counts[node.op] = counts.get(node.op, 0) + 1
  return counts


def check_arm(arm, counts, num_tensors):
  """(ok, note): whether the unscale of `arm` is still in the optimized graph."""
  if arm == "ours":
    n = counts.get("FixedUnscaleGrads", 0)
    return n >= 1, f"FixedUnscaleGrads x{n}"
  if arm == "tf":
    # num_tensors multiplies produce the gradients; the unscale adds as many.
    n = counts.get("Mul", 0)
    return n >= 2 * num_tensors, f"Mul x{n} for {num_tensors} tensors"
  if arm == "one_pass":
    n = counts.get("FixedUnscaleGrads", 0)
    return n >= 1, f"FixedUnscaleGrads x{n} over the 1 passed tensor"
  return True, ""


def check_floor(counts, none_counts):
  """(ok, note) for the floor arm: its loop runs one IdentityN more than the
  baseline's. Grappler removes an IdentityN over a single tensor (the barriers
  too), so there is no floor to time at 1 tensor."""
  n, base = counts.get("IdentityN", 0), none_counts.get("IdentityN", 0)
  return n == base + 1, f"IdentityN x{n}, baseline x{base}"


def xla_check(fn, x, num_tensors):
  try:
    hlo = fn.experimental_get_compiler_ir(x)(stage="optimized_hlo")
  except Exception as error:  # pylint: disable=broad-except
    return True, f"HLO not read: {type(error).__name__}"
  n = hlo.count(" multiply(")
  return n >= 1, f"HLO multiply x{n}"
