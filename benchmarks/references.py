"""The reference arms outside TensorFlow: the numpy memory roofline and torch.

`NumpyRoofline` moves the same bytes with numpy (an in-place multiply and a
copy, split over threads): what the memory system of these cores gives, the
"roof" every scenario's GB/s is read against. `torch_arm` is PyTorch's
`_foreach_mul_` over the same tensors, where torch is importable (it is not a
dependency).
"""

import concurrent.futures
import os

import numpy as np

from benchmarks.common import RECIPROCAL
from benchmarks.gradient_sets import DTYPE_BYTES, elements


class NumpyRoofline:
  """The same bytes as float32 numpy arrays, split over two threads: an in-place
  multiply and a copy, i.e. what the memory system of these cores gives."""

  def __init__(self, shapes, dtypes, threads):
    sizes = [elements(s) * DTYPE_BYTES[d] // 4 for s, d in zip(shapes, dtypes)]
    rng = np.random.default_rng(2)
    self.arrays = [rng.standard_normal(max(1, n), dtype=np.float32) for n in sizes]
    self.copies = [np.empty_like(a) for a in self.arrays]
    self.threads = threads
    total = sum(a.size for a in self.arrays)
    # Split the concatenated element space in `threads` contiguous parts.
    self.parts = [[] for _ in range(threads)]
    cut = [total * k // threads for k in range(threads + 1)]
    offset = 0
    for a, c in zip(self.arrays, self.copies):
      for k in range(threads):
        lo, hi = max(cut[k], offset) - offset, min(cut[k + 1], offset + a.size) - offset
        if hi > lo:
          self.parts[k].append((a[lo:hi], c[lo:hi]))
      offset += a.size
    self.pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None
    self.factor = np.float32(RECIPROCAL)

  def _run(self, work):
    if self.pool is None:
      work(self.parts[0])
    else:
      list(self.pool.map(work, self.parts))

  def multiply(self):
    factor = self.factor

    def work(part):
      for a, _ in part:
        np.multiply(a, factor, out=a)

    self._run(work)

  def copy(self):

    def work(part):
      for a, c in part:
        np.copyto(c, a)

    self._run(work)

  def close(self):
    if self.pool is not None:
      self.pool.shutdown()


def torch_arm(shapes, dtypes):
  """A callable doing torch._foreach_mul_ over the same tensors, or (None, reason)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, "torch is not importable"
  torch.set_num_threads(os.cpu_count() or 1)
  torch_dtypes = {"float32": torch.float32, "float16": torch.float16,
                  "bfloat16": torch.bfloat16}
  generator = torch.Generator().manual_seed(3)
  tensors = [torch.randn(elements(s), generator=generator).to(torch_dtypes[d])
             for s, d in zip(shapes, dtypes)]
  # _foreach_mul_ takes one dtype per list: group by dtype.
  groups = {}
  for t in tensors:
    groups.setdefault(t.dtype, []).append(t)

  def run():
    for group in groups.values():
      torch._foreach_mul_(group, RECIPROCAL)  # pylint: disable=protected-access

  return run, (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
