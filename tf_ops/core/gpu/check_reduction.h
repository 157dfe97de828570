// The checked launches' reduction: how the per-thread checks of
// FixedUnscaleGradsAndCheck's launch (and of the read-only check's) become one
// all-finite flag and one sum of squares, in one launch, without float
// atomics. The block step is written twice in the same order: ReduceBlock for
// the GPU (warp shuffles), CombineBlock for the host emulation; the grid step
// (per-block partials, the last block's sum) once for both.
//
// NOTE [fused check]: a checked launch scales with the same body and grid as
// the plain one (multi_tensor_scale_body.h) and checks the scaled values in the
// same launch; the fused check writes them, the read-only check does not:
//   * each thread keeps a not-finite flag and, when the sum of squares is
//     asked for (a template flag; otherwise no square is computed), the sum of
//     the squares of its scaled values, widened exactly to float (double for
//     double tensors): at most 129 additions per thread (a 64 KB chunk of
//     half is 128 elements a thread, plus one head element in chunk 0), and
//     each square-and-add is one fused multiply-add on both the GPU and the
//     host emulation (AddSquare), so their results agree bit for bit;
//   * the block reduces the 256 (flag, sum) pairs to one, sums in double, in
//     the order of NOTE [check reduction order], and thread 0 stores it in the
//     block's slot of the per-block partials in device scratch;
//   * the block that takes the last ticket (NOTE [ticket counter] in
//     multi_tensor_scale.cu) sums the partials in double, thread i taking
//     blocks i, i + 256, ... in order, then the same block reduction, and
//     writes *all_finite and *sum_of_squares (rounded to float once; a quiet
//     NaN when not asked for).
// No float atomics anywhere, so the result depends only on the data and the
// grid, not on which block finishes last. A list with no element still gets a
// grid of one block, which only writes the outputs.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_CHECK_REDUCTION_H_
#define FIXED_LOSS_SCALE_CORE_GPU_CHECK_REDUCTION_H_

#include <cstddef>
#include <cstdint>

#include "tf_ops/core/gpu/chunk_table.h"
#include "tf_ops/core/scale_math.h"

namespace fixed_loss_scale {
namespace gpu {

// A thread's, a block's or the list's check: whether some scaled value is Inf
// or NaN, and the sum of squares (0 when not asked for).
struct CheckPartial {
  double sum;
  bool not_finite;
};

// Threads per warp, for the block reduction's order.
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kBlockSize / kWarpSize;
static_assert(kBlockSize % kWarpSize == 0, "whole warps");

// NOTE [check reduction order]: a block reduces its threads' checks in one
// fixed order, the same on the GPU (ReduceBlock: warp shuffles, then shared
// memory) and in the host emulation (CombineBlock):
//   1. within each warp, a tree: for offset 16, 8, 4, 2, 1, lane l adds lane
//      l + offset's value (__shfl_down_sync), so lane 0 holds the warp's sum;
//   2. thread 0 adds the 8 warp sums in warp order: ((w0 + w1) + w2) + ...
// Sums are in double; flags are or-ed (order-free). The last block reduces the
// threads' sums of the per-block partials (SumBlockPartials) the same way.
inline CheckPartial CombineBlock(const CheckPartial* threads) {
  CheckPartial block{0.0, false};
  for (int warp = 0; warp < kWarpsPerBlock; ++warp) {
    double lanes[kWarpSize];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      lanes[lane] = threads[warp * kWarpSize + lane].sum;
      block.not_finite = block.not_finite || threads[warp * kWarpSize + lane].not_finite;
    }
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      for (int lane = 0; lane < offset; ++lane) lanes[lane] += lanes[lane + offset];
    }
    block.sum = warp == 0 ? lanes[0] : block.sum + lanes[0];
  }
  return block;
}

#if defined(__CUDACC__)
// The block's check in thread 0. Every thread of the block calls it (it holds
// a barrier); `warp_sums` is shared memory, free again once thread 0 has
// returned.
template <bool kSumOfSquares>
__device__ __forceinline__ CheckPartial ReduceBlock(CheckPartial mine, double* warp_sums) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  double sum = mine.sum;
  if (kSumOfSquares) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) warp_sums[warp] = sum;
  }
  const bool not_finite = __syncthreads_or(mine.not_finite) != 0;
  if (kSumOfSquares && threadIdx.x == 0) {
    sum = warp_sums[0];
#pragma unroll
    for (int w = 1; w < kWarpsPerBlock; ++w) sum += warp_sums[w];
  }
  return CheckPartial{sum, not_finite};
}
#endif

