// The cases the GPU kernel is checked on, shared by the host emulation
// (tf_ops/tests/host_emulation_test.cc, g++) and the GPU driver
// (tf_ops/tests/launcher_driver.cu, nvcc), so a real GPU runs exactly what the
// emulation runs.
//
// A case is a list of tensors laid out in one byte arena: every input and
// output buffer starts at a chosen offset from a 64-byte boundary and is
// surrounded by guard bytes of a random pattern. The expected arena is the
// initial one with each output replaced by the CPU kernels' element math as
// TensorFlow runs it (ScaleElement of scale_math.h under x86 FTZ/DAZ);
// everything else, guards and out-of-place inputs included, must come back
// unchanged.
#ifndef FIXED_LOSS_SCALE_TESTS_GPU_KERNEL_CASES_H_
#define FIXED_LOSS_SCALE_TESTS_GPU_KERNEL_CASES_H_

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tf_ops/core/scale_math.h"
#include "tf_ops/core/gpu/multi_tensor_scale_body.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace fixed_loss_scale {
namespace testing {

#if defined(__x86_64__) || defined(__i386__)
// Sets the MXCSR flush-to-zero and denormals-are-zero bits for its lifetime,
// as TensorFlow does in the threads that run CPU kernels.
class ScopedFlushToZero {
 public:
  ScopedFlushToZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kMxcsrFtzDaz); }
  ~ScopedFlushToZero() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
};

constexpr bool kHardwareFlushReference = true;

// Element i as the CPU kernels compute it inside TensorFlow: ScaleElement,
// under FTZ/DAZ (the caller holds a ScopedFlushToZero).
inline void CpuReferenceElement(DType dtype, const void* in, void* out, int64_t i,
                                ScaleFactor factor) {
  ScaleElement(dtype, in, out, i, factor);
}
#else
// No MXCSR here: the reference is the software form of x86 FTZ/DAZ, so the
// comparison with hardware flushing only happens on x86 hosts.
struct ScopedFlushToZero {};

constexpr bool kHardwareFlushReference = false;

inline void CpuReferenceElement(DType dtype, const void* in, void* out, int64_t i,
                                ScaleFactor factor) {
  ScaleElementFlushed(dtype, in, out, i, factor);
}
#endif

// Guard bytes before and after every buffer, and the boundary buffers are
// placed from (TensorFlow aligns allocations to 64 bytes).
constexpr int64_t kGuardBytes = 64;
constexpr int64_t kBufferAlignment = 64;
// Sizes up to this are checked at every legal offset; larger ones at a few.
constexpr int64_t kAllOffsetsUpTo = 4096;
constexpr int64_t kMaxSweepElements = int64_t{1} << 20;

// splitmix64: small, fast, and the same sequence on every compiler.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [low, high].
  int64_t Uniform(int64_t low, int64_t high) {
    return low + static_cast<int64_t>(Next() % static_cast<uint64_t>(high - low + 1));
  }

 private:
  uint64_t state_;
};

constexpr DType kAllDTypes[] = {DType::kHalf, DType::kBFloat16, DType::kFloat, DType::kDouble};

struct TensorCase {
  DType dtype;
  int64_t num_elements;
  int64_t in_offset;   // bytes past a 64-byte boundary
  int64_t out_offset;  // ignored when in_place
  bool in_place;
};

struct ListCase {
  std::string name;
  std::vector<TensorCase> tensors;
  float loss_scale;
  bool unscale;  // FixedUnscaleGrads (factor 1/loss_scale) or FixedScaleLoss
};

inline ScaleFactor FactorOf(const ListCase& list) {
  return list.unscale ? ReciprocalFactorFor(list.loss_scale) : ScaleFactorFor(list.loss_scale);
}

// Offsets within 16 bytes at which a pointer of `dtype` is valid: multiples of
// the element size. A 2-byte type at an odd address is not a valid typed
// pointer (TensorFlow never makes one), so 1-byte offsets exist for no dtype.
inline std::vector<int64_t> LegalOffsets(DType dtype) {
  std::vector<int64_t> offsets;
  for (int64_t offset = 0; offset < gpu::kPackBytes; offset += DTypeSize(dtype)) {
    offsets.push_back(offset);
  }
  return offsets;
}

// The offsets tried for large sizes: aligned, one element off, 8 bytes off.
inline std::vector<int64_t> SampledOffsets(DType dtype) {
  std::vector<int64_t> offsets = {0};
  if (DTypeSize(dtype) < 8) offsets.push_back(DTypeSize(dtype));
  offsets.push_back(8);
  return offsets;
}

// Every size in 0..64; 2^k - 1, 2^k, 2^k + 1 up to 2^20; the chunk boundaries
// of the dtype (+-1, and two chunks and a bit).
inline std::vector<int64_t> SweepSizes(DType dtype) {
  std::vector<int64_t> sizes;
  for (int64_t n = 0; n <= 64; ++n) sizes.push_back(n);
  for (int64_t power = 128; power <= kMaxSweepElements; power *= 2) {
    sizes.push_back(power - 1);
    sizes.push_back(power);
    if (power < kMaxSweepElements) sizes.push_back(power + 1);
  }
  const int64_t chunk = gpu::ChunkElements(dtype);
  for (int64_t n : {chunk - 9, chunk + 7, 2 * chunk + 13, 3 * chunk - 1}) sizes.push_back(n);
  sizes.push_back(1000003 % kMaxSweepElements);
  return sizes;
}

