// See multi_tensor_scale_cpu.h.
#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "tf_ops/core/cpu/simd_loops.h"
#include "tf_ops/core/scale_math.h"

namespace fixed_loss_scale {
namespace simd {
namespace {

// The element functions of one storage type (scale_math.h's), for the portable
// loops; the factor and the squares are float (double for double).
template <typename Bits, typename M, Bits (*kScale)(Bits, M), bool (*kFinite)(Bits),
          M (*kSquareOf)(Bits)>
struct Element {
  using T = Bits;
  using Multiplier = M;
  using Square = M;
  static T Scale(T x, M f) { return kScale(x, f); }
  static bool Finite(T y) { return kFinite(y); }
  static M SquareOf(T y) { return kSquareOf(y); }
};
template <typename T>
T Squared(T y) {
  return y * y;
}
using HalfElement =
    Element<uint16_t, float, ScaleHalfBits<>, IsFiniteHalfBits, SquareOfHalfBits>;
using BFloat16Element =
    Element<uint16_t, float, ScaleBFloat16Bits<>, IsFiniteBFloat16Bits, SquareOfBFloat16Bits>;
using FloatElement = Element<float, float, ScaleFloat, IsFiniteFloat, Squared<float>>;
using DoubleElement = Element<double, double, ScaleDouble, IsFiniteDouble, Squared<double>>;

// The portable loop: one tight loop per storage type, so the per-element
// switch of ScaleElement stays out of the hot path.
template <typename E>
void ScalarScale(const typename E::T* src, typename E::T* dst, int64_t n,
                 typename E::Multiplier f) {
  for (int64_t i = 0; i < n; ++i) dst[i] = E::Scale(src[i], f);
}

// The portable checked loop: the unchecked loop's outputs (stored unless
// !kStore), their finiteness and (kSumOfSquares) the sum of their squares in
// blocks of kSquaresPerFlush (NOTE [sum of squares] in scale_loop.h).
template <typename E, bool kSumOfSquares, bool kStore = true>
void ScalarChecked(const typename E::T* src, typename E::T* dst, int64_t n,
                   typename E::Multiplier f, ScaleCheck* check) {
  bool finite = true;
  double total = 0.0;
  for (int64_t begin = 0; begin < n; begin += kSquaresPerFlush) {
    const int64_t end = std::min<int64_t>(n, begin + kSquaresPerFlush);
    typename E::Square block = 0;
    for (int64_t i = begin; i < end; ++i) {
      const typename E::T y = E::Scale(src[i], f);
      if constexpr (kStore) dst[i] = y;
      finite &= E::Finite(y);
      if constexpr (kSumOfSquares) block += E::SquareOf(y);
    }
    total += block;
  }
  check->all_finite &= finite;
  if constexpr (kSumOfSquares) check->sum_of_squares += total;
}

// NOTE [check without store] (scale_loop.h).
template <typename E, bool kSumOfSquares>
void ScalarCheck(const typename E::T* src, int64_t n, typename E::Multiplier f,
                 ScaleCheck* check) {
  ScalarChecked<E, kSumOfSquares, false>(src, nullptr, n, f, check);
}

// The portable loops, for LoopTableOf.
struct ScalarLoops {
  template <typename E> static constexpr auto kScale = &ScalarScale<E>;
  template <typename E, bool kSq> static constexpr auto kChecked = &ScalarChecked<E, kSq>;
  template <typename E, bool kSq> static constexpr auto kCheckOnly = &ScalarCheck<E, kSq>;
};

}  // namespace

extern const PathLoops kScalarLoops =
    LoopTableOf<ScalarLoops, HalfElement, BFloat16Element, FloatElement, DoubleElement>();

#if defined(FLS_HAVE_X86_SIMD)
bool MxcsrFlushesSubnormals() { return (_mm_getcsr() & kMxcsrFtzDaz) == kMxcsrFtzDaz; }
#endif

}  // namespace simd

namespace {

using simd::PathLoops;

// The loops of `path` for the calling thread: on AVX-512, the bfloat16 loop
// depends on the thread's MXCSR (NOTE [bfloat16 convert]), read here once per
// call rather than once per tensor.
const PathLoops& LoopsFor(CpuPath path) {
#if defined(FLS_HAVE_X86_SIMD)
  if (path == CpuPath::kAvx512) {
    return simd::CpuHasAvx512Bf16() && simd::MxcsrFlushesSubnormals() ? simd::kAvx512Bf16Loops
                                                                       : simd::kAvx512Loops;
  }
  if (path == CpuPath::kAvx2) return simd::kAvx2Loops;
#endif
  return simd::kScalarLoops;
}

CpuPath BestSupportedPath() {
  if (CpuPathSupported(CpuPath::kAvx512)) return CpuPath::kAvx512;
  if (CpuPathSupported(CpuPath::kAvx2)) return CpuPath::kAvx2;
  return CpuPath::kScalar;
}

CpuPath ChoosePath() {
  CpuPath path = BestSupportedPath();
  const char* requested = std::getenv("FIXED_LOSS_SCALE_CPU_PATH");
  if (requested == nullptr) return path;
  for (CpuPath candidate : {CpuPath::kScalar, CpuPath::kAvx2, CpuPath::kAvx512}) {
    if (std::strcmp(requested, CpuPathName(candidate)) == 0 && CpuPathSupported(candidate) &&
        candidate < path) {
      path = candidate;
    }
  }
  return path;
}

// Runs `loop` over elements [first, first + n) of a span stored as T: a loop
// that writes out (ScaleLoop, ScaleAndCheckLoop) or one that only reads
// (CheckLoop); `rest` is the check's ScaleCheck*, if any.
template <typename T, typename Multiplier, typename... Rest>
void RunLoop(void (*loop)(const T*, T*, int64_t, Multiplier, Rest...), const TensorSpan& span,
             int64_t first, int64_t n, Multiplier multiplier, Rest... rest) {
  loop(static_cast<const T*>(span.in) + first, static_cast<T*>(span.out) + first, n, multiplier,
       rest...);
}
template <typename T, typename Multiplier, typename... Rest>
void RunLoop(void (*loop)(const T*, int64_t, Multiplier, Rest...), const TensorSpan& span,
             int64_t first, int64_t n, Multiplier multiplier, Rest... rest) {
  loop(static_cast<const T*>(span.in) + first, n, multiplier, rest...);
}

// Runs the loop of `loops` (a PathLoops, CheckedLoops or CheckOnlyLoops) for
// span's dtype over its elements [first, last).
template <typename Loops, typename... Rest>
void RunWith(const Loops& loops, const TensorSpan& span, int64_t first, int64_t last,
             ScaleFactor factor, Rest... rest) {
  if (first >= last) return;
  const int64_t n = last - first;
  switch (span.dtype) {
    case DType::kHalf:
      return RunLoop(loops.half, span, first, n, factor.f, rest...);
    case DType::kBFloat16:
      return RunLoop(loops.bfloat16, span, first, n, factor.f, rest...);
    case DType::kFloat:
      return RunLoop(loops.float32, span, first, n, factor.f, rest...);
    case DType::kDouble:
      return RunLoop(loops.float64, span, first, n, factor.d, rest...);
  }
}

// The checked loops of `path` for the calling thread (LoopsFor).
const simd::CheckedLoops& CheckedLoopsFor(CpuPath path, bool with_sum_of_squares) {
  const PathLoops& loops = LoopsFor(path);
  return with_sum_of_squares ? loops.checked_with_squares : loops.checked;
}
const simd::CheckOnlyLoops& CheckOnlyLoopsFor(CpuPath path, bool with_sum_of_squares) {
  const PathLoops& loops = LoopsFor(path);
  return with_sum_of_squares ? loops.check_only_with_squares : loops.check_only;
}

// `path` if this build and CPU support it, else kScalar.
CpuPath SupportedOrScalar(CpuPath path) {
  return CpuPathSupported(path) ? path : CpuPath::kScalar;
}

// Smallest element index of a span whose first byte is at or after `byte`.
int64_t FirstElementAtOrAfter(int64_t byte, int64_t span_offset, int64_t element_size) {
  if (byte <= span_offset) return 0;
  return (byte - span_offset + element_size - 1) / element_size;
}

}  // namespace

bool CpuPathSupported(CpuPath path) {
  switch (path) {
    case CpuPath::kScalar:
      return true;
#if defined(FLS_HAVE_X86_SIMD)
    case CpuPath::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
             __builtin_cpu_supports("fma");
    case CpuPath::kAvx512:
      return CpuPathSupported(CpuPath::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

bool Avx512Bf16LoopActive() {
#if defined(FLS_HAVE_X86_SIMD)
  return ActiveCpuPath() == CpuPath::kAvx512 && simd::CpuHasAvx512Bf16();
#else
  return false;
#endif
}

ShardPlan PlanShards(int64_t total_bytes, int64_t threads) {
  if (threads <= 1 || total_bytes < kMinShardedBytes) return ShardPlan{total_bytes, 1};
  const int64_t shard_bytes = std::clamp(total_bytes / (threads * kShardsPerThread) + 1,
                                         kMinBytesPerShard, kMaxBytesPerShard);
  return ShardPlan{shard_bytes, (total_bytes + shard_bytes - 1) / shard_bytes};
}

CpuPath ActiveCpuPath() {
  static const CpuPath path = ChoosePath();
  return path;
}

const char* CpuPathName(CpuPath path) {
  // Indexed by the CpuPath's code; kAvx512 is the last.
  constexpr const char* kNames[] = {"scalar", "avx2", "avx512"};
  constexpr int kNumPaths = static_cast<int>(CpuPath::kAvx512) + 1;
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == kNumPaths, "one name per CpuPath");
  const int code = static_cast<int>(path);
  return code < kNumPaths ? kNames[code] : "unknown";
}

std::vector<int64_t> ByteOffsets(const std::vector<TensorSpan>& spans) {
  std::vector<int64_t> offsets(spans.size() + 1, 0);
  for (size_t i = 0; i < spans.size(); ++i) {
    offsets[i + 1] = offsets[i] + spans[i].num_elements * DTypeSize(spans[i].dtype);
  }
  return offsets;
}

void ScaleElements(const TensorSpan& span, int64_t first, int64_t last, ScaleFactor factor) {
  RunWith(LoopsFor(ActiveCpuPath()), span, first, last, factor);
}

void ScaleElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first, int64_t last,
                           ScaleFactor factor) {
  RunWith(LoopsFor(SupportedOrScalar(path)), span, first, last, factor);
}

void ScaleAndCheckElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first,
                                   int64_t last, ScaleFactor factor, bool with_sum_of_squares,
                                   ScaleCheck* check) {
  RunWith(CheckedLoopsFor(SupportedOrScalar(path), with_sum_of_squares), span, first, last,
          factor, check);
}

void CheckElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first, int64_t last,
                           ScaleFactor factor, bool with_sum_of_squares, ScaleCheck* check) {
  RunWith(CheckOnlyLoopsFor(SupportedOrScalar(path), with_sum_of_squares), span, first, last,
          factor, check);
}

