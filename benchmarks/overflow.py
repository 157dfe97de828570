"""The checks at op level: the read-only check and the fused unscale-and-check
against the passes they replace.

Owns the `--overflow` arms over one gradient set: FixedUnscaleGrads alone,
the read-only check FixedCheckGrads (flag only, and with its sum of squares),
the fused FixedUnscaleGradsAndCheck (flag only, and with its sum of squares),
TF's per-tensor unscale and check as TF's DynamicLossScale and Keras 3 do it,
our FixedUnscaleGrads followed by that check (this package without the fused
op), and our FixedUnscaleGrads followed by tf.clip_by_global_norm's norm (the
clipping comparison); the loop they are timed in (NOTE [check loop]), their
graph checks, and the ratios its goals are stated in (OVERFLOW_RATIOS).
"""

import functools
import time

import numpy as np
import tensorflow as tf

from fixed_loss_scale import ops

from benchmarks.arms import (GRAPPLER_FOR_LOOPS, barrier, grappler_options, make_variables,
                             optimized_op_counts)
from benchmarks.common import LOSS_SCALE, log
from benchmarks.gradient_sets import nbytes
from benchmarks.scenarios import repeats_for, scaffolding_differences
from benchmarks.timing import interleaved, quartiles

try:  # TF's own check, the one its DynamicLossScale runs (Keras 3's check_finite builds the same ops)
  from tensorflow.python.training.experimental.loss_scale import _is_all_finite as tf_all_finite
except ImportError:  # a TF without it: the package's copy of the same ops
  from fixed_loss_scale.finite import is_all_finite as tf_all_finite

FUSED_OP = "FixedUnscaleGradsAndCheck"
UNSCALE_OP = "FixedUnscaleGrads"
CHECK_OP = "FixedCheckGrads"

OVERFLOW_ARMS = ("unscale", "check", "check_sos", "fused", "fused_sos", "tf_check",
                 "ours_tf_check", "ours_global_norm")
OVERFLOW_LABELS = {
    "unscale": "FixedUnscaleGrads alone (no check)",
    "check": "read-only check: FixedCheckGrads, flag",
    "check_sos": "read-only check + sum_of_squares",
    "fused": "fused: FixedUnscaleGradsAndCheck, flag",
    "fused_sos": "fused + sum_of_squares",
    "tf_check": "TF: g * (1/s), reduce_all(is_finite) per tensor",
    "ours_tf_check": "FixedUnscaleGrads + TF's per-tensor check",
    "ours_global_norm": "FixedUnscaleGrads + tf.linalg.global_norm",
}
# (name, numerator arm, denominator arm, goal): per-call time ratios taken
# within rounds. The goals are stated for the large sets.
OVERFLOW_RATIOS = (
    ("tf_check/check", "tf_check", "check", ">=2 large, >=5 small"),
    ("check/unscale", "check", "unscale", ""),
    ("fused/unscale", "fused", "unscale", "<= 1.1"),
    ("fused_sos/unscale", "fused_sos", "unscale", ""),
    ("tf_check/fused", "tf_check", "fused", ""),
    ("ours_tf_check/fused", "ours_tf_check", "fused", ""),
    ("ours_global_norm/fused_sos", "ours_global_norm", "fused_sos", ""),
)


@functools.lru_cache(maxsize=None)
def op_builds(function):
  """(whether ops.<function> builds its op here, why not)."""
  if not hasattr(ops, function):
    return False, f"ops.{function} is not in this fixed_loss_scale"
  try:
    with tf.Graph().as_default():
      getattr(ops, function)([tf.zeros([1])], LOSS_SCALE)
  except Exception as error:  # pylint: disable=broad-except
    return False, (f"ops.{function} does not build its op "
                   f"({type(error).__name__}: {error}); rebuild the library")
  return True, ""


def fused(grads, scale, sum_of_squares):
  """(unscaled, flag, sum of squares or None) from the fused op."""
  unscaled, flag, squares = ops.fixed_unscale_grads_and_check(grads, scale,
                                                               sum_of_squares=sum_of_squares)
  return list(unscaled), flag, squares if sum_of_squares else None


