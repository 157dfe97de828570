// The one SIMD loop skeleton of the CPU core: elements [0, n) of src/dst (which
// may alias exactly), scaled by per-(ISA, dtype) traits. Every x86 loop of the
// core is ScaleLoop<Traits> for the traits of one of simd_avx2.cc,
// simd_avx512.cc and simd_avx512_bf16.cc.
//
// The skeleton: first the elements before dst's next 64-byte boundary (scalar),
// then steps of kUnroll vectors (all loaded before any is stored, an optional
// software prefetch kPrefetchBytes ahead of src), then single vectors, then the
// remainder: one masked vector where the ISA has masked loads and stores, else
// scalar. The scalar element functions of scale_math.h give the same bits as
// the vectors (simd_loops.h says why), so where the split falls never changes a
// result. Shards start anywhere inside a tensor (NOTE [byte sharding]), and
// vectors that straddle cache lines cost ~10% of memory bandwidth, hence the
// aligned stores.
//
// A traits type provides:
//   Element, Factor       storage element (uint16_t bits, float, double) and the
//                         factor's type (float, or double for double)
//   Vector, Multiplier    a register of kLanes elements; the broadcast factor
//   kLanes, kUnroll, kPrefetchBytes (0: no prefetch), kMaskedTail
//   Broadcast(f), Load(p), Scale(v, m), Store(p, v), ScaleOne(x, f)
//   MaskedLoad(p, count), MaskedStore(p, count, v)   when kMaskedTail
// and for the checked loops (NOTE [fused check], NOTE [sum of squares]):
//   NonFinite             the integer register of the finite test
//   FoldNonFinite(acc, y), AnyNonFinite(acc), FiniteOne(y)
//   Square, SquareSum     float (double for double) and a register of them
//   kSquaresPerVector     squares one output Vector adds to each SquareSum lane
//   kSquaresAreFinite     no finite output's square overflows a lane's sum
//   AddSquares(acc, y), SumAsDouble(acc), SquareOne(y)
// Its functions are FLS_SIMD_INLINE: the skeleton's target, always inlined.
//
// NOTE [fused check]: FixedUnscaleGradsAndCheck reads each gradient once, so
// the finite test and the sum of squares run inside the skeleton, on the output
// registers just before they are stored (no second pass over memory). Two
// template flags select them, kCheck and kSumOfSquares: ScaleLoop<Traits>, the
// loop FixedUnscaleGrads runs, instantiates the skeleton with both false and
// compiles to the vector loops it had before the check existed (objdump of
// simd_*.o: the same instructions, but for register names and the direction of
// a compare in the scalar head and tail); ScaleAndCheckLoop<Traits,
// kSumOfSquares> with kCheck true. The finite test reads the bits of the
// outputs: an element is non-finite iff its exponent field is all ones, i.e.
// iff the top 16 bits of its magnitude are at least 0x7c00 (half), 0x7f80
// (bfloat16, float) or 0x7ff0 (double). So every type takes the same two
// instructions per register: AND with 0x7fff on the top 16-bit lane of each
// element (0 on the others), then a signed 16-bit max into one of kUnroll
// accumulators (all values are <= 0x7fff, so signed max is unsigned max). One
// compare at the end of the loop gives the answer: no branch, no mask register
// carried around the loop, no dependence on FTZ/DAZ or NaN payloads. Masked
// tails load zeros into the lanes past the end, and zero scales to zero, so
// those lanes are finite and square to 0: they change neither result. The
// scalar head and tail (FiniteOne, SquareOne: the scale_math.h functions) fold
// into a bool and a scalar accumulator.
//
// NOTE [sum of squares]: each output is widened to float32 (half: the rounded
// half output widened again with VCVTPH2PS, exact; bfloat16: a shift, exact;
// float32 itself; float64 stays float64) and its square added with one fused
// multiply-add into one of kUnroll SquareSum registers, so a half's or
// bfloat16's square is exact and a float32's is not rounded before the add.
// Every lane takes at most kSquaresPerFlush (simd_loops.h) squares before the
// skeleton adds the registers' lanes, converted exactly to float64, to the
// loop's float64 total and restarts them from zero; the portable loops
// (multi_tensor_scale_cpu.cc) sum in blocks of the same size with one float32
// accumulator. The caller adds the loops' totals in float64 and rounds the
// result once to float32. Bound: the squares are >= 0, so a block of B =
// kSquaresPerFlush float32 additions is within gamma_B = B*u/(1-B*u) of its
// exact sum (u = 2^-24; + u per term on the portable path, where x*x is
// rounded before the add); an element then passes through at most n/B + 8
// float64 additions (the flushes, the in-register tree, the loop's and the
// caller's totals) and the final rounding to float32. For n elements:
//   relative error <= (B + 2) * 2^-24 + (n/B + 8) * 2^-53
// ~= 1.5e-5 for B = 256 (the float64 term stays below 2^-24 for n < 2^37);
// float64 elements, before the final rounding: (B + n/B + 10) * 2^-53. Plus
// an absolute 2^-126 per element whose square is below float32's normal range
// (flushed under FTZ). That bound is what tests/test_fused_check_cpu.py and
// tf_ops/tests/cpu_core_sanitizer_test.cc assert; observed errors on random
// data are 100x-1000x smaller.
// A non-finite output makes its square, and so the sum, Inf or NaN; a finite
// float32 or bfloat16 output above ~1.8e19 squares to +Inf, the float32 result
// the sum would round to anyway. Half is the exception that saves its loop
// the finite test when it sums squares (kSquaresAreFinite): a lane of at most
// kSquaresPerFlush squares of at most 65504^2 stays below 2^41, so the
// registers' float64 total is non-finite iff one of their outputs is. The
// blocks and their order depend only on n and dst's alignment, so a loop's sum
// is deterministic; it does differ in its last bits between paths (scalar,
// AVX2, AVX-512), which order the additions differently.
//
// NOTE [one target per translation unit]: GCC and Clang inline an
// ISA-specific intrinsic only into a function compiled for that ISA, and a
// template cannot take its target attribute from a template argument. So the
// skeleton is compiled for the target its includer names in FLS_SIMD_TARGET
// (one ISA per .cc file), and it lives in an anonymous namespace: each
// translation unit has its own copy, and no function compiled for AVX-512 can
// be merged by the linker with a same-named one that an AVX2 CPU runs. The
// scalar element functions (scale_math.h, included before any target is set)
// keep the default target and are inlined into the loops.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
#define FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_

