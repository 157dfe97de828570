// The AVX2 + F16C path: ScaleLoop (scale_loop.h) over 256-bit registers, 8
// floats each. No masked loads or stores: the remainder is scalar.
#include "tf_ops/core/cpu/simd_loops.h"

#if defined(FLS_HAVE_X86_SIMD)

#include <immintrin.h>

#include <cstdint>

#include "tf_ops/core/scale_math.h"

// NOTE [one target per translation unit] (scale_loop.h).
#define FLS_SIMD_TARGET __attribute__((target("avx2,f16c,fma")))
#include "tf_ops/core/cpu/scale_loop.h"
#include "tf_ops/core/cpu/scale_traits.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The 256-bit primitives of the traits templates of scale_traits.h.
struct Ops {
  static constexpr bool kMasked = false;
  FLS_SIMD_INLINE static __m256 Splat(float f) { return _mm256_set1_ps(f); }
  FLS_SIMD_INLINE static __m256d Splat(double f) { return _mm256_set1_pd(f); }
  FLS_SIMD_INLINE static __m256 LoadU(const float* p) { return _mm256_loadu_ps(p); }
  FLS_SIMD_INLINE static __m256d LoadU(const double* p) { return _mm256_loadu_pd(p); }
  FLS_SIMD_INLINE static void StoreU(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  FLS_SIMD_INLINE static void StoreU(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
  FLS_SIMD_INLINE static __m256 Mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
  FLS_SIMD_INLINE static __m256d Mul(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
  // The fused check (NOTE [fused check] in scale_loop.h): a register's bits,
  // their top 16-bit lanes' magnitudes maximised into `acc`, and the final
  // test; the squares (NOTE [sum of squares]) added with FMA, summed in float64.
  FLS_SIMD_INLINE static __m256i Bits(__m256 v) { return _mm256_castps_si256(v); }
  FLS_SIMD_INLINE static __m256i Bits(__m256d v) { return _mm256_castpd_si256(v); }
  FLS_SIMD_INLINE static __m128i MaxTop16(__m128i acc, __m128i bits, int64_t mask) {
    return _mm_max_epi16(acc, _mm_and_si128(bits, _mm_set1_epi64x(mask)));
  }
  FLS_SIMD_INLINE static __m256i MaxTop16(__m256i acc, __m256i bits, int64_t mask) {
    return _mm256_max_epi16(acc, _mm256_and_si256(bits, _mm256_set1_epi64x(mask)));
  }
  FLS_SIMD_INLINE static bool AnyTop16AtLeast(__m128i acc, int16_t limit) {
    const __m128i below = _mm_set1_epi16(static_cast<int16_t>(limit - 1));
    return _mm_movemask_epi8(_mm_cmpgt_epi16(acc, below)) != 0;
  }
  FLS_SIMD_INLINE static bool AnyTop16AtLeast(__m256i acc, int16_t limit) {
    const __m256i below = _mm256_set1_epi16(static_cast<int16_t>(limit - 1));
    return _mm256_movemask_epi8(_mm256_cmpgt_epi16(acc, below)) != 0;
  }
  FLS_SIMD_INLINE static __m256 MulAdd(__m256 a, __m256 b, __m256 c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  FLS_SIMD_INLINE static __m256d MulAdd(__m256d a, __m256d b, __m256d c) {
    return _mm256_fmadd_pd(a, b, c);
  }
  FLS_SIMD_INLINE static double SumAsDouble(__m256d v) {
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
  }
  FLS_SIMD_INLINE static double SumAsDouble(__m256 v) {
    const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    return SumAsDouble(_mm256_add_pd(low, high));
  }
  // Half: 8 in a 128-bit register, as 8 floats.
  static constexpr int kHalfLanes = 8;
  FLS_SIMD_INLINE static __m256 FloatsFromHalves(__m128i h) { return _mm256_cvtph_ps(h); }
  FLS_SIMD_INLINE static __m128i HalvesFromFloats(__m256 x) {
    return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // 8 (half) or 16 (bfloat16) 16-bit patterns (Bits16Storage).
  template <int kLanes>
  FLS_SIMD_INLINE static auto LoadBits(const uint16_t* p) {
    if constexpr (kLanes == 8) {
      return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    } else {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    }
  }
  FLS_SIMD_INLINE static void StoreBits(uint16_t* p, __m128i v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
  }
  FLS_SIMD_INLINE static void StoreBits(uint16_t* p, __m256i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  // bfloat16 (BFloat16Traits): 16 in a 256-bit register, prefetched.
  static constexpr int kBFloat16Lanes = 16;
  static constexpr int kBFloat16PrefetchBytes = kPrefetchBytes16;
  FLS_SIMD_INLINE static __m256 FloatsFromBFloat16Low(__m256i b) {
    return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), b));
  }
  FLS_SIMD_INLINE static __m256 FloatsFromBFloat16High(__m256i b) {
    return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), b));
  }
  FLS_SIMD_INLINE static __m256i RoundToBFloat16(__m256 products) {
    typedef uint32_t U32x8 __attribute__((vector_size(32)));
    return reinterpret_cast<__m256i>(RoundToBFloat16Bits(reinterpret_cast<U32x8>(products)));
  }
  FLS_SIMD_INLINE static __m256i PackLow16(__m256i a, __m256i b) {
    return _mm256_packus_epi32(a, b);
  }
  FLS_SIMD_INLINE static __m256i WithBFloat16NaNs(__m256i rounded, __m256i b) {
    const __m256i sign_bit = _mm256_set1_epi16(static_cast<int16_t>(0x8000));
    const __m256i is_nan =
        _mm256_cmpgt_epi16(_mm256_andnot_si256(sign_bit, b), _mm256_set1_epi16(0x7f80));
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(b, sign_bit), _mm256_set1_epi16(0x7fc0));
    return _mm256_blendv_epi8(rounded, nan, is_nan);
  }
};

}  // namespace

extern const PathLoops kAvx2Loops =
    PathLoopsOf<HalfTraits<Ops>, BFloat16Traits<Ops>, MultiplyTraits<float, Ops>,
                MultiplyTraits<double, Ops>>();

}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FLS_HAVE_X86_SIMD
