"""PyTorch arms of `make gpu-bench` (the launcher arms are in the CUDA launcher driver).

    python benchmarks/gpu_torch.py        # or: python -m benchmarks.gpu_torch

Times, on every gradient set of benchmarks/gradient_sets.txt (its `full`
variant, the tensors the launcher driver's bench reads from the same file), in
float32, float16 and bfloat16 as that bench does, and in the same units (bytes
moved = read + write of every element, GB/s, fraction of a device-to-device
copy of the same bytes measured in the same run):
  * torch._foreach_mul_(tensors, inv_scale)
  * torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
and, on bert_like and few_large in float32, PyTorch's fused optimizer steps
against the launcher driver's fused Adam arm:
  * torch._fused_adam_: reads param, grad, exp_avg, exp_avg_sq and writes
    param, exp_avg, exp_avg_sq, 28 bytes per element (ours: the same arrays)
  * torch._fused_sgd_ with momentum: reads param, grad, momentum buffer and
    writes param and buffer, 20 bytes per element
each also with the AMP arguments (grad_scale, found_inf) that make it unscale
and skip as ours does; it then also writes the unscaled gradients back (32 and
24 bytes per element). Each arm against a device-to-device copy of the same
bytes (half read, half written), in the same run.
Needs PyTorch only (no TensorFlow, no numpy): the sets come through the plain-
Python reader benchmarks.gradient_sets. Exits 0 with a message where torch
with CUDA cannot be imported.
"""

import os
import statistics
import sys

if not __package__:  # run as a script: the repository root holds the package
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import gradient_sets  # noqa: E402  pylint: disable=wrong-import-position

DTYPES = ("float32", "float16", "bfloat16")


def element_counts():
  """{set name: [elements of each tensor]}: the full variant of every set."""
  return {name: [gradient_sets.elements(shape) for shape in variants["full"]]
          for name, variants in gradient_sets.read().items()}


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
  try:
    unscale_us = time_micros(
        torch,
        lambda: torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale),
        iterations)
  except RuntimeError as error:  # a dtype this PyTorch's amp kernel does not take
    print(f"  {name} {dtype_name}: torch amp unscale_ refused: {error}")
    unscale_us = None

  copy_gbps = bytes_moved / (copy_us * 1e3)
  print(f"  {name:<10} {dtype_name:<7} {len(sizes):4d} tensors {elements:11d} elements "
        f"{bytes_moved / 1e6:9.1f} MB moved")
  for arm, micros in (("torch copy_", copy_us), ("torch _foreach_mul_", foreach_us),
                      ("torch amp unscale_", unscale_us)):
    if micros is None:
      continue
    gbps = bytes_moved / (micros * 1e3)
    print(f"    {arm:<22} {micros:10.1f} us {gbps:8.1f} GB/s {100.0 * gbps / copy_gbps:7.1f}% "
          f"of copy")


# The sets and the bytes per element of the fused optimizer arms.
OPTIMIZER_SETS = ("bert_like", "few_large")


def bench_fused_optimizers(torch, name, sizes):
  """torch._fused_adam_ and torch._fused_sgd_ (where this PyTorch has them),
  without and with grad_scale and found_inf."""
  def fresh(value):
    return [torch.full((size,), value, dtype=torch.float32, device="cuda") for size in sizes]
  params, grads = fresh(1.0), fresh(1.0)
  amp = {"grad_scale": torch.ones((), dtype=torch.float32, device="cuda"),
         "found_inf": torch.zeros((), dtype=torch.float32, device="cuda")}
  elements = sum(sizes)
  arms = []  # (label, bytes per element, keyword arguments -> None)
  if hasattr(torch, "_fused_adam_"):
    exp_avgs, exp_avg_sqs = fresh(0.0), fresh(0.0)
    steps = [torch.ones((), dtype=torch.float32, device="cuda") for _ in sizes]
    def adam(**extra):
      torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=1e-3, beta1=0.9,
                         beta2=0.999, weight_decay=0.0, eps=1e-7, amsgrad=False,
                         maximize=False, **extra)
    arms += [("torch _fused_adam_", 28, adam), ("torch _fused_adam_ + AMP", 32, adam)]
  if hasattr(torch, "_fused_sgd_"):
    buffers = fresh(0.0)
    def sgd(**extra):
      torch._fused_sgd_(params, grads, buffers, weight_decay=0.0, momentum=0.9, lr=1e-3,
                        dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
                        **extra)
    arms += [("torch _fused_sgd_ (momentum)", 20, sgd),
             ("torch _fused_sgd_ (momentum) + AMP", 24, sgd)]
  if not arms:
    print(f"  {name}: this PyTorch has neither torch._fused_adam_ nor torch._fused_sgd_")
    return
  for arm, bytes_per_element, step in arms:
    extra = amp if arm.endswith("AMP") else {}
    bytes_moved = float(elements * bytes_per_element)
    half = torch.ones(elements * bytes_per_element // 8, dtype=torch.float32, device="cuda")
    target = torch.empty_like(half)
    iterations = 20 if bytes_moved > (128 << 20) else 200
    copy_us = time_micros(torch, lambda: target.copy_(half), iterations)  # pylint: disable=cell-var-from-loop
    try:
      micros = time_micros(torch, lambda: step(**extra), iterations)  # pylint: disable=cell-var-from-loop
    except (RuntimeError, TypeError) as error:  # a signature this PyTorch does not have
      print(f"  {name}: {arm} refused: {error}")
      continue
    print(f"  {name:<10} float32 {len(sizes):4d} tensors {elements:11d} elements "
          f"{bytes_moved / 1e6:9.1f} MB moved ({bytes_per_element} B/element)")
    copy_gbps = bytes_moved / (copy_us * 1e3)
    for label, value in (("copy of the same bytes", copy_us), (arm, micros)):
      gbps = bytes_moved / (value * 1e3)
      print(f"    {label:<36} {value:10.1f} us {gbps:8.1f} GB/s "
            f"{100.0 * gbps / copy_gbps:7.1f}% of copy")
    del half, target


def main():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    print(f"gpu_torch: torch not importable ({error}); PyTorch arms skipped")
    return 0
  if not torch.cuda.is_available():
    print("gpu_torch: torch has no usable CUDA device; PyTorch arms skipped")
    return 0
  print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)} "
        f"(CUDA {torch.version.cuda})")
  counts = element_counts()
  for name, sizes in counts.items():
    for dtype_name in DTYPES:
      bench_set(torch, name, sizes, dtype_name)
  print("PyTorch's fused optimizer steps, float32 (+ AMP: with grad_scale and found_inf); "
        "% of copy = against a device-to-device copy of the same bytes")
  for name in OPTIMIZER_SETS:
    if name in counts:
      bench_fused_optimizers(torch, name, counts[name])
  return 0


if __name__ == "__main__":
  sys.exit(main())
