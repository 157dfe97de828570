// The AVX2 loops of the fused updates: VectorUpdate (fused_update_loop.h) over
// 256-bit registers, 8 floats each, with a scalar remainder. Compiled with
// -ffp-contract=off (NOTE [fused update numerics]): the "fma" of the target
// only serves the instructions the compiler picks for loads and compares.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstdint>

// NOTE [one target per translation unit] (scale_loop.h).
#define FLS_SIMD_TARGET __attribute__((target("avx2,fma")))
#include "tf_ops/core/cpu/fused_update_loop.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The 256-bit float primitives of VectorUpdate.
struct FusedOps {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr bool kMasked = false;
  FLS_FUSED_INLINE static V Splat(float x) { return _mm256_set1_ps(x); }
  FLS_FUSED_INLINE static V LoadU(const float* p) { return _mm256_loadu_ps(p); }
  FLS_FUSED_INLINE static void StoreU(float* p, V v) { _mm256_storeu_ps(p, v); }
  FLS_FUSED_INLINE static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  FLS_FUSED_INLINE static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  FLS_FUSED_INLINE static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  FLS_FUSED_INLINE static V Div(V a, V b) { return _mm256_div_ps(a, b); }
  FLS_FUSED_INLINE static V Sqrt(V a) { return _mm256_sqrt_ps(a); }
  // fused::ScalarMath::Max's `a < b ? b : a`: maxps returns its second
  // operand where either is NaN.
  FLS_FUSED_INLINE static V Max(V a, V b) { return _mm256_max_ps(b, a); }
};

}  // namespace

extern const UpdateLoops kAvx2UpdateLoops = UpdateLoopsOf<VectorLoop<FusedOps>::template Of>();

}  // namespace simd
}  // namespace fixed_loss_scale

#endif
