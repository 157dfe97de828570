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
// already scaled (in place) would also show up as a wrong value. The checked
// launches (the fused check, and the read-only check, which must write no
// tensor byte) run the same way, with their flag and sum of squares checked.
//
// First, the element math alone: the kernel's *Flushed functions (IEEE
// arithmetic) against ScaleElement run under x86 FTZ/DAZ, as the CPU kernels
// run inside TensorFlow, on every 16-bit pattern and on float32/float64 values
// whose products land around the smallest normal, for several factors.
#include <algorithm>
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
#include "tf_ops/tests/checked_memory.h"
#include "tf_ops/tests/gpu_kernel_cases.h"

namespace fixed_loss_scale {
namespace testing {
namespace {

// Every (block, thread) of a launch over `total_chunks` chunks, in order.
template <typename Table, typename Memory>
void RunGrid(const Table& table, int64_t total_chunks, const Memory& memory) {
  for (int64_t block = 0; block < total_chunks; ++block) {
    for (int thread = 0; thread < gpu::kBlockSize; ++thread) {
      gpu::ScaleTableChunk<gpu::ScaleJob>(table, block, thread, memory);
    }
  }
}

// The launch LaunchMultiTensorScale makes for `tensors`, run on the host;
// returns its number of blocks. A buffer table is filled in host memory here:
// the bytes the launcher fills in pinned memory and copies to the device.
template <typename Memory>
int64_t EmulateLaunch(const std::vector<TensorSpan>& tensors, ScaleFactor factor,
                      const Memory& memory, bool large_params = true) {
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  if (num_tensors == 0) return 0;
  std::vector<uint64_t> buffer(gpu::BufferLayoutFor(num_tensors).total_bytes / 8);
  return gpu::VisitTable(gpu::TableKindFor(num_tensors, large_params), [&](auto table_of) {
    size_t table_bytes = 0;
    const auto table = EmulatedTable(table_of, reinterpret_cast<uint8_t*>(buffer.data()),
                                     num_tensors, factor, &table_bytes);
    const int64_t total_chunks = gpu::FillTable(tensors.data(), num_tensors, factor, table.get());
    RunGrid(*table, total_chunks, memory);
    return total_chunks;
  });
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

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---- The paired 16-bit path (NOTE [paired 16-bit path]) --------------------------
// Every float16 and bfloat16 pattern through Element::ScalePack, in packs of
// consecutive patterns, of shuffled ones, and alone among ordinary values at
// each lane, against the CPU kernels' element math under x86 FTZ/DAZ; for the
// factors of both ops, 0 (a tensor scale above 2^126 flushes its factor) and a
// subnormal one (neither is paired). And a checked pack's terms
// (ThreadCheck::AddPack) against the per-element ones (Add): flag and sum the
// same bits. Returns the number of differences.
template <DType kDType>
int64_t ComparePairedPacks(const std::vector<uint16_t>& inputs, ScaleFactor factor,
                           int64_t* compared) {
  using E = gpu::Element<kDType>;
  using Job = gpu::ScaleAndCheckJob<true>;
  int64_t wrong = 0;
  std::vector<uint16_t> expected(inputs.size());
  {
    const ScopedFlushToZero flush_to_zero;
    for (size_t i = 0; i < inputs.size(); ++i) {
      CpuReferenceElement(kDType, inputs.data(), expected.data(), static_cast<int64_t>(i), factor);
    }
  }
  for (size_t begin = 0; begin + 8 <= inputs.size(); begin += 8) {
    gpu::Pack<uint16_t> pack;
    memcpy(&pack, inputs.data() + begin, sizeof(pack));
    E::ScalePack(pack, E::FactorOf(factor));
    gpu::ThreadCheck<kDType, Job> by_pack, by_element;
    by_pack.AddPack(pack);
    for (int lane = 0; lane < 8; ++lane) by_element.Add(pack.Lane(lane));
    const gpu::CheckPartial a = by_pack.Partial(), b = by_element.Partial();
    if (a.not_finite != b.not_finite || memcmp(&a.sum, &b.sum, sizeof(double)) != 0) {
      if (++wrong <= 5) std::printf("  %s pack at %zu: check terms differ\n", DTypeName(kDType), begin);
    }
    for (int lane = 0; lane < 8; ++lane) {
      ++*compared;
      if (pack.Lane(lane) == expected[begin + lane]) continue;
      if (++wrong <= 5) {
        std::printf("  %s paired x=0x%04x factor=%a: got 0x%04x, CPU gives 0x%04x\n",
                    DTypeName(kDType), inputs[begin + lane], factor.d, pack.Lane(lane),
                    expected[begin + lane]);
      }
    }
  }
  return wrong;
}

bool RunPairedPackMath() {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::vector<uint16_t>> inputs(3);
  for (int i = 0; i < 65536; ++i) inputs[0].push_back(static_cast<uint16_t>(i));
  inputs[1] = inputs[0];
  Rng rng(16);
  for (size_t i = inputs[1].size() - 1; i > 0; --i) {
    std::swap(inputs[1][i], inputs[1][static_cast<size_t>(rng.Uniform(0, static_cast<int64_t>(i)))]);
  }
  std::vector<ScaleFactor> factors = ElementFactors();
  factors.push_back(ScaleFactor{0.0f, 0.0});
  factors.push_back(ScaleFactor{0x1p-130f, 0x1p-130});
  int64_t compared = 0, wrong = 0;
  for (DType dtype : {DType::kHalf, DType::kBFloat16}) {
    // Each pattern alone in a pack of ones (1.0), at lane i % 8.
    const uint16_t one = dtype == DType::kHalf ? 0x3c00 : 0x3f80;
    inputs[2].assign(8 * 65536, one);
    for (int i = 0; i < 65536; ++i) inputs[2][8 * i + i % 8] = static_cast<uint16_t>(i);
    for (const ScaleFactor& factor : factors) {
      for (const std::vector<uint16_t>& values : inputs) {
        wrong += dtype == DType::kHalf
                     ? ComparePairedPacks<DType::kHalf>(values, factor, &compared)
                     : ComparePairedPacks<DType::kBFloat16>(values, factor, &compared);
      }
    }
  }
  // The routing itself, which the host's software conversions (right for
  // NaNs and tiny values too) cannot show: float16 NaNs, and only they, are
  // found; a bfloat16 lane left to the paired path is a zero or a value whose
  // product with the factor is above FLT_MIN, never a NaN.
  for (const ScaleFactor& factor : factors) {
    const uint32_t floor = gpu::BFloat16PairedFloor(factor.f);
    for (uint32_t bits = 0; bits < 65536; ++bits) {
      const bool half_nan = (bits & 0x7fffu) > 0x7c00u;
      wrong += ((gpu::HalfNaNLanes(bits) != 0) != half_nan) +
               ((gpu::HalfNaNLanes(bits << 16) != 0) != half_nan);
      if (!gpu::IsPairedFactor(factor.f)) continue;
      const bool paired = gpu::BFloat16PerElementLanes(bits, floor) == 0;
      if (paired != (gpu::BFloat16PerElementLanes(bits << 16, floor) == 0)) ++wrong;
      const float x = BFloat16BitsToFloat(static_cast<uint16_t>(bits));
      if (paired && (bits & 0x7fffu) != 0 && !(std::fabs(x * factor.f) > 0x1p-126f)) {
        if (++wrong <= 5) std::printf("  bfloat16 0x%04x paired with factor %a\n", bits, factor.d);
      }
    }
  }
  std::printf("%-22s %lld values x factors against %s, %lld differ, %.1f s\n", "paired 16-bit packs:",
              static_cast<long long>(compared),
              kHardwareFlushReference ? "x86 FTZ/DAZ hardware" : "the software reference",
              static_cast<long long>(wrong), SecondsSince(start));
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

// ---- The checked launches -------------------------------------------------------------
// The fused check (FixedUnscaleGradsAndCheck, LaunchMultiTensorScaleAndCheck)
// and the read-only check (FixedCheckGrads, LaunchMultiTensorCheck), each for
// every (block, thread) of its grid. A checked launch's memory image: the case's arena, then (each after a guard
// and 64-byte aligned) the device scratch and the two outputs, all one
// AccessLog region so that every byte of each is accounted for.
struct CheckedImage {
  ArenaPlan plan;
  std::vector<TensorSpan> tensors;  // pointing into `memory`
  int64_t scratch_begin = 0;
  size_t scratch_bytes = 0;
  int64_t outputs_begin = 0;  // all_finite (1 byte), then sum_of_squares at + 4
  std::vector<uint8_t> initial;
};

struct CheckedResult {
  bool all_finite = false;
  float sum_of_squares = 0;
  int64_t blocks = 0;
  std::vector<uint8_t> image;
};

// Runs the checked launch of `list` on the host, through CheckedMemory(log)
// when `checked_memory`, else DirectMemory.
CheckedResult EmulateCheckedCase(const ListCase& list, const CheckedImage& image,
                                 bool large_params, uint64_t order_seed, AccessLog* log,
                                 bool checked_memory, bool read_only) {
  AlignedArena memory(image.initial);
  uint8_t* base = memory.data.get();
  const std::vector<TensorSpan> tensors = TensorsAt(list, image.plan, base);
  bool* all_finite = reinterpret_cast<bool*>(base + image.outputs_begin);
  float* sum = reinterpret_cast<float*>(base + image.outputs_begin + 4);
  CheckedResult result;
  if (checked_memory) {
    log->base = reinterpret_cast<uintptr_t>(base);
    log->size = static_cast<int64_t>(image.initial.size());
    log->reads.assign(image.initial.size(), 0);
    log->writes.assign(image.initial.size(), 0);
    result.blocks = EmulateCheckedLaunch(tensors, FactorOf(list), list.sum_of_squares,
                                         large_params, base + image.scratch_begin, all_finite,
                                         sum, order_seed, CheckedMemory(log), read_only);
  } else {
    result.blocks = EmulateCheckedLaunch(tensors, FactorOf(list), list.sum_of_squares,
                                         large_params, base + image.scratch_begin, all_finite,
                                         sum, order_seed, gpu::DirectMemory(), read_only);
  }
  memcpy(&result.all_finite, all_finite, 1);
  memcpy(&result.sum_of_squares, sum, 4);
  result.image = memory.Bytes(image.initial.size());
  return result;
}

CheckedImage PlanCheckedImage(const ListCase& list, uint64_t seed, bool large_params,
                              bool read_only) {
  CheckedImage image;
  image.plan = PlanArena(list);
  // Chunk counts depend on addresses modulo 16 only: any 64-byte aligned base.
  std::vector<uint8_t> probe(64 + 64);
  uint8_t* aligned = reinterpret_cast<uint8_t*>(
      RoundUp(reinterpret_cast<uintptr_t>(probe.data()), kBufferAlignment));
  image.scratch_bytes =
      CheckedScratchBytes(TensorsAt(list, image.plan, aligned), large_params, read_only);
  image.scratch_begin = RoundUp(image.plan.total_bytes + kGuardBytes, kBufferAlignment);
  image.outputs_begin = RoundUp(image.scratch_begin + static_cast<int64_t>(image.scratch_bytes) +
                                    kGuardBytes,
                                kBufferAlignment);
  const int64_t total = RoundUp(image.outputs_begin + 8 + kGuardBytes, kBufferAlignment);
  image.initial = InitialArena(list, image.plan, seed);
  Rng rng(seed ^ 0x5eed);
  image.initial.resize(static_cast<size_t>(total));
  for (size_t i = static_cast<size_t>(image.plan.total_bytes); i < image.initial.size(); ++i) {
    image.initial[i] = static_cast<uint8_t>(rng.Next());  // the scratch's garbage
  }
  return image;
}

// Bytes of a checked image whose access counts are wrong: tensors as for the
// unchecked launch (`read_only`: read once, never written); in the scratch each block's partial (16 bytes) written
// once and read once, the counter's 4 bytes read and written once per block
// (the counts saturate at 255), nothing else (the buffer table is read
// through the table, not the memory policy); both outputs written once.
int64_t CheckCheckedAccessCounts(const ListCase& list, const CheckedImage& image, bool large_params,
                                 bool read_only, int64_t blocks, const AccessLog& log) {
  std::vector<uint8_t> reads(log.reads.size(), 0), writes(log.writes.size(), 0);
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    memset(reads.data() + image.plan.in_begin[t], 1, image.plan.bytes[t]);
    if (!read_only) memset(writes.data() + image.plan.out_begin[t], 1, image.plan.bytes[t]);
  }
  const int64_t num_tensors = static_cast<int64_t>(list.tensors.size());
  const size_t table_bytes = gpu::TableKindFor(num_tensors, large_params) == gpu::TableKind::kBuffer
                                 ? gpu::BufferLayoutFor(num_tensors).total_bytes
                                 : 0;
  const gpu::CheckScratchLayout layout = gpu::CheckScratchLayoutFor(table_bytes, blocks);
  const int64_t partials = image.scratch_begin + static_cast<int64_t>(layout.partials);
  const int64_t counter = image.scratch_begin + static_cast<int64_t>(layout.counter);
  memset(reads.data() + partials, 1, layout.counter - layout.partials);
  memset(writes.data() + partials, 1, layout.counter - layout.partials);
  const uint8_t tickets = static_cast<uint8_t>(std::min<int64_t>(blocks, 255));
  memset(reads.data() + counter, tickets, sizeof(unsigned));
  memset(writes.data() + counter, tickets, sizeof(unsigned));
  writes[image.outputs_begin] = 1;
  memset(writes.data() + image.outputs_begin + 4, 1, 4);
  if (static_cast<size_t>(counter + 8 - image.scratch_begin) != image.scratch_bytes) {
    std::printf("  %s: scratch of %zu bytes, the launch lays out %lld\n", list.name.c_str(),
                image.scratch_bytes, static_cast<long long>(counter + 8 - image.scratch_begin));
    return 1;
  }
  int64_t wrong = 0;
  for (size_t i = 0; i < reads.size(); ++i) {
    if (log.reads[i] == reads[i] && log.writes[i] == writes[i]) continue;
    if (++wrong <= 5) {
      std::printf("  %s: image byte %zu (%s) read %d times, written %d times; expected %d and %d\n",
                  list.name.c_str(), i,
                  static_cast<int64_t>(i) < image.plan.total_bytes
                      ? DescribeByte(list, image.plan, static_cast<int64_t>(i)).c_str()
                      : static_cast<int64_t>(i) < image.outputs_begin ? "device scratch"
                                                                      : "outputs",
                  log.reads[i], log.writes[i], reads[i], writes[i]);
    }
  }
  return wrong;
}

struct CheckTotals {
  Totals totals;
  int64_t not_finite = 0;   // cases whose flag is (correctly) false
  int64_t with_sum = 0;     // cases with the sum of squares
  int64_t reordered = 0;    // cases rerun with the blocks in another order
  int64_t as_fused = 0;     // read-only cases compared bit for bit with the fused launch
};

// Whether the fused launch of `list` cuts every tensor as the read-only one
// does (input and output at the same offset modulo 16 bytes), so that their
// sums of squares are the same bits.
bool ChunkedAsReadOnly(const ListCase& list) {
  for (const TensorCase& tensor : list.tensors) {
    if (!tensor.in_place && tensor.in_offset != tensor.out_offset) return false;
  }
  return true;
}

// The checked launch of one case through CheckedMemory: unscaled bytes as the
// unchecked launch's reference (`read_only`: the arena unchanged), every image
// byte's access count, the flag exactly, the sum within kSumOfSquaresRtol of
// the double reference (or the not-computed NaN), the counter at the block
// count. With `reorder_seed`, the same launch with its blocks in a shuffled
// order (another last block) must give the same bits. A read-only launch must
// also give the fused launch's flag, and its sum bit for bit where the two cut
// the tensors alike (ChunkedAsReadOnly).
bool RunCheckedLaunchCase(const ListCase& list, uint64_t seed, CheckTotals* check_totals,
                          bool large_params = true, uint64_t reorder_seed = 0,
                          bool read_only = false) {
  const CheckedImage image = PlanCheckedImage(list, seed, large_params, read_only);
  const std::vector<uint8_t> arena_initial(image.initial.begin(),
                                           image.initial.begin() + image.plan.total_bytes);
  const std::vector<uint8_t> scaled = ExpectedArena(list, image.plan, arena_initial);
  const std::vector<uint8_t>& expected = read_only ? arena_initial : scaled;
  const ReferenceCheck reference = ComputeReferenceCheck(list, image.plan, scaled);
  AccessLog log;
  const CheckedResult result =
      EmulateCheckedCase(list, image, large_params, 0, &log, true, read_only);
  bool ok = true;
  if (log.faults > 0) {
    std::printf("  %s (checked): %lld faulting accesses, first: %s\n", list.name.c_str(),
                static_cast<long long>(log.faults), log.first_fault.c_str());
    ok = false;
  }
  ok = CheckCheckedAccessCounts(list, image, large_params, read_only, result.blocks, log) == 0 &&
       ok;
  const std::vector<uint8_t> arena_after(result.image.begin(),
                                         result.image.begin() + image.plan.total_bytes);
  ok = CompareArenas(list, image.plan, expected, arena_after) == 0 && ok;
  const std::string error =
      CheckOutputsError(list, reference, result.all_finite, result.sum_of_squares);
  if (!error.empty()) {
    std::printf("  %s (checked): %s\n", list.name.c_str(), error.c_str());
    ok = false;
  }
  if (reorder_seed != 0) {
    const CheckedResult reordered = EmulateCheckedCase(list, image, large_params, reorder_seed,
                                                       nullptr, false, read_only);
    if (reordered.all_finite != result.all_finite ||
        memcmp(&reordered.sum_of_squares, &result.sum_of_squares, 4) != 0 ||
        !std::equal(reordered.image.begin(), reordered.image.begin() + image.plan.total_bytes,
                    result.image.begin())) {
      std::printf("  %s (checked): blocks in another order give %d / %.9g, in order %d / %.9g\n",
                  list.name.c_str(), reordered.all_finite, reordered.sum_of_squares,
                  result.all_finite, result.sum_of_squares);
      ok = false;
    }
    ++check_totals->reordered;
  }
  if (read_only) {
    const CheckedImage fused_image = PlanCheckedImage(list, seed, large_params, false);
    const CheckedResult fused =
        EmulateCheckedCase(list, fused_image, large_params, 0, nullptr, false, false);
    const bool same_sum = !ChunkedAsReadOnly(list) ||
                          memcmp(&fused.sum_of_squares, &result.sum_of_squares, 4) == 0;
    if (fused.all_finite != result.all_finite || !same_sum) {
      std::printf("  %s (read-only): %d / %a, the fused launch %d / %a\n", list.name.c_str(),
                  result.all_finite, result.sum_of_squares, fused.all_finite,
                  fused.sum_of_squares);
      ok = false;
    }
    if (ChunkedAsReadOnly(list)) ++check_totals->as_fused;
  }
  Totals* totals = &check_totals->totals;
  totals->cases += 1;
  totals->tensors += static_cast<int64_t>(list.tensors.size());
  totals->elements += TotalElements(list);
  totals->blocks += result.blocks;
  if (!ok) totals->failed_cases += 1;
  if (!reference.all_finite) ++check_totals->not_finite;
  if (list.sum_of_squares) ++check_totals->with_sum;
  return ok;
}

void PrintTotals(const char* what, const Totals& totals, double seconds) {
  std::printf(
      "%-22s %6lld cases, %7lld tensors, %10lld elements, %8lld blocks x %d threads, "
      "%lld failed, %.1f s\n",
      what, static_cast<long long>(totals.cases), static_cast<long long>(totals.tensors),
      static_cast<long long>(totals.elements), static_cast<long long>(totals.blocks),
      gpu::kBlockSize, static_cast<long long>(totals.failed_cases), seconds);
}

int Main() {
  bool ok = RunElementMath();
  ok = RunPairedPackMath() && ok;
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

  // The fused check (NOTE [fused check]): every single-tensor case once,
  // with and without the sum by turns; the poison cases; the checked lists,
  // also through the 4 KB-parameter path and with their blocks reordered.
  const auto fused_start = std::chrono::steady_clock::now();
  CheckTotals fused;
  for (ListCase list : SingleTensorCases()) {
    list.sum_of_squares = seed % 2 == 0;
    ok = RunCheckedLaunchCase(list, seed++, &fused) && ok;
  }
  for (const ListCase& list : PoisonCases()) ok = RunCheckedLaunchCase(list, seed++, &fused) && ok;
  for (const ListCase& list : CheckedListCases()) {
    ok = RunCheckedLaunchCase(list, seed, &fused, true, seed * 7919) && ok;
    if (static_cast<int64_t>(list.tensors.size()) > gpu::kSmallInlineTensors) {
      ok = RunCheckedLaunchCase(list, seed, &fused, /*large_params=*/false) && ok;
    }
    ++seed;
  }
  PrintTotals("fused check:", fused.totals, SecondsSince(fused_start));
  std::printf("%-22s %lld cases not all finite, %lld with the sum of squares, %lld reordered; "
              "sum rtol %g\n",
              "fused check flags:", static_cast<long long>(fused.not_finite),
              static_cast<long long>(fused.with_sum), static_cast<long long>(fused.reordered),
              kSumOfSquaresRtol);

  // The read-only check (NOTE [fused check]): every single-tensor case up to
  // kAllOffsetsUpTo elements and every third larger one, with and without the
  // sum by turns; the poison cases; the checked lists, also through the 4 KB
  // path and reordered. No byte of any tensor written, the flag and the sum
  // as the fused launch's.
  const auto read_only_start = std::chrono::steady_clock::now();
  CheckTotals read_only;
  int64_t large_case = 0;
  for (ListCase list : SingleTensorCases()) {
    if (TotalElements(list) > kAllOffsetsUpTo && large_case++ % 3 != 0) continue;
    list.sum_of_squares = seed % 2 == 0;
    ok = RunCheckedLaunchCase(list, seed++, &read_only, true, 0, /*read_only=*/true) && ok;
  }
  for (const ListCase& list : PoisonCases()) {
    ok = RunCheckedLaunchCase(list, seed++, &read_only, true, 0, /*read_only=*/true) && ok;
  }
  for (const ListCase& list : CheckedListCases()) {
    ok = RunCheckedLaunchCase(list, seed, &read_only, true, seed * 7919, /*read_only=*/true) && ok;
    if (static_cast<int64_t>(list.tensors.size()) > gpu::kSmallInlineTensors) {
      ok = RunCheckedLaunchCase(list, seed, &read_only, false, 0, /*read_only=*/true) && ok;
    }
    ++seed;
  }
  PrintTotals("read-only check:", read_only.totals, SecondsSince(read_only_start));
  std::printf("%-22s %lld cases not all finite, %lld with the sum of squares, %lld reordered, "
              "%lld with the fused launch's sum bit for bit\n",
              "read-only check flags:", static_cast<long long>(read_only.not_finite),
              static_cast<long long>(read_only.with_sum),
              static_cast<long long>(read_only.reordered),
              static_cast<long long>(read_only.as_fused));

  std::printf("host emulation of the GPU kernel: %s (%.1f s)\n", ok ? "PASSED" : "FAILED",
              SecondsSince(start));
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace testing
}  // namespace fixed_loss_scale

int main() { return fixed_loss_scale::testing::Main(); }
