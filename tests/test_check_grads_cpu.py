"""The CPU core's check-only loops (FixedCheckGrads), path by path.

Built alone by `make simd-test-lib` and driven through ctypes, as
tests/test_fused_check_cpu.py drives the checked loops. The check-only loop is
the checked loop with its stores compiled out (NOTE [check without store] in
tf_ops/core/cpu/scale_loop.h), so the references are:
- the checked loop's flag and float64 sum, bit for bit, over the same elements
  (its output placed at the input's offset from a 64-byte boundary, as
  TensorFlow's aligned buffers are), at every size and offset around the
  vector widths, unroll steps and heads, with one non-finite value anywhere;
- numpy's finiteness of the unchecked loop's outputs and numpy's float64 sum
  of their squares;
- the input, unchanged: the loop reads it and writes nothing (its span has no
  output pointer, so a store would fault).
"""

import ctypes

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from test_fused_check_cpu import EDGE_SIZES
from test_fused_check_cpu import LAYOUT
from test_fused_check_cpu import NON_FINITE_KINDS
from test_fused_check_cpu import NP_DTYPE
from test_fused_check_cpu import aligned
from test_fused_check_cpu import assert_sum_within_bound
from test_fused_check_cpu import checked
from test_fused_check_cpu import finite_bits
from test_fused_check_cpu import is_finite_bits
from test_fused_check_cpu import lib  # noqa: F401  (a fixture)
from test_fused_check_cpu import non_finite_bits
from test_fused_check_cpu import variant  # noqa: F401  (a fixture)
from test_simd_paths import DTYPES
from test_simd_paths import STORAGE
from test_simd_paths import dtype_code
from test_simd_paths import factors
from test_simd_paths import path_code
from test_simd_paths import run

# Loss scales of a tensor scale (NOTE [tensor loss scale range]): below 1 the
# factor exceeds 1 and a finite gradient can overflow; above 2^126 the float32
# factor is flushed to zero (TensorReciprocalFactorFor).
TENSOR_SCALES = (1.0, 3.0, 1000.1, 0.5, 2.0**-20)


def tensor_factors(loss_scale):
  f32, f64 = factors(loss_scale)
  return (np.float32(0) if f32 < np.float32(2.0**-126) else f32), f64


def check_only(lib, path, dtype, bits, factor, ftz_daz, with_squares, first=0, last=None,
               initial_sum=0.0):
  """The check-only loop of `path` over bits[first:last]: (flag, float64 sum);
  asserts that `bits` is unchanged."""
  last = bits.size if last is None else last
  before = bits.copy()
  flag = ctypes.c_int(-1)
  total = ctypes.c_double(initial_sum)
  lib.fls_check(path_code(lib, path), dtype_code(lib, dtype), bits.ctypes.data, bits.size,
                first, last, float(factor[0]), float(factor[1]), int(ftz_daz), int(with_squares),
                ctypes.byref(flag), ctypes.byref(total))
  assert flag.value in (0, 1)
  np.testing.assert_array_equal(bits, before, err_msg="the check wrote to its input")
  return bool(flag.value), total.value


