// The device contract of FixedScaleLoss and FixedUnscaleGrads.
//
// Both ops are "multiply a list of tensors by one factor": FixedScaleLoss is a
// list of one with factor loss_scale, FixedUnscaleGrads the gradient list with
// factor 1/loss_scale (see ScaleFactor in tf_ops/core/tensor_span.h). The OpKernels in
// fixed_loss_scale_kernels.cc validate, forward or allocate outputs, and make
// one call to MultiTensorScale<Device>, specialised for CPU in
// fixed_loss_scale_cpu.cc and for GPU in fixed_loss_scale_gpu.cc.
#ifndef FIXED_LOSS_SCALE_TF_KERNELS_FIXED_LOSS_SCALE_H_
#define FIXED_LOSS_SCALE_TF_KERNELS_FIXED_LOSS_SCALE_H_

#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {

template <typename Device>
struct MultiTensorScale {
  // Writes spans[i].out = spans[i].in * factor for every span, on `Device`.
  absl::Status operator()(tensorflow::OpKernelContext* context,
                          const std::vector<TensorSpan>& spans, ScaleFactor factor) const;
};

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TF_KERNELS_FIXED_LOSS_SCALE_H_
