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

namespace fixed_loss_scale {
namespace simd {
namespace {

struct FloatTraits {
  using Element = float;
  using Factor = float;
  using Vector = __m256;
  using Multiplier = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = 0;
  static constexpr bool kMaskedTail = false;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return _mm256_set1_ps(f); }
  FLS_SIMD_INLINE static Vector Load(const float* p) { return _mm256_loadu_ps(p); }
  FLS_SIMD_INLINE static void Store(float* p, Vector v) { _mm256_storeu_ps(p, v); }
  FLS_SIMD_INLINE static Vector Scale(Vector v, Multiplier m) { return _mm256_mul_ps(v, m); }
  static float ScaleOne(float x, float f) { return ScaleFloat(x, f); }
};

struct DoubleTraits {
  using Element = double;
  using Factor = double;
  using Vector = __m256d;
  using Multiplier = __m256d;
  static constexpr int kLanes = 4;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = 0;
  static constexpr bool kMaskedTail = false;
  FLS_SIMD_INLINE static Multiplier Broadcast(double f) { return _mm256_set1_pd(f); }
  FLS_SIMD_INLINE static Vector Load(const double* p) { return _mm256_loadu_pd(p); }
  FLS_SIMD_INLINE static void Store(double* p, Vector v) { _mm256_storeu_pd(p, v); }
  FLS_SIMD_INLINE static Vector Scale(Vector v, Multiplier m) { return _mm256_mul_pd(v, m); }
  static double ScaleOne(double x, double f) { return ScaleDouble(x, f); }
};

// What the half and bfloat16 loops share: the bits as uint16_t, the math in float.
struct Bits16 {
  using Element = uint16_t;
  using Factor = float;
  using Multiplier = __m256;
  static constexpr int kPrefetchBytes = kPrefetchBytes16;
  static constexpr bool kMaskedTail = false;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return _mm256_set1_ps(f); }
};

struct HalfTraits : Bits16 {
  using Vector = __m128i;
  static constexpr int kLanes = 8;
  static constexpr int kUnroll = 4;
  FLS_SIMD_INLINE static Vector Load(const uint16_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  FLS_SIMD_INLINE static void Store(uint16_t* p, Vector v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
  }
  FLS_SIMD_INLINE static Vector Scale(Vector h, Multiplier m) {
    return _mm256_cvtps_ph(_mm256_mul_ps(_mm256_cvtph_ps(h), m),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleHalfBits(x, f); }
};

// Eight float products -> their bfloat16 bits rounded to nearest-even, in the
// low 16 bits of each 32-bit lane (NaNs are fixed by the caller).
FLS_SIMD_INLINE __m256i RoundToBFloat16(__m256 p) {
  const __m256i bits = _mm256_castps_si256(p);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd), 16);
}

struct BFloat16Traits : Bits16 {
  using Vector = __m256i;
  static constexpr int kLanes = 16;
  static constexpr int kUnroll = 2;
  FLS_SIMD_INLINE static Vector Load(const uint16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  FLS_SIMD_INLINE static void Store(uint16_t* p, Vector v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  // Sixteen bfloat16 -> float -> * f -> bfloat16. Interleaving with zero widens
  // each bfloat16 into the high half of a float with no cross-lane shuffle; the
  // unpacks and packus all work per 128-bit lane, so packus puts every result
  // back in its input's place (values <= 0xffff: nothing saturates), with about
  // half the instructions of widening with cvtepu16 and re-ordering with a
  // permute.
  FLS_SIMD_INLINE static Vector Scale(Vector b, Multiplier m) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256 low = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, b));
    const __m256 high = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, b));
    const __m256i rounded = _mm256_packus_epi32(RoundToBFloat16(_mm256_mul_ps(low, m)),
                                                RoundToBFloat16(_mm256_mul_ps(high, m)));
    // NaN inputs (see simd_loops.h for NaN products): sign|0x7fc0.
    const __m256i sign_bit = _mm256_set1_epi16(static_cast<int16_t>(0x8000));
    const __m256i is_nan =
        _mm256_cmpgt_epi16(_mm256_andnot_si256(sign_bit, b), _mm256_set1_epi16(0x7f80));
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(b, sign_bit), _mm256_set1_epi16(0x7fc0));
    return _mm256_blendv_epi8(rounded, nan, is_nan);
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleBFloat16Bits(x, f); }
};

}  // namespace

extern const PathLoops kAvx2Loops = {ScaleLoop<HalfTraits>, ScaleLoop<BFloat16Traits>,
                                     ScaleLoop<FloatTraits>, ScaleLoop<DoubleTraits>};

}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FLS_HAVE_X86_SIMD
