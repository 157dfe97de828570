// The device contract of FixedApplySgd and FixedApplyAdam. The OpKernel
// (fused_update_kernels.cc) validates every input, looks up and locks the
// variables, and hands each device's part to FusedUpdateDevice<Device>,
// specialised for CPU in fused_update_kernels.cc and for GPU in
// fused_update_gpu.cc.
#ifndef FIXED_LOSS_SCALE_TF_KERNELS_FUSED_UPDATE_H_
#define FIXED_LOSS_SCALE_TF_KERNELS_FUSED_UPDATE_H_

#include <cstring>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tf_ops/core/cpu/fused_update_cpu.h"

namespace fixed_loss_scale {

// What the OpKernel hands a device, all validated: the rule, one UpdateTensor
// per non-empty variable (pointers into the op device's memory), the
// unscaling factor (TensorReciprocalFactorFor of the host-memory loss scale),
// the flag tensor and the per-step scalar tensors by input name, in the op
// device's memory as the kernel registration places them.
struct FusedUpdateInputs {
  UpdateRule rule;
  std::vector<UpdateTensor> tensors;
  float unscale;
  const tensorflow::Tensor* all_finite;
  std::vector<std::pair<const char*, const tensorflow::Tensor*>> scalars;
};

// On the CPU the flag is in host memory: the OpKernel reads it and writes (and
// copies) nothing when it is false. On a GPU it stays in device memory and the
// kernel reads it.
template <typename Device>
struct FusedUpdateDevice {
  // Makes the variable's buffer exclusively owned before it is written, as
  // TensorFlow's ResourceApply* kernels do (PrepareToUpdateVariable).
  static absl::Status Prepare(tensorflow::OpKernelContext* context, tensorflow::Var* var);
  // Updates every tensor.
  static absl::Status Run(tensorflow::OpKernelContext* context, const FusedUpdateInputs& inputs);
};

// The field of UpdateScalars (floats) or UpdateScalarPointers (device
// pointers) that the scalar input `name` sets; null for an unknown name.
template <typename Scalars>
auto ScalarFieldFor(Scalars* s, const char* name) -> decltype(&s->clip) {
  const std::pair<const char*, decltype(&s->clip)> fields[] = {
      {"clip", &s->clip},
      {"lr", &s->lr},
      {"weight_decay", &s->weight_decay},
      {"momentum", &s->momentum},
      {"alpha", &s->alpha},
      {"one_minus_beta_1", &s->one_minus_beta_1},
      {"one_minus_beta_2", &s->one_minus_beta_2},
      {"epsilon", &s->epsilon},
      {"weight_decay_lr", &s->weight_decay_lr}};
  for (const auto& field : fields) {
    if (std::strcmp(field.first, name) == 0) return field.second;
  }
  return nullptr;
}

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TF_KERNELS_FUSED_UPDATE_H_
