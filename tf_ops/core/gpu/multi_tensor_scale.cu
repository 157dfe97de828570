// See multi_tensor_scale.h. The kernels are thin wrappers of ScaleTableChunk
// (multi_tensor_scale_body.h) and, for the checked launches, of the steps of
// NOTE [fused check] (check_reduction.h); this file picks the table, fills it
// and launches.
#include "tf_ops/core/gpu/multi_tensor_scale.h"

#include "tf_ops/core/gpu/check_reduction.h"
#include "tf_ops/core/gpu/chunk_table.h"
#include "tf_ops/core/gpu/device_memory.h"
#include "tf_ops/core/gpu/launch_support.h"
#include "tf_ops/core/gpu/multi_tensor_scale_body.h"

namespace fixed_loss_scale {
namespace gpu {
namespace {

template <int64_t kCapacity>
__global__ void __launch_bounds__(kBlockSize)
    ScaleInlineTableKernel(const FLS_GRID_CONSTANT InlineTable<kCapacity> table) {
  ScaleTableChunk<ScaleJob>(table, blockIdx.x, threadIdx.x, DirectMemory());
}

__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    ScaleBufferTableKernel(const FLS_GRID_CONSTANT BufferTable table) {
  ScaleTableChunk<ScaleJob>(table, blockIdx.x, threadIdx.x, DirectMemory());
}

// The unchecked kernel for each table.
template <int64_t kCapacity>
constexpr auto ScaleKernelFor(InlineTableOf<kCapacity>) {
  return ScaleInlineTableKernel<kCapacity>;
}
constexpr auto ScaleKernelFor(BufferTableOf<>) { return ScaleBufferTableKernel; }

// ---- The checked kernels (NOTE [fused check]) ------------------------------------
// The whole checked kernel body of job TheJob (ScaleAndCheckJob or
// CheckOnlyJob); the host emulation runs the same steps with CombineBlock in
// place of ReduceBlock.
template <typename TheJob, typename Table>
__device__ __forceinline__ void CheckedBlock(const Table& table, const CheckTargets& targets) {
  constexpr bool kSum = TheJob::kSumOfSquares;
  __shared__ double warp_sums[kWarpsPerBlock];
  __shared__ bool is_last;
  const DirectMemory memory;
  const CheckPartial mine = ScaleTableChunk<TheJob>(table, blockIdx.x, threadIdx.x, memory);
  const CheckPartial combined = ReduceBlock<kSum>(mine, warp_sums);
  if (threadIdx.x == 0) {
    is_last = PublishBlockPartial(targets, blockIdx.x, gridDim.x, combined, memory);
  }
  __syncthreads();
  if (!is_last) return;
  const CheckPartial total = ReduceBlock<kSum>(
      SumBlockPartials<kSum>(targets, gridDim.x, threadIdx.x, memory), warp_sums);
  if (threadIdx.x == 0) WriteCheckOutputs<kSum>(targets, total, memory);
}

template <int64_t kCapacity, typename TheJob>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    CheckedInlineTableKernel(const FLS_GRID_CONSTANT InlineTable<kCapacity> table,
                             const FLS_GRID_CONSTANT CheckTargets targets) {
  CheckedBlock<TheJob>(table, targets);
}

template <typename TheJob>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    CheckedBufferTableKernel(const FLS_GRID_CONSTANT BufferTable table,
                             const FLS_GRID_CONSTANT CheckTargets targets) {
  CheckedBlock<TheJob>(table, targets);
}

template <typename TheJob, int64_t kCapacity>
constexpr auto CheckedKernelFor(InlineTableOf<kCapacity>) {
  return CheckedInlineTableKernel<kCapacity, TheJob>;
}
template <typename TheJob>
constexpr auto CheckedKernelFor(BufferTableOf<>) {
  return CheckedBufferTableKernel<TheJob>;
}

// ---- Launching ---------------------------------------------------------------------
// The table bytes a launch copies to the device (0 for an inline table).
size_t TableScratchBytes(int64_t num_tensors) {
  return TableKindHere(num_tensors) == TableKind::kBuffer
             ? BufferLayoutFor(num_tensors).total_bytes
             : 0;
}

// Fills the table of a launch over `tensors` and returns its chunk count, or
// -1 when a buffer table has no scratch. A buffer table is filled in the
// pinned `host_scratch`, and `*table` then views its device copy,
// `device_table`, which CopyTable enqueues. An inline table needs neither.
// `read_only`: for a launch that writes nothing (AsReadOnly).
template <int64_t kCapacity>
int64_t FillLaunchTable(InlineTableOf<kCapacity>, const TensorSpan* tensors, int64_t num_tensors,
                        ScaleFactor factor, bool read_only, void*, void*,
                        InlineTable<kCapacity>* table) {
  // Up to 32 KB: a static_assert in chunk_table.h bounds the largest.
  return FillTable(tensors, num_tensors, factor, table, read_only);
}

int64_t FillLaunchTable(BufferTableOf<>, const TensorSpan* tensors, int64_t num_tensors,
                        ScaleFactor factor, bool read_only, void* host_scratch,
                        void* device_table, BufferTable* table) {
  if (host_scratch == nullptr || device_table == nullptr) return -1;
  BufferTable host_table = BufferTableAt(host_scratch, num_tensors, factor);
  *table = BufferTableAt(device_table, num_tensors, factor);
  return FillTable(tensors, num_tensors, factor, &host_table, read_only);
}

template <int64_t kCapacity>
cudaError_t CopyTable(InlineTableOf<kCapacity>, int64_t, void*, void*, cudaStream_t) {
  return cudaSuccess;
}

cudaError_t CopyTable(BufferTableOf<>, int64_t num_tensors, void* host_scratch, void* device_table,
                      cudaStream_t stream) {
  return cudaMemcpyAsync(device_table, host_scratch, BufferLayoutFor(num_tensors).total_bytes,
                         cudaMemcpyHostToDevice, stream);
}

template <typename TableOf>
cudaError_t LaunchScale(TableOf table_of, const TensorSpan* tensors, int64_t num_tensors,
                        ScaleFactor factor, void* host_scratch, void* device_scratch,
                        cudaStream_t stream) {
  typename TableOf::Table table;
  const int64_t total_chunks = FillLaunchTable(table_of, tensors, num_tensors, factor, false,
                                               host_scratch, device_scratch, &table);
  if (total_chunks < 0) return cudaErrorInvalidValue;
  if (total_chunks == 0) return cudaSuccess;  // no launch, and no table copy
  const cudaError_t copied = CopyTable(table_of, num_tensors, host_scratch, device_scratch, stream);
  if (copied != cudaSuccess) return copied;
  void* args[] = {&table};
  return LaunchGrid(reinterpret_cast<const void*>(ScaleKernelFor(table_of)), total_chunks, args,
                    stream);
}

// The caller's device pointers of a checked launch.
struct CheckOutputs {
  void* device_scratch;
  bool* all_finite;
  float* sum_of_squares;
};

// NOTE [ticket counter]: the last-block election counts tickets in an unsigned
// int of the device scratch, which must be 0 when the kernel starts. The
// launcher zeroes it with one 4-byte cudaMemsetAsync on the launch's stream
// just before the launch, rather than have the last block reset it for the
// next launch: the scratch is the caller's temporary (TensorFlow hands out a
// different allocation, with arbitrary contents, on every call), so nothing
// could carry a zero from one launch to the next, and a launch that faulted
// midway would leave a stale count behind for good. The memset costs one
// stream operation of a few microseconds, and keeps a launch's result a
// function of its own inputs only.
//
// The table goes to the device even when the list has no element: the one
// block reads its chunk count.
template <typename TheJob, typename TableOf>
cudaError_t LaunchChecked(TableOf table_of, const TensorSpan* tensors, int64_t num_tensors,
                          ScaleFactor factor, void* host_scratch, const CheckOutputs& outputs,
                          cudaStream_t stream) {
  typename TableOf::Table table;
  const int64_t total_chunks =
      FillLaunchTable(table_of, tensors, num_tensors, factor, !TheJob::kWrites, host_scratch,
                      outputs.device_scratch, &table);
  if (total_chunks < 0) return cudaErrorInvalidValue;
  const cudaError_t copied =
      CopyTable(table_of, num_tensors, host_scratch, outputs.device_scratch, stream);
  if (copied != cudaSuccess) return copied;
  const int64_t num_blocks = CheckedGridBlocks(total_chunks);
  const CheckScratchLayout layout =
      CheckScratchLayoutFor(TableScratchBytes(num_tensors), num_blocks);
  char* scratch = static_cast<char*>(outputs.device_scratch);
  CheckTargets targets{reinterpret_cast<BlockPartial*>(scratch + layout.partials),
                       outputs.all_finite, outputs.sum_of_squares};
  const cudaError_t zeroed = cudaMemsetAsync(scratch + layout.counter, 0, sizeof(unsigned), stream);
  if (zeroed != cudaSuccess) return zeroed;
  void* args[] = {&table, &targets};
  return LaunchGrid(reinterpret_cast<const void*>(CheckedKernelFor<TheJob>(table_of)), num_blocks,
                    args, stream);
}

bool IsValidList(const TensorSpan* tensors, int64_t num_tensors) {
  if (num_tensors < 0 || (num_tensors > 0 && tensors == nullptr)) return false;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensors[t].num_elements < 0) return false;
  }
  return true;
}

// The checked launch of a job that writes its outputs (the fused check) or
// not (the read-only check), with or without the sum of squares.
template <bool kWrites>
cudaError_t LaunchCheckedJob(const TensorSpan* tensors, int64_t num_tensors, ScaleFactor factor,
                             bool with_sum_of_squares, void* host_scratch,
                             const CheckOutputs& outputs, cudaStream_t stream) {
  if (!IsValidList(tensors, num_tensors) || outputs.device_scratch == nullptr ||
      outputs.all_finite == nullptr || outputs.sum_of_squares == nullptr) {
    return cudaErrorInvalidValue;
  }
  auto launch = [&](auto job) {
    using TheJob = decltype(job);
    return WithTableFor(num_tensors, [&](auto table_of) {
      return LaunchChecked<TheJob>(table_of, tensors, num_tensors, factor, host_scratch, outputs,
                                   stream);
    });
  };
  return with_sum_of_squares ? launch(Job<kWrites, true, true>())
                             : launch(Job<kWrites, true, false>());
}

size_t CheckedScratchBytes(const TensorSpan* tensors, int64_t num_tensors, bool read_only) {
  if (!IsValidList(tensors, num_tensors)) return 0;
  return CheckScratchLayoutFor(TableScratchBytes(num_tensors),
                               CheckedGridBlocks(TotalChunks(tensors, num_tensors, read_only)))
      .total_bytes;
}

}  // namespace
}  // namespace gpu

