"""Benchmark: FixedUnscaleGrads against TensorFlow's own unscaling, side by side.

    python -m fixed_loss_scale.bench [--quick] [--json PATH] [--plot PATH.png]
    python -m fixed_loss_scale.bench --report PATH.json [--plot PATH.png]   # a saved run again

Progress goes to stderr, the table to stdout. docs/BENCHMARKS.md explains every
arm and what limits each number; in short:

- Gradients are made in the same tf.function as `relu(v_i * x)` (distinct
  variables, runtime scalar x), so Grappler cannot fold a following multiply
  into their production and an op that forwards its inputs works in place.
- The unscale is repeated N times in a tf.while_loop with
  parallel_iterations=1, between barriers, every loop output returned; the
  same loop with nothing between the barriers (production + loop machinery)
  is timed too and subtracted: per-call time = (T(arm) - T(none)) / N. The
  loops are built with Grappler's dependency optimizer off, so that every arm
  keeps the same barriers and Identities (NOTE [equal scaffolding]).
- The tensor-count sweep also times our op over a single tensor of the same
  bytes in the same loop (NOTE [one pass]): what moving the bytes costs
  there, so that what handling n tensors adds can be read apart from it.
- The sweep is also read without any loop (NOTE [op time]): each arm's own
  kernel time from TF's step stats in a traced Session run, which stays
  readable at 10,000 tensors, where the loops' own ops drown both arms. It
  runs in a child process of its own (op_times_in_child).
- Before timing, each arm's optimized graph is read from the run metadata; an
  arm whose multiplies were optimized away is reported, not timed.
- Arms take turns call by call for several rounds; an arm's time in a round is
  the median of its calls there, every difference and ratio is taken within a
  round, and the median over rounds is reported.
- GB/s counts bytes read + written by the unscale (2 x the gradients' bytes).
"""

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's OpenMP workers otherwise spin on both cores for a while after each of
# its calls, and the arm that runs next (the arms take turns) loses a core:
# measured on 2 cores, with the torch arm in the rotation ours fell from 67 to
# 143 us on a 4 MB set and TF's time rose alike. Read when torch loads (lazily,
# in torch_arm); an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale  # noqa: E402
from fixed_loss_scale import ops  # noqa: E402

# A loss scale just above 1 keeps values in the normal range through N
# repetitions (no arm gets an all-zero or subnormal shortcut); the kernels'
# cost does not depend on the value. 1 + 2^-8 is the smallest whose reciprocal
# is not 1 in bfloat16 (TF's arm multiplies in the gradient's dtype, and Grappler
# drops a multiply by 1).
LOSS_SCALE = 1.00390625
RECIPROCAL = float(np.float32(1) / np.float32(LOSS_SCALE))

DTYPE_MODES = ("float32", "float16", "bfloat16", "mixed")
TF_DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}
MIXED_CYCLE = ("float32", "float16", "bfloat16")

OP_ARMS = ("ours", "tf", "tf_xla")
ARM_LABELS = {
    "ours": "FixedUnscaleGrads (ours)",
    "tf": "TF per-tensor g * (1/s)",
    "tf_xla": "TF per-tensor under XLA",
    "floor": "IdentityN over the list (op floor)",
    "one_pass": "ours over 1 tensor of the same bytes",
    "numpy_mul": "numpy in-place multiply (roofline)",
    "numpy_copy": "numpy copy (roofline)",
    "torch": "torch._foreach_mul_",
}


def log(message):
  print(message, file=sys.stderr, flush=True)


# ---- gradient sets ---------------------------------------------------------------


def bert_like_shapes(quick):
  """BERT-base's trainable tensors with a shrunk word embedding: word, position and
  token-type embeddings, then 12 encoder layers of 16 tensors (Q, K, V, output
  kernels and biases, two LayerNorms, the two feed-forward kernels and biases):
  195 tensors, ~88M elements."""
  # --quick: the same kinds of tensors, 3 layers (51 tensors), tiny sizes.
  vocab, hidden, ff, positions, layers = (100, 64, 256, 64, 3) if quick else (
      3000, 768, 3072, 512, 12)
  shapes = [(vocab, hidden), (positions, hidden), (2, hidden)]
  for _ in range(layers):
    shapes += [(hidden, hidden), (hidden,)] * 4
    shapes += [(hidden,), (hidden,)]
    shapes += [(hidden, ff), (ff,), (ff, hidden), (hidden,)]
    shapes += [(hidden,), (hidden,)]
  return shapes


