"""Worker for tests/test_concurrency.py: many FixedUnscaleGrads ops large enough
to be sharded, running at once, under given inter-op and intra-op thread
counts (settable only before TensorFlow starts, hence a process of its own).

The CPU kernel hands shards to helpers on the inter-op threads that run the ops
themselves (NOTE [helpers] in fixed_loss_scale_cpu.cc): with every such thread
inside one of these ops, a caller that waited for its helpers to start would
wait forever. Prints one JSON line: calls made and outputs that differed from
numpy's.

usage: helper_threads.py INTER_OP_THREADS INTRA_OP_THREADS
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import random_values  # noqa: E402
from conftest import reference_unscale  # noqa: E402
from fixed_loss_scale import ops  # noqa: E402

SCALE = 1024.0
GROUPS = 8  # independent ops per step: more than any inter-op pool here
# ~2.4 MB per op, several shards each, with mixed dtypes and odd sizes so shards
# split tensors mid-way.
SIZES_AND_DTYPES = [(300_001, np.float32), (200_003, np.float16), (100_000, np.float64),
                    (7, np.float32)]
CALLS = 10


def make_values(seed):
  rng = np.random.default_rng(seed)
  return [[random_values(rng, (n,), dtype) for n, dtype in SIZES_AND_DTYPES]
          for _ in range(GROUPS)]


def count_wrong(groups_in, groups_out):
  wrong = 0
  for values, outputs in zip(groups_in, groups_out):
    for v, out in zip(values, outputs):
      expected = reference_unscale(v, SCALE)
      wrong += not np.array_equal(np.asarray(out).view(np.uint8), expected.view(np.uint8))
  return wrong


def run_function(report):
  # Each op's inputs are made inside the function, so they can be forwarded
  # (in place) and all GROUPS ops become ready together.
  @tf.function(autograph=False)
  def step(groups):
    return [ops.fixed_unscale_grads([tf.identity(g) for g in gs], SCALE) for gs in groups]

  for call in range(CALLS):
    values = make_values(call)
    out = step([[tf.constant(v) for v in gs] for gs in values])
    report["wrong"] += count_wrong(values, [[o.numpy() for o in gs] for gs in out])
    report["calls"] += 1


def run_eager(report):
  for call in range(CALLS):
    values = make_values(100 + call)
    out = [ops.fixed_unscale_grads([tf.constant(v) for v in gs], SCALE) for gs in values]
    report["wrong"] += count_wrong(values, [[o.numpy() for o in gs] for gs in out])
    report["calls"] += 1


def run_session(report):
  graph = tf.Graph()
  with graph.as_default():
    placeholders = [[tf.compat.v1.placeholder(dtype, [None]) for _, dtype in SIZES_AND_DTYPES]
                    for _ in range(GROUPS)]
    outputs = [ops.fixed_unscale_grads([tf.identity(p) for p in ps], SCALE)
               for ps in placeholders]
    with tf.compat.v1.Session(graph=graph) as session:
      for call in range(CALLS):
        values = make_values(200 + call)
        feed = {p: v for ps, vs in zip(placeholders, values) for p, v in zip(ps, vs)}
        report["wrong"] += count_wrong(values, session.run(outputs, feed))
        report["calls"] += 1


def main():
  inter, intra = int(sys.argv[1]), int(sys.argv[2])
  tf.config.threading.set_inter_op_parallelism_threads(inter)
  tf.config.threading.set_intra_op_parallelism_threads(intra)
  report = {}
  for name, run in (("tf.function", run_function), ("eager", run_eager),
                    ("TF1 Session", run_session)):
    report[name] = {"calls": 0, "wrong": 0}
    run(report[name])
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
