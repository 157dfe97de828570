// See fused_update_cpu.h. The portable loops are compiled here for the
// default target (FLS_SIMD_TARGET empty).
#define FLS_SIMD_TARGET
#include "tf_ops/core/cpu/fused_update_loop.h"

#include <algorithm>

#include "tf_ops/core/cpu/fused_update_cpu.h"

namespace fixed_loss_scale {
namespace simd {

extern const UpdateLoops kScalarUpdateLoops = UpdateLoopsOf<ScalarLoop>();

}  // namespace simd

namespace {

// The loops of `path` (NOTE [CPU paths] in multi_tensor_scale_cpu.h): the
// update has no 16-bit storage, so no MXCSR-dependent variant.
const UpdateLoops& UpdateLoopsFor(CpuPath path) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (path == CpuPath::kAvx512) return simd::kAvx512UpdateLoops;
  if (path == CpuPath::kAvx2) return simd::kAvx2UpdateLoops;
#endif
  return simd::kScalarUpdateLoops;
}

void RunUpdate(UpdateLoop loop, UpdateRule rule, const UpdateTensor& tensor, int64_t first,
               int64_t last, const UpdateScalars& scalars) {
  if (first >= last) return;
  float* state[kMaxUpdateStates] = {};
  for (int k = 0; k < UpdateStates(rule); ++k) state[k] = tensor.state[k] + first;
  loop(tensor.grad + first, state, last - first, scalars);
}

UpdateLoop LoopOf(const UpdateLoops& loops, UpdateRule rule, const UpdateTensor& tensor) {
  return loops.loops[static_cast<int>(rule)][UpdateVariant(tensor)];
}

}  // namespace

std::vector<int64_t> UpdateElementOffsets(const std::vector<UpdateTensor>& tensors) {
  std::vector<int64_t> offsets(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    offsets[i + 1] = offsets[i] + tensors[i].num_elements;
  }
  return offsets;
}

ShardPlan PlanUpdateShards(UpdateRule rule, int64_t total_elements, int64_t threads) {
  const int64_t bytes_per_element = UpdateBytesPerElement(rule);
  const ShardPlan bytes = PlanShards(total_elements * bytes_per_element, threads);
  if (bytes.num_shards <= 1) return ShardPlan{total_elements, 1};
  const int64_t shard_elements = (bytes.shard_bytes + bytes_per_element - 1) / bytes_per_element;
  return ShardPlan{shard_elements, (total_elements + shard_elements - 1) / shard_elements};
}

void UpdateElementRange(UpdateRule rule, const std::vector<UpdateTensor>& tensors,
                        const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                        const UpdateScalars& scalars) {
  const UpdateLoops& loops = UpdateLoopsFor(ActiveCpuPath());
  // The first tensor that ends after `begin`; tensors are visited until one
  // starts at or after `end` (NOTE [byte sharding], in elements).
  size_t i = std::upper_bound(offsets.begin() + 1, offsets.end(), begin) - (offsets.begin() + 1);
  for (; i < tensors.size() && offsets[i] < end; ++i) {
    const int64_t first = std::max<int64_t>(begin - offsets[i], 0);
    const int64_t last = std::min(end, offsets[i + 1]) - offsets[i];
    RunUpdate(LoopOf(loops, rule, tensors[i]), rule, tensors[i], first, last, scalars);
  }
}

void UpdateElementsWithPath(CpuPath path, UpdateRule rule, const UpdateTensor& tensor,
                            int64_t first, int64_t last, const UpdateScalars& scalars) {
  const UpdateLoops& loops = UpdateLoopsFor(CpuPathSupported(path) ? path : CpuPath::kScalar);
  RunUpdate(LoopOf(loops, rule, tensor), rule, tensor, first, last, scalars);
}

}  // namespace fixed_loss_scale
