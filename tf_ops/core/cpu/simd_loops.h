// The element loops of the CPU core, one table per path (NOTE [CPU paths] in
// multi_tensor_scale_cpu.h): the portable scalar loops, and on x86-64 the AVX2+F16C
// and AVX-512 loops, each ScaleLoop<Traits> (scale_loop.h) compiled in its own
// translation unit for its ISA (simd_avx2.cc, simd_avx512.cc,
// simd_avx512_bf16.cc). The library keeps running on any x86-64; the caller
// picks a table at run time.
//
// Why the vector instructions give the scalar results, bit for bit, for every
// input and under both MXCSR states TensorFlow uses (flush-to-zero and
// denormals-are-zero on or off); tests/test_simd_paths.py checks every half and
// bfloat16 pattern:
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
//
// NOTE [16-bit prefetch]: the 16-bit loops move half the bytes per instruction
// of the float loop, so the out-of-order window reaches fewer cache lines ahead
// and the hardware prefetcher alone leaves them short of float32's GB/s from L3
// and memory. A software prefetch kPrefetchBytes16 ahead of src brings them
// close; on the float32 loop the same prefetch was a loss, so it has none.
// Which loop has it, and the measurements: docs/BENCHMARKS.md, "CPU loops".
//
// NOTE [bfloat16 convert]: AVX512_BF16's VCVTNE2PS2BF16 rounds two float
// vectors to 32 bfloat16 to nearest-even in one instruction, where the integer
// rounding takes eleven. It always flushes float subnormals to zero and
// ignores MXCSR, so it gives the scalar results only while MXCSR has
// flush-to-zero and denormals-are-zero on (then the products are never
// subnormal), which is how TensorFlow runs its CPU kernels; NaNs are still set
// from the inputs. The caller checks MXCSR once per call, not per tensor.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_SIMD_LOOPS_H_
#define FIXED_LOSS_SCALE_CORE_CPU_SIMD_LOOPS_H_

#include <cstdint>

#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"