def set_shapes(name, quick):
  rng = np.random.default_rng(0)
  if name == "many_small":
    count, high = (40, 8192) if quick else (400, 65536)
    sizes = np.exp(rng.uniform(np.log(1024), np.log(high), size=count)).astype(int)
    return [(int(s),) for s in sizes]
  if name == "bert_like":
    return bert_like_shapes(quick)
  if name == "few_large":
    return [(1 << (16 if quick else 22),)] * 8
  if name == "tiny":
    return [(256,)] * (20 if quick else 100)
  raise ValueError(name)


def sweep_shapes(count, total):
  return [(max(1, total // count),)] * count


def dtypes_for(mode, count):
  if mode == "mixed":
    return [MIXED_CYCLE[i % 3] for i in range(count)]
  return [mode] * count


def nbytes(shapes, dtypes):
  return sum(int(np.prod(s)) * (4 if d == "float32" else 2) for s, d in zip(shapes, dtypes))


# ---- timing ----------------------------------------------------------------------------


def call_time(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved(fns, rounds, reps, min_seconds=0.0, max_rounds=60):
  """{name: [median of its `reps` calls, one per round]}. Within a round the arms
  take turns call by call, in an order rotated every turn, so that arms compared
  in one round (see `paired`) ran milliseconds apart and the drift of a shared
  machine's memory bandwidth hits them alike. At least `rounds` rounds, and
  more (up to `max_rounds`) until `min_seconds` have passed: cheap scenarios,
  whose small differences need more samples to rise above the noise, get them."""
  names = list(fns)
  per_round = {n: [] for n in names}
  turn = 0
  start = time.perf_counter()
  completed = 0
  while completed < rounds or (completed < max_rounds and
                               time.perf_counter() - start < min_seconds):
    completed += 1
    samples = {n: [] for n in names}
    for _ in range(reps):
      shift = turn % len(names)
      for name in names[shift:] + names[:shift]:
        samples[name].append(call_time(fns[name]))
      turn += 1
    for name in names:
      per_round[name].append(float(np.median(samples[name])))
  return per_round


def paired(f, *series):
  """Median over rounds of f(values of one round): a difference or ratio taken
  within each round, where arms ran back to back, so that the slow drift of a
  shared machine's memory bandwidth between rounds cancels out."""
  return float(np.median([f(*values) for values in zip(*series)]))


def quartiles(values):
  """[25th, 75th] percentile: the spread reported beside a median over rounds."""
  return [float(q) for q in np.percentile(values, [25, 75])]


# ---- the TensorFlow arms ------------------------------------------------------------


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
  return _count_ops(graphs)


def _count_ops(graph_defs):
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


# ---- roofline and torch ------------------------------------------------------------------


class NumpyRoofline:
  """The same bytes as float32 numpy arrays, split over two threads: an in-place
  multiply and a copy, i.e. what the memory system of these cores gives."""

  def __init__(self, shapes, dtypes, threads):
    sizes = [int(np.prod(s)) * (4 if d == "float32" else 2) // 4 for s, d in zip(shapes, dtypes)]
    rng = np.random.default_rng(2)
    self.arrays = [rng.standard_normal(max(1, n), dtype=np.float32) for n in sizes]
    self.copies = [np.empty_like(a) for a in self.arrays]
    self.threads = threads
    total = sum(a.size for a in self.arrays)
    # Split the concatenated element space in `threads` contiguous parts.
    self.parts = [[] for _ in range(threads)]
    cut = [total * k // threads for k in range(threads + 1)]
    offset = 0
    for a, c in zip(self.arrays, self.copies):
      for k in range(threads):
        lo, hi = max(cut[k], offset) - offset, min(cut[k + 1], offset + a.size) - offset
        if hi > lo:
          self.parts[k].append((a[lo:hi], c[lo:hi]))
      offset += a.size
    self.pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None
    self.factor = np.float32(RECIPROCAL)

  def _run(self, work):
    if self.pool is None:
      work(self.parts[0])
    else:
      list(self.pool.map(work, self.parts))

  def multiply(self):
    factor = self.factor

    def work(part):
      for a, _ in part:
        np.multiply(a, factor, out=a)

    self._run(work)

  def copy(self):

    def work(part):
      for a, c in part:
        np.copyto(c, a)

    self._run(work)

  def close(self):
    if self.pool is not None:
      self.pool.shutdown()


def torch_arm(shapes, dtypes):
  """A callable doing torch._foreach_mul_ over the same tensors, or (None, reason)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, "torch is not importable"
  torch.set_num_threads(os.cpu_count() or 1)
  torch_dtypes = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}
  generator = torch.Generator().manual_seed(3)
  tensors = [torch.randn(int(np.prod(s)), generator=generator).to(torch_dtypes[d])
             for s, d in zip(shapes, dtypes)]
  # _foreach_mul_ takes one dtype per list: group by dtype.
  groups = {}
  for t in tensors:
    groups.setdefault(t.dtype, []).append(t)

  def run():
    for group in groups.values():
      torch._foreach_mul_(group, RECIPROCAL)  # pylint: disable=protected-access

  return run, (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


# ---- one scenario ---------------------------------------------------------------------


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


# ---- peak memory ------------------------------------------------------------------------


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


def peak_memory_scenarios(args):
  """Peak memory per PEAK_MEMORY_SCENARIOS, in a child process with the BFC
  allocator unless this process was started with it."""
  if os.environ.get(BFC_ENV, "").lower() not in ("true", "1"):
    return peak_memory_in_child(args)
  allocator = f"BFC ({BFC_ENV}={os.environ[BFC_ENV]})"
  entries = []
  for set_name, mode in PEAK_MEMORY_SCENARIOS:
    shapes = set_shapes(set_name, args.quick)
    entry = peak_memory(shapes, dtypes_for(mode, len(shapes)))
    entry.update(scenario=f"{set_name}/{mode}", allocator=allocator)
    entries.append(entry)
    log(f"[peak memory {set_name}/{mode}] {entry}")
  return entries


def peak_memory_in_child(args):
  log(f"[peak memory] measuring in a child process with {BFC_ENV}=true")
  entries = in_child("--peak-memory-only", args, env={BFC_ENV: "true"})
  if isinstance(entries, str):
    return [{"scenario": f"{n}/{m}", "skipped": entries} for n, m in PEAK_MEMORY_SCENARIOS]
  return entries


def in_child(flag, args, env=None):
  """Runs this module with a hidden `flag JSON` in a fresh process, with the
  same --quick and sweep settings, and returns what it wrote there, or a
  string saying why nothing came back. Its progress shares our stderr."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "child.json")
    command = [sys.executable, "-m", "fixed_loss_scale.bench", flag, out,
               "--sweep-counts", ",".join(str(c) for c in args.sweep_counts),
               "--op-time-rounds", str(args.op_time_rounds)]
    if args.quick:
      command.append("--quick")
    proc = subprocess.run(command, env={**os.environ, **(env or {})}, check=False,
                          stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
      return f"child process exited {proc.returncode}"
    with open(out) as f:
      return json.load(f)


# ---- optimizer steps ----------------------------------------------------------------------


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
      "ours_keras": fls_keras.FixedLossScaleOptimizer(inner(), LOSS_SCALE),
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
    counts[name] = _count_ops(metadata.partition_graphs)
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
  shapes = bert_like_shapes(args.quick)
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


# ---- op time from step stats --------------------------------------------------------------

# NOTE [op time]: the sweep's loop-free view. The loops above time whole
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


def op_times_in_child(args):
  """op_times in a fresh process. Measured: inside the full run (after the
  scenarios' and the sweep's loops) the five counts took 27 minutes, against
  7 in a process of their own; the traced runs slow down with what the
  process has built before them."""
  log("[op time] measuring in a child process")
  rows = in_child("--op-time-only", args)
  if isinstance(rows, str):
    return [{"scenario": f"sweep/{c}", "num_tensors": c, "skipped": rows}
            for c in args.sweep_counts]
  return rows


def op_times(args):
  """NOTE [op time]: per sweep count, each arm's kernel time, medians and
  quartiles over rounds; differences to ours taken within rounds."""
  total = 1 << 14 if args.quick else 1 << 20
  rounds = args.op_time_rounds
  results = []
  for count in args.sweep_counts:
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
        "  ".join(f"{arm} {arm_us(e, unit=' us')}" for arm, e in entry["arms"].items()))
    results.append(entry)
  return results


# ---- machine, table, plot ---------------------------------------------------------------


def cpu_path():
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split()
          break
  except OSError:
    pass
  best = "scalar"
  if all(f in flags for f in ("avx2", "f16c", "fma")):
    best = "avx2"
    if all(f in flags for f in ("avx512f", "avx512bw", "avx512vl")):
      best = "avx512"
  requested = os.environ.get("FIXED_LOSS_SCALE_CPU_PATH")
  order = ["scalar", "avx2", "avx512"]
  if requested in order and order.index(requested) < order.index(best):
    return requested
  return best


def machine_info(args):
  model = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
      "cpu": model,
      "cores": os.cpu_count(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "numpy": np.__version__,
      "fixed_loss_scale": fixed_loss_scale.__version__,
      "cpu_path": cpu_path(),
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
      "numpy_threads": args.threads,
      "loadavg_start": os.getloadavg(),
      "quick": args.quick,
      "rounds": args.rounds,
      "optimizer_rounds": args.optimizer_rounds,
      "op_time_rounds": args.op_time_rounds,
      "min_seconds": args.min_seconds,
      "reps": args.reps,
      "loss_scale": LOSS_SCALE,
  }


def arm_us(entry, unit=""):
  """An arm's per-call time for the tables: `gone` if it was optimized away,
  `<noise` if below the loop's noise, else microseconds."""
  if entry.get("optimized_away"):
    return "gone"
  if entry.get("below_noise"):
    return "<noise"
  return f"{entry['per_call_s'] * 1e6:.1f}{unit}" if "per_call_s" in entry else "-"


def print_table(results, out=sys.stdout):
  m = results["machine"]
  print(f"machine: {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, numpy {m['numpy']}, "
        f"CPU path {m['cpu_path']}, intra/inter-op threads {m['intra_op_threads']}/"
        f"{m['inter_op_threads']}, load {m['loadavg_start'][0]:.2f} -> "
        f"{m.get('loadavg_end', [float('nan')])[0]:.2f}", file=out)
  header = (f"{'scenario':<22}{'tensors':>8}{'MB':>9}  {'ours us':>9}{'TF us':>10}{'XLA us':>9}"
            f"{'floor us':>9}"
            f"  {'ours':>6}{'TF':>6}{'XLA':>6}{'torch':>6}{'roof':>6}  {'ours/TF':>7}"
            f"{'quartiles':>12}{'%roof':>6}")
  print("\nper call (us) and GB/s (bytes read + written), medians over rounds; ours/TF = TF "
        "time / our time within a round, median and quartiles over rounds; floor = one IdentityN over "
        "the list, the least any one op over these tensors costs", file=out)
  print(header, file=out)
  for r in results["scenarios"]:
    a = r["arms"]

    def us(arm):
      return arm_us(a.get(arm, {}))

    def gb(arm):
      e = a.get(arm, {})
      return f"{e['gbps']:.1f}" if "gbps" in e else "-"

    pct = a["ours"].get("fraction_of_roofline")
    quartiles = r.get("ours_vs_tf_quartiles")
    spread = f"{quartiles[0]:.2f}-{quartiles[1]:.2f}" if quartiles else "-"
    print(f"{r['scenario']:<22}{r['num_tensors']:>8}{r['bytes'] / 1e6:>9.2f}  {us('ours'):>9}"
          f"{us('tf'):>10}{us('tf_xla'):>9}{us('floor'):>9}  {gb('ours'):>6}{gb('tf'):>6}{gb('tf_xla'):>6}"
          f"{gb('torch'):>6}{r['roofline_gbps']:>6.1f}  "
          f"{r.get('ours_vs_tf', float('nan')):>6.2f}x{spread:>12}"
          f"{(pct or float('nan')) * 100:>5.0f}%",
          file=out)
  print_one_pass(results, out)
  print_op_times(results, out)
  for p in results.get("peak_memory", []):
    if "skipped" in p:
      print(f"\npeak memory {p['scenario']}: skipped ({p['skipped']})", file=out)
      continue
    print(f"\npeak memory {p['scenario']} (bytes above the variables; gradients "
          f"{p['gradient_bytes'] / 1e6:.1f} MB; {p['allocator']} CPU allocator): produce only "
          f"{p['none'] / 1e6:.1f} MB, ours {p['ours'] / 1e6:.1f} MB, TF per-tensor {p['tf'] / 1e6:.1f} MB", file=out)
  for o in results.get("optimizer_steps", []):
    print(f"\noptimizer step, bert_like variables, {o['optimizer']} "
          f"(gradients {o['gradient_bytes'] / 1e6:.0f} MB): step ms and overhead over the bare "
          "optimizer (medians over rounds; overheads taken within each round)", file=out)
    for name, t in o["step_s"].items():
      extra = o.get("overhead_fraction", {}).get(name)
      extra_s = o.get("overhead_s", {}).get(name)
      tail = "" if extra is None else f"  {extra_s * 1e3:+8.2f} ms  ({extra * 100:+.1f}%)"
      quartiles = o.get("overhead_quartiles_s", {}).get(name)  # absent in older results
      if quartiles is not None:
        tail += f"  quartiles {quartiles[0] * 1e3:+.1f} to {quartiles[1] * 1e3:+.1f} ms"
      print(f"  {name:<36}{t * 1e3:9.2f} ms{tail}", file=out)
    for name in o.get("optimized_away", []):
      print(f"  {name:<36}     gone  ({o['checks'][name]}: not timed)", file=out)
    overhead = o.get("overhead_s", {})
    if "keras:ours_keras" in overhead and overhead.get("keras:keras_loss_scale_optimizer", 0) > 0:
      print(f"  ours_keras overhead / LossScaleOptimizer overhead: "
            f"{overhead['keras:ours_keras'] / overhead['keras:keras_loss_scale_optimizer']:.2f}",
            file=out)


def print_one_pass(results, out):
  """The sweep against NOTE [one pass]: ours and the floor beside our op over
  one tensor of the same bytes in the same loop."""
  rows = [r for r in results["scenarios"] if "one_pass" in r["arms"]]
  if not rows:
    return
  print("\nsweep against ours over 1 tensor of the same bytes in the same loop (NOTE [one pass] "
        "in bench.py), per call, medians over rounds; ours - one pass taken within each round, "
        "median and quartiles:", file=out)

  def us(entry):
    return arm_us(entry, unit=" us")

  for r in rows:
    a = r["arms"]
    added = r.get("ours_minus_one_pass_s")
    quartiles = r.get("ours_minus_one_pass_quartiles_s")
    above = "-" if added is None else f"{added * 1e6:+.1f} us"
    spread = "" if quartiles is None else f" ({quartiles[0] * 1e6:+.1f} to {quartiles[1] * 1e6:+.1f})"
    print(f"  {r['scenario']:<14} ours {us(a['ours']):>11}  one pass {us(a['one_pass']):>11}  "
          f"ours - one pass {above:>11}{spread}  floor {us(a['floor']):>11}", file=out)


def print_op_times(results, out):
  """The sweep's op times from TF's step stats (NOTE [op time])."""
  rows = results.get("op_times", [])
  if not rows:
    return
  print("\nsweep, op time from TF's step stats (NOTE [op time] in bench.py; no loop): time inside "
        "the arm's kernels in one Session run, medians over rounds; TF = its n Muls' kernel times "
        "summed (without the executor's work between them: a lower bound); differences to ours "
        "taken within each round, median and quartiles:", file=out)

  def us(entry):
    return arm_us(entry, unit=" us")

  def difference(r, other):
    added = r.get(f"ours_minus_{other}_s")
    if added is None:
      return "-"
    q = r[f"ours_minus_{other}_quartiles_s"]
    return f"{added * 1e6:+.1f} ({q[0] * 1e6:+.1f} to {q[1] * 1e6:+.1f})"

  for r in rows:
    if "skipped" in r:
      print(f"  {r['scenario']:<12} skipped ({r['skipped']})", file=out)
      continue
    a = r["arms"]
    print(f"  {r['scenario']:<12} ours {us(a['ours']):>10}  one pass {us(a['one_pass']):>10}  "
          f"floor {us(a['floor']):>10}  TF Muls {us(a['tf']):>10}  ours - one pass "
          f"{difference(r, 'one_pass'):>28}  ours - floor {difference(r, 'floor'):>28}", file=out)


def plot(results, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  scenarios = [r for r in results["scenarios"] if not r["scenario"].startswith("sweep")]
  sweep = [r for r in results["scenarios"] if r["scenario"].startswith("sweep")]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 1.3]})
  arms = ["ours", "tf", "tf_xla", "torch", "numpy_mul", "numpy_copy"]
  width = 0.8 / len(arms)
  xs = np.arange(len(scenarios))
  for k, arm in enumerate(arms):
    values = [r["arms"].get(arm, {}).get("gbps", 0.0) for r in scenarios]
    ax1.bar(xs + (k - len(arms) / 2 + 0.5) * width, values, width, label=ARM_LABELS[arm])
  ax1.set_xticks(xs)
  ax1.set_xticklabels([r["scenario"] for r in scenarios], rotation=45, ha="right", fontsize=8)
  ax1.set_ylabel("GB/s (bytes read + written)")
  ax1.set_title("Unscale throughput per gradient set and dtype")
  ax1.legend(fontsize=8)
  ax1.grid(axis="y", alpha=0.3)
  if sweep:
    counts = [r["num_tensors"] for r in sweep]
    for arm in ("ours", "tf", "tf_xla", "torch", "floor", "one_pass"):
      points = [(c, r["arms"][arm]["per_call_s"] * 1e6) for c, r in zip(counts, sweep)
                if "per_call_s" in r["arms"].get(arm, {})]
      if points:
        ax2.loglog(*zip(*points), marker="o", label=ARM_LABELS[arm])
    op_rows = results.get("op_times", [])
    for arm in ("ours", "floor"):
      points = [(r["num_tensors"], r["arms"][arm]["per_call_s"] * 1e6) for r in op_rows
                if "per_call_s" in r.get("arms", {}).get(arm, {})]
      if points:
        ax2.loglog(*zip(*points), marker="x", linestyle="--",
                   label=f"{ARM_LABELS[arm]}: op time (step stats)")
    ax2.set_xlabel("number of tensors (fixed total size)")
    ax2.set_ylabel("per-call time (us)")
    ax2.set_title(f"Cost against tensor count ({sweep[0]['bytes'] / 1e6:.1f} MB float32)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
  m = results["machine"]
  fig.suptitle(f"tf-fixed-loss-scale, {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, "
               f"load {m['loadavg_start'][0]:.2f}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m fixed_loss_scale.bench",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes, one round: a smoke run (CI), not a measurement")
  parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
  parser.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
  parser.add_argument("--sets", default="tiny,many_small,few_large,bert_like",
                      help="comma-separated gradient sets (default: all)")
  parser.add_argument("--dtypes", default=",".join(DTYPE_MODES),
                      help="comma-separated dtype modes (default: all)")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
  parser.add_argument("--reps", type=int, default=None, help="calls per arm and round (default 5)")
  parser.add_argument("--min-seconds", type=float, default=None,
                      help="keep adding rounds to a gradient-set scenario until it has been "
                           "timed this long, up to 60 rounds (default 20; 0 with --quick)")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                      help="threads for the numpy roofline (default: all cores)")
  parser.add_argument("--no-sweep", action="store_true", help="skip the tensor-count sweep")
  parser.add_argument("--sweep-counts", default=None,
                      help="tensor counts of the sweep (default 1,10,100,1000,10000; "
                           "1,10,100 with --quick)")
  parser.add_argument("--no-op-time", action="store_true",
                      help="skip the sweep's op times from TF's step stats (NOTE [op time])")
  parser.add_argument("--op-time-rounds", type=int, default=None,
                      help="traced runs per arm and sweep count for the op times (default 30; "
                           "3 with --quick)")
  parser.add_argument("--optimizer-rounds", type=int, default=None,
                      help="interleaved rounds of the optimizer steps (default 12; 1 with --quick): "
                           "Adam's ~0.5 s steps drift by more than the overheads in 5")
  parser.add_argument("--no-optimizer", action="store_true", help="skip the optimizer steps")
  parser.add_argument("--no-xla", action="store_true", help="skip the XLA reference arm")
  parser.add_argument("--no-torch", action="store_true", help="skip the torch arm")
  parser.add_argument("--report", metavar="RESULTS.json",
                      help="print the table of a saved --json run (and --plot it) without measuring")
  # Internal: the child processes of peak_memory_in_child and op_times_in_child.
  parser.add_argument("--peak-memory-only", metavar="JSON", help=argparse.SUPPRESS)
  parser.add_argument("--op-time-only", metavar="JSON", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.rounds is None:
    args.rounds = 1 if args.quick else 5
  if args.op_time_rounds is None:
    args.op_time_rounds = 3 if args.quick else 30
  if args.optimizer_rounds is None:
    args.optimizer_rounds = 1 if args.quick else 12
  if args.sweep_counts is None:
    args.sweep_counts = "1,10,100" if args.quick else "1,10,100,1000,10000"
  args.sweep_counts = [int(c) for c in args.sweep_counts.split(",") if c]
  if args.min_seconds is None:
    args.min_seconds = 0.0 if args.quick else 20.0
  if args.reps is None:
    args.reps = 2 if args.quick else 5
  return args


def main(argv=None):
  args = parse_args(argv)
  tf.get_logger().setLevel("ERROR")
  for flag, measure in ((args.peak_memory_only, peak_memory_scenarios),
                        (args.op_time_only, op_times)):
    if flag:
      with open(flag, "w") as f:
        json.dump(measure(args), f)
      return None
  if args.report:
    return report(args)
  results = {"machine": machine_info(args), "scenarios": [], "op_times": [],
             "peak_memory": [], "optimizer_steps": []}
  log(f"machine: {results['machine']}")
  sets = [s for s in args.sets.split(",") if s]
  modes = [d for d in args.dtypes.split(",") if d]
  for set_name in sets:
    for mode in modes:
      shapes = set_shapes(set_name, args.quick)
      results["scenarios"].append(
          run_scenario(f"{set_name}/{mode}", shapes, dtypes_for(mode, len(shapes)), args,
                       xla=not args.no_xla))
  if not args.no_sweep:
    total = 1 << 14 if args.quick else 1 << 20
    for count in args.sweep_counts:
      shapes = sweep_shapes(count, total)
      results["scenarios"].append(
          run_scenario(f"sweep/{count}", shapes, dtypes_for("float32", count), args,
                       xla=not args.no_xla and count <= 1000, one_pass=True))
    if not args.no_op_time:
      results["op_times"] = op_times_in_child(args)
  results["peak_memory"] = peak_memory_scenarios(args)
  if not args.no_optimizer:
    results["optimizer_steps"] = optimizer_steps(args)
  results["machine"]["loadavg_end"] = os.getloadavg()
  print_table(results)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
    log(f"wrote {args.json}")
  if args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    plot(results, args.plot)
    log(f"wrote {args.plot}")
  return results


def report(args):
  """--report: the table (and --plot) of a saved run, exactly as it printed."""
  with open(args.report) as f:
    results = json.load(f)
  print_table(results)
  if args.plot:
    plot(results, args.plot)
    log(f"wrote {args.plot}")
  return results


if __name__ == "__main__":
  main()
