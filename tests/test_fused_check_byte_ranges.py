"""The CPU core's checked list entry (ScaleAndCheckByteRange, the kernel's
shards) over byte ranges cut anywhere, through the shim of `make simd-test-lib`.

References: ScaleByteRange's outputs (the scalar unchecked loop), numpy's
finiteness and numpy's float64 sum of squares (small integers: exact).
"""

import ctypes

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from test_fused_check_cpu import NON_FINITE_KINDS
from test_fused_check_cpu import NP_DTYPE
from test_fused_check_cpu import non_finite_bits
from test_fused_check_cpu import squares_reference
from test_simd_paths import DTYPES
from test_simd_paths import SCALAR
from test_simd_paths import STORAGE
from test_simd_paths import dtype_code
from test_simd_paths import factors
from test_simd_paths import load_shim
from test_simd_paths import run


@pytest.fixture(scope="module")
def lib():
  return load_shim()


def _call_list(lib, dtypes, ins, outs, cuts, factor, with_squares):
  dtype_array = np.array([dtype_code(lib, d) for d in dtypes], np.int32)
  counts = np.array([x.size for x in ins], np.int64)
  in_ptrs = (ctypes.c_void_p * len(ins))(*[x.ctypes.data for x in ins])
  out_ptrs = (ctypes.c_void_p * len(outs))(*[o.ctypes.data for o in outs])
  cuts_array = np.asarray(cuts, np.int64)
  flag = ctypes.c_int(-1)
  total = ctypes.c_double(0.0)
  lib.fls_scale_and_check_list(len(ins), dtype_array.ctypes.data,
                               ctypes.cast(in_ptrs, ctypes.c_void_p),
                               ctypes.cast(out_ptrs, ctypes.c_void_p), counts.ctypes.data,
                               cuts_array.ctypes.data, len(cuts_array), float(factor[0]),
                               float(factor[1]), int(with_squares), ctypes.byref(flag),
                               ctypes.byref(total))
  return bool(flag.value), total.value


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_byte_ranges_flag_and_sum(lib, data):
  """ScaleAndCheckByteRange with the active path over a mixed list cut into
  byte ranges anywhere (inside elements too), with cuts placed at and around
  the first byte of one non-finite element: the flag flips, the outputs are
  ScaleByteRange's, and the ranges' sums (small integers: exact) add up to
  numpy's, so no element is skipped or counted twice at a range edge."""
  num = data.draw(st.integers(1, 8), label="tensors")
  dtypes = data.draw(st.lists(st.sampled_from(DTYPES), min_size=num, max_size=num))
  counts = data.draw(st.lists(st.integers(0, 150), min_size=num, max_size=num))
  seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
  rng = np.random.default_rng(seed)
  ins = [((rng.integers(-5, 6, size=c)).astype(NP_DTYPE[d]).view(STORAGE[d]))
         for d, c in zip(dtypes, counts)]
  sizes = [np.dtype(STORAGE[d]).itemsize for d in dtypes]
  offsets = np.concatenate([[0], np.cumsum([c * s for c, s in zip(counts, sizes)])]).astype(int)
  total_bytes = int(offsets[-1])
  bad = None
  candidates = [t for t in range(num) if counts[t] > 0]
  if candidates and data.draw(st.booleans(), label="non-finite"):
    t = data.draw(st.sampled_from(candidates), label="tensor")
    i = data.draw(st.integers(0, counts[t] - 1), label="element")
    kind = data.draw(st.sampled_from(NON_FINITE_KINDS), label="kind")
    ins[t][i] = non_finite_bits(rng, dtypes[t], kind)
    bad = (t, i)
  cuts = set(data.draw(st.lists(st.integers(0, total_bytes), max_size=12), label="cuts"))
  if bad is not None:
    first_byte = int(offsets[bad[0]]) + bad[1] * sizes[bad[0]]
    deltas = data.draw(st.lists(st.integers(-3, 3), max_size=3), label="edge cuts")
    cuts |= {min(max(first_byte + d, 0), total_bytes) for d in deltas}
  cuts = sorted(cuts | {0, total_bytes})
  factor = factors(1.0)
  with_squares = data.draw(st.booleans(), label="sum_of_squares")
  outs = [np.zeros_like(x) for x in ins]
  flag, total = _call_list(lib, dtypes, ins, outs, cuts, factor, with_squares)
  expected_outs = [run(lib, SCALAR, d, x, factor, False) for d, x in zip(dtypes, ins)]
  for t, (actual, expected) in enumerate(zip(outs, expected_outs)):
    np.testing.assert_array_equal(actual, expected, err_msg=f"tensor {t}, cuts {cuts}")
  assert flag == (bad is None), f"non-finite at {bad}, cuts {cuts}: flag {flag}"
  if with_squares:
    if bad is None:
      expected_sum = sum(squares_reference(o, d) for o, d in zip(outs, dtypes))
      assert total == expected_sum, f"cuts {cuts}: {total} != {expected_sum}"
    else:
      assert not np.isfinite(total)
  else:
    assert total == 0.0
