// See multi_tensor_scale.h. The kernels are thin wrappers of ScaleTableChunk
// and, for the checked launch, of the steps of NOTE [fused check]
// (multi_tensor_scale_body.h); this file picks the table, fills it and launches.
#include "tf_ops/core/gpu/multi_tensor_scale.h"

#include "tf_ops/core/gpu/multi_tensor_scale_body.h"

#include <atomic>
#include <cstdlib>

// NOTE [kernel parameter size]: 32 KB parameters need a CUDA 12.1+ toolkit.
#if CUDART_VERSION < 12010
#error "FixedUnscaleGrads' GPU kernels need CUDA 12.1 or newer (32,764-byte kernel parameters)"
#endif

// __grid_constant__ lets the body read the 32 KB table straight from the
// parameter bank through a reference, with no per-thread copy. clang 19 does
// not know the attribute; its NVPTX back end reads a by-value kernel
// parameter in place anyway as long as its address does not escape the
// inlined body (ptxas -v reports a 0-byte stack frame for every kernel).
#if defined(__clang__) && defined(__CUDA__)
#define FLS_GRID_CONSTANT
#else
#define FLS_GRID_CONSTANT __grid_constant__
#endif

// The device pass for sm_60 (no 32 KB parameters) must not instantiate the
// medium and large inline kernels: they are referenced only where this holds.
// Host code and sm_70+ device code see all three; a launch never picks them on
// a GPU without the 32 KB form (LargeKernelParamsAvailable).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define FLS_LARGE_KERNEL_PARAMS 1
#else
#define FLS_LARGE_KERNEL_PARAMS 0
#endif

