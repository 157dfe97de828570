// What one (block, thread) of the fused optimizer update's GPU launch does
// (FixedApplySgd, FixedApplyAdam), as plain C++: the element math of
// tf_ops/core/fused_update_math.h through FlushedMath, over one chunk of one
// variable in 16-byte packs. fused_update.cu wraps it in __global__ kernels;
// tf_ops/tests/fused_update_emulation_test.cc (g++, no GPU) runs the same code
// for every (block, thread) of the same launch on the host, against the CPU
// kernels (tf_ops/core/cpu/fused_update_cpu.h).
//
// NOTE [fused update on the GPU]: the CPU kernels run on TensorFlow's threads,
// whose MXCSR has FTZ and DAZ on (NOTE [fused update numerics]), and the ops
// promise their bits on every device. The GPU kernel therefore runs each op
// of the rule as FlushedMath below: IEEE round-to-nearest (the _rn
// intrinsics, never contracted, no FTZ mode), with x86's FTZ/DAZ applied in
// software, as the unscale kernels do (NOTE [flush to zero in software] in
// scale_math.h):
//   * DAZ: a subnormal operand is the zero of its sign;
//   * FTZ: a result whose magnitude, rounded as if the exponent range were
//     unbounded, is below FLT_MIN is the zero of the result's sign (x86
//     detects tininess after rounding). A sum or difference of normal floats
//     below FLT_MIN is exact, so it is tiny exactly when its IEEE result is;
//     a product or quotient at or below FLT_MIN is redone with one operand
//     times 2^64 (exact there), which lands in the normal range near FLT_MIN,
//     rounded once; the square root of a normal float is never tiny;
//   * NaNs as x86 makes them: an operand's NaN, quietened (the first
//     operand's when both are), else the default NaN 0xffc00000; max is
//     Eigen's `a < b ? b : a`, a select, which returns `a` unchanged.
// Only results at or below FLT_MIN (or NaN) take the slow branch, so an
// ordinary element costs one compare per op more than plain IEEE.
// The host emulation compares every rule with the CPU kernels run under
// FTZ/DAZ, on values placed around FLT_MIN, subnormals, Inf and NaN.
//
// NOTE [flag read once per block]: the all-finite flag and the per-step
// scalars are device scalars; one thread of each block reads them
// (ReadBlockScalars) and shares them with its block before any state is
// touched, so a false flag stops every block before its first load of a
// state array, and a block's 256 threads make one read each, not 256.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_BODY_H_
#define FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_BODY_H_

#include <cmath>
#include <cstdint>

#include "tf_ops/core/fused_update_math.h"
#include "tf_ops/core/gpu/device_memory.h"
#include "tf_ops/core/gpu/update_table.h"
#include "tf_ops/core/scale_math.h"

