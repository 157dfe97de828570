// The element math of the GPU kernel body per dtype: how a launch scales one
// element, and one 16-byte pack of elements, with the CPU kernels' bits
// (scale_math.h's *Flushed functions: FTZ/DAZ as TensorFlow runs the CPU
// kernels, in the GPU's IEEE arithmetic), and what a checked launch reads off
// the scaled values. Plain C++ like the rest of the body: on the host (the
// host emulation) every hardware conversion below is replaced by scale_math.h's
// software one, which gives the same bits for the values it is used on.
//
// NOTE [paired 16-bit path]: a float16 or bfloat16 pack (8 elements) is
// scaled two elements to a 32-bit word, with hardware conversions, and falls
// back to the per-element functions of scale_math.h only for the packs that
// need them:
//   * float16: a NaN keeps its payload (NOTE [NaN payloads]), which no
//     hardware conversion does; one test on the four words finds whether the
//     pack holds one (the lanes' magnitudes plus 0x03ff carry into bit 15
//     exactly for NaNs, and never into the next lane). Every other pack is
//     cvt.f32.f16, one float multiply and cvt.rn.f16x2.f32 (sm_80+; two
//     cvt.rn.f16.f32 before) per pair: a float16 widened to float is never
//     float-subnormal (no DAZ to emulate), and a product at or below FLT_MIN
//     rounds to a float16 zero of the product's sign whether or not it is
//     flushed first (no FTZ to emulate);
//   * bfloat16: widened by a shift; DAZ matters (a bfloat16 can be
//     float-subnormal), so an input with a zero exponent gives the zero of its
//     sign, and FTZ matters, so a pack with a product at or below FLT_MIN (or
//     a NaN, whose product fails that test too) takes the per-element path;
//     the rest round with cvt.rn.bf16x2.f32 (sm_80+; the integer rounding of
//     FloatToBFloat16Bits before);
//   * both need a normal factor, else the pack takes the per-element path;
//   * a checked launch tests two lanes a word for Inf or NaN the same way
//     (exponent all ones: the magnitude plus 0x0400, 0x0080 for bfloat16,
//     carries into bit 15) and or-s the words, one test per thread at the end.
// The float16 path was instruction-bound at 56% of a device copy on an H200
// with the per-element functions (docs/GPU.md).
#ifndef FIXED_LOSS_SCALE_CORE_GPU_ELEMENT_MATH_H_
#define FIXED_LOSS_SCALE_CORE_GPU_ELEMENT_MATH_H_

#include <cstdint>
#include <cstring>

#include "tf_ops/core/gpu/device_memory.h"
#include "tf_ops/core/scale_math.h"

namespace fixed_loss_scale {
namespace gpu {

// ---- Two 16-bit lanes in a 32-bit word (lane 0 in the low half) ------------------
// The lanes of `word` whose magnitude is at least `limit` (a 16-bit magnitude
// below 0x8000), as bit 15 of each lane: magnitude + (0x8000 - limit) carries
// into bit 15 exactly then, and never into the next lane.
template <uint32_t kLimit>
FLS_HOST_DEVICE uint32_t LanesAtLeast(uint32_t word) {
  constexpr uint32_t kAdd = (0x8000u - kLimit) * 0x00010001u;
  return ((word & 0x7fff7fffu) + kAdd) & 0x80008000u;
}

// float16 lanes that are NaN (magnitude above 0x7c00), Inf or NaN (0x7c00 and
// up); bfloat16 lanes that are Inf or NaN (0x7f80 and up).
FLS_HOST_DEVICE uint32_t HalfNaNLanes(uint32_t word) { return LanesAtLeast<0x7c01u>(word); }
FLS_HOST_DEVICE uint32_t HalfNotFiniteLanes(uint32_t word) { return LanesAtLeast<0x7c00u>(word); }
FLS_HOST_DEVICE uint32_t BFloat16NotFiniteLanes(uint32_t word) {
  return LanesAtLeast<0x7f80u>(word);
}

// A float16 that is not a NaN, widened (exact).
FLS_HOST_DEVICE float HalfNotNaNToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float widened;
  asm("cvt.f32.f16 %0, %1;" : "=f"(widened) : "h"(h));
  return widened;
#else
  return HalfBitsToFloat(h);
#endif
}

// Two floats that are not NaN, each rounded to nearest even: float16 lanes
// {lo, hi}.
FLS_HOST_DEVICE uint32_t FloatsToHalfPair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t pair;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(pair) : "f"(hi), "f"(lo));
  return pair;
