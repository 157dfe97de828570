"""One scenario: a gradient set in one dtype mode (or a sweep point), every arm.

Owns how many unscales a loop repeats (`repeats_for`), the arms a scenario
traces and checks, the equal-scaffolding check against the `none` baseline,
the interleaved timing of the TF loops beside the numpy roofline and torch,
and the scenario's result entry: per-call times, GB/s, fraction of the
roofline, ours/TF and, for the sweep, ours minus one pass (NOTE [one pass]).
"""

import math
import time

import numpy as np
import tensorflow as tf

from benchmarks.arms import (GRAPPLER_FOR_LOOPS, check_arm, check_floor, grappler_options,
                             loop_function, make_variables, optimized_op_counts, xla_check)
from benchmarks.common import ARM_LABELS, log
from benchmarks.gradient_sets import nbytes
from benchmarks.references import NumpyRoofline, torch_arm
from benchmarks.timing import interleaved, paired, quartiles


def repeats_for(total_bytes, num_tensors, quick):
  if quick:
    return 2
  # Enough repetitions that the unscales move ~3 GB or run ~50 times: on large
  # sets the production (fresh buffers, page faults) varies by milliseconds from
  # call to call, and with ~0.7 GB (few_large: N = 3) that noise moved the
  # per-round ratio ours/TF over 0.75-1.20; with N = 15, 0.98-1.04.
  target = 3e9 / max(1, 2 * total_bytes)
  if num_tensors >= 1000:
    return 10
  return int(min(50, max(2, math.ceil(target))))


def run_scenario(name, shapes, dtypes, args, xla=True, one_pass=False):
  with grappler_options(GRAPPLER_FOR_LOOPS):
    return _run_scenario(name, shapes, dtypes, args, xla, one_pass)


# NOTE [one pass]: what moving the bytes costs inside the same loop, for the
# tensor-count sweep. Subtracting the `none` loop removes the loop's ops, but
# not what an arm's pass over the data does to them: in the `none` loop nothing
# touches the gradients, so the loop's per-tensor ops (an Identity, Switch,
# Merge and NextIteration per tensor) keep their state in cache, and any arm
# that moves 4 MB through a 2 MiB L2 evicts it. Measured on TF 2.21 (2-core
# Xeon, 1,000 tensors of 4 KB): one multiply of a single 4 MB tensor carried
# beside the gradients cost ~650 us an iteration there against ~120-160 us in
# a loop over one tensor. The `one_pass` arm is our op over such a tensor, in
# every sweep loop (all arms carry it, so the scaffolding stays equal): the
# same kernel and bytes with one tensor to handle instead of n, so that
# ours - one_pass is what the n tensors add, the loop's slowdown excluded.


# Ops of the loop around the arm: the same count in every arm's optimized graph
# when the scaffolding is equal (NOTE [equal scaffolding]).
SCAFFOLDING_OPS = ("Identity", "IdentityN", "NoOp", "Enter", "Exit", "Switch", "Merge", "NextIteration")


def scaffolding_differences(counts, none_counts, own=None):
  """{op: (arm's count, none's count)} where an arm's loop runs other
  scaffolding than the baseline it is compared with; `own` counts the arm's
  own ops among them (the floor arm is one IdentityN)."""
  own = own or {}
  return {op: (counts.get(op, 0), none_counts.get(op, 0)) for op in SCAFFOLDING_OPS
          if counts.get(op, 0) - own.get(op, 0) != none_counts.get(op, 0)}


