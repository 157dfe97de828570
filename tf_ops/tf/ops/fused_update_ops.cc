// Registration of FixedApplySgd and FixedApplyAdam: interface and shape checks
// only (kernels: ../kernels/fused_update_kernels.cc, element math:
// tf_ops/core/fused_update_math.h).

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fixed_loss_scale {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// The op's inputs are `lists_of_n` lists of N (var, the slots it always has,
// grad), an optional slot list of M resources, then scalars: M must be 0 or N,
// `decay` empty or of length N, and every later input a scalar. The
// variables' shapes are known to the kernel alone.
absl::Status UpdateShape(InferenceContext* c, const char* op, int lists_of_n,
                         const char* optional_slots) {
  int n = 0;
  int m = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  TF_RETURN_IF_ERROR(c->GetAttr("M", &m));
  if (m != 0 && m != n) {
    return tensorflow::errors::InvalidArgument(op, ": ", optional_slots,
                                               " must hold 0 or N = ", n,
                                               " variables, got ", m);
  }
  std::vector<bool> decay;
  TF_RETURN_IF_ERROR(c->GetAttr("decay", &decay));
  if (!decay.empty() && static_cast<int>(decay.size()) != n) {
    return tensorflow::errors::InvalidArgument(op, ": decay must be empty or hold N = ", n,
                                               " entries, got ", decay.size());
  }
  for (int i = lists_of_n * n + m; i < c->num_inputs(); ++i) {
    ShapeHandle scalar;
    if (!c->WithRank(c->input(i), 0, &scalar).ok()) {
      return tensorflow::errors::InvalidArgument(op, ": input ", i,
                                                 " must be a scalar, got shape ",
                                                 c->DebugString(c->input(i)));
    }
  }
  return absl::OkStatus();
}

absl::Status SgdShape(InferenceContext* c) {
  return UpdateShape(c, "FixedApplySgd", 2, "momentums");  // var, grad
}

absl::Status AdamShape(InferenceContext* c) {
  return UpdateShape(c, "FixedApplyAdam", 4, "vhat");  // var, m, v, grad
}

}  // namespace

REGISTER_OP("FixedApplySgd")
    .Input("var: N * resource")
    .Input("momentums: M * resource")
    .Input("grad: N * float")
    .Input("loss_scale: float")
    .Input("all_finite: bool")
    .Input("clip: float")
    .Input("lr: float")
    .Input("momentum: float")
    .Input("weight_decay: float")
    .Input("weight_decay_lr: float")
    .Attr("N: int >= 0")
    .Attr("M: int >= 0")
    .Attr("nesterov: bool = false")
    .Attr("decay: list(bool) = []")
    .Attr("scalar_factors_first: bool = true")
    .SetIsStateful()
    .SetShapeFn(SgdShape)
    .Doc(R"doc(
Keras 3's SGD step on every variable, from the scaled gradients, in one pass.

Where `all_finite` is false nothing is written. Else, for each element, in
float32 with every op rounded once (no fused multiply-add):
  g = (grad * (1 / loss_scale)) * clip       (FixedUnscaleGrads' reciprocal)
  var = var - (var * weight_decay) * lr      (where decay[i]; Keras's weight decay)
  M = 0:  var = var - g * lr
  M = N:  m = m * momentum - g * lr; var = var + m
          nesterov: var = var + (m * momentum - g * lr)
lr, momentum, weight_decay and clip are Keras's float32 values for this step.
var and momentums are float32 resource variables of grad's shapes, updated in
place; loss_scale is any positive, finite, normal float32.
scalar_factors_first: for a variable of rank >= 1, (var * weight_decay) * lr is
var * weight_decay_lr and (g * clip) * lr is g * (clip * lr), as Grappler's
arithmetic optimizer rewrites Keras's graph inside a tf.function
(weight_decay_lr: Keras's weight_decay * lr as that graph computes it); false:
left to right, as Keras runs eagerly.
)doc");

REGISTER_OP("FixedApplyAdam")
    .Input("var: N * resource")
    .Input("m: N * resource")
    .Input("v: N * resource")
    .Input("vhat: M * resource")
    .Input("grad: N * float")
    .Input("loss_scale: float")
    .Input("all_finite: bool")
    .Input("clip: float")
    .Input("lr: float")
    .Input("alpha: float")
    .Input("one_minus_beta_1: float")
    .Input("one_minus_beta_2: float")
    .Input("epsilon: float")
    .Input("weight_decay: float")
    .Input("weight_decay_lr: float")
    .Attr("N: int >= 0")
    .Attr("M: int >= 0")
    .Attr("decay: list(bool) = []")
    .Attr("scalar_factors_first: bool = true")
    .SetIsStateful()
    .SetShapeFn(AdamShape)
    .Doc(R"doc(
Keras 3's Adam (AdamW) step on every variable, from the scaled gradients, in one pass.

Where `all_finite` is false nothing is written. Else, for each element, in
float32 with every op rounded once (no fused multiply-add):
  g = (grad * (1 / loss_scale)) * clip
  var = var - (var * weight_decay) * lr      (where decay[i])
  m = m + (g - m) * one_minus_beta_1
  v = v + (g * g - v) * one_minus_beta_2
  M = N (amsgrad): vhat = max(vhat, v), used for v below
  var = var - (m * alpha) / (sqrt(v) + epsilon)
alpha is Keras's lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) for this step.
scalar_factors_first: as FixedApplySgd's (the weight decay's product).
)doc");

}  // namespace fixed_loss_scale
