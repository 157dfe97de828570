// Element math shared by every kernel of this library: "x * factor in the op's
// math type, rounded once to the storage type".
//
// This header needs only tensor_span.h (no TensorFlow, no Eigen, no CUDA header)
// so that the same code runs in the CPU core, in the CUDA kernel and in host-only
// tests built with plain g++. Half and bfloat16 are handled as raw 16-bit
// patterns; conversions are written out here rather than borrowed from Eigen or
// cuda_fp16.h so that CPU and GPU round bit-identically, NaN payloads included.
//
// NOTE [rounding]: half and bfloat16 are widened to float32 exactly, multiplied
// by a float32 factor and rounded once, to nearest-even, back to 16 bits. This
// is what TensorFlow's CPU Mul does for these types, and what numpy gives for
// `(x.astype(np.float32) * f).astype(np.float16)`. float32 uses the float32
// factor, float64 a float64 factor (see ScaleFactor).
//
// NOTE [NaN payloads]: x86 keeps the payload of a NaN operand (quietened) through
// a multiply; CUDA returns a canonical NaN. ScaleFloat/ScaleDouble return the
// quietened input NaN explicitly so both devices agree bit for bit with numpy.
// float16 keeps the top payload bits (as numpy and x86 F16C do); bfloat16 NaN
// becomes the canonical 0x7fc0 with the input's sign (as Eigen and ml_dtypes do).
#ifndef FIXED_LOSS_SCALE_CORE_SCALE_MATH_H_
#define FIXED_LOSS_SCALE_CORE_SCALE_MATH_H_

#include <cstdint>
#include <cstring>

#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {

template <typename To, typename From>
FLS_HOST_DEVICE To BitCast(From from) {
  static_assert(sizeof(To) == sizeof(From), "BitCast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// NOTE [device half conversions]: on a GPU the finite half -> float and the
// non-NaN float -> half conversions use the hardware's (cvt.f32.f16, exact;
// cvt.rn.f16.f32, round to nearest even, overflow to Inf, no flush: no .ftz),
// which give the same bits as the code below for those values; NaNs still take
// the code below, which keeps their payload (NOTE [NaN payloads]). The software
// conversions made float16 lists instruction-bound on an H200: 48% of a
// device copy against 92% for float32 (docs/GPU.md, "Measured on an H200").
// FLS_GPU_SOFTWARE_HALF builds the software path on the device too (the GPU
// check compares both against the CPU kernels on every half pattern).
FLS_HOST_DEVICE float HalfBitsToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__) && !defined(FLS_GPU_SOFTWARE_HALF)
  if ((h & 0x7c00u) != 0x7c00u) {
    float widened;
    asm("cvt.f32.f16 %0, %1;" : "=f"(widened) : "h"(h));
    return widened;
  }
#endif
  const uint32_t kShiftedExponent = 0x7c00u << 13;
  uint32_t bits = (h & 0x7fffu) << 13;
  const uint32_t exponent = kShiftedExponent & bits;
  bits += (127 - 15) << 23;
  if (exponent == kShiftedExponent) {
    bits += (128 - 16) << 23;  // Inf or NaN: payload kept.
  } else if (exponent == 0) {
    // Subnormal half: renormalise with one exact float subtraction. Both
    // operands and the result are normal floats, so flush-to-zero modes (which
    // TensorFlow turns on in its CPU threads) do not affect it.
    bits += 1u << 23;
    bits = BitCast<uint32_t>(BitCast<float>(bits) - BitCast<float>(113u << 23));
  }
  bits |= static_cast<uint32_t>(h & 0x8000u) << 16;
  return BitCast<float>(bits);
}

FLS_HOST_DEVICE uint16_t FloatToHalfBits(float value) {
  uint32_t bits = BitCast<uint32_t>(value);
#if defined(__CUDA_ARCH__) && !defined(FLS_GPU_SOFTWARE_HALF)
  if ((bits & 0x7fffffffu) <= 0x7f800000u) {  // not NaN: NOTE [device half conversions]
    uint16_t rounded;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(rounded) : "f"(value));
    return rounded;
  }
