// The CPU core of the fused optimizer updates (FixedApplySgd, FixedApplyAdam):
// one pass over a list of float32 variables that unscales each scaled gradient
// in registers and applies Keras 3's SGD or Adam step to the variable and its
// slots in place (the element math: tf_ops/core/fused_update_math.h, NOTE
// [fused update numerics]). Plain C++ over pointers, no TensorFlow header; the
// TensorFlow adapter (tf_ops/tf/kernels/fused_update_kernels.cc) looks up and
// locks the variables and runs the shards this core plans on TensorFlow's
// threads.
//
// Sharding follows NOTE [byte sharding] and NOTE [shard plan]
// (multi_tensor_scale_cpu.h) in elements: the tensors are laid end to end and
// split into ranges of elements; a shard's size in bytes is the traffic of
// its elements (the gradient read, every state read and written), so an Adam
// shard holds fewer elements than an SGD one.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_CPU_H_
#define FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_CPU_H_

#include <array>
#include <cstdint>
#include <vector>

#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"

namespace fixed_loss_scale {

// The update rules, one per Keras configuration.
enum class UpdateRule : uint8_t {
  kSgd = 0,          // SGD, momentum 0: var
  kSgdMomentum = 1,  // SGD with momentum: var, momentum
  kSgdNesterov = 2,  // SGD with momentum, nesterov: var, momentum
  kAdam = 3,         // Adam / AdamW: var, m, v
  kAdamAmsgrad = 4,  // Adam / AdamW, amsgrad: var, m, v, vhat
};
constexpr int kNumUpdateRules = 5;
constexpr int kMaxUpdateStates = 4;

// How many float32 arrays a rule updates per variable (var and its slots).
constexpr int UpdateStates(UpdateRule rule) {
  return rule == UpdateRule::kSgd ? 1 : rule == UpdateRule::kAdam ? 3
                                      : rule == UpdateRule::kAdamAmsgrad ? 4 : 2;
}

// The per-step scalars, computed in the graph by Keras's expressions (NOTE
// [fused update numerics]); a rule reads the ones it needs.
struct UpdateScalars {
  float unscale = 1.0f;  // TensorReciprocalFactorFor(loss_scale).f
  float clip = 1.0f;     // the global-norm clipping factor, 1 without clipping
  float lr = 0.0f;
  float weight_decay = 0.0f;
  float momentum = 0.0f;  // SGD
  float alpha = 0.0f;     // Adam: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
  float one_minus_beta_1 = 0.0f;
  float one_minus_beta_2 = 0.0f;
  float epsilon = 0.0f;
  // What a variable of rank >= 1 is multiplied by for its weight decay:
  // Keras's wd * lr as Grappler computes it (NOTE [scalar factors]).
  float weight_decay_lr = 0.0f;
};

// One variable: its scaled gradient, and the arrays the rule updates in place,
// var first, then the slots in the op's input order (UpdateStates(rule) of
// them). None may overlap another.
struct UpdateTensor {
  const float* grad;
  float* state[kMaxUpdateStates];
  int64_t num_elements;
  bool decay;  // whether weight decay applies to this variable
  bool fold;   // NOTE [scalar factors] (tf_ops/core/fused_update_math.h)
};

// One element loop: elements [0, n) of grad and state (pointers already at
// the first element), for one rule and variant (UpdateVariant).
using UpdateLoop = void (*)(const float* grad, float* const* state, int64_t n,
                            const UpdateScalars& scalars);

// A tensor's loop variant: bit 0 decay, bit 1 fold.
constexpr int kUpdateVariants = 4;
constexpr int UpdateVariant(const UpdateTensor& tensor) {
  return (tensor.decay ? 1 : 0) | (tensor.fold ? 2 : 0);
}

// The loops of one CPU path, indexed [rule][variant].
struct UpdateLoops {
  std::array<UpdateLoop, kUpdateVariants> loops[kNumUpdateRules];
};

// Element offset of each tensor in the concatenated list, and the total:
// offsets.size() == tensors.size() + 1.
std::vector<int64_t> UpdateElementOffsets(const std::vector<UpdateTensor>& tensors);

// Bytes one element of `rule` moves: the gradient read, each state read and
// written.
constexpr int64_t UpdateBytesPerElement(UpdateRule rule) {
  return 4 * (1 + 2 * int64_t{UpdateStates(rule)});
}

// The shard plan of a list (NOTE [shard plan]) in elements: shard_bytes is
// the number of elements per shard.
ShardPlan PlanUpdateShards(UpdateRule rule, int64_t total_elements, int64_t threads);

// Updates the elements [begin, end) of the concatenated list with the active
// CpuPath. `offsets` comes from UpdateElementOffsets(tensors).
void UpdateElementRange(UpdateRule rule, const std::vector<UpdateTensor>& tensors,
                        const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                        const UpdateScalars& scalars);

// Elements [first, last) of one tensor with an explicit path, which must be
// supported (tests).
void UpdateElementsWithPath(CpuPath path, UpdateRule rule, const UpdateTensor& tensor,
                            int64_t first, int64_t last, const UpdateScalars& scalars);

namespace simd {
extern const UpdateLoops kScalarUpdateLoops;  // fused_update_cpu.cc
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
extern const UpdateLoops kAvx2UpdateLoops;    // fused_update_avx2.cc
extern const UpdateLoops kAvx512UpdateLoops;  // fused_update_avx512.cc
#endif
}  // namespace simd

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_FUSED_UPDATE_CPU_H_
