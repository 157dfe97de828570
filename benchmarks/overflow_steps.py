"""Whole Keras 3 optimizer steps that skip non-finite gradients.

Owns the `--overflow` optimizer arms on the `bert_like` variables: the inner
optimizer alone (and again, the control of NOTE [bare again] in
benchmarks/optimizer.py), Keras 3's dynamic `keras.optimizers.LossScaleOptimizer`,
our dynamic drop-in `fixed_loss_scale.keras.LossScaleOptimizer` (where this
build has it), and our `FixedLossScaleOptimizer(skip_non_finite=True)`; the
ops each step ran (read from the executed graph), and the overheads over the
inner optimizer, with ours against Keras's (OVERFLOW_STEP_RATIOS).
"""

import time

import numpy as np
import tensorflow as tf

from benchmarks.arms import optimized_op_counts
from benchmarks.common import LOSS_SCALE, log
from benchmarks.gradient_sets import nbytes, set_shapes
from benchmarks.overflow import FUSED_OP, UNSCALE_OP
from benchmarks.timing import interleaved, paired, quartiles

OVERFLOW_STEP_ARMS = ("bare", "bare_again", "keras_loss_scale_optimizer", "ours_dynamic",
                      "ours_fixed_skip")
OVERFLOW_STEP_LABELS = {
    "bare": "inner optimizer alone",
    "bare_again": "inner optimizer again (control)",
    "keras_loss_scale_optimizer": "keras.optimizers.LossScaleOptimizer",
    "ours_dynamic": "fixed_loss_scale.keras.LossScaleOptimizer",
    "ours_fixed_skip": "FixedLossScaleOptimizer(skip_non_finite=True)",
}
# Ours against Keras's: overhead over the bare step, ratio taken within rounds
# (the goal: at most 0.25).
OVERFLOW_STEP_RATIOS = (("ours_dynamic", "keras_loss_scale_optimizer"),
                        ("ours_fixed_skip", "keras_loss_scale_optimizer"))
# The op types a step's check note counts.
COUNTED_OPS = (FUSED_OP, UNSCALE_OP, "IsFinite")


def dynamic_drop_in():
  """(our dynamic LossScaleOptimizer class or None, why not)."""
  import keras  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale import keras as fls_keras  # pylint: disable=import-outside-toplevel
  cls = getattr(fls_keras, "LossScaleOptimizer", None)
  if cls is None or cls is keras.optimizers.LossScaleOptimizer:
    return None, "fixed_loss_scale.keras.LossScaleOptimizer is not available in this build"
  return cls, ""


def overflow_step_optimizers(kind, learning_rate):
  """({arm: optimizer}, {arm: why it is not there})."""
  import keras  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale import keras as fls_keras  # pylint: disable=import-outside-toplevel

  def inner():
    cls = keras.optimizers.SGD if kind == "sgd" else keras.optimizers.Adam
    return cls(learning_rate=learning_rate)

  optimizers = {
      "bare": inner(),
      "bare_again": inner(),
      "keras_loss_scale_optimizer": keras.optimizers.LossScaleOptimizer(
          inner(), initial_scale=LOSS_SCALE),
  }
  missing = {}
  dynamic, why_not = dynamic_drop_in()
  if dynamic is None:
    missing["ours_dynamic"] = why_not
  else:
    optimizers["ours_dynamic"] = dynamic(inner(), initial_scale=LOSS_SCALE)
  optimizers["ours_fixed_skip"] = fls_keras.FixedLossScaleOptimizer(inner(), LOSS_SCALE,
                                                                    skip_non_finite=True)
  return optimizers, missing


def step_function(opt, variables):
  """tf.function(x): produce the gradients (`relu(v * x)`) and apply them;
  the wrappers unscale and check in `apply`, as under `fit`."""

  @tf.function(autograph=False)
  def step(x):
    opt.apply([tf.nn.relu(v * x) for v in variables], variables)
    return tf.constant(0)

  return step


def check_step(name, counts):
  """(ok, note): the ops the step ran; a wrapper must check the gradients
  (the fused op, or IsFinite where it falls back to TF's check)."""
  note = ", ".join(f"{op} x{counts.get(op, 0)}" for op in COUNTED_OPS)
  if name.startswith("bare"):
    return True, note
  return counts.get(FUSED_OP, 0) + counts.get("IsFinite", 0) >= 1, note


def overflow_optimizer_steps(args):
  shapes = set_shapes("bert_like", args.quick)
  results = []
  for kind in ("sgd", "adam"):
    began = time.perf_counter()
    variables = [tf.Variable(np.random.default_rng(5).standard_normal(s, dtype=np.float32) + 0.5)
                 for s in shapes]
    x = tf.constant(1e-3)
    optimizers, missing = overflow_step_optimizers(kind, 1e-3)
    fns, checks = {}, {}
    for name, why_not in missing.items():
      log(f"  {name}: not available ({why_not})")
    for name, opt in optimizers.items():
      log(f"[overflow optimizer {kind}] tracing {name}")
      try:
        opt.build(variables)
        fn = step_function(opt, variables)
        checks[name] = check_step(name, optimized_op_counts(fn, x))
        fn(x)
      except Exception as error:  # pylint: disable=broad-except
        # A wrapper this build cannot run (a library older than its Python):
        # said in the table, the other arms still timed.
        missing[name] = f"its step failed: {type(error).__name__}: {str(error)[:300]}"
        checks.pop(name, None)
        log(f"  {name}: {missing[name]}")
        continue
      fns[name] = (lambda f=fn: f(x))
      log(f"  {name}: {checks[name][1]}" + ("" if checks[name][0] else " -- no check, not timed"))
    times = interleaved({n: f for n, f in fns.items() if checks[n][0]}, args.optimizer_rounds,
                        args.reps)
    entry = {"optimizer": kind, "gradient_bytes": nbytes(shapes, ["float32"] * len(shapes)),
             "rounds": args.optimizer_rounds,
             "labels": {n: OVERFLOW_STEP_LABELS[n] for n in OVERFLOW_STEP_ARMS},
             "step_s": {n: float(np.median(t)) for n, t in times.items()},
             "checks": {n: note for n, (_, note) in checks.items()},
             "no_check": [n for n, (ok, _) in checks.items() if not ok],
             "not_available": missing, "overhead_s": {}, "overhead_quartiles_s": {},
             "overhead_fraction": {}, "overhead_ratios": {}}
    overheads = {}
    for name, t in times.items():
      if name == "bare":
        continue
      overheads[name] = [a - b for a, b in zip(t, times["bare"])]
      entry["overhead_s"][name] = float(np.median(overheads[name]))
      entry["overhead_quartiles_s"][name] = quartiles(overheads[name])
      entry["overhead_fraction"][name] = paired(lambda a, b: (a - b) / b, t, times["bare"])
    for ours, theirs in OVERFLOW_STEP_RATIOS:
      if ours in overheads and theirs in overheads:
        # The ratio of the medians: a round's overhead moves by milliseconds
        # (read the quartiles), and a ratio of two such differences within a
        # round is dominated by the noise of its denominator.
        if entry["overhead_s"][theirs] > 0:
          entry["overhead_ratios"][f"{ours}/{theirs}"] = (entry["overhead_s"][ours] /
                                                          entry["overhead_s"][theirs])
    log(f"[overflow optimizer {kind}] {time.perf_counter() - began:.0f} s: " +
        ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in entry["step_s"].items()))
    results.append(entry)
    del variables, optimizers, fns
  return results