#ifndef FLS_SIMD_TARGET
#error "define FLS_SIMD_TARGET (a target attribute) before including scale_loop.h"
#endif

#include <xmmintrin.h>

#include <cstdint>

#include "tf_ops/core/cpu/simd_loops.h"
#include "tf_ops/core/scale_math.h"

#define FLS_SIMD_INLINE FLS_SIMD_TARGET __attribute__((always_inline)) inline

namespace fixed_loss_scale {
namespace simd {
namespace {

// Elements before `dst` reaches a 64-byte boundary, at most n.
template <typename T>
inline int64_t HeadToAlign(const T* dst, int64_t n) {
  const uintptr_t misalignment = reinterpret_cast<uintptr_t>(dst) & 63u;
  if (misalignment == 0 || misalignment % sizeof(T) != 0) return 0;
  const int64_t head = static_cast<int64_t>((64u - misalignment) / sizeof(T));
  return head < n ? head : n;
}

// The 64-bit pattern that keeps the top 16-bit lane of each element of
// `element_bytes` (2, 4 or 8), sign bit cleared: NOTE [fused check].
constexpr int64_t Top16MagnitudeMask(int element_bytes) {
  return element_bytes == 2   ? 0x7fff7fff7fff7fffll
         : element_bytes == 4 ? 0x7fff00007fff0000ll
                              : 0x7fff000000000000ll;
}

// The state of the fused check in one loop (NOTE [fused check], NOTE [sum of
// squares]); the unchecked loop never touches it.
template <typename Traits>
struct LoopCheck {
  typename Traits::NonFinite non_finite[Traits::kUnroll] = {};
  typename Traits::SquareSum squares[Traits::kUnroll] = {};
  bool scalar_finite = true;
  typename Traits::Square scalar_squares = 0;  // the scalar head and tail
  double total = 0.0;

  // Whether the registers' squares alone tell a non-finite output (NOTE
  // [sum of squares]: half).
  template <bool kSumOfSquares>
  static constexpr bool kSquaresTell = kSumOfSquares && Traits::kSquaresAreFinite;