def assert_same_as_fused(lib, path, dtype, src, factor, ftz, with_squares, what,
                         first=0, last=None):
  """Flag and sum of the check-only loop == the checked loop's, bit for bit."""
  _, fused_flag, fused_sum = checked(lib, path, dtype, src, factor, ftz, with_squares, first,
                                     last, initial_sum=0.25)
  flag, total = check_only(lib, path, dtype, src, factor, ftz, with_squares, first, last,
                           initial_sum=0.25)
  assert flag == fused_flag, f"{what}: flag {flag}, fused {fused_flag}"
  assert np.array(total).tobytes() == np.array(fused_sum).tobytes(), (
      f"{what}: sum {total!r}, fused {fused_sum!r}")
  return flag, total


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_non_finite_at_every_position(lib, variant, dtype):
  """Sizes around the vector widths, unroll steps and 64-byte heads, four
  offsets, one of the four non-finite kinds at each position: the flag and
  sum are the checked loop's and the flag is false; the finite background
  alone gives true."""
  path, ftz = variant
  rng = np.random.default_rng(41)
  factor = factors(1000.1)
  for n in EDGE_SIZES:
    for o, offset in enumerate((0, 1, 3, 13)):
      src = aligned(n, dtype, offset)
      src[:] = finite_bits(rng, dtype, n)
      flag, _ = assert_same_as_fused(lib, path, dtype, src, factor, ftz, o % 2, f"n={n}")
      assert flag
      for position in range(n):
        kind = NON_FINITE_KINDS[(position + o) % 4]
        saved = src[position]
        src[position] = non_finite_bits(rng, dtype, kind)
        flag, total = assert_same_as_fused(lib, path, dtype, src, factor, ftz, position % 2,
                                           f"{kind} at {position} of {n}, offset {offset}")
        assert not flag
        assert position % 2 == 0 or not np.isfinite(total)
        src[position] = saved


@pytest.mark.parametrize("dtype", DTYPES)
def test_flag_and_sum_match_numpy_and_the_fused_loop(lib, variant, dtype):
  """Random bit patterns (NaNs, Infs, subnormals) and random finite values
  over large buffers, for tensor scales below 1 (finite values overflow) and
  above: the flag is numpy's finiteness of the unchecked loop's outputs, the
  sum is within NOTE [sum of squares]'s bound of numpy's, both the checked
  loop's bits; every start and end around the heads and tails too."""
  path, ftz = variant
  rng = np.random.default_rng(42)
  storage = STORAGE[dtype]
  for loss_scale in TENSOR_SCALES:
    factor = tensor_factors(loss_scale)
    noise = rng.integers(0, np.iinfo(storage).max, size=100_003, dtype=storage, endpoint=True)
    values = rng.standard_normal(30_001) * rng.choice([1e-3, 1.0, 50.0], size=30_001)
    finite = values.astype(NP_DTYPE[dtype]).view(storage)
    for src in (noise, finite):
      outputs = run(lib, path, dtype, src, factor, ftz)
      for with_squares in (False, True):
        flag, total = assert_same_as_fused(lib, path, dtype, src, factor, ftz, with_squares,
                                           f"scale {loss_scale}")
        assert flag == bool(np.all(is_finite_bits(outputs, dtype)))
        if with_squares and flag:
          assert_sum_within_bound(lib, total - 0.25, outputs, dtype, f"scale {loss_scale}")
  src = finite_bits(rng, dtype, 200)
  for first in range(0, 34, 3):
    for last in list(range(first, first + 70)) + [199, 200]:
      assert_same_as_fused(lib, path, dtype, src, factors(3.0), ftz, True, f"[{first}, {last})",
                           first, last)


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_the_range_is_read(lib, variant, dtype):
  """NaNs and Infs just before `first` and from `last` on leave the flag true
  and the sum that of [first, last) (small integers: exact)."""
  path, ftz = variant
  _, exponent, quiet, _ = LAYOUT[dtype]
  for n in range(0, 70):
    for first in (0, 1, 5, 17):
      src = np.full(first + n + 70, exponent | quiet, STORAGE[dtype])
      src[first + n + 1::2] = exponent
      src[first:first + n] = (np.arange(n) % 7 + 1).astype(NP_DTYPE[dtype]).view(STORAGE[dtype])
      flag, total = check_only(lib, path, dtype, src, factors(1.0), ftz, True, first, first + n)
      assert flag, f"[{first}, {first + n}) flagged by its neighbours"
      assert total == float(np.sum((np.arange(n) % 7 + 1.0) ** 2)), (first, n, total)


