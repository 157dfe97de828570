// See multi_tensor_scale.h. The kernels are thin wrappers of ScaleTableChunks
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

template <int64_t kCapacity>
__global__ void __launch_bounds__(kBlockSize)
    ScaleInlineTableKernel(const FLS_GRID_CONSTANT InlineTable<kCapacity> table) {
  ScaleTableChunk(table, blockIdx.x, threadIdx.x, DirectMemory());
}

__global__ void __launch_bounds__(kBlockSize)
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

// Placeholder until the fused kernel lands: the declarations are final, the
// launch is not implemented yet.
size_t MultiTensorScaleAndCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors) {
  if (!gpu::IsValidList(tensors, num_tensors)) return 0;
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const TensorSpan& tensor = tensors[t];
    chunks += gpu::NumChunks(tensor.num_elements,
                             gpu::LayoutOf(tensor.in, tensor.out, tensor.num_elements,
                                           tensor.dtype),
                             tensor.dtype);
  }
  const size_t table =
      gpu::TableKindFor(num_tensors, gpu::LargeKernelParamsAvailable()) == gpu::TableKind::kBuffer
          ? gpu::BufferLayoutFor(num_tensors).total_bytes
          : 0;
  return table + 16 * static_cast<size_t>(chunks > 0 ? chunks : 1) + 8;
}

cudaError_t LaunchMultiTensorScaleAndCheck(const TensorSpan* tensors, int64_t num_tensors,
                                           ScaleFactor factor, bool with_sum_of_squares,
                                           void* host_scratch, void* device_scratch,
                                           bool* all_finite, float* sum_of_squares,
                                           cudaStream_t stream) {
  (void)tensors, (void)num_tensors, (void)factor, (void)with_sum_of_squares;
  (void)host_scratch, (void)device_scratch, (void)all_finite, (void)sum_of_squares;
  (void)stream;
  return cudaErrorNotSupported;
}

}  // namespace fixed_loss_scale
