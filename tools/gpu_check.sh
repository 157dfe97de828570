#!/usr/bin/env bash
# The GPU check that needs no TensorFlow (docs/GPU.md, "On a GPU machine"):
# for a GPU machine with nvcc and a driver but no TensorFlow, no network and
# few files (no config.mk, no .venv). Run from the repository root:
#
#   tools/gpu_check.sh --prepare   here, where configure.sh set up the clang
#                                  route: puts the CUDA 12 build of the launchers
#                                  (the library's own device code: the unscale
#                                  kernels and the fused optimizer update) and
#                                  the driver's host object, plus
#                                  libcudart.so.12, in .gpucheck/ (git-ignored),
#                                  which the GPU machine needs beside the sources;
#                                  gzipped (62 MB -> 12 MB: the device tool
#                                  carries 64 MiB with the sources), unpacked
#                                  into build/gpu-check/bundle/ there
#   tools/gpu_check.sh             on the GPU machine (= make gpu-check): builds
#                                  the launcher and launcher_driver with the
#                                  local nvcc for the local GPU, links the CUDA
#                                  12 objects of .gpucheck/ with g++, and runs
#                                  every check on both, then the benchmark
#
# Checks (each time-boxed; the whole run is meant to take well under 8 min):
#   check         every kernel case against the CPU reference (CUDA 12 build:
#                 all cases; nvcc build: --quick); then the checked launch
#                 (FixedUnscaleGradsAndCheck) and the read-only check
#                 (FixedCheckGrads, no tensor byte written) of those cases plus
#                 the poison cases and checked lists: flag exact, sum of
#                 squares against a double reference, and (full check only)
#                 both bit for bit against the host emulation; then the fused
#                 optimizer update (every rule, flag true and false, all table
#                 kinds) bit for bit against the CPU kernels' element math
#                 under x86 FTZ/DAZ (--quick: fewer cases, sizes <= 4096)
#   tf-stream     lists of 991, 992 and 2,000 tensors on a driver-API stream
#                 with cuMemHostAlloc'ed table scratch, as TensorFlow launches,
#                 unchecked, checked and read-only
#   edges         all float16/bfloat16 bit patterns, FLT_MIN/DBL_MIN and
#                 subnormal edges, NaNs
#   huge          one float16 tensor of 2^31 + 17 elements at a 2-byte offset,
#                 then a checked and a read-only launch with the sum over it
#   PTX JIT       check --quick, tf-stream and edges with CUDA_FORCE_PTX_JIT=1
#                 (the path a GPU newer than every cubin takes)
#   4K params     check --quick and tf-stream through the 4 KB-parameter path
#                 (lists > 16 tensors in a buffer table), as on a Pascal GPU
#   memcheck      compute-sanitizer --tool memcheck on check --quick + tf-stream
#   SASS          per kernel (unchecked, checked, read-only, fused update), in
#                 the sm_XX code
#                 of both builds: 128-bit global loads and stores (LDG.E.128 /
#                 STG.E.128; the read-only kernels no store at all), no local
#                 memory (LDL/STL); registers
#   SASS per element  tf_ops/tests/element_probe.cu built for the local GPU:
#                 instructions per element of the paired float16/bfloat16
#                 path against the per-element one and float32's, and
#                 tf_ops/tests/update_probe.cu: of each fused update rule with
#                 plain IEEE first and with FlushedMath alone (printed)
#   bench         launcher_driver bench on float32, float16 and bfloat16 (vs a
#                 device-to-device copy; the checked launch and the read-only
#                 check without and with the sum of squares; the fused launch
#                 against the read-only check plus a later unscale launch) and
#                 benchmarks/gpu_torch.py (torch's foreach kernels), same sets;
#                 the fused Adam update on bert_like and few_large against a
#                 copy of the same bytes (28 per element: grad, var, m, v read,
#                 var, m, v written) and torch._fused_adam_ / _fused_sgd_ on
#                 the same sets; then that fused Adam launch as shipped and
#                 with FlushedMath alone (both nvcc builds), twice in turn
#
# Exit status: 0 all passed, 1 a check failed (or the CUDA 12 bundle is
# missing), 3 no GPU here (after building everything). GPU_CHECK_BUDGET_S
# (default 450) caps the steps' total time; GPU_CHECK_SM picks the arch.
set -u -o pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpucheck   # as sent; on the GPU machine, its unpacked copy in $WORK/bundle
WORK=build/gpu-check
# The launchers: one object per .cu file of tf_ops/core/gpu/.
UNITS=(multi_tensor_scale fused_update)
# objects DIR KIND: each unit's object in DIR, named UNIT.KIND.o.
objects() { local unit; for unit in "${UNITS[@]}"; do echo "$1/$unit.$2.o"; done; }

