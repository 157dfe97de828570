"""The CPU core's checked loops (FixedUnscaleGradsAndCheck), path by path.

Built alone by `make simd-test-lib` and driven through ctypes, as
tests/test_simd_paths.py drives the unchecked loops: every CPU path this
machine has (scalar, AVX2+F16C, AVX-512, and the AVX512_BF16 bfloat16 loop,
which runs on AVX-512 under FTZ/DAZ where the CPU has it) and every dtype.
Against independent references: the unchecked loop's bits, numpy's finiteness
of the outputs, numpy's float64 sum of the outputs' squares.

- The outputs are the unchecked loop's bits, with and without the sum of squares.
- One +Inf, -Inf, quiet NaN or signalling NaN (random payload) flips the flag at
  every position of buffers of 0..300 elements around the vector widths, unroll
  steps and 64-byte heads, at several misalignments (the edges of byte ranges,
  the kernel's shards: tests/test_fused_check_byte_ranges.py); zeros, subnormals and
  the largest finite values never flip it, nor do NaNs just outside the range.
- The sum of squares is exact where every partial sum is (small integers), 0
  for zeros, within the bound of NOTE [sum of squares] (tf_ops/core/cpu/
  scale_loop.h) otherwise, Inf or NaN with a non-finite output, +Inf when a
  finite output's square overflows float32 (the flag stays true).
"""

import ctypes

import hypothesis
import ml_dtypes
import numpy as np
import pytest
from hypothesis import strategies as st

from test_simd_paths import AVX2
from test_simd_paths import AVX512
from test_simd_paths import BFLOAT16
from test_simd_paths import DOUBLE
from test_simd_paths import DTYPES
from test_simd_paths import FLOAT
from test_simd_paths import HALF
from test_simd_paths import load_shim
from test_simd_paths import SCALAR
from test_simd_paths import STORAGE
from test_simd_paths import dtype_code
from test_simd_paths import factors
from test_simd_paths import path_code
from test_simd_paths import run
from test_simd_paths import supported

NP_DTYPE = {HALF: np.float16, BFLOAT16: ml_dtypes.bfloat16, FLOAT: np.float32,
            DOUBLE: np.float64}
# Bit layout per dtype: sign, exponent field, quiet bit, mantissa field.
LAYOUT = {
    HALF: (0x8000, 0x7c00, 0x0200, 0x03ff),
    BFLOAT16: (0x8000, 0x7f80, 0x0040, 0x007f),
    FLOAT: (0x80000000, 0x7f800000, 0x00400000, 0x007fffff),
    DOUBLE: (0x8000000000000000, 0x7ff0000000000000, 0x0008000000000000,
             0x000fffffffffffff),
}
DTYPE_OF_STORAGE = {np.uint16: HALF, np.uint32: FLOAT, np.uint64: DOUBLE}
NON_FINITE_KINDS = ("+inf", "-inf", "quiet nan", "signalling nan")


def relative_bound(lib, dtype, n):
  """NOTE [sum of squares] in tf_ops/core/cpu/scale_loop.h, for n elements and
  B = fls_squares_per_flush: (B + 2) * 2^-24 + (n/B + 8) * 2^-53; float64
  elements (B + n/B + 10) * 2^-53. 24 more float64 roundings cover numpy's
  own pairwise sum. assert_sum_within_bound adds 2^-126 per element."""
  squares_per_flush = lib.fls_squares_per_flush()
  assert 0 < squares_per_flush <= 4096, squares_per_flush
  float64_additions = n / squares_per_flush + 10 + 24
  if dtype == DOUBLE:
    return (squares_per_flush + float64_additions) * 2.0**-53
  return (squares_per_flush + 2) * 2.0**-24 + float64_additions * 2.0**-53

# (path, FTZ/DAZ): each path in both MXCSR states. On AVX-512 with FTZ/DAZ the
# bfloat16 loop is the AVX512_BF16 convert loop where the CPU has it (NOTE
# [bfloat16 convert]).
VARIANTS = [(p, ftz) for p in (SCALAR, AVX2, AVX512) for ftz in (False, True)]


