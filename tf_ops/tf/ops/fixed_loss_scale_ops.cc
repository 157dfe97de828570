// Registration of FixedScaleLoss, FixedUnscaleGrads, FixedUnscaleGradsAndCheck,
// FixedCheckGrads and FixedUnscaleGradsByTensor: interface and shape functions
// only (kernels live in ../kernels).

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_ops/core/tensor_span.h"
#include "tf_ops/tf/loss_scale_errors.h"

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
  if (!IsValidLossScale(loss_scale)) return InvalidLossScaleAttr("", loss_scale);
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

// The loss_scale input of `op` (input `index`) must be a scalar, and a
// constant one (a Python number the wrapper made into a Const) a valid tensor
// scale: both are rejected when the op is added to a graph, as the attr of the
// ops above is. The kernels check the value again when they run (a variable's
// value is only known then).
absl::Status ValidateTensorLossScale(InferenceContext* c, int index, absl::string_view op) {
  ShapeHandle scalar;
  if (!c->WithRank(c->input(index), 0, &scalar).ok()) {
    return LossScaleNotScalar(op, c->DebugString(c->input(index)));
  }
  const tensorflow::Tensor* loss_scale = c->input_tensor(index);
  if (loss_scale != nullptr && loss_scale->dtype() == tensorflow::DT_FLOAT &&
      loss_scale->NumElements() == 1) {
    const float value = loss_scale->flat<float>()(0);
    // See NOTE [tensor loss scale range] in tf_ops/core/tensor_span.h.
    if (!IsValidTensorLossScale(value)) return InvalidTensorLossScale(op, value);
  }
  return absl::OkStatus();
}

// The unscaled grads have the inputs' shapes; all_finite and sum_of_squares are
// scalars.
absl::Status UnscaleGradsAndCheckShape(InferenceContext* c) {
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input("grads", &shapes));
  const int num_grads = static_cast<int>(shapes.size());
  TF_RETURN_IF_ERROR(ValidateTensorLossScale(c, num_grads, "FixedUnscaleGradsAndCheck"));
  TF_RETURN_IF_ERROR(c->set_output("unscaled_grads", shapes));
  c->set_output(num_grads, c->Scalar());
  c->set_output(num_grads + 1, c->Scalar());
  return absl::OkStatus();
}

// all_finite and sum_of_squares are scalars; the grads may have any shapes.
absl::Status CheckGradsShape(InferenceContext* c) {
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input("grads", &shapes));
  TF_RETURN_IF_ERROR(
      ValidateTensorLossScale(c, static_cast<int>(shapes.size()), "FixedCheckGrads"));
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

absl::Status UnscaleGradsByTensorShape(InferenceContext* c) {
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input("grads", &shapes));
  TF_RETURN_IF_ERROR(ValidateTensorLossScale(c, static_cast<int>(shapes.size()),
                                             "FixedUnscaleGradsByTensor"));
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

// NOTE [attr name]: the attr is `with_sum_of_squares`, not `sum_of_squares`,
// because an op's attrs, inputs and outputs share one namespace (TensorFlow's
// ValidateOpDef rejects a duplicate name) and the output is `sum_of_squares`.
// The Python wrapper's argument is still `sum_of_squares`.
REGISTER_OP("FixedUnscaleGradsAndCheck")
    .Input("grads: T")
    .Input("loss_scale: float")
    .Output("unscaled_grads: T")
    .Output("all_finite: bool")
    .Output("sum_of_squares: float")
    .Attr("T: list({half, bfloat16, float, double}) >= 0")
    .Attr("with_sum_of_squares: bool = false")
    .SetShapeFn(UnscaleGradsAndCheckShape)
    .Doc(R"doc(
FixedUnscaleGrads with the scale as a tensor, and a check in the same read.

`unscaled_grads` is bit for bit FixedUnscaleGrads' output with attr loss_scale
equal to the value of `loss_scale`, a float32 scalar, so a variable (a dynamic
scale) can drive it. Any positive, finite, normal float32 is accepted (checked
when the kernel runs): outside [1, 2^126], where FixedUnscaleGrads refuses the
attr, the result is TensorFlow's CPU arithmetic `g * (1 / loss_scale)`, the
float32 reciprocal flushed to zero when subnormal.

all_finite: true iff every unscaled value is finite (no Inf or NaN; subnormals
  and the largest finite values are finite); true for an empty list.
sum_of_squares: with `with_sum_of_squares`, the sum of x*x over every unscaled
  value x, x widened exactly to float32 (double stays double), partial sums
  added in double and the total rounded once to float32; Inf or NaN when a
  value is not finite or the sum overflows. Deterministic for a given thread
  count (CPU) or grid (GPU). Without it, a quiet NaN: not computed.
)doc");

// NOTE [check before unscale]: a step that may be skipped needs the flag
// before its barrier (the `cond` on it), but the unscaled gradients only in the
// branch that applies them. FixedCheckGrads reads the gradients and writes
// nothing, FixedUnscaleGradsByTensor unscales a group inside the branch: on a
// CPU the check then runs while the gradients are still in cache, and each
// unscale next to the update that reads it, where the fused op writes every
// unscaled gradient to memory before the barrier.
REGISTER_OP("FixedCheckGrads")
    .Input("grads: T")
    .Input("loss_scale: float")
    .Output("all_finite: bool")
    .Output("sum_of_squares: float")
    .Attr("T: list({half, bfloat16, float, double}) >= 0")
    .Attr("with_sum_of_squares: bool = false")
    .SetShapeFn(CheckGradsShape)
    .Doc(R"doc(
FixedUnscaleGradsAndCheck's all_finite and sum_of_squares, without its writes.

Reads `grads` once and writes no gradient. `all_finite` and `sum_of_squares`
are bit for bit FixedUnscaleGradsAndCheck's for the same grads, loss_scale
(a float32 scalar, the same range) and with_sum_of_squares: they describe the
*unscaled* values, g * (1 / loss_scale), which that op would write.
)doc");

REGISTER_OP("FixedUnscaleGradsByTensor")
    .Input("grads: T")
    .Input("loss_scale: float")
    .Output("unscaled_grads: T")
    .Attr("T: list({half, bfloat16, float, double}) >= 0")
    .SetShapeFn(UnscaleGradsByTensorShape)
    .Doc(R"doc(
FixedUnscaleGrads with the scale as a float32 scalar tensor, and no check.

`unscaled_grads` is bit for bit FixedUnscaleGradsAndCheck's (and so
FixedUnscaleGrads' with attr loss_scale equal to the value, in [1, 2^126]);
`loss_scale` takes the same range as FixedUnscaleGradsAndCheck's.
)doc");

}  // namespace fixed_loss_scale
