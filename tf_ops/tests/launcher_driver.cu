// Standalone driver of the launcher (multi_tensor_scale.h): no TensorFlow, no
// Python. Built by nvcc alone, or by g++ against the clang route's objects and
// libcudart.so.12 (Makefile; tools/gpu_check.sh builds and runs both).
//
//   launcher_driver check [--quick]   the cases of tf_ops/tests/gpu_kernel_cases.h
//                                     (those the host emulation runs) on the GPU,
//                                     against the CPU kernels' element math on the
//                                     host; then the checked launch
//                                     (FixedUnscaleGradsAndCheck) and the read-only
//                                     check (FixedCheckGrads: no tensor byte
//                                     written) of the same cases, the poison cases
//                                     and the checked lists, their flag and sum of
//                                     squares against a double reference and,
//                                     unless --quick, bit for bit against the host
//                                     emulation; --quick keeps sizes <= 4096 and
//                                     the lists (for compute-sanitizer); then the
//                                     fused optimizer update (LaunchFusedUpdate)
//                                     on the cases of fused_update_cases.h,
//                                     against the CPU kernels' element math
//                                     under x86 FTZ/DAZ, bit for bit
//   launcher_driver tf-stream         lists of 991, 992 and 2,000 tensors launched
//                                     as TensorFlow launches: on a stream made with
//                                     the driver API in the primary context, with
//                                     cuMemHostAlloc'ed pinned table scratch,
//                                     unchecked, checked and read-only
//   launcher_driver edges             every float16/bfloat16 bit pattern, float and
//                                     double inputs and products around FLT_MIN /
//                                     DBL_MIN, subnormals and NaNs, several scales
//   launcher_driver huge              one float16 tensor of 2^31 + 17 elements at
//                                     a 2-byte offset, in place (4 GiB), then the
//                                     checked and the read-only launch with the
//                                     sum over it
//   launcher_driver bench [FILE]      on the "full" gradient sets of FILE
//                                     (benchmarks/gradient_sets.txt), float32,
//                                     float16 and bfloat16: one launch for the
//                                     whole list vs one launch per tensor vs a
//                                     device-to-device copy of the same bytes vs
//                                     the checked launch and the read-only check,
//                                     without and with the sum of squares, and
//                                     the safe path's two shapes: the fused
//                                     launch against the read-only check plus a
//                                     later unscale launch; then the fused Adam
//                                     update on bert_like and few_large against
//                                     a copy of the bytes it moves
//   launcher_driver bench-update [FILE]
//                                     the fused Adam update part of bench alone
//
// Exit status: 0 passed, 1 failed (any CUDA error included), 2 usage, 3 no GPU:
// no NVIDIA driver installed (no libcuda.so.1) or cudaErrorNoDevice. Tests
// skip on 3 only; a driver the runtime cannot use is a failure.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tf_ops/core/gpu/fused_update.h"
#include "tf_ops/core/gpu/fused_update_body.h"
#include "tf_ops/core/gpu/multi_tensor_scale.h"
#include "tf_ops/tests/fused_update_cases.h"
#include "tf_ops/tests/gpu_kernel_cases.h"

namespace fixed_loss_scale {
namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoDevice = 3;

// Aborts the run on a CUDA error: after a kernel fault the context is unusable.
void Check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::fprintf(stderr, "CUDA error in %s: %s (%s)\n", what, cudaGetErrorName(status),
               cudaGetErrorString(status));
  std::exit(kExitFailed);
}

// A device or pinned host buffer that grows on demand and is reused.
class Buffer {
 public:
  explicit Buffer(bool pinned_host) : pinned_host_(pinned_host) {}
  ~Buffer() { Release(); }
  void* Reserve(size_t bytes) {
    if (bytes <= capacity_) return data_;
    Release();
    Check(pinned_host_ ? cudaMallocHost(&data_, bytes) : cudaMalloc(&data_, bytes),
          "allocation");
    capacity_ = bytes;
    return data_;
  }

 private:
  void Release() {
    if (data_ != nullptr) pinned_host_ ? cudaFreeHost(data_) : cudaFree(data_);
    data_ = nullptr;
    capacity_ = 0;
  }
  bool pinned_host_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

struct Scratch {
  Buffer host{true};
  Buffer device{false};
};

// Launches over `tensors` with table scratch when the list needs it. The
// caller synchronizes before the pinned scratch is reused.
cudaError_t Launch(const std::vector<TensorSpan>& tensors, ScaleFactor factor, Scratch& scratch,
                   cudaStream_t stream) {
  const int64_t count = static_cast<int64_t>(tensors.size());
  const size_t bytes = MultiTensorScaleScratchBytes(count);
  void* host = bytes > 0 ? scratch.host.Reserve(bytes) : nullptr;
  void* device = bytes > 0 ? scratch.device.Reserve(bytes) : nullptr;
  return LaunchMultiTensorScale(tensors.data(), count, factor, host, device, stream);
}

enum class DeviceState { kReady, kNoDevice, kBroken };

// Whether a GPU is there to test. Only "no GPU here" skips: no driver
// installed at all, or the runtime's cudaErrorNoDevice. Any other error (an
// insufficient driver, a broken installation) is a failure, so that a broken
// GPU machine never reads as skipped.
DeviceState ProbeDevice() {
  if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) == nullptr) {
    std::printf("no CUDA device (no NVIDIA driver: libcuda.so.1 not found)\n");
    return DeviceState::kNoDevice;
  }
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) {
    std::printf("no CUDA device (%s)\n",
                status == cudaSuccess ? "0 devices" : cudaGetErrorName(status));
    return DeviceState::kNoDevice;
  }
  if (status != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in cudaGetDeviceCount: %s (%s); runtime %d\n",
                 cudaGetErrorName(status), cudaGetErrorString(status), CUDART_VERSION);
    return DeviceState::kBroken;
  }
  cudaDeviceProp properties;
  Check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  int driver = 0, runtime = 0;
  Check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
  Check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
  std::printf("device 0: %s (sm_%d%d), driver API %d.%d, runtime %d.%d\n", properties.name,
              properties.major, properties.minor, driver / 1000, driver % 1000 / 10,
              runtime / 1000, runtime % 1000 / 10);
  return DeviceState::kReady;
}

// The exit status when the device is not ready, else 0.
int DeviceExitStatus() {
  switch (ProbeDevice()) {
    case DeviceState::kReady:
      return 0;
    case DeviceState::kNoDevice:
      return kExitNoDevice;
    case DeviceState::kBroken:
      break;
  }
  return kExitFailed;
}

