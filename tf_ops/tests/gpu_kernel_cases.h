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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
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

// One input element replaced by a chosen bit pattern (an Inf or a NaN), for
// the fused check's flag.
struct Poison {
  size_t tensor;
  int64_t element;
  uint64_t bits;  // the low DTypeSize bytes are stored
};

struct ListCase {
  std::string name;
  std::vector<TensorCase> tensors;
  float loss_scale;
  bool unscale;  // FixedUnscaleGrads (factor 1/loss_scale) or FixedScaleLoss
  // Inputs drawn from ordinary values only (no random bit patterns, hence no
  // Inf or NaN but the poisons), so the check's flag and sum mean something.
  bool finite_inputs = false;
  std::vector<Poison> poisons;
  // For a checked launch: whether the sum of squares is asked for.
  bool sum_of_squares = true;
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
inline void FillInput(DType dtype, uint8_t* data, int64_t num_elements, Rng& rng,
                      bool finite_only = false) {
  for (int64_t i = 0; i < num_elements; ++i) {
    const uint64_t bits = rng.Next();
    const bool ordinary = finite_only || (bits >> 60) < 12;
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
              list.tensors[t].num_elements, rng, list.finite_inputs);
  }
  for (const Poison& poison : list.poisons) {
    const int64_t size = DTypeSize(list.tensors[poison.tensor].dtype);
    memcpy(arena.data() + plan.in_begin[poison.tensor] + poison.element * size, &poison.bits,
           size);
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

// ---- The fused check (NOTE [fused check] in check_reduction.h) ------------------
// Bit patterns of +Inf, -Inf and a quiet NaN with a payload, per dtype.
inline uint64_t NonFiniteBits(DType dtype, int which) {
  static const uint64_t kBits[4][3] = {
      {0x7c00u, 0xfc00u, 0x7e01u},
      {0x7f80u, 0xff80u, 0x7fc1u},
      {0x7f800000u, 0xff800000u, 0x7fc00001u},
      {0x7ff0000000000000ull, 0xfff0000000000000ull, 0x7ff8000000000001ull}};
  return kBits[static_cast<int>(dtype)][which % 3];
}

// The positions where one non-finite element must flip the flag for a tensor
// of `n` elements whose output is `out_offset` bytes past a 16-byte boundary
// (`packed`: input at the same offset): the first and last element, either
// side of the head's end, of the first pack's end, of each chunk boundary and
// of the tail's start.
inline std::vector<int64_t> PoisonPositions(DType dtype, int64_t n, int64_t out_offset,
                                            bool packed) {
  const int64_t size = DTypeSize(dtype);
  const int64_t lanes = gpu::kPackBytes / size;
  const int64_t head = packed ? std::min((gpu::kPackBytes - out_offset % gpu::kPackBytes) %
                                             gpu::kPackBytes / size,
                                         n)
                              : 0;
  std::vector<int64_t> positions = {0, n - 1, head - 1, head, head + lanes - 1, head + lanes};
  for (int64_t boundary = head + gpu::ChunkElements(dtype); boundary < n;
       boundary += gpu::ChunkElements(dtype)) {
    positions.push_back(boundary - 1);
    positions.push_back(boundary);
  }
  const int64_t tail_begin = n - (n - head) % lanes;
  positions.push_back(tail_begin - 1);
  positions.push_back(tail_begin);
  std::vector<int64_t> valid;
  for (int64_t position : positions) {
    if (position >= 0 && position < n &&
        std::find(valid.begin(), valid.end(), position) == valid.end()) {
      valid.push_back(position);
    }
  }
  return valid;
}

// One tensor of ordinary values and one Inf or NaN at each position of
// PoisonPositions, every dtype, a few sizes (one chunk boundary and more), in
// place with and without a head, out of place unpacked; plus each layout with
// no poison. All unscale, so ordinary inputs give finite outputs.
inline std::vector<ListCase> PoisonCases() {
  std::vector<ListCase> cases;
  int which = 0;
  for (DType dtype : kAllDTypes) {
    const int64_t size = DTypeSize(dtype);
    const int64_t chunk = gpu::ChunkElements(dtype);
    for (int64_t n : {int64_t{61}, 2 * chunk + 13}) {
      // (in_offset, out_offset, in place): aligned, one element past a
      // boundary (a head of lanes - 1 elements), and out of place unpacked.
      const int64_t layouts[3][3] = {{0, 0, 1}, {size, size, 1}, {0, size, 0}};
      for (const auto& layout : layouts) {
        TensorCase tensor{dtype, n, layout[0], layout[1], layout[2] != 0};
        const bool packed = tensor.in_place || tensor.in_offset == tensor.out_offset;
        const int64_t out_offset = tensor.in_place ? tensor.in_offset : tensor.out_offset;
        std::vector<int64_t> positions = PoisonPositions(dtype, n, out_offset, packed);
        positions.push_back(-1);  // no poison
        for (int64_t position : positions) {
          ListCase list;
          list.name = std::string("poison ") + DTypeName(dtype) + " n=" + std::to_string(n) +
                      " in_offset=" + std::to_string(tensor.in_offset) +
                      (tensor.in_place ? " in-place"
                                       : " out_offset=" + std::to_string(tensor.out_offset)) +
                      (position < 0 ? " clean" : " at " + std::to_string(position));
          list.tensors = {tensor};
          list.unscale = true;
          list.loss_scale = which % 2 == 0 ? 1024.0f : 3.0f;
          list.finite_inputs = true;
          list.sum_of_squares = which % 4 != 1;
          if (position >= 0) list.poisons.push_back({0, position, NonFiniteBits(dtype, which)});
          ++which;
          cases.push_back(list);
        }
      }
    }
  }
  return cases;
}

// The lists of MultiTensorCases (both sides of every table capacity, mixed
// dtypes) with ordinary inputs: each clean, and with one Inf or NaN at a
// position of PoisonPositions of one non-empty tensor; plus the empty list and
// a list of empty tensors. All unscale.
inline std::vector<ListCase> CheckedListCases() {
  std::vector<ListCase> cases;
  ListCase empty;
  empty.name = "checked empty list";
  empty.loss_scale = 1024.0f;
  empty.unscale = true;
  empty.finite_inputs = true;
  cases.push_back(empty);
  empty.sum_of_squares = false;
  cases.push_back(empty);
  ListCase empties = empty;
  empties.name = "checked list of 3 empty tensors";
  for (DType dtype : {DType::kHalf, DType::kFloat, DType::kDouble}) {
    empties.tensors.push_back(TensorCase{dtype, 0, 0, 0, true});
  }
  cases.push_back(empties);
  empties.sum_of_squares = true;
  cases.push_back(empties);
  Rng rng(99);
  int which = 0;
  for (ListCase list : MultiTensorCases()) {
    list.unscale = true;
    list.finite_inputs = true;
    list.sum_of_squares = true;
    ListCase poisoned = list;
    list.name = "checked clean " + list.name;
    cases.push_back(list);
    size_t t = static_cast<size_t>(rng.Uniform(0, static_cast<int64_t>(list.tensors.size()) - 1));
    while (list.tensors[t].num_elements == 0) t = (t + 1) % list.tensors.size();
    const TensorCase& tensor = list.tensors[t];
    const bool packed = tensor.in_place || tensor.in_offset == tensor.out_offset;
    const std::vector<int64_t> positions = PoisonPositions(
        tensor.dtype, tensor.num_elements, tensor.in_place ? tensor.in_offset : tensor.out_offset,
        packed);
    const int64_t position =
        positions[rng.Uniform(0, static_cast<int64_t>(positions.size()) - 1)];
    poisoned.poisons.push_back({t, position, NonFiniteBits(tensor.dtype, which)});
    poisoned.sum_of_squares = which % 2 == 0;
    poisoned.name = "checked " + poisoned.name + " poisoned at tensor " + std::to_string(t) +
                    " element " + std::to_string(position);
    ++which;
    cases.push_back(poisoned);
  }
  return cases;
}

// What the check of a correct launch gives, from the expected outputs: the
// flag exactly, and the sum of squares in double (exact squares of
// half/bfloat16/float values; NaN and Inf propagate).
struct ReferenceCheck {
  bool all_finite = true;
  double sum_of_squares = 0.0;
  int64_t elements = 0;
};

inline ReferenceCheck ComputeReferenceCheck(const ListCase& list, const ArenaPlan& plan,
                                            const std::vector<uint8_t>& expected) {
  ReferenceCheck check;
  check.elements = TotalElements(list);
  for (size_t t = 0; t < list.tensors.size(); ++t) {
    const TensorCase& tensor = list.tensors[t];
    const uint8_t* out = expected.data() + plan.out_begin[t];
    for (int64_t i = 0; i < tensor.num_elements; ++i) {
      double x = 0;
      switch (tensor.dtype) {
        case DType::kHalf: {
          uint16_t bits;
          memcpy(&bits, out + 2 * i, 2);
          x = HalfBitsToFloat(bits);
          break;
        }
        case DType::kBFloat16: {
          uint16_t bits;
          memcpy(&bits, out + 2 * i, 2);
          x = BFloat16BitsToFloat(bits);
          break;
        }
        case DType::kFloat: {
          float value;
          memcpy(&value, out + 4 * i, 4);
          x = value;
          break;
        }
        case DType::kDouble:
          memcpy(&x, out + 8 * i, 8);
          break;
      }
      if (!std::isfinite(x)) check.all_finite = false;
      check.sum_of_squares += x * x;
    }
  }
  return check;
}

// NOTE [sum of squares tolerance]: relative tolerance of the kernel's sum of
// squares against the double reference. A thread adds at most 129 squares in
// float (NOTE [fused check]), each add rounding by at most 2^-24 relative;
// all terms are non-negative, so the thread's sum is within 129 * 2^-24
// (7.7e-6) of exact; the double stages add ~1e-16 and the final rounding to
// float 2^-24. Double tensors are summed in double throughout. Squares and
// sums below float's normal range are subnormal or 0 in float (a bfloat16 of
// 1e-27 squares to 0): each element may lose up to 2^-149 absolutely
// (kSumOfSquaresAtolPerElement).
constexpr double kSumOfSquaresRtol = 1e-5;
constexpr double kSumOfSquaresAtolPerElement = 0x1p-149;

// Whether a kernel's sum of squares `got` over `elements` elements agrees
// with the reference's.
inline bool SumOfSquaresMatches(float got, double reference, int64_t elements) {
  if (std::isnan(reference)) return std::isnan(got);
  const double limit = 3.4028234663852886e38;  // FLT_MAX
  if (reference > limit * (1 + 2 * kSumOfSquaresRtol)) return std::isinf(got) && got > 0;
  const double tolerance = kSumOfSquaresRtol * reference +
                           kSumOfSquaresAtolPerElement * static_cast<double>(elements);
  if (reference > limit * (1 - 2 * kSumOfSquaresRtol)) {
    return (std::isinf(got) && got > 0) || std::fabs(got - reference) <= tolerance;
  }
  return std::isfinite(got) && std::fabs(got - reference) <= tolerance;
}

// Why a checked launch's outputs are wrong, or "" if they are right. Without
// the sum, *sum_of_squares must be the quiet NaN 0x7fc00000 bit for bit.
inline std::string CheckOutputsError(const ListCase& list, const ReferenceCheck& reference,
                                     bool all_finite, float sum_of_squares) {
  char buffer[256];
  if (all_finite != reference.all_finite) {
    snprintf(buffer, sizeof(buffer), "all_finite is %d, expected %d", all_finite,
             reference.all_finite);
    return buffer;
  }
  uint32_t bits;
  memcpy(&bits, &sum_of_squares, 4);
  if (!list.sum_of_squares) {
    if (bits == kNotComputedBits) return "";
    snprintf(buffer, sizeof(buffer), "sum_of_squares is 0x%08x without the sum, expected 0x%08x",
             bits, kNotComputedBits);
    return buffer;
  }
  if (SumOfSquaresMatches(sum_of_squares, reference.sum_of_squares, reference.elements)) {
    return "";
  }
  snprintf(buffer, sizeof(buffer), "sum_of_squares is %.9g, reference %.17g (rtol %g)",
           sum_of_squares, reference.sum_of_squares, kSumOfSquaresRtol);
  return buffer;
}

// ---- The checked launches on the host -------------------------------------------
// The launch LaunchMultiTensorScaleAndCheck (`read_only` false) or
// LaunchMultiTensorCheck (true) makes, run on the host one (block, thread) at
// a time through `memory`: the same table choice and device-scratch layout
// (the buffer table copied to its start), the ticket counter zeroed (the
// launcher's cudaMemsetAsync), then, block by block in `order`, the steps of
// CheckedBlock in multi_tensor_scale.cu with CombineBlock for the block
// reduction. The device scratch, of CheckedScratchBytes bytes, and the two
// outputs are the caller's.
inline size_t CheckedScratchBytes(const std::vector<TensorSpan>& tensors, bool large_params,
                                  bool read_only = false) {
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  const size_t table_bytes = gpu::TableKindFor(num_tensors, large_params) == gpu::TableKind::kBuffer
                                 ? gpu::BufferLayoutFor(num_tensors).total_bytes
                                 : 0;
  return gpu::CheckScratchLayoutFor(table_bytes,
                                    gpu::CheckedGridBlocks(gpu::TotalChunks(
                                        tensors.data(), num_tensors, read_only)))
      .total_bytes;
}

// Block order of an emulated launch: 0 in order, otherwise a permutation drawn
// from this seed (so a different block finishes last).
template <typename TheJob, typename Table, typename Memory>
void RunCheckedGrid(const Table& table, const gpu::CheckTargets& targets, int64_t num_blocks,
                    uint64_t order_seed, const Memory& memory) {
  constexpr bool kSum = TheJob::kSumOfSquares;
  std::vector<int64_t> order(static_cast<size_t>(num_blocks));
  for (int64_t b = 0; b < num_blocks; ++b) order[b] = b;
  if (order_seed != 0) {
    Rng rng(order_seed);
    for (int64_t b = num_blocks - 1; b > 0; --b) std::swap(order[b], order[rng.Uniform(0, b)]);
  }
  std::vector<gpu::CheckPartial> threads(gpu::kBlockSize);
  for (int64_t block : order) {
    for (int thread = 0; thread < gpu::kBlockSize; ++thread) {
      threads[thread] = gpu::ScaleTableChunk<TheJob>(table, block, thread, memory);
    }
    if (!gpu::PublishBlockPartial(targets, block, num_blocks, gpu::CombineBlock(threads.data()),
                                  memory)) {
      continue;
    }
    for (int thread = 0; thread < gpu::kBlockSize; ++thread) {
      threads[thread] = gpu::SumBlockPartials<kSum>(targets, num_blocks, thread, memory);
    }
    gpu::WriteCheckOutputs<kSum>(targets, gpu::CombineBlock(threads.data()), memory);
  }
}

// The table of an emulated launch: an inline one on the heap (no table bytes
// in the scratch), or the buffer table at the start of the device scratch,
// where the launcher's copy puts it.
template <int64_t kCapacity>
std::unique_ptr<gpu::InlineTable<kCapacity>> EmulatedTable(gpu::InlineTableOf<kCapacity>,
                                                           uint8_t*, int64_t, ScaleFactor,
                                                           size_t* table_bytes) {
  *table_bytes = 0;
  return std::unique_ptr<gpu::InlineTable<kCapacity>>(new gpu::InlineTable<kCapacity>());
}

inline std::unique_ptr<gpu::BufferTable> EmulatedTable(gpu::BufferTableOf<>, uint8_t* device_scratch,
                                                       int64_t num_tensors, ScaleFactor factor,
                                                       size_t* table_bytes) {
  *table_bytes = gpu::BufferLayoutFor(num_tensors).total_bytes;
  return std::unique_ptr<gpu::BufferTable>(
      new gpu::BufferTable(gpu::BufferTableAt(device_scratch, num_tensors, factor)));
}

// Returns the number of blocks of the launch.
template <typename TheJob, typename Memory>
int64_t EmulateCheckedLaunchAs(const std::vector<TensorSpan>& tensors, ScaleFactor factor,
                               bool large_params, uint8_t* device_scratch, bool* all_finite,
                               float* sum_of_squares, uint64_t order_seed,
                               const Memory& memory) {
  const int64_t num_tensors = static_cast<int64_t>(tensors.size());
  return gpu::VisitTable(gpu::TableKindFor(num_tensors, large_params), [&](auto table_of) {
    size_t table_bytes = 0;
    const auto table =
        EmulatedTable(table_of, device_scratch, num_tensors, factor, &table_bytes);
    const int64_t num_blocks = gpu::CheckedGridBlocks(
        gpu::FillTable(tensors.data(), num_tensors, factor, table.get(), !TheJob::kWrites));
    const gpu::CheckScratchLayout layout = gpu::CheckScratchLayoutFor(table_bytes, num_blocks);
    memset(device_scratch + layout.counter, 0, sizeof(unsigned));
    const gpu::CheckTargets targets{
        reinterpret_cast<gpu::BlockPartial*>(device_scratch + layout.partials), all_finite,
        sum_of_squares};
    RunCheckedGrid<TheJob>(*table, targets, num_blocks, order_seed, memory);
    return num_blocks;
  });
}

template <typename Memory>
int64_t EmulateCheckedLaunch(const std::vector<TensorSpan>& tensors, ScaleFactor factor,
                             bool with_sum_of_squares, bool large_params, uint8_t* device_scratch,
                             bool* all_finite, float* sum_of_squares, uint64_t order_seed,
                             const Memory& memory, bool read_only = false) {
  auto emulate = [&](auto job) {
    return EmulateCheckedLaunchAs<decltype(job)>(tensors, factor, large_params, device_scratch,
                                                 all_finite, sum_of_squares, order_seed, memory);
  };
  if (read_only) {
    return with_sum_of_squares ? emulate(gpu::CheckOnlyJob<true>())
                               : emulate(gpu::CheckOnlyJob<false>());
  }
  return with_sum_of_squares ? emulate(gpu::ScaleAndCheckJob<true>())
                             : emulate(gpu::ScaleAndCheckJob<false>());
}

}  // namespace testing
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TESTS_GPU_KERNEL_CASES_H_