def _run_scenario(name, shapes, dtypes, args, xla, one_pass):
  num_tensors = len(shapes)
  total = nbytes(shapes, dtypes)
  repeats = repeats_for(total, num_tensors, args.quick)
  log(f"[{name}] {num_tensors} tensors, {total / 1e6:.2f} MB, N={repeats}")
  variables = make_variables(shapes, dtypes)
  # See NOTE [one pass]: one float32 tensor of the gradients' bytes.
  pass_variable = make_variables([(total // 4,)], ["float32"])[0] if one_pass else None
  x = tf.constant(0.75)
  arms = (["none", "floor", "ours", "tf"] + (["one_pass"] if one_pass else []) +
          (["tf_xla", "xla_none"] if xla else []))
  fns, checks, op_counts = {}, {}, {}
  for arm in arms:
    jit = arm in ("tf_xla", "xla_none")
    base_arm = {"tf_xla": "tf", "xla_none": "none"}.get(arm, arm)
    fn = loop_function(base_arm, variables, repeats, jit=jit, pass_variable=pass_variable)
    start = time.perf_counter()
    if jit:
      fn(x)  # trace and compile
      checks[arm] = xla_check(fn, x, num_tensors) if arm == "tf_xla" else (True, "")
    else:
      # The run metadata holds the optimized graphs of functions instantiated
      # while it is collected, so the first call is the one read.
      op_counts[arm] = optimized_op_counts(fn, x)
      checks[arm] = (check_floor(op_counts[arm], op_counts["none"]) if arm == "floor" else
                     check_arm(base_arm, op_counts[arm], num_tensors))
    fn(x)
    log(f"  {arm}: traced in {time.perf_counter() - start:.1f} s; {checks[arm][1]}")
    fns[arm] = (lambda f=fn: f(x))
  unequal = {arm: scaffolding_differences(op_counts[arm], op_counts["none"],
                                         own={"IdentityN": 1} if arm == "floor" else None)
             for arm in ("ours", "tf", "floor", "one_pass")
             if arm in checks and (checks[arm][0] or arm != "floor")}
  for arm, differences in unequal.items():
    if differences:
      log(f"  WARNING: {arm}'s loop runs other scaffolding than its baseline "
          f"(op: (arm, baseline)) {differences}; its time is off by those ops")
  timed = {a: f for a, f in fns.items() if checks[a][0]}
  roofline = NumpyRoofline(shapes, dtypes, threads=args.threads)
  timed["numpy_mul"] = roofline.multiply
  timed["numpy_copy"] = roofline.copy
  torch_run, torch_note = torch_arm(shapes, dtypes) if not args.no_torch else (None, "--no-torch")
  if torch_run is not None:
    timed["torch"] = torch_run
  times = interleaved(timed, args.rounds, args.reps, min_seconds=args.min_seconds)
  roofline.close()

  result = {"scenario": name, "num_tensors": num_tensors, "bytes": total, "repeats": repeats,
            "rounds": len(times["none"]), "arms": {},
            "scaffolding_differences": {a: d for a, d in unequal.items() if d}}
  moved = 2 * total
  per_call_rounds = {}  # arm: per-call seconds in each round
  for arm in ("ours", "tf", "tf_xla", "floor", "one_pass"):
    if arm not in fns:
      continue
    ok, note = checks[arm]
    entry = {"label": ARM_LABELS[arm], "check": note, "optimized_away": not ok}
    if ok:
      base = "xla_none" if arm == "tf_xla" else "none"
      per_call_rounds[arm] = [(t - b) / repeats for t, b in zip(times[arm], times[base])]
      per_call = float(np.median(per_call_rounds[arm]))
      entry.update(total_s=float(np.median(times[arm])), baseline_s=float(np.median(times[base])))
      if per_call > 0:
        entry.update(per_call_s=per_call, gbps=moved / per_call / 1e9)
      else:
        entry["below_noise"] = True
    result["arms"][arm] = entry
  for arm in ("numpy_mul", "numpy_copy", "torch"):
    if arm in times:
      per_call_rounds[arm] = times[arm]
      per_call = float(np.median(times[arm]))
      result["arms"][arm] = {"label": ARM_LABELS[arm], "per_call_s": per_call,
                             "gbps": moved / per_call / 1e9}
  if torch_run is None:
    result["arms"]["torch"] = {"label": ARM_LABELS["torch"], "skipped": torch_note}
  else:
    result["arms"]["torch"]["note"] = torch_note
  result["baseline_s"] = float(np.median(times["none"]))
  # The roofline of each round: the faster of numpy's multiply and copy then.
  roof_rounds = [moved / min(m, c) / 1e9 for m, c in zip(times["numpy_mul"], times["numpy_copy"])]
  result["roofline_gbps"] = float(np.median(roof_rounds))
  ours, tf_arm = result["arms"]["ours"], result["arms"]["tf"]

  def positive(*values):
    return all(v > 0 for v in values)

  for arm in ("ours", "tf"):
    if "per_call_s" in result["arms"][arm]:
      pairs = [(p, r) for p, r in zip(per_call_rounds[arm], roof_rounds) if positive(p)]
      result["arms"][arm]["fraction_of_roofline"] = paired(
          lambda p, r: moved / p / 1e9 / r, *zip(*pairs))
  if "per_call_s" in ours and "per_call_s" in tf_arm:
    pairs = [(o, t) for o, t in zip(per_call_rounds["ours"], per_call_rounds["tf"])
             if positive(o, t)]
    if pairs:
      ratios = [t / o for o, t in pairs]
      result["ours_vs_tf"] = float(np.median(ratios))
      # How much the per-round ratio moved: the spread to read a ratio against.
      result["ours_vs_tf_quartiles"] = quartiles(ratios)
  if "ours" in per_call_rounds and "one_pass" in per_call_rounds:
    # What n tensors add to one (NOTE [one pass]), taken within each round.
    added = [o - p for o, p in zip(per_call_rounds["ours"], per_call_rounds["one_pass"])]
    result["ours_minus_one_pass_s"] = float(np.median(added))
    result["ours_minus_one_pass_quartiles_s"] = quartiles(added)
  log(f"  ours {fmt_us(ours.get('per_call_s'))}  tf {fmt_us(tf_arm.get('per_call_s'))}"
      f"  ratio {result.get('ours_vs_tf', float('nan')):.2f}x  roofline {result['roofline_gbps']:.1f} GB/s")
  del variables, pass_variable, fns, timed
  return result


def fmt_us(seconds):
  if seconds is None:
    return "-"
  return f"{seconds * 1e6:.1f} us"
