"""The vectorised CPU paths give the scalar path's bits for every input.

The CPU core (tf_ops/core/cpu) is built alone, without TensorFlow, by
`make simd-test-lib` and driven through ctypes (dtype and path codes come from
the library's C API, tf_ops/core/c_api.h), so each path (scalar, AVX2+F16C,
AVX-512) is called explicitly whatever the CPU would pick. Every half and
bfloat16 bit pattern, random float/double bit patterns and the special values
are compared bit for bit (NaN payloads included) under both MXCSR states:
flush-to-zero/denormals-are-zero on, as in TensorFlow's threads, and off. Paths
this CPU lacks are skipped with a reason.
"""

import ctypes
import os
import subprocess

import numpy as np
import pytest

from conftest import assert_bitwise_equal
from conftest import reference_scale
from conftest import reference_unscale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_PATH = os.path.join(ROOT, "build", "tests", "libfls_simd_paths.so")

# Paths and dtypes by name; the library gives their codes (path_code, dtype_code).
SCALAR, AVX2, AVX512 = "scalar", "avx2", "avx512"
HALF, BFLOAT16, FLOAT, DOUBLE = "half", "bfloat16", "float", "double"
DTYPES = (HALF, BFLOAT16, FLOAT, DOUBLE)
STORAGE = {HALF: np.uint16, BFLOAT16: np.uint16, FLOAT: np.uint32, DOUBLE: np.uint64}

# Loss scales, including awkward non-powers of two, one whose float32 reciprocal
# is subnormal (flushed under DAZ) and 1 (factor exactly 1).
LOSS_SCALES = [1.0, 2.0, 3.0, 7.3, 1000.1, 1024.0, 12345.678, 65504.0, 2.0**24 + 2.0,
               3.0e38]


def load_shim():
  """Builds the C shim over the CPU core (tf_ops/tests/simd_paths_shim.cc) and
  returns it with every entry point's argument types declared."""
  subprocess.run(["make", "-s", "simd-test-lib"], cwd=ROOT, check=True)
  library = ctypes.CDLL(LIB_PATH)
  library.fls_cpu_path_supported.argtypes = [ctypes.c_int]
  library.fls_cpu_path_code.argtypes = [ctypes.c_char_p]
  library.fls_dtype_code.argtypes = [ctypes.c_char_p]
  library.fls_scale.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                ctypes.c_double, ctypes.c_int]
  library.fls_scale_list.argtypes = [
      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
      ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_double]
  # The fused check (tests/test_fused_check_cpu.py).
  library.fls_scale_and_check.argtypes = [
      ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
      ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_int, ctypes.c_int,
      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)]
  library.fls_scale_and_check_list.argtypes = [
      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
      ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_double, ctypes.c_int,
      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)]
  # The check without store (tests/test_check_grads_cpu.py).
  library.fls_check.argtypes = [
      ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
      ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_int, ctypes.c_int,
      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)]
  library.fls_check_list.argtypes = [
      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
      ctypes.c_int, ctypes.c_float, ctypes.c_double, ctypes.c_int,
      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double)]
  return library


@pytest.fixture(scope="module")
def lib():
  return load_shim()


def factors(loss_scale, reciprocal=True):
  """(float32 factor, float64 factor) as the kernels get them."""
  s32 = np.float32(loss_scale)
  if reciprocal:
    return np.float32(1) / s32, 1.0 / np.float64(s32)
  return s32, np.float64(s32)


def path_code(lib, name):
  code = lib.fls_cpu_path_code(name.encode())
  assert code >= 0, f"the library knows no CPU path {name!r}"
  return code


def dtype_code(lib, name):
  code = lib.fls_dtype_code(name.encode())
  assert code >= 0, f"the library knows no dtype {name!r}"
  return code


def supported(lib, path):
  return bool(lib.fls_cpu_path_supported(path_code(lib, path)))


def run(lib, path, dtype, bits, factor, ftz_daz, first=0, last=None, out=None):
  """Scales the bit patterns `bits` with `path`; returns the output bits."""
  bits = np.ascontiguousarray(bits)
  last = bits.size if last is None else last
  out = np.zeros_like(bits) if out is None else out
  lib.fls_scale(path_code(lib, path), dtype_code(lib, dtype), bits.ctypes.data, out.ctypes.data, bits.size, first, last,
                float(factor[0]), float(factor[1]), int(ftz_daz))
  return out