// ---- check ---------------------------------------------------------------------
// One case: upload the arena, launch once, download, compare. Every copy is on
// `stream` (an upload on the legacy stream would not be ordered before a launch
// on a non-blocking stream).
bool RunCase(const testing::ListCase& list, uint64_t seed, Buffer& arena, void* host_scratch,
             void* device_scratch, cudaStream_t stream) {
  const testing::ArenaPlan plan = testing::PlanArena(list);
  const std::vector<uint8_t> initial = testing::InitialArena(list, plan, seed);
  const std::vector<uint8_t> expected = testing::ExpectedArena(list, plan, initial);
  uint8_t* device = static_cast<uint8_t*>(arena.Reserve(initial.size()));
  Check(cudaMemcpyAsync(device, initial.data(), initial.size(), cudaMemcpyHostToDevice, stream),
        "upload");
  const std::vector<TensorSpan> tensors = testing::TensorsAt(list, plan, device);
  Check(LaunchMultiTensorScale(tensors.data(), static_cast<int64_t>(tensors.size()),
                               testing::FactorOf(list), host_scratch, device_scratch, stream),
        list.name.c_str());
  std::vector<uint8_t> actual(initial.size());
  Check(cudaMemcpyAsync(actual.data(), device, actual.size(), cudaMemcpyDeviceToHost, stream),
        "download");
  Check(cudaStreamSynchronize(stream), list.name.c_str());
  return testing::CompareArenas(list, plan, expected, actual) == 0;
}

bool RunCase(const testing::ListCase& list, uint64_t seed, Buffer& arena, Scratch& scratch,
             cudaStream_t stream) {
  const size_t bytes = MultiTensorScaleScratchBytes(static_cast<int64_t>(list.tensors.size()));
  return RunCase(list, seed, arena, bytes > 0 ? scratch.host.Reserve(bytes) : nullptr,
                 bytes > 0 ? scratch.device.Reserve(bytes) : nullptr, stream);
}

// The device buffers of a checked launch: its scratch and its two outputs
// (all_finite at byte 0, sum_of_squares at byte 4).
struct CheckedBuffers {
  Buffer device_scratch{false};
  Buffer outputs{false};
};

// A 64-byte aligned host copy of an arena (as cudaMalloc aligns), for the
// host emulation of a launch.
struct HostArena {
  explicit HostArena(const std::vector<uint8_t>& bytes)
      : storage(bytes.size() + 64), data(reinterpret_cast<uint8_t*>(testing::RoundUp(
                                        reinterpret_cast<uintptr_t>(storage.data()), 64))) {
    std::memcpy(data, bytes.data(), bytes.size());
  }
  std::vector<uint8_t> storage;
  uint8_t* data;
};

bool SameFloatBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(float)) == 0;
}

// The checked launch (LaunchMultiTensorScaleAndCheck, or with `read_only`
// LaunchMultiTensorCheck) of one case: the arena as for the unchecked launch
// (read-only: unchanged), the flag exactly and the sum of squares within
// kSumOfSquaresRtol of the double reference (or the not-computed NaN); with
// `emulate`, also the flag and the sum bit for bit against the host emulation
// of the same launch (the same grid and reduction order; NaNs compare equal
// whatever their payload). The outputs start as 0xff bytes, so a launch that
// does not write them fails.
bool RunCheckedCase(const testing::ListCase& list, uint64_t seed, Buffer& arena,
                    void* host_scratch, CheckedBuffers& buffers, bool emulate,
                    cudaStream_t stream, bool read_only = false) {
  const testing::ArenaPlan plan = testing::PlanArena(list);
  const std::vector<uint8_t> initial = testing::InitialArena(list, plan, seed);
  const std::vector<uint8_t> scaled = testing::ExpectedArena(list, plan, initial);
  const std::vector<uint8_t>& expected = read_only ? initial : scaled;
  const testing::ReferenceCheck reference = testing::ComputeReferenceCheck(list, plan, scaled);
  uint8_t* device = static_cast<uint8_t*>(arena.Reserve(initial.size()));
  Check(cudaMemcpyAsync(device, initial.data(), initial.size(), cudaMemcpyHostToDevice, stream),
        "upload");
  const std::vector<TensorSpan> tensors = testing::TensorsAt(list, plan, device);
  const int64_t count = static_cast<int64_t>(tensors.size());
  void* scratch = buffers.device_scratch.Reserve(
      read_only ? MultiTensorCheckScratchBytes(tensors.data(), count)
                : MultiTensorScaleAndCheckScratchBytes(tensors.data(), count));
  uint8_t* outputs = static_cast<uint8_t*>(buffers.outputs.Reserve(8));
  Check(cudaMemsetAsync(outputs, 0xff, 8, stream), "cudaMemsetAsync");
  const auto launch = read_only ? LaunchMultiTensorCheck : LaunchMultiTensorScaleAndCheck;
  Check(launch(tensors.data(), count, testing::FactorOf(list), list.sum_of_squares, host_scratch,
               scratch, reinterpret_cast<bool*>(outputs), reinterpret_cast<float*>(outputs + 4),
               stream),
        list.name.c_str());
  std::vector<uint8_t> actual(initial.size());
  uint8_t result[8];
  Check(cudaMemcpyAsync(actual.data(), device, actual.size(), cudaMemcpyDeviceToHost, stream),
        "download");
  Check(cudaMemcpyAsync(result, outputs, 8, cudaMemcpyDeviceToHost, stream), "download");
  Check(cudaStreamSynchronize(stream), list.name.c_str());
  bool ok = testing::CompareArenas(list, plan, expected, actual) == 0;
  float sum;
  std::memcpy(&sum, result + 4, 4);
  if (result[0] > 1) {
    std::printf("  %s (%s): all_finite byte is 0x%02x, not written\n", list.name.c_str(),
                read_only ? "read-only" : "checked", result[0]);
    return false;
  }
  const bool all_finite = result[0] == 1;
  const std::string error = testing::CheckOutputsError(list, reference, all_finite, sum);
  if (!error.empty()) {
    std::printf("  %s (%s): %s\n", list.name.c_str(), read_only ? "read-only" : "checked",
                error.c_str());
    ok = false;
  }
  if (emulate) {
    HostArena host(initial);
    const std::vector<TensorSpan> host_tensors = testing::TensorsAt(list, plan, host.data);
    std::vector<uint64_t> host_scratch_copy(
        testing::CheckedScratchBytes(host_tensors, true, read_only) / 8);
    bool emulated_finite = false;
    float emulated_sum = 0;
    testing::EmulateCheckedLaunch(host_tensors, testing::FactorOf(list), list.sum_of_squares,
                                  true, reinterpret_cast<uint8_t*>(host_scratch_copy.data()),
                                  &emulated_finite, &emulated_sum, 0, gpu::DirectMemory(),
                                  read_only);
    if (emulated_finite != all_finite || !SameFloatBits(emulated_sum, sum)) {
      std::printf("  %s (%s): GPU gives %d / %a, the host emulation %d / %a\n",
                  list.name.c_str(), read_only ? "read-only" : "checked", all_finite, sum,
                  emulated_finite, emulated_sum);
      ok = false;
    }
  }
  return ok;
}

bool RunCheckedCase(const testing::ListCase& list, uint64_t seed, Buffer& arena,
                    Scratch& scratch, CheckedBuffers& buffers, bool emulate,
                    cudaStream_t stream, bool read_only = false) {
  const size_t bytes = MultiTensorScaleScratchBytes(static_cast<int64_t>(list.tensors.size()));
  return RunCheckedCase(list, seed, arena, bytes > 0 ? scratch.host.Reserve(bytes) : nullptr,
                        buffers, emulate, stream, read_only);
}

