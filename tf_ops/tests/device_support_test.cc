// NOTE [where the GPU kernels run] (tf_ops/core/gpu/device_support.h): the
// decision for drivers and GPUs no test machine has, g++ alone. The Python side
// (tests/test_gpu_build.py) injects a few of them into the built library.
#include "tf_ops/core/gpu/device_support.h"

#include <cstdio>
#include <string>

namespace fixed_loss_scale {
namespace gpu {
namespace {

int failures = 0;

void Expect(bool condition, const std::string& what) {
  if (condition) return;
  std::printf("FAILED: %s\n", what.c_str());
  ++failures;
}

// The clang route's device code (configure.sh).
DeviceCodeTargets ClangRoute() {
  DeviceCodeTargets targets;
  targets.cubin_archs = {60, 70, 75, 80, 86, 89, 90, 100, 120};
  targets.ptx_arch = 90;
  targets.min_driver = 12010;
  targets.ptx_min_driver = 12050;
  return targets;
}

// nvcc 13's.
DeviceCodeTargets Nvcc13() {
  DeviceCodeTargets targets;
  targets.cubin_archs = {75, 80, 86, 89, 90, 100, 120};
  targets.ptx_arch = 90;
  targets.min_driver = 13000;
  targets.ptx_min_driver = 13000;
  return targets;
}

GpuSupport Decide(const DeviceCodeTargets& targets, const std::string& injected) {
  GpuSystem system;
  Expect(ParseTestGpus(injected, &system), "parses " + injected);
  return DecideGpuSupport(targets, system);
}

void Runs(const DeviceCodeTargets& targets, int driver, int cc, bool expected) {
  Expect(DeviceCodeRuns(targets, driver, cc) == expected,
         "driver " + std::to_string(driver) + " sm_" + std::to_string(cc) +
             (expected ? " runs" : " does not run"));
}

void TestDeviceCodeRuns() {
  const DeviceCodeTargets clang = ClangRoute();
  // A cubin runs on its major version at an equal or higher minor.
  Runs(clang, 12010, 60, true);   // P100
  Runs(clang, 12010, 61, true);   // P40, GTX 10xx
  Runs(clang, 12010, 70, true);   // V100
  Runs(clang, 12010, 72, true);   // Xavier: sm_70 cubin
  Runs(clang, 12010, 87, true);   // Orin: sm_86 cubin
  Runs(clang, 12080, 100, true);  // B200
  Runs(clang, 12080, 103, true);  // sm_100 cubin
  Runs(clang, 12080, 121, true);  // sm_120 cubin
  Runs(clang, 12000, 80, false);  // CUDA 12.0 driver: 32 KB parameters need 12.1
  Runs(clang, 11080, 80, false);
  Runs(clang, 12010, 52, false);  // Maxwell: no cubin, PTX too new
  Runs(clang, 12010, 35, false);
  // A GPU newer than every cubin: the PTX, if the driver JITs ISA 8.5.
  Runs(clang, 12040, 110, false);
  Runs(clang, 12050, 110, true);
  const DeviceCodeTargets nvcc13 = Nvcc13();
  Runs(nvcc13, 12080, 90, false);
  Runs(nvcc13, 13000, 90, true);
  Runs(nvcc13, 13000, 70, false);  // CUDA 13 has no Volta code
}

void TestDecisions() {
  const DeviceCodeTargets clang = ClangRoute();
  GpuSupport support = Decide(clang, "none");
  Expect(support.register_gpu_kernels && support.message.empty(), "no driver: registered, silent");
  support = Decide(clang, "12020:60,90");
  Expect(support.register_gpu_kernels && support.message.empty(), "P100 + H100 on 12.2: registered");
  support = Decide(clang, "11080:80");
  Expect(!support.register_gpu_kernels, "CUDA 11.8 driver: not registered");
  Expect(support.message.find("supports CUDA 11.8 (GPUs: test GPU 0 (sm_80))") != std::string::npos &&
             support.message.find("CUDA 12.1 or newer") != std::string::npos &&
             support.message.find("run on the CPU") != std::string::npos,
         "the old-driver message names the driver, the need and the CPU: " + support.message);
  support = Decide(clang, "12080:90,52");
  Expect(!support.register_gpu_kernels, "one unsupported GPU among supported ones: not registered");
  Expect(support.message.find("(GPUs: test GPU 0 (sm_90), test GPU 1 (sm_52))") !=
                 std::string::npos &&
             support.message.find("has nothing for test GPU 1 (sm_52);") != std::string::npos,
         "the message names every GPU, and the unsupported one as such: " + support.message);
  support = Decide(clang, "12040:110");
  Expect(!support.register_gpu_kernels &&
             support.message.find("PTX needs a driver for CUDA 12.5") != std::string::npos,
         "PTX-only GPU on a 12.4 driver names the JIT's need: " + support.message);
  GpuSystem broken;
  broken.has_driver = true;
  broken.error = "cuInit returned CUresult 999";
  support = DecideGpuSupport(clang, broken);
  Expect(!support.register_gpu_kernels && support.message.find("999") != std::string::npos,
         "a driver that cannot be queried: not registered, said why");
  GpuSystem system;
  Expect(!ParseTestGpus("12080", &system) && !ParseTestGpus("x:80", &system) &&
             !ParseTestGpus("12080:", &system) && !ParseTestGpus("12080:a", &system),
         "malformed FIXED_LOSS_SCALE_TEST_GPUS values are refused");
  Expect(CudaVersionString(12010) == "12.1" && CudaVersionString(13000) == "13.0",
         "CudaVersionString");
}

}  // namespace
}  // namespace gpu
}  // namespace fixed_loss_scale

int main() {
  fixed_loss_scale::gpu::TestDeviceCodeRuns();
  fixed_loss_scale::gpu::TestDecisions();
  std::printf("device support: %s\n", fixed_loss_scale::gpu::failures == 0 ? "PASSED" : "FAILED");
  return fixed_loss_scale::gpu::failures == 0 ? 0 : 1;
}
