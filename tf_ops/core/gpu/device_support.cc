// See device_support.h.
#include "tf_ops/core/gpu/device_support.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace fixed_loss_scale {
namespace gpu {
namespace {

// The few driver API entry points used, with their documented signatures
// (cuda.h), so that no CUDA header is needed.
using CuInit = int (*)(unsigned int);
using CuDriverGetVersion = int (*)(int*);
using CuDeviceGetCount = int (*)(int*);
using CuDeviceGet = int (*)(int*, int);
using CuDeviceGetAttribute = int (*)(int*, int, int);
using CuDeviceGetName = int (*)(char*, int, int);
constexpr int kCudaSuccess = 0;
constexpr int kCudaErrorNoDevice = 100;
constexpr int kAttributeComputeCapabilityMajor = 75;
constexpr int kAttributeComputeCapabilityMinor = 76;

std::string ArchList(const std::vector<int>& archs) {
  std::string list;
  for (int arch : archs) list += (list.empty() ? "sm_" : ", sm_") + std::to_string(arch);
  return list;
}

std::string GpuName(const GpuInfo& gpu) {
  return gpu.name + " (sm_" + std::to_string(gpu.compute_capability) + ")";
}

}  // namespace

std::string CudaVersionString(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

bool ParseTestGpus(const std::string& value, GpuSystem* system) {
  *system = GpuSystem();
  if (value == "none") return true;
  const size_t colon = value.find(':');
  if (colon == std::string::npos) return false;
  char* end = nullptr;
  system->driver_version = static_cast<int>(std::strtol(value.c_str(), &end, 10));
  if (end != value.c_str() + colon || system->driver_version <= 0) return false;
  std::stringstream list(value.substr(colon + 1));
  std::string item;
  while (std::getline(list, item, ',')) {
    const int cc = std::atoi(item.c_str());
    if (cc <= 0) return false;
    system->gpus.push_back(GpuInfo{cc, "test GPU " + std::to_string(system->gpus.size())});
  }
  system->has_driver = !system->gpus.empty();
  return system->has_driver;
}

GpuSystem QueryGpuSystem() {
  GpuSystem system;
  if (const char* injected = std::getenv("FIXED_LOSS_SCALE_TEST_GPUS")) {
    if (!ParseTestGpus(injected, &system)) {
      system = GpuSystem();
      system.has_driver = true;
      system.error = std::string("FIXED_LOSS_SCALE_TEST_GPUS='") + injected +
                     "' is not 'none' or 'DRIVER:CC[,CC...]'";
    }
    return system;
  }
  // Kept loaded: TensorFlow loads the same library for its GPU devices.
  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (cuda == nullptr) return system;
  const auto init = reinterpret_cast<CuInit>(dlsym(cuda, "cuInit"));
  const auto driver_version = reinterpret_cast<CuDriverGetVersion>(dlsym(cuda, "cuDriverGetVersion"));
  const auto device_count = reinterpret_cast<CuDeviceGetCount>(dlsym(cuda, "cuDeviceGetCount"));
  const auto device_get = reinterpret_cast<CuDeviceGet>(dlsym(cuda, "cuDeviceGet"));
  const auto attribute = reinterpret_cast<CuDeviceGetAttribute>(dlsym(cuda, "cuDeviceGetAttribute"));
  const auto name = reinterpret_cast<CuDeviceGetName>(dlsym(cuda, "cuDeviceGetName"));
  system.has_driver = true;
  if (!init || !driver_version || !device_count || !device_get || !attribute || !name) {
    system.error = "libcuda.so.1 lacks a driver API entry point";
    return system;
  }
  if (driver_version(&system.driver_version) != kCudaSuccess) {
    system.error = "cuDriverGetVersion failed";
    return system;
  }
  const int initialized = init(0);
  if (initialized == kCudaErrorNoDevice) return GpuSystem();
  int count = 0;
  if (initialized != kCudaSuccess || device_count(&count) != kCudaSuccess) {
    system.error = "cuInit returned CUresult " + std::to_string(initialized);
    return system;
  }
  if (count == 0) return GpuSystem();
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    int device = 0, major = 0, minor = 0;
    char device_name[128] = "?";
    if (device_get(&device, ordinal) != kCudaSuccess ||
        attribute(&major, kAttributeComputeCapabilityMajor, device) != kCudaSuccess ||
        attribute(&minor, kAttributeComputeCapabilityMinor, device) != kCudaSuccess) {
      system.error = "cannot read the compute capability of GPU " + std::to_string(ordinal);
      return system;
    }
    name(device_name, sizeof(device_name), device);
    system.gpus.push_back(GpuInfo{major * 10 + minor, device_name});
  }
  return system;
}

bool DeviceCodeRuns(const DeviceCodeTargets& targets, int driver_version,
                    int compute_capability) {
  if (driver_version < targets.min_driver) return false;
  for (int arch : targets.cubin_archs) {
    if (arch / 10 == compute_capability / 10 && arch % 10 <= compute_capability % 10) {
      return true;
    }
  }
  return targets.ptx_arch > 0 && targets.ptx_arch <= compute_capability &&
         driver_version >= targets.ptx_min_driver;
}

GpuSupport DecideGpuSupport(const DeviceCodeTargets& targets, const GpuSystem& system) {
  GpuSupport support;
  if (!system.has_driver) return support;
  const std::string tail =
      "; every fixed_loss_scale op will run on the CPU (docs/GPU.md).";
  const std::string code = "its device code (cubins " + ArchList(targets.cubin_archs) +
                           (targets.ptx_arch > 0 ? ", PTX compute_" +
                                                       std::to_string(targets.ptx_arch)
                                                 : std::string()) +
                           ")";
  if (!system.error.empty()) {
    support.register_gpu_kernels = false;
    support.message = "fixed_loss_scale: GPU kernels not registered: " + system.error + tail;
    return support;
  }
  std::string gpus;
  for (const GpuInfo& gpu : system.gpus) gpus += (gpus.empty() ? "" : ", ") + GpuName(gpu);
  const std::string driver = "the NVIDIA driver supports CUDA " +
                             CudaVersionString(system.driver_version) + " (GPUs: " + gpus + ")";
  if (system.driver_version < targets.min_driver) {
    support.register_gpu_kernels = false;
    support.message = "fixed_loss_scale: GPU kernels not registered: " + driver + ", and " +
                      code + " needs a driver for CUDA " +
                      CudaVersionString(targets.min_driver) + " or newer" + tail;
    return support;
  }
  std::string unsupported;
  for (const GpuInfo& gpu : system.gpus) {
    if (DeviceCodeRuns(targets, system.driver_version, gpu.compute_capability)) continue;
    unsupported += (unsupported.empty() ? "" : ", ") + GpuName(gpu);
  }
  if (!unsupported.empty()) {
    support.register_gpu_kernels = false;
    std::string needs = code + " has nothing for " + unsupported;
    if (targets.ptx_arch > 0 && system.driver_version < targets.ptx_min_driver) {
      needs += " (its PTX needs a driver for CUDA " +
               CudaVersionString(targets.ptx_min_driver) + " or newer to be JIT-compiled)";
    }
    support.message = "fixed_loss_scale: GPU kernels not registered: " + driver + ", and " +
                      needs + tail;
  }
  return support;
}

}  // namespace gpu
}  // namespace fixed_loss_scale
