"""Worker for tests/test_concurrency.py: resident memory over 10,000 calls per path.

For each way of running the ops (a tf.function, the raw op eagerly, the eager
arithmetic fallback, a TF1 Session, and a failing call with a bad loss scale)
(and, for comparison, a failing MatMul of TensorFlow's own)
it warms up, records resident memory (RSS), makes CALLS calls checking a sample
of results against the oracle, and records RSS again. Prints one JSON line:
{path: {"calls", "rss_before", "rss_after", "wrong"}}.

usage: python leak_check.py CALLS
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402
from conftest import NP_DTYPES  # noqa: E402
from conftest import random_values  # noqa: E402
from conftest import reference_unscale  # noqa: E402
from fixed_loss_scale import _loader  # noqa: E402
from workers.probes import rss_bytes  # noqa: E402

SCALE = 1024.0
WARMUP = 500
CHECK_EVERY = 250


def main():
  calls = int(sys.argv[1])
  raw = _loader.load_ops()
  rng = np.random.default_rng(0)
  # About 700 KB in 8 tensors of every dtype: above the kernel's 512 KiB
  # threshold, so every call also goes through the thread pool.
  values = [random_values(rng, (n,), NP_DTYPES[d]) for n, d in
            zip([100_000, 3, 50_000, 7, 40_000, 1, 20_000, 0],
                [tf.float16, tf.float32, tf.bfloat16, tf.float64] * 2)]
  expected = [reference_unscale(v, SCALE) for v in values]
  grads = [tf.constant(v) for v in values]

  graph_fn = tf.function(lambda gs: fls.unscale_gradients(gs, SCALE), autograph=False)

  tf1_graph = tf.Graph()
  with tf1_graph.as_default():
    placeholders = [tf.compat.v1.placeholder(g.dtype, [None]) for g in grads]
    tf1_out = fls.unscale_gradients(placeholders, SCALE)
  session = tf.compat.v1.Session(graph=tf1_graph)
  feed = dict(zip(placeholders, values))

  def bad_call():
    try:
      raw.fixed_unscale_grads(grads[:2], loss_scale=0.5)
    except tf.errors.InvalidArgumentError:
      return None
    raise AssertionError("a loss scale of 0.5 was accepted")

  def tf_bad_call():  # TensorFlow's own eager error path, for comparison
    try:
      tf.raw_ops.MatMul(a=grads[1][None, :], b=grads[1][None, :])
    except tf.errors.InvalidArgumentError:
      return None
    raise AssertionError("MatMul of [1,3] by [1,3] was accepted")

  paths = {
      "tf.function": lambda: graph_fn(grads),
      "raw op, eager": lambda: raw.fixed_unscale_grads(grads, loss_scale=SCALE),
      "eager fallback": lambda: fls.unscale_gradients(grads, SCALE),
      "TF1 Session": lambda: session.run(tf1_out, feed),
      "rejected call": bad_call,
      "rejected MatMul (TensorFlow's own)": tf_bad_call,
  }
  report = {}
  for name, call in paths.items():
    wrong = 0
    for _ in range(WARMUP):
      call()
    before = rss_bytes()
    for i in range(calls):
      out = call()
      if out is not None and i % CHECK_EVERY == 0:
        for o, e in zip(out, expected):
          o = o if isinstance(o, np.ndarray) else o.numpy()
          wrong += int(not np.array_equal(o.view(np.uint8), e.view(np.uint8)))
      del out
    report[name] = {"calls": calls, "rss_before": before, "rss_after": rss_bytes(),
                    "wrong": wrong}
  session.close()
  print(json.dumps(report))


if __name__ == "__main__":
  main()
