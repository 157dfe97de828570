"""Whole Keras 3 optimizer steps that skip non-finite gradients.

Owns the `--overflow` optimizer steps: for each model's variables (bert_like,
gpt2_like) and each inner optimizer (SGD with momentum, Adam, AdamW), the
arms of benchmarks/step_arms.py traced, checked against the ops their
executed graph ran, timed interleaved, and their overheads over the bare step
(with quartiles) beside the traffic model's bytes (benchmarks/traffic.py).
"""

import time

import numpy as np
import tensorflow as tf

from benchmarks import child, step_arms, traffic
from benchmarks.arms import optimized_op_counts
from benchmarks.common import LOSS_SCALE, log
from benchmarks.gradient_sets import elements, nbytes, set_shapes
from benchmarks.overflow import CHECK_OP, FUSED_OP, UNSCALE_OP, op_builds
from benchmarks.references import NumpyRoofline
from benchmarks.timing import interleaved, quartiles

STEP_MODELS = ("bert_like", "gpt2_like")
# The numpy copy of the gradients' bytes, timed among the arms (not an arm):
# the bandwidth the traffic model's times use, measured in the same rounds.
COPY = "numpy_copy"
UNSCALE_OPS = (UNSCALE_OP, "FixedUnscaleGradsByTensor")
CHECK_OPS = (FUSED_OP, CHECK_OP, "IsFinite")


def fused_update_ops(counts):
  """The op types of a fused optimizer update among `counts`' keys."""
  return sorted(op for op in counts if op.startswith("Fixed") and
                ("Update" in op or "Apply" in op))


def op_note(counts):
  """The loss-scaling and update ops of an executed graph, for the table."""
  shown = [op for op in CHECK_OPS + UNSCALE_OPS if counts.get(op)] + fused_update_ops(counts)
  return ", ".join(f"{op} x{counts[op]}" for op in shown) or "none of ours, no IsFinite"


def check_step(arm, counts):
  """(ok, why not): a wrapper or hybrid must check the gradients, a fused arm
  must run a fused update, a bare arm neither."""
  checks = sum(counts.get(op, 0) for op in CHECK_OPS)
  if arm.startswith("bare"):
    return True, ""
  if not checks:
    return False, "no check in its graph"
  if arm.endswith("_fused") and not fused_update_ops(counts):
    return False, "no fused update in its graph"
  return True, ""


def arm_passes(arm, counts):
  if arm in traffic.STATIC_ARMS:
    return traffic.STATIC_ARMS[arm]
  return traffic.passes_from_ops(counts, fused_update_ops(counts), CHECK_OP, FUSED_OP,
                                 UNSCALE_OPS)


def in_turn(functions, x):
  """A callable that calls `functions` one after another, one per call."""
  turn = [0]

  def call():
    function = functions[turn[0] % len(functions)]
    turn[0] += 1
    return function(x)

  return call


def trace_arms(kind, variables, hybrids, traces=1):
  """({arm: timed callable}, {arm: op counts}, {arm: why it is not timed}).
  Each arm is traced `traces` times and its callable calls the traces in turn
  (NOTE [shared slots] in step_arms.py)."""
  shared = step_arms.inner_optimizer(kind)  # NOTE [shared slots] in step_arms.py
  shared.build(variables)
  optimizers, missing = step_arms.wrapper_optimizers(kind, inner=shared)
  if hybrids:
    available, why_not = op_builds("fixed_check_grads")
    for arm in step_arms.HYBRID_ARMS:
      if arm.startswith("hybrid_check") and not available:
        missing[arm] = why_not
      else:
        optimizers[arm] = shared
  scale = tf.Variable(LOSS_SCALE, dtype=tf.float32)
  x = tf.constant(1e-3)
  fns, counts = {}, {}
  for arm, opt in optimizers.items():
    began = time.perf_counter()
    try:
      opt.build(variables)
      functions = [step_arms.step_function(arm, opt, variables, scale) for _ in range(traces)]
      # Each trace's first call under its own collection: TF keeps the graphs of
      # a function first run outside one for the next export.
      counts[arm] = [optimized_op_counts(fn, x) for fn in functions][0]
    except Exception as error:  # pylint: disable=broad-except
      # A wrapper this build cannot run: said in the table, the others timed.
      missing[arm] = f"its step failed: {type(error).__name__}: {str(error)[:300]}"
      log(f"  {arm}: {missing[arm]}")
      continue
    ok, why_not = check_step(arm, counts[arm])
    log(f"  {arm}: traced in {time.perf_counter() - began:.1f} s; {op_note(counts[arm])}" +
        ("" if ok else f" -- {why_not}, not timed"))
    if ok:
      fns[arm] = in_turn(functions, x)
    else:
      missing[arm] = f"{why_not} ({op_note(counts[arm])})"
  return fns, counts, missing