#elif defined(__CUDA_ARCH__)
  uint16_t lo_bits, hi_bits;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(lo_bits) : "f"(lo));
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(hi_bits) : "f"(hi));
  return static_cast<uint32_t>(lo_bits) | static_cast<uint32_t>(hi_bits) << 16;
#else
  return static_cast<uint32_t>(FloatToHalfBits(lo)) |
         static_cast<uint32_t>(FloatToHalfBits(hi)) << 16;
#endif
}

// A float that is not NaN rounded to nearest even bfloat16, in the high half
// (FloatToBFloat16Bits without its NaN case).
FLS_HOST_DEVICE uint32_t RoundToBFloat16High(float value) {
  const uint32_t bits = BitCast<uint32_t>(value);
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
}

// Two floats that are not NaN, each rounded to nearest even: bfloat16 lanes
// {lo, hi}.
FLS_HOST_DEVICE uint32_t FloatsToBFloat16Pair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t pair;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(pair) : "f"(hi), "f"(lo));
  return pair;
#else
  return RoundToBFloat16High(lo) >> 16 | RoundToBFloat16High(hi);
#endif
}

// Whether the paired path may scale by `factor`: a normal float (a product
// of two normals is never NaN, and there is no factor to flush).
FLS_HOST_DEVICE bool IsPairedFactor(float factor) {
  return factor >= 0x1p-126f && factor <= 0x1.fffffep127f;
}

// The smallest bfloat16 magnitude (exponent field << 7) whose product with
// `factor`, a normal float, is above FLT_MIN whatever its mantissa: with
// factor = (1 + m) 2^(e - 127), the exponent fields above 128 - e, and 128 - e
// itself when m > 0. Products of these are what the *Flushed functions return
// unflushed.
FLS_HOST_DEVICE uint32_t BFloat16PairedFloor(float factor) {
  const uint32_t bits = BitCast<uint32_t>(factor);
  const int exponent = static_cast<int>(bits >> 23);
  const int lowest = (bits & 0x7fffffu) == 0 ? 129 - exponent : 128 - exponent;
  return static_cast<uint32_t>(lowest < 1 ? 1 : lowest > 255 ? 255 : lowest) << 7;
}

// The bfloat16 lanes the paired path leaves to the per-element one (bit 15
// of a lane): a NaN (its sign and payload), and a non-zero magnitude below
// `floor` (a subnormal, which DAZ flushes, or a product FTZ may flush). A zero
// scales to the zero of its sign either way.
FLS_HOST_DEVICE uint32_t BFloat16PerElementLanes(uint32_t word, uint32_t floor) {
  const uint32_t magnitude = word & 0x7fff7fffu;
  const uint32_t not_zero = magnitude + 0x7fff7fffu;
  const uint32_t at_floor = magnitude + (0x8000u - floor) * 0x00010001u;
  return ((not_zero & ~at_floor) | LanesAtLeast<0x7f81u>(word)) & 0x80008000u;
}

// ---- Per dtype -------------------------------------------------------------------
// Scale: one element (head, tail, unpacked tensors, and packs the paired path
// leaves). ScalePack: one 16-byte pack. NotFiniteLanes: the pack test of a
// checked launch (bit 15 of a lane of a 32-bit word, or the bool widened).
// Widen: a scaled value exactly in Sum, the type a thread sums squares in.
template <DType kDType>
struct Element;

// Half, bfloat16 and float32 scale by the float32 factor and sum in float.
struct FloatFactor {
  using Factor = float;
  using Sum = float;
  static FLS_HOST_DEVICE float FactorOf(ScaleFactor factor) { return factor.f; }
};

// float32 and float64: a pack is its lanes, one by one.
template <typename E>
FLS_HOST_DEVICE void ScaleLanes(Pack<typename E::Storage>& pack, typename E::Factor factor) {
  FLS_UNROLL
  for (int lane = 0; lane < Pack<typename E::Storage>::kLanes; ++lane) {
    pack.SetLane(lane, E::Scale(pack.Lane(lane), factor));
  }
}

// float16 and bfloat16: a pack takes the paired path (ScalePairs) when
// IsPaired says that gives the per-element path's bits.
template <typename E>
struct PairedElement : FloatFactor {
  using Storage = uint16_t;
  static constexpr bool kPaired = true;
  static FLS_HOST_DEVICE void ScalePack(Pack<uint16_t>& pack, float factor) {
    if (!E::IsPaired(pack, factor)) return ScaleLanes<E>(pack, factor);
    E::ScalePairs(pack, factor);
  }
};

