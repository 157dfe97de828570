// x86 SIMD loops for the CPU core (multi_tensor_scale_cpu.cc): the same results,
// bit for bit, as the scalar element functions of scale_math.h, for every input
// and under both MXCSR states TensorFlow uses (flush-to-zero/denormals-are-zero
// on or off). Compiled with per-function `target` attributes, so the library
// keeps running on any x86-64; the caller picks a level at run time.
//
// Why these instructions give the scalar results (tests/test_simd_paths.py checks
// every half and bfloat16 pattern):
// - float/double: the scale factor is never NaN, and an x86 multiply with one
//   NaN operand returns that NaN quietened, which is ScaleFloat/ScaleDouble.
//   FTZ/DAZ act on the vector multiply exactly as on the scalar one.
// - half: VCVTPH2PS widens exactly (half subnormals become normal floats, DAZ is
//   not applied to half inputs; a signalling NaN is quietened with its payload, as
//   ScaleFloat does after HalfBitsToFloat). VCVTPS2PH with an explicit
//   round-to-nearest-even immediate narrows like FloatToHalfBits: overflow to Inf,
//   NaN quiet with the top payload bits. Float subnormal products (possible only
//   without FTZ) are below half's rounding range and give +-0 either way.
// - bfloat16: done in integer lanes (shift, multiply, ties-to-even add, NaN ->
//   sign|0x7fc0), the same operations as FloatToBFloat16Bits. The AVX512_BF16
//   convert instruction always flushes float subnormals, which the scalar code
//   does only under FTZ, so it is used only while FTZ and DAZ are on (NOTE
//   [bfloat16 convert]). The loops find NaNs among the inputs rather than the
//   products: a NaN product from a non-NaN input (Inf times a factor of 0, a
//   subnormal factor under DAZ) is x86's default NaN 0xffc00000, which the
//   rounding add turns into 0xffc0, the scalar result, and which the convert
//   instruction turns into 0xffc0 too.
#ifndef FIXED_LOSS_SCALE_SCALE_SIMD_X86_H_
#define FIXED_LOSS_SCALE_SCALE_SIMD_X86_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLS_HAVE_X86_SIMD 1

// GCC 12 reports its own _mm512_undefined_* helpers as maybe-uninitialized
// wherever they are inlined; the warning is about the compiler's header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "tf_ops/cc/kernels/scale_math.h"

namespace fixed_loss_scale {
namespace simd {

#define FLS_TARGET_AVX2 __attribute__((target("avx2,f16c,fma")))
#define FLS_TARGET_AVX512 __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl")))

// Each loop handles elements [0, n) of src/dst (which may alias exactly): first
// the elements before dst's next 64-byte boundary, then whole vectors, then the
// remainder; the scalar functions used for the head and the remainder give the
// same bits. Shards start anywhere inside a tensor (NOTE [byte sharding]), and
// vectors that straddle cache lines cost ~10% of memory bandwidth (measured on
// a 128 MB float32 tensor with 64-byte vectors).

// Elements before `dst` reaches a 64-byte boundary, at most n.
template <typename T>
inline int64_t HeadToAlign(const T* dst, int64_t n) {
  const uintptr_t misalignment = reinterpret_cast<uintptr_t>(dst) & 63u;
  if (misalignment == 0 || misalignment % sizeof(T) != 0) return 0;
  const int64_t head = static_cast<int64_t>((64u - misalignment) / sizeof(T));
  return head < n ? head : n;
}

// ---- AVX2 + F16C: 8 floats per register -----------------------------------------

FLS_TARGET_AVX2 inline void ScaleFloatAvx2(const float* src, float* dst, int64_t n, float f) {
  const __m256 vf = _mm256_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleFloat(src[i], f);
  for (; i + 32 <= n; i += 32) {
    const __m256 a = _mm256_loadu_ps(src + i);
    const __m256 b = _mm256_loadu_ps(src + i + 8);
    const __m256 c = _mm256_loadu_ps(src + i + 16);
    const __m256 d = _mm256_loadu_ps(src + i + 24);
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(a, vf));
    _mm256_storeu_ps(dst + i + 8, _mm256_mul_ps(b, vf));
    _mm256_storeu_ps(dst + i + 16, _mm256_mul_ps(c, vf));
    _mm256_storeu_ps(dst + i + 24, _mm256_mul_ps(d, vf));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), vf));
  for (; i < n; ++i) dst[i] = ScaleFloat(src[i], f);
}

