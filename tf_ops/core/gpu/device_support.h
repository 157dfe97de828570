// Where the library's GPU kernels can run: the driver and the GPUs of this
// process against what the device code needs. TensorFlow-free and CUDA-free
// (the driver is reached with dlopen), so g++ alone builds it and a test can
// inject a driver version and compute capabilities.
//
// NOTE [where the GPU kernels run]: TensorFlow places an op on a GPU whenever
// a GPU kernel is registered for it. If the device code cannot run there (a
// driver older than the code needs, a GPU with neither a cubin nor JIT-able
// PTX in the fatbinary), every step would then fail at the launch. So the
// GPU kernels are registered only when every GPU the process sees can run
// them; otherwise they are not registered, TensorFlow places the ops on the
// CPU, and the library says so once, at load, naming the driver, the GPUs and
// what is needed. The decision is made once, when the library is loaded
// (static initialisation of the registrations,
// tf_ops/tf/kernels/fixed_loss_scale_kernels.cc): it calls cuInit, as
// TensorFlow does when it first lists GPUs. With no driver or no GPU the
// kernels are registered (nothing can place them) and nothing is said.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_DEVICE_SUPPORT_H_
#define FIXED_LOSS_SCALE_CORE_GPU_DEVICE_SUPPORT_H_

#include <string>
#include <vector>

namespace fixed_loss_scale {
namespace gpu {

// What the library's device code is and needs. CUDA versions are written as
// cuDriverGetVersion writes them (12010 = CUDA 12.1); architectures as
// compute capabilities times ten (86 = sm_86).
struct DeviceCodeTargets {
  std::vector<int> cubin_archs;
  int ptx_arch = 0;        // 0: no PTX
  int min_driver = 0;      // runs the cubins
  int ptx_min_driver = 0;  // JIT-compiles the PTX
};

struct GpuInfo {
  int compute_capability = 0;  // 86 for 8.6
  std::string name;
};

struct GpuSystem {
  // False: no libcuda.so.1, or cuInit reported no device; nothing else is set.
  bool has_driver = false;
  int driver_version = 0;
  std::vector<GpuInfo> gpus;
  // Non-empty when the driver was found but could not be queried.
  std::string error;
};

// The driver and the GPUs of this process (CUDA_VISIBLE_DEVICES applies).
// For tests, FIXED_LOSS_SCALE_TEST_GPUS replaces the query:
//   "none"                 no driver
//   "DRIVER:CC[,CC...]"    e.g. "12000:86" or "12080:60,90"
GpuSystem QueryGpuSystem();

// Parses a FIXED_LOSS_SCALE_TEST_GPUS value; false if malformed.
bool ParseTestGpus(const std::string& value, GpuSystem* system);

// Whether the device code runs on a GPU of `compute_capability` under a
// driver of `driver_version`: a cubin of the same major version and a minor
// version no higher, or PTX of an architecture no higher and a driver that
// JITs it.
bool DeviceCodeRuns(const DeviceCodeTargets& targets, int driver_version,
                    int compute_capability);

struct GpuSupport {
  bool register_gpu_kernels = true;
  // What the library says at load; empty when there is nothing to say.
  std::string message;
};

GpuSupport DecideGpuSupport(const DeviceCodeTargets& targets, const GpuSystem& system);

// "12.1" for 12010.
std::string CudaVersionString(int version);

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_DEVICE_SUPPORT_H_