size_t MultiTensorScaleScratchBytes(int64_t num_tensors) {
  return gpu::TableScratchBytes(num_tensors);
}

cudaError_t LaunchMultiTensorScale(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, void* host_scratch, void* device_scratch,
                                   cudaStream_t stream) {
  if (!gpu::IsValidList(tensors, num_tensors)) return cudaErrorInvalidValue;
  if (num_tensors == 0) return cudaSuccess;
  return gpu::WithTableFor(num_tensors, [&](auto table_of) {
    return gpu::LaunchScale(table_of, tensors, num_tensors, factor, host_scratch, device_scratch,
                            stream);
  });
}

size_t MultiTensorScaleAndCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors) {
  return gpu::CheckedScratchBytes(tensors, num_tensors, /*read_only=*/false);
}

cudaError_t LaunchMultiTensorScaleAndCheck(const TensorSpan* tensors, int64_t num_tensors,
                                           ScaleFactor factor, bool with_sum_of_squares,
                                           void* host_scratch, void* device_scratch,
                                           bool* all_finite, float* sum_of_squares,
                                           cudaStream_t stream) {
  return gpu::LaunchCheckedJob<true>(tensors, num_tensors, factor, with_sum_of_squares,
                                     host_scratch, {device_scratch, all_finite, sum_of_squares},
                                     stream);
}

size_t MultiTensorCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors) {
  return gpu::CheckedScratchBytes(tensors, num_tensors, /*read_only=*/true);
}

cudaError_t LaunchMultiTensorCheck(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, bool with_sum_of_squares,
                                   void* host_scratch, void* device_scratch, bool* all_finite,
                                   float* sum_of_squares, cudaStream_t stream) {
  return gpu::LaunchCheckedJob<false>(tensors, num_tensors, factor, with_sum_of_squares,
                                      host_scratch, {device_scratch, all_finite, sum_of_squares},
                                      stream);
}

}  // namespace fixed_loss_scale
