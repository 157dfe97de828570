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
// The host emulation compares every rule with the CPU kernels run under
// FTZ/DAZ, on values placed around FLT_MIN, subnormals, Inf and NaN.
//
// NOTE [plain IEEE first]: FlushedMath's flushing costs about ten
// instructions an op (both operands tested, the result tested, a branch),
// a dozen and more ops an Adam element, enough to make the update bound by
// instructions rather than bytes. Yet its bits differ from the _rn ops'
// alone only where an operand is subnormal (DAZ), a result is non-zero and at
// or below FLT_MIN (FTZ), or a NaN appears (x86's NaN rules); where none of
// that happens in an element's update, FlushedMath computes the same values
// op for op. So each element of a pack first takes ScreenedMath: the _rn ops,
// each value carrying the smallest ScreenKey of the values it was computed
// from (an integer multiply-add and two mins an op; the per-step
// coefficients are screened once instead), a key below kScreenLimit marking a
// subnormal or tiny value on the way. An element marked so, or with a NaN
// among its results (every op passes a NaN operand on to its result; Max, a
// select, marks one), is updated again by FlushedMath from its loaded values,
// still in registers. The singles (a row's head and tail, rows not in packs)
// take FlushedMath alone. The host emulation's IEEE ops return a NaN no x86
// op makes (MarkNaN), so that its comparison with the CPU kernels shows any
// element the screen let through wrongly.
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
// On the host (the emulation) a NaN result is a signalling NaN, which no x86
// op returns (x86 quietens operand NaNs, and makes 0xffc00000): the GPU's is
// its one canonical NaN, 0x7fffffff, whatever the operands, and either way a
// NaN of an IEEE op that reached memory would differ from the CPU kernels'.
// The emulation's comparison fails on a signalling NaN, so it shows any that
// FlushedMath (which makes x86's NaNs) did not replace.
constexpr uint32_t kEmulatedIeeeNaNBits = 0x7fa5a5a5u;  // the quiet bit clear
FLS_HOST_DEVICE float MarkNaN(float r) {
  return r != r ? BitCast<float>(kEmulatedIeeeNaNBits) : r;
}
FLS_HOST_DEVICE float RnAdd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return MarkNaN(a + b);
#endif
}
FLS_HOST_DEVICE float RnSub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return MarkNaN(a - b);
#endif
}
FLS_HOST_DEVICE float RnMul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return MarkNaN(a * b);
#endif
}
FLS_HOST_DEVICE float RnDiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return MarkNaN(a / b);
#endif
}
FLS_HOST_DEVICE float RnSqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return MarkNaN(std::sqrt(a));
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

// ---- Plain IEEE first (NOTE [plain IEEE first]) -----------------------------------
// 0 builds the kernels with FlushedMath alone: tools/gpu_check.sh times both
// shapes of the fused Adam launch on a GPU with it.
#ifndef FLS_FUSED_UPDATE_PLAIN_FIRST
#define FLS_FUSED_UPDATE_PLAIN_FIRST 1
#endif

// 2 * bits - 2 (mod 2^32), the sign bit shifted out: below kScreenLimit
// exactly for the values whose magnitude is in [the smallest subnormal,
// FLT_MIN]. Zeros, normals above FLT_MIN, Infs and NaNs are above it.
constexpr uint32_t kScreenLimit = kFloatMinNormalBits * 2u;
FLS_HOST_DEVICE uint32_t ScreenKey(float x) { return BitCast<uint32_t>(x) * 2u - 2u; }
static_assert(1u * 2u - 2u < kScreenLimit && kFloatMinNormalBits * 2u - 2u < kScreenLimit &&
                  (kFloatMinNormalBits + 1u) * 2u - 2u == kScreenLimit &&
                  0u * 2u - 2u > kScreenLimit && (kFloatSignBit | 0u) * 2u - 2u > kScreenLimit,
              "the smallest subnormal and FLT_MIN below the limit, the next float and +-0 not");
FLS_HOST_DEVICE uint32_t MinU32(uint32_t a, uint32_t b) { return a < b ? a : b; }

struct Screened {
  float x;
  uint32_t key;  // the smallest ScreenKey of x and of what x was computed from
};

// The fused update's `Math` policy of the first pass.
struct ScreenedMath {
  using V = Screened;
  FLS_HOST_DEVICE static V Splat(float x) { return V{x, ScreenKey(x)}; }
  FLS_HOST_DEVICE static V Add(V a, V b) { return Of(RnAdd(a.x, b.x), a, b); }
  FLS_HOST_DEVICE static V Sub(V a, V b) { return Of(RnSub(a.x, b.x), a, b); }
  FLS_HOST_DEVICE static V Mul(V a, V b) { return Of(RnMul(a.x, b.x), a, b); }
  FLS_HOST_DEVICE static V Div(V a, V b) { return Of(RnDiv(a.x, b.x), a, b); }
  FLS_HOST_DEVICE static V Sqrt(V a) { return Of(RnSqrt(a.x), a, a); }
  // Eigen's select (FlushedMath::Max) passes a NaN operand on only when it is
  // the first: a NaN either way is marked here.
  FLS_HOST_DEVICE static V Max(V a, V b) {
    const bool nan = a.x != a.x || b.x != b.x;
    return V{a.x < b.x ? b.x : a.x, nan ? 0u : MinU32(a.key, b.key)};
  }

 private:
  FLS_HOST_DEVICE static V Of(float r, V a, V b) {
    return V{r, MinU32(MinU32(a.key, b.key), ScreenKey(r))};
  }
};

