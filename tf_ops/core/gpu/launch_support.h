// What every launcher of this library's GPU kernels shares (multi_tensor_scale.cu,
// fused_update.cu): the kernel-parameter macros, whether this device takes 32 KB
// kernel parameters, the table choice that follows from it, and the launch
// call. Included only by .cu files (it needs the CUDA runtime API); the
// functions are inline, so the per-device cache below is one for the library.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_LAUNCH_SUPPORT_H_
#define FIXED_LOSS_SCALE_CORE_GPU_LAUNCH_SUPPORT_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "tf_ops/core/gpu/chunk_table.h"

// NOTE [kernel parameter size]: 32 KB parameters need a CUDA 12.1+ toolkit.
#if CUDART_VERSION < 12010
#error "the fixed_loss_scale GPU kernels need CUDA 12.1 or newer (32,764-byte kernel parameters)"
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

// A stated minimum of 1 block per SM for the buffer-table and checked kernels:
// without it nvcc 13's ptxas may hold them to fewer registers than their live
// values need and spill to local memory; with it they spill nothing. The
// clang route's counts do not depend on it. tools/gpu_check.sh's SASS step
// checks every kernel of both builds for local memory.
constexpr int kMinBlocksPerSM = 1;

// Whether the current device takes 32 KB kernel parameters (NOTE [kernel
// parameter size]): asked once per device, then read from a cache, as the
// table choice is made on every launch.
constexpr int kMaxCachedDevices = 64;

// FIXED_LOSS_SCALE_TEST_4K_PARAMS=1 takes the 4 KB path on any GPU, so that a
// Volta+ GPU check also runs what a Pascal GPU or a pre-12.1 driver runs.
inline bool LargeKernelParamsAvailable() {
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

// The table of `Family` a list of `num_tensors` tensors travels in on this
// device.
template <typename Family = ScaleTables>
TableKind TableKindHere(int64_t num_tensors) {
  return TableKindFor<Family>(num_tensors, LargeKernelParamsAvailable());
}

// Calls `launch(InlineTableOf<capacity, Family>())` or
// `launch(BufferTableOf<Family>())` for that table.
template <typename Family = ScaleTables, typename Launch>
cudaError_t WithTableFor(int64_t num_tensors, Launch&& launch) {
  return VisitTable<FLS_LARGE_KERNEL_PARAMS != 0, Family>(TableKindHere<Family>(num_tensors),
                                                          launch);
}

// cudaLaunchKernel copies the parameter bytes at the call, so the arguments
// may be temporaries; its status is the launch's own (no sticky-error
// polling).
inline cudaError_t LaunchGrid(const void* kernel, int64_t num_blocks, void** args,
                              cudaStream_t stream) {
  if (num_blocks > kMaxGridBlocks) return cudaErrorInvalidValue;
  return cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(num_blocks)), dim3(kBlockSize), args,
                          0, stream);
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_LAUNCH_SUPPORT_H_
