// The one SIMD loop skeleton of the CPU core: elements [0, n) of src scaled by
// the per-(ISA, dtype) traits of scale_traits.h, then stored to dst (which may
// alias src exactly), checked, or both (LoopMode). Every x86 loop of the core
// is ScaleLoopBody compiled in one of simd_avx2.cc, simd_avx512.cc and
// simd_avx512_bf16.cc.
//
// The order: the elements before the 64-byte boundary of the pointer the loop
// writes through one by one, then steps of kUnroll registers (all loaded
// before any is stored), then single registers, then the remainder (one masked
// register where the ISA has masked loads and stores, else one by one).
// Aligned stores, because shards start anywhere inside a tensor (NOTE [byte
// sharding]) and stores that straddle cache lines cost ~10% of memory
// bandwidth. The one-by-one functions of scale_math.h give the registers' bits
// (simd_loops.h), so where the split falls changes no result.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
#define FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_

#ifndef FLS_SIMD_TARGET
#error "define FLS_SIMD_TARGET (a target attribute) before including scale_loop.h"
#endif

#include <xmmintrin.h>

#include <cstdint>

#include "tf_ops/core/cpu/simd_loops.h"
#include "tf_ops/core/scale_math.h"

// NOTE [one target per translation unit]: GCC and Clang inline an ISA's
// intrinsics only into functions compiled for that ISA, and a template cannot
// take its target attribute from a template argument. So the skeleton and the
// traits are compiled for the FLS_SIMD_TARGET their includer defines (one ISA
// per .cc), in an anonymous namespace: no AVX-512 copy can be merged by the
// linker with a same-named one that an AVX2 CPU runs. The functions of
// scale_math.h keep the default target and are inlined into the loops.
#define FLS_SIMD_INLINE FLS_SIMD_TARGET __attribute__((always_inline)) inline

namespace fixed_loss_scale {
namespace simd {
namespace {

// What a loop does with each scaled register: stores it (FixedScaleLoss,
// FixedUnscaleGrads), stores and checks it (FixedUnscaleGradsAndCheck), or
// checks it alone (FixedCheckGrads).
//
// NOTE [check without store]: the check-only loop is the checked loop with the
// stores compiled out. It still scales every register, because its flag and
// sum are those of the unscaled values (a scale below 1 can overflow a finite
// gradient), and it aligns on src where the storing loops align on dst.
// TensorFlow's buffers are 64-byte aligned, so both make the same blocks and
// give the same bits (NOTE [sum of squares]).
template <bool kStoreOutputs, bool kCheckOutputs, bool kWithSumOfSquares>
struct LoopMode {
  static constexpr bool kStore = kStoreOutputs;
  static constexpr bool kCheck = kCheckOutputs;
  static constexpr bool kSumOfSquares = kWithSumOfSquares;
  static_assert(kCheck || !kSumOfSquares, "the sum of squares comes with the check");
  static_assert(kStore || kCheck, "a loop stores or checks");
};
using ScaleMode = LoopMode<true, false, false>;
template <bool kSumOfSquares>
using ScaleAndCheckMode = LoopMode<true, true, kSumOfSquares>;
template <bool kSumOfSquares>
using CheckMode = LoopMode<false, true, kSumOfSquares>;

// NOTE [fused check]: the finite test reads bits. An element is non-finite iff
// its exponent is all ones, i.e. iff the top 16 bits of its magnitude are at
// least 0x7c00 (half), 0x7f80 (bfloat16, float) or 0x7ff0 (double). So every
// type takes two instructions per register, AND with 0x7fff on each element's
// top 16-bit lane and a signed 16-bit max into one of kUnroll accumulators
// (the values are <= 0x7fff), and one compare after the loop: no branch and no
// mask register in the loop, no dependence on FTZ/DAZ or NaN payloads. Masked
// tails load zeros past the end, which scale to zero: finite, square 0.
//
// NOTE [sum of squares]: each scaled element is widened exactly to float32
// (float64 stays float64) and its square added by one fused multiply-add into
// one of kUnroll registers: a half's or bfloat16's square is exact, a
// float32's is not rounded before the add. A lane takes at most
// B = kSquaresPerFlush squares before Flush adds the registers, converted
// exactly, to the loop's float64 total in a fixed order (the portable loops
// sum blocks of B in one float32); the caller adds the totals in float64 and
// rounds once to float32. The squares are >= 0, so for n elements, u = 2^-24:
//   relative error <= (B + 2) * u + (n/B + 8) * 2^-53   (~1.5e-5 for B = 256)
// (+ u per term on the portable path, which rounds x*x first; float64
// elements: (B + n/B + 10) * 2^-53 before the final rounding), plus 2^-126
// per element whose square is below float32's normal range (flushed under
// FTZ). The tests assert that bound. A non-finite element makes the sum Inf or
// NaN; half needs no finite test when it sums (kSquaresAreFinite: a lane's B
// squares of at most 65504^2 stay below 2^41). The blocks depend only on n and
// the aligned pointer's address mod 64, so a sum is deterministic; the paths
// (scalar, AVX2, AVX-512) differ in its last bits.
template <typename Traits>
struct LoopCheck {
  typename Traits::NonFinite non_finite[Traits::kUnroll] = {};
  typename Traits::SquareSum squares[Traits::kUnroll] = {};
  bool scalar_finite = true;
  typename Traits::Square scalar_squares = 0;  // the elements done one by one
  double total = 0.0;