// ---- Across the grid ----------------------------------------------------------
// A block's check in device scratch (flag widened so the slot is two words).
struct BlockPartial {
  double sum;
  uint64_t not_finite;
};

// The kernel's second parameter in a checked launch (24 bytes: NOTE [kernel
// parameter size] leaves 28 beside the largest inline table). The ticket
// counter is the unsigned int right after the grid's partials.
struct CheckTargets {
  BlockPartial* partials;
  bool* all_finite;
  float* sum_of_squares;
};

static_assert(sizeof(InlineTable<kLargeInlineTensors>) + sizeof(CheckTargets) <=
                  kMaxKernelParamBytes,
              "a checked launch's parameters fit with the largest inline table");
static_assert(sizeof(InlineTable<kSmallInlineTensors>) + sizeof(CheckTargets) <=
                  kLegacyMaxKernelParamBytes,
              "and with the small one on every GPU");

FLS_HOST_DEVICE unsigned* TicketCounter(const CheckTargets& targets, int64_t num_blocks) {
  return reinterpret_cast<unsigned*>(targets.partials + num_blocks);
}

// Where the parts of a checked launch's device scratch are: the buffer table
// if any (`table_bytes`, a multiple of 8), the partials of `num_blocks`
// blocks, then the counter in an 8-byte slot.
struct CheckScratchLayout {
  size_t partials;
  size_t counter;
  size_t total_bytes;
};

inline CheckScratchLayout CheckScratchLayoutFor(size_t table_bytes, int64_t num_blocks) {
  CheckScratchLayout layout;
  layout.partials = table_bytes;
  layout.counter = layout.partials + sizeof(BlockPartial) * static_cast<size_t>(num_blocks);
  layout.total_bytes = layout.counter + 8;
  return layout;
}

// The grid of a checked launch over `total_chunks` chunks: one block per
// chunk, and one for a list with no element.
inline int64_t CheckedGridBlocks(int64_t total_chunks) { return MaxInt64(total_chunks, 1); }

// Thread 0 of each block, with the block's check: stores it in the block's
// slot, makes it visible device-wide, then takes a ticket; true for the block
// that takes the last one, which then finishes the check.
template <typename Memory>
FLS_HOST_DEVICE bool PublishBlockPartial(const CheckTargets& targets, int64_t block,
                                         int64_t num_blocks, CheckPartial partial,
                                         const Memory& memory) {
  memory.Store(targets.partials + block,
               BlockPartial{partial.sum, partial.not_finite ? uint64_t{1} : uint64_t{0}});
  memory.Fence();
  return memory.TakeTicket(TicketCounter(targets, num_blocks)) ==
         static_cast<unsigned>(num_blocks - 1);
}

// Every thread of the last block: the blocks `thread`, `thread` + 256, ... of
// the partials, in that order.
template <bool kSumOfSquares, typename Memory>
FLS_HOST_DEVICE CheckPartial SumBlockPartials(const CheckTargets& targets, int64_t num_blocks,
                                              int thread, const Memory& memory) {
  memory.Fence();
  CheckPartial sum{0.0, false};
  for (int64_t block = thread; block < num_blocks; block += kBlockSize) {
    const BlockPartial partial = memory.LoadCoherent(targets.partials + block);
    if (kSumOfSquares) sum.sum += partial.sum;
    sum.not_finite = sum.not_finite || partial.not_finite != 0;
  }
  return sum;
}

// Thread 0 of the last block, with the list's check (without the sum of
// squares: scale_math.h's kNotComputedBits, as the CPU kernels write).
template <bool kSumOfSquares, typename Memory>
FLS_HOST_DEVICE void WriteCheckOutputs(const CheckTargets& targets, CheckPartial total,
                                       const Memory& memory) {
  memory.Store(targets.all_finite, !total.not_finite);
  memory.Store(targets.sum_of_squares, kSumOfSquares ? static_cast<float>(total.sum)
                                                     : BitCast<float>(kNotComputedBits));
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_CHECK_REDUCTION_H_
