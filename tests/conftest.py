"""Shared fixtures and numpy oracles for the test suite.

The oracles are written from the ops' contract with numpy only (they never call
the code under test): half and bfloat16 in float32 rounded once, float32 with the
float32 reciprocal, float64 with the float64 reciprocal of the float32 scale.
TensorFlow's CPU kernels run with flush-to-zero and denormals-are-zero, so
float32/float64 subnormal inputs count as zero and tiny results become zero;
`multiply_flushed` models x86's rule for that.
"""

import os
import queue
import subprocess
import sys
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_dtypes  # noqa: E402  (installed with TensorFlow)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import fixed_loss_scale  # noqa: E402,F401  (loads the library)
from workers.probes import graph_op_types  # noqa: E402,F401  (re-exported)

NP_DTYPES = {
    tf.float16: np.float16,
    tf.bfloat16: ml_dtypes.bfloat16,
    tf.float32: np.float32,
    tf.float64: np.float64,
}
ALL_DTYPES = list(NP_DTYPES)


def flush_subnormals(x):
  """Zeroes float32/float64 subnormals (keeping the sign), as FTZ/DAZ do."""
  x = np.array(x, copy=True)
  tiny = np.finfo(x.dtype).tiny
  mask = (np.abs(x) < tiny) & (x != 0)
  x[mask] = np.copysign(0, x[mask])
  return x


def _compute_in(x, factor32, factor64):
  """x * factor in the op's math type, rounded once to x's dtype."""
  x = np.asarray(x)
  with np.errstate(over="ignore", invalid="ignore"):
    return _compute_in_quietly(x, factor32, factor64)


def multiply_flushed(x, factor):
  """x * factor (float32 or float64) as x86 computes it under FTZ/DAZ.

  Subnormal inputs count as zero. A result is flushed to zero of its sign when
  it is tiny *after rounding*: when the product, rounded to the type's precision
  as if the exponent range were unbounded, is below the smallest normal. So a
  product just under the smallest normal that rounds up to it survives.
  """
  x = flush_subnormals(x)
  factor = x.dtype.type(factor)
  product = x * factor
  if x.dtype == np.float32:
    # The float64 product of two float32s is exact; scaled by 2^64 it rounds to
    # float32 in the normal range, as an unbounded exponent would.
    unbounded = (x.astype(np.float64) * np.float64(factor) * 2.0**64).astype(np.float32)
    tiny = np.abs(unbounded) < np.float32(2.0**-62)
  else:
    # Products this small need |x| <= 1 (factors here are >= 2^-24), so
    # x * 2^128 is exact and the scaled product is rounded once, normally.
    tiny = np.abs((x * 2.0**128) * factor) < 2.0**-894
  return np.where(tiny, np.copysign(x.dtype.type(0), product), product).astype(x.dtype)


def _compute_in_quietly(x, factor32, factor64):
  if x.dtype == np.float64:
    return multiply_flushed(x, factor64)
  return multiply_flushed(x.astype(np.float32), factor32).astype(x.dtype)


def reference_unscale(x, loss_scale):
  """numpy oracle for FixedUnscaleGrads on one tensor."""
  scale32 = np.float32(loss_scale)
  return _compute_in(x, np.float32(1) / scale32, 1.0 / np.float64(scale32))


def reference_scale(x, loss_scale):
  """numpy oracle for FixedScaleLoss."""
  scale32 = np.float32(loss_scale)
  return _compute_in(x, scale32, np.float64(scale32))