#endif
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint16_t out;
  if (bits >= ((127u + 16u) << 23)) {
    // Overflow to Inf; NaN keeps its top payload bits and is made quiet (the
    // same as x86 F16C and numpy).
    out = bits > 0x7f800000u
              ? static_cast<uint16_t>(0x7e00u | ((bits & 0x7fffffu) >> 13))
              : static_cast<uint16_t>(0x7c00u);
  } else if (bits < (113u << 23)) {
    // Result is subnormal or zero: adding this magic number aligns the ten
    // mantissa bits at the bottom, and the float addition rounds to nearest
    // even for us.
    const uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const float sum = BitCast<float>(bits) + BitCast<float>(kDenormMagic);
    out = static_cast<uint16_t>(BitCast<uint32_t>(sum) - kDenormMagic);
  } else {
    const uint32_t mantissa_odd = (bits >> 13) & 1u;
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;  // rebias, round
    bits += mantissa_odd;                                       // ties to even
    out = static_cast<uint16_t>(bits >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

FLS_HOST_DEVICE float BFloat16BitsToFloat(uint16_t b) {
  return BitCast<float>(static_cast<uint32_t>(b) << 16);
}

FLS_HOST_DEVICE uint16_t FloatToBFloat16Bits(float value) {
  const uint32_t bits = BitCast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // NaN: the canonical quiet NaN with the input's sign, as Eigen and
    // ml_dtypes (numpy's bfloat16) produce.
    return static_cast<uint16_t>(((bits >> 16) & 0x8000u) | 0x7fc0u);
  }
  const uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);  // ties to even
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// The IEEE binary32 and binary64 layouts, for the float32 and float64 math
// below, which is written once over the type. Only these two specialisations
// exist.
template <typename T>
struct FloatLayout;

template <>
struct FloatLayout<float> {
  using Bits = uint32_t;
  static constexpr Bits kSign = 0x80000000u;
  static constexpr Bits kMagnitude = 0x7fffffffu;
  static constexpr Bits kExponent = 0x7f800000u;    // all ones: Inf; above: NaN
  static constexpr Bits kQuietBit = 0x00400000u;    // the top mantissa bit
  static constexpr Bits kMinNormal = 0x00800000u;   // FLT_MIN
  // For ScaleFloatingFlushed: the power of two that brings a product at or
  // below the smallest normal into the normal range, and that normal scaled.
  static constexpr float kUnboundedScale = 0x1p64f;
  static constexpr float kScaledMinNormal = 0x1p-126f * kUnboundedScale;  // 2^-62
};

template <>
struct FloatLayout<double> {
  using Bits = uint64_t;
  static constexpr Bits kSign = 0x8000000000000000ull;
  static constexpr Bits kMagnitude = 0x7fffffffffffffffull;
  static constexpr Bits kExponent = 0x7ff0000000000000ull;
  static constexpr Bits kQuietBit = 0x0008000000000000ull;
  static constexpr Bits kMinNormal = 0x0010000000000000ull;  // DBL_MIN
  static constexpr double kUnboundedScale = 0x1p128;
  static constexpr double kScaledMinNormal = 0x1p-1022 * kUnboundedScale;  // 2^-894
};

// Whether `bits` of a T are a NaN, and that NaN made quiet (payload kept).
template <typename T>
FLS_HOST_DEVICE bool IsNaNBits(typename FloatLayout<T>::Bits bits) {
  return (bits & FloatLayout<T>::kMagnitude) > FloatLayout<T>::kExponent;
}

template <typename T>
FLS_HOST_DEVICE T QuietNaN(typename FloatLayout<T>::Bits bits) {
  return BitCast<T>(bits | FloatLayout<T>::kQuietBit);
}

// x * factor with the input NaN returned (quietened) as-is: see NOTE [NaN payloads].
template <typename T>
FLS_HOST_DEVICE T ScaleFloating(T x, T factor) {
  const typename FloatLayout<T>::Bits bits = BitCast<typename FloatLayout<T>::Bits>(x);
  if (IsNaNBits<T>(bits)) return QuietNaN<T>(bits);
  return x * factor;
}

FLS_HOST_DEVICE float ScaleFloat(float x, float factor) { return ScaleFloating(x, factor); }
FLS_HOST_DEVICE double ScaleDouble(double x, double factor) { return ScaleFloating(x, factor); }

// NOTE [flush to zero in software]: TensorFlow runs its CPU kernels with the
// x86 MXCSR flush-to-zero and denormals-are-zero bits set, so the float32 and
// float64 multiplies above see a subnormal input as zero of the same sign, and
// return zero with the product's sign for a tiny result. x86 detects tininess
// after rounding: the exact product is rounded to the type's precision as if
// the exponent range were unbounded, and flushed if that is below the smallest
// normal (so a product just under it that rounds up to it survives, while one
// that IEEE arithmetic rounds up to it from further below is flushed).
// The *Flushed functions below give those results in IEEE arithmetic, with no
// floating-point mode: the GPU kernel has no float64 flush mode, and nvcc's
// -ftz does not promise x86's tininess rule. The GPU kernel uses them so its
// results are bit-identical to the CPU kernels' inside TensorFlow. They must
// themselves run with FTZ/DAZ off (the GPU default without --use_fast_math).

// A subnormal as zero of the same sign (DAZ).
template <typename T>
FLS_HOST_DEVICE T FlushSubnormal(T x) {
  using Layout = FloatLayout<T>;
  const typename Layout::Bits bits = BitCast<typename Layout::Bits>(x);
  return (bits & Layout::kExponent) == 0 ? BitCast<T>(bits & Layout::kSign) : x;
}

// ScaleFloating as the CPU computes it under FTZ/DAZ.
template <typename T>
FLS_HOST_DEVICE T ScaleFloatingFlushed(T x, T factor) {
  using Layout = FloatLayout<T>;
  using Bits = typename Layout::Bits;
  const Bits bits = BitCast<Bits>(x);
  if (IsNaNBits<T>(bits)) return QuietNaN<T>(bits);
  x = FlushSubnormal(x);
  factor = FlushSubnormal(factor);
  const T product = x * factor;
  const Bits product_bits = BitCast<Bits>(product);
  if ((product_bits & Layout::kMagnitude) > Layout::kMinNormal) return product;
  // |product| <= the smallest normal. Rounded with an unbounded exponent the
  // product is (x * 2^64) * factor / 2^64: with factor 0 or normal, |x| <= 1
  // here, so x * 2^64 is exact and the scaled product a normal number rounded
  // once (float; 2^128 for double).
  const T scaled = (x * Layout::kUnboundedScale) * factor;
  const Bits scaled_magnitude = BitCast<Bits>(scaled) & Layout::kMagnitude;
  if (scaled_magnitude < BitCast<Bits>(Layout::kScaledMinNormal)) {
    return BitCast<T>(product_bits & Layout::kSign);
  }
  return product;
}

FLS_HOST_DEVICE float ScaleFloatFlushed(float x, float f) { return ScaleFloatingFlushed(x, f); }
FLS_HOST_DEVICE double ScaleDoubleFlushed(double x, double f) { return ScaleFloatingFlushed(x, f); }

// Half and bfloat16, widened exactly and scaled in float32 (NOTE [rounding]):
// with the hardware's floating-point mode (ScaleFloat), or as the CPU computes
// it under FTZ/DAZ, in IEEE arithmetic (kFlushed: ScaleFloatFlushed).
template <bool kFlushed = false>
FLS_HOST_DEVICE uint16_t ScaleHalfBits(uint16_t h, float factor) {
  const float x = HalfBitsToFloat(h);
  return FloatToHalfBits(kFlushed ? ScaleFloatFlushed(x, factor) : ScaleFloat(x, factor));
}

template <bool kFlushed = false>
FLS_HOST_DEVICE uint16_t ScaleBFloat16Bits(uint16_t b, float factor) {
  const float x = BFloat16BitsToFloat(b);
  return FloatToBFloat16Bits(kFlushed ? ScaleFloatFlushed(x, factor) : ScaleFloat(x, factor));
}

FLS_HOST_DEVICE uint16_t ScaleHalfBitsFlushed(uint16_t h, float factor) {
  return ScaleHalfBits<true>(h, factor);
}

FLS_HOST_DEVICE uint16_t ScaleBFloat16BitsFlushed(uint16_t b, float factor) {
  return ScaleBFloat16Bits<true>(b, factor);
}

// Whether a stored element is finite: its exponent field is not all ones. Read
// from the bits, so no floating-point mode (FTZ/DAZ) and no NaN payload changes
// the answer; subnormals and the largest finite values are finite.
FLS_HOST_DEVICE bool IsFiniteHalfBits(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
FLS_HOST_DEVICE bool IsFiniteBFloat16Bits(uint16_t b) { return (b & 0x7f80u) != 0x7f80u; }

template <typename T>
FLS_HOST_DEVICE bool IsFiniteFloating(T x) {
  using Layout = FloatLayout<T>;
  return (BitCast<typename Layout::Bits>(x) & Layout::kExponent) != Layout::kExponent;
}

FLS_HOST_DEVICE bool IsFiniteFloat(float x) { return IsFiniteFloating(x); }
FLS_HOST_DEVICE bool IsFiniteDouble(double x) { return IsFiniteFloating(x); }

// The square of a stored half or bfloat16 element, widened exactly to float32
// (a half's square is exact in float32; a bfloat16's too unless it overflows
// to Inf or underflows): the terms of a sum of squares. float32 and float64
// elements are squared in their own type (x * x).
FLS_HOST_DEVICE float SquareOfHalfBits(uint16_t h) {
  const float x = HalfBitsToFloat(h);
  return x * x;
}

FLS_HOST_DEVICE float SquareOfBFloat16Bits(uint16_t b) {
  const float x = BFloat16BitsToFloat(b);
  return x * x;
}

// The float32 bits of a check's sum_of_squares when it was not asked for: a
// quiet NaN, so that a caller who reads it anyway gets no plausible number.
// The same bits on every device.
constexpr uint32_t kNotComputedBits = 0x7fc00000u;

// Scales element `i` of a tensor stored as `dtype`, in place when `in` and `out`
// alias: with the hardware's floating-point mode (kFlushed false), or as the
// CPU computes it under FTZ/DAZ, in IEEE arithmetic (kFlushed true).
template <bool kFlushed>
FLS_HOST_DEVICE void ScaleElementAs(DType dtype, const void* in, void* out, int64_t i,
                                    ScaleFactor factor) {
  switch (dtype) {
    case DType::kHalf: {
      const uint16_t x = static_cast<const uint16_t*>(in)[i];
      static_cast<uint16_t*>(out)[i] = ScaleHalfBits<kFlushed>(x, factor.f);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t x = static_cast<const uint16_t*>(in)[i];
      static_cast<uint16_t*>(out)[i] = ScaleBFloat16Bits<kFlushed>(x, factor.f);
      break;
    }
    case DType::kFloat: {
      const float x = static_cast<const float*>(in)[i];
      static_cast<float*>(out)[i] =
          kFlushed ? ScaleFloatFlushed(x, factor.f) : ScaleFloat(x, factor.f);
      break;
    }
    case DType::kDouble: {
      const double x = static_cast<const double*>(in)[i];
      static_cast<double*>(out)[i] =
          kFlushed ? ScaleDoubleFlushed(x, factor.d) : ScaleDouble(x, factor.d);
      break;
    }
  }
}

FLS_HOST_DEVICE void ScaleElement(DType dtype, const void* in, void* out, int64_t i,
                                  ScaleFactor factor) {
  ScaleElementAs<false>(dtype, in, out, i, factor);
}

FLS_HOST_DEVICE void ScaleElementFlushed(DType dtype, const void* in, void* out, int64_t i,
                                         ScaleFactor factor) {
  ScaleElementAs<true>(dtype, in, out, i, factor);
}

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_SCALE_MATH_H_