// ---- check: the fused optimizer update ------------------------------------------------
// The CPU kernels' element math on the host: every rule of fused_update_math.h
// through ScalarMath, the CPU kernels' scalar loop, whose bits their vector
// loops share (make fused-update-emulation-test compares every path), under
// x86 FTZ/DAZ as on TensorFlow's threads (the caller holds a
// ScopedFlushToZero). No FMA: this file is compiled for baseline x86-64.
template <typename Rule, bool kDecay, bool kFold>
void ReferenceElements(const UpdateTensor& tensor, const fused::Coefficients<fused::ScalarMath>& c) {
  for (int64_t i = 0; i < tensor.num_elements; ++i) {
    float s[Rule::kStates];
    for (int k = 0; k < Rule::kStates; ++k) s[k] = tensor.state[k][i];
    fused::UpdateGroup<Rule, kDecay, kFold, fused::ScalarMath>(tensor.grad[i], s, c);
    for (int k = 0; k < Rule::kStates; ++k) tensor.state[k][i] = s[k];
  }
}

void ReferenceUpdate(UpdateRule rule, const UpdateTensor& tensor, const UpdateScalars& s) {
  const fused::Coefficients<fused::ScalarMath> c{
      s.unscale, s.clip, s.lr, s.weight_decay, s.momentum, s.alpha, s.one_minus_beta_1,
      s.one_minus_beta_2, s.epsilon, s.weight_decay_lr, s.clip * s.lr};
  gpu::VisitRule(rule, [&](auto rule_type) {
    using Rule = decltype(rule_type);
    switch (UpdateVariant(tensor)) {
      case 0:
        return ReferenceElements<Rule, false, false>(tensor, c);
      case 1:
        return ReferenceElements<Rule, true, false>(tensor, c);
      case 2:
        return ReferenceElements<Rule, false, true>(tensor, c);
      default:
        return ReferenceElements<Rule, true, true>(tensor, c);
    }
  });
}

// A host pointer of the case's arena as the same offset in the device copy.
template <typename T>
T* OnDevice(T* host, const uint8_t* host_base, uint8_t* device_base) {
  return host == nullptr ? nullptr
                         : reinterpret_cast<T*>(device_base + (reinterpret_cast<const uint8_t*>(
                                                                   host) - host_base));
}

// One case: the arena laid out on the host, its expected state by the
// reference, uploaded from its 64-byte aligned base (so every array keeps its
// offset), one launch, downloaded and compared whole (guards included).
bool RunFusedCase(const testing::UpdateCase& c, Buffer& arena, Scratch& scratch,
                  testing::CaseTotals* totals, cudaStream_t stream) {
  testing::Rng rng(c.seed);
  std::vector<uint8_t> bytes;
  const testing::ArenaLayout layout = testing::LayOut(c, rng, &bytes, totals);
  uint8_t* base = bytes.data() + (64 - reinterpret_cast<uintptr_t>(bytes.data()) % 64) % 64;
  base[0] = c.all_finite ? 1 : 0;
  const testing::CaseScalars scalars = testing::DrawScalars(rng, base, c.loss_scale);
  const size_t size = bytes.size() - (base - bytes.data());
  std::vector<uint8_t> expected(base, base + size);
  if (c.all_finite) {
#if defined(__x86_64__) || defined(__i386__)
    testing::ScopedFlushToZero flush;
#endif
    for (UpdateTensor tensor : layout.tensors) {
      tensor.grad = OnDevice(tensor.grad, base, expected.data());
      for (int k = 0; k < UpdateStates(c.rule); ++k) {
        tensor.state[k] = OnDevice(tensor.state[k], base, expected.data());
      }
      ReferenceUpdate(c.rule, tensor, scalars.cpu);
    }
  }
  uint8_t* device = static_cast<uint8_t*>(arena.Reserve(size));
  std::vector<UpdateTensor> tensors = layout.tensors;
  for (UpdateTensor& tensor : tensors) {
    tensor.grad = OnDevice(tensor.grad, base, device);
    for (float*& state : tensor.state) state = OnDevice(state, base, device);
  }
  UpdateScalarPointers pointers = scalars.device;
  for (const float** p : {&pointers.clip, &pointers.lr, &pointers.weight_decay,
                          &pointers.momentum, &pointers.alpha, &pointers.one_minus_beta_1,
                          &pointers.one_minus_beta_2, &pointers.epsilon,
                          &pointers.weight_decay_lr}) {
    *p = OnDevice(*p, base, device);
  }
  const int64_t count = static_cast<int64_t>(tensors.size());
  const size_t scratch_bytes = FusedUpdateScratchBytes(count);
  Check(cudaMemcpyAsync(device, base, size, cudaMemcpyHostToDevice, stream), "upload");
  Check(LaunchFusedUpdate(c.rule, tensors.data(), count, scalars.cpu.unscale, pointers,
                          reinterpret_cast<const bool*>(device),
                          scratch_bytes > 0 ? scratch.host.Reserve(scratch_bytes) : nullptr,
                          scratch_bytes > 0 ? scratch.device.Reserve(scratch_bytes) : nullptr,
                          stream),
        "LaunchFusedUpdate");
  std::vector<uint8_t> got(size);
  Check(cudaMemcpyAsync(got.data(), device, size, cudaMemcpyDeviceToHost, stream), "download");
  Check(cudaStreamSynchronize(stream), "download");
  const std::string failure = testing::CompareArena(got.data(), size, {expected}, totals);
  ++totals->cases;
  totals->tensors += count;
  for (int64_t n : c.sizes) totals->elements += n;
  if (failure.empty()) return true;
  if (totals->failed++ < 10) {
    std::printf("  FAILED fused update %s: %s\n", testing::Describe(c).c_str(), failure.c_str());
  }
  return false;
}

// Returns the number of failed cases.
int64_t RunFusedUpdateCheck(bool quick, cudaStream_t stream) {
  if (!testing::kHardwareFlushReference) {
    std::printf("GPU check, fused update: skipped (its reference needs x86 FTZ/DAZ)\n");
    return 0;
  }
  Buffer arena(false);
  Scratch scratch;
  testing::CaseTotals totals;
  for (const testing::UpdateCase& c :
       testing::MakeUpdateCases(quick ? 12 : 60, quick ? 4096 : int64_t{1} << 40)) {
    RunFusedCase(c, arena, scratch, &totals, stream);
  }
  std::printf("GPU check, fused update: %lld cases, %lld tensors, %lld elements (%lld packed, "
              "%lld element by element), %lld failed; %lld NaN results of another payload (two "
              "NaN operands); reference: the CPU kernels' element math under x86 FTZ/DAZ\n",
              static_cast<long long>(totals.cases), static_cast<long long>(totals.tensors),
              static_cast<long long>(totals.elements), static_cast<long long>(totals.packed),
              static_cast<long long>(totals.unpacked), static_cast<long long>(totals.failed),
              static_cast<long long>(totals.nan_choices));
  return totals.failed;
}