  // Whether the registers' squares alone tell a non-finite output (half).
  template <bool kSumOfSquares>
  static constexpr bool kSquaresTell = kSumOfSquares && Traits::kSquaresAreFinite;

  // One scaled register, into accumulator k.
  template <bool kSumOfSquares>
  FLS_SIMD_INLINE void Fold(int k, typename Traits::Vector y) {
    if constexpr (!kSquaresTell<kSumOfSquares>) {
      non_finite[k] = Traits::FoldNonFinite(non_finite[k], y);
    }
    if constexpr (kSumOfSquares) squares[k] = Traits::AddSquares(squares[k], y);
  }
  // One scaled element done one by one.
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

// Element i of src scaled, stored and/or folded as Mode says.
template <typename Traits, typename Mode>
FLS_SIMD_INLINE void ScaleOneAt(const typename Traits::Element* src, typename Traits::Element* dst,
                                int64_t i, typename Traits::Factor f, LoopCheck<Traits>* state) {
  if constexpr (Mode::kStore) {
    dst[i] = Traits::ScaleOne(src[i], f);
    if constexpr (Mode::kCheck) state->template FoldOne<Mode::kSumOfSquares>(dst[i]);
  } else {
    state->template FoldOne<Mode::kSumOfSquares>(Traits::ScaleOne(src[i], f));
  }
}

// kUnroll registers from src + i, scaled, stored at dst + i and/or folded into
// *state.
template <typename Traits, typename Mode>
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
    if constexpr (Mode::kStore) Traits::Store(dst + i + k * kLanes, y);
    if constexpr (Mode::kCheck) state->template Fold<Mode::kSumOfSquares>(k, y);
  }
}

// The skeleton. dst is unused (may be null) when !Mode::kStore.
template <typename Traits, typename Mode>
FLS_SIMD_INLINE void ScaleLoopBody(const typename Traits::Element* src,
                                   typename Traits::Element* dst, int64_t n,
                                   typename Traits::Factor f, ScaleCheck* check) {
  using Vector = typename Traits::Vector;
  constexpr int kLanes = Traits::kLanes;
  constexpr int kStep = kLanes * Traits::kUnroll;
  static_assert(sizeof(Vector) == kLanes * sizeof(typename Traits::Element),
                "a Vector holds kLanes elements");
  static_assert(kLanes <= 32, "masks are built in 32 bits");

  [[maybe_unused]] LoopCheck<Traits> state;
  const typename Traits::Multiplier m = Traits::Broadcast(f);
  int64_t i = 0;
  // NOTE [check without store]: the pointer the blocks align to.
  const int64_t head = HeadToAlign(Mode::kStore ? dst : src, n);
  for (; i < head; ++i) ScaleOneAt<Traits, Mode>(src, dst, i, f, &state);
  if constexpr (Mode::kSumOfSquares) {
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
      for (; i < block_end; i += kStep) ScaleStep<Traits, Mode>(src, dst, i, m, &state);
      state.Flush();
    }
  } else {
    for (; i + kStep <= n; i += kStep) ScaleStep<Traits, Mode>(src, dst, i, m, &state);
  }
  // At most kUnroll registers remain: they fold into accumulator 0.
  for (; i + kLanes <= n; i += kLanes) {
    const Vector y = Traits::Scale(Traits::Load(src + i), m);
    if constexpr (Mode::kStore) Traits::Store(dst + i, y);
    if constexpr (Mode::kCheck) state.template Fold<Mode::kSumOfSquares>(0, y);
  }
  if constexpr (Traits::kMaskedTail) {
    if (i < n) {
      const int count = static_cast<int>(n - i);
      // The lanes past `count` are loaded as zeros: finite, square 0.
      const Vector y = Traits::Scale(Traits::MaskedLoad(src + i, count), m);
      if constexpr (Mode::kStore) Traits::MaskedStore(dst + i, count, y);
      if constexpr (Mode::kCheck) state.template Fold<Mode::kSumOfSquares>(0, y);
    }
  } else {
    for (; i < n; ++i) ScaleOneAt<Traits, Mode>(src, dst, i, f, &state);
  }
  if constexpr (Mode::kCheck) state.template Finish<Mode::kSumOfSquares>(check);
}

// The loop of FixedUnscaleGrads and FixedScaleLoss.
template <typename Traits>
FLS_SIMD_TARGET void ScaleLoop(const typename Traits::Element* src,
                               typename Traits::Element* dst, int64_t n,
                               typename Traits::Factor f) {
  ScaleLoopBody<Traits, ScaleMode>(src, dst, n, f, nullptr);
}

// The loop of FixedUnscaleGradsAndCheck: ScaleLoop's outputs, folded into
// *check (NOTE [fused check]).
template <typename Traits, bool kSumOfSquares>
FLS_SIMD_TARGET void ScaleAndCheckLoop(const typename Traits::Element* src,
                                       typename Traits::Element* dst, int64_t n,
                                       typename Traits::Factor f, ScaleCheck* check) {
  ScaleLoopBody<Traits, ScaleAndCheckMode<kSumOfSquares>>(src, dst, n, f, check);
}

// The loop of FixedCheckGrads: ScaleAndCheckLoop's *check, nothing written
// (NOTE [check without store]).
template <typename Traits, bool kSumOfSquares>
FLS_SIMD_TARGET void CheckLoop(const typename Traits::Element* src, int64_t n,
                               typename Traits::Factor f, ScaleCheck* check) {
  ScaleLoopBody<Traits, CheckMode<kSumOfSquares>>(src, nullptr, n, f, check);
}

// The loops above, for LoopTableOf (simd_loops.h).
struct VectorLoops {
  template <typename T> static constexpr auto kScale = &ScaleLoop<T>;
  template <typename T, bool kSq> static constexpr auto kChecked = &ScaleAndCheckLoop<T, kSq>;
  template <typename T, bool kSq> static constexpr auto kCheckOnly = &CheckLoop<T, kSq>;
};

// The table of one path from its four traits.
template <typename Half, typename BFloat16, typename Float, typename Double>
constexpr PathLoops PathLoopsOf() {
  return LoopTableOf<VectorLoops, Half, BFloat16, Float, Double>();
}

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_SCALE_LOOP_H_