FLS_TARGET_AVX2 inline void ScaleDoubleAvx2(const double* src, double* dst, int64_t n, double f) {
  const __m256d vf = _mm256_set1_pd(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleDouble(src[i], f);
  for (; i + 16 <= n; i += 16) {
    const __m256d a = _mm256_loadu_pd(src + i);
    const __m256d b = _mm256_loadu_pd(src + i + 4);
    const __m256d c = _mm256_loadu_pd(src + i + 8);
    const __m256d d = _mm256_loadu_pd(src + i + 12);
    _mm256_storeu_pd(dst + i, _mm256_mul_pd(a, vf));
    _mm256_storeu_pd(dst + i + 4, _mm256_mul_pd(b, vf));
    _mm256_storeu_pd(dst + i + 8, _mm256_mul_pd(c, vf));
    _mm256_storeu_pd(dst + i + 12, _mm256_mul_pd(d, vf));
  }
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(dst + i, _mm256_mul_pd(_mm256_loadu_pd(src + i), vf));
  for (; i < n; ++i) dst[i] = ScaleDouble(src[i], f);
}

// NOTE [16-bit prefetch]: the 16-bit loops move half the bytes per instruction
// of the float loop, so the out-of-order window reaches fewer cache lines ahead
// and the hardware prefetcher alone left them at ~67-82% of float32's GB/s from
// L3 and memory (AVX2, Zen 3, one thread). A software prefetch this far ahead
// of src brings them to ~90-110%; on the float32 loop the same prefetch cost ~20%,
// so it has none. Prefetches never fault, past the end of src included.
constexpr int kPrefetchBytes16 = 2048;

FLS_TARGET_AVX2 inline __m128i ScaleHalf8Avx2(__m128i h, __m256 vf) {
  return _mm256_cvtps_ph(_mm256_mul_ps(_mm256_cvtph_ps(h), vf),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

FLS_TARGET_AVX2 inline void ScaleHalfAvx2(const uint16_t* src, uint16_t* dst, int64_t n, float f) {
  const __m256 vf = _mm256_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleHalfBits(src[i], f);
  for (; i + 32 <= n; i += 32) {
    // See NOTE [16-bit prefetch].
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes16, _MM_HINT_T0);
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 8));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 24));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), ScaleHalf8Avx2(a, vf));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 8), ScaleHalf8Avx2(b, vf));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 16), ScaleHalf8Avx2(c, vf));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 24), ScaleHalf8Avx2(d, vf));
  }
  for (; i + 8 <= n; i += 8) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), ScaleHalf8Avx2(a, vf));
  }
  for (; i < n; ++i) dst[i] = ScaleHalfBits(src[i], f);
}

// Eight float products -> their bfloat16 bits rounded to nearest-even, in the
// low 16 bits of each 32-bit lane (NaNs are fixed by the caller).
FLS_TARGET_AVX2 inline __m256i RoundToBFloat16Avx2(__m256 p) {
  const __m256i bits = _mm256_castps_si256(p);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd), 16);
}