int RunCheck(bool quick) {
  if (const int status = DeviceExitStatus()) return status;
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Buffer arena(false);
  Scratch scratch;
  std::vector<testing::ListCase> cases = testing::SingleTensorCases();
  if (quick) {
    cases.erase(std::remove_if(cases.begin(), cases.end(),
                               [](const testing::ListCase& list) {
                                 return testing::TotalElements(list) > testing::kAllOffsetsUpTo;
                               }),
                cases.end());
  }
  const std::vector<testing::ListCase> lists = testing::MultiTensorCases();
  cases.insert(cases.end(), lists.begin(), lists.end());
  int64_t failed = 0;
  int64_t elements = 0;
  uint64_t seed = 1;
  for (const testing::ListCase& list : cases) {
    if (!RunCase(list, seed++, arena, scratch, stream)) ++failed;
    elements += testing::TotalElements(list);
  }
  std::printf("GPU check: %zu cases, %lld elements, %lld failed; reference: %s\n", cases.size(),
              static_cast<long long>(elements), static_cast<long long>(failed),
              testing::kHardwareFlushReference ? "CPU element math under x86 FTZ/DAZ"
                                               : "software FTZ/DAZ reference");

  // The checked launch: the same cases (with and without the sum by turns),
  // the poison cases and the checked lists; against the host emulation bit
  // for bit unless --quick.
  CheckedBuffers buffers;
  for (testing::ListCase& list : cases) list.sum_of_squares = seed++ % 2 == 0;
  for (const std::vector<testing::ListCase>& more :
       {testing::PoisonCases(), testing::CheckedListCases()}) {
    cases.insert(cases.end(), more.begin(), more.end());
  }
  // Then the read-only check (LaunchMultiTensorCheck) of the same cases: no
  // tensor byte written, the same flag and sum checks.
  for (const bool read_only : {false, true}) {
    int64_t checked_failed = 0;
    int64_t checked_elements = 0;
    int64_t not_finite = 0;
    for (const testing::ListCase& list : cases) {
      if (!RunCheckedCase(list, seed++, arena, scratch, buffers, !quick, stream, read_only)) {
        ++checked_failed;
      }
      checked_elements += testing::TotalElements(list);
      not_finite += !list.poisons.empty();
    }
    std::printf("GPU check, %s: %zu cases (%lld poisoned), %lld elements, %lld failed; "
                "sum rtol %g%s\n",
                read_only ? "read-only check launch" : "checked launch", cases.size(),
                static_cast<long long>(not_finite), static_cast<long long>(checked_elements),
                static_cast<long long>(checked_failed), testing::kSumOfSquaresRtol,
                quick ? "" : ", flag and sum bit-identical to the host emulation");
    failed += checked_failed;
  }
  failed += RunFusedUpdateCheck(quick, stream);
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  std::printf("GPU check: %s\n", failed == 0 ? "PASSED" : "FAILED");
  return failed == 0 ? 0 : kExitFailed;
}

// ---- tf-stream -------------------------------------------------------------------
// The driver API entry points TensorFlow's StreamExecutor uses to make its
// streams and pinned host memory, reached with dlopen (no libcuda link).
struct DriverApi {
  int (*init)(unsigned);
  int (*device_get)(int*, int);
  int (*primary_ctx_retain)(void**, int);
  int (*ctx_set_current)(void*);
  int (*stream_create)(void**, unsigned);
  int (*mem_host_alloc)(void**, size_t, unsigned);
  int (*mem_free_host)(void*);
};

void CheckDriver(int result, const char* what) {
  if (result == 0) return;
  std::fprintf(stderr, "CUDA driver error in %s: CUresult %d\n", what, result);
  std::exit(kExitFailed);
}

DriverApi LoadDriverApi() {
  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (cuda == nullptr) {
    std::fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror());
    std::exit(kExitFailed);
  }
  auto symbol = [cuda](const char* name, const char* fallback) {
    void* address = dlsym(cuda, name);
    if (address == nullptr && fallback != nullptr) address = dlsym(cuda, fallback);
    if (address == nullptr) {
      std::fprintf(stderr, "libcuda.so.1 has no %s\n", name);
      std::exit(kExitFailed);
    }
    return address;
  };
  DriverApi api;
  api.init = reinterpret_cast<int (*)(unsigned)>(symbol("cuInit", nullptr));
  api.device_get = reinterpret_cast<int (*)(int*, int)>(symbol("cuDeviceGet", nullptr));
  api.primary_ctx_retain =
      reinterpret_cast<int (*)(void**, int)>(symbol("cuDevicePrimaryCtxRetain", nullptr));
  api.ctx_set_current = reinterpret_cast<int (*)(void*)>(symbol("cuCtxSetCurrent", nullptr));
  api.stream_create = reinterpret_cast<int (*)(void**, unsigned)>(symbol("cuStreamCreate", nullptr));
  api.mem_host_alloc = reinterpret_cast<int (*)(void**, size_t, unsigned)>(
      symbol("cuMemHostAlloc", nullptr));
  api.mem_free_host = reinterpret_cast<int (*)(void*)>(symbol("cuMemFreeHost", nullptr));
  return api;
}

int RunTfStream() {
  if (const int status = DeviceExitStatus()) return status;
  const DriverApi api = LoadDriverApi();
  constexpr unsigned kStreamNonBlocking = 1;      // CU_STREAM_NON_BLOCKING
  constexpr unsigned kMemHostAllocPortable = 1;   // CU_MEMHOSTALLOC_PORTABLE
  int device = 0;
  void* context = nullptr;
  void* stream = nullptr;
  CheckDriver(api.init(0), "cuInit");
  CheckDriver(api.device_get(&device, 0), "cuDeviceGet");
  CheckDriver(api.primary_ctx_retain(&context, device), "cuDevicePrimaryCtxRetain");
  CheckDriver(api.ctx_set_current(context), "cuCtxSetCurrent");
  CheckDriver(api.stream_create(&stream, kStreamNonBlocking), "cuStreamCreate");
  Buffer arena(false);
  Buffer device_scratch(false);
  CheckedBuffers checked;
  int64_t failed = 0;
  uint64_t seed = 4242;
  for (int64_t count : {gpu::kLargeInlineTensors, gpu::kLargeInlineTensors + 1, int64_t{2000}}) {
    testing::ListCase list;
    list.name = "tf-stream list of " + std::to_string(count) + " tensors";
    testing::Rng rng(seed);
    for (int64_t t = 0; t < count; ++t) {
      testing::TensorCase tensor;
      tensor.dtype = testing::kAllDTypes[rng.Uniform(0, 3)];
      tensor.num_elements = rng.Uniform(0, 3000);
      tensor.in_offset = rng.Uniform(0, 1) * 8;
      tensor.out_offset = tensor.in_offset;
      tensor.in_place = rng.Uniform(0, 1) == 0;
      list.tensors.push_back(tensor);
    }
    list.loss_scale = 1024.0f;
    list.unscale = true;
    const size_t bytes = MultiTensorScaleScratchBytes(count);
    void* pinned = nullptr;
    if (bytes > 0) CheckDriver(api.mem_host_alloc(&pinned, bytes, kMemHostAllocPortable), "cuMemHostAlloc");
    const bool ok = RunCase(list, seed, arena, pinned,
                            bytes > 0 ? device_scratch.Reserve(bytes) : nullptr,
                            static_cast<cudaStream_t>(stream));
    // The checked and the read-only launch of the same list, with the same
    // pinned table scratch.
    list.sum_of_squares = count % 2 == 0;
    const bool checked_ok = RunCheckedCase(list, seed, arena, pinned, checked, false,
                                           static_cast<cudaStream_t>(stream));
    const bool read_only_ok = RunCheckedCase(list, seed++, arena, pinned, checked, false,
                                             static_cast<cudaStream_t>(stream), true);
    if (pinned != nullptr) CheckDriver(api.mem_free_host(pinned), "cuMemFreeHost");
    std::printf("%s (%s table): %s; checked%s: %s; read-only: %s\n", list.name.c_str(),
                bytes > 0 ? "buffer" : "inline", ok ? "ok" : "FAILED",
                list.sum_of_squares ? " + sum of squares" : "", checked_ok ? "ok" : "FAILED",
                read_only_ok ? "ok" : "FAILED");
    failed += !ok + !checked_ok + !read_only_ok;
  }
  std::printf("tf-stream: %s\n", failed == 0 ? "PASSED" : "FAILED");
  return failed == 0 ? 0 : kExitFailed;
}

