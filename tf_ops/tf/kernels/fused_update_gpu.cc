// FusedUpdateDevice<Eigen::GpuDevice> (fused_update.h): the GPU part of
// FixedApplySgd and FixedApplyAdam, a thin adapter from the validated, locked
// inputs to the CUDA-runtime-only launcher (tf_ops/core/gpu/fused_update.h),
// one kernel launch on the op's stream for the whole list. Compiled as
// fixed_loss_scale_gpu.cc is, with the same runtime and context rules (its
// header comment).
#if GOOGLE_CUDA

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_ops/core/gpu/fused_update.h"
#include "tf_ops/tf/kernels/fused_update.h"
#include "tf_ops/tf/kernels/gpu_scratch.h"

namespace fixed_loss_scale {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::Var;

// PrepareToUpdateVariable's copy where a read still shares the buffer or the
// variable is in copy-on-read mode, with one device-to-device copy on the op's
// stream (TensorFlow's GPU DenseUpdate functor is not exported to plugins).
template <>
absl::Status FusedUpdateDevice<Eigen::GpuDevice>::Prepare(OpKernelContext* context, Var* var) {
  Tensor* tensor = var->tensor();
  if (!var->copy_on_read_mode.load() && tensor->RefCountIsOne()) return absl::OkStatus();
  tensorflow::AllocatorAttributes attributes;
  attributes.set_gpu_compatible(true);
  attributes.set_nic_compatible(true);
  Tensor copy;
  TF_RETURN_IF_ERROR(context->allocate_temp(tensor->dtype(), tensor->shape(), &copy, attributes));
  TF_RETURN_IF_ERROR(LaunchStatus(
      context, cudaMemcpyAsync(copy.data(), tensor->data(), tensor->TotalBytes(),
                               cudaMemcpyDeviceToDevice, context->eigen_gpu_device().stream())));
  *tensor = copy;
  return absl::OkStatus();
}

// The flag stays in device memory, where the check wrote it: the kernel reads
// it (NOTE [flag read once per block] in tf_ops/core/gpu/fused_update_body.h).
template <>
absl::Status FusedUpdateDevice<Eigen::GpuDevice>::Run(OpKernelContext* context,
                                                      const FusedUpdateInputs& inputs) {
  UpdateScalarPointers scalars;
  for (const auto& [name, value] : inputs.scalars) {
    *ScalarFieldFor(&scalars, name) = value->scalar<float>().data();
  }
  const int64_t num_tensors = static_cast<int64_t>(inputs.tensors.size());
  TableScratch scratch;
  TF_RETURN_IF_ERROR(
      scratch.Allocate(context, static_cast<int64_t>(FusedUpdateScratchBytes(num_tensors))));
  const cudaError_t launched = LaunchFusedUpdate(
      inputs.rule, inputs.tensors.data(), num_tensors, inputs.unscale, scalars,
      inputs.all_finite->scalar<bool>().data(), scratch.host(), scratch.device(),
      context->eigen_gpu_device().stream());
  scratch.Release(context);
  return LaunchStatus(context, launched);
}

}  // namespace fixed_loss_scale

#endif  // GOOGLE_CUDA
