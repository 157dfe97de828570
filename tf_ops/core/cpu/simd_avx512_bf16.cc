// The AVX512_BF16 bfloat16 loop: ScaleLoop (scale_loop.h) rounding with
// VCVTNE2PS2BF16, for threads whose MXCSR has FTZ and DAZ on (NOTE [bfloat16
// convert] in simd_loops.h). Its own translation unit, as the instruction needs
// its own target (NOTE [one target per translation unit]).
#include "tf_ops/core/cpu/simd_loops.h"

#if defined(FLS_HAVE_X86_SIMD)

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "tf_ops/core/scale_math.h"

#define FLS_SIMD_TARGET \
  __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512bf16")))
#include "tf_ops/core/cpu/scale_loop.h"
#include "tf_ops/core/cpu/scale_traits.h"
// (after scale_loop.h, which defines FLS_SIMD_INLINE)
#include "tf_ops/core/cpu/avx512_ops.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// Sixteen bfloat16 bits, zero-extended to 32-bit lanes, as floats.
FLS_SIMD_INLINE __m512 WidenBFloat16x16(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// BFloat16Traits (scale_traits.h) with the rounding of VCVTNE2PS2BF16, prefetched.
struct BFloat16ConvertTraits : BFloat16Traits<Ops> {
  static constexpr int kPrefetchBytes = kPrefetchBytes16;
  FLS_SIMD_INLINE static Vector Scale(Vector b, Multiplier m) {
    const __m512 low = _mm512_mul_ps(WidenBFloat16x16(_mm512_castsi512_si256(b)), m);
    const __m512 high = _mm512_mul_ps(WidenBFloat16x16(_mm512_extracti64x4_epi64(b, 1)), m);
    const __m512i rounded = (__m512i)_mm512_cvtne2ps_pbh(high, low);
    return Ops::WithBFloat16NaNs(rounded, b);
  }
};

}  // namespace

FLS_SIMD_TARGET void ScaleBFloat16ConvertLoop(const uint16_t* src, uint16_t* dst, int64_t n,
                                              float f) {
  ScaleLoop<BFloat16ConvertTraits>(src, dst, n, f);
}

FLS_SIMD_TARGET void ScaleAndCheckBFloat16ConvertLoop(const uint16_t* src, uint16_t* dst,
                                                      int64_t n, float f, ScaleCheck* check) {
  ScaleAndCheckLoop<BFloat16ConvertTraits, false>(src, dst, n, f, check);
}

FLS_SIMD_TARGET void ScaleAndCheckBFloat16ConvertLoopWithSquares(const uint16_t* src,
                                                                 uint16_t* dst, int64_t n,
                                                                 float f, ScaleCheck* check) {
  ScaleAndCheckLoop<BFloat16ConvertTraits, true>(src, dst, n, f, check);
}

FLS_SIMD_TARGET void CheckBFloat16ConvertLoop(const uint16_t* src, int64_t n, float f,
                                              ScaleCheck* check) {
  CheckLoop<BFloat16ConvertTraits, false>(src, n, f, check);
}

FLS_SIMD_TARGET void CheckBFloat16ConvertLoopWithSquares(const uint16_t* src, int64_t n, float f,
                                                         ScaleCheck* check) {
  CheckLoop<BFloat16ConvertTraits, true>(src, n, f, check);
}

bool CpuHasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif  // FLS_HAVE_X86_SIMD