// ---- edges -----------------------------------------------------------------------
// Runs `inputs` (of `dtype`) through one launch in place and compares every
// element with the CPU reference; returns the number that differ.
template <typename T>
int64_t CompareOnGpu(DType dtype, const std::vector<T>& inputs, ScaleFactor factor,
                     cudaStream_t stream) {
  const size_t bytes = inputs.size() * sizeof(T);
  void* device = nullptr;
  Check(cudaMalloc(&device, bytes), "cudaMalloc");
  Check(cudaMemcpyAsync(device, inputs.data(), bytes, cudaMemcpyHostToDevice, stream), "upload");
  const TensorSpan span{device, device, static_cast<int64_t>(inputs.size()), dtype};
  Check(LaunchMultiTensorScale(&span, 1, factor, nullptr, nullptr, stream), "edges launch");
  std::vector<T> actual(inputs.size());
  std::vector<T> expected(inputs.size());
  Check(cudaMemcpyAsync(actual.data(), device, bytes, cudaMemcpyDeviceToHost, stream), "download");
  Check(cudaStreamSynchronize(stream), "edges");
  Check(cudaFree(device), "cudaFree");
  {
    const testing::ScopedFlushToZero flush;
    for (size_t i = 0; i < inputs.size(); ++i) {
      testing::CpuReferenceElement(dtype, inputs.data(), expected.data(), static_cast<int64_t>(i),
                                   factor);
    }
  }
  int64_t wrong = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (std::memcmp(&actual[i], &expected[i], sizeof(T)) == 0) continue;
    if (++wrong <= 3) {
      uint64_t in = 0, got = 0, want = 0;
      std::memcpy(&in, &inputs[i], sizeof(T));
      std::memcpy(&got, &actual[i], sizeof(T));
      std::memcpy(&want, &expected[i], sizeof(T));
      std::printf("  %s x=0x%llx factor=%a: GPU 0x%llx, CPU 0x%llx\n", DTypeName(dtype),
                  static_cast<unsigned long long>(in), factor.d,
                  static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
    }
  }
  return wrong;
}

// Inputs whose products with `factor` land within a few ulps of the smallest
// normal `min_normal` (where x86 detects tininess after rounding), both signs,
// plus subnormal inputs, +-0, +-Inf and NaNs of both signs.
template <typename T>
std::vector<T> EdgeValues(T factor, T min_normal, int mantissa_bits) {
  std::vector<T> values;
  for (int k = -300; k <= 300; ++k) {
    T x = min_normal * (1 + k * std::ldexp(T(1), -mantissa_bits - 1)) / factor;
    for (int s = 0; s < 3; ++s) x = std::nextafter(x, T(0));
    for (int s = 0; s < 7; ++s) {
      values.push_back(x);
      values.push_back(-x);
      x = std::nextafter(x, std::numeric_limits<T>::max());
    }
  }
  for (T x : {min_normal / 2, min_normal / 1024, std::numeric_limits<T>::denorm_min(),
              min_normal - std::numeric_limits<T>::denorm_min(), T(0),
              std::numeric_limits<T>::infinity(), std::numeric_limits<T>::quiet_NaN(),
              std::numeric_limits<T>::max()}) {
    values.push_back(x);
    values.push_back(-x);
  }
  return values;
}

int RunEdges() {
  if (const int status = DeviceExitStatus()) return status;
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  std::vector<uint16_t> patterns(65536);
  for (int i = 0; i < 65536; ++i) patterns[i] = static_cast<uint16_t>(i);
  int64_t wrong = 0;
  int64_t compared = 0;
  for (float loss_scale : {1.0f, 3.0f, 1024.0f, 16777217.0f, 0x1p126f}) {
    for (bool unscale : {true, false}) {
      const ScaleFactor factor =
          unscale ? ReciprocalFactorFor(loss_scale) : ScaleFactorFor(loss_scale);
      wrong += CompareOnGpu(DType::kHalf, patterns, factor, stream);
      wrong += CompareOnGpu(DType::kBFloat16, patterns, factor, stream);
      const std::vector<float> floats = EdgeValues<float>(factor.f, FLT_MIN, 23);
      const std::vector<double> doubles = EdgeValues<double>(factor.d, DBL_MIN, 52);
      wrong += CompareOnGpu(DType::kFloat, floats, factor, stream);
      wrong += CompareOnGpu(DType::kDouble, doubles, factor, stream);
      compared += 2 * 65536 + static_cast<int64_t>(floats.size() + doubles.size());
    }
  }
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  std::printf("edges: %lld values x factors, %lld differ from the CPU kernels: %s\n",
              static_cast<long long>(compared), static_cast<long long>(wrong),
              wrong == 0 ? "PASSED" : "FAILED");
  return wrong == 0 ? 0 : kExitFailed;
}

