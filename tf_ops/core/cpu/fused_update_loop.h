// The element loops of the fused optimizer updates (fused_update_cpu.h): the
// rules of tf_ops/core/fused_update_math.h over elements [0, n) of one
// variable, as a scalar loop and as one vector skeleton over an ISA's `Ops`.
//
// The skeleton, as ScaleLoop's (scale_loop.h): the elements before the
// variable's next 64-byte boundary one at a time, then one register of kLanes
// elements per array at a time (every array loaded, the rule applied in
// registers, every state stored), then the remainder: one masked register
// where the ISA has masked loads and stores, else one at a time. The scalar
// and vector rules are the same expression tree (NOTE [fused update
// numerics]), so where the split falls never changes a result. One register
// per step: seven arrays (Adam) already keep the loads in flight, and the
// loop is bound by memory.
//
// `Ops` provides: V (a register of floats), kLanes, kMasked, Splat, LoadU,
// StoreU, Add, Sub, Mul, Div, Sqrt, Max, and MaskedLoadU / MaskedStoreU where
// kMasked. The includer defines FLS_SIMD_TARGET (its target attribute, empty
// for the portable loops) before including this header, and includes no other
// header that includes fused_update_math.h first (NOTE [one target per
// translation unit] in scale_loop.h).
#ifndef FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_LOOP_H_
#define FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_LOOP_H_

#ifndef FLS_SIMD_TARGET
#error "define FLS_SIMD_TARGET (a target attribute) before including fused_update_loop.h"
#endif
#ifdef FIXED_LOSS_SCALE_CORE_FUSED_UPDATE_MATH_H_
#error "fused_update_math.h was included before fused_update_loop.h, without this unit's target"
#endif
#define FLS_FUSED_INLINE FLS_SIMD_TARGET __attribute__((always_inline)) inline

#include <array>
#include <cstdint>

#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/fused_update_math.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The scalars as registers of the policy M (fused::ScalarMath or an Ops), and
// the float32 product clip * lr of NOTE [scalar factors].
template <typename M>
FLS_FUSED_INLINE fused::Coefficients<M> CoefficientsOf(const UpdateScalars& s) {
  return fused::Coefficients<M>{
      M::Splat(s.unscale),          M::Splat(s.clip),
      M::Splat(s.lr),               M::Splat(s.weight_decay),
      M::Splat(s.momentum),         M::Splat(s.alpha),
      M::Splat(s.one_minus_beta_1), M::Splat(s.one_minus_beta_2),
      M::Splat(s.epsilon),          M::Splat(s.weight_decay_lr),
      M::Splat(s.clip * s.lr)};
}

// A loop's variant: bit 0 weight decay, bit 1 kFold (NOTE [scalar factors]).
constexpr bool DecayOf(int variant) { return (variant & 1) != 0; }
constexpr bool FoldOf(int variant) { return (variant & 2) != 0; }

// Element i of every array, through the float rule.
template <typename Rule, int kVariant>
FLS_FUSED_INLINE void UpdateOne(const float* grad, float* const* state, int64_t i,
                                const fused::Coefficients<fused::ScalarMath>& c) {
  float s[Rule::kStates];
#pragma GCC unroll 4
  for (int k = 0; k < Rule::kStates; ++k) s[k] = state[k][i];
  fused::UpdateGroup<Rule, DecayOf(kVariant), FoldOf(kVariant), fused::ScalarMath>(grad[i], s, c);
#pragma GCC unroll 4
  for (int k = 0; k < Rule::kStates; ++k) state[k][i] = s[k];
}

// The portable loop.
template <typename Rule, int kVariant>
FLS_SIMD_TARGET void ScalarUpdate(const float* grad, float* const* state, int64_t n,
                                  const UpdateScalars& scalars) {
  const fused::Coefficients<fused::ScalarMath> c = CoefficientsOf<fused::ScalarMath>(scalars);
  for (int64_t i = 0; i < n; ++i) UpdateOne<Rule, kVariant>(grad, state, i, c);
}