// Sixteen bfloat16 -> float -> * f -> bfloat16. Interleaving with zero widens
// each bfloat16 into the high half of a float with no cross-lane shuffle; the
// unpacks and packus all work per 128-bit lane, so packus puts every result
// back in its input's place (values <= 0xffff: nothing saturates). ~2x fewer
// instructions than widening with cvtepu16 and re-ordering with a permute.
FLS_TARGET_AVX2 inline __m256i ScaleBFloat16x16Avx2(__m256i b, __m256 vf) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256 low = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, b));
  const __m256 high = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, b));
  const __m256i rounded = _mm256_packus_epi32(RoundToBFloat16Avx2(_mm256_mul_ps(low, vf)),
                                              RoundToBFloat16Avx2(_mm256_mul_ps(high, vf)));
  // NaN inputs (see the header comment for NaN products): sign|0x7fc0.
  const __m256i sign_bit = _mm256_set1_epi16(static_cast<int16_t>(0x8000));
  const __m256i is_nan =
      _mm256_cmpgt_epi16(_mm256_andnot_si256(sign_bit, b), _mm256_set1_epi16(0x7f80));
  const __m256i nan = _mm256_or_si256(_mm256_and_si256(b, sign_bit), _mm256_set1_epi16(0x7fc0));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}

FLS_TARGET_AVX2 inline void ScaleBFloat16Avx2(const uint16_t* src, uint16_t* dst, int64_t n,
                                              float f) {
  const __m256 vf = _mm256_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleBFloat16Bits(src[i], f);
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes16, _MM_HINT_T0);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), ScaleBFloat16x16Avx2(a, vf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 16), ScaleBFloat16x16Avx2(b, vf));
  }
  for (; i + 16 <= n; i += 16) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), ScaleBFloat16x16Avx2(a, vf));
  }
  for (; i < n; ++i) dst[i] = ScaleBFloat16Bits(src[i], f);
}

// ---- AVX-512: 16 floats per register ------------------------------------------

FLS_TARGET_AVX512 inline void ScaleFloatAvx512(const float* src, float* dst, int64_t n, float f) {
  const __m512 vf = _mm512_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleFloat(src[i], f);
  for (; i + 64 <= n; i += 64) {
    const __m512 a = _mm512_loadu_ps(src + i);
    const __m512 b = _mm512_loadu_ps(src + i + 16);
    const __m512 c = _mm512_loadu_ps(src + i + 32);
    const __m512 d = _mm512_loadu_ps(src + i + 48);
    _mm512_storeu_ps(dst + i, _mm512_mul_ps(a, vf));
    _mm512_storeu_ps(dst + i + 16, _mm512_mul_ps(b, vf));
    _mm512_storeu_ps(dst + i + 32, _mm512_mul_ps(c, vf));
    _mm512_storeu_ps(dst + i + 48, _mm512_mul_ps(d, vf));
  }
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(src + i), vf));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src + i), vf));
  }
}

FLS_TARGET_AVX512 inline void ScaleDoubleAvx512(const double* src, double* dst, int64_t n,
                                                double f) {
  const __m512d vf = _mm512_set1_pd(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleDouble(src[i], f);
  for (; i + 32 <= n; i += 32) {
    const __m512d a = _mm512_loadu_pd(src + i);
    const __m512d b = _mm512_loadu_pd(src + i + 8);
    const __m512d c = _mm512_loadu_pd(src + i + 16);
    const __m512d d = _mm512_loadu_pd(src + i + 24);
    _mm512_storeu_pd(dst + i, _mm512_mul_pd(a, vf));
    _mm512_storeu_pd(dst + i + 8, _mm512_mul_pd(b, vf));
    _mm512_storeu_pd(dst + i + 16, _mm512_mul_pd(c, vf));
    _mm512_storeu_pd(dst + i + 24, _mm512_mul_pd(d, vf));
  }
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(dst + i, _mm512_mul_pd(_mm512_loadu_pd(src + i), vf));
  if (i < n) {
    const __mmask8 m = static_cast<__mmask8>((1u << (n - i)) - 1);
    _mm512_mask_storeu_pd(dst + i, m, _mm512_mul_pd(_mm512_maskz_loadu_pd(m, src + i), vf));
  }
}

FLS_TARGET_AVX512 inline __m256i ScaleHalf16Avx512(__m256i h, __m512 vf) {
  return _mm512_cvtps_ph(_mm512_mul_ps(_mm512_cvtph_ps(h), vf),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

FLS_TARGET_AVX512 inline void ScaleHalfAvx512(const uint16_t* src, uint16_t* dst, int64_t n,
                                              float f) {
  const __m512 vf = _mm512_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleHalfBits(src[i], f);
  for (; i + 64 <= n; i += 64) {
    // See NOTE [16-bit prefetch]: no gain on an earlier Xeon guest; on a
    // later one (same CPU model, slower memory), one thread, the loop A/B'd
    // call by call in one process: 64 MB 14.8-15.2 -> 16.9-17.1 GB/s (float32
    // 18.0), 1 MB 43.5 -> 53.3 GB/s.
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes16, _MM_HINT_T0);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 16));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 48));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), ScaleHalf16Avx512(a, vf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 16), ScaleHalf16Avx512(b, vf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 32), ScaleHalf16Avx512(c, vf));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 48), ScaleHalf16Avx512(d, vf));
  }
  for (; i + 16 <= n; i += 16) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), ScaleHalf16Avx512(a, vf));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256i a = _mm256_maskz_loadu_epi16(m, src + i);
    _mm256_mask_storeu_epi16(dst + i, m, ScaleHalf16Avx512(a, vf));
  }
}