// The coefficients as ScreenedMath's values. They carry no key (~0, which the
// compiler folds out of every op): *pass says whether all of them pass the
// screen, checked here once rather than in every op.
FLS_HOST_DEVICE fused::Coefficients<ScreenedMath> Screen(const UpdateCoefficients& c, bool* pass) {
  uint32_t key = ~0u;
  const auto value = [&key](float x) {
    key = MinU32(key, ScreenKey(x));
    return Screened{x, ~0u};
  };
  const fused::Coefficients<ScreenedMath> screened = {
      value(c.unscale),          value(c.clip),
      value(c.lr),               value(c.weight_decay),
      value(c.momentum),         value(c.alpha),
      value(c.one_minus_beta_1), value(c.one_minus_beta_2),
      value(c.epsilon),          value(c.weight_decay_lr),
      value(c.clip_lr)};
  *pass = key >= kScreenLimit;
  return screened;
}

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
// packed) go through one loop. Each kernel holds the rule's element math in
// plain IEEE ops once per lane of a pack and in FlushedMath twice (the lanes
// the screen marks, NOTE [plain IEEE first], and those elements), for each of
// the four variants: 20 kernels for 9 architectures, in the library and in
// the bundle tools/gpu_check.sh ships to the GPU machine (two packs per
// thread and separate head and tail code made it three times larger;
// FlushedMath once per lane, 1.6 times).

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

// The first pass on one element group: the states `s` updated through
// ScreenedMath; returns the smallest key of the results, 0 where one is a NaN
// (NOTE [plain IEEE first]).
template <typename Rule, bool kDecay, bool kFold>
FLS_HOST_DEVICE uint32_t ScreenedUpdate(float grad, float* s,
                                        const fused::Coefficients<ScreenedMath>& c) {
  Screened v[Rule::kStates];
  FLS_UNROLL
  for (int k = 0; k < Rule::kStates; ++k) v[k] = ScreenedMath::Splat(s[k]);
  fused::UpdateGroup<Rule, kDecay, kFold, ScreenedMath>(ScreenedMath::Splat(grad), v, c);
  uint32_t key = ~0u;
  FLS_UNROLL
  for (int k = 0; k < Rule::kStates; ++k) {
    s[k] = v[k].x;
    key = MinU32(key, v[k].x != v[k].x ? 0u : v[k].key);
  }
  return key;
}

// A lane of a pack in registers chosen at run time: selects, where an index
// would move the pack to local memory.
FLS_HOST_DEVICE float LaneAt(const Pack<float>& pack, int lane) {
  float x = pack.Lane(0);
  FLS_UNROLL
  for (int i = 1; i < Pack<float>::kLanes; ++i) x = lane == i ? pack.Lane(i) : x;
  return x;
}
FLS_HOST_DEVICE void SetLaneAt(Pack<float>& pack, int lane, float x) {
  FLS_UNROLL
  for (int i = 0; i < Pack<float>::kLanes; ++i) pack.SetLane(i, lane == i ? x : pack.Lane(i));
}

// Packs [0, num_packs) of 16-byte aligned arrays; pack p is done by thread
// p % kBlockSize (as ScalePacks). Every lane takes the first pass; the lanes
// it marks, or all where the coefficients did not pass the screen, then take
// FlushedMath from their loaded values, in a loop that is not unrolled, so
// that a kernel holds FlushedMath's code once here (NOTE [plain IEEE first],
// NOTE [update code size]).
template <typename Rule, bool kDecay, bool kFold, typename Memory>
FLS_HOST_DEVICE void UpdatePacks(const Pack<float>* grad, Pack<float>* const* state, int num_packs,
                                 int thread, const UpdateCoefficients& c, const Memory& memory) {
  constexpr int kStates = Rule::kStates;
  constexpr int kLanes = Pack<float>::kLanes;
  bool screenable;
  const fused::Coefficients<ScreenedMath> screened = Screen(c, &screenable);
  for (int p = thread; p < num_packs; p += kBlockSize) {
    const Pack<float> g = memory.Load(grad + p);
    Pack<float> in[kStates];
    FLS_UNROLL
    for (int k = 0; k < kStates; ++k) in[k] = memory.Load(state[k] + p);
    Pack<float> out[kStates];
    uint32_t again = 0;  // bit `lane`: FlushedMath redoes that lane
    FLS_UNROLL
    for (int lane = 0; lane < kLanes; ++lane) {
      float s[kStates];
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) s[k] = in[k].Lane(lane);
      if (!FLS_FUSED_UPDATE_PLAIN_FIRST || !screenable ||
          ScreenedUpdate<Rule, kDecay, kFold>(g.Lane(lane), s, screened) < kScreenLimit) {
        again |= 1u << lane;
      }
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) out[k].SetLane(lane, s[k]);
    }
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
    for (int lane = 0; again != 0; ++lane, again >>= 1) {
      if ((again & 1u) == 0) continue;
      float s[kStates];
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) s[k] = LaneAt(in[k], lane);
      fused::UpdateGroup<Rule, kDecay, kFold, FlushedMath>(LaneAt(g, lane), s, c);
      FLS_UNROLL
      for (int k = 0; k < kStates; ++k) SetLaneAt(out[k], lane, s[k]);
    }
    FLS_UNROLL
    for (int k = 0; k < kStates; ++k) memory.Store(state[k] + p, out[k]);
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