@pytest.fixture(scope="module")
def lib():
  return load_shim()


@pytest.fixture(params=VARIANTS, ids=[f"{p}-{'ftz_daz' if f else 'ieee'}" for p, f in VARIANTS])
def variant(request, lib):
  path, _ = request.param
  if not supported(lib, path):
    pytest.skip(f"this CPU or build has no {path} path")
  return request.param


def checked(lib, path, dtype, bits, factor, ftz_daz, with_squares, first=0, last=None, out=None,
            initial_sum=0.0):
  """Scales `bits` with the checked loop of `path`: (output bits, flag, sum).
  The output, unless given, has the input's offset from a 64-byte boundary
  (the loops align their vectors to the output)."""
  last = bits.size if last is None else last
  if out is None:
    offset = bits.ctypes.data % 64 // bits.itemsize
    out = aligned(bits.size, DTYPE_OF_STORAGE[bits.dtype.type], offset)
  flag = ctypes.c_int(-1)
  total = ctypes.c_double(initial_sum)
  lib.fls_scale_and_check(path_code(lib, path), dtype_code(lib, dtype), bits.ctypes.data,
                          out.ctypes.data, bits.size, first, last, float(factor[0]),
                          float(factor[1]), int(ftz_daz), int(with_squares), ctypes.byref(flag),
                          ctypes.byref(total))
  assert flag.value in (0, 1)
  return out, bool(flag.value), total.value


def aligned(n, dtype, offset):
  """A zeroed array of n elements of `dtype` starting `offset` elements past a
  64-byte boundary (views of one allocation, as the kernels see tensors)."""
  storage = np.dtype(STORAGE[dtype])
  raw = np.zeros((n + offset) * storage.itemsize + 128, np.uint8)
  start = (-raw.ctypes.data) % 64 + offset * storage.itemsize
  return raw[start:start + n * storage.itemsize].view(storage)


def finite_bits(rng, dtype, n):
  """Random finite bit patterns, with zeros, subnormals and the largest finite
  values of both signs mixed in."""
  sign, exponent, _, mantissa = LAYOUT[dtype]
  storage = STORAGE[dtype]
  bits = rng.integers(0, np.iinfo(storage).max, size=n, dtype=storage, endpoint=True)
  # An all-ones exponent loses its top bit: finite, still large.
  top = storage(1 << (exponent.bit_length() - 1))
  bits = np.where((bits & storage(exponent)) == storage(exponent), bits & ~top, bits)
  extremes = np.array([0, sign, 1, sign | 1, mantissa, sign | mantissa, exponent - 1,
                       sign | (exponent - 1)], storage)
  picks = rng.integers(0, 4, size=n) == 0
  bits[picks] = extremes[rng.integers(0, extremes.size, size=int(picks.sum()))]
  return bits


def non_finite_bits(rng, dtype, kind):
  sign, exponent, quiet, mantissa = LAYOUT[dtype]
  payload = int(rng.integers(0, mantissa, endpoint=True))
  random_sign = sign if rng.integers(0, 2) else 0
  if kind == "+inf":
    return exponent
  if kind == "-inf":
    return sign | exponent
  if kind == "quiet nan":
    return random_sign | exponent | quiet | payload
  return random_sign | exponent | max(payload & ~quiet & mantissa, 1)


def is_finite_bits(bits, dtype):
  exponent = STORAGE[dtype](LAYOUT[dtype][1])
  return (bits & exponent) != exponent


def squares_reference(out_bits, dtype):
  """numpy float64 sum of the squares of the outputs."""
  values = out_bits.view(NP_DTYPE[dtype]).astype(np.float64)
  with np.errstate(over="ignore", invalid="ignore"):
    return float(np.sum(values * values))


