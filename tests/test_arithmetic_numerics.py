"""The arithmetic path equals the kernels on the CPU at the edges docs/GPU.md names.

docs/GPU.md ("Numerics") states where the eager/XLA arithmetic path
(`grad * (1/scale)` with TensorFlow's ops) and the custom ops' kernels agree
and where, on a GPU, they do not: subnormal inputs and products below the
smallest normal, float64 subnormals, NaN signs and payloads. On the CPU both
run under x86 FTZ/DAZ and keep the input NaN, so they must agree bit for bit on
exactly those values; this pins them (tests/test_properties.py covers the rest
at random). The GPU side of the table is for tools/gpu_check.sh's `edges`
(the kernels) and is not measured here.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from fixed_loss_scale import ops

SCALE = 1024.0


def _bits(array):
  array = np.asarray(array)
  return array.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize])


def _edge_values(dtype):
  info = np.finfo(dtype)
  tiny, bits = info.tiny, {np.float32: np.uint32, np.float64: np.uint64}[dtype]
  nan_payload = np.array([0x7fc00123 if dtype == np.float32 else 0x7ff8000000000123],
                         bits).view(dtype)[0]
  values = [tiny / 2, tiny * np.array(1 - info.eps, dtype), info.smallest_subnormal,
            tiny * SCALE, tiny * SCALE * np.array(1 + info.eps, dtype),
            tiny * SCALE * np.array(1 - info.eps / 2, dtype), nan_payload, np.inf, 0.0, 1.0]
  values = np.array(values, dtype)
  return np.concatenate([values, -values])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unscale_arithmetic_path_equals_kernel_on_cpu_edges(dtype):
  values = _edge_values(dtype)
  with tf.device("/CPU:0"):
    kernel = ops.fixed_unscale_grads([tf.constant(values)], loss_scale=SCALE)[0].numpy()
    arithmetic = fls.FixedLossScale(SCALE).unscale_gradients([tf.constant(values)])[0].numpy()
  np.testing.assert_array_equal(_bits(arithmetic), _bits(kernel))
  # What the docs claim the CPU gives: FTZ/DAZ (subnormal in and out -> +-0)
  # and the input NaN kept, sign and payload.
  tiny = np.finfo(dtype).tiny
  assert np.all((np.abs(kernel) >= tiny) | (kernel == 0) | ~np.isfinite(kernel)), kernel
  nans = np.isnan(values)
  np.testing.assert_array_equal(_bits(kernel[nans]), _bits(values[nans]))


def test_bfloat16_subnormals_flush_on_both_cpu_paths():
  bf16 = tf.bfloat16.as_numpy_dtype
  values = np.array([2.0**-130, -(2.0**-130), 2.0**-126, 1.0], np.float32).astype(bf16)
  with tf.device("/CPU:0"):
    kernel = ops.fixed_unscale_grads([tf.constant(values)], loss_scale=2.0)[0].numpy()
    arithmetic = fls.FixedLossScale(2.0).unscale_gradients([tf.constant(values)])[0].numpy()
  np.testing.assert_array_equal(_bits(arithmetic), _bits(kernel))
  assert kernel.astype(np.float32).tolist()[:3] == [0.0, -0.0, 0.0]
