#!/usr/bin/env bash
# The CUDA 12 toolchain of the clang route (docs/GPU.md, "Building"), found or
# assembled, then printed as shell assignments for configure.sh to eval:
#   CLANG=...          a clang++ that compiles CUDA (Debian's clang-19)
#   CUDA12_PATH=...    a --cuda-path folder assembled from NVIDIA's cu12 wheels
#
# NOTE [clang device code]: TensorFlow 2.21 is built with CUDA 12.5 for sm_60,
# sm_70, sm_80, sm_89 and compute_90, and runs on CUDA 12 drivers. An nvcc from
# CUDA 13 has no sm_60/sm_70 and its code needs an R580 driver, and many
# machines have no nvcc at all, so the device code comes from clang (which
# TensorFlow also compiles its CUDA with) and the ptxas of the CUDA 12.9 wheel,
# both available on any Debian machine. The wheels hold no nvcc and no
# `fatbinary`; tools/make_fatbin.py packs the cubins with libnvfatbin instead.
#   nvidia-cuda-nvcc-cu12      bin/ptxas, nvvm/libdevice, include/crt
#   nvidia-cuda-runtime-cu12   include/ (cuda_runtime.h, ...), lib64/libcudart.so.12
#   nvidia-cuda-cccl-cu12      include/nv (<nv/target>, included by cuda_fp16.h)
#   nvidia-nvfatbin-cu12       lib64/libnvfatbin.so.12, include/nvFatbin.h
# plus an empty include/curand_mtgp32_kernel.h, which clang's CUDA wrapper
# header includes. The versions are pinned; the folder (.cuda12/, git-ignored)
# is reused while its stamp matches, so it is downloaded once per clone (and
# pip's cache keeps the wheels across clones).
#
# Installs what is missing (FLS_INSTALL_CUDA_TOOLCHAIN=1, the default):
# clang-19 with apt-get when run as root, the wheels with `$PYTHON -m pip
# download`. With FLS_INSTALL_CUDA_TOOLCHAIN=0 (what a pip build sets: a
# package's build must not change the system) it installs and downloads
# nothing and uses only a clang-19 and a folder that are already there. Exit
# status 1, with the reason on stderr, when either cannot be had (configure.sh
# then looks for nvcc).
#
# Environment: PYTHON (a Python with pip), CLANG (a clang++ to use instead of
# clang++-19), FLS_CUDA12_PATH (the folder; default .cuda12 in the repo),
# FLS_INSTALL_CUDA_TOOLCHAIN (0: install nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEST=${FLS_CUDA12_PATH:-$PWD/.cuda12}
WHEELS=(nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79
        nvidia-cuda-cccl-cu12==12.9.27 nvidia-nvfatbin-cu12==12.9.82)
STAMP="${WHEELS[*]}"
INSTALL=${FLS_INSTALL_CUDA_TOOLCHAIN:-1}

say() { echo "cuda12_toolchain: $*" >&2; }

# ---- clang ----
find_clang() {
  local candidate
  for candidate in "${CLANG:-}" clang++-19 /usr/lib/llvm-19/bin/clang++; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 && {
      command -v "$candidate"; return 0; }
  done
  return 1
}
if ! CLANG_BIN=$(find_clang); then
  if [[ "$INSTALL" != 0 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing clang-19 with apt-get"
    { apt-get install -y -qq clang-19 || { apt-get update -qq && apt-get install -y -qq clang-19; }; } \
        >&2 || true
  fi
  CLANG_BIN=$(find_clang) || { say "no clang++-19 (apt-get install clang-19, or set CLANG)"; exit 1; }
fi

# ---- the --cuda-path folder ----
if [[ ! -f "$DEST/.stamp" || "$(cat "$DEST/.stamp")" != "$STAMP" ]]; then
  if [[ "$INSTALL" == 0 ]]; then
    say "no CUDA 12.9 toolchain folder at $DEST, and FLS_INSTALL_CUDA_TOOLCHAIN=0 downloads none"
    exit 1
  fi
  say "assembling $DEST from ${WHEELS[*]}"
  rm -rf "$DEST"
  mkdir -p "$DEST/wheels"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$DEST/wheels" "${WHEELS[@]}" >&2 ||
    { say "pip could not download the CUDA 12 wheels"; rm -rf "$DEST"; exit 1; }
  "$PYTHON" - "$DEST" <<'PY'
import glob, os, shutil, stat, sys, zipfile
dest = sys.argv[1]
# (wheel prefix, member prefix inside the wheel, folder under dest)
layout = [
    ("nvidia_cuda_nvcc", "nvidia/cuda_nvcc/bin/", "bin/"),
    ("nvidia_cuda_nvcc", "nvidia/cuda_nvcc/nvvm/libdevice/", "nvvm/libdevice/"),
    ("nvidia_cuda_nvcc", "nvidia/cuda_nvcc/include/", "include/"),
    ("nvidia_cuda_runtime", "nvidia/cuda_runtime/include/", "include/"),
    ("nvidia_cuda_runtime", "nvidia/cuda_runtime/lib/", "lib64/"),
    ("nvidia_cuda_cccl", "nvidia/cuda_cccl/include/nv/", "include/nv/"),
    ("nvidia_nvfatbin", "nvidia/nvfatbin/include/", "include/"),
    ("nvidia_nvfatbin", "nvidia/nvfatbin/lib/", "lib64/"),
]
for wheel_prefix, member_prefix, target in layout:
  (wheel,) = glob.glob(os.path.join(dest, "wheels", wheel_prefix + "*.whl"))
  with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
      if not member.startswith(member_prefix) or member.endswith("/"):
        continue
      path = os.path.join(dest, target, member[len(member_prefix):])
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with archive.open(member) as source, open(path, "wb") as sink:
        shutil.copyfileobj(source, sink)
os.chmod(os.path.join(dest, "bin", "ptxas"), 0o755)
open(os.path.join(dest, "include", "curand_mtgp32_kernel.h"), "w").close()
# clang reads the CUDA version from version.json / version.txt.
with open(os.path.join(dest, "version.txt"), "w") as f:
  f.write("CUDA Version 12.9.0\n")
PY
  rm -rf "$DEST/wheels"
  echo "$STAMP" > "$DEST/.stamp"
fi

echo "CLANG=$CLANG_BIN"
echo "CUDA12_PATH=$DEST"
