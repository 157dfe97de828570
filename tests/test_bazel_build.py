"""`make bazel` builds the op library with Bazel (through bazelisk, see
docs/BAZEL.md), and that library loads and computes what numpy computes; it
also runs the TF-free core's C++ tests (//tf_ops/tests:all), which pass.

With WITH_CUDA=1 in config.mk (configure.sh found a CUDA toolchain), Bazel
builds the GPU variant, as `make` does: GPU kernels of both ops registered,
device code in the library (byte for byte the Make build's, both made by the
same tools/build_cuda_object.sh or nvcc flags), and the same linkage: no CUDA
runtime inside, every cuda* symbol left to TensorFlow's. Without it, only CPU
kernels are there.

Skipped, with the reason tools/bazel_build.sh gives, only where Bazel cannot be
installed here (not root and absent, or apt/npm failing); any other failure of
the build fails the test.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAZEL_LIB = os.path.join(ROOT, "build", "bazel", "_fixed_loss_scale_ops.so")
MAKE_LIB = os.path.join(ROOT, "python", "fixed_loss_scale", "_fixed_loss_scale_ops.so")
# tools/bazel_build.sh starts this line, and exits 3, when Bazel cannot be had.
CANNOT_INSTALL = "bazel_build: cannot get Bazel here:"
# A cold build is about a minute on 2 cores; installing Bazel with apt adds a few.
BUILD_TIMEOUT_S = 780


def _venv_python():
  venv_python = os.path.join(ROOT, ".venv", "bin", "python")
  return venv_python if os.path.exists(venv_python) else sys.executable


def _with_cuda():
  """WITH_CUDA from config.mk, which `make bazel` has written by then."""
  with open(os.path.join(ROOT, "config.mk")) as f:
    return any(line.split(":=")[0].strip() == "WITH_CUDA" and line.split(":=")[1].strip() == "1"
               for line in f if ":=" in line)


def _readelf(*args):
  return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                        check=True).stdout


def _fatbin(path):
  """The bytes of the library's .nv_fatbin section (device code), or None."""
  for line in _readelf("-S", path).splitlines():
    if " .nv_fatbin " in line:
      fields = line.split("]", 1)[1].split()
      offset, size = int(fields[3], 16), int(fields[4], 16)
      with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
  return None


