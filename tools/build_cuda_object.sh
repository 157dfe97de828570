#!/usr/bin/env bash
# Compiles one .cu file into a host object holding its fatbinary, the clang
# route (NOTE [clang device code] in tools/cuda12_toolchain.sh); the Makefile
# and Bazel (tf_ops/BUILD) both run it, so both ship the same device code.
#
#   CLANG=... CUDA12_PATH=... CUDA_ARCHS="sm_60 ... sm_120" CUDA_PTX_ARCH=compute_90 \
#   PYTHON=... CLANG_CUDA_FLAGS="..." tools/build_cuda_object.sh SRC.cu OUT.o [clang args...]
#
#   1. clang --cuda-device-only -S: PTX for each arch clang knows (up to sm_90);
#   2. the wheel's ptxas: a cubin per arch in CUDA_ARCHS; archs newer than
#      clang knows (sm_100, sm_120) are assembled from the CUDA_PTX_ARCH PTX;
#   3. tools/make_fatbin.py: the cubins plus the CUDA_PTX_ARCH PTX in one
#      fatbinary (libnvfatbin);
#   4. clang --cuda-host-only -fcuda-include-gpubinary: the host object, with
#      the registration code that hands that fatbinary to the CUDA runtime.
set -euo pipefail
src=$1; out=$2; shift 2
: "${CLANG:?}" "${CUDA12_PATH:?}" "${CUDA_ARCHS:?}" "${CUDA_PTX_ARCH:?}" "${PYTHON:?}"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fls_cuda.XXXXXX")
trap 'rm -rf "$work"' EXIT
common=(-x cuda --cuda-path="$CUDA12_PATH" ${CLANG_CUDA_FLAGS:-} "$@")
ptx_sm=${CUDA_PTX_ARCH#compute_}
clang_max_sm=90

# 1 + 2, one background job per arch (ptxas for sm_60 is the slowest step).
pids=()
fatbin_args=()
for arch in $CUDA_ARCHS; do
  sm=${arch#sm_}
  fatbin_args+=(--cubin "$sm=$work/$arch.cubin")
  (( sm > clang_max_sm )) && continue
  (
    "$CLANG" "${common[@]}" --cuda-device-only --no-cuda-version-check -S --cuda-gpu-arch="$arch" "$src" -o "$work/$arch.ptx"
    "$CUDA12_PATH/bin/ptxas" -arch="$arch" -O3 "$work/$arch.ptx" -o "$work/$arch.cubin"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
[[ -f "$work/sm_$ptx_sm.ptx" ]] || { echo "build_cuda_object: $CUDA_PTX_ARCH must be one of CUDA_ARCHS up to sm_$clang_max_sm" >&2; exit 1; }
pids=()
for arch in $CUDA_ARCHS; do
  sm=${arch#sm_}
  (( sm > clang_max_sm )) || continue
  "$CUDA12_PATH/bin/ptxas" -arch="$arch" -O3 "$work/sm_$ptx_sm.ptx" -o "$work/$arch.cubin" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

# 3 + 4
"$PYTHON" "$here/make_fatbin.py" --nvfatbin "$CUDA12_PATH/lib64/libnvfatbin.so.12" \
    -o "$work/device.fatbin" "${fatbin_args[@]}" --ptx "$ptx_sm=$work/sm_$ptx_sm.ptx"
"$CLANG" "${common[@]}" --cuda-host-only -Xclang -fcuda-include-gpubinary \
    -Xclang "$work/device.fatbin" -c "$src" -o "$out"
