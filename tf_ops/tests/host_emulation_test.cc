// Host emulation of the GPU kernel, built with g++ alone (make
// host-emulation-test), so the kernel's logic is checked where no GPU exists.
//
// For every case of gpu_kernel_cases.h it builds the table the launcher builds
// (same TableKindFor, FillTable, inline or buffer layout) and runs the kernel
// body, ScaleTableChunk of multi_tensor_scale_body.h, for every (block, thread)
// of the grid the launcher launches (one block of kBlockSize threads per
// chunk), through a memory policy that checks and counts every access. It
// checks that
//   * every output byte is written exactly once, every input byte is read
//     exactly once, and no other byte of the arena is read or written;
//   * every 16-byte pack access is 16-byte aligned and every element access is
//     aligned to its size (a GPU faults on a misaligned access);
//   * the arena afterwards is bit-identical to the expected one: outputs equal
//     ScaleElement (the CPU kernels' element math), guard bytes and
//     out-of-place inputs unchanged.
// Threads run one after another, so a thread reading an element another one
// already scaled (in place) would also show up as a wrong value.
//
// First, the element math alone: the kernel's *Flushed functions (IEEE
// arithmetic) against ScaleElement run under x86 FTZ/DAZ, as the CPU kernels
// run inside TensorFlow, on every 16-bit pattern and on float32/float64 values
// whose products land around the smallest normal, for several factors.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tf_ops/core/gpu/multi_tensor_scale_body.h"
#include "tf_ops/tests/gpu_kernel_cases.h"

namespace fixed_loss_scale {
namespace testing {
namespace {

// Read and write counts per arena byte (saturating), and access faults.
struct AccessLog {
  uintptr_t base = 0;
  int64_t size = 0;
  std::vector<uint8_t> reads;
  std::vector<uint8_t> writes;
  int64_t faults = 0;
  std::string first_fault;
};

// The kernel body's memory policy (see DirectMemory) with every access checked
// against the arena and alignment, and counted.
class CheckedMemory {
 public:
  explicit CheckedMemory(AccessLog* log) : log_(log) {}

  template <typename T>
  T Load(const T* address) const {
    T value{};
    if (Record(address, sizeof(T), alignof(T), &log_->reads)) memcpy(&value, address, sizeof(T));
    return value;
  }

  template <typename T>
  void Store(T* address, const T& value) const {
    if (Record(address, sizeof(T), alignof(T), &log_->writes)) memcpy(address, &value, sizeof(T));
  }

 private:
  bool Record(const void* address, size_t size, size_t alignment,
              std::vector<uint8_t>* counts) const {
    const uintptr_t where = reinterpret_cast<uintptr_t>(address);
    const int64_t offset = static_cast<int64_t>(where - log_->base);
    if (where < log_->base || offset + static_cast<int64_t>(size) > log_->size) {
      return Fault("access outside the arena at offset " + std::to_string(offset));
    }
    if (where % alignment != 0) {
      return Fault(std::to_string(size) + "-byte access at arena offset " +
                   std::to_string(offset) + " is not " + std::to_string(alignment) +
                   "-byte aligned");
    }
    for (size_t i = 0; i < size; ++i) {
      uint8_t& count = (*counts)[static_cast<size_t>(offset) + i];
      if (count < 255) ++count;
    }
    return true;
  }

  bool Fault(const std::string& what) const {
    if (log_->faults++ == 0) log_->first_fault = what;
    return false;
  }