template <>
struct Element<DType::kHalf> : PairedElement<Element<DType::kHalf>> {
  static FLS_HOST_DEVICE uint16_t Scale(uint16_t x, float factor) {
    return ScaleHalfBitsFlushed(x, factor);
  }
  // Whether the paired path gives `pack` the per-element path's bits: no NaN.
  static FLS_HOST_DEVICE bool IsPaired(const Pack<uint16_t>& pack, float factor) {
    uint32_t nan_lanes = 0;
    FLS_UNROLL
    for (int i = 0; i < 4; ++i) nan_lanes |= HalfNaNLanes(pack.words[i]);
    return nan_lanes == 0 && IsPairedFactor(factor);
  }
  static FLS_HOST_DEVICE void ScalePairs(Pack<uint16_t>& pack, float factor) {
    FLS_UNROLL
    for (int i = 0; i < 4; ++i) {
      const uint32_t word = pack.words[i];
      pack.words[i] = FloatsToHalfPair(HalfNotNaNToFloat(static_cast<uint16_t>(word)) * factor,
                                       HalfNotNaNToFloat(static_cast<uint16_t>(word >> 16)) * factor);
    }
  }
  static FLS_HOST_DEVICE uint32_t NotFiniteLanes(uint32_t word) { return HalfNotFiniteLanes(word); }
  // For the square only, so on a GPU the hardware conversion of every
  // pattern: exact for finite values, and an Inf or NaN makes the sum Inf or
  // NaN whatever its payload.
  static FLS_HOST_DEVICE float Widen(uint16_t y) { return HalfNotNaNToFloat(y); }
};

template <>
struct Element<DType::kBFloat16> : PairedElement<Element<DType::kBFloat16>> {
  static FLS_HOST_DEVICE uint16_t Scale(uint16_t x, float factor) {
    return ScaleBFloat16BitsFlushed(x, factor);
  }
  // Whether the paired path gives `pack` the per-element path's bits.
  static FLS_HOST_DEVICE bool IsPaired(const Pack<uint16_t>& pack, float factor) {
    const uint32_t floor = BFloat16PairedFloor(factor);
    uint32_t per_element_lanes = 0;
    FLS_UNROLL
    for (int i = 0; i < 4; ++i) per_element_lanes |= BFloat16PerElementLanes(pack.words[i], floor);
    return per_element_lanes == 0 && IsPairedFactor(factor);
  }
  static FLS_HOST_DEVICE void ScalePairs(Pack<uint16_t>& pack, float factor) {
    FLS_UNROLL
    for (int i = 0; i < 4; ++i) {
      const uint32_t word = pack.words[i];
      pack.words[i] = FloatsToBFloat16Pair(BitCast<float>(word << 16) * factor,
                                           BitCast<float>(word & 0xffff0000u) * factor);
    }
  }
  static FLS_HOST_DEVICE uint32_t NotFiniteLanes(uint32_t word) {
    return BFloat16NotFiniteLanes(word);
  }
  static FLS_HOST_DEVICE float Widen(uint16_t y) { return BFloat16BitsToFloat(y); }
};

template <>
struct Element<DType::kFloat> : FloatFactor {
  using Storage = float;
  static constexpr bool kPaired = false;
  static FLS_HOST_DEVICE float Scale(float x, float factor) { return ScaleFloatFlushed(x, factor); }
  static FLS_HOST_DEVICE void ScalePack(Pack<float>& pack, float factor) {
    ScaleLanes<Element>(pack, factor);
  }
  static FLS_HOST_DEVICE bool NotFinite(float y) { return !IsFiniteFloat(y); }
  static FLS_HOST_DEVICE float Widen(float y) { return y; }
};

template <>
struct Element<DType::kDouble> {
  using Storage = double;
  using Sum = double;
  using Factor = double;
  static constexpr bool kPaired = false;
  static FLS_HOST_DEVICE double FactorOf(ScaleFactor factor) { return factor.d; }
  static FLS_HOST_DEVICE double Scale(double x, double factor) {
    return ScaleDoubleFlushed(x, factor);
  }
  static FLS_HOST_DEVICE void ScalePack(Pack<double>& pack, double factor) {
    ScaleLanes<Element>(pack, factor);
  }
  static FLS_HOST_DEVICE bool NotFinite(double y) { return !IsFiniteDouble(y); }
  static FLS_HOST_DEVICE double Widen(double y) { return y; }
};

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_ELEMENT_MATH_H_