namespace fixed_loss_scale {
namespace gpu {

// ---- IEEE float32 ops, rounded once to nearest ---------------------------------
FLS_HOST_DEVICE float RnAdd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FLS_HOST_DEVICE float RnSub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
FLS_HOST_DEVICE float RnMul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FLS_HOST_DEVICE float RnDiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FLS_HOST_DEVICE float RnSqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// ---- x86 FTZ/DAZ in IEEE arithmetic (NOTE [fused update on the GPU]) -------------
constexpr uint32_t kFloatSignBit = 0x80000000u;
constexpr uint32_t kFloatMinNormalBits = 0x00800000u;
constexpr uint32_t kFloatInfBits = 0x7f800000u;
constexpr uint32_t kX86DefaultNaNBits = 0xffc00000u;
constexpr float kTinyScale = 0x1p64f;
constexpr float kScaledMinNormal = 0x1p-62f;  // FLT_MIN * kTinyScale

FLS_HOST_DEVICE uint32_t MagnitudeBits(float x) { return BitCast<uint32_t>(x) & ~kFloatSignBit; }

// Whether an IEEE result needs more than itself: zero, at or below FLT_MIN,
// or NaN.
FLS_HOST_DEVICE bool NeedsFlushRule(float r) {
  const uint32_t magnitude = MagnitudeBits(r);
  return magnitude <= kFloatMinNormalBits || magnitude > kFloatInfBits;
}

FLS_HOST_DEVICE float ZeroOfSign(float x) {
  return BitCast<float>(BitCast<uint32_t>(x) & kFloatSignBit);
}

// What x86 returns for an op on a and b whose IEEE result is NaN.
FLS_HOST_DEVICE float X86NaN(float a, float b) {
  if (IsNaNBits<float>(BitCast<uint32_t>(a))) return QuietNaN<float>(BitCast<uint32_t>(a));
  if (IsNaNBits<float>(BitCast<uint32_t>(b))) return QuietNaN<float>(BitCast<uint32_t>(b));
  return BitCast<float>(kX86DefaultNaNBits);
}

// r = a +- b of DAZ'd operands: a non-zero result below FLT_MIN is exact, so
// tiny.
FLS_HOST_DEVICE float FlushSum(float r, float a, float b) {
  if (!NeedsFlushRule(r)) return r;
  if (r != r) return X86NaN(a, b);
  return r != 0.0f && MagnitudeBits(r) < kFloatMinNormalBits ? ZeroOfSign(r) : r;
}

// r = a * b (kDivide false) or a / b of DAZ'd operands; where r is at or
// below FLT_MIN the op is redone with a times kTinyScale, exact there.
template <bool kDivide>
FLS_HOST_DEVICE float FlushProduct(float r, float a, float b) {
  if (!NeedsFlushRule(r)) return r;
  if (r != r) return X86NaN(a, b);
  if (r == 0.0f) return r;
  const float scaled_a = RnMul(a, kTinyScale);
  const float rescaled = kDivide ? RnDiv(scaled_a, b) : RnMul(scaled_a, b);
  return MagnitudeBits(rescaled) < BitCast<uint32_t>(kScaledMinNormal) ? ZeroOfSign(r) : r;
}

// The fused update's `Math` policy on the GPU (fused_update_math.h).
struct FlushedMath {
  using V = float;
  FLS_HOST_DEVICE static V Splat(float x) { return x; }
  FLS_HOST_DEVICE static V Add(V a, V b) {
    a = FlushSubnormal(a);
    b = FlushSubnormal(b);
    return FlushSum(RnAdd(a, b), a, b);
  }
  FLS_HOST_DEVICE static V Sub(V a, V b) {
    a = FlushSubnormal(a);
    b = FlushSubnormal(b);
    return FlushSum(RnSub(a, b), a, b);
  }
  FLS_HOST_DEVICE static V Mul(V a, V b) {
    a = FlushSubnormal(a);
    b = FlushSubnormal(b);
    return FlushProduct<false>(RnMul(a, b), a, b);
  }
  FLS_HOST_DEVICE static V Div(V a, V b) {
    a = FlushSubnormal(a);
    b = FlushSubnormal(b);
    return FlushProduct<true>(RnDiv(a, b), a, b);
  }
  FLS_HOST_DEVICE static V Sqrt(V a) {
    a = FlushSubnormal(a);
    const float r = RnSqrt(a);
    return r != r ? X86NaN(a, a) : r;
  }
  FLS_HOST_DEVICE static V Max(V a, V b) {
    a = FlushSubnormal(a);
    b = FlushSubnormal(b);
    return a < b ? b : a;
  }
};

using UpdateCoefficients = fused::Coefficients<FlushedMath>;

// ---- Once per block (NOTE [flag read once per block]) -----------------------------
template <typename Memory>
FLS_HOST_DEVICE float ScalarOr(const float* address, float absent, const Memory& memory) {
  return address == nullptr ? absent : memory.Load(address);
}

// Whether the launch updates anything, and if so its coefficients: the CPU
// loops' (CoefficientsOf in cpu/fused_update_loop.h), clip * lr under FTZ.
template <typename Memory>
FLS_HOST_DEVICE bool ReadBlockScalars(const UpdateHeader& header, const Memory& memory,
                                      UpdateCoefficients* c) {
  if (!memory.Load(header.all_finite)) return false;
  const UpdateScalarPointers& p = header.scalars;
  c->unscale = header.unscale;
  c->clip = ScalarOr(p.clip, 1.0f, memory);
  c->lr = ScalarOr(p.lr, 0.0f, memory);
  c->weight_decay = ScalarOr(p.weight_decay, 0.0f, memory);
  c->momentum = ScalarOr(p.momentum, 0.0f, memory);
  c->alpha = ScalarOr(p.alpha, 0.0f, memory);
  c->one_minus_beta_1 = ScalarOr(p.one_minus_beta_1, 0.0f, memory);
  c->one_minus_beta_2 = ScalarOr(p.one_minus_beta_2, 0.0f, memory);
  c->epsilon = ScalarOr(p.epsilon, 0.0f, memory);
  c->weight_decay_lr = ScalarOr(p.weight_decay_lr, 0.0f, memory);
  c->clip_lr = FlushedMath::Mul(c->clip, c->lr);
  return true;
}

// ---- The work of one thread -------------------------------------------------------
// NOTE [update code size]: a thread loads one 16-byte pack of every array of
// its rule before it computes (two to five packs, 32 to 80 bytes in flight
// per thread, against the unscale kernel's 64), and the elements outside the
// packs (a packed row's head and tail, or every element of a row that is not
// packed) go through one loop. Each kernel holds the rule's element math
// once per lane of a pack plus once for those elements, for each of the four
// variants: 20 kernels for 9 architectures, in an object that
// tools/gpu_check.sh ships to the GPU machine (two packs per thread and
// separate head and tail code made it three times larger).

// Element i of the gradient and of every state.
template <typename Rule, bool kDecay, bool kFold, typename Memory>
FLS_HOST_DEVICE void UpdateOneElement(const float* grad, float* const* state, int i,
                                      const UpdateCoefficients& c, const Memory& memory) {
  float s[Rule::kStates];
  FLS_UNROLL
  for (int k = 0; k < Rule::kStates; ++k) s[k] = memory.Load(state[k] + i);
  fused::UpdateGroup<Rule, kDecay, kFold, FlushedMath>(memory.Load(grad + i), s, c);
  FLS_UNROLL
  for (int k = 0; k < Rule::kStates; ++k) memory.Store(state[k] + i, s[k]);
}

// Packs [0, num_packs) of 16-byte aligned arrays; pack p is done by thread
// p % kBlockSize (as ScalePacks).
template <typename Rule, bool kDecay, bool kFold, typename Memory>
FLS_HOST_DEVICE void UpdatePacks(const Pack<float>* grad, Pack<float>* const* state, int num_packs,
                                 int thread, const UpdateCoefficients& c, const Memory& memory) {
  constexpr int kStates = Rule::kStates;
  for (int p = thread; p < num_packs; p += kBlockSize) {
    const Pack<float> g = memory.Load(grad + p);
    Pack<float> s[kStates];
    FLS_UNROLL
    for (int k = 0; k < kStates; ++k) s[k] = memory.Load(state[k] + p);
    FLS_UNROLL
    for (int lane = 0; lane < Pack<float>::kLanes; ++lane) {
      float lanes[kStates];
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) lanes[k] = s[k].Lane(lane);
      fused::UpdateGroup<Rule, kDecay, kFold, FlushedMath>(g.Lane(lane), lanes, c);
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) s[k].SetLane(lane, lanes[k]);
    }
    FLS_UNROLL
    for (int k = 0; k < kStates; ++k) memory.Store(state[k] + p, s[k]);
  }
}