  AccessLog* log_;
};

// Every (block, thread) of a launch over `total_chunks` chunks, in order.
template <typename Table, typename Memory>
void RunGrid(const Table& table, int64_t total_chunks, const Memory& memory) {
  for (int64_t block = 0; block < total_chunks; ++block) {
    for (int thread = 0; thread < gpu::kBlockSize; ++thread) {
      gpu::ScaleTableChunk(table, block, thread, memory);
    }
  }
}

template <int64_t kCapacity, typename Memory>
int64_t RunWithInlineTable(const std::vector<TensorSpan>& tensors, ScaleFactor factor,
                           const Memory& memory) {
  auto table = std::make_unique<gpu::InlineTable<kCapacity>>();
  const int64_t total_chunks =
      gpu::FillTable(tensors.data(), static_cast<int64_t>(tensors.size()), factor, table.get());
  RunGrid(*table, total_chunks, memory);
  return total_chunks;
}

// The launch LaunchMultiTensorScale makes for `tensors`, run on the host;
// returns its number of blocks.
template <typename Memory>
int64_t EmulateLaunch(const std::vector<TensorSpan>& tensors, ScaleFactor factor,
                      const Memory& memory, bool large_params = true) {
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  if (num_tensors == 0) return 0;
  switch (gpu::TableKindFor(num_tensors, large_params)) {
    case gpu::TableKind::kSmallInline:
      return RunWithInlineTable<gpu::kSmallInlineTensors>(tensors, factor, memory);
    case gpu::TableKind::kMediumInline:
      return RunWithInlineTable<gpu::kMediumInlineTensors>(tensors, factor, memory);
    case gpu::TableKind::kLargeInline:
      return RunWithInlineTable<gpu::kLargeInlineTensors>(tensors, factor, memory);
    case gpu::TableKind::kBuffer:
      break;
  }
  // The bytes the launcher fills in pinned memory and copies to the device.
  std::vector<uint64_t> buffer(gpu::BufferLayoutFor(num_tensors).total_bytes / 8);
  gpu::BufferTable table = gpu::BufferTableAt(buffer.data(), num_tensors, factor);
  const int64_t total_chunks = gpu::FillTable(tensors.data(), num_tensors, factor, &table);
  RunGrid(table, total_chunks, memory);
  return total_chunks;
}

// A 64-byte aligned copy of an arena, as TensorFlow's allocators align.
struct AlignedArena {
  explicit AlignedArena(const std::vector<uint8_t>& bytes)
      : data(static_cast<uint8_t*>(
            std::aligned_alloc(kBufferAlignment, RoundUp(bytes.size() + 1, kBufferAlignment)))) {
    memcpy(data.get(), bytes.data(), bytes.size());
  }
  std::vector<uint8_t> Bytes(size_t size) const { return {data.get(), data.get() + size}; }
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data;
};

// Bytes whose read or write count differs from the expected one (1 inside
// inputs / outputs, 0 elsewhere); the first few are printed.
int64_t CheckAccessCounts(const ListCase& list, const ArenaPlan& plan, const AccessLog& log) {
  std::vector<uint8_t> expected_reads(log.reads.size(), 0);
  std::vector<uint8_t> expected_writes(log.writes.size(), 0);
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    memset(expected_reads.data() + plan.in_begin[t], 1, plan.bytes[t]);
    memset(expected_writes.data() + plan.out_begin[t], 1, plan.bytes[t]);
  }
  int64_t wrong = 0;
  for (size_t i = 0; i < expected_reads.size(); ++i) {
    if (log.reads[i] == expected_reads[i] && log.writes[i] == expected_writes[i]) continue;
    if (++wrong <= 5) {
      std::printf("  %s: byte %zu (%s) read %d times, written %d times; expected %d and %d\n",
                  list.name.c_str(), i, DescribeByte(list, plan, static_cast<int64_t>(i)).c_str(),
                  log.reads[i], log.writes[i], expected_reads[i], expected_writes[i]);
    }
  }
  return wrong;
}

// ---- Element math ------------------------------------------------------------
// The factors of both ops for a range of loss scales, 2^126 (the largest
// allowed) included.
std::vector<ScaleFactor> ElementFactors() {
  std::vector<ScaleFactor> factors;
  for (float loss_scale : {1.0f, 3.0f, 1024.0f, 65536.0f, 16777217.0f, 0x1p100f, 0x1p126f}) {
    factors.push_back(ReciprocalFactorFor(loss_scale));
    factors.push_back(ScaleFactorFor(loss_scale));
  }
  return factors;
}

// Inputs of `T` whose product with `factor` falls near the smallest normal
// `min_normal` (within a few hundred ulps either side, and far below it), plus
// subnormal inputs and random bit patterns.
template <typename T, typename Bits>
std::vector<T> EdgeInputs(T factor, T min_normal, int mantissa_bits, Rng& rng, int random_count) {
  std::vector<T> inputs;
  for (int k = -300; k <= 300; ++k) {
    const T target = min_normal * (T(1) + T(k) * std::ldexp(T(1), -mantissa_bits - 1));
    T x = target / factor;
    for (int step = 0; step < 3; ++step) x = std::nextafter(x, T(0));
    for (int step = 0; step < 7; ++step) {
      inputs.push_back(x);
      inputs.push_back(-x);
      x = std::nextafter(x, T(1e30));
    }
  }
  for (int shift = 1; shift < mantissa_bits + 3; ++shift) {
    inputs.push_back(std::ldexp(min_normal, -shift) / factor);
    inputs.push_back(std::ldexp(min_normal, -shift));  // a subnormal input
  }
  for (int i = 0; i < random_count; ++i) {
    const Bits bits = static_cast<Bits>(rng.Next());
    T value;
    memcpy(&value, &bits, sizeof(T));
    inputs.push_back(value);
  }
  return inputs;
}

// Compares ScaleElementFlushed with ScaleElement under FTZ/DAZ on `inputs`;
// returns the number of differing results (the first few are printed).
int64_t CompareElementMath(DType dtype, const void* inputs, int64_t count, ScaleFactor factor) {
  const int64_t size = DTypeSize(dtype);
  std::vector<uint8_t> expected(count * size), actual(count * size);
  {
    const ScopedFlushToZero flush_to_zero;
    for (int64_t i = 0; i < count; ++i) {
      CpuReferenceElement(dtype, inputs, expected.data(), i, factor);
    }
  }
  for (int64_t i = 0; i < count; ++i) ScaleElementFlushed(dtype, inputs, actual.data(), i, factor);
  int64_t wrong = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (memcmp(expected.data() + i * size, actual.data() + i * size, size) == 0) continue;
    if (++wrong <= 5) {
      uint64_t in_bits = 0, expected_bits = 0, actual_bits = 0;
      memcpy(&in_bits, static_cast<const uint8_t*>(inputs) + i * size, size);
      memcpy(&expected_bits, expected.data() + i * size, size);
      memcpy(&actual_bits, actual.data() + i * size, size);
      std::printf("  %s x=0x%llx factor=%a: got 0x%llx, CPU gives 0x%llx\n", DTypeName(dtype),
                  static_cast<unsigned long long>(in_bits), factor.d,
                  static_cast<unsigned long long>(actual_bits),
                  static_cast<unsigned long long>(expected_bits));
    }
  }
  return wrong;
}

bool RunElementMath() {
  const auto start = std::chrono::steady_clock::now();
  std::vector<uint16_t> all_patterns(65536);
  for (int i = 0; i < 65536; ++i) all_patterns[i] = static_cast<uint16_t>(i);
  Rng rng(7);
  int64_t compared = 0;
  int64_t wrong = 0;
  for (const ScaleFactor& factor : ElementFactors()) {
    for (DType dtype : {DType::kHalf, DType::kBFloat16}) {
      wrong += CompareElementMath(dtype, all_patterns.data(), 65536, factor);
      compared += 65536;
    }
    const std::vector<float> floats =
        EdgeInputs<float, uint32_t>(factor.f, 0x1p-126f, 23, rng, 200000);
    wrong += CompareElementMath(DType::kFloat, floats.data(), floats.size(), factor);
    const std::vector<double> doubles =
        EdgeInputs<double, uint64_t>(factor.d, 0x1p-1022, 52, rng, 200000);
    wrong += CompareElementMath(DType::kDouble, doubles.data(), doubles.size(), factor);
    compared += floats.size() + doubles.size();
  }
  std::printf("%-22s %lld values x factors against %s, %lld differ, %.1f s\n", "element math:",
              static_cast<long long>(compared),
              kHardwareFlushReference ? "x86 FTZ/DAZ hardware" : "the software reference",
              static_cast<long long>(wrong),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return wrong == 0;
}

struct Totals {
  int64_t cases = 0;
  int64_t tensors = 0;
  int64_t elements = 0;
  int64_t blocks = 0;
  int64_t failed_cases = 0;
};

// Runs one case with CheckedMemory; prints what is wrong and returns success.
// `large_params`: as on a GPU that takes 32 KB kernel parameters (false: the
// 4 KB path of sm_60 and pre-12.1 drivers, NOTE [kernel parameter size]).
bool RunCheckedCase(const ListCase& list, uint64_t seed, Totals* totals,
                    bool large_params = true) {
  const ArenaPlan plan = PlanArena(list);
  const std::vector<uint8_t> initial = InitialArena(list, plan, seed);
  const std::vector<uint8_t> expected = ExpectedArena(list, plan, initial);
  AlignedArena arena(initial);
  AccessLog log;
  log.base = reinterpret_cast<uintptr_t>(arena.data.get());
  log.size = plan.total_bytes;
  log.reads.assign(initial.size(), 0);
  log.writes.assign(initial.size(), 0);
  const int64_t blocks =
      EmulateLaunch(TensorsAt(list, plan, arena.data.get()), FactorOf(list), CheckedMemory(&log),
                    large_params);

  bool ok = true;
  if (log.faults > 0) {
    std::printf("  %s: %lld faulting accesses, first: %s\n", list.name.c_str(),
                static_cast<long long>(log.faults), log.first_fault.c_str());
    ok = false;
  }
  ok = CheckAccessCounts(list, plan, log) == 0 && ok;
  ok = CompareArenas(list, plan, expected, arena.Bytes(initial.size())) == 0 && ok;

  totals->cases += 1;
  totals->tensors += static_cast<int64_t>(list.tensors.size());
  totals->elements += TotalElements(list);
  totals->blocks += blocks;
  if (!ok) totals->failed_cases += 1;
  return ok;
}

// Runs one case with DirectMemory, the policy the GPU build uses; values only.
bool RunDirectCase(const ListCase& list, uint64_t seed) {
  const ArenaPlan plan = PlanArena(list);
  const std::vector<uint8_t> initial = InitialArena(list, plan, seed);
  const std::vector<uint8_t> expected = ExpectedArena(list, plan, initial);
  AlignedArena arena(initial);
  EmulateLaunch(TensorsAt(list, plan, arena.data.get()), FactorOf(list), gpu::DirectMemory());
  return CompareArenas(list, plan, expected, arena.Bytes(initial.size())) == 0;
}

void PrintTotals(const char* what, const Totals& totals, double seconds) {
  std::printf(
      "%-22s %6lld cases, %7lld tensors, %10lld elements, %8lld blocks x %d threads, "
      "%lld failed, %.1f s\n",
      what, static_cast<long long>(totals.cases), static_cast<long long>(totals.tensors),
      static_cast<long long>(totals.elements), static_cast<long long>(totals.blocks),
      gpu::kBlockSize, static_cast<long long>(totals.failed_cases), seconds);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int Main() {
  bool ok = RunElementMath();
  const auto start = std::chrono::steady_clock::now();

  Totals single;
  uint64_t seed = 1;
  for (const ListCase& list : SingleTensorCases()) ok = RunCheckedCase(list, seed++, &single) && ok;
  PrintTotals("single tensors:", single, SecondsSince(start));

  const auto lists_start = std::chrono::steady_clock::now();
  Totals lists;
  for (const ListCase& list : MultiTensorCases()) {
    ok = RunCheckedCase(list, seed, &lists) && ok;
    if (static_cast<int64_t>(list.tensors.size()) > gpu::kSmallInlineTensors) {
      ok = RunCheckedCase(list, seed, &lists, /*large_params=*/false) && ok;
    }
    if (!RunDirectCase(list, seed)) {
      std::printf("  %s: DirectMemory run differs\n", list.name.c_str());
      ok = false;
    }
    ++seed;
  }
  PrintTotals("tensor lists:", lists, SecondsSince(lists_start));

  std::printf("host emulation of the GPU kernel: %s (%.1f s)\n", ok ? "PASSED" : "FAILED",
              SecondsSince(start));
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace testing
}  // namespace fixed_loss_scale

int main() { return fixed_loss_scale::testing::Main(); }
