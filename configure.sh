#!/usr/bin/env bash
# Detects the Python, TensorFlow and (optionally) CUDA toolkit to build against
# and writes them, once, in the two forms the builds read:
#   config.mk            variables for the Makefile
#   .configure.bazelrc   --action_env/--repo_env lines for Bazel (imported by .bazelrc)
#   python/fixed_loss_scale/_build_info.json   what the library was built for,
#                        checked by the loader at import time
# Non-interactive. For the GPU kernels it sets up the clang route's toolchain
# (tools/cuda12_toolchain.sh: clang-19 with apt-get when root, NVIDIA's CUDA 12
# wheels into .cuda12/) unless told to use nvcc; with
# FLS_INSTALL_CUDA_TOOLCHAIN=0 (set by the pip build) it installs nothing and
# uses only a toolchain that is already there.
#
# Environment: PYTHON (default: .venv/bin/python, else python3), CUDA_HOME or
# NVCC (use this nvcc instead of clang), FLS_CUDA_TOOLCHAIN=clang|nvcc,
# CLANG (a clang++ for CUDA), FLS_WITH_CUDA=0 to force a CPU-only build,
# FLS_INSTALL_CUDA_TOOLCHAIN=0 to install nothing.
set -euo pipefail
cd "$(dirname "$0")"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

tf_log=$(mktemp)
trap 'rm -f "$tf_log"' EXIT
# One Python call gives everything TensorFlow knows about itself.
tf_vars=$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" - 2>"$tf_log" <<'PY'
import os, shlex, sys
import tensorflow as tf
cflags = tf.sysconfig.get_compile_flags()
lflags = tf.sysconfig.get_link_flags()
include = next(f[2:] for f in cflags if f.startswith("-I"))
libdir = next(f[2:] for f in lflags if f.startswith("-L"))
libname = next(f[3:] for f in lflags if f.startswith("-l:"))
abi = next((f.split("=")[1] for f in cflags if "_GLIBCXX_USE_CXX11_ABI" in f), "0")
defines = " ".join(f for f in cflags if f.startswith("-D"))
print(f"TF_VERSION={tf.__version__}")
print(f"TF_INCLUDE={include}")
print(f"TF_LIBDIR={libdir}")
print(f"TF_LIBNAME={libname}")
print(f"TF_CXX11_ABI={abi}")
print(f"TF_DEFINES={shlex.quote(defines)}")
print(f"PYTHON_BIN={os.path.abspath(sys.executable)}")
print(f"PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}")
PY
) || {
  # No Python or no TensorFlow is one line that says what to install (pip shows
  # it as the build's error); any other failure shows Python's messages first.
  if ! command -v "$PYTHON" >/dev/null; then
    echo "configure: no Python at '$PYTHON': set PYTHON=/path/to/python3, one with TensorFlow" >&2
  elif grep -q "No module named 'tensorflow'" "$tf_log"; then
    echo "configure: no TensorFlow for $PYTHON: install it there (pip install tensorflow), or set PYTHON to a Python that has it" >&2
  else
    cat "$tf_log" >&2
    echo "configure: '$PYTHON' cannot import tensorflow (its error is above)" >&2
  fi
  exit 1
}
eval "$tf_vars"

