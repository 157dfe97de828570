// See fused_update.h. The kernels are thin wrappers of ReadBlockScalars and
// UpdateTableChunk (fused_update_body.h), one per rule and table; this file
// picks the table (update_table.h), fills it and launches.
#include "tf_ops/core/gpu/fused_update.h"

#include <type_traits>

#include "tf_ops/core/gpu/chunk_table.h"
#include "tf_ops/core/gpu/device_memory.h"
#include "tf_ops/core/gpu/fused_update_body.h"
#include "tf_ops/core/gpu/launch_support.h"
#include "tf_ops/core/gpu/update_table.h"

namespace fixed_loss_scale {
namespace gpu {
namespace {

// NOTE [flag read once per block] (fused_update_body.h).
template <typename Rule, typename Table>
__device__ __forceinline__ void UpdateBlock(const Table& table) {
  __shared__ UpdateCoefficients coefficients;
  __shared__ bool update;
  const DirectMemory memory;
  if (threadIdx.x == 0) update = ReadBlockScalars(table.header, memory, &coefficients);
  __syncthreads();
  if (!update) return;
  UpdateTableChunk<Rule>(table, blockIdx.x, threadIdx.x, coefficients, memory);
}

template <typename Rule, int64_t kCapacity>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    UpdateInlineTableKernel(const FLS_GRID_CONSTANT UpdateInlineTable<kCapacity> table) {
  UpdateBlock<Rule>(table);
}

template <typename Rule>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    UpdateBufferTableKernel(const FLS_GRID_CONSTANT UpdateBufferTable table) {
  UpdateBlock<Rule>(table);
}

template <typename Rule, int64_t kCapacity>
constexpr auto UpdateKernelFor(InlineTableOf<kCapacity, UpdateTables>) {
  return UpdateInlineTableKernel<Rule, kCapacity>;
}
template <typename Rule>
constexpr auto UpdateKernelFor(BufferTableOf<UpdateTables>) {
  return UpdateBufferTableKernel<Rule>;
}

size_t TableScratchBytes(int64_t num_tensors) {
  return TableKindHere<UpdateTables>(num_tensors) == TableKind::kBuffer
             ? UpdateBufferBytes(num_tensors)
             : 0;
}

// The launch of one rule with the table `table_of`: an inline table goes as
// the parameter; a buffer table is filled in the pinned `host_scratch` and
// copied to `device_scratch`, which the kernel's table then views.
template <typename Rule, typename TableOf>
cudaError_t LaunchRule(TableOf table_of, UpdateRule rule, const UpdateTensor* tensors,
                       int64_t num_tensors, const UpdateHeader& header, void* host_scratch,
                       void* device_scratch, cudaStream_t stream) {
  typename TableOf::Table table;
  int64_t total_chunks = 0;
  if constexpr (std::is_same_v<TableOf, BufferTableOf<UpdateTables>>) {
    if (host_scratch == nullptr || device_scratch == nullptr) return cudaErrorInvalidValue;
    UpdateBufferTable host_table = UpdateBufferTableAt(host_scratch, num_tensors, header);
    table = UpdateBufferTableAt(device_scratch, num_tensors, header);
    total_chunks = FillUpdateTable(rule, tensors, num_tensors, header, &host_table);
    if (total_chunks == 0) return cudaSuccess;  // no launch, and no table copy
    const cudaError_t copied =
        cudaMemcpyAsync(device_scratch, host_scratch, UpdateBufferBytes(num_tensors),
                        cudaMemcpyHostToDevice, stream);
    if (copied != cudaSuccess) return copied;
  } else {
    total_chunks = FillUpdateTable(rule, tensors, num_tensors, header, &table);
    if (total_chunks == 0) return cudaSuccess;
  }
  void* args[] = {&table};
  return LaunchGrid(reinterpret_cast<const void*>(UpdateKernelFor<Rule>(table_of)), total_chunks,
                    args, stream);
}

bool IsValidUpdateList(UpdateRule rule, const UpdateTensor* tensors, int64_t num_tensors) {
  if (static_cast<int>(rule) < 0 || static_cast<int>(rule) >= kNumUpdateRules) return false;
  if (num_tensors < 0 || (num_tensors > 0 && tensors == nullptr)) return false;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensors[t].num_elements < 0) return false;
    if (tensors[t].num_elements == 0) continue;
    if (tensors[t].grad == nullptr) return false;
    for (int k = 0; k < UpdateStates(rule); ++k) {
      if (tensors[t].state[k] == nullptr) return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace gpu

size_t FusedUpdateScratchBytes(int64_t num_tensors) {
  return num_tensors < 0 ? 0 : gpu::TableScratchBytes(num_tensors);
}

cudaError_t LaunchFusedUpdate(UpdateRule rule, const UpdateTensor* tensors, int64_t num_tensors,
                              float unscale, const UpdateScalarPointers& scalars,
                              const bool* all_finite, void* host_scratch, void* device_scratch,
                              cudaStream_t stream) {
  if (!gpu::IsValidUpdateList(rule, tensors, num_tensors) || all_finite == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (num_tensors == 0) return cudaSuccess;
  const gpu::UpdateHeader header{unscale, all_finite, scalars};
  return gpu::VisitRule(rule, [&](auto rule_type) {
    using Rule = decltype(rule_type);
    return gpu::WithTableFor<gpu::UpdateTables>(num_tensors, [&](auto table_of) {
      return gpu::LaunchRule<Rule>(table_of, rule, tensors, num_tensors, header, host_scratch,
                                   device_scratch, stream);
    });
  });
}

}  // namespace fixed_loss_scale