// One tensor per case: every dtype, size and offset of the sweep, in place,
// out of place at the same offset (packed path) and out of place at another
// offset (element-by-element path).
inline std::vector<ListCase> SingleTensorCases() {
  std::vector<ListCase> cases;
  for (DType dtype : kAllDTypes) {
    for (int64_t n : SweepSizes(dtype)) {
      const std::vector<int64_t> offsets =
          n <= kAllOffsetsUpTo ? LegalOffsets(dtype) : SampledOffsets(dtype);
      for (int64_t offset : offsets) {
        const int64_t other_offset = (offset + DTypeSize(dtype)) % gpu::kPackBytes;
        const TensorCase variants[] = {{dtype, n, offset, offset, true},
                                       {dtype, n, offset, offset, false},
                                       {dtype, n, offset, other_offset, false}};
        for (int v = 0; v < 3; ++v) {
          ListCase list;
          list.name = std::string("single ") + DTypeName(dtype) + " n=" + std::to_string(n) +
                      " in_offset=" + std::to_string(offset) +
                      (v == 0 ? " in-place"
                              : " out_offset=" + std::to_string(variants[v].out_offset));
          list.tensors = {variants[v]};
          // Alternate the ops and a power-of-two and a rounding loss scale.
          list.unscale = (n + v) % 3 != 0;
          list.loss_scale = (n + offset) % 2 == 0 ? 1024.0f : 3.0f;
          cases.push_back(list);
        }
      }
    }
  }
  return cases;
}

// Lists of 1..10,000 tensors of mixed dtypes, sizes, offsets and modes,
// including the lengths either side of each inline table capacity.
inline std::vector<ListCase> MultiTensorCases() {
  const int64_t counts[] = {1,
                            2,
                            3,
                            7,
                            gpu::kSmallInlineTensors,
                            gpu::kSmallInlineTensors + 1,
                            100,
                            gpu::kMediumInlineTensors,
                            gpu::kMediumInlineTensors + 1,
                            400,
                            gpu::kLargeInlineTensors,
                            gpu::kLargeInlineTensors + 1,
                            2000,
                            10000};
  std::vector<ListCase> cases;
  Rng rng(20240607);
  for (int64_t count : counts) {
    ListCase list;
    list.name = "list of " + std::to_string(count) + " tensors";
    // Long lists get smaller tensors so every case stays a few million elements.
    const int64_t small_max = count > 1000 ? 1000 : 3000;
    const int64_t medium_max = count > 1000 ? 4000 : 100000;
    for (int64_t t = 0; t < count; ++t) {
      TensorCase tensor;
      tensor.dtype = kAllDTypes[rng.Uniform(0, 3)];
      const int64_t kind = rng.Uniform(0, 19);
      tensor.num_elements = kind == 0   ? 0
                            : kind < 9  ? rng.Uniform(1, 40)
                            : kind < 17 ? rng.Uniform(41, small_max)
                                        : rng.Uniform(small_max + 1, medium_max);
      const std::vector<int64_t> offsets = LegalOffsets(tensor.dtype);
      tensor.in_offset = offsets[rng.Uniform(0, static_cast<int64_t>(offsets.size()) - 1)];
      const int64_t mode = rng.Uniform(0, 3);
      tensor.in_place = mode < 2;
      tensor.out_offset = mode == 2 ? tensor.in_offset
                                    : offsets[rng.Uniform(0, static_cast<int64_t>(offsets.size()) - 1)];
      list.tensors.push_back(tensor);
    }
    list.unscale = count % 2 == 1;
    list.loss_scale = count % 3 == 0 ? 3.0f : 32768.0f;
    cases.push_back(list);
  }
  return cases;
}

// Where each buffer of a case lives in its arena (byte offsets).
struct ArenaPlan {
  std::vector<int64_t> in_begin;
  std::vector<int64_t> out_begin;
  std::vector<int64_t> bytes;
  int64_t total_bytes = 0;
};