def overflow_arm(arm, grads, scale, flag, norm):
  """(grads, flag, norm) after `arm`: what it hands on of the three a loop
  iteration carries; an arm that computes no flag (or norm) passes it on."""
  if arm == "none":
    return list(grads), flag, norm
  if arm == "unscale":
    return ops.fixed_unscale_grads(grads, LOSS_SCALE), flag, norm
  if arm in ("fused", "fused_sos"):
    unscaled, new_flag, squares = fused(grads, scale, arm == "fused_sos")
    return unscaled, new_flag, norm if squares is None else squares
  if arm in ("check", "check_sos"):
    # Writes nothing: the gradients go on as they came.
    new_flag, squares = ops.fixed_check_grads(grads, scale, sum_of_squares=arm == "check_sos")
    return list(grads), new_flag, squares if arm == "check_sos" else norm
  if arm == "tf_check":
    # TF's DynamicLossScale with its LossScaleOptimizer (and Keras 2's): the
    # reciprocal of the scale variable, cast to each gradient's dtype, one
    # multiply per gradient; then its check on the unscaled gradients. Keras 3
    # divides instead and checks before, the same passes.
    reciprocal = 1.0 / scale
    unscaled = [g * tf.cast(reciprocal, g.dtype) for g in grads]
    return unscaled, tf_all_finite(unscaled), norm
  if arm == "ours_tf_check":
    # This package without the fused op: what scaling.unscale_and_check was.
    unscaled = ops.fixed_unscale_grads(grads, LOSS_SCALE)
    return unscaled, tf_all_finite(unscaled), norm
  if arm == "ours_global_norm":
    # tf.clip_by_global_norm's own pass over the unscaled gradients.
    unscaled = ops.fixed_unscale_grads(grads, LOSS_SCALE)
    return unscaled, flag, tf.cast(tf.linalg.global_norm(unscaled), tf.float32)
  raise ValueError(arm)


# NOTE [check loop]: the loop of arms.loop_function (NOTE [equal scaffolding]),
# carrying three scalars beside the gradients in every arm: the loss scale (a
# float32 read of a variable, as a dynamic scale is; a loop variable, so that
# Grappler can neither fold 1/scale into a constant nor hoist it out), the flag
# and the norm. An arm that computes a flag or norm passes it on in place of
# the carried one, inside the closing barrier, so that an iteration ends only
# when its reduction has; one that does not passes the carried one on. Every
# loop output is returned, so no reduction is pruned. The loops then run the
# baseline's ops but one: Grappler's model pruner drops an IdentityN output
# that nothing reads, and with it that value's input Identity of the loop
# body, so an arm that replaces the carried flag or norm runs one scalar
# Identity fewer per value it replaces (REPLACED). The scaffolding check
# expects exactly that; a scalar Identity is well under a microsecond, below
# the noise of the smallest set.
REPLACED = {"check": 1, "check_sos": 2, "fused": 1, "fused_sos": 2, "tf_check": 1,
            "ours_tf_check": 1, "ours_global_norm": 1}


def check_loop_function(arm, variables, repeats, scale_variable):
  def step(x):
    grads = [tf.nn.relu(v * tf.cast(x, v.dtype)) for v in variables]

    def body(i, *carried):
      carried = barrier(list(carried))
      scale, flag, norm, gs = carried[0], carried[1], carried[2], carried[3:]
      gs, flag, norm = overflow_arm(arm, gs, scale, flag, norm)
      return [i + 1] + barrier([scale, flag, norm] + list(gs))

    start = [tf.constant(0), scale_variable.read_value(), tf.constant(True), tf.constant(0.0)]
    out = tf.while_loop(lambda i, *rest: i < repeats, body, start + grads,
                        parallel_iterations=1)
    return out[1:]

  return tf.function(step, autograph=False)


def check_overflow_arm(arm, counts, num_tensors):
  """(ok, note): whether `arm`'s passes are all in the optimized graph."""
  unscale, fused_ops, check = (counts.get(UNSCALE_OP, 0), counts.get(FUSED_OP, 0),
                               counts.get(CHECK_OP, 0))
  finite, l2 = counts.get("IsFinite", 0), counts.get("L2Loss", 0)
  if arm == "unscale":
    return unscale >= 1, f"{UNSCALE_OP} x{unscale}"
  if arm in ("fused", "fused_sos"):
    return fused_ops >= 1 and finite == 0, f"{FUSED_OP} x{fused_ops}, IsFinite x{finite}"
  if arm in ("check", "check_sos"):
    return check >= 1 and finite == 0, f"{CHECK_OP} x{check}, IsFinite x{finite}"
  if arm == "tf_check":
    # num_tensors multiplies produce the gradients; the unscale adds as many.
    muls = counts.get("Mul", 0)
    return (muls >= 2 * num_tensors and finite >= num_tensors,
            f"Mul x{muls}, IsFinite x{finite} for {num_tensors} tensors")
  if arm == "ours_tf_check":
    return (unscale >= 1 and finite >= num_tensors,
            f"{UNSCALE_OP} x{unscale}, IsFinite x{finite} for {num_tensors} tensors")
  if arm == "ours_global_norm":
    return (unscale >= 1 and l2 >= num_tensors,
            f"{UNSCALE_OP} x{unscale}, L2Loss x{l2} for {num_tensors} tensors")
  return True, ""


