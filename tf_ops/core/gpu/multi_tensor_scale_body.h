// What one (block, thread) of a GPU launch of this library does, as plain
// C++: what a launch does with each scaled value (its job: write it, check
// it, or both), and the walk over a chunk in 16-byte packs, with the one
// switch over the dtype. multi_tensor_scale.cu wraps it in __global__ kernels;
// tf_ops/tests/host_emulation_test.cc (g++, no GPU) runs the same code for
// every (block, thread) of the same launch on the host.
//
// The launch geometry and the tables are in chunk_table.h, the memory policy
// in device_memory.h, the element math per dtype in element_math.h, the
// checked launches' reduction in check_reduction.h.
// Like scale_math.h these headers need no CUDA, TensorFlow or standard-library
// container header; FLS_HOST_DEVICE marks what the device runs.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_
#define FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_

#include <cstdint>
#include <cstring>

#include "tf_ops/core/gpu/check_reduction.h"
#include "tf_ops/core/gpu/chunk_table.h"
#include "tf_ops/core/gpu/device_memory.h"
#include "tf_ops/core/gpu/element_math.h"

namespace fixed_loss_scale {
namespace gpu {

// sum + x * x rounded once (float or double), on the GPU and on the host
// alike: a compiler may not contract it differently on either side.
template <typename T>
FLS_HOST_DEVICE T AddSquare(T sum, T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fmaf_rn(x, x, sum);
  else return __fma_rn(x, x, sum);
#else
  if constexpr (sizeof(T) == sizeof(float)) return __builtin_fmaf(x, x, sum);
  else return __builtin_fma(x, x, sum);
#endif
}

// ---- What a launch does with each scaled value -----------------------------------
// FixedScaleLoss and FixedUnscaleGrads write it (ScaleJob);
// FixedUnscaleGradsAndCheck writes and checks it (ScaleAndCheckJob, NOTE
// [fused check] in check_reduction.h); the read-only check checks it and
// writes nothing (CheckOnlyJob). One template runs all three, so the three
// launches cannot drift apart in what they compute.
template <bool kWritesOutputs, bool kChecks, bool kWithSumOfSquares>
struct Job {
  static constexpr bool kWrites = kWritesOutputs;
  static constexpr bool kCheck = kChecks;
  static constexpr bool kSumOfSquares = kWithSumOfSquares;
};
using ScaleJob = Job<true, false, false>;
template <bool kSumOfSquares>
using ScaleAndCheckJob = Job<true, true, kSumOfSquares>;
template <bool kSumOfSquares>
using CheckOnlyJob = Job<false, true, kSumOfSquares>;

// A thread's running check of the scaled values of one dtype; nothing for an
// unchecked job. float16 and bfloat16 collect their Inf/NaN tests as lane
// bits of 32-bit words (NOTE [paired 16-bit path]), tested once at the end.
template <DType kDType, typename TheJob>
struct ThreadCheck {
  using E = Element<kDType>;
  using Storage = typename E::Storage;
  typename E::Sum sum = 0;
  bool not_finite = false;
  uint32_t not_finite_lanes = 0;
  FLS_HOST_DEVICE void Add(Storage y) {
    if (!TheJob::kCheck) return;
    if constexpr (E::kPaired) {
      not_finite_lanes |= E::NotFiniteLanes(y);
    } else {
      not_finite = not_finite | E::NotFinite(y);
    }
    if (TheJob::kSumOfSquares) sum = AddSquare(sum, E::Widen(y));
  }
  FLS_HOST_DEVICE void AddPack(const Pack<Storage>& pack) {
    if (!TheJob::kCheck) return;
    if constexpr (E::kPaired) {
      FLS_UNROLL
      for (int i = 0; i < kPackBytes / 4; ++i) not_finite_lanes |= E::NotFiniteLanes(pack.words[i]);
      if (TheJob::kSumOfSquares) {
        FLS_UNROLL
        for (int lane = 0; lane < Pack<Storage>::kLanes; ++lane) {
          sum = AddSquare(sum, E::Widen(pack.Lane(lane)));
        }
      }
    } else {
      FLS_UNROLL
      for (int lane = 0; lane < Pack<Storage>::kLanes; ++lane) Add(pack.Lane(lane));
    }
  }
  FLS_HOST_DEVICE CheckPartial Partial() const {
    return CheckPartial{static_cast<double>(sum), not_finite || not_finite_lanes != 0};
  }
};

// ---- The work of one thread --------------------------------------------------
template <DType kDType, typename TheJob, typename Memory>
FLS_HOST_DEVICE void ScaleOneElement(const typename Element<kDType>::Storage* in,
                                     typename Element<kDType>::Storage* out, int i,
                                     typename Element<kDType>::Factor factor,
                                     const Memory& memory, ThreadCheck<kDType, TheJob>& check) {
  using Storage = typename Element<kDType>::Storage;
  // The output address first, as the unchecked kernels always computed it.
  Storage* const address = out + i;
  const Storage y = Element<kDType>::Scale(memory.Load(in + i), factor);
  if (TheJob::kWrites) memory.Store(address, y);
  check.Add(y);
}

// Packs [0, num_packs) of 16-byte aligned `in`/`out`; pack p is done by thread
// p % kBlockSize, so a warp's accesses are 512 contiguous bytes. Offsets within
// a chunk fit in 32 bits (the 64-bit part is in the chunk's base pointers),
// which keeps the index arithmetic and the register count down.
template <DType kDType, typename TheJob, typename Memory>
FLS_HOST_DEVICE void ScalePacks(const Pack<typename Element<kDType>::Storage>* in,
                                Pack<typename Element<kDType>::Storage>* out, int num_packs,
                                int thread,
                                typename Element<kDType>::Factor factor,
                                const Memory& memory, ThreadCheck<kDType, TheJob>& check) {
  using PackType = Pack<typename Element<kDType>::Storage>;
  for (int step = 0; step < num_packs; step += kBlockSize * kILP) {
    PackType packs[kILP];
    FLS_UNROLL
    for (int k = 0; k < kILP; ++k) {
      const int p = step + thread + k * kBlockSize;
      if (p < num_packs) packs[k] = memory.Load(in + p);
    }
    FLS_UNROLL
    for (int k = 0; k < kILP; ++k) {
      const int p = step + thread + k * kBlockSize;
      if (p >= num_packs) continue;
      Element<kDType>::ScalePack(packs[k], factor);
      if (TheJob::kWrites) memory.Store(out + p, packs[k]);
      check.AddPack(packs[k]);
    }
  }
}

// Thread `thread`'s share of elements [range.begin, range.end) of one tensor,
// a range no longer than a chunk plus a head; returns the thread's check.
template <DType kDType, typename TheJob, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleRange(const void* in_bytes, void* out_bytes, ElementRange range,
                                        TensorLayout layout, int thread, ScaleFactor factors,
                                        const Memory& memory) {
  using Storage = typename Element<kDType>::Storage;
  const typename Element<kDType>::Factor factor = Element<kDType>::FactorOf(factors);
  ThreadCheck<kDType, TheJob> check;
  const Storage* in = static_cast<const Storage*>(in_bytes) + range.begin;
  Storage* out = static_cast<Storage*>(out_bytes) + range.begin;
  const int size = static_cast<int>(range.end - range.begin);
  if (!layout.packed) {
    for (int i = thread; i < size; i += kBlockSize) {
      ScaleOneElement(in, out, i, factor, memory, check);
    }
    return check.Partial();
  }
  constexpr int kLanes = Pack<Storage>::kLanes;
  // The head (chunk 0 only) and the tail are each shorter than a pack, hence
  // than a block: one element per thread at most.
  const int packs_begin =
      static_cast<int>(MinInt64(MaxInt64(layout.head - range.begin, 0), size));
  if (thread < packs_begin) ScaleOneElement(in, out, thread, factor, memory, check);
  const int num_packs = (size - packs_begin) / kLanes;
  ScalePacks(reinterpret_cast<const Pack<Storage>*>(in + packs_begin),
             reinterpret_cast<Pack<Storage>*>(out + packs_begin), num_packs, thread, factor,
             memory, check);
  const int tail_begin = packs_begin + num_packs * kLanes;
  if (tail_begin + thread < size) {
    ScaleOneElement(in, out, tail_begin + thread, factor, memory, check);
  }
  return check.Partial();
}

// Thread `thread`'s share of chunk `chunk` of one tensor: the one switch over
// the dtype.
template <typename TheJob, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleChunk(const void* in, void* out, int64_t num_elements,
                                        DType dtype, int64_t chunk, ScaleFactor factor,
                                        int thread, const Memory& memory) {
  const TensorLayout layout = LayoutOf(in, out, num_elements, dtype);
  const ElementRange range = ChunkRange(chunk, num_elements, layout, dtype);
  switch (dtype) {
    case DType::kHalf:
      return ScaleRange<DType::kHalf, TheJob>(in, out, range, layout, thread, factor, memory);
    case DType::kBFloat16:
      return ScaleRange<DType::kBFloat16, TheJob>(in, out, range, layout, thread, factor,
                                                  memory);
    case DType::kFloat:
      return ScaleRange<DType::kFloat, TheJob>(in, out, range, layout, thread, factor, memory);
    case DType::kDouble:
      break;
  }
  return ScaleRange<DType::kDouble, TheJob>(in, out, range, layout, thread, factor, memory);
}

// The kernel body: everything thread `thread` of block `block` does, and its
// check (empty for ScaleJob). The grid has one block per chunk of the list,
// so `block` is the list chunk index; a block past the list's chunks (the one
// block of a checked launch over a list with no element) does nothing.
template <typename TheJob, typename Table, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleTableChunk(const Table& table, int64_t block, int thread,
                                             const Memory& memory) {
  if (TheJob::kCheck && block >= table.chunk_begin[table.num_tensors]) {
    return CheckPartial{0.0, false};
  }
  const int64_t t = TensorOfChunk(table, block);
  return ScaleChunk<TheJob>(table.in[t], table.out[t], table.num_elements[t], table.dtype[t],
                            block - table.chunk_begin[t], table.factor, thread, memory);
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_