namespace {

// Calls visit(span, first, last) for the elements of each span whose first
// byte lies in [byte_begin, byte_end) (NOTE [byte sharding]), in span order.
template <typename Visit>
void ForEachSpanInByteRange(const std::vector<TensorSpan>& spans,
                            const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                            int64_t byte_end, Visit visit) {
  // The first span that ends after byte_begin; spans are visited until one
  // starts at or after byte_end.
  size_t i = std::upper_bound(byte_offsets.begin() + 1, byte_offsets.end(), byte_begin) -
             (byte_offsets.begin() + 1);
  for (; i < spans.size() && byte_offsets[i] < byte_end; ++i) {
    const int64_t element_size = DTypeSize(spans[i].dtype);
    const int64_t first = FirstElementAtOrAfter(byte_begin, byte_offsets[i], element_size);
    // Most spans lie wholly inside the range: no division for them (a division
    // per span showed in profiles of lists of small tensors).
    const int64_t last =
        byte_end >= byte_offsets[i + 1]
            ? spans[i].num_elements
            : FirstElementAtOrAfter(byte_end, byte_offsets[i], element_size);
    visit(spans[i], first, last);
  }
}

}  // namespace

void ScaleByteRange(const std::vector<TensorSpan>& spans,
                    const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                    int64_t byte_end, ScaleFactor factor) {
  const PathLoops& loops = LoopsFor(ActiveCpuPath());
  ForEachSpanInByteRange(spans, byte_offsets, byte_begin, byte_end,
                         [&](const TensorSpan& span, int64_t first, int64_t last) {
                           RunWith(loops, span, first, last, factor);
                         });
}

void ScaleAndCheckByteRange(const std::vector<TensorSpan>& spans,
                            const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                            int64_t byte_end, ScaleFactor factor, bool with_sum_of_squares,
                            ScaleCheck* check) {
  const simd::CheckedLoops& loops = CheckedLoopsFor(ActiveCpuPath(), with_sum_of_squares);
  ForEachSpanInByteRange(spans, byte_offsets, byte_begin, byte_end,
                         [&](const TensorSpan& span, int64_t first, int64_t last) {
                           RunWith(loops, span, first, last, factor, check);
                         });
}

void CheckByteRange(const std::vector<TensorSpan>& spans, const std::vector<int64_t>& byte_offsets,
                    int64_t byte_begin, int64_t byte_end, ScaleFactor factor,
                    bool with_sum_of_squares, ScaleCheck* check) {
  const simd::CheckOnlyLoops& loops = CheckOnlyLoopsFor(ActiveCpuPath(), with_sum_of_squares);
  ForEachSpanInByteRange(spans, byte_offsets, byte_begin, byte_end,
                         [&](const TensorSpan& span, int64_t first, int64_t last) {
                           RunWith(loops, span, first, last, factor, check);
                         });
}

}  // namespace fixed_loss_scale
