// The CPU core of the ops: multiply every element of a list of tensors by one
// factor, in plain C++ over pointers and sizes (no TensorFlow header), so that
// it is built and run standalone under sanitizers (tf_ops/tests/). The
// TensorFlow adapter (tf_ops/tf/kernels/fixed_loss_scale_cpu.cc) only runs the
// shards this core plans on TensorFlow's threads.
//
// NOTE [byte sharding]: the tensors are laid end to end in one byte space and
// work is split by byte ranges, not by tensor, so one huge tensor and ten
// thousand tiny ones spread over every thread alike. An element belongs to the
// range that holds its first byte, so any partition of [0, total_bytes) writes
// every element exactly once.
#ifndef FIXED_LOSS_SCALE_CORE_CPU_MULTI_TENSOR_SCALE_CPU_H_
#define FIXED_LOSS_SCALE_CORE_CPU_MULTI_TENSOR_SCALE_CPU_H_

#include <cstdint>
#include <vector>

#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {

// Byte offset of each span in the concatenated byte space, plus the total at
// the end: offsets.size() == spans.size() + 1.
std::vector<int64_t> ByteOffsets(const std::vector<TensorSpan>& spans);

// Scales the elements whose first byte lies in [byte_begin, byte_end), see
// NOTE [byte sharding]. `byte_offsets` comes from ByteOffsets(spans).
void ScaleByteRange(const std::vector<TensorSpan>& spans,
                    const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                    int64_t byte_end, ScaleFactor factor);

// Scales elements [first, last) of one span, with the active CpuPath.
void ScaleElements(const TensorSpan& span, int64_t first, int64_t last, ScaleFactor factor);

// What FixedUnscaleGradsAndCheck learns from the outputs it writes (and
// FixedCheckGrads from the same outputs, unwritten): whether every one is
// finite (no Inf, no NaN; subnormals and the largest values are finite) and,
// when asked, the sum of their squares (NOTE [sum of squares] in
// scale_loop.h). Each shard folds into its own ScaleCheck; the caller combines
// them in shard order, so the sum is the same for a given thread count.
struct ScaleCheck {
  bool all_finite = true;
  double sum_of_squares = 0.0;
};

// As ScaleByteRange, and folds the outputs it writes into *check: all_finite &=
// every output finite; when with_sum_of_squares, sum_of_squares += their sum of
// squares (NOTE [sum of squares]). The outputs are bit-identical to
// ScaleByteRange's.
void ScaleAndCheckByteRange(const std::vector<TensorSpan>& spans,
                            const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                            int64_t byte_end, ScaleFactor factor, bool with_sum_of_squares,
                            ScaleCheck* check);

// FixedCheckGrads: ScaleAndCheckByteRange's *check, from the spans' `in` alone
// (`out` is never read or written; NOTE [check without store] in
// scale_loop.h). Bit-identical to ScaleAndCheckByteRange's where each span's
// out has its in's address mod 64, as TensorFlow's 64-byte aligned buffers do.
void CheckByteRange(const std::vector<TensorSpan>& spans, const std::vector<int64_t>& byte_offsets,
                    int64_t byte_begin, int64_t byte_end, ScaleFactor factor,
                    bool with_sum_of_squares, ScaleCheck* check);

// NOTE [shard plan]: below kMinShardedBytes (bytes read, counted once) a list
// is scaled on the calling thread alone: waking another thread costs more than
// it saves. Above, each thread gets about kShardsPerThread shards, so that a
// thread slowed by something else is caught up by the others while each shard
// still streams a large contiguous block, of kMinBytesPerShard to
// kMaxBytesPerShard bytes: the cap leaves at most one small shard for the
// others to wait on at the end of a large list.
constexpr int64_t kMinBytesPerShard = int64_t{256} << 10;
constexpr int64_t kMaxBytesPerShard = int64_t{4} << 20;
constexpr int64_t kShardsPerThread = 4;
constexpr int64_t kMinShardedBytes = 2 * kMinBytesPerShard;
static_assert(kMinBytesPerShard <= kMaxBytesPerShard, "shard bounds are ordered");

// Shards [k * shard_bytes, min(total, (k + 1) * shard_bytes)) for k < num_shards;
// num_shards == 1 means the calling thread scales the whole list.
struct ShardPlan {
  int64_t shard_bytes;
  int64_t num_shards;
};

// The plan for a list of `total_bytes` on `threads` threads (NOTE [shard plan]).
ShardPlan PlanShards(int64_t total_bytes, int64_t threads);

// NOTE [CPU paths]: the element loops exist as portable scalar code (the
// functions of scale_math.h) and, on x86-64, as AVX2+F16C and AVX-512 loops
// that give the same bits (simd_loops.h). The best path this CPU supports
// is picked once, at first use; the environment variable
// FIXED_LOSS_SCALE_CPU_PATH=scalar|avx2|avx512 picks a lower one (an
// unsupported or unknown value is ignored), for benchmarks and tests.
enum class CpuPath : uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Whether this build and this CPU can run `path` (kScalar always can).
bool CpuPathSupported(CpuPath path);
// The path ScaleElements and ScaleByteRange use in this process.
CpuPath ActiveCpuPath();
const char* CpuPathName(CpuPath path);
// Whether the AVX-512 path uses its AVX512_BF16 bfloat16 loop on a thread whose
// MXCSR has FTZ and DAZ on, as TensorFlow's threads have (NOTE [bfloat16
// convert] in simd_loops.h).
bool Avx512Bf16LoopActive();
// ScaleElements with an explicit path, which must be supported (tests).
void ScaleElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first, int64_t last,
                           ScaleFactor factor);
// ScaleAndCheckByteRange over elements [first, last) of one span, with an
// explicit path, which must be supported (tests).
void ScaleAndCheckElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first,
                                   int64_t last, ScaleFactor factor, bool with_sum_of_squares,
                                   ScaleCheck* check);
// CheckByteRange over elements [first, last) of one span, with an explicit
// path, which must be supported (tests).
void CheckElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first, int64_t last,
                           ScaleFactor factor, bool with_sum_of_squares, ScaleCheck* check);

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_CPU_MULTI_TENSOR_SCALE_CPU_H_