# ---- --prepare: the CUDA 12 (clang route) objects -------------------------------
if [[ "${1:-}" == --prepare ]]; then
  set -e
  get() { sed -n "s/^$1 := //p" config.mk; }
  [[ -f config.mk && "$(get CUDA_TOOLCHAIN)" == clang ]] ||
      { echo "gpu_check --prepare: needs config.mk with CUDA_TOOLCHAIN=clang (run ./configure.sh)" >&2; exit 1; }
  for unit in "${UNITS[@]}"; do make -s "build/tf_ops/core/gpu/$unit.o"; done
  cuda12=$(get CUDA12_PATH)
  rm -rf "$BUNDLE"; mkdir -p "$BUNDLE"
  for unit in "${UNITS[@]}"; do cp "build/tf_ops/core/gpu/$unit.o" "$BUNDLE/$unit.cuda12.o"; done
  ${CXX:-g++} $(get TEST_CXX_FLAGS) -I. -isystem "$cuda12/include" -x c++ \
      -c tf_ops/tests/launcher_driver.cu -o "$BUNDLE/launcher_driver.cuda12.o"
  cp "$cuda12/lib64/libcudart.so.12" "$BUNDLE/"
  # Also linked here, with libstdc++ static, for a GPU machine whose g++ is
  # older than this one's (its libstdc++ would lack symbols the objects need).
  ${CXX:-g++} -o "$BUNDLE/launcher_driver.cuda12" "$BUNDLE/launcher_driver.cuda12.o" \
      $(objects "$BUNDLE" cuda12) -L"$BUNDLE" -l:libcudart.so.12 \
      -static-libstdc++ -static-libgcc -Wl,-rpath,'$ORIGIN' -ldl
  {
    echo "commit $(git rev-parse HEAD 2>/dev/null)$(git diff --quiet -- tf_ops 2>/dev/null || echo ' + uncommitted tf_ops changes')"
    echo "device code: $(get CLANG) + ptxas 12.9; cubins $(get CUDA_ARCHS); PTX $(get CUDA_PTX_ARCH) ISA $(get CUDA_PTX_ISA)"
  } > "$BUNDLE/MANIFEST"
  find "$BUNDLE" -type f ! -name MANIFEST -exec gzip -f {} +
  du -sh "$BUNDLE"; cat "$BUNDLE/MANIFEST"
  exit 0
fi

# ---- on the GPU machine -------------------------------------------------------------
mkdir -p "$WORK"
exec > >(tee "$WORK/report.txt") 2>&1
# A copy of the report where a remote runner collects files ($OUT), if set.
[[ -n "${OUT:-}" && -d "${OUT:-}" ]] && trap 'sleep 1; cp "$WORK/report.txt" "$OUT/gpu_check_report.txt"' EXIT
start=$(date +%s)
failures=()
step() { echo; echo "=== $* (+$(( $(date +%s) - start ))s)"; }
# Every step ends by this deadline, so that the whole run stays under 8 min.
deadline=$(( start + ${GPU_CHECK_BUDGET_S:-450} ))
# run NAME TIMEOUT CMD...: records a failure unless CMD exits 0.
run() {
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit <= 0 )); then echo "--- $name: FAILED (no time left)"; failures+=("$name"); return 0; fi
  timeout "$limit" "$@"; local rc=$?
  if [[ $rc == 0 ]]; then echo "--- $name: ok"
  else echo "--- $name: FAILED (exit $rc${rc/#124/, timed out after ${limit}s})"; failures+=("$name"); fi
  return 0
}

