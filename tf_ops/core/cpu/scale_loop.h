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
// Its functions are FLS_SIMD_INLINE: the skeleton's target, always inlined.
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

template <typename Traits>
FLS_SIMD_TARGET void ScaleLoop(const typename Traits::Element* src,
                               typename Traits::Element* dst, int64_t n,
                               typename Traits::Factor f) {
  using Vector = typename Traits::Vector;
  constexpr int kLanes = Traits::kLanes;
  constexpr int kStep = kLanes * Traits::kUnroll;
  static_assert(sizeof(Vector) == kLanes * sizeof(typename Traits::Element),
                "a Vector holds kLanes elements");
  static_assert(kLanes <= 32, "masks are built in 32 bits");

  const typename Traits::Multiplier m = Traits::Broadcast(f);
  int64_t i = 0;
  const int64_t head = HeadToAlign(dst, n);
  for (; i < head; ++i) dst[i] = Traits::ScaleOne(src[i], f);
  for (; i + kStep <= n; i += kStep) {
    if constexpr (Traits::kPrefetchBytes > 0) {
      // See NOTE [16-bit prefetch] in simd_loops.h. Prefetches never fault.
      _mm_prefetch(reinterpret_cast<const char*>(src + i) + Traits::kPrefetchBytes, _MM_HINT_T0);
    }
    Vector v[Traits::kUnroll];
#pragma GCC unroll 8
    for (int k = 0; k < Traits::kUnroll; ++k) v[k] = Traits::Load(src + i + k * kLanes);
#pragma GCC unroll 8
    for (int k = 0; k < Traits::kUnroll; ++k) {
      Traits::Store(dst + i + k * kLanes, Traits::Scale(v[k], m));
    }
  }
  for (; i + kLanes <= n; i += kLanes) Traits::Store(dst + i, Traits::Scale(Traits::Load(src + i), m));
  if constexpr (Traits::kMaskedTail) {
    if (i < n) {
      const int count = static_cast<int>(n - i);
      Traits::MaskedStore(dst + i, count, Traits::Scale(Traits::MaskedLoad(src + i, count), m));
    }
  } else {
    for (; i < n; ++i) dst[i] = Traits::ScaleOne(src[i], f);
  }
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
};

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