// ---- huge ------------------------------------------------------------------------
int RunHuge() {
  if (const int status = DeviceExitStatus()) return status;
  const int64_t n = (int64_t{1} << 31) + 17;
  const size_t bytes = static_cast<size_t>(n) * 2;
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  uint8_t* base = nullptr;
  Check(cudaMalloc(reinterpret_cast<void**>(&base), bytes + 64), "cudaMalloc (4 GiB)");
  uint16_t* data = reinterpret_cast<uint16_t*>(base + 2);  // 2 bytes past a 16-byte boundary
  std::vector<uint16_t> host(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    host[i] = static_cast<uint16_t>(0x3c00u + (static_cast<uint64_t>(i) * 2654435761u) % 0x3000u);
  }
  Check(cudaMemcpyAsync(data, host.data(), bytes, cudaMemcpyHostToDevice, stream), "upload");
  const ScaleFactor factor = ReciprocalFactorFor(1024.0f);
  const TensorSpan span{data, data, n, DType::kHalf};
  Check(LaunchMultiTensorScale(&span, 1, factor, nullptr, nullptr, stream), "huge launch");
  std::vector<uint16_t> out(static_cast<size_t>(n));
  Check(cudaMemcpyAsync(out.data(), data, bytes, cudaMemcpyDeviceToHost, stream), "download");
  // Then the checked launch with the sum of squares and factor 1 over the
  // result (65,537 blocks' partials), in place.
  const TensorSpan again{data, data, n, DType::kHalf};
  void* scratch = nullptr;
  uint8_t* outputs = nullptr;
  Check(cudaMalloc(&scratch, std::max(MultiTensorScaleAndCheckScratchBytes(&again, 1),
                                      MultiTensorCheckScratchBytes(&again, 1))),
        "cudaMalloc");
  Check(cudaMalloc(reinterpret_cast<void**>(&outputs), 16), "cudaMalloc");
  Check(LaunchMultiTensorScaleAndCheck(&again, 1, ScaleFactorFor(1.0f), true, nullptr, scratch,
                                       reinterpret_cast<bool*>(outputs),
                                       reinterpret_cast<float*>(outputs + 4), stream),
        "huge checked launch");
  // And the read-only check over the same values (its outputs at +8): the
  // same flag and sum, bit for bit.
  Check(LaunchMultiTensorCheck(&again, 1, ScaleFactorFor(1.0f), true, nullptr, scratch,
                               reinterpret_cast<bool*>(outputs + 8),
                               reinterpret_cast<float*>(outputs + 12), stream),
        "huge read-only check launch");
  uint8_t result[16];
  Check(cudaMemcpyAsync(result, outputs, 16, cudaMemcpyDeviceToHost, stream), "download");
  Check(cudaStreamSynchronize(stream), "huge");
  Check(cudaFree(scratch), "cudaFree");
  Check(cudaFree(outputs), "cudaFree");
  Check(cudaFree(base), "cudaFree");
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  // The reference from a histogram of the output's bit patterns.
  std::vector<int64_t> histogram(65536, 0);
  for (int64_t i = 0; i < n; ++i) ++histogram[out[i]];
  testing::ReferenceCheck reference;
  for (int bits = 0; bits < 65536; ++bits) {
    if (histogram[bits] == 0) continue;
    const double x = HalfBitsToFloat(static_cast<uint16_t>(bits));
    reference.all_finite = reference.all_finite && std::isfinite(x);
    reference.sum_of_squares += static_cast<double>(histogram[bits]) * x * x;
  }
  reference.elements = n;
  testing::ListCase huge_case;
  huge_case.name = "huge checked";
  float sum;
  std::memcpy(&sum, result + 4, 4);
  std::string error = testing::CheckOutputsError(huge_case, reference, result[0] == 1, sum);
  std::printf("huge: checked launch over the result: all_finite %d, sum of squares %.9g "
              "(reference %.12g): %s\n",
              result[0], sum, reference.sum_of_squares, error.empty() ? "ok" : error.c_str());
  if (std::memcmp(result, result + 8, 1) != 0 || std::memcmp(result + 4, result + 12, 4) != 0) {
    error += " read-only check differs";
  }
  float read_only_sum;
  std::memcpy(&read_only_sum, result + 12, 4);
  std::printf("huge: read-only check: all_finite %d, sum of squares %a (checked launch %a)\n",
              result[8], read_only_sum, sum);
  int64_t wrong = 0, compared = 0;
  // Every element of the first and last 2^20 (the head, the tail and the
  // chunks past 2^31 elements), and every 4093rd between.
  for (int64_t i = 0; i < n; i += (i < (1 << 20) || i > n - (1 << 20)) ? 1 : 4093) {
    ++compared;
    if (out[i] == ScaleHalfBitsFlushed(host[i], factor.f)) continue;
    if (++wrong <= 3) std::printf("  huge: element %lld differs\n", static_cast<long long>(i));
  }
  const bool passed = wrong == 0 && error.empty();
  std::printf("huge: float16 x %lld elements at offset 2 bytes, %lld checked, %lld differ: %s\n",
              static_cast<long long>(n), static_cast<long long>(compared),
              static_cast<long long>(wrong), passed ? "PASSED" : "FAILED");
  return passed ? 0 : kExitFailed;
}

// ---- bench ---------------------------------------------------------------------
struct GradientSet {
  std::string name;
  std::vector<int64_t> sizes;
};

// Element count of one shape token of the sets file: dimensions joined by 'x',
// optionally "*N" for N copies (added N times to `sizes`). False if malformed.
bool AppendShape(const std::string& token, std::vector<int64_t>* sizes) {
  const size_t star = token.find('*');
  const std::string dims = token.substr(0, star);
  const long long copies = star == std::string::npos ? 1 : std::atoll(token.c_str() + star + 1);
  int64_t elements = 1;
  size_t begin = 0;
  while (begin <= dims.size()) {
    const size_t end = std::min(dims.find('x', begin), dims.size());
    const long long dim = std::atoll(dims.substr(begin, end - begin).c_str());
    if (dim <= 0) return false;
    elements *= dim;
    begin = end + 1;
  }
  if (copies <= 0) return false;
  sizes->insert(sizes->end(), static_cast<size_t>(copies), elements);
  return true;
}

// The "full" sets of the benchmark's one definition, benchmarks/gradient_sets.txt
// (its format is described at its top): the CPU benchmark and the PyTorch GPU
// script read the same file, so all three measure the same tensors.
std::vector<GradientSet> ReadGradientSets(const char* path) {
  std::vector<GradientSet> sets;
  FILE* file = std::fopen(path, "r");
  if (file == nullptr) {
    std::fprintf(stderr, "launcher_driver bench: cannot open gradient sets file %s\n", path);
    std::exit(kExitUsage);
  }
  char line[1 << 16];
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    std::vector<std::string> tokens;
    for (char* token = std::strtok(line, " \t\r\n"); token != nullptr;
         token = std::strtok(nullptr, " \t\r\n")) {
      tokens.emplace_back(token);
    }
    if (tokens.empty() || tokens[0][0] == '#' || tokens.size() < 3 || tokens[1] != "full") {
      continue;
    }
    GradientSet set{tokens[0], {}};
    for (size_t i = 2; i < tokens.size(); ++i) {
      if (!AppendShape(tokens[i], &set.sizes)) {
        std::fprintf(stderr, "launcher_driver bench: bad shape '%s' in set %s of %s\n",
                     tokens[i].c_str(), tokens[0].c_str(), path);
        std::exit(kExitUsage);
      }
    }
    sets.push_back(set);
  }
  std::fclose(file);
  return sets;
}