# The bundle travels gzipped; everything below reads the unpacked copy.
if compgen -G "$BUNDLE/*.gz" >/dev/null; then
  rm -rf "$WORK/bundle"; mkdir -p "$WORK/bundle"
  for packed in "$BUNDLE"/*.gz; do
    gzip -dc "$packed" > "$WORK/bundle/$(basename "${packed%.gz}")" || failures+=("unpack $packed")
  done
  chmod +x "$WORK/bundle/launcher_driver.cuda12" 2>/dev/null
  cp "$BUNDLE/MANIFEST" "$WORK/bundle/" 2>/dev/null
fi
BUNDLE=$WORK/bundle

step "machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 || true
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" --version | tail -2
CUDA_BIN=$(dirname "$(readlink -f "$NVCC")")
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
SM=${GPU_CHECK_SM:-sm_${cc:-90}}
echo "building for $SM; CUDA 12 bundle: $(cat $BUNDLE/MANIFEST 2>/dev/null | head -2 | tr '\n' ' ' || echo missing)"

step "build (nvcc for $SM; CUDA 12 objects linked with g++)"
builds=()
# nvcc_unit UNIT KIND [FLAGS...]: $WORK/UNIT.KIND.o; nvcc_driver KIND OBJECTS...
nvcc_unit() {
  local unit=$1 kind=$2; shift 2
  "$NVCC" -std=c++17 -O3 -I. -gencode "arch=compute_${SM#sm_},code=$SM" \
      -gencode "arch=compute_${SM#sm_},code=compute_${SM#sm_}" -Xcompiler -fPIC "$@" \
      -c "tf_ops/core/gpu/$unit.cu" -o "$WORK/$unit.$kind.o"
}
nvcc_driver() {
  local kind=$1; shift
  "$NVCC" -std=c++17 -O2 -I. -gencode "arch=compute_${SM#sm_},code=$SM" \
      -o "$WORK/launcher_driver.$kind" tf_ops/tests/launcher_driver.cu "$@" -ldl
}
if nvcc_unit multi_tensor_scale nvcc && nvcc_unit fused_update nvcc &&
   nvcc_driver nvcc $(objects "$WORK" nvcc); then
  builds+=(nvcc)
  # The fused update with FlushedMath alone, for the bench step's A/B of NOTE
  # [plain IEEE first] (fused_update_body.h); informational.
  nvcc_unit fused_update flushed -DFLS_FUSED_UPDATE_PLAIN_FIRST=0 &&
      nvcc_driver flushed "$WORK/multi_tensor_scale.nvcc.o" "$WORK/fused_update.flushed.o" ||
      echo "the FlushedMath-alone variant did not build (the bench step skips its A/B)"
else
  failures+=("nvcc build")
fi
if [[ -f "$BUNDLE/multi_tensor_scale.cuda12.o" && -f "$BUNDLE/fused_update.cuda12.o" ]]; then
  if ${CXX:-g++} -o "$WORK/launcher_driver.cuda12" "$BUNDLE/launcher_driver.cuda12.o" \
         $(objects "$BUNDLE" cuda12) -L"$BUNDLE" -l:libcudart.so.12 \
         -Wl,-rpath,"$PWD/$BUNDLE" -ldl; then
    builds+=(cuda12)
  elif [[ -x "$BUNDLE/launcher_driver.cuda12" ]]; then
    echo "linking the CUDA 12 objects here failed; using the one linked where they were built"
    cp "$BUNDLE/launcher_driver.cuda12" "$WORK/launcher_driver.cuda12"
    ln -sf "$PWD/$BUNDLE/libcudart.so.12" "$WORK/libcudart.so.12"
    builds+=(cuda12)
  else
    failures+=("cuda12 link")
  fi
else
  echo "no .gpucheck/: the library's CUDA 12 device code is NOT checked (run tools/gpu_check.sh --prepare where it is built, and send .gpucheck/)"
  failures+=("cuda12 bundle missing")
fi

first=${builds[0]:-}
if [[ -z "$first" ]]; then echo "nothing built"; exit 1; fi
"$WORK/launcher_driver.$first" edges >/dev/null 2>&1; probe=$?
if [[ $probe == 3 ]]; then
  "$WORK/launcher_driver.$first" edges
  echo "gpu_check: built ${builds[*]}; no GPU here, nothing run (exit 3)"
  exit 3
fi

for build in "${builds[@]}"; do
  d="$WORK/launcher_driver.$build"
  if [[ $build == cuda12 ]]; then check_args=(); else check_args=(--quick); fi
  step "$build: check ${check_args[*]}";   run "$build check" 240 "$d" check "${check_args[@]}"
  step "$build: tf-stream";                run "$build tf-stream" 60 "$d" tf-stream
  step "$build: edges";                    run "$build edges" 60 "$d" edges
  step "$build: PTX JIT (CUDA_FORCE_PTX_JIT=1): check --quick, tf-stream, edges"
  run "$build PTX check" 120 env CUDA_FORCE_PTX_JIT=1 "$d" check --quick
  run "$build PTX tf-stream" 60 env CUDA_FORCE_PTX_JIT=1 "$d" tf-stream
  run "$build PTX edges" 60 env CUDA_FORCE_PTX_JIT=1 "$d" edges
done
d="$WORK/launcher_driver.${builds[-1]}"   # cuda12 when present: what the library ships
step "${builds[-1]}: the 4 KB-parameter path of Pascal GPUs and pre-12.1 drivers (FIXED_LOSS_SCALE_TEST_4K_PARAMS=1)"
run "4K params check" 120 env FIXED_LOSS_SCALE_TEST_4K_PARAMS=1 "$d" check --quick
run "4K params tf-stream" 60 env FIXED_LOSS_SCALE_TEST_4K_PARAMS=1 "$d" tf-stream
step "${builds[-1]}: huge";                 run "huge" 120 "$d" huge
step "${builds[-1]}: compute-sanitizer memcheck (check --quick, tf-stream)"
SANITIZER=$(command -v compute-sanitizer || echo "$CUDA_BIN/compute-sanitizer")
run "memcheck check" 240 "$SANITIZER" --tool memcheck --error-exitcode 9 "$d" check --quick
run "memcheck tf-stream" 60 "$SANITIZER" --tool memcheck --error-exitcode 9 "$d" tf-stream

step "SASS ($SM): 128-bit global accesses, registers, local memory, per kernel"
CUOBJDUMP=$(command -v cuobjdump || echo "$CUDA_BIN/cuobjdump")
# Every kernel, unchecked (Scale*TableKernel), the fused update (Update*, one
# per rule and table) and checked (Checked*, of a job
# Job<writes, ...>), must load in 128-bit packs and touch no local memory;
# those that write (all but the read-only check's, Job<false, ...>: mangled
# JobILb0E) store in 128-bit packs, the read-only ones store no pack at all.
# Prints one line per kernel: 128-bit load and store counts, then LDL/STL,
# then registers. The buffer-table kernels read their pointers from device
# memory, so both compilers emit generic 128-bit accesses there (LD.E.128 /
# ST.E.128); the inline-table kernels global ones (LDG.E.128 / STG.E.128).
sass_per_kernel() {
  awk '
    /Function : / { name = $3; kernels[++n] = name }
    name != "" && /[^A-Z](LDG|LD)\.E(\.[A-Z0-9_]+)*\.128/ { loads[name]++ }
    name != "" && /[^A-Z](STG|ST)\.E(\.[A-Z0-9_]+)*\.128/ { stores[name]++ }
    name != "" && /[^A-Z](LDL|STL)[ .]/ { locals[name]++ }
    END {
      bad = 0
      for (i = 1; i <= n; i++) {
        k = kernels[i]; short = k
        sub(/^_ZN16fixed_loss_scale3gpu[0-9]*_GLOBAL__N__?[0-9a-f_]*([a-z_]+_cu_[0-9a-f]*)?/, "", short)
        read_only = k ~ /JobILb0E/
        ok = loads[k] > 0 && (read_only ? stores[k] == 0 : stores[k] > 0) && locals[k] == 0
        if (!ok) bad = 1
        printf "  %-72s %3d LD(G).128 %3d ST(G).128 %d LDL/STL%s\n", substr(short, 1, 72), loads[k], stores[k], locals[k], ok ? "" : "  <- FAILED"
      }
      if (n == 0) { print "  no kernels found"; bad = 1 }
      exit bad
    }'
}
for object in $(objects "$WORK" nvcc) $(objects "$BUNDLE" cuda12); do
  [[ -f "$object" ]] || continue
  echo "$object:"
  if "$CUOBJDUMP" -sass -arch "$SM" "$object" 2>&1 | sass_per_kernel; then sass_ok=1; else sass_ok=0; fi
  "$CUOBJDUMP" -res-usage -arch "$SM" "$object" 2>&1 | grep -E 'Function|REG' |
      sed -E 's/_ZN16fixed_loss_scale3gpu[0-9]*_GLOBAL__N__?[0-9a-f_]*([a-z_]+_cu_[0-9a-f]*)?//; s/^/  /' | head -48
  if (( sass_ok )); then
    echo "--- SASS $(basename "$object"): ok"
  else
    echo "--- SASS $object: FAILED"; failures+=("SASS $(basename "$object")")
  fi
done

step "SASS per element ($SM): the paired 16-bit path against the per-element one (tf_ops/tests/element_probe.cu); the fused update's plain IEEE first against FlushedMath alone (tf_ops/tests/update_probe.cu)"
# Static instructions of each probe kernel less its Baseline (load and store),
# per element: PairedOnly is what an ordinary float16/bfloat16 pack runs,
# PerElement the per-element path it replaced, Paired both with the fallback.
if "$NVCC" -std=c++17 -O3 -I. -cubin -arch="$SM" tf_ops/tests/element_probe.cu \
       -o "$WORK/element_probe.cubin" 2>&1; then
  "$CUOBJDUMP" -sass "$WORK/element_probe.cubin" 2>/dev/null | awk '
    /Function : / { name = $3; n[name] = 0; next }
    name != "" && /^ *\/\*[0-9a-f]+\*\/ / && !/NOP/ { n[name]++ }
    END {
      split("float16 bfloat16 float32", dtypes, " "); lanes[0] = 8; lanes[1] = 8; lanes[2] = 4
      for (k in n) {
        if (!match(k, /(Baseline|PairedOnly|Paired|PerElement)ILNS_5DTypeE[0-9]ENS0_3JobILb[01]ELb[01]/)) continue
        s = substr(k, RSTART, RLENGTH); kind = s; sub(/ILNS.*/, "", kind)
        d = substr(s, index(s, "DTypeE") + 6, 1); c = substr(s, length(s), 1)
        key = d " " c; if (kind == "Baseline") base[key] = n[k]; else count[key " " kind] = n[k]
      }
      for (key in count) {
        split(key, f, " ")
        printf "  %-9s %-12s %-11s %6.1f instructions per element\n", dtypes[f[1] + 1],
               f[2] == 1 ? "checked+sum" : "scale", f[3], (count[key] - base[f[1] " " f[2]]) / lanes[f[1]]
      }
    }' | sort
