"""PyTorch arms of `make gpu-bench` (the launcher arms are in launcher_driver.cu).

Times, on the gradient sets of launcher_driver's bench and in the same units
(bytes moved = read + write of every element, GB/s, fraction of a device-to-
device copy of the same bytes measured in the same run):
  * torch._foreach_mul_(tensors, inv_scale)
  * torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
Exits 0 with a message where torch with CUDA cannot be imported.
"""

import statistics
import sys

DTYPES = ("float32", "float16")


def gradient_sets():
  """The sets of launcher_driver.cu's GradientSets(), element counts per tensor."""
  many_small = [1024 + (i * 2654435761) % 4294967296 % 64513 for i in range(400)]
  bert_like = [3328 * 768, 512 * 768, 2 * 768]
  for _ in range(12):
    for _ in range(4):
      bert_like += [768 * 768, 768]
    bert_like += [768 * 3072, 3072, 3072 * 768, 768, 768, 768, 768, 768]
  few_large = [4 << 20] * 8
  return {"many_small": many_small, "bert_like": bert_like, "few_large": few_large}


def time_micros(torch, body, iterations):
  """Median over 5 runs of the mean time of one call, in microseconds."""
  for _ in range(3):
    body()
  start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
  samples = []
  for _ in range(5):
    start.record()
    for _ in range(iterations):
      body()
    stop.record()
    stop.synchronize()
    samples.append(1000.0 * start.elapsed_time(stop) / iterations)
  return statistics.median(samples)


def bench_set(torch, name, sizes, dtype_name):
  dtype = getattr(torch, dtype_name)
  tensors = [torch.ones(size, dtype=dtype, device="cuda") for size in sizes]
  elements = sum(sizes)
  flat = torch.ones(elements, dtype=dtype, device="cuda")
  flat_target = torch.empty_like(flat)
  inv_scale = torch.ones((), dtype=torch.float32, device="cuda")
  found_inf = torch.zeros((), dtype=torch.float32, device="cuda")
  bytes_moved = 2.0 * elements * flat.element_size()
  iterations = 20 if bytes_moved > (128 << 20) else 200

  copy_us = time_micros(torch, lambda: flat_target.copy_(flat), iterations)
  foreach_us = time_micros(torch, lambda: torch._foreach_mul_(tensors, 1.0), iterations)
  unscale_us = time_micros(
      torch,
      lambda: torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale),
      iterations)

  copy_gbps = bytes_moved / (copy_us * 1e3)
  print(f"  {name:<10} {dtype_name:<7} {len(sizes):4d} tensors {elements:11d} elements "
        f"{bytes_moved / 1e6:9.1f} MB moved")
  for arm, micros in (("torch copy_", copy_us), ("torch _foreach_mul_", foreach_us),
                      ("torch amp unscale_", unscale_us)):
    gbps = bytes_moved / (micros * 1e3)
    print(f"    {arm:<22} {micros:10.1f} us {gbps:8.1f} GB/s {100.0 * gbps / copy_gbps:7.1f}% "
          f"of copy")


def main():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    print(f"gpu_bench_torch: torch not importable ({error}); PyTorch arms skipped")
    return 0
  if not torch.cuda.is_available():
    print("gpu_bench_torch: torch has no usable CUDA device; PyTorch arms skipped")
    return 0
  print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)} "
        f"(CUDA {torch.version.cuda})")
  for name, sizes in gradient_sets().items():
    for dtype_name in DTYPES:
      bench_set(torch, name, sizes, dtype_name)
  return 0


if __name__ == "__main__":
  sys.exit(main())