  // One output register, into accumulator k.
  template <bool kSumOfSquares>
  FLS_SIMD_INLINE void Fold(int k, typename Traits::Vector y) {
    if constexpr (!kSquaresTell<kSumOfSquares>) {
      non_finite[k] = Traits::FoldNonFinite(non_finite[k], y);
    }
    if constexpr (kSumOfSquares) squares[k] = Traits::AddSquares(squares[k], y);
  }
  // One output element of the scalar head or tail.
  template <bool kSumOfSquares>
  FLS_SIMD_INLINE void FoldOne(typename Traits::Element y) {
    scalar_finite &= Traits::FiniteOne(y);
    if constexpr (kSumOfSquares) scalar_squares += Traits::SquareOne(y);
  }
  // The registers' squares into the float64 total, in a fixed order.
  FLS_SIMD_INLINE void Flush() {
#pragma GCC unroll 8
    for (int k = 0; k < Traits::kUnroll; ++k) {
      total += Traits::SumAsDouble(squares[k]);
      squares[k] = typename Traits::SquareSum{};
    }
  }
  template <bool kSumOfSquares>
  FLS_SIMD_INLINE void Finish(ScaleCheck* check) {
    bool finite = scalar_finite;
    if constexpr (kSumOfSquares) Flush();
    if constexpr (kSquaresTell<kSumOfSquares>) {
      finite &= IsFiniteDouble(total);
    } else {
#pragma GCC unroll 8
      for (int k = 0; k < Traits::kUnroll; ++k) finite &= !Traits::AnyNonFinite(non_finite[k]);
    }
    check->all_finite &= finite;
    if constexpr (kSumOfSquares) {
      check->sum_of_squares += total + static_cast<double>(scalar_squares);
    }
  }
};

// kUnroll registers from src + i, scaled, stored at dst + i (and folded into
// *state when kCheck).
template <typename Traits, bool kCheck, bool kSumOfSquares>
FLS_SIMD_INLINE void ScaleStep(const typename Traits::Element* src, typename Traits::Element* dst,
                               int64_t i, typename Traits::Multiplier m,
                               LoopCheck<Traits>* state) {
  constexpr int kLanes = Traits::kLanes;
  if constexpr (Traits::kPrefetchBytes > 0) {
    // See NOTE [16-bit prefetch] in simd_loops.h. Prefetches never fault.
    _mm_prefetch(reinterpret_cast<const char*>(src + i) + Traits::kPrefetchBytes, _MM_HINT_T0);
  }
  typename Traits::Vector v[Traits::kUnroll];
#pragma GCC unroll 8
  for (int k = 0; k < Traits::kUnroll; ++k) v[k] = Traits::Load(src + i + k * kLanes);
#pragma GCC unroll 8
  for (int k = 0; k < Traits::kUnroll; ++k) {
    const typename Traits::Vector y = Traits::Scale(v[k], m);
    Traits::Store(dst + i + k * kLanes, y);
    if constexpr (kCheck) state->template Fold<kSumOfSquares>(k, y);
  }
}

// The skeleton; kCheck and kSumOfSquares: NOTE [fused check].
template <typename Traits, bool kCheck, bool kSumOfSquares>
FLS_SIMD_INLINE void ScaleLoopBody(const typename Traits::Element* src,
                                   typename Traits::Element* dst, int64_t n,
                                   typename Traits::Factor f, ScaleCheck* check) {
  using Vector = typename Traits::Vector;
  constexpr int kLanes = Traits::kLanes;
  constexpr int kStep = kLanes * Traits::kUnroll;
  static_assert(sizeof(Vector) == kLanes * sizeof(typename Traits::Element),
                "a Vector holds kLanes elements");
  static_assert(kLanes <= 32, "masks are built in 32 bits");
  static_assert(kCheck || !kSumOfSquares, "the sum of squares comes with the check");

  [[maybe_unused]] LoopCheck<Traits> state;
  const typename Traits::Multiplier m = Traits::Broadcast(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) {
    dst[i] = Traits::ScaleOne(src[i], f);
    if constexpr (kCheck) state.template FoldOne<kSumOfSquares>(dst[i]);
  }
  if constexpr (kSumOfSquares) {
    // Blocks of steps that add at most kSquaresPerFlush squares to each lane.
    constexpr int64_t kBlockSteps = kSquaresPerFlush / Traits::kSquaresPerVector;
    static_assert(kBlockSteps > 0 &&
                      Traits::kUnroll * Traits::kSquaresPerVector <= kSquaresPerFlush,
                  "a block holds the steps, and the remainder fits in one block");
    static_assert(!Traits::kSquaresAreFinite || kSquaresPerFlush <= (1 << 20),
                  "kSquaresAreFinite: 65504^2 * kSquaresPerFlush must stay far below FLT_MAX");
    while (i + kStep <= n) {
      const int64_t steps = (n - i) / kStep < kBlockSteps ? (n - i) / kStep : kBlockSteps;
      const int64_t block_end = i + steps * kStep;
      for (; i < block_end; i += kStep) {
        ScaleStep<Traits, kCheck, kSumOfSquares>(src, dst, i, m, &state);
      }
      state.Flush();
    }
  } else {
    for (; i + kStep <= n; i += kStep) {
      ScaleStep<Traits, kCheck, kSumOfSquares>(src, dst, i, m, &state);
    }
  }
  // At most kUnroll registers remain: they fold into accumulator 0.
  for (; i + kLanes <= n; i += kLanes) {
    const Vector y = Traits::Scale(Traits::Load(src + i), m);
    Traits::Store(dst + i, y);
    if constexpr (kCheck) state.template Fold<kSumOfSquares>(0, y);
  }
  if constexpr (Traits::kMaskedTail) {
    if (i < n) {
      const int count = static_cast<int>(n - i);
      // The lanes past `count` are loaded as zeros: finite, square 0.
      const Vector y = Traits::Scale(Traits::MaskedLoad(src + i, count), m);
      Traits::MaskedStore(dst + i, count, y);
      if constexpr (kCheck) state.template Fold<kSumOfSquares>(0, y);
    }
  } else {
    for (; i < n; ++i) {
      dst[i] = Traits::ScaleOne(src[i], f);
      if constexpr (kCheck) state.template FoldOne<kSumOfSquares>(dst[i]);
    }
  }
  if constexpr (kCheck) state.template Finish<kSumOfSquares>(check);
}

// The loop of FixedUnscaleGrads and FixedScaleLoss.
template <typename Traits>
FLS_SIMD_TARGET void ScaleLoop(const typename Traits::Element* src,
                               typename Traits::Element* dst, int64_t n,
                               typename Traits::Factor f) {
  ScaleLoopBody<Traits, false, false>(src, dst, n, f, nullptr);
}

// The loop of FixedUnscaleGradsAndCheck: ScaleLoop's outputs, folded into
// *check (NOTE [fused check]).
template <typename Traits, bool kSumOfSquares>
FLS_SIMD_TARGET void ScaleAndCheckLoop(const typename Traits::Element* src,
                                       typename Traits::Element* dst, int64_t n,
                                       typename Traits::Factor f, ScaleCheck* check) {
  ScaleLoopBody<Traits, true, kSumOfSquares>(src, dst, n, f, check);
}

// The table of one path from its four traits.
template <typename Half, typename BFloat16, typename Float, typename Double>
constexpr PathLoops PathLoopsOf() {
  return PathLoops{
      ScaleLoop<Half>,
      ScaleLoop<BFloat16>,
      ScaleLoop<Float>,
      ScaleLoop<Double>,
      CheckedLoops{ScaleAndCheckLoop<Half, false>, ScaleAndCheckLoop<BFloat16, false>,
                   ScaleAndCheckLoop<Float, false>, ScaleAndCheckLoop<Double, false>},
      CheckedLoops{ScaleAndCheckLoop<Half, true>, ScaleAndCheckLoop<BFloat16, true>,
                   ScaleAndCheckLoop<Float, true>, ScaleAndCheckLoop<Double, true>}};
}

// Float products, as the bits of a GCC vector of uint32_t (any width) -> their
// bfloat16 bits rounded to nearest-even, in the low 16 bits of each lane, as
// FloatToBFloat16Bits (NaNs are set by the caller from the inputs).
template <typename U32Vector>
FLS_SIMD_INLINE U32Vector RoundToBFloat16Bits(U32Vector bits) {
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

// The traits of float and double, for every ISA: x * f in the element's own
// precision, with one ISA's register primitives `Ops` (Splat, LoadU, StoreU, Mul
// overloaded for float and double; MaskedLoadU and MaskedStoreU where kMasked).
// No prefetch (NOTE [16-bit prefetch]).
template <typename T, typename Ops>
struct MultiplyTraits {
  using Element = T;
  using Factor = T;
  using Vector = decltype(Ops::LoadU(static_cast<const T*>(nullptr)));
  using Multiplier = Vector;
  static constexpr int kLanes = static_cast<int>(sizeof(Vector) / sizeof(T));
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = 0;
  static constexpr bool kMaskedTail = Ops::kMasked;
  FLS_SIMD_INLINE static Multiplier Broadcast(T f) { return Ops::Splat(f); }
  FLS_SIMD_INLINE static Vector Load(const T* p) { return Ops::LoadU(p); }
  FLS_SIMD_INLINE static void Store(T* p, Vector v) { Ops::StoreU(p, v); }
  FLS_SIMD_INLINE static Vector Scale(Vector v, Multiplier m) { return Ops::Mul(v, m); }
  FLS_SIMD_INLINE static Vector MaskedLoad(const T* p, int count) {
    return Ops::MaskedLoadU(p, count);
  }
  FLS_SIMD_INLINE static void MaskedStore(T* p, int count, Vector v) {
    Ops::MaskedStoreU(p, count, v);
  }
  static T ScaleOne(T x, T f) {
    if constexpr (sizeof(T) == 4) {
      return ScaleFloat(x, f);
    } else {
      return ScaleDouble(x, f);
    }
  }
  // NOTE [fused check], NOTE [sum of squares].
  using NonFinite = decltype(Ops::Bits(Vector{}));
  using Square = T;
  using SquareSum = Vector;
  static constexpr int kSquaresPerVector = 1;
  static constexpr bool kSquaresAreFinite = false;
  static constexpr int16_t kNonFiniteTop16 = sizeof(T) == 4 ? 0x7f80 : 0x7ff0;
  FLS_SIMD_INLINE static NonFinite FoldNonFinite(NonFinite acc, Vector y) {
    return Ops::MaxTop16(acc, Ops::Bits(y), Top16MagnitudeMask(sizeof(T)));
  }
  FLS_SIMD_INLINE static bool AnyNonFinite(NonFinite acc) {
    return Ops::AnyTop16AtLeast(acc, kNonFiniteTop16);
  }
  FLS_SIMD_INLINE static SquareSum AddSquares(SquareSum acc, Vector y) {
    return Ops::MulAdd(y, y, acc);
  }
  FLS_SIMD_INLINE static double SumAsDouble(SquareSum acc) { return Ops::SumAsDouble(acc); }
  static bool FiniteOne(T y) { return IsFiniteFloating(y); }
  static T SquareOne(T y) { return y * y; }
};

// The storage side of the half and bfloat16 traits, for every ISA: kLanes
// 16-bit patterns in one register of `Ops` (LoadBits<kLanes>, StoreBits, and
// the masked pair where kMasked), the math in `Ops`' float registers. The
// traits add kUnroll, kPrefetchBytes, Scale and ScaleOne.
template <int kLanesPerRegister, typename Ops>
struct Bits16Storage {
  using Element = uint16_t;
  using Factor = float;
  using Vector = decltype(Ops::template LoadBits<kLanesPerRegister>(nullptr));
  using Multiplier = decltype(Ops::Splat(0.0f));
  static constexpr int kLanes = kLanesPerRegister;
  static constexpr bool kMaskedTail = Ops::kMasked;
  FLS_SIMD_INLINE static Multiplier Broadcast(float f) { return Ops::Splat(f); }
  FLS_SIMD_INLINE static Vector Load(const uint16_t* p) { return Ops::template LoadBits<kLanes>(p); }
  FLS_SIMD_INLINE static void Store(uint16_t* p, Vector v) { Ops::StoreBits(p, v); }
  FLS_SIMD_INLINE static Vector MaskedLoad(const uint16_t* p, int count) {
    return Ops::template MaskedLoadBits<kLanes>(p, count);
  }
  FLS_SIMD_INLINE static void MaskedStore(uint16_t* p, int count, Vector v) {
    Ops::MaskedStoreBits(p, count, v);
  }
  // NOTE [fused check], NOTE [sum of squares]: the 16-bit outputs themselves
  // are the finite test's register; squares in float32.
  using NonFinite = Vector;
  using Square = float;
  using SquareSum = Multiplier;
  FLS_SIMD_INLINE static NonFinite FoldNonFinite(NonFinite acc, Vector y) {
    return Ops::MaxTop16(acc, y, Top16MagnitudeMask(2));
  }
  FLS_SIMD_INLINE static double SumAsDouble(SquareSum acc) { return Ops::SumAsDouble(acc); }
};

// Half, for every ISA: widened to floats exactly (VCVTPH2PS), multiplied,
// narrowed with round-to-nearest-even (VCVTPS2PH); simd_loops.h says why these
// are the scalar bits. `Ops` gives kHalfLanes, FloatsFromHalves, HalvesFromFloats.
template <typename Ops>
struct HalfTraits : Bits16Storage<Ops::kHalfLanes, Ops> {
  using Vector = typename Bits16Storage<Ops::kHalfLanes, Ops>::Vector;
  using Multiplier = typename Bits16Storage<Ops::kHalfLanes, Ops>::Multiplier;
  static constexpr int kUnroll = 4;
  static constexpr int kPrefetchBytes = kPrefetchBytes16;
  FLS_SIMD_INLINE static Vector Scale(Vector h, Multiplier m) {
    return Ops::HalvesFromFloats(Ops::Mul(Ops::FloatsFromHalves(h), m));
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleHalfBits(x, f); }
  static constexpr int kSquaresPerVector = 1;
  static constexpr bool kSquaresAreFinite = true;  // 65504^2 * kSquaresPerFlush < FLT_MAX
  FLS_SIMD_INLINE static bool AnyNonFinite(Vector acc) {
    return Ops::AnyTop16AtLeast(acc, 0x7c00);
  }
  FLS_SIMD_INLINE static Multiplier AddSquares(Multiplier acc, Vector y) {
    const Multiplier x = Ops::FloatsFromHalves(y);
    return Ops::MulAdd(x, x, acc);
  }
  static bool FiniteOne(uint16_t y) { return IsFiniteHalfBits(y); }
  static float SquareOne(uint16_t y) { return SquareOfHalfBits(y); }
};

// bfloat16 in integer lanes, for every ISA, the only way that gives the scalar
// results in IEEE mode too: interleaving with zero widens each bfloat16 into the
// high half of a float with no cross-lane shuffle; the unpacks and the pack
// work per 128-bit lane, so the pack puts every result back in its input's
// place (values <= 0xffff: nothing saturates), with about half the
// instructions of widening with cvtepu16 and re-ordering with a permute
// (docs/BENCHMARKS.md, "CPU loops"). Rounding as FloatToBFloat16Bits; NaN inputs
// give sign|0x7fc0. `Ops` gives kBFloat16Lanes, kBFloat16PrefetchBytes,
// FloatsFromBFloat16Low/High, RoundToBFloat16, PackLow16, WithBFloat16NaNs.
template <typename Ops>
struct BFloat16Traits : Bits16Storage<Ops::kBFloat16Lanes, Ops> {
  using Vector = typename Bits16Storage<Ops::kBFloat16Lanes, Ops>::Vector;
  using Multiplier = typename Bits16Storage<Ops::kBFloat16Lanes, Ops>::Multiplier;
  static constexpr int kUnroll = 2;
  static constexpr int kPrefetchBytes = Ops::kBFloat16PrefetchBytes;
  FLS_SIMD_INLINE static Vector Scale(Vector b, Multiplier m) {
    const Vector rounded =
        Ops::PackLow16(Ops::RoundToBFloat16(Ops::Mul(Ops::FloatsFromBFloat16Low(b), m)),
                       Ops::RoundToBFloat16(Ops::Mul(Ops::FloatsFromBFloat16High(b), m)));
    return Ops::WithBFloat16NaNs(rounded, b);
  }
  static uint16_t ScaleOne(uint16_t x, float f) { return ScaleBFloat16Bits(x, f); }
  static constexpr int kSquaresPerVector = 2;
  static constexpr bool kSquaresAreFinite = false;
  FLS_SIMD_INLINE static bool AnyNonFinite(Vector acc) {
    return Ops::AnyTop16AtLeast(acc, 0x7f80);
  }
  FLS_SIMD_INLINE static Multiplier AddSquares(Multiplier acc, Vector y) {
    const Multiplier low = Ops::FloatsFromBFloat16Low(y);
    const Multiplier high = Ops::FloatsFromBFloat16High(y);
    return Ops::MulAdd(high, high, Ops::MulAdd(low, low, acc));
  }
  static bool FiniteOne(uint16_t y) { return IsFiniteBFloat16Bits(y); }
  static float SquareOne(uint16_t y) { return SquareOfBFloat16Bits(y); }
};

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
