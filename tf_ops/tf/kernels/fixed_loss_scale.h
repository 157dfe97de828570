// The device contract of the ops.
//
// All of them "multiply a list of tensors by one factor": FixedScaleLoss is a
// list of one with factor loss_scale, FixedUnscaleGrads the gradient list with
// factor 1/loss_scale (see ScaleFactor in tf_ops/core/tensor_span.h), and
// FixedUnscaleGradsByTensor the same with the scale as a tensor.
// FixedUnscaleGradsAndCheck also checks the values it writes, and
// FixedCheckGrads checks them without writing them. The OpKernels in
// fixed_loss_scale_kernels.cc validate, forward or allocate outputs, and make
// one call to MultiTensorScale<Device> or MultiTensorCheck<Device>,
// specialised for CPU in fixed_loss_scale_cpu.cc and for GPU in
// fixed_loss_scale_gpu.cc.
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

// What a checked call writes besides its two scalars: the scaled spans
// (FixedUnscaleGradsAndCheck) or nothing (FixedCheckGrads; the spans' `out` is
// null). The scalars are the same bits either way.
enum class CheckWrites { kScaledValues, kNothing };

template <typename Device>
struct MultiTensorCheck {
  // With kScaledValues, as MultiTensorScale; either way writes the two scalar
  // outputs of FixedUnscaleGradsAndCheck and FixedCheckGrads, in `Device`
  // memory (host memory on CPU; on GPU in the op's stream order): *all_finite,
  // whether every value spans[i].in * factor is finite (true for no spans), and
  // *sum_of_squares, their sum of squares when `with_sum_of_squares` (NOTE [sum
  // of squares] in tf_ops/core/cpu/scale_loop.h), else the quiet NaN
  // 0x7fc00000. `spans` may be empty: the outputs are written all the same.
  absl::Status operator()(tensorflow::OpKernelContext* context,
                          const std::vector<TensorSpan>& spans, ScaleFactor factor,
                          CheckWrites writes, bool with_sum_of_squares, bool* all_finite,
                          float* sum_of_squares) const;
};

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TF_KERNELS_FIXED_LOSS_SCALE_H_