namespace fixed_loss_scale {
namespace gpu {
namespace {

// A stated minimum of 1 block per SM for the buffer-table and checked kernels:
// without one, nvcc 13's ptxas holds them to fewer registers than they need
// and spills to local memory (the unchecked buffer-table kernel 8 bytes at 64
// registers since the hardware half conversions of NOTE [device half
// conversions], the checked inline ones without the sum 8 bytes at 48); with
// it they take 66 to 78 and spill nothing. The clang route's register counts
// are the same either way (64 and 64-65). tools/gpu_check.sh's SASS step
// checks every kernel for local memory.
constexpr int kMinBlocksPerSM = 1;

template <int64_t kCapacity>
__global__ void __launch_bounds__(kBlockSize)
    ScaleInlineTableKernel(const FLS_GRID_CONSTANT InlineTable<kCapacity> table) {
  ScaleTableChunk(table, blockIdx.x, threadIdx.x, DirectMemory());
}

__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    ScaleBufferTableKernel(const FLS_GRID_CONSTANT BufferTable table) {
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

// ---- The checked kernels (NOTE [fused check]) ------------------------------------
// The block's check in thread 0, in the order of NOTE [check reduction order].
// Every thread of the block calls it (it holds a barrier); `warp_sums` is
// shared memory, free again once thread 0 has returned.
template <bool kSumOfSquares>
__device__ __forceinline__ CheckPartial ReduceBlock(CheckPartial mine, double* warp_sums) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  double sum = mine.sum;
  if (kSumOfSquares) {
    FLS_UNROLL
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) warp_sums[warp] = sum;
  }
  const bool not_finite = __syncthreads_or(mine.not_finite) != 0;
  if (kSumOfSquares && threadIdx.x == 0) {
    sum = warp_sums[0];
    FLS_UNROLL
    for (int w = 1; w < kWarpsPerBlock; ++w) sum += warp_sums[w];
  }
  return CheckPartial{sum, not_finite};
}

// The whole checked kernel body; the host emulation runs the same steps with
// CombineBlock in place of ReduceBlock.
template <bool kSumOfSquares, typename Table>
__device__ __forceinline__ void ScaleAndCheckBlock(const Table& table,
                                                   const CheckTargets& targets) {
  __shared__ double warp_sums[kWarpsPerBlock];
  __shared__ bool is_last;
  const DirectMemory memory;
  const CheckPartial mine =
      ScaleAndCheckTableChunk<kSumOfSquares>(table, blockIdx.x, threadIdx.x, memory);
  const CheckPartial combined = ReduceBlock<kSumOfSquares>(mine, warp_sums);
  if (threadIdx.x == 0) {
    is_last = PublishBlockPartial(targets, blockIdx.x, gridDim.x, combined, memory);
  }
  __syncthreads();
  if (!is_last) return;
  const CheckPartial total = ReduceBlock<kSumOfSquares>(
      SumBlockPartials<kSumOfSquares>(targets, gridDim.x, threadIdx.x, memory), warp_sums);
  if (threadIdx.x == 0) WriteCheckOutputs<kSumOfSquares>(targets, total, memory);
}

template <int64_t kCapacity, bool kSumOfSquares>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    ScaleAndCheckInlineTableKernel(const FLS_GRID_CONSTANT InlineTable<kCapacity> table,
                                   const FLS_GRID_CONSTANT CheckTargets targets) {
  ScaleAndCheckBlock<kSumOfSquares>(table, targets);
}

template <bool kSumOfSquares>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerSM)
    ScaleAndCheckBufferTableKernel(const FLS_GRID_CONSTANT BufferTable table,
                                   const FLS_GRID_CONSTANT CheckTargets targets) {
  ScaleAndCheckBlock<kSumOfSquares>(table, targets);
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
template <typename Table>
cudaError_t LaunchCheckedKernel(void (*kernel)(Table, CheckTargets), const Table& table,
                                int64_t total_chunks, size_t table_bytes,
                                const CheckOutputs& outputs, cudaStream_t stream) {
  if (total_chunks > kMaxGridBlocks) return cudaErrorInvalidValue;
  const int64_t num_blocks = CheckedGridBlocks(total_chunks);
  const CheckScratchLayout layout = CheckScratchLayoutFor(table_bytes, num_blocks);
  char* scratch = static_cast<char*>(outputs.device_scratch);
  CheckTargets targets{reinterpret_cast<BlockPartial*>(scratch + layout.partials),
                       outputs.all_finite, outputs.sum_of_squares};
  const cudaError_t zeroed = cudaMemsetAsync(scratch + layout.counter, 0, sizeof(unsigned), stream);
  if (zeroed != cudaSuccess) return zeroed;
  void* args[] = {const_cast<Table*>(&table), &targets};
  const dim3 grid(static_cast<unsigned>(num_blocks));
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(kBlockSize), args,
                          0, stream);
}

template <int64_t kCapacity, bool kSumOfSquares>
cudaError_t LaunchCheckedWithInlineTable(const TensorSpan* tensors, int64_t num_tensors,
                                         ScaleFactor factor, const CheckOutputs& outputs,
                                         cudaStream_t stream) {
  InlineTable<kCapacity> table;
  const int64_t total_chunks = FillTable(tensors, num_tensors, factor, &table);
  return LaunchCheckedKernel(ScaleAndCheckInlineTableKernel<kCapacity, kSumOfSquares>, table,
                             total_chunks, 0, outputs, stream);
}

// The table goes to the device even when the list has no element: the one
// block reads its chunk count.
template <bool kSumOfSquares>
cudaError_t LaunchCheckedWithBufferTable(const TensorSpan* tensors, int64_t num_tensors,
                                         ScaleFactor factor, void* host_scratch,
                                         const CheckOutputs& outputs, cudaStream_t stream) {
  if (host_scratch == nullptr) return cudaErrorInvalidValue;
  BufferTable host_table = BufferTableAt(host_scratch, num_tensors, factor);
  const int64_t total_chunks = FillTable(tensors, num_tensors, factor, &host_table);
  const size_t table_bytes = BufferLayoutFor(num_tensors).total_bytes;
  const cudaError_t copied = cudaMemcpyAsync(outputs.device_scratch, host_scratch, table_bytes,
                                             cudaMemcpyHostToDevice, stream);
  if (copied != cudaSuccess) return copied;
  return LaunchCheckedKernel(ScaleAndCheckBufferTableKernel<kSumOfSquares>,
                             BufferTableAt(outputs.device_scratch, num_tensors, factor),
                             total_chunks, table_bytes, outputs, stream);
}

// Whether the current device takes 32 KB kernel parameters (NOTE [kernel
// parameter size]): asked once per device, then read from a cache, as the
// table choice is made on every launch.
constexpr int kMaxCachedDevices = 64;

// FIXED_LOSS_SCALE_TEST_4K_PARAMS=1 takes the 4 KB path on any GPU, so that a
// Volta+ GPU check also runs what a Pascal GPU or a pre-12.1 driver runs.
bool LargeKernelParamsAvailable() {
  static const bool forced_small = [] {
    const char* value = std::getenv("FIXED_LOSS_SCALE_TEST_4K_PARAMS");
    return value != nullptr && value[0] == '1';
  }();
  if (forced_small) return false;
  // 0 unknown, 1 no, 2 yes.
  static std::atomic<int> cache[kMaxCachedDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device >= 0 && device < kMaxCachedDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached != 0) return cached == 2;
  }
  int major = 0, minor = 0, driver = 0, runtime = 0;
  const bool available =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
      cudaDriverGetVersion(&driver) == cudaSuccess &&
      cudaRuntimeGetVersion(&runtime) == cudaSuccess &&
      major * 10 + minor >= kLargeParamsMinComputeCapability &&
      driver >= kLargeParamsMinCudaVersion && runtime >= kLargeParamsMinCudaVersion;
  if (device >= 0 && device < kMaxCachedDevices) {
    cache[device].store(available ? 2 : 1, std::memory_order_relaxed);
  }
  return available;
}