namespace fixed_loss_scale {
namespace simd {

// One checked loop per storage type (ScaleAndCheckByteRange): the unchecked
// loop's outputs, folded into *check (NOTE [fused check] in scale_loop.h).
struct CheckedLoops {
  void (*half)(const uint16_t* src, uint16_t* dst, int64_t n, float f, ScaleCheck* check);
  void (*bfloat16)(const uint16_t* src, uint16_t* dst, int64_t n, float f, ScaleCheck* check);
  void (*float32)(const float* src, float* dst, int64_t n, float f, ScaleCheck* check);
  void (*float64)(const double* src, double* dst, int64_t n, double f, ScaleCheck* check);
};

// One check-only loop per storage type (CheckByteRange): the checked loop's
// *check, nothing written (NOTE [check without store] in scale_loop.h).
struct CheckOnlyLoops {
  void (*half)(const uint16_t* src, int64_t n, float f, ScaleCheck* check);
  void (*bfloat16)(const uint16_t* src, int64_t n, float f, ScaleCheck* check);
  void (*float32)(const float* src, int64_t n, float f, ScaleCheck* check);
  void (*float64)(const double* src, int64_t n, double f, ScaleCheck* check);
};

// One loop per storage type, over elements [0, n) of src/dst, and the checked
// and check-only loops: the finite test alone, and with the sum of squares.
struct PathLoops {
  void (*half)(const uint16_t* src, uint16_t* dst, int64_t n, float f);
  void (*bfloat16)(const uint16_t* src, uint16_t* dst, int64_t n, float f);
  void (*float32)(const float* src, float* dst, int64_t n, float f);
  void (*float64)(const double* src, double* dst, int64_t n, double f);
  CheckedLoops checked;
  CheckedLoops checked_with_squares;
  CheckOnlyLoops check_only;
  CheckOnlyLoops check_only_with_squares;
};

// The table of one path from `L`, its loop templates' addresses (kScale<E>,
// kChecked<E, kSumOfSquares>, kCheckOnly<E, kSumOfSquares>: VectorLoops in
// scale_loop.h, ScalarLoops in multi_tensor_scale_cpu.cc), and its four element
// types (traits) H, B, F, D: half, bfloat16, float, double.
template <typename L, bool kSq, typename H, typename B, typename F, typename D>
constexpr CheckedLoops CheckedLoopsOf() {
  return {L::template kChecked<H, kSq>, L::template kChecked<B, kSq>,
          L::template kChecked<F, kSq>, L::template kChecked<D, kSq>};
}
template <typename L, bool kSq, typename H, typename B, typename F, typename D>
constexpr CheckOnlyLoops CheckOnlyLoopsOf() {
  return {L::template kCheckOnly<H, kSq>, L::template kCheckOnly<B, kSq>,
          L::template kCheckOnly<F, kSq>, L::template kCheckOnly<D, kSq>};
}
template <typename L, typename H, typename B, typename F, typename D>
constexpr PathLoops LoopTableOf() {
  return PathLoops{L::template kScale<H>,
                   L::template kScale<B>,
                   L::template kScale<F>,
                   L::template kScale<D>,
                   CheckedLoopsOf<L, false, H, B, F, D>(),
                   CheckedLoopsOf<L, true, H, B, F, D>(),
                   CheckOnlyLoopsOf<L, false, H, B, F, D>(),
                   CheckOnlyLoopsOf<L, true, H, B, F, D>()};
}

// The portable loops (multi_tensor_scale_cpu.cc).
extern const PathLoops kScalarLoops;

// Elements before `p` reaches a 64-byte boundary, at most n: the head every
// vector loop runs one by one so that its stores are aligned (scale_loop.h).
// Internal linkage, as the loops that inline it (NOTE [one target per
// translation unit]).
template <typename T>
static inline int64_t HeadToAlign(const T* p, int64_t n) {
  const uintptr_t misalignment = reinterpret_cast<uintptr_t>(p) & 63u;
  if (misalignment == 0 || misalignment % sizeof(T) != 0) return 0;
  const int64_t head = static_cast<int64_t>((64u - misalignment) / sizeof(T));
  return head < n ? head : n;
}

// See NOTE [16-bit prefetch].
constexpr int kPrefetchBytes16 = 2048;

// NOTE [sum of squares] (scale_loop.h): a float32 accumulator (lane) takes at
// most this many squares before it is added to the loop's float64 total.
constexpr int kSquaresPerFlush = 256;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLS_HAVE_X86_SIMD 1
extern const PathLoops kAvx2Loops;        // simd_avx2.cc
extern const PathLoops kAvx512Loops;      // simd_avx512.cc
// kAvx512Loops with the VCVTNE2PS2BF16 bfloat16 loop (simd_avx512_bf16.cc),
// for threads whose MXCSR has FTZ and DAZ on: NOTE [bfloat16 convert].
extern const PathLoops kAvx512Bf16Loops;
void ScaleBFloat16ConvertLoop(const uint16_t* src, uint16_t* dst, int64_t n, float f);
void ScaleAndCheckBFloat16ConvertLoop(const uint16_t* src, uint16_t* dst, int64_t n, float f,
                                      ScaleCheck* check);
void ScaleAndCheckBFloat16ConvertLoopWithSquares(const uint16_t* src, uint16_t* dst, int64_t n,
                                                 float f, ScaleCheck* check);
void CheckBFloat16ConvertLoop(const uint16_t* src, int64_t n, float f, ScaleCheck* check);
void CheckBFloat16ConvertLoopWithSquares(const uint16_t* src, int64_t n, float f,
                                         ScaleCheck* check);

// Whether this CPU has AVX512_BF16.
bool CpuHasAvx512Bf16();
// Whether the calling thread's MXCSR has both FTZ and DAZ on.
bool MxcsrFlushesSubnormals();
#endif

}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SIMD_LOOPS_H_
