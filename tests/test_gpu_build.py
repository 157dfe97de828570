"""The GPU kernels are built into the op library and registered (docs/GPU.md).

With WITH_CUDA=1 in config.mk (configure.sh found nvcc), `make` compiles
tf_ops/core/gpu/multi_tensor_scale.cu with nvcc and links it, with the static CUDA
runtime, into the op library next to the CPU kernels. On any machine, GPU or
not, these tests check that
  * TensorFlow's kernel registry lists a GPU kernel of both ops for half,
    bfloat16, float and double once the library is loaded;
  * the library carries device code, needs neither libcudart nor libcuda to
    load, and exports no CUDA runtime symbol (its static runtime stays private);
  * the standalone launcher driver builds with nvcc alone.
Where a GPU is present, the driver also runs every kernel case on it
(`make gpu-check`); elsewhere that test is skipped with the reason.
Everything here is skipped, with the reason, where configure.sh found no nvcc.
"""

import os
import re
import shutil
import struct
import subprocess

import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "python", "fixed_loss_scale", "_fixed_loss_scale_ops.so")
DRIVER = os.path.join(ROOT, "build", "tests", "launcher_driver")
OPS = ("FixedScaleLoss", "FixedUnscaleGrads")
DTYPES = {tf.float16, tf.bfloat16, tf.float32, tf.float64}
# launcher_driver's exit status when the CUDA runtime finds no device.
DRIVER_NO_DEVICE = 3


def _config():
  values = {}
  with open(os.path.join(ROOT, "config.mk")) as f:
    for line in f:
      name, sep, value = line.partition(":=")
      if sep:
        values[name.strip()] = value.strip()
  return values


CONFIG = _config() if os.path.exists(os.path.join(ROOT, "config.mk")) else {}

pytestmark = pytest.mark.skipif(
    CONFIG.get("WITH_CUDA") != "1",
    reason="CPU-only build: configure.sh found no nvcc (WITH_CUDA=0 in config.mk)")


def _make(*targets, timeout=600):
  result = subprocess.run(["make", "-s", "-C", ROOT, *targets], capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
  return result.stdout


def _cuda_tool(name):
  """A CUDA toolkit tool beside the configured nvcc, or on PATH."""
  candidate = os.path.join(CONFIG.get("CUDA_ROOT", ""), "bin", name)
  return candidate if os.access(candidate, os.X_OK) else shutil.which(name)


def _gpu_absent_reason():
  """Why no GPU can run the driver here, or None when one can."""
  smi = shutil.which("nvidia-smi")
  if smi is None:
    return "no GPU: nvidia-smi not found"
  result = subprocess.run([smi, "-L"], capture_output=True, text=True)
  if result.returncode != 0 or "GPU" not in result.stdout:
    return "no GPU: nvidia-smi -L reports none (" + (result.stdout + result.stderr).strip() + ")"
  return None


def test_both_ops_have_gpu_kernels_for_every_dtype():
  tf.load_op_library(LIBRARY)
  for op in OPS:
    registered = kernels.get_registered_kernels_for_op(op).kernel
    gpu = [kernel for kernel in registered if kernel.device_type == "GPU"]
    assert len(gpu) == 1, f"{op}: GPU kernels {gpu}"
    constraints = {constraint.name: constraint for constraint in gpu[0].constraint}
    allowed = {tf.dtypes.as_dtype(t) for t in constraints["T"].allowed_values.list.type}
    assert allowed == DTYPES, f"{op}: GPU kernel allows {allowed}"


def test_library_carries_device_code_and_keeps_the_cuda_runtime_private():
  sections = subprocess.run(["readelf", "-S", "-W", LIBRARY], capture_output=True, text=True,
                            check=True).stdout
  assert ".nv_fatbin" in sections
  dynamic = subprocess.run(["readelf", "-d", "-W", LIBRARY], capture_output=True, text=True,
                           check=True).stdout
  needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", dynamic)
  assert not [lib for lib in needed if "cuda" in lib], needed
  exported = subprocess.run(["nm", "-D", "--defined-only", LIBRARY], capture_output=True,
                            text=True, check=True).stdout
  assert not re.search(r" (cuda|__cuda)\w*$", exported, re.MULTILINE), \
      "the static CUDA runtime's symbols leak out of the library"


def _fatbin_entries(path):
  """(kind, sm) of every entry of the .nv_fatbin section: kind "elf" or "ptx".

  Reads the fatbinary container cuobjdump reads (for when it is not installed):
  a header (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size)
  followed by entries (u16 kind 1=PTX 2=ELF, u16, u32 header size, u64 padded
  size, ..., u32 sm version at byte 28). NVIDIA does not document the layout;
  it has been stable across CUDA 10 to 13.
  """
  sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True,
                            check=True).stdout
  line = next(line for line in sections.splitlines() if ".nv_fatbin" in line)
  fields = line.split("]", 1)[1].split()
  offset, size = int(fields[3], 16), int(fields[4], 16)
  with open(path, "rb") as f:
    f.seek(offset)
    data = f.read(size)
  entries, position = [], 0
  while position + 16 <= len(data):
    magic, _, header_size, payload_size = struct.unpack_from("<IHHQ", data, position)
    if magic != 0xBA55ED50:
      break
    entry, end = position + header_size, position + header_size + payload_size
    while entry < end:
      kind, _, entry_header_size, padded_size = struct.unpack_from("<HHIQ", data, entry)
      sm = struct.unpack_from("<I", data, entry + 28)[0]
      entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
      entry += entry_header_size + padded_size
    position = end
  return entries


def test_device_code_covers_every_configured_architecture():
  archs = CONFIG["CUDA_ARCHS"].split()
  ptx_arch = CONFIG["CUDA_PTX_ARCH"].replace("compute_", "sm_")
  cuobjdump = _cuda_tool("cuobjdump")
  if cuobjdump is not None:
    elves = subprocess.run([cuobjdump, "--list-elf", LIBRARY], capture_output=True, text=True,
                           check=True).stdout
    for arch in archs:
      assert f".{arch}." in elves, f"no {arch} code in\n{elves}"
    ptx = subprocess.run([cuobjdump, "--list-ptx", LIBRARY], capture_output=True, text=True,
                         check=True).stdout
    assert ptx_arch in ptx, ptx
    return
  entries = _fatbin_entries(LIBRARY)
  assert sorted(sm for kind, sm in entries if kind == "elf") == \
      sorted(int(arch[3:]) for arch in archs), entries
  assert [sm for kind, sm in entries if kind == "ptx"] == [int(ptx_arch[3:])], entries


@pytest.mark.slow
def test_launcher_driver_builds_with_nvcc_alone():
  _make("launcher-driver")
  needed = subprocess.run(["readelf", "-d", "-W", DRIVER], capture_output=True, text=True,
                          check=True).stdout
  assert "tensorflow" not in needed
  result = subprocess.run([DRIVER], capture_output=True, text=True)
  assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.slow
@pytest.mark.gpu
def test_every_kernel_case_on_the_gpu():
  reason = _gpu_absent_reason()
  if reason:
    pytest.skip(reason)
  _make("launcher-driver")
  result = subprocess.run([DRIVER, "check"], capture_output=True, text=True, timeout=1800)
  output = result.stdout + result.stderr
  if result.returncode == DRIVER_NO_DEVICE:
    pytest.skip("the CUDA runtime sees no device: " + output.strip())
  assert result.returncode == 0, output[-6000:]
  assert "GPU check: PASSED" in output