// Thread `thread`'s share of elements [range.begin, range.end) of one row (a
// chunk, with the head in chunk 0), cut as ScaleRange cuts it: the packs,
// then the elements before them (the head) and after them (the tail), or
// every element when the row is not packed, in one loop (NOTE [update code
// size]).
template <typename Rule, bool kDecay, bool kFold, typename Memory>
FLS_HOST_DEVICE void UpdateRange(const UpdateRow& row, ElementRange range, TensorLayout layout,
                                 int thread, const UpdateCoefficients& c, const Memory& memory) {
  constexpr int kStates = Rule::kStates;
  constexpr int kLanes = Pack<float>::kLanes;
  const float* grad = row.grad + range.begin;
  float* state[kStates];
  FLS_UNROLL
  for (int k = 0; k < kStates; ++k) state[k] = row.state[k] + range.begin;
  const int size = static_cast<int>(range.end - range.begin);
  int packs_begin = size;  // not packed: every element is a head element
  int num_packs = 0;
  if (layout.packed) {
    packs_begin = static_cast<int>(MinInt64(MaxInt64(layout.head - range.begin, 0), size));
    num_packs = (size - packs_begin) / kLanes;
    Pack<float>* packs[kStates];
    FLS_UNROLL
    for (int k = 0; k < kStates; ++k) {
      packs[k] = reinterpret_cast<Pack<float>*>(state[k] + packs_begin);
    }
    UpdatePacks<Rule, kDecay, kFold>(reinterpret_cast<const Pack<float>*>(grad + packs_begin),
                                     packs, num_packs, thread, c, memory);
  }
  const int tail_begin = packs_begin + num_packs * kLanes;
  const int singles = packs_begin + (size - tail_begin);
  for (int j = thread; j < singles; j += kBlockSize) {
    const int i = j < packs_begin ? j : tail_begin + (j - packs_begin);
    UpdateOneElement<Rule, kDecay, kFold>(grad, state, i, c, memory);
  }
}