inline int64_t RoundUp(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

inline ArenaPlan PlanArena(const ListCase& list) {
  ArenaPlan plan;
  int64_t end = 0;
  for (const TensorCase& tensor : list.tensors) {
    const int64_t bytes = tensor.num_elements * DTypeSize(tensor.dtype);
    const int64_t in_begin = RoundUp(end + kGuardBytes, kBufferAlignment) + tensor.in_offset;
    end = in_begin + bytes;
    int64_t out_begin = in_begin;
    if (!tensor.in_place) {
      out_begin = RoundUp(end + kGuardBytes, kBufferAlignment) + tensor.out_offset;
      end = out_begin + bytes;
    }
    plan.in_begin.push_back(in_begin);
    plan.out_begin.push_back(out_begin);
    plan.bytes.push_back(bytes);
  }
  plan.total_bytes = RoundUp(end + kGuardBytes, kBufferAlignment);
  return plan;
}

// Input bits: mostly ordinary values (so that scaling twice or not at all
// shows), and random patterns, which include infinities, NaNs with payloads,
// subnormals and zeros of both signs.
inline void FillInput(DType dtype, uint8_t* data, int64_t num_elements, Rng& rng) {
  for (int64_t i = 0; i < num_elements; ++i) {
    const uint64_t bits = rng.Next();
    const bool ordinary = (bits >> 60) < 12;
    switch (dtype) {
      case DType::kHalf:
      case DType::kBFloat16: {
        uint16_t value = static_cast<uint16_t>(bits);
        if (ordinary) {
          // Exponent field 4..27 for half, 100..154 for bfloat16: normal values.
          value = dtype == DType::kHalf
                      ? static_cast<uint16_t>((value & 0x83ffu) | ((4 + (bits >> 16) % 24) << 10))
                      : static_cast<uint16_t>((value & 0x807fu) | ((100 + (bits >> 16) % 55) << 7));
        }
        memcpy(data + 2 * i, &value, 2);
        break;
      }
      case DType::kFloat: {
        uint32_t value = static_cast<uint32_t>(bits);
        if (ordinary) value = (value & 0x807fffffu) | static_cast<uint32_t>(100 + (bits >> 32) % 55) << 23;
        memcpy(data + 4 * i, &value, 4);
        break;
      }
      case DType::kDouble: {
        uint64_t value = bits;
        if (ordinary) value = (value & 0x800fffffffffffffull) | ((1000 + (bits >> 40) % 47) << 52);
        memcpy(data + 8 * i, &value, 8);
        break;
      }
    }
  }
}

// The initial arena: random guard pattern everywhere, inputs written in.
inline std::vector<uint8_t> InitialArena(const ListCase& list, const ArenaPlan& plan,
                                         uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> arena(static_cast<size_t>(plan.total_bytes));
  for (uint8_t& byte : arena) byte = static_cast<uint8_t>(rng.Next());
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    FillInput(list.tensors[t].dtype, arena.data() + plan.in_begin[t],
              list.tensors[t].num_elements, rng);
  }
  return arena;
}

// The arena after a correct launch: outputs as the CPU kernels compute them.
inline std::vector<uint8_t> ExpectedArena(const ListCase& list, const ArenaPlan& plan,
                                          const std::vector<uint8_t>& initial) {
  std::vector<uint8_t> expected = initial;
  const ScaleFactor factor = FactorOf(list);
  const ScopedFlushToZero flush_to_zero;
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    const TensorCase& tensor = list.tensors[t];
    for (int64_t i = 0; i < tensor.num_elements; ++i) {
      CpuReferenceElement(tensor.dtype, initial.data() + plan.in_begin[t],
                          expected.data() + plan.out_begin[t], i, factor);
    }
  }
  return expected;
}

// The launch's tensor list with buffers inside the arena at `base`.
inline std::vector<TensorSpan> TensorsAt(const ListCase& list, const ArenaPlan& plan,
                                        uint8_t* base) {
  std::vector<TensorSpan> tensors;
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    tensors.push_back(TensorSpan{base + plan.in_begin[t], base + plan.out_begin[t],
                                list.tensors[t].num_elements, list.tensors[t].dtype});
  }
  return tensors;
}

// Which buffer, if any, holds arena byte `offset`, for error messages.
inline std::string DescribeByte(const ListCase& list, const ArenaPlan& plan, int64_t offset) {
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    const int64_t size = DTypeSize(list.tensors[t].dtype);
    if (offset >= plan.out_begin[t] && offset < plan.out_begin[t] + plan.bytes[t]) {
      return "tensor " + std::to_string(t) + " (" + DTypeName(list.tensors[t].dtype) +
             ") output element " + std::to_string((offset - plan.out_begin[t]) / size);
    }
    if (offset >= plan.in_begin[t] && offset < plan.in_begin[t] + plan.bytes[t]) {
      return "tensor " + std::to_string(t) + " input element " +
             std::to_string((offset - plan.in_begin[t]) / size);
    }
  }
  return "a guard byte";
}

// Number of bytes that differ; the first few are printed.
inline int64_t CompareArenas(const ListCase& list, const ArenaPlan& plan,
                             const std::vector<uint8_t>& expected,
                             const std::vector<uint8_t>& actual) {
  int64_t mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == actual[i]) continue;
    if (++mismatches <= 5) {
      std::printf("  %s: byte %zu (%s) is 0x%02x, expected 0x%02x\n", list.name.c_str(), i,
                  DescribeByte(list, plan, static_cast<int64_t>(i)).c_str(), actual[i],
                  expected[i]);
    }
  }
  return mismatches;
}

inline int64_t TotalElements(const ListCase& list) {
  int64_t total = 0;
  for (const TensorCase& tensor : list.tensors) total += tensor.num_elements;
  return total;
}

}  // namespace testing
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TESTS_GPU_KERNEL_CASES_H_
