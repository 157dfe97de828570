"""The CPU core under AddressSanitizer and UndefinedBehaviorSanitizer.

`make sanitizer-test` builds tf_ops/tests/cpu_core_sanitizer_test.cc with
multi_tensor_scale_cpu.cc only (no TensorFlow) using
`-fsanitize=address,undefined -fno-sanitize-recover=all`, and runs it once per
CPU path (scalar, AVX2, AVX-512). The C++ test checks every result against its
own scalar reference, in IEEE and in FTZ/DAZ mode, with odd sizes, vector-
misaligned pointers, 0 and 1 elements, 10,000 tensors, guard bytes and random
partitions of the byte space; any sanitizer report aborts it.
"""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "build", "tests", "cpu_core_sanitizer_test")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="no C++ compiler to build the sanitizer test")
def test_cpu_core_under_address_and_undefined_behavior_sanitizers():
  result = subprocess.run(["make", "-s", "sanitizer-test"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-6000:]
  assert "Sanitizer" not in output, output[-6000:]
  # One full run per CPU path, each in both floating-point modes, all passing.
  runs = re.findall(r"(\d+) checks, (\d+) failures\nPASSED", output)
  assert len(runs) == 3, output[-6000:]
  assert all(int(checks) > 200_000 and int(failures) == 0 for checks, failures in runs), runs
  for path in ("scalar", "avx2", "avx512"):
    assert f"FIXED_LOSS_SCALE_CPU_PATH={path}" in output
  # The requested path is the one that ran, unless this CPU lacks it (then the
  # best one it has runs instead): on an AVX2 machine the vector loops ran too.
  active = re.findall(r"active CPU path: (\w+)", output)
  assert len(active) == 3 and active[0] == "scalar", active
  flags = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      flags = f.read()
  if re.search(r"\bavx2\b", flags) and re.search(r"\bf16c\b", flags) and \
      re.search(r"\bfma\b", flags):
    assert active[1] == "avx2", active
  if re.search(r"\bavx512bw\b", flags) and re.search(r"\bavx512vl\b", flags):
    assert active[2] == "avx512", active
  assert output.count("mode: FTZ|DAZ") == 3

  # The binary really is instrumented by both sanitizers.
  symbols = subprocess.run(["nm", BINARY], capture_output=True, text=True, check=True).stdout
  assert "__asan_init" in symbols or "__asan_report" in symbols
  assert "__ubsan_handle" in symbols
