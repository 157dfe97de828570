"""Whole optimizer steps: what unscaling adds to a real training step.

Owns the optimizer-step arms on the `bert_like` variables, Keras 3 (bare,
the bare step again as the control, TF's per-tensor multiply, Keras's
loss_scale_factor and LossScaleOptimizer, ours, our op as one op) and TF1
Session graphs (bare, TF's compat MixedPrecisionLossScaleOptimizer, ours),
their checks that each still unscales after Grappler, and the overheads over
the bare step of each family, taken within rounds. Grappler runs with its
defaults here: these steps measure its real effect.
"""

import numpy as np
import tensorflow as tf

from fixed_loss_scale import ops

from benchmarks.arms import count_ops, optimized_op_counts
from benchmarks.common import LOSS_SCALE, RECIPROCAL, log
from benchmarks.gradient_sets import nbytes, set_shapes
from benchmarks.timing import interleaved, paired, quartiles


# NOTE [bare again]: in one full run the bare Keras step came out 15 ms (SGD)
# and 71 ms (Adam) slower than the bare step plus TF's 195 multiplies, within
# rounds: each traced step has an offset of its own (how its ops happen to be
# laid out and scheduled), larger than the unscale. The `bare_again` arm
# measures that offset, so that an overhead is read against it.

# Optimizer-step arms that unscale with per-tensor arithmetic (checked by
# check_optimizer_arm), and the TF1 family.
PER_TENSOR_UNSCALE_ARMS = ("keras:tf_per_tensor", "keras:keras_loss_scale_factor",
                           "keras:keras_loss_scale_optimizer", "tf1:tf_compat_lso")
TF1_ARMS = ("bare", "tf_compat_lso", "ours_tf1")


def keras_optimizer_arms(variables, kind, learning_rate):
  import keras  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale import keras as fls_keras  # pylint: disable=import-outside-toplevel

  def inner(**kwargs):
    cls = keras.optimizers.SGD if kind == "sgd" else keras.optimizers.Adam
    return cls(learning_rate=learning_rate, **kwargs)

  optimizers = {
      "bare": inner(),
      # The control: the bare step again, its own optimizer and traced
      # function. Its "overhead" is what two traced functions of the same step
      # differ by, the floor under every other row (NOTE [bare again]).
      "bare_again": inner(),
      "tf_per_tensor": inner(),
      "keras_loss_scale_factor": inner(loss_scale_factor=LOSS_SCALE),
      "keras_loss_scale_optimizer": keras.optimizers.LossScaleOptimizer(
          inner(), initial_scale=LOSS_SCALE),
      # The grouped unscale before the inner apply, as these rows compare it with
      # TF's per-tensor unscale; the fused update is `--overflow`'s arms.
      "ours_keras": fls_keras.FixedLossScaleOptimizer(inner(), LOSS_SCALE, fused_update=False),
      # One FixedUnscaleGrads for all gradients (ops.fixed_unscale_grads) before
      # the bare optimizer: what ours_keras costs without its CPU groups
      # (scaling.py NOTE [CPU groups]).
      "ours_one_op": inner(),
  }
  fns = {}
  for name, opt in optimizers.items():
    opt.build(variables)

    @tf.function(autograph=False)
    def step(x, name=name, opt=opt):
      grads = [tf.nn.relu(v * x) for v in variables]
      if name == "tf_per_tensor":
        grads = [g * tf.constant(RECIPROCAL, g.dtype) for g in grads]
      elif name == "ours_one_op":
        grads = ops.fixed_unscale_grads(grads, LOSS_SCALE)
      opt.apply(grads, variables)
      return tf.constant(0)

    fns[name] = step
  return fns


def tf1_optimizer_arms(shapes, kind, learning_rate):
  """TF1 graph + Session: bare tf.compat.v1 optimizer, TF's compat
  MixedPrecisionLossScaleOptimizer, and ours, on their own variables, each
  through compute_gradients + apply_gradients as `minimize` does (the wrappers
  scale the loss and unscale the gradients in compute_gradients; apply_gradients
  alone would skip both). Returns ({name: run}, {name: op counts of the graph
  that run executed}, session)."""
  from fixed_loss_scale import optimizer as fls_optimizer  # pylint: disable=import-outside-toplevel
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [])
    arms = {}
    for arm, name in enumerate(TF1_ARMS):
      # Initialised by a random op, not from numpy: numpy initial values become
      # Const nodes, and 3 arms x 351 MB of constants copied through GraphDef
      # serialisation and Grappler exhausted 24 GiB.
      variables = [tf.Variable(tf.random.stateless_normal(s, seed=[arm, i]) + 0.5)
                   for i, s in enumerate(shapes)]
      base = (tf.compat.v1.train.GradientDescentOptimizer(learning_rate) if kind == "sgd" else
              tf.compat.v1.train.AdamOptimizer(learning_rate))
      if name == "tf_compat_lso":
        opt = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(base, LOSS_SCALE)
      elif name == "ours_tf1":
        opt = fls_optimizer.MixedPrecisionLossScaleOptimizer(base, LOSS_SCALE)
      else:
        opt = base
      loss = tf.add_n([tf.reduce_sum(tf.nn.relu(v * x)) for v in variables])
      arms[name] = opt.apply_gradients(opt.compute_gradients(loss, var_list=variables))
    init = tf.compat.v1.global_variables_initializer()
  session = tf.compat.v1.Session(graph=graph)
  session.run(init)
  runs, counts = {}, {}
  for name, op in arms.items():
    metadata = tf.compat.v1.RunMetadata()
    session.run(op, {x: 1e-3}, options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                run_metadata=metadata)
    counts[name] = count_ops(metadata.partition_graphs)
    runs[name] = (lambda op=op: session.run(op, {x: 1e-3}))
  return runs, counts, session


