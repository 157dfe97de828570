// What the two AVX-512 translation units share (simd_avx512.cc and
// simd_avx512_bf16.cc): the 512-bit register primitives of the traits
// templates of scale_traits.h, with masks for the remainder. Included after
// scale_loop.h, compiled for the includer's FLS_SIMD_TARGET (NOTE [one target
// per translation unit]).
#ifndef FIXED_LOSS_SCALE_CORE_CPU_AVX512_OPS_H_
#define FIXED_LOSS_SCALE_CORE_CPU_AVX512_OPS_H_

#ifndef FLS_SIMD_INLINE
#error "include scale_loop.h first"
#endif

#include <immintrin.h>

#include <cstdint>

namespace fixed_loss_scale {
namespace simd {
namespace {

// The low `count` lanes.
constexpr uint32_t LowLanes(int count) { return static_cast<uint32_t>((1ull << count) - 1); }

struct Ops {
  static constexpr bool kMasked = true;
  FLS_SIMD_INLINE static __m512 Splat(float f) { return _mm512_set1_ps(f); }
  FLS_SIMD_INLINE static __m512d Splat(double f) { return _mm512_set1_pd(f); }
  FLS_SIMD_INLINE static __m512 LoadU(const float* p) { return _mm512_loadu_ps(p); }
  FLS_SIMD_INLINE static __m512d LoadU(const double* p) { return _mm512_loadu_pd(p); }
  FLS_SIMD_INLINE static void StoreU(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  FLS_SIMD_INLINE static void StoreU(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
  FLS_SIMD_INLINE static __m512 Mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  FLS_SIMD_INLINE static __m512d Mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
  FLS_SIMD_INLINE static __m512 MaskedLoadU(const float* p, int count) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(LowLanes(count)), p);
  }
  FLS_SIMD_INLINE static __m512d MaskedLoadU(const double* p, int count) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(LowLanes(count)), p);
  }
  FLS_SIMD_INLINE static void MaskedStoreU(float* p, int count, __m512 v) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>(LowLanes(count)), v);
  }
  FLS_SIMD_INLINE static void MaskedStoreU(double* p, int count, __m512d v) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(LowLanes(count)), v);
  }
  // The fused check (NOTE [fused check] in scale_loop.h): a register's bits,
  // their top 16-bit lanes' magnitudes maximised into `acc`, and the final
  // test; the squares (NOTE [sum of squares]) added with FMA, summed in float64.
  FLS_SIMD_INLINE static __m512i Bits(__m512 v) { return _mm512_castps_si512(v); }
  FLS_SIMD_INLINE static __m512i Bits(__m512d v) { return _mm512_castpd_si512(v); }
  FLS_SIMD_INLINE static __m256i MaxTop16(__m256i acc, __m256i bits, int64_t mask) {
    return _mm256_max_epi16(acc, _mm256_and_si256(bits, _mm256_set1_epi64x(mask)));
  }
  FLS_SIMD_INLINE static __m512i MaxTop16(__m512i acc, __m512i bits, int64_t mask) {
    return _mm512_max_epi16(acc, _mm512_and_si512(bits, _mm512_set1_epi64(mask)));
  }
  FLS_SIMD_INLINE static bool AnyTop16AtLeast(__m256i acc, int16_t limit) {
    return _mm256_cmpge_epi16_mask(acc, _mm256_set1_epi16(limit)) != 0;
  }
  FLS_SIMD_INLINE static bool AnyTop16AtLeast(__m512i acc, int16_t limit) {
    return _mm512_cmpge_epi16_mask(acc, _mm512_set1_epi16(limit)) != 0;
  }
  FLS_SIMD_INLINE static __m512 MulAdd(__m512 a, __m512 b, __m512 c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  FLS_SIMD_INLINE static __m512d MulAdd(__m512d a, __m512d b, __m512d c) {
    return _mm512_fmadd_pd(a, b, c);
  }
  FLS_SIMD_INLINE static double SumAsDouble(__m512d v) { return _mm512_reduce_add_pd(v); }
  FLS_SIMD_INLINE static double SumAsDouble(__m512 v) {
    const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d high =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return SumAsDouble(_mm512_add_pd(low, high));
  }
  // Half: 16 in a 256-bit register, as 16 floats.
  static constexpr int kHalfLanes = 16;
  FLS_SIMD_INLINE static __m512 FloatsFromHalves(__m256i h) { return _mm512_cvtph_ps(h); }
  FLS_SIMD_INLINE static __m256i HalvesFromFloats(__m512 x) {
    return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // 16 (half) or 32 (bfloat16) 16-bit patterns.
  template <int kLanes>
  FLS_SIMD_INLINE static auto LoadBits(const uint16_t* p) {
    if constexpr (kLanes == 16) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    } else {
      return _mm512_loadu_si512(p);
    }
  }
  template <int kLanes>
  FLS_SIMD_INLINE static auto MaskedLoadBits(const uint16_t* p, int count) {
    if constexpr (kLanes == 16) {
      return _mm256_maskz_loadu_epi16(static_cast<__mmask16>(LowLanes(count)), p);
    } else {
      return _mm512_maskz_loadu_epi16(static_cast<__mmask32>(LowLanes(count)), p);
    }
  }
  FLS_SIMD_INLINE static void StoreBits(uint16_t* p, __m256i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  FLS_SIMD_INLINE static void StoreBits(uint16_t* p, __m512i v) { _mm512_storeu_si512(p, v); }
  FLS_SIMD_INLINE static void MaskedStoreBits(uint16_t* p, int count, __m256i v) {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>(LowLanes(count)), v);
  }
  FLS_SIMD_INLINE static void MaskedStoreBits(uint16_t* p, int count, __m512i v) {
    _mm512_mask_storeu_epi16(p, static_cast<__mmask32>(LowLanes(count)), v);
  }
  // bfloat16 (BFloat16Traits): 32 in a 512-bit register, no prefetch (the
  // integer loop; the convert loop of simd_avx512_bf16.cc has one).
  static constexpr int kBFloat16Lanes = 32;
  static constexpr int kBFloat16PrefetchBytes = 0;
  FLS_SIMD_INLINE static __m512 FloatsFromBFloat16Low(__m512i b) {
    return _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), b));
  }
  FLS_SIMD_INLINE static __m512 FloatsFromBFloat16High(__m512i b) {
    return _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), b));
  }
  FLS_SIMD_INLINE static __m512i RoundToBFloat16(__m512 products) {
    typedef uint32_t U32x16 __attribute__((vector_size(64)));
    return reinterpret_cast<__m512i>(RoundToBFloat16Bits(reinterpret_cast<U32x16>(products)));
  }
  FLS_SIMD_INLINE static __m512i PackLow16(__m512i a, __m512i b) {
    return _mm512_packus_epi32(a, b);
  }
  // Where a bfloat16 input of `b` is NaN, sign|0x7fc0 instead of `rounded` (see
  // simd_loops.h for NaN products).
  FLS_SIMD_INLINE static __m512i WithBFloat16NaNs(__m512i rounded, __m512i b) {
    const __m512i sign_bit = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
    const __mmask32 is_nan =
        _mm512_cmpgt_epu16_mask(_mm512_andnot_si512(sign_bit, b), _mm512_set1_epi16(0x7f80));
    if (__builtin_expect(is_nan == 0, 1)) return rounded;
    // (b & sign_bit) | 0x7fc0 in one instruction.
    const __m512i nan = _mm512_ternarylogic_epi32(b, sign_bit, _mm512_set1_epi16(0x7fc0), 0xea);
    return _mm512_mask_mov_epi16(rounded, is_nan, nan);
  }
};

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_AVX512_OPS_H_
