"""Size: one float16 tensor of more than 2^31 elements, and 10,000 tensors in one call.

The 4 GiB tensor runs in a subprocess (tests/workers/large_tensor.py)
so that its peak resident memory is measured and then returned to the system:
the tiled input is forwarded to the op's output, so the peak stays near one copy.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import reference_unscale
from fixed_loss_scale import _loader

RAW = _loader.load_ops()
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "workers", "large_tensor.py")
GiB = 2**30

# numpy warns when it widens a bfloat16 NaN for the oracle's NaN checks.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def mem_available():
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  return 0


@pytest.mark.slow
@pytest.mark.skipif(mem_available() < 7 * GiB,
                    reason="needs about 5.5 GiB of free memory for a 4 GiB float16 tensor")
def test_float16_tensor_of_more_than_2_31_elements():
  result = subprocess.run([sys.executable, WORKER, "1000.1"], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["elements"] > 2**31
  assert report["bytes"] > 4 * GiB
  # Every element of every float16 bit pattern, at every position, is right.
  assert report["wrong"] == 0, report
  assert report["nan_patterns"] == 2046  # the pattern really covers NaNs
  # One copy of the data plus TensorFlow: the tiled buffer was reused in place
  # (a second 4 GiB buffer would put the peak above 8 GiB).
  assert report["peak_rss"] < report["bytes"] + 2.5 * GiB, report
  print(report)


NUM_TENSORS = 10_000
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _ten_thousand_tensors(rng):
  """Per dtype: one flat array of random bit patterns (every value class) and the
  sizes of its pieces; plus the dtype of each of the 10,000 tensors in order."""
  kinds = rng.integers(0, 4, NUM_TENSORS)
  sizes = rng.integers(0, 48, NUM_TENSORS)
  sizes[rng.random(NUM_TENSORS) < 0.1] = 0
  sizes[rng.random(NUM_TENSORS) < 0.01] = 5000  # some cross the kernel's shard boundaries
  flats, piece_sizes = [], []
  for k, dtype in enumerate(DTYPES):
    np_dtype = np.dtype(NP_DTYPES[dtype])
    n = int(sizes[kinds == k].sum())
    bits = rng.integers(0, np.iinfo(UINT[np_dtype.itemsize]).max, n,
                        dtype=UINT[np_dtype.itemsize], endpoint=True)
    flats.append(bits.view(np_dtype))
    piece_sizes.append([int(s) for s in sizes[kinds == k]])
  return kinds, flats, piece_sizes


def _split_and_interleave(kinds, flat_tensors, piece_sizes):
  pieces = [iter(tf.split(t, s)) for t, s in zip(flat_tensors, piece_sizes)]
  return [next(pieces[k]) for k in kinds]


def _regroup(kinds, outputs):
  """Per dtype, the outputs concatenated back in order (to compare in 4 arrays)."""
  groups = [[] for _ in DTYPES]
  for k, out in zip(kinds, outputs):
    groups[k].append(out)
  return [tf.concat(g, 0) for g in groups]


@pytest.mark.slow
def test_ten_thousand_tensors_in_one_call():
  rng = np.random.default_rng(10_000)
  kinds, flats, piece_sizes = _ten_thousand_tensors(rng)
  scale = 12345.678
  expected = [reference_unscale(f, scale) for f in flats]

  @tf.function(autograph=False)
  def in_graph(flat_tensors):
    grads = _split_and_interleave(kinds, flat_tensors, piece_sizes)
    fused = RAW.fixed_unscale_grads(grads, loss_scale=scale)
    api = fls.unscale_gradients(grads, scale)
    for g, a, b in zip(grads, fused, api):
      assert a.shape == g.shape and b.shape == g.shape and a.dtype == g.dtype
    return _regroup(kinds, fused), _regroup(kinds, api)

  flat_tensors = [tf.constant(f) for f in flats]
  fused, api = in_graph(flat_tensors)
  graph = in_graph.get_concrete_function(flat_tensors).graph
  unscale_ops = [op for op in graph.get_operations() if op.type == "FixedUnscaleGrads"]
  # The raw op takes all 10,000 at once; unscale_gradients the same tensors, in
  # one op or (on CPU) in consecutive groups (scaling.py NOTE [CPU groups]).
  raw_op = unscale_ops[0]
  assert len(raw_op.inputs) == NUM_TENSORS
  assert [t.name for op in unscale_ops[1:] for t in op.inputs] == [t.name for t in raw_op.inputs]
  for got in (fused, api):
    for g, e in zip(got, expected):
      assert_bitwise_equal(g.numpy(), e)

  # Eagerly: the raw op on 10,000 eager tensors, and the arithmetic fallback.
  grads = _split_and_interleave(kinds, flat_tensors, piece_sizes)
  eager_raw = RAW.fixed_unscale_grads(grads, loss_scale=scale)
  eager_api = fls.unscale_gradients(grads, scale)
  assert [o.shape for o in eager_raw] == [g.shape for g in grads]
  for got in (_regroup(kinds, eager_raw), _regroup(kinds, eager_api)):
    for g, e in zip(got, expected):
      assert_bitwise_equal(g.numpy(), e)
  # The inputs were not touched.
  for t, f in zip(flat_tensors, flats):
    assert_bitwise_equal(t.numpy(), f)
