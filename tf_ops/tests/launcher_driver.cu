// Standalone driver of the launcher (multi_tensor_scale.h), built with nvcc
// alone: no TensorFlow, no Python.
//
//   launcher_driver check [--quick]   the cases of tf_ops/tests/gpu_kernel_cases.h
//                                     (those the host emulation runs) on the GPU,
//                                     against the CPU kernels' element math on the
//                                     host; --quick keeps sizes <= 4096 and the
//                                     lists (for compute-sanitizer)
//   launcher_driver bench [FILE]      one launch for the whole list vs one launch
//                                     per tensor vs a device-to-device copy of
//                                     the same bytes, on the "full" gradient sets
//                                     of FILE (benchmarks/gradient_sets.txt)
//
// Exit status: 0 passed, 1 failed, 2 usage, 3 no CUDA device (tests skip on 3).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tf_ops/core/gpu/multi_tensor_scale.h"
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

bool HasDevice() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::printf("no CUDA device (%s)\n",
                status == cudaSuccess ? "0 devices" : cudaGetErrorString(status));
    return false;
  }
  cudaDeviceProp properties;
  Check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  int driver = 0;
  Check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
  std::printf("device 0: %s (sm_%d%d), driver API %d.%d, runtime %d.%d\n", properties.name,
              properties.major, properties.minor, driver / 1000, driver % 1000 / 10,
              CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
  return true;
}

// ---- check ---------------------------------------------------------------------
bool RunCase(const testing::ListCase& list, uint64_t seed, Buffer& arena, Scratch& scratch,
             cudaStream_t stream) {
  const testing::ArenaPlan plan = testing::PlanArena(list);
  const std::vector<uint8_t> initial = testing::InitialArena(list, plan, seed);
  const std::vector<uint8_t> expected = testing::ExpectedArena(list, plan, initial);
  uint8_t* device = static_cast<uint8_t*>(arena.Reserve(initial.size()));
  Check(cudaMemcpy(device, initial.data(), initial.size(), cudaMemcpyHostToDevice), "upload");
  Check(Launch(testing::TensorsAt(list, plan, device), testing::FactorOf(list), scratch, stream),
        list.name.c_str());
  Check(cudaStreamSynchronize(stream), list.name.c_str());
  std::vector<uint8_t> actual(initial.size());
  Check(cudaMemcpy(actual.data(), device, actual.size(), cudaMemcpyDeviceToHost), "download");
  return testing::CompareArenas(list, plan, expected, actual) == 0;
}

int RunCheck(bool quick) {
  if (!HasDevice()) return kExitNoDevice;
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
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  std::printf("GPU check: %zu cases, %lld elements, %lld failed; reference: %s\n", cases.size(),
              static_cast<long long>(elements), static_cast<long long>(failed),
              testing::kHardwareFlushReference ? "CPU element math under x86 FTZ/DAZ"
                                               : "software FTZ/DAZ reference");
  std::printf("GPU check: %s\n", failed == 0 ? "PASSED" : "FAILED");
  return failed == 0 ? 0 : kExitFailed;
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

void PrintArm(const char* arm, double micros, double bytes_moved, double copy_gbps) {
  const double gbps = bytes_moved / (micros * 1e3);
  std::printf("    %-22s %10.1f us %8.1f GB/s %7.1f%% of copy\n", arm, micros, gbps,
              copy_gbps > 0 ? 100.0 * gbps / copy_gbps : 100.0);
}

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
  // 1.0 everywhere (0x3c00 in half) and factor 1: values stay put run after run.
  if (dtype == DType::kHalf) {
    std::vector<uint16_t> ones(total_bytes / 2, 0x3c00);
    Check(cudaMemcpy(data, ones.data(), total_bytes, cudaMemcpyHostToDevice), "upload");
  } else {
    std::vector<float> ones(total_bytes / 4, 1.0f);
    Check(cudaMemcpy(data, ones.data(), total_bytes, cudaMemcpyHostToDevice), "upload");
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
  const double bytes_moved = 2.0 * static_cast<double>(total_elements * element_bytes);
  const int iterations = total_bytes > (int64_t{64} << 20) ? 20 : 200;
  Scratch scratch;

  const double copy_us = TimeMicros(stream, iterations, [&] {
    Check(cudaMemcpyAsync(copy_target, data, total_elements * element_bytes,
                          cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync");
  });
  const double ours_us = TimeMicros(stream, iterations, [&] {
    Check(Launch(tensors, factor, scratch, stream), "one launch");
  });
  const double per_tensor_us = TimeMicros(stream, iterations, [&] {
    for (const TensorSpan& tensor : tensors) {
      Check(LaunchMultiTensorScale(&tensor, 1, factor, nullptr, nullptr, stream),
            "per-tensor launch");
    }
  });
  std::printf("  %-10s %-7s %4zu tensors %11lld elements %9.1f MB moved\n", set.name.c_str(),
              DTypeName(dtype), set.sizes.size(), static_cast<long long>(total_elements),
              bytes_moved / 1e6);
  const double copy_gbps = bytes_moved / (copy_us * 1e3);
  PrintArm("device-to-device copy", copy_us, bytes_moved, copy_gbps);
  PrintArm("ours (one launch)", ours_us, bytes_moved, copy_gbps);
  PrintArm("one launch per tensor", per_tensor_us, bytes_moved, copy_gbps);
  Check(cudaFree(data), "cudaFree");
  Check(cudaFree(copy_target), "cudaFree");
}

int RunBench(const char* sets_path) {
  const std::vector<GradientSet> sets = ReadGradientSets(sets_path);
  if (!HasDevice()) return kExitNoDevice;
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  std::printf("in-place scale of each set (bytes moved = read + write); GB/s = bytes / time\n");
  for (const GradientSet& set : sets) {
    for (DType dtype : {DType::kFloat, DType::kHalf}) BenchSet(set, dtype, stream);
  }
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return 0;
}

}  // namespace
}  // namespace fixed_loss_scale

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = argc > 2 && std::string(argv[2]) == "--quick";
  if (mode == "check") return fixed_loss_scale::RunCheck(quick);
  if (mode == "bench") {
    return fixed_loss_scale::RunBench(argc > 2 ? argv[2] : "benchmarks/gradient_sets.txt");
  }
  std::fprintf(stderr, "usage: %s check [--quick] | bench [GRADIENT_SETS_FILE]\n", argv[0]);
  return fixed_loss_scale::kExitUsage;
}
