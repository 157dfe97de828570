"""The sweep's op times: each arm's kernel time from TF's step stats, no loop.

Owns NOTE [op time]: the traced Session graphs of the sweep points, the
reading of the arms' kernel times from the step stats, and their rounds, run
in a child process of their own (benchmarks.child).
"""

import contextlib
import os
import sys
import time

import numpy as np
import tensorflow as tf

from benchmarks import child
from benchmarks.arms import unscale_arm
from benchmarks.common import ARM_LABELS, log
from benchmarks.gradient_sets import sweep_elements, sweep_shapes
from benchmarks.report import us_text
from benchmarks.timing import quartiles

# NOTE [op time]: the sweep's loop-free view. The scenarios' loops time whole
# iterations, and at 10,000 tensors the loop's own ops cost ~50 ms an
# iteration against ~1-4 ms for one op over the list, so there both ours and
# the floor are lost in its noise; in any loop, an arm's pass over the data
# also slows the loop's per-tensor ops (NOTE [one pass]). A TF1 Session with
# RunOptions(trace_level=FULL_TRACE) instead reports each node's own run time
# (op_start_rel_nanos to op_end_rel_nanos of its step stats: the kernel's
# Compute, on the calling thread, helpers included). Every run produces the n
# gradients and the one pass tensor (`relu(v * x)`) and then runs one arm:
# ours over the n, ours over the one tensor, IdentityN over the n (the floor),
# or TF's n multiplies, whose kernel times are summed: that sum leaves out
# what TF's executor spends between its n ops, which the loops do count, so it
# is a lower bound on TF's cost. A traced run's kernels work on freshly
# produced tensors, with threads that may have gone idle since the last run,
# so absolute times sit above the loops' (one 4 MB pass: ~200-270 us against
# ~100 in a loop); the arms' differences and the floor are what this reads.
OP_TIME_ARMS = ("ours", "one_pass", "floor", "tf")
OP_TIME_KERNELS = {"ours": "FixedUnscaleGrads", "one_pass": "FixedUnscaleGrads",
                   "floor": "IdentityN", "tf": "Mul"}


def op_time_graph(count, total):
  """({arm: fetches}, x placeholder, init, graph) for one sweep point: every
  arm's fetches include all n gradients and the pass tensor, so every run
  produces the same tensors before its arm."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [])
    shapes = sweep_shapes(count, total)
    # Initialised by a random op: numpy values would become Const nodes.
    variables = [tf.Variable(tf.random.stateless_uniform(s, seed=[1, i]) + 0.5)
                 for i, s in enumerate(shapes)]
    pass_variable = tf.Variable(tf.random.stateless_uniform((total,), seed=[2, 0]) + 0.5)
    grads = [tf.nn.relu(v * x) for v in variables]
    passed = [tf.nn.relu(pass_variable * x)]
    fetches = {}
    for arm in OP_TIME_ARMS:
      with tf.name_scope(f"arm_{arm}"):
        if arm == "one_pass":
          fetches[arm] = grads + unscale_arm("ours", passed)
        else:
          fetches[arm] = unscale_arm(arm, grads) + passed
    init = tf.compat.v1.global_variables_initializer()
  return fetches, x, init, graph


@contextlib.contextmanager
def quiet_stderr_fd():
  """Native stderr (fd 2) to /dev/null inside: every traced run starts and
  stops a profiler session, which logs five lines through absl (not silenced
  by TF_CPP_MIN_LOG_LEVEL) and would bury the progress output. Python
  exceptions still carry their messages."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def traced_op_seconds(session, fetches, x, arm):
  """(seconds inside the arm's kernels in one traced run, how many ran)."""
  metadata = tf.compat.v1.RunMetadata()
  with quiet_stderr_fd():
    session.run(fetches, {x: 0.75},
                options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
                run_metadata=metadata)
  kernel = f"= {OP_TIME_KERNELS[arm]}("
  nanos = [ns.op_end_rel_nanos - ns.op_start_rel_nanos
           for dev in metadata.step_stats.dev_stats for ns in dev.node_stats
           if ns.node_name.startswith(f"arm_{arm}/") and kernel in ns.timeline_label]
  return sum(nanos) / 1e9, len(nanos)


def op_times_in_child(quick, sweep_counts, rounds):
  """op_times in a fresh process. Measured: inside the full run (after the
  scenarios' and the sweep's loops) the five counts took 27 minutes, against
  7 in a process of their own; the traced runs slow down with what the
  process has built before them."""
  log("[op time] measuring in a child process")
  rows = child.call(op_times, {"quick": quick, "sweep_counts": sweep_counts, "rounds": rounds})
  if isinstance(rows, str):
    return [{"scenario": f"sweep/{c}", "num_tensors": c, "skipped": rows}
            for c in sweep_counts]
  return rows


def op_times(quick, sweep_counts, rounds):
  """NOTE [op time]: per sweep count, each arm's kernel time, medians and
  quartiles over rounds; differences to ours taken within rounds."""
  total = sweep_elements(quick)
  results = []
  for count in sweep_counts:
    log(f"[op time] {count} tensors: building")
    start = time.perf_counter()
    fetches, x, init, graph = op_time_graph(count, total)
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(init)
      for fetch in fetches.values():
        session.run(fetch, {x: 0.75})  # warm-up: allocations, first-run work
      per_round = {arm: [] for arm in OP_TIME_ARMS}
      kernels = {}
      for turn in range(rounds):
        shift = turn % len(OP_TIME_ARMS)
        for arm in OP_TIME_ARMS[shift:] + OP_TIME_ARMS[:shift]:
          seconds, ran = traced_op_seconds(session, fetches[arm], x, arm)
          per_round[arm].append(seconds)
          kernels[arm] = ran
    del fetches, graph
    entry = {"scenario": f"sweep/{count}", "num_tensors": count, "bytes": 4 * total,
             "rounds": rounds, "kernels": kernels, "arms": {}}
    for arm in OP_TIME_ARMS:
      if kernels[arm] == 0:
        entry["arms"][arm] = {"label": ARM_LABELS[arm], "optimized_away": True}
        continue
      entry["arms"][arm] = {"label": ARM_LABELS[arm], "per_call_s": float(np.median(per_round[arm])),
                            "quartiles_s": quartiles(per_round[arm])}
    for other in ("one_pass", "floor"):
      if kernels["ours"] and kernels[other]:
        added = [o - p for o, p in zip(per_round["ours"], per_round[other])]
        entry[f"ours_minus_{other}_s"] = float(np.median(added))
        entry[f"ours_minus_{other}_quartiles_s"] = quartiles(added)
    log(f"  {time.perf_counter() - start:.0f} s, {rounds} rounds: " +
        "  ".join(f"{arm} {us_text(e)}" for arm, e in entry["arms"].items()))
    results.append(entry)
  return results
