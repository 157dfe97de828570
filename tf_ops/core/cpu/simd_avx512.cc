// The AVX-512 path (F, BW, VL): ScaleLoop (scale_loop.h) over 512-bit
// registers, 16 floats each, with a masked remainder. Its bfloat16 loop rounds
// in integer lanes, the only way that gives the scalar results in IEEE mode;
// kAvx512Bf16Loops swaps in the convert loop of simd_avx512_bf16.cc.
#include "tf_ops/core/cpu/simd_loops.h"

#if defined(FLS_HAVE_X86_SIMD)

// GCC 12 reports its own _mm512_undefined_* helpers as maybe-uninitialized
// wherever they are inlined; the warning is about the compiler's header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "tf_ops/core/scale_math.h"

// NOTE [one target per translation unit] (scale_loop.h).
#define FLS_SIMD_TARGET __attribute__((target("avx2,f16c,fma,avx512f,avx512bw,avx512vl")))
#include "tf_ops/core/cpu/scale_loop.h"
#include "tf_ops/core/cpu/scale_traits.h"
// (after scale_loop.h, which defines FLS_SIMD_INLINE)
#include "tf_ops/core/cpu/avx512_ops.h"

namespace fixed_loss_scale {
namespace simd {

namespace {

constexpr PathLoops kLoops = PathLoopsOf<HalfTraits<Ops>, BFloat16Traits<Ops>,
                                         MultiplyTraits<float, Ops>, MultiplyTraits<double, Ops>>();

// kLoops with the bfloat16 loops of simd_avx512_bf16.cc.
constexpr PathLoops WithConvertLoops(PathLoops loops) {
  loops.bfloat16 = ScaleBFloat16ConvertLoop;
  loops.checked.bfloat16 = ScaleAndCheckBFloat16ConvertLoop;
  loops.checked_with_squares.bfloat16 = ScaleAndCheckBFloat16ConvertLoopWithSquares;
  loops.check_only.bfloat16 = CheckBFloat16ConvertLoop;
  loops.check_only_with_squares.bfloat16 = CheckBFloat16ConvertLoopWithSquares;
  return loops;
}

}  // namespace

extern const PathLoops kAvx512Loops = kLoops;
extern const PathLoops kAvx512Bf16Loops = WithConvertLoops(kLoops);

}  // namespace simd
}  // namespace fixed_loss_scale

#pragma GCC diagnostic pop
#endif  // FLS_HAVE_X86_SIMD