def run_overflow_scenario(name, shapes, dtypes, args):
  with grappler_options(GRAPPLER_FOR_LOOPS):
    return _run_overflow_scenario(name, shapes, dtypes, args)


def _run_overflow_scenario(name, shapes, dtypes, args):
  began = time.perf_counter()
  num_tensors = len(shapes)
  total = nbytes(shapes, dtypes)
  repeats = repeats_for(total, num_tensors, args.quick)
  log(f"[overflow {name}] {num_tensors} tensors, {total / 1e6:.2f} MB, N={repeats}")
  variables = make_variables(shapes, dtypes)
  scale_variable = tf.Variable(LOSS_SCALE, dtype=tf.float32)
  x = tf.constant(0.75)
  unavailable = {"fused": op_builds("fixed_unscale_grads_and_check")[1],
                 "check": op_builds("fixed_check_grads")[1]}
  result = {"scenario": name, "num_tensors": num_tensors, "bytes": total, "repeats": repeats,
            "arms": {}}
  fns, checks, op_counts = {}, {}, {}
  for arm in ("none",) + OVERFLOW_ARMS:
    skipped = unavailable.get(arm.split("_")[0]) or (
        "tf.linalg.global_norm stacks the norms: one dtype only"
        if arm == "ours_global_norm" and len(set(dtypes)) > 1 else "")
    if skipped:
      result["arms"][arm] = {"label": OVERFLOW_LABELS[arm], "skipped": skipped}
      continue
    fn = check_loop_function(arm, variables, repeats, scale_variable)
    start = time.perf_counter()
    op_counts[arm] = optimized_op_counts(fn, x)
    checks[arm] = check_overflow_arm(arm, op_counts[arm], num_tensors)
    fn(x)
    log(f"  {arm}: traced in {time.perf_counter() - start:.1f} s; {checks[arm][1]}")
    fns[arm] = (lambda f=fn: f(x))
  unequal = {arm: scaffolding_differences(op_counts[arm], op_counts["none"],
                                         own={"Identity": -REPLACED.get(arm, 0)})
             for arm in fns if arm != "none"}
  for arm, differences in unequal.items():
    if differences:
      log(f"  WARNING: {arm}'s loop runs other scaffolding than its baseline "
          f"(op: (arm, baseline)) {differences}; its time is off by those ops")
  timed = {a: f for a, f in fns.items() if checks[a][0]}
  times = interleaved(timed, args.rounds, args.reps, min_seconds=args.min_seconds)
  result.update(rounds=len(times["none"]), baseline_s=float(np.median(times["none"])),
                scaffolding_differences={a: d for a, d in unequal.items() if d})
  per_call_rounds = {}
  for arm in OVERFLOW_ARMS:
    if arm not in fns:
      continue
    ok, note = checks[arm]
    entry = {"label": OVERFLOW_LABELS[arm], "check": note, "optimized_away": not ok}
    if ok:
      per_call_rounds[arm] = [(t - b) / repeats for t, b in zip(times[arm], times["none"])]
      per_call = float(np.median(per_call_rounds[arm]))
      entry.update(total_s=float(np.median(times[arm])),
                   quartiles_s=quartiles(per_call_rounds[arm]))
      if per_call > 0:
        entry["per_call_s"] = per_call
      else:
        entry["below_noise"] = True
    result["arms"][arm] = entry
  result["ratios"] = {}  # every ratio of OVERFLOW_RATIOS; no median where an arm has no time
  for ratio, top, bottom, goal in OVERFLOW_RATIOS:
    values = [t / b for t, b in zip(per_call_rounds.get(top, []), per_call_rounds.get(bottom, []))
              if t > 0 and b > 0]
    result["ratios"][ratio] = {"goal": goal}
    if values:
      result["ratios"][ratio].update(median=float(np.median(values)), quartiles=quartiles(values))
  log("  " + "  ".join(f"{arm} {e['per_call_s'] * 1e6:.1f} us"
                       for arm, e in result["arms"].items() if "per_call_s" in e))
  ratios = [f"{k} {v['median']:.2f}" for k, v in result["ratios"].items() if "median" in v]
  if ratios:
    log("  " + "  ".join(ratios))
  log(f"  {time.perf_counter() - began:.0f} s, {result['rounds']} rounds")
  del variables, fns, timed
  return result