def simd_paths(lib):
  return [p for p in (AVX2, AVX512) if supported(lib, p)]


@pytest.fixture(params=[AVX2, AVX512])
def path(request, lib):
  if not supported(lib, request.param):
    pytest.skip(f"this CPU or build has no {request.param} path")
  return request.param


def assert_same_bits(actual, expected, what):
  mismatch = np.flatnonzero(actual != expected)
  assert mismatch.size == 0, (
      f"{what}: {mismatch.size} elements differ, first input index {mismatch[0]}: "
      f"got {actual[mismatch[0]]:#x}, scalar gives {expected[mismatch[0]]:#x}")


def special_bits(dtype):
  """Zeros, infinities, NaNs (quiet and signalling, both signs, several payloads),
  subnormals, the largest and smallest normals, as bit patterns."""
  if dtype == FLOAT:
    base = [0x0, 0x1, 0x7fffff, 0x800000, 0x7f7fffff, 0x7f800000, 0x7f800001, 0x7fa00000,
            0x7fc00000, 0x7fc00001, 0x7fffffff, 0x3f800000, 0x38000000, 0x33800000, 0x477fe000,
            0x477ff000]
    sign = 0x80000000
  else:
    base = [0x0, 0x1, 0xfffffffffffff, 0x10000000000000, 0x7fefffffffffffff,
            0x7ff0000000000000, 0x7ff0000000000001, 0x7ff4000000000000, 0x7ff8000000000000,
            0x7ff8000000000001, 0x7fffffffffffffff, 0x3ff0000000000000, 0x0000000000000abc]
    sign = 0x8000000000000000
  return np.array(base + [b | sign for b in base], STORAGE[dtype])


@pytest.mark.parametrize("dtype", [HALF, BFLOAT16])
@pytest.mark.parametrize("ftz_daz", [True, False], ids=["ftz_daz", "ieee"])
@pytest.mark.parametrize("reciprocal", [True, False], ids=["unscale", "scale"])
def test_every_16_bit_pattern(lib, path, dtype, ftz_daz, reciprocal):
  patterns = np.arange(1 << 16, dtype=np.uint16)
  for loss_scale in LOSS_SCALES:
    factor = factors(loss_scale, reciprocal)
    if not reciprocal and not np.isfinite(loss_scale):
      continue
    expected = run(lib, SCALAR, dtype, patterns, factor, ftz_daz)
    actual = run(lib, path, dtype, patterns, factor, ftz_daz)
    assert_same_bits(actual, expected, f"{path} scale {loss_scale}")


