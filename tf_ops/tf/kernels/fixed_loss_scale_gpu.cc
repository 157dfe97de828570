// GPU specialisations of MultiTensorScale and MultiTensorCheck: thin adapters
// from the op's spans to the CUDA-runtime-only launchers
// (tf_ops/core/gpu/multi_tensor_scale.h), each of which makes one kernel
// launch on the op's stream for the whole list.
//
// Compiled by g++ against the CUDA headers in TensorFlow's wheel; the launcher
// objects link no CUDA runtime of their own and call the one TensorFlow loaded
// (NOTE [one CUDA runtime] in the Makefile). TensorFlow makes the op's GPU
// context current on this thread before Compute (BaseGPUDevice::Compute
// activates the stream's context), and a CUDA runtime uses the context current
// to the thread, so the launch lands on the op's GPU.
#if GOOGLE_CUDA

#include <string>
#include <vector>

#include "tensorflow/core/common_runtime/device/device_event_mgr.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_reference.h"
#include "tf_ops/tf/kernels/fixed_loss_scale.h"
#include "tf_ops/tf/kernels/gpu_scratch.h"
#include "tf_ops/core/gpu/multi_tensor_scale.h"

namespace fixed_loss_scale {
namespace {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;

// The table scratch of a list too long for kernel parameters: a pinned host
// buffer the launcher fills and copies from, and the device buffer it copies to
// (TensorFlow's GpuDeviceArrayOnHost allocates the same pair).
absl::Status AllocatePinnedHostScratch(OpKernelContext* context, int64_t bytes, Tensor* host) {
  tensorflow::AllocatorAttributes pinned_host;
  pinned_host.set_on_host(true);
  pinned_host.set_gpu_compatible(true);
  return context->allocate_temp(tensorflow::DT_INT8, tensorflow::TensorShape({bytes}), host,
                                pinned_host);
}

absl::Status AllocateDeviceScratch(OpKernelContext* context, int64_t bytes, Tensor* device) {
  return context->allocate_temp(tensorflow::DT_INT8, tensorflow::TensorShape({bytes}), device);
}

}  // namespace

// gpu_scratch.h: shared with the fused update's adapter (fused_update_gpu.cc).
absl::Status TableScratch::Allocate(OpKernelContext* context, int64_t bytes) {
  bytes_ = bytes;
  if (bytes == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(AllocatePinnedHostScratch(context, bytes, &host_));
  return AllocateDeviceScratch(context, bytes, &device_);
}

void TableScratch::Release(OpKernelContext* context) {
  if (bytes_ > 0) ReleaseWhenStreamPasses(context, host_);
}

// NOTE [pinned table lifetime]: the cudaMemcpyAsync of the table reads the
// pinned host buffer when the stream reaches it, which may be after Compute
// returns. Dropping `host_scratch` then would hand its memory back to
// TensorFlow's pinned-host allocator, and the next op could overwrite it before
// the copy ran. As GpuDeviceArrayOnHost does, a TensorReference keeps the
// buffer alive and the GPU's EventMgr drops it once all work enqueued so far on
// the stream, the copy included, has completed (ThenExecute records an event on
// the stream now; TensorFlow's polling thread runs the callback after it). The
// device buffer needs no such hold: TensorFlow's GPU allocator hands memory out
// again in the op stream's order, so its next user runs after this kernel.
void ReleaseWhenStreamPasses(OpKernelContext* context, const Tensor& host_scratch) {
  const tensorflow::TensorReference reference(host_scratch);
  context->device()->tensorflow_accelerator_device_info()->event_mgr->ThenExecute(
      context->op_device_context()->stream(), [reference]() { reference.Unref(); });
}

absl::Status LaunchStatus(OpKernelContext* context, cudaError_t launched) {
  if (launched == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(context->op_kernel().type_string(),
                                          ": CUDA launch failed: ", cudaGetErrorName(launched),
                                          " (", cudaGetErrorString(launched), ")"));
}

template <>
absl::Status MultiTensorScale<Eigen::GpuDevice>::operator()(OpKernelContext* context,
                                                           const std::vector<TensorSpan>& spans,
                                                           ScaleFactor factor) const {
  const int64_t num_tensors = static_cast<int64_t>(spans.size());
  TableScratch scratch;
  TF_RETURN_IF_ERROR(scratch.Allocate(
      context, static_cast<int64_t>(MultiTensorScaleScratchBytes(num_tensors))));
  const cudaError_t launched =
      LaunchMultiTensorScale(spans.data(), num_tensors, factor, scratch.host(), scratch.device(),
                             context->eigen_gpu_device().stream());
  scratch.Release(context);
  return LaunchStatus(context, launched);
}

namespace {

// The host scratch is the table's alone, as for MultiTensorScale (NOTE [pinned
// table lifetime]); the device scratch also holds the per-block partials and
// the counter of the last-block reduction. Device memory needs no hold past
// Compute (same NOTE). The launcher writes both outputs, on the op's stream,
// also for an empty list. `scratch_bytes` is the launch's device scratch size
// function, `launch` the launcher: the checked launch (FixedUnscaleGradsAndCheck)
// or the check-only one (FixedCheckGrads), whose contracts are the same.
template <typename ScratchBytes, typename Launch>
absl::Status LaunchCheck(OpKernelContext* context, const std::vector<TensorSpan>& spans,
                         ScaleFactor factor, bool with_sum_of_squares, bool* all_finite,
                         float* sum_of_squares, ScratchBytes scratch_bytes, Launch launch) {
  const int64_t num_tensors = static_cast<int64_t>(spans.size());
  const int64_t host_bytes = static_cast<int64_t>(MultiTensorScaleScratchBytes(num_tensors));
  const int64_t device_bytes = static_cast<int64_t>(scratch_bytes(spans.data(), num_tensors));
  Tensor host_scratch;
  Tensor device_scratch;
  if (host_bytes > 0) {
    TF_RETURN_IF_ERROR(AllocatePinnedHostScratch(context, host_bytes, &host_scratch));
  }
  if (device_bytes > 0) {
    TF_RETURN_IF_ERROR(AllocateDeviceScratch(context, device_bytes, &device_scratch));
  }
  const cudaError_t launched =
      launch(spans.data(), num_tensors, factor, with_sum_of_squares,
             host_bytes > 0 ? host_scratch.data() : nullptr,
             device_bytes > 0 ? device_scratch.data() : nullptr, all_finite, sum_of_squares,
             context->eigen_gpu_device().stream());
  if (host_bytes > 0) ReleaseWhenStreamPasses(context, host_scratch);
  return LaunchStatus(context, launched);
}

}  // namespace

// With kNothing the spans' `out` is null: the launch reads `in` alone.
template <>
absl::Status MultiTensorCheck<Eigen::GpuDevice>::operator()(
    OpKernelContext* context, const std::vector<TensorSpan>& spans, ScaleFactor factor,
    CheckWrites writes, bool with_sum_of_squares, bool* all_finite, float* sum_of_squares) const {
  const bool scale = writes == CheckWrites::kScaledValues;
  return LaunchCheck(context, spans, factor, with_sum_of_squares, all_finite, sum_of_squares,
                     scale ? MultiTensorScaleAndCheckScratchBytes : MultiTensorCheckScratchBytes,
                     scale ? LaunchMultiTensorScaleAndCheck : LaunchMultiTensorCheck);
}

}  // namespace fixed_loss_scale

#endif  // GOOGLE_CUDA