def overhead_entry(times, arm):
  """Overhead over the bare step taken within each round: median, quartiles."""
  values = [a - b for a, b in zip(times[arm], times["bare"])]
  return float(np.median(values)), quartiles(values)


def ratio_to_keras(entry, arm):
  """Arm's overhead / Keras's, from the medians, and the range the quartiles
  allow (arm's low / Keras's high .. arm's high / Keras's low)."""
  base = step_arms.RATIO_BASE
  if arm == base or arm not in entry["overhead_s"] or base not in entry["overhead_s"]:
    return None
  keras_median = entry["overhead_s"][base]
  keras_low, keras_high = entry["overhead_quartiles_s"][base]
  low, high = entry["overhead_quartiles_s"][arm]
  if keras_median <= 0 or keras_low <= 0:
    return {"median": entry["overhead_s"][arm] / keras_median if keras_median > 0 else None}
  return {"median": entry["overhead_s"][arm] / keras_median,
          "range": [low / keras_high, high / keras_low]}


def timed_entry(times, counts, missing):
  """The result entry's timing part: step times, executed ops, what was not
  timed and why, overheads over the bare step and their ratio to Keras's."""
  entry = {"labels": {a: step_arms.LABELS[a] for a in list(times) + list(missing)},
           "step_s": {a: float(np.median(t)) for a, t in times.items()},
           "step_quartiles_s": {a: quartiles(t) for a, t in times.items()},
           "ops": {a: op_note(c) for a, c in counts.items()}, "not_timed": missing,
           "overhead_s": {}, "overhead_quartiles_s": {}, "ratio_to_keras": {}}
  for arm in times:
    if arm != "bare":
      entry["overhead_s"][arm], entry["overhead_quartiles_s"][arm] = overhead_entry(times, arm)
  for arm in times:
    ratio = ratio_to_keras(entry, arm)
    if ratio is not None:
      entry["ratio_to_keras"][arm] = ratio
  return entry


def run_step(model, kind, quick, rounds, reps, threads, hybrids, traces=1):
  """One model's variables and one optimizer, every arm: the result entry.
  Run in a child process (overflow_optimizer_steps): a traced Keras step keeps
  its optimizer's slots alive for the life of the process."""
  began = time.perf_counter()
  log(f"[overflow step {model} {kind}]")
  shapes = set_shapes(model, quick)
  rng = np.random.default_rng(5)
  variables = [tf.Variable(rng.standard_normal(s, dtype=np.float32) + 0.5) for s in shapes]
  fns, counts, missing = trace_arms(kind, variables, hybrids, traces)
  roofline = NumpyRoofline(shapes, ["float32"] * len(shapes), threads)
  times = interleaved({**fns, COPY: roofline.copy}, rounds, reps)
  roofline.close()
  bytes_per_s = 2 * nbytes(shapes, ["float32"] * len(shapes)) / np.median(times.pop(COPY))
  parameters = sum(elements(s) for s in shapes)
  entry = {"model": model, "optimizer": kind, "parameters": parameters,
           "gradient_bytes": 4 * parameters, "num_variables": len(shapes),
           "rounds": rounds, "reps": reps, "traces": traces, "bandwidth": float(bytes_per_s),
           **timed_entry(times, counts, missing)}
  entry["traffic"] = {arm: traffic.arm_bytes(kind, arm_passes(arm, counts.get(arm, {})))
                      for arm in times}
  log(f"[overflow step {model} {kind}] {time.perf_counter() - began:.0f} s, numpy copy "
      f"{bytes_per_s / 1e9:.1f} GB/s: " +
      ", ".join(f"{a} {v * 1e3:+.1f} ms" for a, v in entry["overhead_s"].items()))
  return entry


def overflow_optimizer_steps(args):
  results = []
  for number, model in enumerate(args.step_models):
    for kind in args.step_optimizers:
      entry = child.call(run_step, {
          "model": model, "kind": kind, "quick": args.quick, "rounds": args.optimizer_rounds,
          "reps": args.reps, "threads": args.threads, "traces": args.traces,
          "hybrids": number == 0 and kind in args.hybrid_optimizers})
      if isinstance(entry, str):
        raise RuntimeError(f"optimizer step {model} {kind}: {entry}")
      results.append(entry)
  return results
