"""The GPU kernels are built into the op library and registered (docs/GPU.md).

With WITH_CUDA=1 in config.mk (configure.sh found a CUDA toolchain: clang-19
with the CUDA 12 wheels, or nvcc), `make` builds
tf_ops/core/gpu/multi_tensor_scale.cu into the op library next to the CPU
kernels. On any machine, GPU or not, these tests check that
  * TensorFlow's kernel registry lists a GPU kernel of both ops for half,
    bfloat16, float and double once the library is loaded (no GPU here: the
    kernels are registered, NOTE [where the GPU kernels run]);
  * the library carries a cubin for every configured architecture and PTX no
    newer than the configured ISA (8.5 on the clang route: what CUDA 12.5+
    drivers JIT);
  * the library uses TensorFlow's CUDA runtime (NOTE [one CUDA runtime] in the
    Makefile): no cuda* symbol defined in it, every one bound at load to
    libtensorflow_framework.so.2;
  * where the device code cannot run (an injected old driver or GPU), the GPU
    kernels are not registered and the library says why once;
  * the standalone launcher driver builds without TensorFlow and, with no GPU,
    exits with the "no device" status.
Where a GPU is present, the driver also runs every kernel case on it; elsewhere
that test is skipped with the reason.
Everything here is skipped, with the reason, where configure.sh found no toolchain.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

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


def _dynamic_symbols(path, *flags):
  out = subprocess.run(["nm", "-D", *flags, path], capture_output=True, text=True,
                       check=True).stdout
  return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def _is_cuda_runtime_symbol(name):
  return re.match(r"(__)?cuda[A-Z]", name) is not None


def test_library_uses_tensorflows_cuda_runtime():
  """NOTE [one CUDA runtime]: every cuda* call goes to TensorFlow's runtime."""
  dynamic = subprocess.run(["readelf", "-d", "-W", LIBRARY], capture_output=True, text=True,
                           check=True).stdout
  needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", dynamic)
  assert not [lib for lib in needed if "cuda" in lib], needed
  assert "libtensorflow_framework.so.2" in needed, needed
  defined = {name for name in _dynamic_symbols(LIBRARY, "--defined-only")
             if _is_cuda_runtime_symbol(name)}
  assert not defined, f"a CUDA runtime is linked into the library: {sorted(defined)[:10]}"
  undefined = {name for name in _dynamic_symbols(LIBRARY, "--undefined-only")
               if _is_cuda_runtime_symbol(name)}
  assert {"__cudaRegisterFatBinary", "__cudaRegisterFunction", "cudaLaunchKernel",
          "cudaMemcpyAsync"} <= undefined, \
      f"cuda* calls resolved inside the library (a CUDA runtime linked in?): left {sorted(undefined)}"
  framework = os.path.join(CONFIG["TF_LIBDIR"], CONFIG["TF_LIBNAME"])
  missing = undefined - _dynamic_symbols(framework, "--defined-only")
  assert not missing, f"not exported by {framework}: {sorted(missing)}"