def assert_bitwise_equal(actual, expected):
  """Equal bit patterns; NaNs need only be NaN with the same sign."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  wide_a = actual.astype(np.float64)
  wide_e = expected.astype(np.float64)
  nan_a, nan_e = np.isnan(wide_a), np.isnan(wide_e)
  np.testing.assert_array_equal(nan_a, nan_e)
  np.testing.assert_array_equal(np.signbit(wide_a[nan_a]), np.signbit(wide_e[nan_e]))
  uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
  bits_a = actual.view(uint)[~nan_a]
  bits_e = expected.view(uint)[~nan_e]
  mismatch = np.flatnonzero(bits_a != bits_e)
  assert mismatch.size == 0, (
      f"{mismatch.size} elements differ, first at {mismatch[0]}: "
      f"{actual[~nan_a][mismatch[0]]!r} != {expected[~nan_e][mismatch[0]]!r}")


def random_values(rng, shape, np_dtype):
  """Normal values spread over many binades, as gradients are."""
  wide = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 8, size=shape))
  return wide.astype(np_dtype)


def run_worker(script, out_dir, timeout=300):
  """Runs `python tests/workers/<script> OUT_DIR` in a fresh process (for
  settings that must precede TensorFlow's start, such as logical devices) and
  fails with the tail of its output unless it exits 0."""
  workers_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, os.path.join(workers_dir, script), str(out_dir)],
      capture_output=True, text=True, timeout=timeout, env=env, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture
def mixed_float16():
  """Keras's global policy "mixed_float16" for one test, then the previous one."""
  import keras  # pylint: disable=import-outside-toplevel  (workers import conftest)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  yield
  keras.mixed_precision.set_global_policy(previous)


class StreamedWorker:
  """A `python tests/workers/<script> ARGS...` process whose stdout lines a
  thread reads into a queue, for tests that act on a worker while it runs
  (kill it after a given step): wait_for_line, finish, output. Stderr goes to
  a file in `log_dir`. Every wait is bounded."""

  def __init__(self, script, log_dir, *args, timeout=300):
    workers_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")
    self.timeout = timeout
    self.log_path = os.path.join(log_dir, f"stderr-{len(os.listdir(log_dir))}.txt")
    self.log = open(self.log_path, "w")  # pylint: disable=consider-using-with
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.process = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, os.path.join(workers_dir, script), *args], stdout=subprocess.PIPE,
        stderr=self.log, text=True, env=env)
    self.lines = []
    self._queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.process.stdout:
      self._queue.put(line.strip())
    self._queue.put(None)

  def wait_for_line(self, matches, what):
    """Reads lines until `matches(line)` is truthy and returns its value;
    fails, naming `what`, if the worker ends first."""
    while True:
      line = self._queue.get(timeout=self.timeout)
      if line is None:
        raise AssertionError(f"worker ended before {what}: {self.output()}")
      self.lines.append(line)
      found = matches(line)
      if found:
        return found

  def finish(self, timeout=None):
    """Waits for the process (killing it after `timeout`), collects the rest
    of its lines and returns its exit status."""
    try:
      self.process.wait(self.timeout if timeout is None else timeout)
    finally:
      if self.process.poll() is None:
        self.process.kill()
        self.process.wait(30)
    while True:
      try:
        line = self._queue.get(timeout=30)
      except queue.Empty:
        break
      if line is None:
        break
      self.lines.append(line)
    self.log.close()
    return self.process.returncode

  def output(self):
    with open(self.log_path) as f:
      return "\n".join(self.lines) + "\n--- stderr ---\n" + f.read()[-3000:]


def train_custom_loop(model, x, y, batch, scale_loss, apply, jit_compile=None):
  """Trains `model` on (x, y) in batches of `batch` with a custom tf.function step.

  The step takes the mean squared error, `scale_loss(loss)` under the tape, and
  `apply(scaled gradients, trainable weights)`. Returns the final weights
  (numpy) and the op types of the traced step.
  """
  import keras  # pylint: disable=import-outside-toplevel  (workers import conftest)

  @tf.function(jit_compile=jit_compile)
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.mean_squared_error(yb, model(xb)))
      scaled = scale_loss(loss)
    apply(tape.gradient(scaled, model.trainable_weights), model.trainable_weights)

  for i in range(0, len(x), batch):
    step(x[i:i + batch], y[i:i + batch])
  return [w.numpy() for w in model.trainable_weights], graph_op_types(
      step.get_concrete_function(x[:batch], y[:batch]))


@pytest.fixture
def rng():
  return np.random.default_rng(1234)
