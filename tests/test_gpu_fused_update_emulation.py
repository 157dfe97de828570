"""The fused optimizer update's GPU kernel, checked on the host without a GPU.

`make fused-update-emulation-test` builds tf_ops/tests/fused_update_emulation_test.cc
with g++ alone, linked with the CPU kernels' core, and runs it: first each op
of the kernel's element math (IEEE arithmetic with x86 flush-to-zero and
denormals-are-zero in software, NOTE [fused update on the GPU]) against this
CPU's own ops under FTZ/DAZ, on values around FLT_MIN, subnormals, Inf and NaN;
then the kernel body of tf_ops/core/gpu/fused_update_body.h for every (block,
thread) of the launches LaunchFusedUpdate makes (each packed element first
through plain IEEE ops, screened, and through the flushing math only where the
screen marks it: NOTE [plain IEEE first]; the screen itself on ordinary and
marked element groups), over random lists of every
rule (SGD, momentum, nesterov, Adam, amsgrad; weight decay and the folded
scalar factors per tensor), odd sizes, chunk edges, empty tensors, misaligned
arrays, every table kind, non-power-of-two loss scales and a false all-finite
flag, against the CPU kernels on every CPU path: bit for bit on weights and
slots (a NaN from two NaN operands may carry either payload, as the CPU paths
themselves differ there), every array byte read and written exactly as often
as it must be, none when the flag is false. Needs no CUDA.
"""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_fused_update_kernel_body_matches_the_cpu_kernels_bit_for_bit():
  result = subprocess.run(["make", "-s", "-C", ROOT, "fused-update-emulation-test"],
                          capture_output=True, text=True, timeout=900)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-6000:]
  assert "host emulation of the fused update kernel: PASSED" in output, output[-6000:]
  element = re.search(r"fused element math: (\d+) pairs x 6 ops against x86 FTZ/DAZ, (\d+) differ",
                      output)
  assert element and int(element.group(1)) >= 400_000 and element.group(2) == "0", output
  screen = re.search(r"screen of the first pass: (\d+) element groups .*?, (\d+) wrong", output)
  assert screen and int(screen.group(1)) >= 500_000 and screen.group(2) == "0", output
  launches = re.search(r"fused update launches: (\d+) cases, (\d+) tensors, (\d+) elements "
                       r"\((\d+) packed, (\d+) element by element\) against the CPU kernels "
                       r"\(([^)]*)\), (\d+) failed", output)
  assert launches, output
  cases, tensors, elements, packed, unpacked = (int(launches.group(i)) for i in range(1, 6))
  assert cases >= 300 and tensors > 10_000 and elements > 10_000_000, output
  assert packed > 1000 and unpacked > 1000, output
  assert "scalar" in launches.group(6), output
  assert launches.group(7) == "0", output
