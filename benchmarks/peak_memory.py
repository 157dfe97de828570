"""Peak memory: the allocator's peak above the variables for one call per arm.

Owns the peak-memory scenarios (`PEAK_MEMORY_SCENARIOS`) and their
measurement, which runs with TensorFlow's BFC allocator in a child process
(benchmarks.child), so that the timed arms keep the default allocator.
"""

import os

import tensorflow as tf

from benchmarks import child
from benchmarks.arms import make_variables, unscale_arm
from benchmarks.common import log
from benchmarks.gradient_sets import dtypes_for, nbytes, set_shapes


def peak_memory(shapes, dtypes):
  """Peak allocator bytes above the variables for one call that produces the
  gradients, unscales them and returns them all, per arm."""
  variables = make_variables(shapes, dtypes)
  x = tf.constant(0.75)
  out = {"gradient_bytes": nbytes(shapes, dtypes)}
  for arm in ("none", "ours", "tf"):

    @tf.function(autograph=False)
    def f(x, arm=arm):
      grads = [tf.nn.relu(v * tf.cast(x, v.dtype)) for v in variables]
      return grads if arm == "none" else unscale_arm(arm, grads)

    f(x)
    try:
      tf.config.experimental.reset_memory_stats("CPU:0")
      before = tf.config.experimental.get_memory_info("CPU:0")["current"]
      result = f(x)
      peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except (ValueError, tf.errors.OpError) as error:
      return {"skipped": f"no CPU allocator statistics: {error}"}
    del result
    out[arm] = peak - before
  return out


PEAK_MEMORY_SCENARIOS = (("few_large", "float32"), ("bert_like", "float32"),
                         ("bert_like", "float16"))
# Peak memory is read only from TensorFlow's BFC allocator, asked for with
# TF_CPU_ALLOCATOR_USE_BFC=true in a child process, so the timed arms keep the
# default allocator. The default one is no substitute: on CPUs without
# AVX-512 VNNI, bfloat16 or AMX it keeps no statistics, and where oneDNN picks
# its own allocator (those CPUs) it keeps some, but measured on an AVX-512/AMX
# Xeon with TF 2.21 its peak for the quick `bert_like` set (tensors of at most
# 25 KB) was 0 bytes in every arm, while the BFC allocator's was the
# gradients' 642,304 bytes: small tensors come from a pool whose peak it does
# not track.
BFC_ENV = "TF_CPU_ALLOCATOR_USE_BFC"



def peak_memory_scenarios(quick):
  """Peak memory per PEAK_MEMORY_SCENARIOS (their quick sets with `quick`), in a
  child process with the BFC allocator unless this process was started with it."""
  if os.environ.get(BFC_ENV, "").lower() not in ("true", "1"):
    return peak_memory_in_child(quick)
  allocator = f"BFC ({BFC_ENV}={os.environ[BFC_ENV]})"
  entries = []
  for set_name, mode in PEAK_MEMORY_SCENARIOS:
    shapes = set_shapes(set_name, quick)
    entry = peak_memory(shapes, dtypes_for(mode, len(shapes)))
    entry.update(scenario=f"{set_name}/{mode}", allocator=allocator)
    entries.append(entry)
    log(f"[peak memory {set_name}/{mode}] {entry}")
  return entries


def peak_memory_in_child(quick):
  log(f"[peak memory] measuring in a child process with {BFC_ENV}=true")
  entries = child.call(peak_memory_scenarios, {"quick": quick}, env={BFC_ENV: "true"})
  if isinstance(entries, str):
    return [{"scenario": f"{n}/{m}", "skipped": entries} for n, m in PEAK_MEMORY_SCENARIOS]
  return entries