// Elements before `p` reaches a 64-byte boundary, at most n.
inline int64_t FloatsToAlign(const float* p, int64_t n) {
  const uintptr_t misalignment = reinterpret_cast<uintptr_t>(p) & 63u;
  if (misalignment == 0 || misalignment % sizeof(float) != 0) return 0;
  const int64_t head = static_cast<int64_t>((64u - misalignment) / sizeof(float));
  return head < n ? head : n;
}

// The vector skeleton (see the header comment).
template <typename Ops, typename Rule, int kVariant>
FLS_SIMD_TARGET void VectorUpdate(const float* grad, float* const* state, int64_t n,
                                  const UpdateScalars& scalars) {
  using V = typename Ops::V;
  constexpr int kStates = Rule::kStates;
  constexpr int kLanes = Ops::kLanes;
  static_assert(sizeof(V) == kLanes * sizeof(float), "a register holds kLanes floats");
  const fused::Coefficients<fused::ScalarMath> one = CoefficientsOf<fused::ScalarMath>(scalars);
  const fused::Coefficients<Ops> c = CoefficientsOf<Ops>(scalars);
  int64_t i = 0;
  for (const int64_t head = FloatsToAlign(state[0], n); i < head; ++i) {
    UpdateOne<Rule, kVariant>(grad, state, i, one);
  }
  for (; i + kLanes <= n; i += kLanes) {
    V s[kStates];
#pragma GCC unroll 4
    for (int k = 0; k < kStates; ++k) s[k] = Ops::LoadU(state[k] + i);
    fused::UpdateGroup<Rule, DecayOf(kVariant), FoldOf(kVariant), Ops>(Ops::LoadU(grad + i), s, c);
#pragma GCC unroll 4
    for (int k = 0; k < kStates; ++k) Ops::StoreU(state[k] + i, s[k]);
  }
  if constexpr (Ops::kMasked) {
    if (i < n) {
      // The lanes past `count` compute on zeros and are never stored.
      const int count = static_cast<int>(n - i);
      V s[kStates];
#pragma GCC unroll 4
      for (int k = 0; k < kStates; ++k) s[k] = Ops::MaskedLoadU(state[k] + i, count);
      fused::UpdateGroup<Rule, DecayOf(kVariant), FoldOf(kVariant), Ops>(
          Ops::MaskedLoadU(grad + i, count), s, c);
#pragma GCC unroll 4
      for (int k = 0; k < kStates; ++k) Ops::MaskedStoreU(state[k] + i, count, s[k]);
    }
  } else {
    for (; i < n; ++i) UpdateOne<Rule, kVariant>(grad, state, i, one);
  }
}

// The loops of one rule, [variant], from a loop template `Loop<Rule, kVariant>`.
template <template <typename, int> class Loop, typename Rule>
constexpr auto VariantsOf() {
  return std::array<UpdateLoop, kUpdateVariants>{Loop<Rule, 0>::kFn, Loop<Rule, 1>::kFn,
                                                 Loop<Rule, 2>::kFn, Loop<Rule, 3>::kFn};
}

// The table of one path, [rule][variant], from its loop template (ScalarLoop,
// or VectorLoop<Ops>::Of).
template <template <typename, int> class Loop>
constexpr UpdateLoops UpdateLoopsOf() {
  return UpdateLoops{{VariantsOf<Loop, fused::SgdRule>(),
                      VariantsOf<Loop, fused::SgdMomentumRule<false>>(),
                      VariantsOf<Loop, fused::SgdMomentumRule<true>>(),
                      VariantsOf<Loop, fused::AdamRule<false>>(),
                      VariantsOf<Loop, fused::AdamRule<true>>()}};
}

template <typename Rule, int kVariant>
struct ScalarLoop {
  static constexpr UpdateLoop kFn = ScalarUpdate<Rule, kVariant>;
};

template <typename Ops>
struct VectorLoop {
  template <typename Rule, int kVariant>
  struct Of {
    static constexpr UpdateLoop kFn = VectorUpdate<Ops, Rule, kVariant>;
  };
};

}  // namespace
}  // namespace simd
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_LOOP_H_
