// Kernels that each run one 16-byte pack of every array of a fused update
// rule per thread, so that their SASS is the rule's element path and little
// else. tools/gpu_check.sh counts each kernel's instructions from its entry to
// its first EXIT, the straight line an ordinary element runs (slow paths are
// branched to, out of line, or here a trap), less Baseline's (the loads and
// stores), per element (docs/GPU.md, "Plain IEEE first"):
//   PlainFirst<Rule>    ScreenedUpdate on each lane, as UpdatePacks runs it
//                       (NOTE [plain IEEE first] in fused_update_body.h), the
//                       second pass a trap;
//   FlushedAlone<Rule>  the rule in FlushedMath's ordinary path: both operands
//                       flushed, the op, the result's test, its slow branch a
//                       trap (FastFlushedMath below mirrors FlushedMath for
//                       this count alone).
// Device code only: nothing launches these kernels.
#include "tf_ops/core/gpu/fused_update_body.h"

namespace fixed_loss_scale {
namespace gpu {

__device__ __forceinline__ void Trap() { asm volatile("trap;"); }

// What FlushedMath executes for a result that needs no flush rule.
__device__ __forceinline__ float OrdinaryResult(float r) {
  if (NeedsFlushRule(r) && r != 0.0f) Trap();
  return r;
}
struct FastFlushedMath {
  using V = float;
  __device__ static V Splat(float x) { return x; }
  __device__ static V Add(V a, V b) {
    return OrdinaryResult(RnAdd(FlushSubnormal(a), FlushSubnormal(b)));
  }
  __device__ static V Sub(V a, V b) {
    return OrdinaryResult(RnSub(FlushSubnormal(a), FlushSubnormal(b)));
  }
  __device__ static V Mul(V a, V b) {
    return OrdinaryResult(RnMul(FlushSubnormal(a), FlushSubnormal(b)));
  }
  __device__ static V Div(V a, V b) {
    return OrdinaryResult(RnDiv(FlushSubnormal(a), FlushSubnormal(b)));
  }
  __device__ static V Sqrt(V a) { return OrdinaryResult(RnSqrt(FlushSubnormal(a))); }
  __device__ static V Max(V a, V b) { return FlushedMath::Max(a, b); }
};

struct ProbeArrays {
  const Pack<float>* grad;
  Pack<float>* state[kMaxUpdateStates];
};

enum class ProbeKind { kBaseline, kPlainFirst, kFlushedAlone };

template <typename Rule, ProbeKind kKind>
__global__ void UpdateProbe(ProbeArrays arrays, UpdateCoefficients c) {
  constexpr int kStates = Rule::kStates;
  const Pack<float> g = arrays.grad[threadIdx.x];
  Pack<float> in[kStates], out[kStates];
#pragma unroll
  for (int k = 0; k < kStates; ++k) in[k] = arrays.state[k][threadIdx.x];
  bool screenable;
  const fused::Coefficients<ScreenedMath> screened = Screen(c, &screenable);
  fused::Coefficients<FastFlushedMath> fast;
  static_assert(sizeof(fast) == sizeof(c), "the same coefficients");
  memcpy(&fast, &c, sizeof(c));
  uint32_t key = screenable ? ~0u : 0u;
#pragma unroll
  for (int lane = 0; lane < Pack<float>::kLanes; ++lane) {
    float s[kStates];
#pragma unroll
    for (int k = 0; k < kStates; ++k) s[k] = in[k].Lane(lane);
    if (kKind == ProbeKind::kPlainFirst) {
      key = MinU32(key, ScreenedUpdate<Rule, false, false>(g.Lane(lane), s, screened));
    } else if (kKind == ProbeKind::kFlushedAlone) {
      fused::UpdateGroup<Rule, false, false, FastFlushedMath>(g.Lane(lane), s, fast);
    } else {
      s[0] = s[0] + g.Lane(lane);  // keeps the gradient's load
    }
#pragma unroll
    for (int k = 0; k < kStates; ++k) out[k].SetLane(lane, s[k]);
  }
  if (key < kScreenLimit) Trap();
#pragma unroll
  for (int k = 0; k < kStates; ++k) arrays.state[k][threadIdx.x] = out[k];
}

#define FLS_UPDATE_PROBES(Rule)                                                          \
  template __global__ void UpdateProbe<Rule, ProbeKind::kBaseline>(ProbeArrays,          \
                                                                   UpdateCoefficients);  \
  template __global__ void UpdateProbe<Rule, ProbeKind::kPlainFirst>(ProbeArrays,        \
                                                                     UpdateCoefficients); \
  template __global__ void UpdateProbe<Rule, ProbeKind::kFlushedAlone>(ProbeArrays,      \
                                                                       UpdateCoefficients);
FLS_UPDATE_PROBES(fused::SgdRule)
FLS_UPDATE_PROBES(fused::SgdMomentumRule<false>)
FLS_UPDATE_PROBES(fused::SgdMomentumRule<true>)
FLS_UPDATE_PROBES(fused::AdamRule<false>)
FLS_UPDATE_PROBES(fused::AdamRule<true>)
#undef FLS_UPDATE_PROBES

}  // namespace gpu
}  // namespace fixed_loss_scale
