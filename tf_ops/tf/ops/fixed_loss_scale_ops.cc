// Registration of FixedScaleLoss and FixedUnscaleGrads: interface and shape
// functions only (kernels live in ../kernels).

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Rejects a bad loss_scale when the op is added to a graph, before any kernel
// exists; the kernel constructor checks it again for raw NodeDefs.
absl::Status ValidateLossScale(InferenceContext* c) {
  float loss_scale = 0.0f;
  TF_RETURN_IF_ERROR(c->GetAttr("loss_scale", &loss_scale));
  // See NOTE [loss scale range] in tf_ops/core/tensor_span.h.
  if (!IsValidLossScale(loss_scale)) {
    return tensorflow::errors::InvalidArgument(
        "loss_scale must be finite, >= 1 and <= 2^126, got ", loss_scale);
  }
  return absl::OkStatus();
}

absl::Status ScaleLossShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ValidateLossScale(c));
  return tensorflow::shape_inference::UnchangedShape(c);
}

absl::Status UnscaleGradsShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(ValidateLossScale(c));
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input("grads", &shapes));
  return c->set_output("unscaled_grads", shapes);
}

}  // namespace

REGISTER_OP("FixedScaleLoss")
    .Input("loss: T")
    .Output("scaled_loss: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("loss_scale: float")
    .SetShapeFn(ScaleLossShape)
    .Doc(R"doc(
Multiplies `loss` by the constant `loss_scale` (finite, >= 1, <= 2^126).

half and bfloat16 are computed in float32 and rounded once; float and double in
their own precision.
)doc");

REGISTER_OP("FixedUnscaleGrads")
    .Input("grads: T")
    .Output("unscaled_grads: T")
    .Attr("T: list({half, bfloat16, float, double}) >= 0")
    .Attr("loss_scale: float")
    .SetShapeFn(UnscaleGradsShape)
    .Doc(R"doc(
Multiplies every tensor of `grads` by the float32 reciprocal `1.0f / loss_scale`.

One op for the whole list, any mix of dtypes. half and bfloat16 are computed in
float32 and rounded once; double uses the double reciprocal `1.0 / loss_scale`.
)doc");

}  // namespace fixed_loss_scale