def check_optimizer_arm(name, counts, bare_counts, num_variables):
  """(ok, note): whether the step `name` still unscales after Grappler: ours
  holds FixedUnscaleGrads; a per-tensor arm has more multiplies or divides than
  the bare step of its family. Grappler may fold some of TF's per-tensor
  multiplies into the optimizer's own (SGD's lr * grad): that is TF's real
  behaviour, reported in the note and timed; only an arm left with none is not."""
  if name.split(":")[1].startswith("ours"):
    n = counts.get("FixedUnscaleGrads", 0)
    return n >= 1, f"FixedUnscaleGrads x{n}"
  if name in PER_TENSOR_UNSCALE_ARMS:

    def arithmetic(c):
      return sum(c.get(op, 0) for op in ("Mul", "RealDiv", "Div"))

    extra = arithmetic(counts) - arithmetic(bare_counts)
    return extra > 0, (f"{extra} Mul/RealDiv more than bare after Grappler, for "
                       f"{num_variables} gradients")
  return True, ""


def optimizer_steps(args):
  shapes = set_shapes("bert_like", args.quick)
  results = []
  for kind in ("sgd", "adam"):
    variables = [tf.Variable(np.random.default_rng(5).standard_normal(s, dtype=np.float32) + 0.5)
                 for s in shapes]
    x = tf.constant(1e-3)
    keras_fns = keras_optimizer_arms(variables, kind, 1e-3)
    fns, counts = {}, {}
    for name, fn in keras_fns.items():
      log(f"[optimizer {kind}] tracing {name}")
      counts["keras:" + name] = optimized_op_counts(fn, x)
      fn(x)
      fns["keras:" + name] = (lambda f=fn: f(x))
    log(f"[optimizer {kind}] building TF1 arms")
    tf1_runs, tf1_counts, session = tf1_optimizer_arms(shapes, kind, 1e-3)
    for name, run in tf1_runs.items():
      run()
      fns["tf1:" + name] = run
      counts["tf1:" + name] = tf1_counts[name]
    checks = {name: check_optimizer_arm(name, counts[name], counts[name.split(":")[0] + ":bare"],
                                        len(shapes)) for name in fns}
    for name, (ok, note) in checks.items():
      if note:
        log(f"  {name}: {note}" + ("" if ok else " -- unscale optimized away, not timed"))
    times = interleaved({n: f for n, f in fns.items() if checks[n][0]}, args.optimizer_rounds,
                        args.reps)
    session.close()
    grad_bytes = nbytes(shapes, ["float32"] * len(shapes))
    entry = {"optimizer": kind, "gradient_bytes": grad_bytes,
             "step_s": {n: float(np.median(t)) for n, t in times.items()},
             "checks": {n: note for n, (_, note) in checks.items()},
             "optimized_away": [n for n, (ok, _) in checks.items() if not ok]}
    for family, bare in (("keras", "keras:bare"), ("tf1", "tf1:bare")):
      for name, t in times.items():
        if name.startswith(family + ":") and name != bare:
          entry.setdefault("overhead_s", {})[name] = paired(lambda a, b: a - b, t, times[bare])
          # The spread to read an overhead against (a step moves by tens of ms).
          entry.setdefault("overhead_quartiles_s", {})[name] = quartiles(
              [a - b for a, b in zip(t, times[bare])])
          entry.setdefault("overhead_fraction", {})[name] = paired(
              lambda a, b: (a - b) / b, t, times[bare])
    log(f"[optimizer {kind}] " + ", ".join(f"{k} {v * 1e3:.1f} ms"
                                           for k, v in entry["step_s"].items()))
    results.append(entry)
    del variables, keras_fns, fns
  return results
