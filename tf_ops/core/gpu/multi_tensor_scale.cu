// See multi_tensor_scale.h. The kernels are thin wrappers of ScaleTableChunks
// (multi_tensor_scale_body.h); this file picks the table, fills it and launches.
#include "tf_ops/core/gpu/multi_tensor_scale.h"

#include "tf_ops/core/gpu/multi_tensor_scale_body.h"

namespace fixed_loss_scale {
namespace gpu {
namespace {

// __grid_constant__ lets the body read the 32 KB table straight from the
// parameter bank through a reference, with no per-thread copy.
template <int64_t kCapacity>
__global__ void __launch_bounds__(kBlockSize)
    ScaleInlineTableKernel(const __grid_constant__ InlineTable<kCapacity> table) {
  ScaleTableChunk(table, blockIdx.x, threadIdx.x, DirectMemory());
}

__global__ void __launch_bounds__(kBlockSize)
    ScaleBufferTableKernel(const __grid_constant__ BufferTable table) {
  ScaleTableChunk(table, blockIdx.x, threadIdx.x, DirectMemory());
}

// cudaLaunchKernel copies the parameter bytes at the call, so `table` may be a
// temporary; its status is the launch's own (no sticky-error polling).
template <typename Table>
cudaError_t LaunchKernel(void (*kernel)(Table), const Table& table, int64_t total_chunks,
                         cudaStream_t stream) {
  if (total_chunks > kMaxGridBlocks) return cudaErrorInvalidValue;
  void* args[] = {const_cast<Table*>(&table)};
  const dim3 grid(static_cast<unsigned>(total_chunks));
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(kBlockSize), args,
                          0, stream);
}

template <int64_t kCapacity>
cudaError_t LaunchWithInlineTable(const TensorSpan* tensors, int64_t num_tensors,
                                  ScaleFactor factor, cudaStream_t stream) {
  // Up to 32 KB: a static_assert in the body header bounds the largest.
  InlineTable<kCapacity> table;
  const int64_t total_chunks = FillTable(tensors, num_tensors, factor, &table);
  if (total_chunks == 0) return cudaSuccess;
  return LaunchKernel(ScaleInlineTableKernel<kCapacity>, table, total_chunks, stream);
}

cudaError_t LaunchWithBufferTable(const TensorSpan* tensors, int64_t num_tensors,
                                  ScaleFactor factor, void* host_scratch, void* device_scratch,
                                  cudaStream_t stream) {
  if (host_scratch == nullptr || device_scratch == nullptr) return cudaErrorInvalidValue;
  BufferTable host_table = BufferTableAt(host_scratch, num_tensors, factor);
  const int64_t total_chunks = FillTable(tensors, num_tensors, factor, &host_table);
  if (total_chunks == 0) return cudaSuccess;
  const cudaError_t copied =
      cudaMemcpyAsync(device_scratch, host_scratch, BufferLayoutFor(num_tensors).total_bytes,
                      cudaMemcpyHostToDevice, stream);
  if (copied != cudaSuccess) return copied;
  return LaunchKernel(ScaleBufferTableKernel, BufferTableAt(device_scratch, num_tensors, factor),
                      total_chunks, stream);
}

bool IsValidList(const TensorSpan* tensors, int64_t num_tensors) {
  if (num_tensors < 0 || (num_tensors > 0 && tensors == nullptr)) return false;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensors[t].num_elements < 0) return false;
  }
  return true;
}

}  // namespace
}  // namespace gpu

size_t MultiTensorScaleScratchBytes(int64_t num_tensors) {
  if (gpu::TableKindFor(num_tensors) != gpu::TableKind::kBuffer) return 0;
  return gpu::BufferLayoutFor(num_tensors).total_bytes;
}

cudaError_t LaunchMultiTensorScale(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, void* host_scratch, void* device_scratch,
                                   cudaStream_t stream) {
  if (!gpu::IsValidList(tensors, num_tensors)) return cudaErrorInvalidValue;
  if (num_tensors == 0) return cudaSuccess;
  switch (gpu::TableKindFor(num_tensors)) {
    case gpu::TableKind::kSmallInline:
      return gpu::LaunchWithInlineTable<gpu::kSmallInlineTensors>(tensors, num_tensors, factor,
                                                                  stream);
    case gpu::TableKind::kMediumInline:
      return gpu::LaunchWithInlineTable<gpu::kMediumInlineTensors>(tensors, num_tensors, factor,
                                                                   stream);
    case gpu::TableKind::kLargeInline:
      return gpu::LaunchWithInlineTable<gpu::kLargeInlineTensors>(tensors, num_tensors, factor,
                                                                  stream);
    case gpu::TableKind::kBuffer:
      break;
  }
  return gpu::LaunchWithBufferTable(tensors, num_tensors, factor, host_scratch, device_scratch,
                                    stream);
}

}  // namespace fixed_loss_scale
