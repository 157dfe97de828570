// CPU specialisation of MultiTensorScale: byte-balanced shards of the whole
// list (NOTE [byte sharding] in multi_tensor_scale_cpu.h), shared between the
// calling thread and helpers on TensorFlow's intra-op thread pool.
#include <algorithm>
#include <atomic>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/blocking_counter.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tf_ops/cc/kernels/fixed_loss_scale.h"

namespace fixed_loss_scale {
namespace {

// Below this many bytes (read + written counted once) a list is scaled on the
// calling thread: waking a pool thread costs more than it saves.
constexpr int64_t kMinBytesPerShard = 256 << 10;
// Shards per thread: a few, so a thread slowed by something else is caught up by
// the others, and each shard still streams a large contiguous block.
constexpr int64_t kShardsPerThread = 4;
// At most this many bytes per shard, so that on large lists a thread that was
// slowed down (by another process, or by the memory system) leaves at most one
// small shard for the others to wait on at the end.
constexpr int64_t kMaxBytesPerShard = 4 << 20;

}  // namespace

// NOTE [work sharing]: the calling thread starts on the shards at once, and
// threads - 1 helpers scheduled on the pool take shards from the same atomic
// counter when they wake. ThreadPool::ParallelFor instead hands every shard to
// the pool while the caller waits: one more wake-up before any work starts and
// one fewer thread working, which cost ~30 us per call on lists of a few MB.
template <>
absl::Status MultiTensorScale<Eigen::ThreadPoolDevice>::operator()(
    tensorflow::OpKernelContext* context, const std::vector<TensorSpan>& spans,
    ScaleFactor factor) const {
  const std::vector<int64_t> offsets = ByteOffsets(spans);
  const int64_t total_bytes = offsets.back();
  tensorflow::thread::ThreadPool* pool =
      context->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t threads = pool == nullptr ? 1 : pool->NumThreads();
  if (threads <= 1 || total_bytes < 2 * kMinBytesPerShard) {
    ScaleByteRange(spans, offsets, 0, total_bytes, factor);
    return absl::OkStatus();
  }
  const int64_t shard_bytes = std::clamp(total_bytes / (threads * kShardsPerThread) + 1,
                                         kMinBytesPerShard, kMaxBytesPerShard);
  const int64_t num_shards = (total_bytes + shard_bytes - 1) / shard_bytes;
  const int64_t helpers = std::min(threads, num_shards) - 1;
  std::atomic<int64_t> next_shard{0};
  auto work = [&]() {
    for (int64_t shard = next_shard.fetch_add(1, std::memory_order_relaxed); shard < num_shards;
         shard = next_shard.fetch_add(1, std::memory_order_relaxed)) {
      ScaleByteRange(spans, offsets, shard * shard_bytes,
                     std::min(total_bytes, (shard + 1) * shard_bytes), factor);
    }
  };
  tensorflow::BlockingCounter helpers_done(static_cast<int>(helpers));
  for (int64_t i = 0; i < helpers; ++i) {
    pool->Schedule([&]() {
      work();
      helpers_done.DecrementCount();
    });
  }
  work();
  helpers_done.Wait();
  return absl::OkStatus();
}

}  // namespace fixed_loss_scale
