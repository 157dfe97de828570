// The vocabulary every layer of this library shares, and the constants that
// more than one layer must agree on: a tensor as a span (TensorSpan), its
// storage type (DType), the multiplier in both precisions (ScaleFactor), the
// range of a valid loss scale, and the x86 flush-to-zero bits TensorFlow's CPU
// threads run with.
//
// Like everything under tf_ops/core/ it includes no TensorFlow, Eigen or CUDA
// header: the CPU core, the CUDA kernel body and launcher, and the host-only
// tests build with g++ or nvcc alone. The op registration and the OpKernels
// (tf_ops/tf/) and the Python package (through the C API, c_api.h) read
// these definitions instead of restating them.
#ifndef FIXED_LOSS_SCALE_CORE_TENSOR_SPAN_H_
#define FIXED_LOSS_SCALE_CORE_TENSOR_SPAN_H_

#include <cstdint>

#if defined(__CUDACC__)
#define FLS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLS_HOST_DEVICE inline
#endif

namespace fixed_loss_scale {

// Storage types a kernel sees. The numbering is part of the GPU chunk table and
// of the C API (fls_dtype_code), which is how Python tests learn it.
enum class DType : uint8_t { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };
constexpr int kNumDTypes = 4;

FLS_HOST_DEVICE int64_t DTypeSize(DType dtype) {
  return dtype == DType::kDouble ? 8 : dtype == DType::kFloat ? 4 : 2;
}

// TensorFlow's names for the four types ("half", not "float16"), indexed by
// the DType's code.
constexpr const char* kDTypeNames[] = {"half", "bfloat16", "float", "double"};
static_assert(sizeof(kDTypeNames) / sizeof(kDTypeNames[0]) == kNumDTypes,
              "one name per DType");

inline const char* DTypeName(DType dtype) {
  const int code = static_cast<int>(dtype);
  return code < kNumDTypes ? kDTypeNames[code] : "unknown";
}

// The multiplier, in both precisions: float32 for half/bfloat16/float32,
// float64 for float64. For FixedUnscaleGrads, `f` is `1.0f / loss_scale` and `d`
// is `1.0 / double(loss_scale)`; for FixedScaleLoss both are the scale itself.
struct ScaleFactor {
  float f;
  double d;
};

FLS_HOST_DEVICE ScaleFactor ScaleFactorFor(float multiplier) {
  return ScaleFactor{multiplier, static_cast<double>(multiplier)};
}

FLS_HOST_DEVICE ScaleFactor ReciprocalFactorFor(float loss_scale) {
  return ScaleFactor{1.0f / loss_scale, 1.0 / static_cast<double>(loss_scale)};
}

// One tensor of a list: out[i] = in[i] * factor for i < num_elements. `in` and
// `out` are host pointers for the CPU core and device pointers for the GPU
// launcher, aligned to the element size; they are either the same buffer (in
// place) or do not overlap.
struct TensorSpan {
  const void* in;
  void* out;
  int64_t num_elements;
  DType dtype;
};

// NOTE [loss scale range]: a loss scale is finite and in [1, 2^126]. Above
// 2^126 its float32 reciprocal is subnormal, which TensorFlow's CPU threads
// flush to zero (kMxcsrFtzDaz): every gradient would silently become 0 and Inf
// would become NaN. The op registration, the kernels and the Python wrappers all
// check against these two constants.
constexpr float kMinLossScale = 1.0f;
constexpr float kMaxLossScale = 0x1p126f;

inline bool IsValidLossScale(float loss_scale) {
  // NaN fails both comparisons; +Inf fails the second.
  return loss_scale >= kMinLossScale && loss_scale <= kMaxLossScale;
}

// NOTE [tensor loss scale range]: FixedUnscaleGradsAndCheck, FixedCheckGrads
// and FixedUnscaleGradsByTensor take their scale as a tensor, so that a
// dynamic scale drives them, and a dynamic scale leaves [1, 2^126]: TF's
// DynamicLossScale doubles up to float32's largest value, Keras 3's halves
// without a floor. The ops therefore accept any positive, finite, normal
// float32 and compute what TensorFlow's own arithmetic
// (`g * (1 / scale)`) computes on the CPU: below 1 the factor exceeds 1 (an
// unscaled value may overflow, and the check, which reads the outputs, says
// so); above 2^126 the float32 factor is subnormal, which TensorFlow's CPU
// threads flush to zero, and so does TensorReciprocalFactorFor on every
// device. Zero, negative, subnormal, Inf and NaN scales are refused: their
// reciprocals would depend on the thread's floating-point mode, and no
// algorithm produces them but after ~140 overflowing steps in a row.
inline bool IsValidTensorLossScale(float loss_scale) {
  // NaN fails the first comparison; +Inf the second.
  return loss_scale >= 0x1p-126f && loss_scale <= 0x1.fffffep127f;
}

// The factors of a tensor scale (NOTE [tensor loss scale range]): those of
// ReciprocalFactorFor, the float32 one flushed to zero when subnormal, as
// under x86 FTZ (tininess after rounding: 1/scale is flushed iff the float32
// quotient is below 2^-126), whatever the calling thread's mode.
inline ScaleFactor TensorReciprocalFactorFor(float loss_scale) {
  ScaleFactor factor = ReciprocalFactorFor(loss_scale);
  if (factor.f < 0x1p-126f) factor.f = 0.0f;
  return factor;
}

// The x86 MXCSR bits TensorFlow sets in its CPU threads: flush-to-zero (bit 15)
// and denormals-are-zero (bit 6). See NOTE [flush to zero in software] in
// scale_math.h for what they do to the element math.
constexpr unsigned int kMxcsrFtzDaz = 0x8040u;

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_TENSOR_SPAN_H_