// Sixteen float products -> their bfloat16 bits rounded to nearest-even, in the
// low 16 bits of each 32-bit lane (NaNs are fixed by the caller).
FLS_TARGET_AVX512 inline __m512i RoundToBFloat16Avx512(__m512 p) {
  const __m512i bits = _mm512_castps_si512(p);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd), 16);
}

// Where a bfloat16 input is NaN, sign|0x7fc0 instead of `rounded` (see the
// header comment for NaN products).
FLS_TARGET_AVX512 inline __m512i WithBFloat16NaNsAvx512(__m512i rounded, __m512i b) {
  const __m512i sign_bit = _mm512_set1_epi16(static_cast<int16_t>(0x8000));
  const __mmask32 is_nan =
      _mm512_cmpgt_epu16_mask(_mm512_andnot_si512(sign_bit, b), _mm512_set1_epi16(0x7f80));
  if (__builtin_expect(is_nan == 0, 1)) return rounded;
  // (b & sign_bit) | 0x7fc0 in one instruction.
  const __m512i nan = _mm512_ternarylogic_epi32(b, sign_bit, _mm512_set1_epi16(0x7fc0), 0xea);
  return _mm512_mask_mov_epi16(rounded, is_nan, nan);
}

// 32 bfloat16 -> float -> * f -> bfloat16, in integer lanes: widened by
// interleaving with zero and narrowed by packus per 128-bit lane, as
// ScaleBFloat16x16Avx2. 1.3-1.4x the speed of widening with cvtepu16 and
// narrowing with cvtepi32_epi16 (one thread, Xeon with AVX-512: 37 -> 48 GB/s
// from L2, 11.6 -> 14.6 GB/s from memory).
FLS_TARGET_AVX512 inline __m512i ScaleBFloat16x32Avx512(__m512i b, __m512 vf) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512 low = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, b));
  const __m512 high = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, b));
  const __m512i rounded = _mm512_packus_epi32(RoundToBFloat16Avx512(_mm512_mul_ps(low, vf)),
                                              RoundToBFloat16Avx512(_mm512_mul_ps(high, vf)));
  return WithBFloat16NaNsAvx512(rounded, b);
}

// NOTE [bfloat16 convert]: AVX512_BF16's VCVTNE2PS2BF16 rounds two float
// vectors to 32 bfloat16 to nearest-even in one instruction, where the integer
// rounding takes eleven. It always flushes float subnormals to zero and
// ignores MXCSR, so it gives the scalar results only while MXCSR has
// flush-to-zero and denormals-are-zero on (then the products are never
// subnormal), which is how TensorFlow runs its CPU kernels; NaNs are still set
// from the inputs. Measured on one thread of a Xeon with AVX-512: 64-70 GB/s
// from L2 against 48 for the integer loop (half: 80-87), 17.5-21 GB/s from
// memory against 14.6 (half: 20-24).
#define FLS_TARGET_AVX512_BF16 \
  __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512bf16")))

