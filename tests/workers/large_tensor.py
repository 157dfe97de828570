"""Worker for tests/test_large.py: one float16 tensor of more than 2^31 elements.

Runs in its own process so that its peak resident memory can be measured and
its 4 GiB are returned to the system when it exits. Inside one tf.function a
65,537-element pattern holding every float16 bit pattern is tiled to
32768 * 65537 = 2^31 + 32768 elements (4 GiB) and unscaled by FixedUnscaleGrads,
which may reuse (forward) the tiled buffer. The result is checked in chunks
against the numpy oracle of the pattern; the process prints one JSON line.

usage: python large_tensor.py LOSS_SCALE
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import reference_unscale  # noqa: E402  (the numpy oracle)
from fixed_loss_scale import _loader  # noqa: E402
from workers.probes import rss_bytes  # noqa: E402

PATTERN = 65537  # every float16 bit pattern, then 0 again: rows do not align with 2^k
REPS = 32768
ROWS_PER_CHUNK = 256  # 32 MiB of float16 per comparison


def main():
  loss_scale = float(sys.argv[1])
  raw = _loader.load_ops()
  pattern = (np.arange(PATTERN) % 65536).astype(np.uint16).view(np.float16)

  @tf.function(autograph=False)
  def unscale_big(p):
    big = tf.tile(p, [REPS])
    return raw.fixed_unscale_grads([big], loss_scale=loss_scale)[0]

  started = time.monotonic()
  out = unscale_big(tf.constant(pattern))
  op_seconds = time.monotonic() - started
  rss_with_result = rss_bytes()
  result = np.asarray(out)  # shares the tensor's buffer (.numpy() would copy 4 GiB)
  assert result.dtype == np.float16 and result.shape == (PATTERN * REPS,), result.shape

  expected = reference_unscale(pattern, loss_scale).view(np.uint16)
  expected_nan = (expected & 0x7FFF) > 0x7C00
  rows = result.view(np.uint16).reshape(REPS, PATTERN)
  wrong = 0
  for start in range(0, REPS, ROWS_PER_CHUNK):
    chunk = rows[start:start + ROWS_PER_CHUNK]
    same = chunk == expected
    if not same.all():
      # NaNs need only be NaN with the same sign (the oracle's rule).
      same |= expected_nan & ((chunk & 0x7FFF) > 0x7C00) & ((chunk & 0x8000) == (expected & 0x8000))
      wrong += int(same.size - np.count_nonzero(same))
  print(json.dumps({
      "elements": int(result.size),
      "bytes": int(result.nbytes),
      "wrong": wrong,
      "nan_patterns": int(expected_nan.sum()),
      "rss_with_result": rss_with_result,
      "tile_and_op_seconds": round(op_seconds, 1),
      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }))


if __name__ == "__main__":
  main()
