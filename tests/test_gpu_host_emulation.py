"""The GPU kernel's logic, checked on the host without a GPU (docs/GPU.md).

`make host-emulation-test` builds tf_ops/tests/host_emulation_test.cc with g++
alone and runs it: the kernel body of tf_ops/core/gpu/multi_tensor_scale_body.h is
executed for every (block, thread) of the launch the launcher makes, on every
dtype, sizes 0..2^20, legal misaligned offsets, in place and out of place, and
lists of 1 to 10,000 tensors, with every memory access counted and checked
against guard bytes; and its element math is compared with the CPU kernels'
under x86 flush-to-zero, also through the paired float16/bfloat16 path on
every bit pattern. The checked launch of FixedUnscaleGradsAndCheck runs
the same way: unscaled bits as the unchecked kernel's, the all-finite flag
exact with one Inf or NaN at heads, tails, pack edges and chunk boundaries, the
sum of squares within a stated tolerance of a double reference, every byte of
the device scratch accounted for, and the same bits whichever block finishes
last. The read-only check (FixedCheckGrads) runs the same way: no byte of any
tensor written, its flag the fused launch's and its sum the fused launch's bit
for bit wherever both cut the tensors alike. Needs no CUDA, so it runs in
CPU-only builds too.
"""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_kernel_body_on_every_block_and_thread_of_its_launches():
  result = subprocess.run(["make", "-s", "-C", ROOT, "host-emulation-test"], capture_output=True,
                          text=True, timeout=900)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-6000:]
  assert "host emulation of the GPU kernel: PASSED" in output, output[-6000:]

  element = re.search(r"element math:\s+(\d+) values x factors against (.*?), (\d+) differ",
                      output)
  assert element and int(element.group(1)) > 5_000_000 and element.group(3) == "0", output
  # The paired float16/bfloat16 path: every pattern, in every lane, for every
  # factor, against the CPU kernels; and which lanes it leaves to the
  # per-element path.
  paired = re.search(r"paired 16-bit packs:\s+(\d+) values x factors against (.*?), (\d+) differ",
                     output)
  assert paired and int(paired.group(1)) > 20_000_000 and paired.group(3) == "0", output
  single = re.search(r"single tensors:\s+(\d+) cases,\s+\d+ tensors,\s+(\d+) elements.*?"
                     r"(\d+) failed", output)
  assert single and int(single.group(1)) > 6000 and single.group(3) == "0", output
  assert int(single.group(2)) > 100_000_000, output
  lists = re.search(r"tensor lists:\s+(\d+) cases,\s+(\d+) tensors.*?(\d+) failed", output)
  assert lists and int(lists.group(2)) > 10_000 and lists.group(3) == "0", output
  # The fused check (FixedUnscaleGradsAndCheck's kernel): every single-tensor
  # case, the poison cases and the checked lists, with the flag exact and the
  # sum of squares against a double reference.
  fused = re.search(r"fused check:\s+(\d+) cases,\s+(\d+) tensors,\s+(\d+) elements.*?"
                    r"(\d+) failed", output)
  assert fused and int(fused.group(1)) > 6500 and fused.group(4) == "0", output
  assert int(fused.group(2)) > 50_000 and int(fused.group(3)) > 300_000_000, output
  flags = re.search(r"fused check flags:\s+(\d+) cases not all finite, (\d+) with the sum of "
                    r"squares, (\d+) reordered", output)
  assert flags and int(flags.group(1)) > 1000 and int(flags.group(2)) > 3000, output
  assert int(flags.group(3)) >= 30, output
  # The read-only check (FixedCheckGrads' kernel): the same cases, no write.
  read_only = re.search(r"read-only check:\s+(\d+) cases,\s+(\d+) tensors,\s+(\d+) elements.*?"
                        r"(\d+) failed", output)
  assert read_only and int(read_only.group(1)) > 5000 and read_only.group(4) == "0", output
  assert int(read_only.group(2)) > 50_000 and int(read_only.group(3)) > 100_000_000, output
  read_only_flags = re.search(r"read-only check flags:\s+(\d+) cases not all finite, (\d+) with "
                              r"the sum of squares, (\d+) reordered, (\d+) with the fused "
                              r"launch's sum bit for bit", output)
  assert read_only_flags and int(read_only_flags.group(1)) > 1000, output
  assert int(read_only_flags.group(2)) > 2000 and int(read_only_flags.group(3)) >= 30, output
  assert int(read_only_flags.group(4)) > 3000, output


def test_where_the_gpu_kernels_run_for_drivers_and_gpus_not_here():
  """NOTE [where the GPU kernels run]: tf_ops/tests/device_support_test.cc."""
  result = subprocess.run(["make", "-s", "-C", ROOT, "device-support-test"], capture_output=True,
                          text=True, timeout=300)
  output = result.stdout + result.stderr
  assert result.returncode == 0 and "device support: PASSED" in output, output[-4000:]
