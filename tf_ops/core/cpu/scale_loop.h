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

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
