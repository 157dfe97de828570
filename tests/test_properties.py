"""Property-based tests (hypothesis) of both ops against the numpy oracle, bit for bit.

Random lists of 0-50 tensors with random shapes (rank 0-3, zero-sized sides
included) and any mix of half/bfloat16/float32/float64; values drawn from every
class (+-0, subnormals, normals, the largest binade, +-Inf, NaNs with payloads,
float16 extremes such as 65504 and 2^-24) or as raw random bit patterns; loss
scales in [1, 2^24]: powers of two, awkward values (3, 7.3, 12345.678, 2^24 - 1)
and arbitrary floats.

Each example runs three ways, and all must equal `reference_unscale` /
`reference_scale` (conftest.py: float32 uses the float32 reciprocal; half and
bfloat16 are computed in float32 and rounded once; TF's flush-to-zero of
float32/float64/bfloat16 subnormals is modelled), with dtypes and shapes kept:
  - graph: `fixed_loss_scale.unscale_gradients` in a tf.function (the fused op);
  - eager: the same function called eagerly (the TF arithmetic fallback);
  - the raw op called eagerly (the kernel without tf.function).

(The property tests found that an earlier oracle kept products that round up
to the smallest normal from below, which x86 flushes under FTZ: conftest's
`multiply_flushed` now models x86's rule.)

Example counts are set below (`deadline=None`); RELIABILITY.md lists them.
"""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fixed_loss_scale as fls
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import reference_scale
from conftest import reference_unscale
from fixed_loss_scale import _loader

RAW = _loader.load_ops()

LIST_EXAMPLES = 200
SINGLE_EXAMPLES = 300
SHARDED_EXAMPLES = 30
ROUND_TRIP_EXAMPLES = 300

# numpy warns when it widens a bfloat16 NaN for the NaN checks of the oracle.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

SETTINGS = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
BITS = {tf.float16: np.uint16, tf.bfloat16: np.uint16, tf.float32: np.uint32,
        tf.float64: np.uint64}


def _bits(values, np_dtype):
  return [int(v) for v in np.array(values, dtype=np_dtype).view(
      {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(np_dtype).itemsize])]


# Bit patterns of every interesting class, per dtype.
SPECIAL_BITS = {
    tf.float16: [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7D55, 0xFDFF,
                 0x0001, 0x8001, 0x03FF, 0x0200, 0x0400, 0x8400, 0x7BFF, 0xFBFF, 0x3C00,
                 0xBC00, 0x3555, 0x7BFE, 0x0003],
    tf.bfloat16: [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0x7FA5, 0x0001,
                  0x8001, 0x007F, 0x0080, 0x8080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x3EAB],
    tf.float32: _bits([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 65504.0, -65504.0, 65520.0,
                       2.0**-24, 2.0**-25, 2.0**-14, 6.0e-8, 3.0e-5, 1.0e-45, -1.0e-45,
                       1.1754942e-38, 1.1754944e-38, 3.4028235e38, -3.4028235e38, 1.0 / 3],
                      np.float32) + [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FC12345,
                                     0x00000001, 0x007FFFFF, 0x00800000],
    tf.float64: _bits([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 65504.0, 2.0**-24, 2.0**-1022,
                       5e-324, -5e-324, 2.2250738585072009e-308, 1.7976931348623157e308,
                       1.0e-300, 1.0 / 3, 3.4028235e38, 1.4e-45], np.float64) +
                  [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001,
                   0x7FF8DEADBEEF0001],
}


# (exponent bits, mantissa bits) of each format.
LAYOUT = {tf.float16: (5, 10), tf.bfloat16: (8, 7), tf.float32: (8, 23), tf.float64: (11, 52)}


def _float_bits(dtype):
  """Ordinary normal floats of any magnitude the dtype has, as bit patterns
  (composed from sign, exponent and mantissa, so nothing is ever rejected)."""
  exponent_bits, mantissa_bits = LAYOUT[dtype]
  return st.builds(
      lambda sign, exponent, mantissa: (sign << (exponent_bits + mantissa_bits)) |
      (exponent << mantissa_bits) | mantissa,
      st.integers(0, 1), st.integers(1, 2**exponent_bits - 2), st.integers(0, 2**mantissa_bits - 1))


def element_bits(dtype):
  top = np.iinfo(BITS[dtype]).max
  return st.one_of(st.sampled_from(SPECIAL_BITS[dtype]), st.integers(0, int(top)),
                   _float_bits(dtype))


@st.composite
def tensors(draw, dtypes=st.sampled_from(DTYPES),
            shapes=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)):
  dtype = draw(dtypes)
  shape = draw(st.one_of(shapes, st.tuples(st.integers(0, 100))))
  bits = draw(hnp.arrays(BITS[dtype], shape, elements=element_bits(dtype)))
  return bits.view(NP_DTYPES[dtype])


POWERS_OF_TWO = st.integers(0, 24).map(lambda k: 2.0**k)
AWKWARD = st.sampled_from([1.0, 1.0 + 2.0**-23, 3.0, 7.3, 10.0, 1000.1, 1e3, 12345.678,
                           65504.0, 65536.0 - 1, 2.0**24 - 1, 2.0**24 - 2, 3.0 * 2**20,
                           np.pi * 1000, 1 / 0.7])
