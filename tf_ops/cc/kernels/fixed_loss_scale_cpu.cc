// CPU specialisation of MultiTensorScale: byte-balanced shards of the whole
// list (NOTE [byte sharding] in multi_tensor_scale_cpu.h) on TensorFlow's
// intra-op thread pool.
#include <algorithm>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tf_ops/cc/kernels/fixed_loss_scale.h"

namespace fixed_loss_scale {
namespace {

// Below this many bytes (read + written counted once) a list is scaled on the
// calling thread: handing work to the pool costs more than it saves.
constexpr int64_t kMinBytesPerShard = 256 << 10;
// Shards per thread: a few, so a thread slowed by something else is caught up by
// the others, and each shard still streams a large contiguous block.
constexpr int64_t kShardsPerThread = 4;

}  // namespace

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
  const int64_t shard_bytes =
      std::max(kMinBytesPerShard, total_bytes / (threads * kShardsPerThread) + 1);
  const int64_t num_shards = (total_bytes + shard_bytes - 1) / shard_bytes;
  pool->ParallelFor(num_shards, tensorflow::thread::ThreadPool::SchedulingParams::Fixed(1),
                    [&](int64_t first_shard, int64_t last_shard) {
                      ScaleByteRange(spans, offsets, first_shard * shard_bytes,
                                     std::min(total_bytes, last_shard * shard_bytes), factor);
                    });
  return absl::OkStatus();
}

}  // namespace fixed_loss_scale