def _call_lists(lib, dtypes, ins, cuts, factor, with_squares):
  """(flag, sum) of fls_check_list and of fls_scale_and_check_list (outputs at
  the inputs' offsets from a 64-byte boundary) over the same cuts."""
  dtype_array = np.array([dtype_code(lib, d) for d in dtypes], np.int32)
  counts = np.array([x.size for x in ins], np.int64)
  outs = [aligned(x.size, d, x.ctypes.data % 64 // x.itemsize) for x, d in zip(ins, dtypes)]
  in_ptrs = (ctypes.c_void_p * len(ins))(*[x.ctypes.data for x in ins])
  out_ptrs = (ctypes.c_void_p * len(outs))(*[o.ctypes.data for o in outs])
  cuts_array = np.asarray(cuts, np.int64)
  results = []
  for fused in (False, True):
    flag = ctypes.c_int(-1)
    total = ctypes.c_double(0.0)
    common = (counts.ctypes.data, cuts_array.ctypes.data, len(cuts_array), float(factor[0]),
              float(factor[1]), int(with_squares), ctypes.byref(flag), ctypes.byref(total))
    if fused:
      lib.fls_scale_and_check_list(len(ins), dtype_array.ctypes.data,
                                   ctypes.cast(in_ptrs, ctypes.c_void_p),
                                   ctypes.cast(out_ptrs, ctypes.c_void_p), *common)
    else:
      lib.fls_check_list(len(ins), dtype_array.ctypes.data,
                         ctypes.cast(in_ptrs, ctypes.c_void_p), *common)
    results.append((bool(flag.value), total.value))
  return results


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_byte_ranges_match_the_fused_ranges(lib, data):
  """CheckByteRange (the kernel's shards) over a mixed list cut into byte
  ranges anywhere, cuts at and around one non-finite element's first byte:
  flag and sum are ScaleAndCheckByteRange's bit for bit, the flag is numpy's
  and the inputs are unchanged."""
  num = data.draw(st.integers(1, 8), label="tensors")
  dtypes = data.draw(st.lists(st.sampled_from(DTYPES), min_size=num, max_size=num))
  counts = data.draw(st.lists(st.integers(0, 300), min_size=num, max_size=num))
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
  ins = []
  for d, c in zip(dtypes, counts):
    x = aligned(c, d, int(rng.integers(0, 8)))
    x[:] = finite_bits(rng, d, c)
    ins.append(x)
  sizes = [np.dtype(STORAGE[d]).itemsize for d in dtypes]
  offsets = np.concatenate([[0], np.cumsum([c * s for c, s in zip(counts, sizes)])]).astype(int)
  cuts = set(data.draw(st.lists(st.integers(0, int(offsets[-1])), max_size=12), label="cuts"))
  bad = [t for t in range(num) if counts[t] > 0]
  if bad and data.draw(st.booleans(), label="non-finite"):
    t = data.draw(st.sampled_from(bad), label="tensor")
    i = data.draw(st.integers(0, counts[t] - 1), label="element")
    ins[t][i] = non_finite_bits(rng, dtypes[t], data.draw(st.sampled_from(NON_FINITE_KINDS)))
    first_byte = int(offsets[t]) + i * sizes[t]
    cuts |= {min(max(first_byte + d, 0), int(offsets[-1])) for d in (-1, 0, 1, 2)}
  cuts = sorted(cuts | {0, int(offsets[-1])})
  before = [x.copy() for x in ins]
  factor = tensor_factors(data.draw(st.sampled_from(TENSOR_SCALES), label="scale"))
  with_squares = data.draw(st.booleans(), label="sum_of_squares")
  (flag, total), (fused_flag, fused_total) = _call_lists(lib, dtypes, ins, cuts, factor,
                                                         with_squares)
  assert flag == fused_flag
  assert np.array(total).tobytes() == np.array(fused_total).tobytes(), (total, fused_total)
  for x, b in zip(ins, before):
    np.testing.assert_array_equal(x, b)
  expected = all(np.all(is_finite_bits(run(lib, "scalar", d, x, factor, False), d))
                 for d, x in zip(dtypes, ins))
  assert flag == expected