// Mean time of one call of `body` over `iterations` calls on `stream`, in
// microseconds; the median of 5 such measurements.
template <typename Body>
double TimeMicros(cudaStream_t stream, int iterations, Body body) {
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "cudaEventCreate");
  Check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) body();
  std::vector<double> samples;
  for (int repeat = 0; repeat < 5; ++repeat) {
    Check(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int i = 0; i < iterations; ++i) body();
    Check(cudaEventRecord(stop, stream), "cudaEventRecord");
    Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float milliseconds = 0;
    Check(cudaEventElapsedTime(&milliseconds, start, stop), "cudaEventElapsedTime");
    samples.push_back(1000.0 * milliseconds / iterations);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// One arm's line: its time, and its bandwidth over the bytes it moves
// against the copy's (which moves 2 bytes per gradient byte).
void PrintArm(const char* arm, double micros, double bytes_moved, double copy_gbps) {
  const double gbps = bytes_moved / (micros * 1e3);
  std::printf("    %-40s %10.1f us %8.1f GB/s %7.1f%% of copy\n", arm, micros, gbps,
              copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 100.0);
}

// Set when a checked launch of the benchmark gives a wrong check.
bool bench_failed = false;

// The bits of 1.0 in `dtype`, as 8 bytes (the low DTypeSize bytes count).
uint64_t OneBits(DType dtype) {
  switch (dtype) {
    case DType::kHalf:
      return 0x3c00u;
    case DType::kBFloat16:
      return 0x3f80u;
    case DType::kFloat:
      return 0x3f800000u;
    case DType::kDouble:
      break;
  }
  return 0x3ff0000000000000ull;
}

// Whether a checked launch's outputs (device bytes: all_finite, then the sum
// at +4) say "all finite, sum `expected`".
void ExpectCheck(const GradientSet& set, const char* arm, const uint8_t* outputs, double expected,
                 cudaStream_t stream) {
  uint8_t result[8];
  Check(cudaMemcpyAsync(result, outputs, 8, cudaMemcpyDeviceToHost, stream), "download");
  Check(cudaStreamSynchronize(stream), "download");
  float sum;
  std::memcpy(&sum, result + 4, 4);
  if (result[0] != 1 || sum != static_cast<float>(expected)) {
    std::printf("  %s: %s gives all_finite %d, sum of squares %.9g; expected 1, %.9g\n",
                set.name.c_str(), arm, result[0], sum, expected);
    bench_failed = true;
  }
}

// Every arm on one set in one dtype, in place, values 1.0 and factor 1 (so
// they stay put run after run, and the check's sum is the element count).
// The arms of the safe path's shape: the fused launch (read + write) that a
// skip decision waits for, against the read-only check before it plus the
// unscale launch after it, over the same bytes.
void BenchSet(const GradientSet& set, DType dtype, cudaStream_t stream) {
  const int64_t element_bytes = DTypeSize(dtype);
  std::vector<int64_t> offsets;
  int64_t total_bytes = 0;
  int64_t total_elements = 0;
  for (int64_t size : set.sizes) {
    offsets.push_back(total_bytes);
    total_bytes += testing::RoundUp(size * element_bytes, 256);  // allocator-like alignment
    total_elements += size;
  }
  void* data = nullptr;
  void* copy_target = nullptr;
  Check(cudaMalloc(&data, total_bytes), "cudaMalloc");
  Check(cudaMalloc(&copy_target, total_bytes), "cudaMalloc");
  {
    const uint64_t one = OneBits(dtype);
    std::vector<uint8_t> ones(static_cast<size_t>(total_bytes));
    for (int64_t i = 0; i < total_bytes; i += element_bytes) std::memcpy(&ones[i], &one, element_bytes);
    Check(cudaMemcpyAsync(data, ones.data(), total_bytes, cudaMemcpyHostToDevice, stream), "upload");
    Check(cudaStreamSynchronize(stream), "upload");
  }
  std::vector<TensorSpan> tensors;
  for (size_t t = 0; t < set.sizes.size(); ++t) {
    uint8_t* base = static_cast<uint8_t*>(data) + offsets[t];
    tensors.push_back(TensorSpan{base, base, set.sizes[t], dtype});
  }
  // Every set fits an inline table, so back-to-back launches share no pinned
  // scratch (which would need a synchronization between them).
  if (MultiTensorScaleScratchBytes(static_cast<int64_t>(tensors.size())) != 0) {
    std::printf("  %s: longer than an inline table, skipped\n", set.name.c_str());
    return;
  }
  const ScaleFactor factor = ReciprocalFactorFor(1.0f);
  const double gradient_bytes = static_cast<double>(total_elements * element_bytes);
  const int iterations = total_bytes > (int64_t{64} << 20) ? 20 : 200;
  const int64_t count = static_cast<int64_t>(tensors.size());
  Scratch scratch;
  CheckedBuffers checked;
  void* check_scratch = checked.device_scratch.Reserve(
      std::max(MultiTensorScaleAndCheckScratchBytes(tensors.data(), count),
               MultiTensorCheckScratchBytes(tensors.data(), count)));
  uint8_t* outputs = static_cast<uint8_t*>(checked.outputs.Reserve(8));
  bool* all_finite = reinterpret_cast<bool*>(outputs);
  float* sum = reinterpret_cast<float*>(outputs + 4);
  const auto unscale = [&] { Check(Launch(tensors, factor, scratch, stream), "one launch"); };
  const auto fused = [&](bool with_sum) {
    Check(LaunchMultiTensorScaleAndCheck(tensors.data(), count, factor, with_sum, nullptr,
                                         check_scratch, all_finite, sum, stream),
          "checked launch");
  };
  const auto read_only = [&](bool with_sum) {
    Check(LaunchMultiTensorCheck(tensors.data(), count, factor, with_sum, nullptr, check_scratch,
                                 all_finite, sum, stream),
          "read-only check launch");
  };

  const double copy_us = TimeMicros(stream, iterations, [&] {
    Check(cudaMemcpyAsync(copy_target, data, total_elements * element_bytes,
                          cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  });
  const double ours_us = TimeMicros(stream, iterations, unscale);
  // One launch per tensor, float32 only: it measures launch overhead, the
  // same for every dtype.
  const double per_tensor_us = dtype != DType::kFloat ? 0.0 : TimeMicros(stream, iterations, [&] {
    for (const TensorSpan& tensor : tensors) {
      Check(LaunchMultiTensorScale(&tensor, 1, factor, nullptr, nullptr, stream),
            "per-tensor launch");
    }
  });
  // The launches' counter memsets included.
  const double fused_us = TimeMicros(stream, iterations, [&] { fused(false); });
  const double fused_sum_us = TimeMicros(stream, iterations, [&] { fused(true); });
  ExpectCheck(set, "the checked launch", outputs, static_cast<double>(total_elements), stream);
  const double read_only_us = TimeMicros(stream, iterations, [&] { read_only(false); });
  const double read_only_sum_us = TimeMicros(stream, iterations, [&] { read_only(true); });
  ExpectCheck(set, "the read-only check", outputs, static_cast<double>(total_elements), stream);
  const double split_us = TimeMicros(stream, iterations, [&] {
    read_only(true);
    unscale();
  });
  std::printf("  %-10s %-8s %4zu tensors %11lld elements %9.1f MB of gradients\n",
              set.name.c_str(), DTypeName(dtype), set.sizes.size(),
              static_cast<long long>(total_elements), gradient_bytes / 1e6);
  const double copy_gbps = 2 * gradient_bytes / (copy_us * 1e3);
  PrintArm("device-to-device copy (read + write)", copy_us, 2 * gradient_bytes, copy_gbps);
  PrintArm("ours (one launch, read + write)", ours_us, 2 * gradient_bytes, copy_gbps);
  if (per_tensor_us > 0) {
    PrintArm("one launch per tensor", per_tensor_us, 2 * gradient_bytes, copy_gbps);
  }
  PrintArm("ours checked (one launch)", fused_us, 2 * gradient_bytes, copy_gbps);
  PrintArm("ours checked + sum of squares", fused_sum_us, 2 * gradient_bytes, copy_gbps);
  PrintArm("read-only check (reads only)", read_only_us, gradient_bytes, copy_gbps);
  PrintArm("read-only check + sum of squares", read_only_sum_us, gradient_bytes, copy_gbps);
  PrintArm("read-only check + sum, then unscale", split_us, 3 * gradient_bytes, copy_gbps);
  std::printf("    safe path's shape: fused %.1f us, read-only check + unscale %.1f us "
              "(%.2fx the fused launch)\n",
              fused_sum_us, split_us, split_us / fused_sum_us);
  Check(cudaFree(data), "cudaFree");
  Check(cudaFree(copy_target), "cudaFree");
}

// The fused Adam update (LaunchFusedUpdate, kAdam) over one set: each element
// reads grad, var, m and v and writes var, m and v, 28 bytes
// (UpdateBytesPerElement), against a device-to-device copy of 14 bytes per
// element (14 read + 14 written: the same traffic), the time a memory-bound
// kernel cannot beat. The flag and the scalars in device memory, as
// TensorFlow passes them; values 1, 0, 0 and a gradient of 1 stay finite.
void BenchFusedAdam(const GradientSet& set, cudaStream_t stream) {
  constexpr int kArrays = 4;  // grad, var, m, v
  std::vector<int64_t> offsets;
  int64_t padded = 0;
  int64_t total_elements = 0;
  for (int64_t size : set.sizes) {
    offsets.push_back(padded);
    padded += testing::RoundUp(size, 64);  // 256-byte aligned, as TensorFlow's allocator
    total_elements += size;
  }
  const int64_t bytes_per_element = UpdateBytesPerElement(UpdateRule::kAdam);
  const size_t copy_bytes = static_cast<size_t>(total_elements * bytes_per_element / 2);
  void* arrays_bytes = nullptr;
  void* copy_source = nullptr;
  void* copy_target = nullptr;
  void* scalar_bytes = nullptr;
  Check(cudaMalloc(&arrays_bytes, sizeof(float) * kArrays * padded), "cudaMalloc");
  Check(cudaMalloc(&copy_source, copy_bytes), "cudaMalloc");
  Check(cudaMalloc(&copy_target, copy_bytes), "cudaMalloc");
  Check(cudaMalloc(&scalar_bytes, 64), "cudaMalloc");
  float* arrays = static_cast<float*>(arrays_bytes);
  float* scalars = static_cast<float*>(scalar_bytes);
  {
    std::vector<float> init(static_cast<size_t>(kArrays * padded), 0.0f);
    std::fill(init.begin(), init.begin() + 2 * padded, 1.0f);  // grad and var
    // flag (true), lr, alpha, 1 - beta_1, 1 - beta_2, epsilon
    const float host_scalars[] = {BitCast<float>(1u), 1e-3f, 3e-4f, 0.1f, 1e-3f, 1e-7f};
    Check(cudaMemcpyAsync(arrays, init.data(), sizeof(float) * init.size(), cudaMemcpyHostToDevice,
                          stream), "upload");
    Check(cudaMemcpyAsync(scalars, host_scalars, sizeof(host_scalars), cudaMemcpyHostToDevice,
                          stream), "upload");
    Check(cudaStreamSynchronize(stream), "upload");
  }
  std::vector<UpdateTensor> tensors;
  for (size_t t = 0; t < set.sizes.size(); ++t) {
    float* grad = arrays + offsets[t];
    tensors.push_back(UpdateTensor{grad,
                                   {grad + padded, grad + 2 * padded, grad + 3 * padded, nullptr},
                                   set.sizes[t], false, true});
  }
  const int64_t count = static_cast<int64_t>(tensors.size());
  if (FusedUpdateScratchBytes(count) != 0) {
    std::printf("  %s: longer than an inline update table, skipped\n", set.name.c_str());
    return;
  }
  UpdateScalarPointers pointers;
  pointers.lr = scalars + 1;
  pointers.alpha = scalars + 2;
  pointers.one_minus_beta_1 = scalars + 3;
  pointers.one_minus_beta_2 = scalars + 4;
  pointers.epsilon = scalars + 5;
  const bool* flag = reinterpret_cast<const bool*>(scalars);
  const int iterations = copy_bytes > (size_t{64} << 20) ? 20 : 200;
  const double copy_us = TimeMicros(stream, iterations, [&] {
    Check(cudaMemcpyAsync(copy_target, copy_source, copy_bytes, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  });
  const double adam_us = TimeMicros(stream, iterations, [&] {
    Check(LaunchFusedUpdate(UpdateRule::kAdam, tensors.data(), count, 1.0f, pointers, flag,
                            nullptr, nullptr, stream),
          "LaunchFusedUpdate");
  });
  const double bytes_moved = static_cast<double>(total_elements * bytes_per_element);
  std::printf("  %-10s fused Adam %4zu tensors %11lld elements %9.1f MB moved (28 B/element)\n",
              set.name.c_str(), set.sizes.size(), static_cast<long long>(total_elements),
              bytes_moved / 1e6);
  const double copy_gbps = bytes_moved / (copy_us * 1e3);
  PrintArm("copy of the same bytes (14 + 14 B/el.)", copy_us, bytes_moved, copy_gbps);
  PrintArm("fused Adam (one launch)", adam_us, bytes_moved, copy_gbps);
  std::printf("    fused Adam: %.1f%% of the memory-bound time (copy / Adam)\n",
              100.0 * copy_us / adam_us);
  Check(cudaFree(arrays), "cudaFree");
  Check(cudaFree(copy_source), "cudaFree");
  Check(cudaFree(copy_target), "cudaFree");
  Check(cudaFree(scalars), "cudaFree");
}

int RunBench(const char* sets_path, bool update_only) {
  const std::vector<GradientSet> sets = ReadGradientSets(sets_path);
  if (const int status = DeviceExitStatus()) return status;
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (!update_only) {
    std::printf("in-place scale of each set; GB/s = the bytes an arm moves / time; %% of copy = "
                "that against a device-to-device copy of the same gradients\n");
    for (const GradientSet& set : sets) {
      for (DType dtype : {DType::kFloat, DType::kHalf, DType::kBFloat16}) {
        BenchSet(set, dtype, stream);
      }
    }
  }
  std::printf("fused Adam update (LaunchFusedUpdate); GB/s = 28 bytes per element / time; "
              "%% of copy = that against a device-to-device copy of the same bytes\n");
  for (const GradientSet& set : sets) {
    if (set.name == "bert_like" || set.name == "few_large") BenchFusedAdam(set, stream);
  }
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return bench_failed ? kExitFailed : 0;
}

}  // namespace
}  // namespace fixed_loss_scale

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = argc > 2 && std::string(argv[2]) == "--quick";
  if (mode == "check") return fixed_loss_scale::RunCheck(quick);
  if (mode == "tf-stream") return fixed_loss_scale::RunTfStream();
  if (mode == "edges") return fixed_loss_scale::RunEdges();
  if (mode == "huge") return fixed_loss_scale::RunHuge();
  if (mode == "bench" || mode == "bench-update") {
    return fixed_loss_scale::RunBench(argc > 2 ? argv[2] : "benchmarks/gradient_sets.txt",
                                      mode == "bench-update");
  }
  std::fprintf(stderr,
               "usage: %s check [--quick] | tf-stream | edges | huge | "
               "bench [GRADIENT_SETS_FILE] | bench-update [GRADIENT_SETS_FILE]\n",
               argv[0]);
  return fixed_loss_scale::kExitUsage;
}
