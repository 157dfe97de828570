// See c_api.h.
#include "tf_ops/core/c_api.h"

#include <cstring>

#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"
#include "tf_ops/core/cpu/simd_loops.h"
#include "tf_ops/core/tensor_span.h"

namespace fls = fixed_loss_scale;

extern "C" {

int fls_active_cpu_path(void) { return static_cast<int>(fls::ActiveCpuPath()); }

const char* fls_cpu_path_name(int path) {
  return fls::CpuPathName(static_cast<fls::CpuPath>(path));
}

int fls_cpu_path_supported(int path) {
  return fls::CpuPathSupported(static_cast<fls::CpuPath>(path)) ? 1 : 0;
}

int fls_cpu_path_code(const char* name) {
  for (fls::CpuPath path : {fls::CpuPath::kScalar, fls::CpuPath::kAvx2, fls::CpuPath::kAvx512}) {
    if (std::strcmp(name, fls::CpuPathName(path)) == 0) return static_cast<int>(path);
  }
  return -1;
}

int fls_avx512_bf16_loop_active(void) { return fls::Avx512Bf16LoopActive() ? 1 : 0; }

int fls_dtype_code(const char* name) {
  for (int code = 0; code < fls::kNumDTypes; ++code) {
    if (std::strcmp(name, fls::DTypeName(static_cast<fls::DType>(code))) == 0) return code;
  }
  return -1;
}

float fls_min_loss_scale(void) { return fls::kMinLossScale; }
float fls_max_loss_scale(void) { return fls::kMaxLossScale; }

int64_t fls_min_sharded_bytes(void) { return fls::kMinShardedBytes; }

int fls_squares_per_flush(void) { return fls::simd::kSquaresPerFlush; }

}  // extern "C"
