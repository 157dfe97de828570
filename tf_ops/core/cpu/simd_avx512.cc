// The AVX-512 path (F, BW, VL): ScaleLoop (scale_loop.h) over 512-bit
// registers, 16 floats each, with a masked remainder. Its bfloat16 loop rounds
// in integer lanes, the only way that gives the scalar results in IEEE mode;
// kAvx512Bf16Loops swaps in the convert loop of simd_avx512_bf16.cc.
#include "tf_ops/core/cpu/simd_loops.h"

#if defined(FLS_HAVE_X86_SIMD)

// GCC 12 reports its own _mm512_undefined_* helpers as maybe-uninitialized
// wherever they are inlined; the warning is about the compiler's header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "tf_ops/core/scale_math.h"

// NOTE [one target per translation unit] (scale_loop.h).
#define FLS_SIMD_TARGET __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl")))
#include "tf_ops/core/cpu/scale_loop.h"
// (after scale_loop.h, which defines FLS_SIMD_INLINE)
#include "tf_ops/core/cpu/avx512_ops.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// Sixteen float products -> their bfloat16 bits, in the low half of each lane.
FLS_SIMD_INLINE __m512i RoundToBFloat16(__m512 p) {
  typedef uint32_t U32x16 __attribute__((vector_size(64)));
  return reinterpret_cast<__m512i>(RoundToBFloat16Bits(reinterpret_cast<U32x16>(p)));
}

// 32 bfloat16 -> float -> * f -> bfloat16 in integer lanes: widened by
// interleaving with zero and narrowed by packus per 128-bit lane, as the AVX2
// loop does (faster than cvtepu16 / cvtepi32_epi16: docs/BENCHMARKS.md, "CPU
// loops"). No software prefetch.
struct BFloat16Traits : BFloat16x32 {
  static constexpr int kPrefetchBytes = 0;
  FLS_SIMD_INLINE static Vector Scale(Vector b, Multiplier m) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512 low = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, b));
    const __m512 high = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, b));
    const __m512i rounded = _mm512_packus_epi32(RoundToBFloat16(_mm512_mul_ps(low, m)),
                                                RoundToBFloat16(_mm512_mul_ps(high, m)));
    return WithBFloat16NaNs(rounded, b);
  }
};

}  // namespace

extern const PathLoops kAvx512Loops = {ScaleLoop<HalfTraits<Ops>>, ScaleLoop<BFloat16Traits>,
                                       ScaleLoop<MultiplyTraits<float, Ops>>,
                                       ScaleLoop<MultiplyTraits<double, Ops>>};
extern const PathLoops kAvx512Bf16Loops = {ScaleLoop<HalfTraits<Ops>>, ScaleBFloat16ConvertLoop,
                                           ScaleLoop<MultiplyTraits<float, Ops>>,
                                           ScaleLoop<MultiplyTraits<double, Ops>>};

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif  // FLS_HAVE_X86_SIMD