ANY_SCALE = st.floats(min_value=1.0, max_value=2.0**24)
INT_SCALE = st.integers(1, 2**24)
SCALES = st.one_of(POWERS_OF_TWO, AWKWARD, ANY_SCALE, INT_SCALE)


def check_all(values, outputs, scale, reference):
  assert len(outputs) == len(values)
  for v, o in zip(values, outputs):
    o = o.numpy()
    assert o.dtype == v.dtype and o.shape == v.shape
    assert_bitwise_equal(o, reference(v, scale))


@settings(max_examples=LIST_EXAMPLES, **SETTINGS)
@given(values=st.integers(0, 50).flatmap(lambda n: st.lists(tensors(), min_size=n, max_size=n)),
       scale=SCALES)
def test_unscale_lists_graph_eager_and_raw_op_match_reference(values, scale):
  event(f"{len(values) // 10 * 10}-{len(values) // 10 * 10 + 9} tensors")
  event(f"{len({v.dtype for v in values})} dtypes in the list")
  grads = [tf.constant(v) for v in values]

  graph = tf.function(lambda gs: fls.unscale_gradients(gs, scale))(grads)
  check_all(values, graph, scale, reference_unscale)
  eager = fls.unscale_gradients(grads, scale)
  check_all(values, eager, scale, reference_unscale)
  raw = RAW.fixed_unscale_grads(grads, loss_scale=scale) if grads else []
  check_all(values, raw, scale, reference_unscale)
  # Inputs are never modified (the op may only reuse buffers nobody else holds).
  for v, g in zip(values, grads):
    assert_bitwise_equal(g.numpy(), v)


@settings(max_examples=SINGLE_EXAMPLES, **SETTINGS)
@given(value=tensors(), scale=SCALES)
def test_scale_loss_graph_eager_and_raw_op_match_reference(value, scale):
  loss = tf.constant(value)
  graph = tf.function(lambda x: fls.scale_loss(x, scale))(loss)
  eager = fls.scale_loss(loss, scale)
  raw = RAW.fixed_scale_loss(loss, loss_scale=scale)
  check_all([value] * 3, [graph, eager, raw], scale, reference_scale)
  # FixedLossScale gives the same as the functions.
  scaled = tf.function(lambda x: fls.FixedLossScale(scale).scale_loss(x))(loss)
  check_all([value], [scaled], scale, reference_scale)


def _random_bits(rng, n, dtype):
  return rng.integers(0, np.iinfo(BITS[dtype]).max, size=n, dtype=BITS[dtype],
                      endpoint=True).view(NP_DTYPES[dtype])


@settings(max_examples=SHARDED_EXAMPLES, **SETTINGS)
@given(sizes=st.lists(st.tuples(st.sampled_from(DTYPES), st.integers(0, 200_000)), min_size=1,
                      max_size=8),
       seed=st.integers(0, 2**32 - 1), scale=SCALES)
def test_lists_large_enough_to_shard_across_threads(sizes, seed, scale):
  """Lists over the kernel's 512 KiB threshold are split into byte ranges that
  cut through tensors; random bit patterns cover every value class."""
  rng = np.random.default_rng(seed)
  values = [_random_bits(rng, n, dtype) for dtype, n in sizes]
  grads = [tf.constant(v) for v in values]
  graph = tf.function(lambda gs: fls.unscale_gradients(gs, scale))(grads)
  check_all(values, graph, scale, reference_unscale)
  eager = fls.unscale_gradients(grads, scale)
  check_all(values, eager, scale, reference_unscale)


@settings(max_examples=ROUND_TRIP_EXAMPLES, **SETTINGS)
@given(data=st.data(), k=st.integers(0, 24),
       dtype=st.sampled_from([tf.float16, tf.bfloat16, tf.float32, tf.float64]))
def test_power_of_two_scale_then_unscale_is_the_identity(data, k, dtype):
  """A metamorphic check needing no oracle: with s = 2^k, unscale(scale(x)) == x
  whenever x * s stays finite and x and x * s are normal numbers."""
  np_dtype = NP_DTYPES[dtype]
  info = ml_dtypes.finfo(np_dtype) if dtype == tf.bfloat16 else np.finfo(np_dtype)
  tiny, top = float(info.tiny), float(info.max)
  magnitude = st.floats(min_value=tiny, max_value=top / 2.0**k, allow_nan=False,
                        allow_infinity=False)
  floats = st.builds(lambda m, negative: -m if negative else m, magnitude, st.booleans())
  x = np.array(data.draw(st.lists(floats, min_size=1, max_size=64)), np.float64).astype(np_dtype)
  keep = (np.abs(x.astype(np.float64)) >= tiny) & np.isfinite(x.astype(np.float64) * 2.0**k)
  x = x[keep]
  scale = 2.0**k
  scaled = RAW.fixed_scale_loss(tf.constant(x), loss_scale=scale)
  back = RAW.fixed_unscale_grads([scaled], loss_scale=scale)[0]
  assert_bitwise_equal(back.numpy(), x)