# ---- CUDA (docs/GPU.md, "Building") ----
# Two routes to the GPU kernels, both linked to the CUDA runtime TensorFlow
# loads (NOTE [one CUDA runtime] in the Makefile):
#   clang  (default) Debian's clang-19 and the CUDA 12.9 wheels' ptxas, set up
#          by tools/cuda12_toolchain.sh (NOTE [clang device code]): cubins for
#          every GPU TensorFlow 2.21 supports, from sm_60 on, and PTX ISA 8.5.
#   nvcc   a user's own nvcc 12.1+ (NVCC=..., CUDA_HOME=..., or
#          FLS_CUDA_TOOLCHAIN=nvcc), or the fallback when the clang route cannot
#          be set up.
# FLS_WITH_CUDA=0 builds CPU-only.
find_nvcc() {
  local candidate
  for candidate in "${NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" \
                   /usr/local/cuda/bin/nvcc; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; return 0; fi
  done
}
CUDA_TOOLCHAIN=""; NVCC_BIN=""; CLANG=""; CUDA12_PATH=""; CUDA_ROOT=""; CUDA_VERSION=""
if [[ "${FLS_WITH_CUDA:-1}" != 0 ]]; then
  want=${FLS_CUDA_TOOLCHAIN:-auto}
  [[ "$want" == auto && ( -n "${NVCC:-}" || -n "${CUDA_HOME:-}" ) ]] && want=nvcc
  if [[ "$want" != nvcc ]]; then
    if toolchain=$(PYTHON=$PYTHON tools/cuda12_toolchain.sh); then
      eval "$toolchain"
      CUDA_TOOLCHAIN=clang
      CUDA_VERSION=12.9
    else
      echo "configure: the clang route (tools/cuda12_toolchain.sh) is unavailable; trying nvcc" >&2
    fi
  fi
  if [[ -z "$CUDA_TOOLCHAIN" ]]; then
    NVCC_BIN=$(find_nvcc)
    if [[ -n "$NVCC_BIN" ]]; then
      # nvcc may be a wrapper script on PATH: its own -dryrun names the real toolkit.
      CUDA_ROOT=$(cd "${TMPDIR:-/tmp}" && "$NVCC_BIN" -dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)
      [[ -n "$CUDA_ROOT" ]] || CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC_BIN")")")
      CUDA_ROOT=$(cd "$CUDA_ROOT" && pwd -P)
      CUDA_VERSION=$("$NVCC_BIN" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
      CUDA_TOOLCHAIN=nvcc
    fi
  fi
fi
WITH_CUDA=$([[ -n "$CUDA_TOOLCHAIN" ]] && echo 1 || echo 0)

# The device code and the drivers that run it, as numbers cudaDriverGetVersion
# gives (12010 = CUDA 12.1). CUDA_MIN_DRIVER runs the cubins (32 KB kernel
# parameters need 12.1: NOTE [kernel parameter size]; CUDA 13 code needs a
# CUDA 13 driver); CUDA_PTX_MIN_DRIVER JITs the PTX, for GPUs newer than every
# cubin. The library registers its GPU kernels only where these hold
# (NOTE [where the GPU kernels run], tf_ops/core/gpu/device_support.h).
CUDA_ARCHS=""; CUDA_PTX_ARCH=""; CUDA_PTX_ISA=""; CUDA_MIN_DRIVER=0; CUDA_PTX_MIN_DRIVER=0
cuda_version_number() { local v=$1; echo $(( ${v%%.*} * 1000 + $(echo "$v" | cut -d. -f2) * 10 )); }
case "$CUDA_TOOLCHAIN" in
  clang)
    # clang 19 makes PTX up to sm_90; ptxas makes the Blackwell cubins from the
    # compute_90 PTX (tools/build_cuda_object.sh).
    CUDA_ARCHS="sm_60 sm_70 sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_120"
    CUDA_PTX_ARCH=compute_90; CUDA_PTX_ISA=8.5
    CUDA_MIN_DRIVER=12010; CUDA_PTX_MIN_DRIVER=12050 ;;
  nvcc)
    major=${CUDA_VERSION%%.*}
    if (( $(cuda_version_number "$CUDA_VERSION") < 12010 )); then
      echo "configure: nvcc $CUDA_VERSION at $NVCC_BIN is older than CUDA 12.1 (32 KB kernel parameters); building CPU-only" >&2
      CUDA_TOOLCHAIN=""; WITH_CUDA=0; NVCC_BIN=""; CUDA_ROOT=""; CUDA_VERSION=""
    else
      if (( major >= 13 )); then
        # CUDA 13 dropped sm_50..sm_70.
        CUDA_ARCHS="sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_120"
      else
        # sm_60 is left to the clang route: nvcc does not allow the per-arch
        # kernel instantiation its 4 KB parameter limit needs.
        CUDA_ARCHS="sm_70 sm_75 sm_80 sm_86 sm_89 sm_90"
      fi
      CUDA_PTX_ARCH=compute_90
      # The PTX ISA this nvcc writes (CUDA 12.Y: 8.x, 13.0: 9.0), read from its output.
      CUDA_PTX_ISA=$(cd "${TMPDIR:-/tmp}" && echo '__global__ void k() {}' |
          "$NVCC_BIN" -x cu -arch=$CUDA_PTX_ARCH -ptx -o - - 2>/dev/null | sed -n 's/^\.version //p')
      CUDA_MIN_DRIVER=$(( major >= 13 ? major * 1000 : 12010 ))
      CUDA_PTX_MIN_DRIVER=$(cuda_version_number "$CUDA_VERSION")
    fi ;;