else
  echo "  element_probe.cu did not build for $SM (informational step)"
fi
# The fused update's rules (tf_ops/tests/update_probe.cu): instructions from a
# probe kernel's entry to its first EXIT (what an ordinary element runs), less
# its Baseline's, per element: FlushedMath alone against plain IEEE first.
if "$NVCC" -std=c++17 -O3 -I. -cubin -arch="$SM" tf_ops/tests/update_probe.cu \
       -o "$WORK/update_probe.cubin" 2>&1; then
  "$CUOBJDUMP" -sass "$WORK/update_probe.cubin" 2>/dev/null | awk '
    /Function : / { name = $3; counting = 1; next }
    counting && /\/\*[0-9a-f]+\*\/[ \t]+[@A-Z]/ && !/ NOP/ { n[name]++; if (/EXIT/) counting = 0 }
    END {
      for (k in n) {
        if (!match(k, /(7SgdRule|SgdMomentumRuleILb[01]|AdamRuleILb[01])E*LNS0_9ProbeKindE[012]/)) continue
        s = substr(k, RSTART, RLENGTH); kind = substr(s, length(s), 1)
        rule = s; sub(/E*LNS0.*/, "", rule)
        sub(/^7SgdRule$/, "SGD", rule); sub(/SgdMomentumRuleILb0/, "SGD momentum", rule)
        sub(/SgdMomentumRuleILb1/, "SGD nesterov", rule); sub(/AdamRuleILb0/, "Adam", rule)
        sub(/AdamRuleILb1/, "Adam amsgrad", rule)
        count[rule, kind] = n[k]; rules[rule] = 1
      }
      for (r in rules) {
        printf "  %-13s FlushedMath alone %6.1f, plain IEEE first %6.1f instructions per element\n",
               r, (count[r, 2] - count[r, 0]) / 4, (count[r, 1] - count[r, 0]) / 4
      }
    }' | sort
else
  echo "  update_probe.cu did not build for $SM (informational step)"
fi

step "bench: ${builds[-1]} launcher (vs device-to-device copy), then PyTorch"
run "bench" 150 "$d" bench benchmarks/gradient_sets.txt
PYTHON=${PYTHON:-python3}
run "bench torch" 120 "$PYTHON" benchmarks/gpu_torch.py
if [[ -x "$WORK/launcher_driver.flushed" ]]; then
  step "bench: the fused Adam launch's two shapes, nvcc for $SM, in turn: plain IEEE first (as shipped) and FlushedMath alone (NOTE [plain IEEE first])"
  for round in 1 2; do
    for kind in nvcc flushed; do
      echo "[$kind, round $round]"
      run "bench-update $kind $round" 30 "$WORK/launcher_driver.$kind" bench-update benchmarks/gradient_sets.txt
    done
  done
fi

step "summary"
echo "builds: ${builds[*]}; elapsed $(( $(date +%s) - start ))s; report: $WORK/report.txt"
if (( ${#failures[@]} )); then
  echo "gpu_check: FAILED: ${failures[*]}"; exit 1
fi
echo "gpu_check: PASSED"
