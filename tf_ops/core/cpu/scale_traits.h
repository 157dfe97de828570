// The traits ScaleLoopBody (scale_loop.h) runs on: per storage type, how one
// ISA's registers load, scale, store and check kLanes elements. `Ops` is one
// ISA's primitives (simd_avx2.cc, avx512_ops.h). A traits type provides:
//   Element, Factor       storage element (uint16_t bits, float, double) and
//                         the factor's type (float, or double for double)
//   Vector, Multiplier    a register of kLanes elements; the broadcast factor
//   kLanes, kUnroll, kPrefetchBytes (0: none), kMaskedTail
//   Broadcast(f), Load(p), Scale(v, m), Store(p, v), ScaleOne(x, f)
//   MaskedLoad(p, count), MaskedStore(p, count, v)   when kMaskedTail
// and for the checked loops (NOTE [fused check], NOTE [sum of squares]):
//   NonFinite             the integer register of the finite test
//   FoldNonFinite(acc, y), AnyNonFinite(acc), FiniteOne(y)
//   Square, SquareSum     float (double for double) and a register of them
//   kSquaresPerVector     squares one Vector adds to each SquareSum lane
//   kSquaresAreFinite     no finite element's square overflows a lane's sum
//   AddSquares(acc, y), SumAsDouble(acc), SquareOne(y)
// Register functions are FLS_SIMD_INLINE (NOTE [one target per translation
// unit]); the one-by-one functions are those of scale_math.h.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_SCALE_TRAITS_H_
#define FIXED_LOSS_SCALE_CORE_CPU_SCALE_TRAITS_H_

#include <cstdint>

#include "tf_ops/core/cpu/scale_loop.h"
#include "tf_ops/core/cpu/simd_loops.h"
#include "tf_ops/core/scale_math.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The 64-bit pattern that keeps the top 16-bit lane of each element of
// `element_bytes` (2, 4 or 8), sign bit cleared: NOTE [fused check].
constexpr int64_t Top16MagnitudeMask(int element_bytes) {
  return element_bytes == 2   ? 0x7fff7fff7fff7fffll
         : element_bytes == 4 ? 0x7fff00007fff0000ll
                              : 0x7fff000000000000ll;
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

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SCALE_TRAITS_H_