esac
CUBIN_ARCH_LIST=$(echo $CUDA_ARCHS | sed 's/sm_//g; s/ /,/g')

# The flag sets, defined here only: the Makefile and Bazel (tf_ops/BUILD) both
# use them as they are. Paths (-I, TensorFlow's include dir and defines) are
# added by each build, as each knows where its sources and headers live.
CXX_FLAGS="-std=c++17 -O3 -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-deprecated-declarations -fvisibility-inlines-hidden"
# The TF-free C++ tests of the core (tf_ops/tests/): the host emulation of the
# GPU kernel body, and the CPU core under AddressSanitizer and UBSan.
TEST_CXX_FLAGS="-std=c++17 -O2 -Wall -Wextra"
SANITIZER_FLAGS="-std=c++17 -O1 -g -Wall -Wextra -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# What the TensorFlow adapter and the kernel registrations need on top to see
# GPU devices and streams.
GPU_DEFINES="-DGOOGLE_CUDA=1 -DEIGEN_USE_GPU"
# What the device code needs, for the load-time check of where the GPU kernels
# can run (tf_ops/tf/kernels/fixed_loss_scale_kernels.cc).
GPU_DEFINES+=" -DFLS_CUDA_CUBIN_ARCHS=$CUBIN_ARCH_LIST -DFLS_CUDA_PTX_ARCH=${CUDA_PTX_ARCH#compute_}"
GPU_DEFINES+=" -DFLS_CUDA_MIN_DRIVER=$CUDA_MIN_DRIVER -DFLS_CUDA_PTX_MIN_DRIVER=$CUDA_PTX_MIN_DRIVER"
# The clang route's compiler flags (tools/build_cuda_object.sh); as for nvcc,
# no fast math, so the results stay bit-identical to the CPU kernels.
CLANG_CUDA_FLAGS="-std=c++17 -O3 -fPIC -Wall -Wextra -Wno-unknown-cuda-version"
# Real code for each arch plus PTX for the newest; no --use_fast_math, so the
# results stay bit-identical to the CPU kernels.
NVCC_FLAGS="-std=c++17 -O3"
for arch in $CUDA_ARCHS; do NVCC_FLAGS+=" -gencode arch=compute_${arch#sm_},code=$arch"; done
NVCC_FLAGS+=" -gencode arch=$CUDA_PTX_ARCH,code=$CUDA_PTX_ARCH -Xcompiler -fPIC,-Wall,-Wextra"
TF_CUDA_INCLUDE="$TF_INCLUDE/third_party/gpus/cuda/include"

cat > config.mk <<MK
# Written by configure.sh; do not edit (rerun ./configure.sh instead).
PYTHON_BIN := $PYTHON_BIN
PYTHON_VERSION := $PYTHON_VERSION
TF_VERSION := $TF_VERSION
TF_INCLUDE := $TF_INCLUDE
TF_LIBDIR := $TF_LIBDIR
TF_LIBNAME := $TF_LIBNAME
TF_CXX11_ABI := $TF_CXX11_ABI
TF_DEFINES := $TF_DEFINES
WITH_CUDA := $WITH_CUDA
NVCC := $NVCC_BIN
CUDA_ROOT := $CUDA_ROOT
CUDA_VERSION := $CUDA_VERSION
CUDA_TOOLCHAIN := $CUDA_TOOLCHAIN
CLANG := $CLANG
CUDA12_PATH := $CUDA12_PATH
CLANG_CUDA_FLAGS := $CLANG_CUDA_FLAGS
CUDA_PTX_ISA := $CUDA_PTX_ISA
CUDA_MIN_DRIVER := $CUDA_MIN_DRIVER
CUDA_PTX_MIN_DRIVER := $CUDA_PTX_MIN_DRIVER
CUDA_ARCHS := $CUDA_ARCHS
CUDA_PTX_ARCH := $CUDA_PTX_ARCH
TF_CUDA_INCLUDE := $TF_CUDA_INCLUDE
CXX_FLAGS := $CXX_FLAGS
TEST_CXX_FLAGS := $TEST_CXX_FLAGS
SANITIZER_FLAGS := $SANITIZER_FLAGS
GPU_DEFINES := $GPU_DEFINES
NVCC_FLAGS := $NVCC_FLAGS
MK