def _run_make_bazel():
  # FLS_BAZEL_SHUTDOWN: the Bazel server must not outlive the test run.
  env = dict(os.environ, FLS_BAZEL_SHUTDOWN="1")
  process = subprocess.Popen(["make", "-C", ROOT, "bazel"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
  try:
    output, _ = process.communicate(timeout=BUILD_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)  # make, the script and the Bazel client
    output, _ = process.communicate()
    pytest.fail(f"make bazel took over {BUILD_TIMEOUT_S}s:\n{output[-6000:]}")
  return process.returncode, output


# The output of the module's one `make bazel`.
_BUILD_OUTPUT = []


@pytest.fixture(scope="module")
def bazel_lib():
  returncode, output = _run_make_bazel()
  _BUILD_OUTPUT.append(output)
  if returncode != 0:
    reasons = [line for line in output.splitlines() if line.startswith(CANNOT_INSTALL)]
    if reasons:
      pytest.skip(reasons[-1])
    pytest.fail(f"make bazel failed ({returncode}):\n{output[-8000:]}")
  assert os.path.isfile(BAZEL_LIB), output[-4000:]
  return BAZEL_LIB


# Runs in a fresh .venv Python: the suite's own process already loaded the
# Make-built library, and TensorFlow refuses to register the same ops twice.
_CHECK = r"""
import json, sys
import numpy as np
import tensorflow as tf

lib = tf.load_op_library(sys.argv[1])
scale = 1024.0
factor = np.float32(1) / np.float32(scale)
rng = np.random.default_rng(7)
# Normal values whose results stay normal in float16: no flush-to-zero questions.
g32 = (rng.standard_normal(1000) * np.exp2(rng.integers(-2, 12, 1000))).astype(np.float32)
g32[:3] = [0.0, -0.0, np.inf]
g16 = g32.astype(np.float16)

def same_bits(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  uint = {2: np.uint16, 4: np.uint32}[expected.dtype.itemsize]
  return actual.dtype == expected.dtype and bool(np.all(actual.view(uint) == expected.view(uint)))

eager32, eager16 = lib.fixed_unscale_grads([g32, g16], loss_scale=scale)
graph = tf.function(lambda a, b: lib.fixed_unscale_grads([a, b], loss_scale=scale))
graph32, graph16 = graph(tf.constant(g32), tf.constant(g16))
expect32 = g32 * factor
expect16 = (g16.astype(np.float32) * factor).astype(np.float16)  # float32, rounded once
loss = lib.fixed_scale_loss(tf.constant(0.375, tf.float16), loss_scale=scale)
from tensorflow.python.framework import kernels
registered = {}
for op in ("FixedScaleLoss", "FixedUnscaleGrads"):
  for kernel in kernels.get_registered_kernels_for_op(op).kernel:
    allowed = kernel.constraint[0].allowed_values.list.type
    registered[op + ":" + kernel.device_type] = sorted(tf.dtypes.as_dtype(t).name for t in allowed)
print(json.dumps({
    "kernels": registered,
    "ops": sorted(name for name in dir(lib) if name[0].isupper()),
    "unscale_float32": same_bits(eager32, expect32) and same_bits(graph32, expect32),
    "unscale_float16": same_bits(eager16, expect16) and same_bits(graph16, expect16),
    "scale_loss": [str(loss.dtype.name), float(loss.numpy())],
}))
"""


@pytest.mark.slow
def test_bazel_built_library_loads_and_matches_numpy(bazel_lib):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([_venv_python(), "-c", _CHECK, bazel_lib], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-6000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert {"FixedScaleLoss", "FixedUnscaleGrads"} <= set(report["ops"]), report
  assert report["unscale_float32"], report
  assert report["unscale_float16"], report
  assert report["scale_loss"] == ["float16", 384.0], report
  dtypes = ["bfloat16", "float16", "float32", "float64"]
  devices = ["CPU", "GPU"] if _with_cuda() else ["CPU"]
  assert report["kernels"] == {f"{op}:{device}": dtypes
                               for op in ("FixedScaleLoss", "FixedUnscaleGrads")
                               for device in devices}, report


def _cuda_runtime_symbols(path, which):
  out = subprocess.run(["nm", "-D", which, path], capture_output=True, text=True,
                       check=True).stdout
  return {line.split()[-1].split("@")[0] for line in out.splitlines()
          if re.search(r" (__)?cuda[A-Z]\w*(@\S*)?$", line)}


@pytest.mark.slow
def test_bazel_gpu_variant_uses_tensorflows_cuda_runtime(bazel_lib):
  """NOTE [one CUDA runtime] (Makefile): the same linkage as the Make build."""
  if not _with_cuda():
    assert _fatbin(bazel_lib) is None
    pytest.skip("CPU-only build: configure.sh found no CUDA toolchain (WITH_CUDA=0 in config.mk)")
  assert _fatbin(bazel_lib), "no .nv_fatbin section: no device code"
  needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", _readelf("-d", bazel_lib))
  assert not [lib for lib in needed if "cuda" in lib], needed
  assert not _cuda_runtime_symbols(bazel_lib, "--defined-only"), \
      "a CUDA runtime is linked into the Bazel-built library"
  undefined = _cuda_runtime_symbols(bazel_lib, "--undefined-only")
  assert "cudaLaunchKernel" in undefined and "__cudaRegisterFatBinary" in undefined, undefined
  if os.path.exists(MAKE_LIB):
    assert undefined == _cuda_runtime_symbols(MAKE_LIB, "--undefined-only")


@pytest.mark.slow
def test_bazel_device_code_is_the_make_builds(bazel_lib):
  if not _with_cuda():
    pytest.skip("CPU-only build: configure.sh found no nvcc (WITH_CUDA=0 in config.mk)")
  device_sources = glob.glob(os.path.join(ROOT, "tf_ops", "core", "gpu", "*")) + \
      glob.glob(os.path.join(ROOT, "tf_ops", "core", "*.h"))
  newest_source = max(os.path.getmtime(path) for path in device_sources)
  if not os.path.exists(MAKE_LIB) or os.path.getmtime(MAKE_LIB) < newest_source:
    pytest.skip("the Make-built library is missing or older than the CUDA sources: run make")
  # Same source, same tools and flags (tf_ops/BUILD runs the Makefile's
  # command): the same device code, byte for byte.
  assert _fatbin(bazel_lib) == _fatbin(MAKE_LIB)


@pytest.mark.slow
def test_bazel_runs_the_core_cpp_tests(bazel_lib):
  """The host emulations (the unscale kernels', the fused update's), the
  GPU-support decision and the sanitizer test (one per CPU path) ran as Bazel
  cc_test targets, built from tf_ops/core/ without
  TensorFlow, and passed."""
  output = _BUILD_OUTPUT[-1]
  targets = ["host_emulation_test", "fused_update_emulation_test", "device_support_test"] + [
      f"cpu_core_sanitizer_test_{path}" for path in ("scalar", "avx2", "avx512")]
  for target in targets:
    assert re.search(rf"//tf_ops/tests:{target}\s+(\(cached\) )?PASSED", output), output[-4000:]
  assert re.search(rf"Executed \d+ out of {len(targets)} tests: {len(targets)} tests pass",
                   output), output[-4000:]
