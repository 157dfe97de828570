// The errors that reject a loss scale, one definition for the shape functions
// (tf_ops/tf/ops: when the op is added to a graph) and the kernels
// (tf_ops/tf/kernels: when it runs), so that both say the same thing. Each
// names the op (when `op` is not empty), the argument and the value.
#ifndef FIXED_LOSS_SCALE_TF_LOSS_SCALE_ERRORS_H_
#define FIXED_LOSS_SCALE_TF_LOSS_SCALE_ERRORS_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace fixed_loss_scale {

// "Op: " or nothing.
inline std::string OpPrefix(absl::string_view op) {
  return op.empty() ? std::string() : absl::StrCat(op, ": ");
}

// The loss_scale attr outside NOTE [loss scale range] (tf_ops/core/tensor_span.h).
inline absl::Status InvalidLossScaleAttr(absl::string_view op, float value) {
  return absl::InvalidArgumentError(absl::StrCat(
      OpPrefix(op), "loss_scale must be finite, >= 1 and <= 2^126, got ", value));
}

// `value` widened to double from its bits. Widened by the hardware on a thread
// with denormals-are-zero on (TensorFlow's CPU threads), a float32 subnormal
// would read, and print, as 0.
inline double WidenedFromBits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7f800000u) != 0) return value;  // normal, Inf or NaN: not flushed
  const double magnitude = static_cast<double>(bits & 0x7fffffu) * 0x1p-149;
  return (bits >> 31) != 0 ? -magnitude : magnitude;
}

// The loss_scale input's value outside NOTE [tensor loss scale range].
inline absl::Status InvalidTensorLossScale(absl::string_view op, float value) {
  return absl::InvalidArgumentError(
      absl::StrCat(OpPrefix(op),
                   "loss_scale must be a positive, finite, normal float32 (>= 2^-126), got ",
                   WidenedFromBits(value)));
}

// The loss_scale input not a scalar; `shape` as TensorFlow prints it.
inline absl::Status LossScaleNotScalar(absl::string_view op, absl::string_view shape) {
  return absl::InvalidArgumentError(
      absl::StrCat(OpPrefix(op), "loss_scale must be a scalar, got shape ", shape));
}

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TF_LOSS_SCALE_ERRORS_H_