bool IsValidList(const TensorSpan* tensors, int64_t num_tensors) {
  if (num_tensors < 0 || (num_tensors > 0 && tensors == nullptr)) return false;
  for (int64_t t = 0; t < num_tensors; ++t) {
    if (tensors[t].num_elements < 0) return false;
  }
  return true;
}

template <bool kSumOfSquares>
cudaError_t LaunchChecked(const TensorSpan* tensors, int64_t num_tensors, ScaleFactor factor,
                          void* host_scratch, const CheckOutputs& outputs, cudaStream_t stream) {
  switch (TableKindFor(num_tensors, LargeKernelParamsAvailable())) {
    case TableKind::kSmallInline:
      return LaunchCheckedWithInlineTable<kSmallInlineTensors, kSumOfSquares>(
          tensors, num_tensors, factor, outputs, stream);
#if FLS_LARGE_KERNEL_PARAMS
    case TableKind::kMediumInline:
      return LaunchCheckedWithInlineTable<kMediumInlineTensors, kSumOfSquares>(
          tensors, num_tensors, factor, outputs, stream);
    case TableKind::kLargeInline:
      return LaunchCheckedWithInlineTable<kLargeInlineTensors, kSumOfSquares>(
          tensors, num_tensors, factor, outputs, stream);
#else
    case TableKind::kMediumInline:
    case TableKind::kLargeInline:
      return cudaErrorInvalidValue;  // not reached: device code only, never run
#endif
    case TableKind::kBuffer:
      break;
  }
  return LaunchCheckedWithBufferTable<kSumOfSquares>(tensors, num_tensors, factor, host_scratch,
                                                     outputs, stream);
}

}  // namespace
}  // namespace gpu

size_t MultiTensorScaleScratchBytes(int64_t num_tensors) {
  if (gpu::TableKindFor(num_tensors, gpu::LargeKernelParamsAvailable()) !=
      gpu::TableKind::kBuffer) {
    return 0;
  }
  return gpu::BufferLayoutFor(num_tensors).total_bytes;
}

cudaError_t LaunchMultiTensorScale(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, void* host_scratch, void* device_scratch,
                                   cudaStream_t stream) {
  if (!gpu::IsValidList(tensors, num_tensors)) return cudaErrorInvalidValue;
  if (num_tensors == 0) return cudaSuccess;
  switch (gpu::TableKindFor(num_tensors, gpu::LargeKernelParamsAvailable())) {
    case gpu::TableKind::kSmallInline:
      return gpu::LaunchWithInlineTable<gpu::kSmallInlineTensors>(tensors, num_tensors, factor,
                                                                  stream);
#if FLS_LARGE_KERNEL_PARAMS
    case gpu::TableKind::kMediumInline:
      return gpu::LaunchWithInlineTable<gpu::kMediumInlineTensors>(tensors, num_tensors, factor,
                                                                   stream);
    case gpu::TableKind::kLargeInline:
      return gpu::LaunchWithInlineTable<gpu::kLargeInlineTensors>(tensors, num_tensors, factor,
                                                                  stream);
#else
    case gpu::TableKind::kMediumInline:
    case gpu::TableKind::kLargeInline:
      return cudaErrorInvalidValue;  // not reached: device code only, never run
#endif
    case gpu::TableKind::kBuffer:
      break;
  }
  return gpu::LaunchWithBufferTable(tensors, num_tensors, factor, host_scratch, device_scratch,
                                    stream);
}

size_t MultiTensorScaleAndCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors) {
  if (!gpu::IsValidList(tensors, num_tensors)) return 0;
  const size_t table_bytes = gpu::TableKindFor(num_tensors, gpu::LargeKernelParamsAvailable()) ==
                                     gpu::TableKind::kBuffer
                                 ? gpu::BufferLayoutFor(num_tensors).total_bytes
                                 : 0;
  return gpu::CheckScratchLayoutFor(
             table_bytes, gpu::CheckedGridBlocks(gpu::TotalChunks(tensors, num_tensors)))
      .total_bytes;
}

cudaError_t LaunchMultiTensorScaleAndCheck(const TensorSpan* tensors, int64_t num_tensors,
                                           ScaleFactor factor, bool with_sum_of_squares,
                                           void* host_scratch, void* device_scratch,
                                           bool* all_finite, float* sum_of_squares,
                                           cudaStream_t stream) {
  if (!gpu::IsValidList(tensors, num_tensors) || device_scratch == nullptr ||
      all_finite == nullptr || sum_of_squares == nullptr) {
    return cudaErrorInvalidValue;
  }
  const gpu::CheckOutputs outputs{device_scratch, all_finite, sum_of_squares};
  return with_sum_of_squares
             ? gpu::LaunchChecked<true>(tensors, num_tensors, factor, host_scratch, outputs,
                                        stream)
             : gpu::LaunchChecked<false>(tensors, num_tensors, factor, host_scratch, outputs,
                                         stream);
}

}  // namespace fixed_loss_scale