def assert_sum_within_bound(lib, total, out_bits, dtype, what):
  reference = squares_reference(out_bits, dtype)
  tolerance = relative_bound(lib, dtype, out_bits.size) * reference + out_bits.size * 2.0**-126
  assert abs(total - reference) <= tolerance, (
      f"{what}: sum of squares {total!r}, numpy {reference!r}, "
      f"relative error {abs(total - reference) / max(reference, 1e-300):.3g}")


# Sizes around the vector widths (8 .. 64 elements), unroll steps and the
# 64-byte head (up to 31 elements); offsets in elements from a 64-byte boundary.
EDGE_SIZES = sorted(set(range(0, 41)) | {63, 64, 65, 127, 128, 129, 135, 191, 192, 193, 255,
                                         256, 257, 300})
OFFSETS = (0, 1, 3, 13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_non_finite_at_every_position_flips_the_flag(lib, variant, dtype):
  """Each of the four kinds at each position of each size (across the four
  offsets, every position sees every kind), in both checked loops; the outputs
  are the unchecked loop's bits and the background alone leaves the flag true."""
  path, ftz = variant
  rng = np.random.default_rng(23)
  factor = factors(1000.1)
  for n in EDGE_SIZES:
    for o, offset in enumerate(OFFSETS):
      src = aligned(n, dtype, offset)
      src[:] = finite_bits(rng, dtype, n)
      expected = run(lib, path, dtype, src, factor, ftz)
      out, flag, _ = checked(lib, path, dtype, src, factor, ftz, with_squares=o % 2)
      np.testing.assert_array_equal(out, expected, err_msg=f"n={n} offset={offset}")
      assert flag, f"finite values flagged: n={n} offset={offset}, {src.tolist()}"
      for position in range(n):
        kind = NON_FINITE_KINDS[(position + o) % 4]
        bad = src.copy()
        bad[position] = non_finite_bits(rng, dtype, kind)
        bad_in = aligned(n, dtype, offset)
        bad_in[:] = bad
        out, flag, _ = checked(lib, path, dtype, bad_in, factor, ftz, False)
        assert not flag, (f"{kind} {bad[position]:#x} at {position} of {n} (offset {offset}) "
                          "not flagged")
        assert not is_finite_bits(out[position], dtype)
        # In place, with the sum of squares.
        _, flag, total = checked(lib, path, dtype, bad_in, factor, ftz, True, out=bad_in)
        assert not flag, (f"{kind} {bad[position]:#x} at {position} of {n} (offset {offset}, "
                          "in place, sum_of_squares) not flagged")
        assert not np.isfinite(total), f"{kind} at {position} of {n}: sum {total}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_are_the_unchecked_loops_bits(lib, variant, dtype):
  """Random bit patterns (NaNs, Infs, subnormals included) over a large buffer
  and every start/end around the heads and tails; in place too."""
  path, ftz = variant
  rng = np.random.default_rng(24)
  storage = STORAGE[dtype]
  for loss_scale in (1.0, 3.0, 1000.1, 2.0**24 + 2.0, 2.0**126):
    factor = factors(loss_scale)
    src = rng.integers(0, np.iinfo(storage).max, size=100_003, dtype=storage, endpoint=True)
    expected = run(lib, path, dtype, src, factor, ftz)
    for with_squares in (False, True):
      out, flag, _ = checked(lib, path, dtype, src, factor, ftz, with_squares)
      np.testing.assert_array_equal(out, expected)
      assert flag == bool(np.all(is_finite_bits(expected, dtype)))
      in_place = src.copy()
      checked(lib, path, dtype, in_place, factor, ftz, with_squares, out=in_place)
      np.testing.assert_array_equal(in_place, expected)
  sentinel = np.array(0x5a5a5a5a5a5a5a5a).astype(storage)
  src = finite_bits(rng, dtype, 200)
  for first in range(0, 34, 3):
    for last in list(range(first, first + 70)) + [199, 200]:
      expected = np.full(200, sentinel, storage)
      run(lib, path, dtype, src, factor, ftz, first, last, out=expected)
      actual = np.full(200, sentinel, storage)
      checked(lib, path, dtype, src, factor, ftz, True, first, last, out=actual)
      np.testing.assert_array_equal(actual, expected, err_msg=f"[{first}, {last})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_the_range_is_checked(lib, variant, dtype):
  """NaNs and Infs just before `first` and from `last` on (where a vector
  head, tail or masked tail could read them) leave the flag true and the sum
  that of [first, last)."""
  path, ftz = variant
  _, exponent, quiet, _ = LAYOUT[dtype]
  factor = factors(1.0)
  for n in range(0, 70):
    for first in (0, 1, 5, 17):
      src = np.full(first + n + 70, exponent | quiet, STORAGE[dtype])
      src[first + n + 1::2] = exponent
      src[first:first + n] = (np.arange(n) % 7 + 1).astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
      out, flag, total = checked(lib, path, dtype, src, factor, ftz, True, first, first + n)
      assert flag, f"[{first}, {first + n}) flagged by its neighbours"
      assert total == float(np.sum((np.arange(n) % 7 + 1.0) ** 2)), (first, n, total)
      np.testing.assert_array_equal(out[first:first + n], src[first:first + n])


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_extremes_do_not_flip_the_flag(lib, variant, dtype):
  """+-0, the smallest and largest subnormals and normals, the largest finite
  values: alone, mixed, at every length up to 300."""
  path, ftz = variant
  sign, exponent, _, mantissa = LAYOUT[dtype]
  extremes = np.array([0, 1, mantissa, mantissa + 1, exponent - 1, exponent - 2],
                      STORAGE[dtype])
  extremes = np.concatenate([extremes, extremes | STORAGE[dtype](sign)])
  rng = np.random.default_rng(25)
  for loss_scale in (1.0, 65504.0):
    factor = factors(loss_scale)
    for n in range(0, 301, 7):
      src = aligned(n, dtype, n % 5)
      src[:] = extremes[rng.integers(0, extremes.size, size=n)]
      for with_squares in (False, True):
        out, flag, _ = checked(lib, path, dtype, src, factor, ftz, with_squares)
        assert flag, f"flagged finite extremes: n={n}, scale {loss_scale}: {src.tolist()}"
        assert np.all(is_finite_bits(out, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_is_exact_for_small_integers(lib, variant, dtype):
  """Values in -5..5 (exact in every dtype, factor 1): every partial sum is an
  exact float32 integer, so the sum equals numpy's exactly at every size and
  offset; a dropped, doubled or garbage lane (head, masked tail, flush) shows.
  Zeros sum to exactly 0, and the sum is added to what *check held."""
  path, ftz = variant
  factor = factors(1.0)
  for n in list(range(0, 301)) + [4096 + 37, 70_001]:
    for offset in (OFFSETS if n <= 300 else (0, 1)):
      src = aligned(n, dtype, offset)
      src[:] = ((np.arange(n) * 5) % 11 - 5).astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
      out, flag, total = checked(lib, path, dtype, src, factor, ftz, True, initial_sum=0.5)
      expected = float(np.sum(((np.arange(n) * 5) % 11 - 5).astype(np.float64) ** 2))
      assert flag
      assert total == expected + 0.5, f"n={n} offset={offset}: {total} != {expected} + 0.5"
      np.testing.assert_array_equal(out, src)
  zeros = np.zeros(1000, STORAGE[dtype])
  zeros[::3] = STORAGE[dtype](LAYOUT[dtype][0])  # -0.0 too
  _, flag, total = checked(lib, path, dtype, zeros, factors(3.0), ftz, True)
  assert flag and total == 0.0 and not np.signbit(total)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_within_the_bound(lib, variant, dtype):
  """Random finite outputs of moderate size, many lengths: the float64 total is
  within NOTE [sum of squares]'s bound of numpy's float64 sum; without the sum,
  *check's sum is untouched."""
  path, ftz = variant
  rng = np.random.default_rng(26)
  factor = factors(3.0)
  for n in [0, 1, 5, 31, 64, 100, 257, 1000, 4095, 20_000, 300_001]:
    values = rng.standard_normal(n) * rng.choice([1e-3, 1.0, 50.0], size=n)
    src = values.astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
    out, flag, total = checked(lib, path, dtype, src, factor, ftz, True)
    assert flag
    assert_sum_within_bound(lib, total, out, dtype, f"n={n}")
    _, _, untouched = checked(lib, path, dtype, src, factor, ftz, False, initial_sum=12.5)
    assert untouched == 12.5


def test_sum_of_squares_of_large_buffers_is_close(lib, variant):
  """Large float32 and float16 buffers: with 256 additions per float32 lane the
  rounding errors, mostly of either sign, leave the total far inside the
  worst-case bound (observed on every path: <= 1.1e-8 relative for float32,
  <= 1.5e-7 for float16, whose squares' low bits round the same way more
  often); 1e-6 relative still catches one block added twice or lost (a
  block is >= 1/4000 of the total here)."""
  path, ftz = variant
  rng = np.random.default_rng(27)
  for dtype in (FLOAT, HALF):
    src = rng.uniform(-1, 1, size=1_000_003).astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
    out, flag, total = checked(lib, path, dtype, src, factors(1.0), ftz, True)
    reference = squares_reference(out, dtype)
    assert flag
    assert abs(total - reference) <= 1e-6 * reference, (dtype, total, reference)


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflowing_square_gives_inf_with_the_flag_true(lib, variant, dtype):
  """A finite output whose square overflows float32 (float32, bfloat16: 1e20;
  float64: its float64 square is finite, the float32 rounding of the total is
  +Inf; float16 cannot overflow: 65504^2 is finite): sum +Inf, flag true."""
  path, ftz = variant
  factor = factors(1.0)
  for n in (1, 7, 64, 301):
    for position in {0, n // 2, n - 1}:
      values = np.full(n, 0.5)
      values[position] = 65504.0 if dtype == HALF else 1e20
      src = values.astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
      _, flag, total = checked(lib, path, dtype, src, factor, ftz, True)
      assert flag, (n, position)
      with np.errstate(over="ignore"):
        as_float32 = np.float32(total)
      if dtype == HALF:
        out = src  # factor 1
        assert_sum_within_bound(lib, total, out, dtype, f"n={n}, 65504 at {position}")
      else:
        assert as_float32 == np.inf, (n, position, total)


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(dtype=st.sampled_from(DTYPES), variant_index=st.integers(0, len(VARIANTS) - 1),
                  n=st.integers(1, 600), offset=st.integers(0, 15), data=st.data())
def test_single_non_finite_anywhere(lib, dtype, variant_index, n, offset, data):
  """Any size, offset, position, kind and payload: flag false, outputs the
  unchecked loop's bits; the same buffer made finite again: flag true."""
  path, ftz = VARIANTS[variant_index]
  if not supported(lib, path):
    return
  position = data.draw(st.integers(0, n - 1), label="position")
  kind = data.draw(st.sampled_from(NON_FINITE_KINDS), label="kind")
  _, _, _, mantissa = LAYOUT[dtype]
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
  src = aligned(n, dtype, offset)
  src[:] = finite_bits(rng, dtype, n)
  src[position] = non_finite_bits(rng, dtype, kind)
  factor = factors(data.draw(st.sampled_from([1.0, 3.0, 1000.1, 65504.0]), label="scale"))
  expected = run(lib, path, dtype, src, factor, ftz)
  with_squares = data.draw(st.booleans(), label="sum_of_squares")
  out, flag, _ = checked(lib, path, dtype, src, factor, ftz, with_squares)
  np.testing.assert_array_equal(out, expected)
  assert not flag
  src[position] = 0
  _, flag, _ = checked(lib, path, dtype, src, factor, ftz, with_squares)
  assert flag
