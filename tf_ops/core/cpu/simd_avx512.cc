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
#include "tf_ops/core/cpu/avx512_bfloat16.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

struct FloatTraits {
  using Element = float;
  using Factor = float;
  using Vector = __m512;
  using Multiplier = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = 0;
  static constexpr bool kMaskedTail = true;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return _mm512_set1_ps(f); }
  FLS_SIMD_INLINE static Vector Load(const float* p) { return _mm512_loadu_ps(p); }
  FLS_SIMD_INLINE static void Store(float* p, Vector v) { _mm512_storeu_ps(p, v); }
  FLS_SIMD_INLINE static Vector MaskedLoad(const float* p, int count) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
  }
  FLS_SIMD_INLINE static void MaskedStore(float* p, int count, Vector v) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
  }
  FLS_SIMD_INLINE static Vector Scale(Vector v, Multiplier m) { return _mm512_mul_ps(v, m); }
  static float ScaleOne(float x, float f) { return ScaleFloat(x, f); }
};

struct DoubleTraits {
  using Element = double;
  using Factor = double;
  using Vector = __m512d;
  using Multiplier = __m512d;
  static constexpr int kLanes = 8;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = 0;
  static constexpr bool kMaskedTail = true;
  FLS_SIMD_INLINE static Multiplier Broadcast(double f) { return _mm512_set1_pd(f); }
  FLS_SIMD_INLINE static Vector Load(const double* p) { return _mm512_loadu_pd(p); }
  FLS_SIMD_INLINE static void Store(double* p, Vector v) { _mm512_storeu_pd(p, v); }
  FLS_SIMD_INLINE static Vector MaskedLoad(const double* p, int count) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p);
  }
  FLS_SIMD_INLINE static void MaskedStore(double* p, int count, Vector v) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v);
  }
  FLS_SIMD_INLINE static Vector Scale(Vector v, Multiplier m) { return _mm512_mul_pd(v, m); }
  static double ScaleOne(double x, double f) { return ScaleDouble(x, f); }
};

// Sixteen halves in a 256-bit register, widened to one 512-bit float vector.
struct HalfTraits {
  using Element = uint16_t;
  using Factor = float;
  using Vector = __m256i;
  using Multiplier = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = kPrefetchBytes16;
  static constexpr bool kMaskedTail = true;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return _mm512_set1_ps(f); }
  FLS_SIMD_INLINE static Vector Load(const uint16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  FLS_SIMD_INLINE static void Store(uint16_t* p, Vector v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  FLS_SIMD_INLINE static Vector MaskedLoad(const uint16_t* p, int count) {
    return _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), p);
  }
  FLS_SIMD_INLINE static void MaskedStore(uint16_t* p, int count, Vector v) {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << count) - 1), v);
  }
  FLS_SIMD_INLINE static Vector Scale(Vector h, Multiplier m) {
    return _mm512_cvtps_ph(_mm512_mul_ps(_mm512_cvtph_ps(h), m),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleHalfBits(x, f); }
};

// Sixteen float products -> their bfloat16 bits rounded to nearest-even, in the
// low 16 bits of each 32-bit lane (NaNs are fixed by the caller).
FLS_SIMD_INLINE __m512i RoundToBFloat16(__m512 p) {
  const __m512i bits = _mm512_castps_si512(p);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd), 16);
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

extern const PathLoops kAvx512Loops = {ScaleLoop<HalfTraits>, ScaleLoop<BFloat16Traits>,
                                       ScaleLoop<FloatTraits>, ScaleLoop<DoubleTraits>};
extern const PathLoops kAvx512Bf16Loops = {ScaleLoop<HalfTraits>, ScaleBFloat16ConvertLoop,
                                           ScaleLoop<FloatTraits>, ScaleLoop<DoubleTraits>};

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif  // FLS_HAVE_X86_SIMD
