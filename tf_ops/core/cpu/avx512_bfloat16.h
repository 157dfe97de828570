// What the two AVX-512 bfloat16 loops share (simd_avx512.cc, integer rounding;
// simd_avx512_bf16.cc, VCVTNE2PS2BF16): setting NaN inputs' results. Included
// after scale_loop.h, compiled for the includer's FLS_SIMD_TARGET (NOTE [one
// target per translation unit]).
#ifndef FIXED_LOSS_SCALE_CORE_CPU_AVX512_BFLOAT16_H_
#define FIXED_LOSS_SCALE_CORE_CPU_AVX512_BFLOAT16_H_

#ifndef FLS_SIMD_INLINE
#error "include scale_loop.h first"
#endif

#include <immintrin.h>

namespace fixed_loss_scale {
namespace simd {
namespace {

// Where a bfloat16 input of `b` is NaN, sign|0x7fc0 instead of `rounded` (see
// simd_loops.h for NaN products).
FLS_SIMD_INLINE __m512i WithBFloat16NaNs(__m512i rounded, __m512i b) {
  const __m512i sign_bit = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
  const __mmask32 is_nan =
      _mm512_cmpgt_epu16_mask(_mm512_andnot_si512(sign_bit, b), _mm512_set1_epi16(0x7f80));
  if (__builtin_expect(is_nan == 0, 1)) return rounded;
  // (b & sign_bit) | 0x7fc0 in one instruction.
  const __m512i nan = _mm512_ternarylogic_epi32(b, sign_bit, _mm512_set1_epi16(0x7fc0), 0xea);
  return _mm512_mask_mov_epi16(rounded, is_nan, nan);
}

// 32 bfloat16 bits in one register: load, store, masked load and store.
struct BFloat16x32 {
  using Element = uint16_t;
  using Factor = float;
  using Vector = __m512i;
  using Multiplier = __m512;
  static constexpr int kLanes = 32;
  static constexpr int kUnroll = 2;
  static constexpr bool kMaskedTail = true;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return _mm512_set1_ps(f); }
  FLS_SIMD_INLINE static Vector Load(const uint16_t* p) { return _mm512_loadu_si512(p); }
  FLS_SIMD_INLINE static void Store(uint16_t* p, Vector v) { _mm512_storeu_si512(p, v); }
  FLS_SIMD_INLINE static Vector MaskedLoad(const uint16_t* p, int count) {
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << count) - 1), p);
  }
  FLS_SIMD_INLINE static void MaskedStore(uint16_t* p, int count, Vector v) {
    _mm512_mask_storeu_epi16(p, static_cast<__mmask32>((1ull << count) - 1), v);
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleBFloat16Bits(x, f); }
};

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_AVX512_BFLOAT16_H_