// The kernel body after ReadBlockScalars said to update: thread `thread`'s
// share of list chunk `block` (one block per chunk, as ScaleTableChunk), with
// the one switch over the row's variant (decay, fold).
template <typename Rule, typename Table, typename Memory>
FLS_HOST_DEVICE void UpdateTableChunk(const Table& table, int64_t block, int thread,
                                      const UpdateCoefficients& c, const Memory& memory) {
  const int64_t t = TensorOfChunk(table, block);
  const UpdateRow& row = table.row[t];
  const TensorLayout layout = UpdateLayoutOf(row, Rule::kStates);
  const ElementRange range =
      ChunkRange(block - table.chunk_begin[t], row.num_elements, layout, DType::kFloat);
  switch (row.variant) {
    case 0:
      return UpdateRange<Rule, false, false>(row, range, layout, thread, c, memory);
    case 1:
      return UpdateRange<Rule, true, false>(row, range, layout, thread, c, memory);
    case 2:
      return UpdateRange<Rule, false, true>(row, range, layout, thread, c, memory);
    default:
      return UpdateRange<Rule, true, true>(row, range, layout, thread, c, memory);
  }
}

// Calls `visit(Rule())` with the rule type of `rule` (fused_update_math.h).
template <typename Visitor>
auto VisitRule(UpdateRule rule, Visitor&& visit) {
  switch (rule) {
    case UpdateRule::kSgd:
      return visit(fused::SgdRule());
    case UpdateRule::kSgdMomentum:
      return visit(fused::SgdMomentumRule<false>());
    case UpdateRule::kSgdNesterov:
      return visit(fused::SgdMomentumRule<true>());
    case UpdateRule::kAdam:
      return visit(fused::AdamRule<false>());
    case UpdateRule::kAdamAmsgrad:
      break;
  }
  return visit(fused::AdamRule<true>());
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_BODY_H_
