// The AVX-512 loops of the fused updates: VectorUpdate (fused_update_loop.h)
// over 512-bit registers, 16 floats each, with a masked remainder. Compiled
// with -ffp-contract=off (NOTE [fused update numerics]).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

// GCC 12 reports its own _mm512_undefined_* helpers as maybe-uninitialized
// wherever they are inlined (as simd_avx512.cc).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

// NOTE [one target per translation unit] (scale_loop.h).
#define FLS_SIMD_TARGET __attribute__((target("avx2,fma,avx512f")))
#include "tf_ops/core/cpu/fused_update_loop.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The 512-bit float primitives of VectorUpdate; the remainder's lanes by mask.
struct FusedOps {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr bool kMasked = true;
  FLS_FUSED_INLINE static __mmask16 Lanes(int count) {
    return static_cast<__mmask16>((1u << count) - 1u);
  }
  FLS_FUSED_INLINE static V Splat(float x) { return _mm512_set1_ps(x); }
  FLS_FUSED_INLINE static V LoadU(const float* p) { return _mm512_loadu_ps(p); }
  FLS_FUSED_INLINE static void StoreU(float* p, V v) { _mm512_storeu_ps(p, v); }
  FLS_FUSED_INLINE static V MaskedLoadU(const float* p, int count) {
    return _mm512_maskz_loadu_ps(Lanes(count), p);
  }
  FLS_FUSED_INLINE static void MaskedStoreU(float* p, int count, V v) {
    _mm512_mask_storeu_ps(p, Lanes(count), v);
  }
  FLS_FUSED_INLINE static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  FLS_FUSED_INLINE static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  FLS_FUSED_INLINE static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  FLS_FUSED_INLINE static V Div(V a, V b) { return _mm512_div_ps(a, b); }
  FLS_FUSED_INLINE static V Sqrt(V a) { return _mm512_sqrt_ps(a); }
  // fused::ScalarMath::Max's `a < b ? b : a`: maxps returns its second
  // operand where either is NaN.
  FLS_FUSED_INLINE static V Max(V a, V b) { return _mm512_max_ps(b, a); }
};

}  // namespace

extern const UpdateLoops kAvx512UpdateLoops =
    UpdateLoopsOf<VectorLoop<FusedOps>::template Of>();

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif
