// CPU specialisations of MultiTensorScale and MultiTensorCheck: the core's
// byte-balanced shards of the whole list (NOTE [byte sharding], NOTE [shard
// plan] in tf_ops/core/cpu/multi_tensor_scale_cpu.h), shared between the
// calling thread and helpers on TensorFlow's inter-op threads (NOTE [helpers]).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"
#include "tf_ops/core/scale_math.h"
#include "tf_ops/tf/kernels/fixed_loss_scale.h"

namespace fixed_loss_scale {
namespace {

// What a sharded call does with each shard.
enum class ShardWork { kScale, kScaleAndCheck, kCheck };

// One sharded call, shared by the caller and its helpers; each helper holds a
// reference, since it may start after the call returned (NOTE [helpers]).
struct ShardedCall {
  ShardedCall(const std::vector<TensorSpan>* spans, const std::vector<int64_t>* offsets,
              ShardPlan plan, ScaleFactor factor, ShardWork work, bool with_sum_of_squares)
      : spans(spans),
        offsets(offsets),
        total_bytes(offsets->back()),
        shard_bytes(plan.shard_bytes),
        num_shards(plan.num_shards),
        factor(factor),
        work(work),
        with_sum_of_squares(with_sum_of_squares),
        checks(work == ShardWork::kScale ? 0 : plan.num_shards) {}

  // The caller's; read only while holding a claimed, unfinished shard, when the
  // caller is still in WaitForAllShards and they are alive.
  const std::vector<TensorSpan>* const spans;
  const std::vector<int64_t>* const offsets;
  const int64_t total_bytes;
  const int64_t shard_bytes;
  const int64_t num_shards;
  const ScaleFactor factor;
  const ShardWork work;
  const bool with_sum_of_squares;
  // One per shard when the call checks, else empty;
  // each written only by the thread that ran its shard, read by the caller
  // after WaitForAllShards.
  std::vector<ScaleCheck> checks;
  std::atomic<int64_t> next_shard{0};
  std::atomic<int64_t> shards_done{0};
  tensorflow::mutex mu;
  tensorflow::condition_variable all_done;
};

// Scales and/or checks bytes [begin, end) as `work` says; the check folds
// into *check.
void RunByteRange(ShardWork work, const std::vector<TensorSpan>& spans,
                  const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                  ScaleFactor factor, bool with_sum_of_squares, ScaleCheck* check) {
  switch (work) {
    case ShardWork::kScale:
      return ScaleByteRange(spans, offsets, begin, end, factor);
    case ShardWork::kScaleAndCheck:
      return ScaleAndCheckByteRange(spans, offsets, begin, end, factor, with_sum_of_squares,
                                    check);
    case ShardWork::kCheck:
      return CheckByteRange(spans, offsets, begin, end, factor, with_sum_of_squares, check);
  }
}

// Claims shards until none is left, and scales (and/or checks) them.
void RunShards(ShardedCall& call) {
  for (int64_t shard = call.next_shard.fetch_add(1, std::memory_order_relaxed);
       shard < call.num_shards; shard = call.next_shard.fetch_add(1, std::memory_order_relaxed)) {
    const int64_t begin = shard * call.shard_bytes;
    const int64_t end = std::min(call.total_bytes, (shard + 1) * call.shard_bytes);
    // Folded locally and stored once: neighbouring shards' ScaleChecks share a
    // cache line.
    ScaleCheck check;
    RunByteRange(call.work, *call.spans, *call.offsets, begin, end, call.factor,
                 call.with_sum_of_squares, &check);
    if (call.work != ShardWork::kScale) call.checks[shard] = check;
    if (call.shards_done.fetch_add(1, std::memory_order_acq_rel) + 1 == call.num_shards) {
      tensorflow::mutex_lock lock(call.mu);
      call.all_done.notify_all();
    }
  }
}

// Returns once every shard is finished: all claimed, by the caller or by a
// helper that is running.
void WaitForAllShards(ShardedCall& call) {
  tensorflow::mutex_lock lock(call.mu);
  while (call.shards_done.load(std::memory_order_acquire) < call.num_shards) {
    call.all_done.wait(lock);
  }
}

// NOTE [helpers]: the calling thread starts on the shards at once, and helpers
// take shards from the same atomic counter when they start. The caller then
// waits only for shards a helper has claimed, never for a helper that has not
// started: a helper queued behind busy threads (or behind this very call, when
// every thread of its pool is in one of these ops) finds nothing left and
// returns. So no call waits on a queue, and none can deadlock.
//
// Helpers go to the runner the executor gave this op (its inter-op threads),
// not to the intra-op pool: call-by-call A/B runs put the runner ahead on small
// lists and tied on large ones (docs/BENCHMARKS.md, "Kernel design A/B runs").
// Without a runner (none outside executors) helpers go to the intra-op pool,
// whose size also sets how many threads share the work.
//
// ThreadPool::ParallelFor instead hands every shard to the pool while the
// caller waits: one more wake-up before any work starts and one fewer thread
// working, measurably slower per call on lists of a few MB (same section).

// Runs the shards of one call over `spans` on the calling thread and helpers
// (NOTE [helpers]); unless `work` is kScale, returns each shard's ScaleCheck in
// shard order in *checks.
void RunSharded(tensorflow::OpKernelContext* context, const std::vector<TensorSpan>& spans,
                ScaleFactor factor, ShardWork work, bool with_sum_of_squares,
                std::vector<ScaleCheck>* checks) {
  const std::vector<int64_t> offsets = ByteOffsets(spans);
  const int64_t total_bytes = offsets.back();
  tensorflow::thread::ThreadPool* pool =
      context->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t threads = pool == nullptr ? 1 : pool->NumThreads();
  const ShardPlan plan = PlanShards(total_bytes, threads);
  if (plan.num_shards <= 1) {
    ScaleCheck check;
    RunByteRange(work, spans, offsets, 0, total_bytes, factor, with_sum_of_squares, &check);
    if (work != ShardWork::kScale) checks->assign(1, check);
    return;
  }
  auto call = std::make_shared<ShardedCall>(&spans, &offsets, plan, factor, work,
                                            with_sum_of_squares);
  const int64_t helpers = std::min(threads, call->num_shards) - 1;
  std::function<void()> helper = [call]() { RunShards(*call); };
  std::function<void(std::function<void()>)>* runner = context->runner();
  for (int64_t i = 0; i < helpers; ++i) {
    if (runner != nullptr) {
      (*runner)(helper);
    } else {
      pool->Schedule(helper);
    }
  }
  RunShards(*call);
  WaitForAllShards(*call);
  if (work != ShardWork::kScale) *checks = call->checks;
}

// A checking call (`work` kScaleAndCheck or kCheck) over `spans`, its shards'
// checks combined in shard order once all have finished into the op's two
// outputs: the flag, and the float64 total rounded once to float32 (NOTE [sum
// of squares] in tf_ops/core/cpu/scale_loop.h), or the "not computed" NaN.
// For a given thread count (which sets the shard plan) the sum is the same on
// every run.
void RunShardedCheck(tensorflow::OpKernelContext* context, const std::vector<TensorSpan>& spans,
                     ScaleFactor factor, ShardWork work, bool with_sum_of_squares,
                     bool* all_finite, float* sum_of_squares) {
  std::vector<ScaleCheck> checks;
  if (!spans.empty()) RunSharded(context, spans, factor, work, with_sum_of_squares, &checks);
  bool finite = true;
  double total = 0.0;
  for (const ScaleCheck& check : checks) {
    finite = finite && check.all_finite;
    total += check.sum_of_squares;
  }
  *all_finite = finite;
  if (with_sum_of_squares) {
    *sum_of_squares = static_cast<float>(total);
  } else {
    std::memcpy(sum_of_squares, &kNotComputedBits, sizeof(kNotComputedBits));
  }
}

}  // namespace

template <>
absl::Status MultiTensorScale<Eigen::ThreadPoolDevice>::operator()(
    tensorflow::OpKernelContext* context, const std::vector<TensorSpan>& spans,
    ScaleFactor factor) const {
  RunSharded(context, spans, factor, ShardWork::kScale, /*with_sum_of_squares=*/false,
             /*checks=*/nullptr);
  return absl::OkStatus();
}

// A check without writes counts the bytes read in its shard plan, as the
// checked scale does, so both make the same shards and give the same bits
// (NOTE [check without store] in tf_ops/core/cpu/scale_loop.h).
template <>
absl::Status MultiTensorCheck<Eigen::ThreadPoolDevice>::operator()(
    tensorflow::OpKernelContext* context, const std::vector<TensorSpan>& spans,
    ScaleFactor factor, CheckWrites writes, bool with_sum_of_squares, bool* all_finite,
    float* sum_of_squares) const {
  RunShardedCheck(context, spans, factor,
                  writes == CheckWrites::kScaledValues ? ShardWork::kScaleAndCheck
                                                       : ShardWork::kCheck,
                  with_sum_of_squares, all_finite, sum_of_squares);
  return absl::OkStatus();
}

}  // namespace fixed_loss_scale