def test_cuda_runtime_symbols_bind_to_tensorflow_at_load(tmp_path):
  """Where the dynamic linker binds them (LD_BIND_NOW: all of them, at load)."""
  framework = os.path.join(CONFIG["TF_LIBDIR"], CONFIG["TF_LIBNAME"])
  log = tmp_path / "bindings"
  env = dict(os.environ, LD_BIND_NOW="1", LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(log),
             FIXED_LOSS_SCALE_TEST_GPUS="none")
  subprocess.run([sys.executable, "-c",
                  "import ctypes, sys\n"
                  "ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)\n"
                  "ctypes.CDLL(sys.argv[2])\n", framework, LIBRARY],
                 env=env, check=True, capture_output=True)
  bindings = {}
  for path in tmp_path.glob("bindings*"):
    with open(path, errors="replace") as f:
      for line in f:
        match = re.search(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `([^']+)'",
                          line)
        if match and match.group(1).endswith(os.path.basename(LIBRARY)) and \
            _is_cuda_runtime_symbol(match.group(3)):
          bindings[match.group(3)] = match.group(2)
  assert "__cudaRegisterFatBinary" in bindings and "cudaLaunchKernel" in bindings, \
      f"no load-time binding of the CUDA runtime calls (resolved inside the library?): {bindings}"
  elsewhere = {name: target for name, target in bindings.items()
               if os.path.basename(target) != CONFIG["TF_LIBNAME"]}
  assert not elsewhere, f"bound outside TensorFlow's runtime: {elsewhere}"


def _fatbin_entries(path):
  """(kind, sm, version) of every entry of each fatbinary of the .nv_fatbin
  section: one list per fatbinary (one per .cu file of tf_ops/core/gpu/).

  kind is "elf" or "ptx"; version is (major, minor): the PTX ISA of a PTX
  entry, the ELF ABI of a cubin. Reads the fatbinary container cuobjdump reads
  (absent here): a header (magic 0xBA55ED50, u16 version, u16 header size, u64
  payload size) followed by entries (u16 kind 1=PTX 2=ELF, u16, u32 header
  size, u64 padded size, u32, u32, u16 minor, u16 major, u32 sm version, ...).
  NVIDIA does not document the layout; it has been stable across CUDA 10 to 13.
  """
  sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True,
                            check=True).stdout
  line = next(line for line in sections.splitlines() if ".nv_fatbin" in line)
  fields = line.split("]", 1)[1].split()
  offset, size = int(fields[3], 16), int(fields[4], 16)
  with open(path, "rb") as f:
    f.seek(offset)
    data = f.read(size)
  fatbins, position = [], 0
  while position + 16 <= len(data):
    magic, _, header_size, payload_size = struct.unpack_from("<IHHQ", data, position)
    if magic != 0xBA55ED50:
      break
    entries = []
    fatbins.append(entries)
    entry, end = position + header_size, position + header_size + payload_size
    while entry < end:
      kind, _, entry_header_size, padded_size = struct.unpack_from("<HHIQ", data, entry)
      minor, major, sm = struct.unpack_from("<HHI", data, entry + 24)
      entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm, (major, minor)))
      entry += entry_header_size + padded_size
    position = end
  return fatbins


def _version(text):
  return tuple(int(part) for part in text.split(".")[:2])


def test_device_code_covers_every_configured_architecture():
  archs = CONFIG["CUDA_ARCHS"].split()
  ptx_arch = CONFIG["CUDA_PTX_ARCH"].replace("compute_", "sm_")
  fatbins = _fatbin_entries(LIBRARY)
  assert len(fatbins) == 2, fatbins  # multi_tensor_scale.cu, fused_update.cu
  for entries in fatbins:
    assert sorted(sm for kind, sm, _ in entries if kind == "elf") == \
        sorted(int(arch[3:]) for arch in archs), entries
    ptx = [(sm, version) for kind, sm, version in entries if kind == "ptx"]
    assert [sm for sm, _ in ptx] == [int(ptx_arch[3:])], entries
    assert ptx[0][1] <= _version(CONFIG["CUDA_PTX_ISA"]), entries


def test_clang_route_reaches_every_tensorflow_gpu():
  """cubins for sm_60..sm_90 and PTX a CUDA 12 driver JITs."""
  if CONFIG.get("CUDA_TOOLCHAIN") != "clang":
    pytest.skip(f"CUDA_TOOLCHAIN={CONFIG.get('CUDA_TOOLCHAIN')}: a user's nvcc sets its own reach")
  for entries in _fatbin_entries(LIBRARY):
    cubins = {sm for kind, sm, _ in entries if kind == "elf"}
    assert {60, 70, 75, 80, 86, 89, 90} <= cubins, entries
    assert all(version < (9, 0) for kind, _, version in entries if kind == "ptx"), entries
  assert CONFIG["CUDA_MIN_DRIVER"] == "12010" and CONFIG["CUDA_PTX_MIN_DRIVER"] == "12050"


def test_build_info_records_the_device_code():
  with open(os.path.join(ROOT, "python", "fixed_loss_scale", "_build_info.json")) as f:
    info = json.load(f)
  assert info["cuda_toolchain"] == CONFIG["CUDA_TOOLCHAIN"]
  assert info["cuda_archs"].split() == CONFIG["CUDA_ARCHS"].split()
  assert info["cuda_min_driver"] == int(CONFIG["CUDA_MIN_DRIVER"])
  assert info["cuda_ptx_min_driver"] == int(CONFIG["CUDA_PTX_MIN_DRIVER"])


# ---- NOTE [where the GPU kernels run]: the load-time decision, injected ----
_REGISTRY_PROBE = """
import sys, tensorflow as tf
from tensorflow.python.framework import kernels
ops = tf.load_op_library(sys.argv[1])
gpu = [k for op in ("FixedScaleLoss", "FixedUnscaleGrads")
       for k in kernels.get_registered_kernels_for_op(op).kernel if k.device_type == "GPU"]
grads = ops.fixed_unscale_grads([tf.constant([2.0, 4.0]), tf.constant([8.0], tf.float16)],
                                loss_scale=2.0)
print("GPU_KERNELS", len(gpu), "RESULT", grads[0].numpy().tolist(), grads[1].numpy().tolist())
"""


def _load_with_gpus(injected):
  env = dict(os.environ, FIXED_LOSS_SCALE_TEST_GPUS=injected, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _REGISTRY_PROBE, LIBRARY], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  messages = [line for line in result.stderr.splitlines() if line.startswith("fixed_loss_scale:")]
  registered = int(re.search(r"GPU_KERNELS (\d+)", result.stdout).group(1))
  assert "RESULT [1.0, 2.0] [4.0]" in result.stdout, result.stdout
  return registered, messages


def test_old_driver_leaves_the_ops_on_the_cpu_with_one_message():
  registered, messages = _load_with_gpus("11080:80")
  assert registered == 0
  assert len(messages) == 1, messages
  minimum = int(CONFIG["CUDA_MIN_DRIVER"])
  assert "CUDA 11.8" in messages[0], messages
  assert f"CUDA {minimum // 1000}.{minimum % 1000 // 10} or newer" in messages[0], messages
  assert "run on the CPU" in messages[0], messages


def test_unsupported_gpu_leaves_the_ops_on_the_cpu_with_one_message():
  registered, messages = _load_with_gpus(f"{CONFIG['CUDA_PTX_MIN_DRIVER']}:90,35")
  assert registered == 0
  assert len(messages) == 1 and "sm_35" in messages[0], messages


def test_supported_gpus_get_the_gpu_kernels_silently():
  lowest = min(int(arch[3:]) for arch in CONFIG["CUDA_ARCHS"].split())
  registered, messages = _load_with_gpus(f"{CONFIG['CUDA_MIN_DRIVER']}:{lowest},90")
  assert registered == 2 and messages == []


@pytest.mark.slow
def test_launcher_driver_builds_without_tensorflow():
  _make("launcher-driver")
  needed = subprocess.run(["readelf", "-d", "-W", DRIVER], capture_output=True, text=True,
                          check=True).stdout
  assert "tensorflow" not in needed
  result = subprocess.run([DRIVER], capture_output=True, text=True)
  assert result.returncode == 2 and "usage" in result.stderr
  if _gpu_absent_reason():
    for mode in ("check", "tf-stream", "edges", "huge"):
      result = subprocess.run([DRIVER, mode], capture_output=True, text=True, timeout=120)
      assert result.returncode == DRIVER_NO_DEVICE, (mode, result.stdout + result.stderr)
      assert "no CUDA device" in result.stdout


@pytest.mark.slow
def test_gpu_check_script_builds_both_variants_and_skips_without_a_gpu():
  """tools/gpu_check.sh, as the GPU machine runs it: no config.mk, no TensorFlow."""
  if CONFIG.get("CUDA_TOOLCHAIN") != "clang":
    pytest.skip("the CUDA 12 bundle is made by the clang route")
  _make("gpu-check-bundle")
  if shutil.which("nvcc") is None and not os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
    pytest.skip("no nvcc here to build the script's nvcc variant")
  env = dict(os.environ, PATH="/usr/local/cuda/bin:" + os.environ["PATH"])
  result = subprocess.run([os.path.join(ROOT, "tools", "gpu_check.sh")], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
  output = result.stdout + result.stderr
  if _gpu_absent_reason():
    assert result.returncode == DRIVER_NO_DEVICE, output[-4000:]
    assert "built nvcc cuda12; no GPU here" in output, output[-4000:]
  else:
    assert result.returncode == 0, output[-8000:]


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["element_probe.cu", "update_probe.cu"])
def test_sass_probes_build(probe, tmp_path):
  """The probe kernels tools/gpu_check.sh counts instructions of (informational
  there, so a probe that no longer builds would only be reported)."""
  nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
  if not os.access(nvcc, os.X_OK):
    pytest.skip("no nvcc here")
  result = subprocess.run([nvcc, "-std=c++17", "-O3", "-I.", "-cubin", "-arch=sm_90",
                           os.path.join("tf_ops", "tests", probe), "-o",
                           str(tmp_path / "probe.cubin")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "probe.cubin").stat().st_size > 0


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