inline bool CpuHasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

inline bool MxcsrFlushesSubnormals() {
  constexpr unsigned int kFtzDaz = 0x8040u;
  return (_mm_getcsr() & kFtzDaz) == kFtzDaz;
}

FLS_TARGET_AVX512_BF16 inline __m512 WidenBFloat16x16(const uint16_t* src) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

FLS_TARGET_AVX512_BF16 inline __m512i ScaleBFloat16x32Bf16(const uint16_t* src, __m512 vf) {
  const __m512 low = _mm512_mul_ps(WidenBFloat16x16(src), vf);
  const __m512 high = _mm512_mul_ps(WidenBFloat16x16(src + 16), vf);
  const __m512i rounded = (__m512i)_mm512_cvtne2ps_pbh(high, low);
  return WithBFloat16NaNsAvx512(rounded, _mm512_loadu_si512(src));
}

// The integer loop, the only one that gives the scalar results in IEEE mode.
FLS_TARGET_AVX512 inline void ScaleBFloat16Avx512(const uint16_t* src, uint16_t* dst, int64_t n,
                                                  float f) {
  const __m512 vf = _mm512_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleBFloat16Bits(src[i], f);
  for (; i + 64 <= n; i += 64) {
    const __m512i a = _mm512_loadu_si512(src + i);
    const __m512i b = _mm512_loadu_si512(src + i + 32);
    _mm512_storeu_si512(dst + i, ScaleBFloat16x32Avx512(a, vf));
    _mm512_storeu_si512(dst + i + 32, ScaleBFloat16x32Avx512(b, vf));
  }
  for (; i + 32 <= n; i += 32) {
    _mm512_storeu_si512(dst + i, ScaleBFloat16x32Avx512(_mm512_loadu_si512(src + i), vf));
  }
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((1u << (n - i)) - 1);
    const __m512i a = _mm512_maskz_loadu_epi16(m, src + i);
    _mm512_mask_storeu_epi16(dst + i, m, ScaleBFloat16x32Avx512(a, vf));
  }
}

// The VCVTNE2PS2BF16 loop, for threads whose MXCSR has FTZ and DAZ on (NOTE
// [bfloat16 convert]); the caller checks that once per call, not per tensor.
// One function with the whole loop, head and tail included, so nothing is
// called or spilled per tensor: as a separate block loop called from the
// integer one, a 256-element tensor cost ~19 ns more than its bytes (100 of
// them: 5.3 us against 3.4 for float32, one thread, data in L2).
FLS_TARGET_AVX512_BF16 inline void ScaleBFloat16Avx512Bf16(const uint16_t* src, uint16_t* dst,
                                                           int64_t n, float f) {
  const __m512 vf = _mm512_set1_ps(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = ScaleBFloat16Bits(src[i], f);
  for (; i + 64 <= n; i += 64) {
    // See NOTE [16-bit prefetch]: one thread, bfloat16 from memory 19.5-20 ->
    // 21.6-23.7 GB/s.
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + kPrefetchBytes16, _MM_HINT_T0);
    const __m512i a = ScaleBFloat16x32Bf16(src + i, vf);
    const __m512i b = ScaleBFloat16x32Bf16(src + i + 32, vf);
    _mm512_storeu_si512(dst + i, a);
    _mm512_storeu_si512(dst + i + 32, b);
  }
  for (; i + 32 <= n; i += 32) _mm512_storeu_si512(dst + i, ScaleBFloat16x32Bf16(src + i, vf));
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((1u << (n - i)) - 1);
    const __m512i a = _mm512_maskz_loadu_epi16(m, src + i);
    _mm512_mask_storeu_epi16(dst + i, m, ScaleBFloat16x32Avx512(a, vf));
  }
}

#undef FLS_TARGET_AVX2
#undef FLS_TARGET_AVX512
#undef FLS_TARGET_AVX512_BF16

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif  // x86-64 with GCC or Clang
#endif  // FIXED_LOSS_SCALE_SCALE_SIMD_X86_H_