# Bazel reads the same values under its own names (tf_ops/BUILD,
# third_party/tf); the flag sets and defines hold spaces and are quoted.
bazel_names=(TF_HEADER_DIR:TF_INCLUDE TF_SHARED_LIBRARY_DIR:TF_LIBDIR
  TF_SHARED_LIBRARY_NAME:TF_LIBNAME TF_CXX11_ABI_FLAG:TF_CXX11_ABI TF_DEFINES:TF_DEFINES
  FLS_WITH_CUDA:WITH_CUDA FLS_NVCC:NVCC_BIN FLS_CUDA_TOOLCHAIN:CUDA_TOOLCHAIN FLS_CLANG:CLANG
  FLS_CUDA12_PATH:CUDA12_PATH FLS_CLANG_CUDA_FLAGS:CLANG_CUDA_FLAGS FLS_PYTHON:PYTHON_BIN
  FLS_CUDA_ARCHS:CUDA_ARCHS FLS_CUDA_PTX_ARCH:CUDA_PTX_ARCH FLS_TF_CUDA_INCLUDE:TF_CUDA_INCLUDE
  FLS_CXX_FLAGS:CXX_FLAGS FLS_TEST_CXX_FLAGS:TEST_CXX_FLAGS FLS_SANITIZER_FLAGS:SANITIZER_FLAGS
  FLS_GPU_DEFINES:GPU_DEFINES FLS_NVCC_FLAGS:NVCC_FLAGS)
quoted=" TF_DEFINES CLANG_CUDA_FLAGS CUDA_ARCHS CXX_FLAGS TEST_CXX_FLAGS SANITIZER_FLAGS GPU_DEFINES NVCC_FLAGS "
{
  echo "# Written by configure.sh; do not edit (rerun ./configure.sh instead)."
  for pair in "${bazel_names[@]}"; do
    var=${pair#*:}
    if [[ "$quoted" == *" $var "* ]]; then value="\"${!var}\""; else value=${!var}; fi
    echo "build --action_env=${pair%%:*}=$value"
  done
  echo "build --python_path=$PYTHON_BIN"
} > .configure.bazelrc

cat > python/fixed_loss_scale/_build_info.json <<JSON
{"tf_version": "$TF_VERSION", "python_version": "$PYTHON_VERSION", "cxx11_abi": $TF_CXX11_ABI, "cuda_version": "$CUDA_VERSION",
 "cuda_toolchain": "$CUDA_TOOLCHAIN", "cuda_archs": "$CUDA_ARCHS", "cuda_ptx": "$CUDA_PTX_ARCH${CUDA_PTX_ISA:+ (PTX ISA $CUDA_PTX_ISA)}",
 "cuda_min_driver": $CUDA_MIN_DRIVER, "cuda_ptx_min_driver": $CUDA_PTX_MIN_DRIVER}
JSON

echo "configure: TensorFlow $TF_VERSION (Python $PYTHON_VERSION, $PYTHON_BIN)"
if [[ "$WITH_CUDA" == 1 ]]; then
  driver() { echo "$(( $1 / 1000 )).$(( $1 % 1000 / 10 ))"; }
  if [[ "$CUDA_TOOLCHAIN" == clang ]]; then
    echo "configure: CUDA device code by $CLANG + ptxas 12.9 ($CUDA12_PATH)"
  else
    echo "configure: CUDA device code by nvcc $CUDA_VERSION ($CUDA_ROOT)"
  fi
  echo "configure: cubins $CUDA_ARCHS; PTX $CUDA_PTX_ARCH (ISA $CUDA_PTX_ISA)"
  echo "configure: runs with a driver for CUDA >= $(driver $CUDA_MIN_DRIVER) (PTX JIT: >= $(driver $CUDA_PTX_MIN_DRIVER)), on TensorFlow's CUDA runtime"
else
  echo "configure: no CUDA toolchain (FLS_WITH_CUDA=0, or neither clang-19 with the CUDA 12.9 wheels nor an nvcc 12.1+): CPU-only build"
fi