@pytest.mark.parametrize("dtype", [FLOAT, DOUBLE])
@pytest.mark.parametrize("ftz_daz", [True, False], ids=["ftz_daz", "ieee"])
def test_random_and_special_wide_patterns(lib, path, dtype, ftz_daz):
  rng = np.random.default_rng(5)
  info = np.iinfo(STORAGE[dtype])
  patterns = np.concatenate([
      special_bits(dtype),
      rng.integers(0, info.max, size=200_003, dtype=STORAGE[dtype], endpoint=True),
  ])
  for loss_scale in LOSS_SCALES:
    for reciprocal in (True, False):
      factor = factors(loss_scale, reciprocal)
      expected = run(lib, SCALAR, dtype, patterns, factor, ftz_daz)
      actual = run(lib, path, dtype, patterns, factor, ftz_daz)
      assert_same_bits(actual, expected, f"{path} scale {loss_scale}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_path_matches_numpy_oracle(lib, dtype):
  """Under TF's MXCSR state the scalar path (the reference for the SIMD paths)
  agrees with the numpy oracles used by the op tests."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  np_dtype = {HALF: np.float16, BFLOAT16: ml_dtypes.bfloat16, FLOAT: np.float32,
              DOUBLE: np.float64}[dtype]
  if dtype in (HALF, BFLOAT16):
    patterns = np.arange(1 << 16, dtype=np.uint16)
  else:
    patterns = np.concatenate([special_bits(dtype), np.random.default_rng(6).integers(
        0, np.iinfo(STORAGE[dtype]).max, size=50_000, dtype=STORAGE[dtype])])
  values = patterns.view(np_dtype)
  with np.errstate(all="ignore"):
    for loss_scale in (3.0, 1000.1):
      out = run(lib, SCALAR, dtype, patterns, factors(loss_scale, True), True)
      assert_bitwise_equal(out.view(np_dtype), reference_unscale(values, loss_scale))
      out = run(lib, SCALAR, dtype, patterns, factors(loss_scale, False), True)
      assert_bitwise_equal(out.view(np_dtype), reference_scale(values, loss_scale))


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_lengths_misaligned_starts_and_in_place(lib, path, dtype):
  """Every start offset up to two vectors and every length up to a few vectors
  (loop remainders, masked tails): exactly [first, last) is written, in place too."""
  rng = np.random.default_rng(7)
  storage = STORAGE[dtype]
  size = 300
  src = rng.integers(0, np.iinfo(storage).max, size=size, dtype=storage)
  sentinel = np.array(0x5a5a5a5a5a5a5a5a).astype(storage)
  factor = factors(1000.1)
  for first in range(0, 34):
    for last in list(range(first, first + 70)) + [size - 1, size]:
      expected = np.full(size, sentinel, storage)
      run(lib, SCALAR, dtype, src, factor, True, first, last, out=expected)
      actual = np.full(size, sentinel, storage)
      run(lib, path, dtype, src, factor, True, first, last, out=actual)
      assert_same_bits(actual, expected, f"[{first}, {last})")
      in_place = src.copy()
      run(lib, path, dtype, in_place, factor, True, first, last, out=in_place)
      expected_in_place = src.copy()
      expected_in_place[first:last] = expected[first:last]
      assert_same_bits(in_place, expected_in_place, f"in place [{first}, {last})")


def test_byte_range_sharding_of_a_mixed_list(lib):
  """ScaleByteRange with cut points anywhere in the byte space (inside elements,
  at odd offsets) writes every element once, with the active path's bits equal
  to the scalar path's."""
  rng = np.random.default_rng(8)
  dtypes = [DTYPES[int(d)] for d in rng.integers(0, 4, size=41)]
  counts = [int(c) for c in rng.integers(0, 500, size=41)]
  ins = [rng.integers(0, np.iinfo(STORAGE[d]).max, size=c, dtype=STORAGE[d])
         for d, c in zip(dtypes, counts)]
  factor = factors(7.3)
  expected = [run(lib, SCALAR, d, x, factor, False) for d, x in zip(dtypes, ins)]
  dtype_array = np.array([dtype_code(lib, d) for d in dtypes], np.int32)
  total = sum(c * np.dtype(STORAGE[d]).itemsize for d, c in zip(dtypes, counts))
  for trial in range(20):
    cuts = np.unique(np.concatenate([[0, total], rng.integers(0, total, size=trial * 3)]))
    outs = [np.zeros_like(x) for x in ins]
    in_ptrs = (ctypes.c_void_p * len(ins))(*[x.ctypes.data for x in ins])
    out_ptrs = (ctypes.c_void_p * len(outs))(*[o.ctypes.data for o in outs])
    counts_array = np.array(counts, np.int64)
    cuts_array = cuts.astype(np.int64)
    lib.fls_scale_list(len(ins), dtype_array.ctypes.data, ctypes.cast(in_ptrs, ctypes.c_void_p),
                       ctypes.cast(out_ptrs, ctypes.c_void_p), counts_array.ctypes.data,
                       cuts_array.ctypes.data, len(cuts_array), float(factor[0]),
                       float(factor[1]))
    for i, (actual, want) in enumerate(zip(outs, expected)):
      assert_same_bits(actual, want, f"tensor {i} with cuts {cuts.tolist()}")


def test_best_path_is_active(lib):
  """Without FIXED_LOSS_SCALE_CPU_PATH the core runs the best path it has."""
  if "FIXED_LOSS_SCALE_CPU_PATH" in os.environ:
    pytest.skip("FIXED_LOSS_SCALE_CPU_PATH is set")
  best = max(path_code(lib, p) for p in [SCALAR] + simd_paths(lib))
  assert lib.fls_active_cpu_path() == best
