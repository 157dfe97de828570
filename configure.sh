#!/usr/bin/env bash
# Detects the Python, TensorFlow and (optionally) CUDA toolkit to build against
# and writes them, once, in the two forms the builds read:
#   config.mk            variables for the Makefile
#   .configure.bazelrc   --action_env/--repo_env lines for Bazel (imported by .bazelrc)
#   python/fixed_loss_scale/_build_info.json   what the library was built for,
#                        checked by the loader at import time
# Non-interactive; it never installs anything.
#
# Environment: PYTHON (default: .venv/bin/python, else python3), CUDA_HOME or
# NVCC (the nvcc to use), FLS_WITH_CUDA=0 to force a CPU-only build.
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

find_nvcc() {
  [[ "${FLS_WITH_CUDA:-1}" == 0 ]] && return 0
  local candidate
  for candidate in "${NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" \
                   /usr/local/cuda/bin/nvcc; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; return 0; fi
  done
}
NVCC_BIN=$(find_nvcc)
CUDA_ROOT=""; CUDA_VERSION=""; CUDART_STATIC=""
# CUDA 13 dropped sm_50..sm_70; these are the Turing..Hopper targets, with PTX
# for the newest so later GPUs JIT it.
CUDA_ARCHS="sm_75 sm_80 sm_86 sm_89 sm_90"
CUDA_PTX_ARCH="compute_90"
if [[ -n "$NVCC_BIN" ]]; then
  # nvcc may be a wrapper script on PATH: its own -dryrun names the real toolkit.
  CUDA_ROOT=$(cd "${TMPDIR:-/tmp}" && "$NVCC_BIN" -dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)
  [[ -n "$CUDA_ROOT" ]] || CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC_BIN")")")
  CUDA_ROOT=$(cd "$CUDA_ROOT" && pwd -P)
  CUDA_VERSION=$("$NVCC_BIN" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
  for lib in "$CUDA_ROOT/lib64/libcudart_static.a" \
             "$CUDA_ROOT/targets/x86_64-linux/lib/libcudart_static.a"; do
    [[ -f "$lib" ]] && { CUDART_STATIC=$lib; break; }
  done
  if [[ -z "$CUDART_STATIC" ]]; then
    echo "configure: $NVCC_BIN found but no libcudart_static.a beside it; building CPU-only" >&2
    NVCC_BIN=""; CUDA_ROOT=""; CUDA_VERSION=""
  fi
fi
WITH_CUDA=$([[ -n "$NVCC_BIN" ]] && echo 1 || echo 0)

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
CUDART_STATIC := $CUDART_STATIC
CUDA_ARCHS := $CUDA_ARCHS
CUDA_PTX_ARCH := $CUDA_PTX_ARCH
TF_CUDA_INCLUDE := $TF_CUDA_INCLUDE
CXX_FLAGS := $CXX_FLAGS
TEST_CXX_FLAGS := $TEST_CXX_FLAGS
SANITIZER_FLAGS := $SANITIZER_FLAGS
GPU_DEFINES := $GPU_DEFINES
NVCC_FLAGS := $NVCC_FLAGS
MK

cat > .configure.bazelrc <<RC
# Written by configure.sh; do not edit (rerun ./configure.sh instead).
build --action_env=TF_HEADER_DIR=$TF_INCLUDE
build --action_env=TF_SHARED_LIBRARY_DIR=$TF_LIBDIR
build --action_env=TF_SHARED_LIBRARY_NAME=$TF_LIBNAME
build --action_env=TF_CXX11_ABI_FLAG=$TF_CXX11_ABI
build --action_env=TF_DEFINES="$TF_DEFINES"
build --action_env=FLS_WITH_CUDA=$WITH_CUDA
build --action_env=FLS_NVCC=$NVCC_BIN
build --action_env=FLS_CUDART_STATIC=$CUDART_STATIC
build --action_env=FLS_CUDA_ARCHS="$CUDA_ARCHS"
build --action_env=FLS_CUDA_PTX_ARCH=$CUDA_PTX_ARCH
build --action_env=FLS_TF_CUDA_INCLUDE=$TF_CUDA_INCLUDE
build --action_env=FLS_CXX_FLAGS="$CXX_FLAGS"
build --action_env=FLS_TEST_CXX_FLAGS="$TEST_CXX_FLAGS"
build --action_env=FLS_SANITIZER_FLAGS="$SANITIZER_FLAGS"
build --action_env=FLS_GPU_DEFINES="$GPU_DEFINES"
build --action_env=FLS_NVCC_FLAGS="$NVCC_FLAGS"
build --python_path=$PYTHON_BIN
RC

cat > python/fixed_loss_scale/_build_info.json <<JSON
{"tf_version": "$TF_VERSION", "python_version": "$PYTHON_VERSION", "cxx11_abi": $TF_CXX11_ABI, "cuda_version": "$CUDA_VERSION"}
JSON

echo "configure: TensorFlow $TF_VERSION (Python $PYTHON_VERSION, $PYTHON_BIN)"
if [[ "$WITH_CUDA" == 1 ]]; then
  echo "configure: CUDA $CUDA_VERSION at $CUDA_ROOT, targets $CUDA_ARCHS + $CUDA_PTX_ARCH"
else
  echo "configure: no nvcc found (set CUDA_HOME or NVCC to use one): CPU-only build"
fi
