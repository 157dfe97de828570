// Standalone test of the CPU core (tf_ops/core/cpu/), built without TensorFlow
// under AddressSanitizer and UndefinedBehaviorSanitizer (SANITIZER_FLAGS of
// configure.sh) by `make sanitizer-test` and by Bazel
// (//tf_ops/tests:cpu_core_sanitizer_test_<path>), with the core's sources.
//
// Every result is checked against a scalar reference written here from the
// IEEE definitions (ldexp/frexp/nearbyint in double, float128 for double), not
// against scale_math.h. Buffers are exact-size heap blocks (ASan catches a read
// or write one byte past the end) with guard bytes in front of each output and
// between outputs and inputs where room allows; data pointers are element
// aligned but deliberately not vector aligned.
//
// Cases: every dtype, sizes 0..17 and around powers of two up to 65537, eight
// alignments, in place and out of place, many loss scales; every float16 and
// bfloat16 bit pattern; random float/double bit patterns (NaN, Inf, subnormal,
// +-0); 10,000 tensors in one call; random partitions of the byte space through
// ScaleByteRange, checking every element is written exactly once and that a
// range writes exactly the elements whose first byte it holds. The checked
// loops (ScaleAndCheckByteRange, ScaleAndCheckElementsWithPath): the same
// outputs, the flag against the reference outputs' finiteness (one Inf or NaN
// among finite values of every class, NaNs just outside the range), the sum
// of squares against an exact long double sum within NOTE [sum of squares]'s
// bound, shards combined in order, empty lists, a flag already false. The
// check without store (CheckByteRange, CheckElementsWithPath): the checked
// loops' flag and sum bit for bit, the reference's, the input untouched, and
// no output pointer at all (a store would fault).
//
// Usage: cpu_core_sanitizer_test [seed]   (exit 0 and "PASSED" on success)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"
#include "tf_ops/core/cpu/simd_loops.h"  // kSquaresPerFlush

namespace fls = fixed_loss_scale;
using fls::DType;

namespace {

// ---- floating-point environment ----------------------------------------------
// TensorFlow runs kernels with flush-to-zero and denormals-are-zero set (MXCSR
// FTZ|DAZ on x86); a plain process has both off. Every test runs in both modes:
// the core is called under `g_ftz`, the reference always runs in the default
// environment and models the flushing explicitly.
bool g_ftz = false;

class ScopedCoreEnvironment {
 public:
  ScopedCoreEnvironment() {
#if defined(__SSE2__)
    saved_ = _mm_getcsr();
    if (g_ftz) _mm_setcsr(saved_ | fls::kMxcsrFtzDaz);
#endif
  }
  ~ScopedCoreEnvironment() {
#if defined(__SSE2__)
    _mm_setcsr(saved_);
#endif
  }

 private:
  unsigned saved_ = 0;
};

// The core's entry points, called in the environment of the current mode.
void CoreScaleByteRange(const std::vector<fls::TensorSpan>& spans,
                        const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                        fls::ScaleFactor factor) {
  ScopedCoreEnvironment environment;
  fls::ScaleByteRange(spans, offsets, begin, end, factor);
}
void CoreScaleElements(const fls::TensorSpan& span, int64_t first, int64_t last,
                       fls::ScaleFactor factor) {
  ScopedCoreEnvironment environment;
  fls::ScaleElements(span, first, last, factor);
}

void CoreScaleAndCheckByteRange(const std::vector<fls::TensorSpan>& spans,
                                const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                                fls::ScaleFactor factor, bool with_squares,
                                fls::ScaleCheck* check) {
  ScopedCoreEnvironment environment;
  fls::ScaleAndCheckByteRange(spans, offsets, begin, end, factor, with_squares, check);
}
void CoreScaleAndCheckElements(const fls::TensorSpan& span, int64_t first, int64_t last,
                               fls::ScaleFactor factor, bool with_squares,
                               fls::ScaleCheck* check) {
  ScopedCoreEnvironment environment;
  fls::ScaleAndCheckElementsWithPath(fls::ActiveCpuPath(), span, first, last, factor,
                                     with_squares, check);
}

void CoreCheckByteRange(const std::vector<fls::TensorSpan>& spans,
                        const std::vector<int64_t>& offsets, int64_t begin, int64_t end,
                        fls::ScaleFactor factor, bool with_squares, fls::ScaleCheck* check) {
  ScopedCoreEnvironment environment;
  fls::CheckByteRange(spans, offsets, begin, end, factor, with_squares, check);
}
void CoreCheckElements(const fls::TensorSpan& span, int64_t first, int64_t last,
                       fls::ScaleFactor factor, bool with_squares, fls::ScaleCheck* check) {
  ScopedCoreEnvironment environment;
  fls::CheckElementsWithPath(fls::ActiveCpuPath(), span, first, last, factor, with_squares,
                             check);
}

// ---- failure reporting ------------------------------------------------------
long g_checks = 0;
long g_failures = 0;

#define EXPECT(cond, ...)                                           \
  do {                                                              \
    ++g_checks;                                                     \
    if (!(cond)) {                                                  \
      if (++g_failures <= 20) {                                     \
        std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                          \
        std::fprintf(stderr, "\n");                                 \
      }                                                             \
    }                                                               \
  } while (0)

int Size(DType d) { return d == DType::kDouble ? 8 : d == DType::kFloat ? 4 : 2; }

// ---- the independent scalar reference ---------------------------------------
// An element is carried as its raw bits in a uint64_t; NaN results are only
// compared for NaN-ness and sign (the ops' contract; payloads are unspecified).

// The value of the bits of a 16-bit binary format with `mantissa_bits` stored
// bits and `exponent_bits` exponent bits (the inverse of RoundToSmallFloat).
double SmallFloatToDouble(uint64_t bits, int mantissa_bits, int exponent_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int max_exponent = (1 << exponent_bits) - 1;
  const int sign = (bits >> (mantissa_bits + exponent_bits)) & 1;
  const int exponent = (bits >> mantissa_bits) & max_exponent;
  const int mantissa = bits & ((1 << mantissa_bits) - 1);
  double v;
  if (exponent == max_exponent) v = mantissa ? NAN : INFINITY;
  else if (exponent == 0) v = std::ldexp(mantissa, 1 - bias - mantissa_bits);
  else v = std::ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits);
  return sign ? -v : v;
}

double HalfToDouble(uint64_t h) { return SmallFloatToDouble(h, 10, 5); }
double BFloat16ToDouble(uint64_t b) { return SmallFloatToDouble(b, 7, 8); }

// Rounds a finite or infinite double to a binary format with `mantissa_bits`
// stored bits and `exponent_bits` exponent bits, nearest-even, IEEE gradual
// underflow; returns the bits (a quiet NaN for NaN).
uint64_t RoundToSmallFloat(double v, int mantissa_bits, int exponent_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int min_exp = 1 - bias;
  const uint64_t sign = std::signbit(v) ? 1ull << (mantissa_bits + exponent_bits) : 0;
  const uint64_t inf = ((1ull << exponent_bits) - 1) << mantissa_bits;
  double a = std::fabs(v);
  if (std::isnan(a)) return inf | (1ull << (mantissa_bits - 1));  // a quiet NaN
  if (std::isinf(a)) return sign | inf;
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const int exp = std::max(e - 1, min_exp);
  const double ulp = std::ldexp(1.0, exp - mantissa_bits);
  const double q = std::nearbyint(a / ulp);  // exact division by a power of two
  const double r = q * ulp;
  if (r == 0) return sign;
  std::frexp(r, &e);
  const int re = e - 1;
  if (re < min_exp) return sign | static_cast<uint64_t>(r / std::ldexp(1.0, min_exp - mantissa_bits));
  if (re + bias >= (1 << exponent_bits) - 1) return sign | inf;
  const uint64_t mant = static_cast<uint64_t>(r / std::ldexp(1.0, re - mantissa_bits)) -
                        (1ull << mantissa_bits);
  return sign | (static_cast<uint64_t>(re + bias) << mantissa_bits) | mant;
}

// Under FTZ/DAZ a float subnormal operand or result is +-0.
double FlushFloat(double v) {
  return g_ftz && v != 0 && std::fabs(v) < 0x1p-126 ? std::copysign(0.0, v) : v;
}
double FlushDouble(double v) {
  return g_ftz && v != 0 && std::fabs(v) < 0x1p-1022 ? std::copysign(0.0, v) : v;
}

// The float32 product, rounded once (the double product of two floats is
// exact), with FTZ/DAZ applied to both operands (a loss scale above 2^126 has a
// subnormal reciprocal) and to the result.
float Float32Product(double x, float f) {
  return static_cast<float>(
      FlushFloat(static_cast<float>(FlushFloat(x) * FlushFloat(static_cast<double>(f)))));
}

bool RefIsNaN(DType d, uint64_t in_bits) {
  switch (d) {
    case DType::kHalf: return (in_bits & 0x7fff) > 0x7c00;
    case DType::kBFloat16: return (in_bits & 0x7fff) > 0x7f80;
    case DType::kFloat: return (in_bits & 0x7fffffffu) > 0x7f800000u;
    case DType::kDouble: return (in_bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
  }
  return false;
}

bool IsNegative(DType d, uint64_t bits) { return (bits >> (8 * Size(d) - 1)) & 1; }

uint64_t Reference(DType d, uint64_t in_bits, float f, double df) {
  switch (d) {
    case DType::kHalf: {
      const float p = Float32Product(HalfToDouble(in_bits), f);
      return RoundToSmallFloat(p, 10, 5);
    }
    case DType::kBFloat16: {
      const float p = Float32Product(BFloat16ToDouble(in_bits), f);
      return RoundToSmallFloat(p, 7, 8);
    }
    case DType::kFloat: {
      float x;
      uint32_t b = static_cast<uint32_t>(in_bits);
      std::memcpy(&x, &b, 4);
      const float p = Float32Product(x, f);
      uint32_t out;
      std::memcpy(&out, &p, 4);
      return out;
    }
    case DType::kDouble: {
      double x;
      std::memcpy(&x, &in_bits, 8);
#if defined(__SIZEOF_FLOAT128__)
      const double p = FlushDouble(static_cast<double>(static_cast<__float128>(FlushDouble(x)) *
                                                       static_cast<__float128>(FlushDouble(df))));
#else
      const double p = FlushDouble(FlushDouble(x) * FlushDouble(df));
#endif
      uint64_t out;
      std::memcpy(&out, &p, 8);
      return out;
    }
  }
  return 0;
}

bool Matches(DType d, uint64_t in_bits, uint64_t out_bits, float f, double df) {
  if (RefIsNaN(d, in_bits)) {
    return RefIsNaN(d, out_bits) && IsNegative(d, out_bits) == IsNegative(d, in_bits);
  }
  const uint64_t expected = Reference(d, in_bits, f, df);
  // A NaN made from a number (Inf times a flushed factor) has no defined sign.
  if (RefIsNaN(d, expected)) return RefIsNaN(d, out_bits);
  return out_bits == expected;
}

// The value of an element's bits, exactly, as a long double (x86: 64-bit
// significand, 15-bit exponent: every square and sum below is exact or nearly).
long double RefValue(DType d, uint64_t bits) {
  switch (d) {
    case DType::kHalf: return HalfToDouble(bits);
    case DType::kBFloat16: return BFloat16ToDouble(bits);
    case DType::kFloat: {
      float x;
      const uint32_t b = static_cast<uint32_t>(bits);
      std::memcpy(&x, &b, 4);
      return x;
    }
    case DType::kDouble: {
      double x;
      std::memcpy(&x, &bits, 8);
      return x;
    }
  }
  return 0;
}

bool RefFinite(DType d, uint64_t bits) { return std::isfinite(RefValue(d, bits)); }

// NOTE [sum of squares] (scale_loop.h), B = kSquaresPerFlush: relative error
// <= (B + 2) * 2^-24 + (n/B + 8) * 2^-53 (float64 elements: (B + n/B + 10) *
// 2^-53), plus 2^-126 per element. Partitions add a float64 addition per
// range: 64 more cover them.
long double SquaresTolerance(DType d, long double exact, int64_t n) {
  const long double b = fls::simd::kSquaresPerFlush;
  const long double float64_additions = static_cast<long double>(n) / b + 10 + 64;
  const long double relative = d == DType::kDouble
                                   ? (b + float64_additions) * 0x1p-53L
                                   : (b + 2) * 0x1p-24L + float64_additions * 0x1p-53L;
  return relative * exact + static_cast<long double>(n) * 0x1p-126L;
}

// Checks a ScaleCheck against the expected outputs' finiteness and the exact
// sum of their squares (`exact`, over `n` elements; `initial` is what the sum
// held before the call).
void CheckScaleCheck(const fls::ScaleCheck& check, bool finite, long double exact, int64_t n,
                     DType d, bool with_squares, double initial, const std::string& what) {
  EXPECT(check.all_finite == finite, "%s: all_finite %d, expected %d", what.c_str(),
         check.all_finite, finite);
  if (!with_squares) {
    EXPECT(check.sum_of_squares == initial, "%s: sum_of_squares changed without the attr: %a",
           what.c_str(), check.sum_of_squares);
    return;
  }
  const long double got = static_cast<long double>(check.sum_of_squares) - initial;
  if (!finite) {
    EXPECT(!std::isfinite(check.sum_of_squares), "%s: non-finite output, sum %a", what.c_str(),
           check.sum_of_squares);
    return;
  }
  // A float32 square or lane may overflow to Inf only where the exact sum is
  // at float32's limit (float64 elements: float64's).
  const long double limit = d == DType::kDouble ? 1.7976931348623157e308L : 3.40282347e38L;
  if (std::isinf(got)) {
    EXPECT(exact >= limit - SquaresTolerance(d, exact, n), "%s: sum Inf, exact %La",
           what.c_str(), exact);
    return;
  }
  EXPECT(std::fabs(got - exact) <= SquaresTolerance(d, exact, n),
         "%s %s n=%lld: sum of squares %La, exact %La", what.c_str(), fls::DTypeName(d),
         (long long)n, got, exact);
}

// ---- buffers ------------------------------------------------------------------
constexpr int kGuard = 64;
constexpr uint8_t kGuardByte = 0xA5;
constexpr uint8_t kSentinelByte = 0xCD;

// A 64-byte aligned heap block of exactly `guard + misalign + bytes` bytes: the
// guard bytes, `misalign` more guard bytes, then the data, which ends exactly at
// the end of the block so that ASan reports any access one byte past it. The
// data pointer is `misalign` bytes past a 64-byte boundary.
class Buffer {
 public:
  Buffer(int64_t bytes, int misalign, int guard) : lead_(guard + misalign) {
    const size_t size = static_cast<size_t>(std::max<int64_t>(lead_ + bytes, 1));
    raw_ = static_cast<uint8_t*>(::operator new(size, std::align_val_t{64}));
    std::memset(raw_, kGuardByte, size);
  }
  ~Buffer() { ::operator delete(raw_, std::align_val_t{64}); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  uint8_t* data() { return raw_ + lead_; }
  bool GuardsIntact() const {
    for (int i = 0; i < lead_; ++i) {
      if (raw_[i] != kGuardByte) return false;
    }
    return true;
  }

 private:
  uint8_t* raw_ = nullptr;
  int lead_;
};

uint64_t LoadBits(const uint8_t* p, DType d, int64_t i) {
  uint64_t v = 0;
  std::memcpy(&v, p + i * Size(d), Size(d));
  return v;
}

void StoreBits(uint8_t* p, DType d, int64_t i, uint64_t v) { std::memcpy(p + i * Size(d), &v, Size(d)); }

// Random bits of dtype `d`, weighted towards the interesting classes.
uint64_t RandomBits(std::mt19937_64& rng, DType d) {
  const int bits = 8 * Size(d);
  const uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
  const uint64_t sign = 1ull << (bits - 1);
  const int mant = d == DType::kHalf ? 10 : d == DType::kBFloat16 ? 7 : d == DType::kFloat ? 23 : 52;
  const uint64_t exp_all = (mask & ~sign) >> mant << mant;  // exponent field all ones
  const uint64_t mant_mask = (1ull << mant) - 1;
  const uint64_t r = rng();
  const uint64_t s = (rng() & 1) ? sign : 0;
  switch (rng() % 8) {
    case 0: return s;                                   // +-0
    case 1: return s | exp_all;                         // +-Inf
    case 2: return s | exp_all | ((r & mant_mask) | 1); // NaN (any payload)
    case 3: return s | ((r & mant_mask) | 1);           // subnormal
    case 4: return s | (exp_all - (1ull << mant)) | (r & mant_mask);  // largest binade
    default: return r & mask;                           // anything
  }
}

// Ordinary values whose scaling by a factor in (0, 1) neither underflows nor
// reaches a fixed point, so that scaling twice is visible.
uint64_t OrdinaryBits(std::mt19937_64& rng, DType d) {
  const int mant = d == DType::kHalf ? 10 : d == DType::kBFloat16 ? 7 : d == DType::kFloat ? 23 : 52;
  const int bias = d == DType::kHalf ? 15 : d == DType::kBFloat16 || d == DType::kFloat ? 127 : 1023;
  const int exponent = bias + static_cast<int>(rng() % 5);  // [1, 32)
  return (static_cast<uint64_t>(exponent) << mant) | (rng() & ((1ull << mant) - 1));
}

const DType kDTypes[] = {DType::kHalf, DType::kBFloat16, DType::kFloat, DType::kDouble};

fls::ScaleFactor Unscale(float loss_scale) {
  return fls::ScaleFactor{1.0f / loss_scale, 1.0 / static_cast<double>(loss_scale)};
}

// One tensor of a test: input bits, the buffers and the span.
struct Case {
  DType dtype;
  int64_t n;
  std::vector<uint64_t> input;
  std::unique_ptr<Buffer> in;
  std::unique_ptr<Buffer> out;  // null when in place
  fls::TensorSpan span;
};

std::unique_ptr<Case> MakeCase(DType d, int64_t n, int in_misalign_elems, int out_misalign_elems,
                               bool in_place, std::mt19937_64& rng, bool ordinary = false) {
  auto c = std::make_unique<Case>();
  c->dtype = d;
  c->n = n;
  c->input.resize(n);
  for (auto& v : c->input) v = ordinary ? OrdinaryBits(rng, d) : RandomBits(rng, d);
  c->in.reset(new Buffer(n * Size(d), in_misalign_elems * Size(d), kGuard));
  for (int64_t i = 0; i < n; ++i) StoreBits(c->in->data(), d, i, c->input[i]);
  if (!in_place) {
    c->out.reset(new Buffer(n * Size(d), out_misalign_elems * Size(d), kGuard));
    std::memset(c->out->data(), kSentinelByte, n * Size(d));
  }
  uint8_t* out = in_place ? c->in->data() : c->out->data();
  c->span = fls::TensorSpan{c->in->data(), out, n, d};
  return c;
}

// Checks every element (written once with `factor`), the input when out of
// place, and the guards.
void CheckCase(const Case& c, fls::ScaleFactor factor, const std::string& what) {
  const uint8_t* out = static_cast<const uint8_t*>(c.span.out);
  int bad = 0;
  for (int64_t i = 0; i < c.n; ++i) {
    const uint64_t got = LoadBits(out, c.dtype, i);
    if (!Matches(c.dtype, c.input[i], got, factor.f, factor.d)) {
      if (++bad <= 3) {
        EXPECT(false, "%s %s n=%lld element %lld: in 0x%llx out 0x%llx expected 0x%llx (f=%a)",
               what.c_str(), fls::DTypeName(c.dtype), (long long)c.n, (long long)i,
               (unsigned long long)c.input[i], (unsigned long long)got,
               (unsigned long long)Reference(c.dtype, c.input[i], factor.f, factor.d), factor.f);
      }
    }
  }
  EXPECT(bad == 0, "%s %s n=%lld: %d wrong elements", what.c_str(), fls::DTypeName(c.dtype), (long long)c.n, bad);
  if (c.out) {
    for (int64_t i = 0; i < c.n; ++i) {
      if (LoadBits(c.in->data(), c.dtype, i) != c.input[i]) {
        EXPECT(false, "%s %s: input element %lld modified by an out-of-place call", what.c_str(),
               fls::DTypeName(c.dtype), (long long)i);
        break;
      }
    }
    EXPECT(c.out->GuardsIntact(), "%s %s n=%lld: output guard bytes overwritten", what.c_str(),
           fls::DTypeName(c.dtype), (long long)c.n);
  }
  EXPECT(c.in->GuardsIntact(), "%s %s n=%lld: input guard bytes overwritten", what.c_str(),
         fls::DTypeName(c.dtype), (long long)c.n);
}

// The expected finiteness and exact sum of squares of elements [first, last)
// of a case's reference outputs.
void ExpectedCheck(const Case& c, fls::ScaleFactor factor, int64_t first, int64_t last,
                   bool* finite, long double* exact) {
  *finite = true;
  *exact = 0;
  for (int64_t i = first; i < last; ++i) {
    const uint64_t out = RefIsNaN(c.dtype, c.input[i])
                             ? c.input[i]
                             : Reference(c.dtype, c.input[i], factor.f, factor.d);
    if (!RefFinite(c.dtype, out)) {
      *finite = false;
      continue;
    }
    const long double v = RefValue(c.dtype, out);
    *exact += v * v;
  }
}

void RunWhole(std::vector<std::unique_ptr<Case>>& cases, fls::ScaleFactor factor) {
  std::vector<fls::TensorSpan> spans;
  for (auto& c : cases) spans.push_back(c->span);
  const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
  CoreScaleByteRange(spans, offsets, 0, offsets.back(), factor);
}

// ---- the tests ----------------------------------------------------------------

// ByteOffsets: sizes, running sums, the total at the end.
void TestByteOffsets(std::mt19937_64& rng) {
  std::vector<fls::TensorSpan> spans;
  int64_t expected_total = 0;
  EXPECT(fls::ByteOffsets(spans).size() == 1 && fls::ByteOffsets(spans)[0] == 0,
         "ByteOffsets of an empty list must be {0}");
  std::vector<int64_t> expected{0};
  for (int i = 0; i < 100; ++i) {
    const DType d = kDTypes[rng() % 4];
    const int64_t n = rng() % 7;
    spans.push_back(fls::TensorSpan{nullptr, nullptr, n, d});
    expected_total += n * Size(d);
    expected.push_back(expected_total);
  }
  EXPECT(fls::ByteOffsets(spans) == expected, "ByteOffsets running sums differ");
  // Sizes beyond 2^31 elements and bytes must not overflow.
  spans.assign({fls::TensorSpan{nullptr, nullptr, (int64_t{1} << 31) + 3, DType::kHalf},
                fls::TensorSpan{nullptr, nullptr, (int64_t{1} << 33) + 1, DType::kDouble}});
  const std::vector<int64_t> big = fls::ByteOffsets(spans);
  EXPECT(big.size() == 3 && big[1] == (int64_t{1} << 32) + 6 &&
             big[2] == big[1] + (int64_t{1} << 36) + 8,
         "ByteOffsets overflows on large sizes");
}

// One tensor per call: every dtype, odd and power-of-two sizes, eight
// alignments, in place and out of place, several loss scales.
void TestSizesAndAlignments(std::mt19937_64& rng) {
  std::vector<int64_t> sizes;
  for (int64_t n = 0; n <= 17; ++n) sizes.push_back(n);
  for (int64_t p : {31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025,
                    4095, 4097, 65537}) {
    sizes.push_back(p);
  }
  const float scales[] = {1.0f, 2.0f, 3.0f, 1000.0f, 1024.0f, 12345.678f, 16777216.0f};
  long runs = 0;
  for (DType d : kDTypes) {
    for (int64_t n : sizes) {
      for (int misalign = 0; misalign < 8; ++misalign) {
        for (int in_place = 0; in_place < 2; ++in_place) {
          const float s = scales[rng() % (sizeof(scales) / sizeof(scales[0]))];
          const fls::ScaleFactor factor = (rng() & 1) ? Unscale(s) : fls::ScaleFactor{s, double(s)};
          std::vector<std::unique_ptr<Case>> cases;
          cases.push_back(MakeCase(d, n, misalign, (misalign * 3 + 1) % 8, in_place, rng));
          CoreScaleElements(cases[0]->span, 0, n, factor);
          CheckCase(*cases[0], factor, "ScaleElements");
          // The same through ScaleByteRange over the whole byte space.
          cases[0] = MakeCase(d, n, (misalign + 5) % 8, misalign, in_place, rng);
          RunWhole(cases, factor);
          CheckCase(*cases[0], factor, "ScaleByteRange");
          runs += 2;
        }
      }
    }
  }
  std::printf("  sizes/alignments: %ld calls\n", runs);
}

// Every float16 and bfloat16 bit pattern, several scales, in place and not.
void TestAllSixteenBitPatterns(std::mt19937_64& rng) {
  const float scales[] = {1.0f, 2.0f, 3.0f, 7.0f, 1000.0f, 32768.0f, 65536.0f, 12345.678f,
                          16777216.0f, 3.0e38f};
  for (DType d : {DType::kHalf, DType::kBFloat16}) {
    for (float s : scales) {
      for (int in_place = 0; in_place < 2; ++in_place) {
        for (bool unscale : {true, false}) {
          const fls::ScaleFactor factor = unscale ? Unscale(s) : fls::ScaleFactor{s, double(s)};
          std::vector<std::unique_ptr<Case>> cases;
          cases.push_back(MakeCase(d, 65536, 1, 3, in_place, rng));
          for (int64_t i = 0; i < 65536; ++i) {
            cases[0]->input[i] = i;
            StoreBits(cases[0]->in->data(), d, i, i);
          }
          RunWhole(cases, factor);
          CheckCase(*cases[0], factor, unscale ? "all patterns, unscale" : "all patterns, scale");
        }
      }
    }
  }
}

// Random float32/float64 bit patterns (NaN, Inf, subnormals, +-0 and the rest).
void TestRandomWide(std::mt19937_64& rng) {
  for (DType d : {DType::kFloat, DType::kDouble}) {
    for (int trial = 0; trial < 40; ++trial) {
      // Random loss scales in [1, 2^24], powers of two every fourth trial.
      float s = trial % 4 == 0 ? std::ldexp(1.0f, static_cast<int>(rng() % 25))
                               : std::ldexp(1.0f + (rng() % (1u << 23)) / float(1u << 23),
                                            static_cast<int>(rng() % 24));
      const fls::ScaleFactor factor = (trial & 1) ? Unscale(s) : fls::ScaleFactor{s, double(s)};
      std::vector<std::unique_ptr<Case>> cases;
      cases.push_back(MakeCase(d, 5000 + rng() % 100, rng() % 8, rng() % 8, trial % 3 == 0, rng));
      RunWhole(cases, factor);
      CheckCase(*cases[0], factor, "random wide");
    }
  }
}

// 10,000 tensors of mixed dtypes and sizes 0..9 in one call.
void TestManyTensors(std::mt19937_64& rng) {
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<std::unique_ptr<Case>> cases;
    for (int i = 0; i < 10000; ++i) {
      cases.push_back(MakeCase(kDTypes[rng() % 4], rng() % 10, rng() % 8, rng() % 8,
                               (rng() % 3) == 0, rng));
    }
    const fls::ScaleFactor factor = Unscale(trial == 0 ? 1024.0f : trial == 1 ? 3.0f : 65000.0f);
    RunWhole(cases, factor);
    for (auto& c : cases) CheckCase(*c, factor, "10000 tensors");
  }
}

// The list of the partition tests: 1 to 40 ordinary cases of random dtypes and
// misalignments, one in five empty, the others of 1 to 300 elements.
std::vector<std::unique_ptr<Case>> RandomList(std::mt19937_64& rng, bool in_place) {
  std::vector<std::unique_ptr<Case>> cases;
  const int num = 1 + rng() % 40;
  for (int i = 0; i < num; ++i) {
    const int64_t n = (rng() % 5 == 0) ? 0 : 1 + rng() % 300;
    cases.push_back(MakeCase(kDTypes[rng() % 4], n, rng() % 8, rng() % 8, in_place, rng,
                             /*ordinary=*/true));
  }
  return cases;
}

// Sorted cut points of [0, total]: both ends and up to 29 more anywhere in it
// (inside elements, repeated: empty ranges too).
std::vector<int64_t> RandomCuts(std::mt19937_64& rng, int64_t total) {
  std::vector<int64_t> cuts{0, total};
  const int num_cuts = rng() % 30;
  for (int i = 0; i < num_cuts; ++i) cuts.push_back(total == 0 ? 0 : rng() % (total + 1));
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

// Random partitions of the byte space into ranges (cut points anywhere, inside
// elements too, empty ranges included), run in random order: every element must
// be written exactly once. Out of place with sentinel outputs shows no element is
// skipped; in place with ordinary values shows none is scaled twice.
void TestRandomPartitions(std::mt19937_64& rng) {
  long ranges = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const bool in_place = trial & 1;
    std::vector<std::unique_ptr<Case>> cases = RandomList(rng, in_place);
    std::vector<fls::TensorSpan> spans;
    for (auto& c : cases) spans.push_back(c->span);
    const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
    const std::vector<int64_t> cuts = RandomCuts(rng, offsets.back());
    std::vector<std::pair<int64_t, int64_t>> pieces;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) pieces.emplace_back(cuts[i], cuts[i + 1]);
    std::shuffle(pieces.begin(), pieces.end(), rng);
    const fls::ScaleFactor factor = Unscale((trial % 3 == 0) ? 2.0f : 3.0f);
    for (const auto& piece : pieces) {
      CoreScaleByteRange(spans, offsets, piece.first, piece.second, factor);
    }
    ranges += pieces.size();
    for (auto& c : cases) CheckCase(*c, factor, in_place ? "partition, in place" : "partition");
  }
  std::printf("  random partitions: 300 lists, %ld ranges\n", ranges);
}

// A single byte range writes exactly the elements whose first byte lies in it
// (NOTE [byte sharding]) and leaves every other element untouched.
void TestSingleRangeOwnership(std::mt19937_64& rng) {
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<std::unique_ptr<Case>> cases;
    const int num = 1 + rng() % 12;
    for (int i = 0; i < num; ++i) {
      cases.push_back(MakeCase(kDTypes[rng() % 4], rng() % 40, rng() % 8, rng() % 8,
                               /*in_place=*/false, rng, /*ordinary=*/true));
    }
    std::vector<fls::TensorSpan> spans;
    for (auto& c : cases) spans.push_back(c->span);
    const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
    const int64_t total = offsets.back();
    int64_t a = total == 0 ? 0 : rng() % (total + 1), b = total == 0 ? 0 : rng() % (total + 1);
    if (a > b) std::swap(a, b);
    const fls::ScaleFactor factor = Unscale(4.0f);
    CoreScaleByteRange(spans, offsets, a, b, factor);
    for (size_t t = 0; t < cases.size(); ++t) {
      const Case& c = *cases[t];
      const int sz = Size(c.dtype);
      for (int64_t i = 0; i < c.n; ++i) {
        const int64_t first_byte = offsets[t] + i * sz;
        const bool owned = first_byte >= a && first_byte < b;
        const uint8_t* p = static_cast<const uint8_t*>(c.span.out) + i * sz;
        bool untouched = true;
        for (int k = 0; k < sz; ++k) untouched &= p[k] == kSentinelByte;
        if (owned) {
          EXPECT(Matches(c.dtype, c.input[i], LoadBits(p, c.dtype, 0), factor.f, factor.d),
                 "range [%lld,%lld) did not write owned element %lld of tensor %zu",
                 (long long)a, (long long)b, (long long)i, t);
        } else {
          EXPECT(untouched, "range [%lld,%lld) wrote element %lld of tensor %zu (first byte %lld)",
                 (long long)a, (long long)b, (long long)i, t, (long long)first_byte);
        }
      }
      EXPECT(c.out->GuardsIntact(), "single range: guard bytes overwritten");
    }
  }
}

// Degenerate lists: no spans, only empty spans (null pointers included, as an
// empty tensor may have none), empty ranges and ranges past the end.
void TestDegenerate(std::mt19937_64& rng) {
  std::vector<fls::TensorSpan> none;
  CoreScaleByteRange(none, fls::ByteOffsets(none), 0, 0, Unscale(2.0f));
  std::vector<fls::TensorSpan> empties{{nullptr, nullptr, 0, DType::kHalf},
                                       {nullptr, nullptr, 0, DType::kDouble}};
  CoreScaleByteRange(empties, fls::ByteOffsets(empties), 0, 0, Unscale(2.0f));
  std::vector<std::unique_ptr<Case>> cases;
  cases.push_back(MakeCase(DType::kFloat, 5, 1, 2, false, rng, true));
  std::vector<fls::TensorSpan> spans{empties[0], cases[0]->span, empties[1]};
  const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
  CoreScaleByteRange(spans, offsets, 7, 7, Unscale(2.0f));      // empty range
  CoreScaleByteRange(spans, offsets, 20, 20, Unscale(2.0f));    // empty range at the end
  for (int64_t i = 0; i < 5 * 4; ++i) {
    EXPECT(static_cast<const uint8_t*>(cases[0]->span.out)[i] == kSentinelByte,
           "an empty byte range wrote byte %lld", (long long)i);
  }
  CoreScaleElements(cases[0]->span, 3, 3, Unscale(2.0f));      // empty element range
  CoreScaleElements(cases[0]->span, 4, 2, Unscale(2.0f));      // reversed element range
  for (int64_t i = 0; i < 5 * 4; ++i) {
    EXPECT(static_cast<const uint8_t*>(cases[0]->span.out)[i] == kSentinelByte,
           "an empty element range wrote byte %lld", (long long)i);
  }
  CoreScaleByteRange(spans, offsets, 0, offsets.back(), Unscale(2.0f));
  CheckCase(*cases[0], Unscale(2.0f), "empty spans around a tensor");
}

// ---- the checked loops (FixedUnscaleGradsAndCheck) ----------------------------

// Finite values of every class (ordinary, +-0, subnormal, the largest binade)
// with, in most cases, one Inf or NaN at a random position.
void FillForCheck(Case& c, std::mt19937_64& rng) {
  for (int64_t i = 0; i < c.n; ++i) {
    uint64_t v = (rng() % 3 == 0) ? RandomBits(rng, c.dtype) : OrdinaryBits(rng, c.dtype);
    while (!RefFinite(c.dtype, v)) v = RandomBits(rng, c.dtype);
    c.input[i] = v;
  }
  if (c.n > 0 && rng() % 3 != 0) {
    uint64_t v = RandomBits(rng, c.dtype);
    while (RefFinite(c.dtype, v)) v = RandomBits(rng, c.dtype);
    c.input[rng() % c.n] = v;
  }
  for (int64_t i = 0; i < c.n; ++i) StoreBits(c.in->data(), c.dtype, i, c.input[i]);
}

// One tensor: the outputs are the unchecked loops' (the reference), the flag
// and the sum match the reference outputs', through ScaleAndCheckByteRange and
// ScaleAndCheckElementsWithPath (sub-ranges too), in place and not.
void TestCheckedSizesAndAlignments(std::mt19937_64& rng) {
  std::vector<int64_t> sizes;
  for (int64_t n = 0; n <= 40; ++n) sizes.push_back(n);
  for (int64_t p : {63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1025, 4097, 16411, 65537}) {
    sizes.push_back(p);
  }
  const float scales[] = {1.0f, 3.0f, 1000.0f, 65504.0f, 16777216.0f};
  long runs = 0;
  for (DType d : kDTypes) {
    for (int64_t n : sizes) {
      for (int misalign = 0; misalign < 8; misalign += (n > 300 ? 3 : 1)) {
        for (int variant = 0; variant < 4; ++variant) {
          const bool in_place = variant & 1;
          const bool with_squares = variant & 2;
          const float s = scales[rng() % (sizeof(scales) / sizeof(scales[0]))];
          const fls::ScaleFactor factor = (rng() % 4) ? Unscale(s) : fls::ScaleFactor{s, double(s)};
          auto c = MakeCase(d, n, misalign, (misalign * 5 + 3) % 8, in_place, rng);
          FillForCheck(*c, rng);
          bool finite;
          long double exact;
          ExpectedCheck(*c, factor, 0, n, &finite, &exact);
          std::vector<fls::TensorSpan> spans{c->span};
          const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
          // Without the sum, a value the call must leave as it is.
          const double initial = with_squares ? 0.0 : 0.25;
          fls::ScaleCheck check;
          check.sum_of_squares = initial;
          CoreScaleAndCheckByteRange(spans, offsets, 0, offsets.back(), factor, with_squares,
                                     &check);
          CheckCase(*c, factor, "ScaleAndCheckByteRange");
          CheckScaleCheck(check, finite, exact, n, d, with_squares, initial,
                          "ScaleAndCheckByteRange");
          // A sub-range [first, last) of a fresh copy: only its elements count.
          auto sub = MakeCase(d, n, (misalign + 3) % 8, misalign, in_place, rng);
          sub->input = c->input;
          for (int64_t i = 0; i < n; ++i) StoreBits(sub->in->data(), d, i, c->input[i]);
          const int64_t first = n == 0 ? 0 : rng() % (n + 1);
          const int64_t last = n == 0 ? 0 : first + rng() % (n - first + 1);
          ExpectedCheck(*sub, factor, first, last, &finite, &exact);
          fls::ScaleCheck sub_check;
          CoreScaleAndCheckElements(sub->span, first, last, factor, with_squares, &sub_check);
          CheckScaleCheck(sub_check, finite, exact, last - first, d, with_squares, 0.0,
                          "ScaleAndCheckElementsWithPath [" + std::to_string(first) + ", " +
                              std::to_string(last) + ")");
          runs += 2;
        }
      }
    }
  }
  std::printf("  checked sizes/alignments: %ld calls\n", runs);
}

// Non-finite values just outside [first, last) (before the head, after the
// tail, in the lanes a masked tail loads as zeros) never reach the flag.
void TestCheckedIgnoresNeighbours(std::mt19937_64& rng) {
  for (DType d : kDTypes) {
    const uint64_t nan = d == DType::kHalf ? 0x7e00 : d == DType::kBFloat16 ? 0x7fc0
                       : d == DType::kFloat ? 0x7fc00000u : 0x7ff8000000000000ull;
    for (int64_t n = 0; n <= 140; ++n) {
      for (int64_t first = 0; first <= 9; first += 3) {
        auto c = MakeCase(d, n + first + 40, 0, 0, /*in_place=*/false, rng, /*ordinary=*/true);
        for (int64_t i = 0; i < first; ++i) c->input[i] = nan;
        for (int64_t i = first + n; i < c->n; ++i) c->input[i] = (i & 1) ? nan : nan ^ 0x1;
        for (int64_t i = 0; i < c->n; ++i) StoreBits(c->in->data(), d, i, c->input[i]);
        for (bool with_squares : {false, true}) {
          fls::ScaleCheck check;
          CoreScaleAndCheckElements(c->span, first, first + n, Unscale(3.0f), with_squares, &check);
          bool finite;
          long double exact;
          ExpectedCheck(*c, Unscale(3.0f), first, first + n, &finite, &exact);
          CheckScaleCheck(check, finite, exact, n, d, with_squares, 0.0, "NaN neighbours");
        }
      }
    }
  }
}

// Random partitions of a list's byte space, each range with its own
// ScaleCheck, combined in range order as the kernel combines its shards.
void TestCheckedPartitions(std::mt19937_64& rng) {
  for (int trial = 0; trial < 300; ++trial) {
    const bool in_place = trial & 1;
    const bool with_squares = trial & 2;
    std::vector<std::unique_ptr<Case>> cases = RandomList(rng, in_place);
    // Sometimes one Inf or NaN somewhere in the list.
    if (trial % 3 == 0) {
      Case& c = *cases[rng() % cases.size()];
      if (c.n > 0) {
        uint64_t v = RandomBits(rng, c.dtype);
        while (RefFinite(c.dtype, v)) v = RandomBits(rng, c.dtype);
        const int64_t i = rng() % c.n;
        c.input[i] = v;
        StoreBits(c.in->data(), c.dtype, i, v);
      }
    }
    const fls::ScaleFactor factor = Unscale((trial % 5 == 0) ? 2.0f : 3.0f);
    bool finite = true;
    long double exact = 0;
    int64_t elements = 0;
    std::vector<fls::TensorSpan> spans;
    for (auto& c : cases) {
      bool f;
      long double e;
      ExpectedCheck(*c, factor, 0, c->n, &f, &e);
      finite &= f;
      exact += e;
      elements += c->n;
      spans.push_back(c->span);
    }
    const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
    const std::vector<int64_t> cuts = RandomCuts(rng, offsets.back());
    fls::ScaleCheck combined;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      fls::ScaleCheck check;
      CoreScaleAndCheckByteRange(spans, offsets, cuts[i], cuts[i + 1], factor, with_squares,
                                 &check);
      combined.all_finite &= check.all_finite;
      combined.sum_of_squares += check.sum_of_squares;
    }
    for (auto& c : cases) CheckCase(*c, factor, "checked partition");
    CheckScaleCheck(combined, finite, exact, elements, DType::kFloat, with_squares, 0.0,
                    "checked partition");
  }
}

// 10,000 tensors in one checked call; empty lists and ranges; what *check held
// before (a false flag stays false, the sum is added to).
void TestCheckedManyAndDegenerate(std::mt19937_64& rng) {
  std::vector<std::unique_ptr<Case>> cases;
  std::vector<fls::TensorSpan> spans;
  bool finite = true;
  long double exact = 0;
  int64_t elements = 0;
  for (int i = 0; i < 10000; ++i) {
    cases.push_back(MakeCase(kDTypes[rng() % 4], rng() % 10, rng() % 8, rng() % 8,
                             (rng() % 3) == 0, rng, /*ordinary=*/true));
    bool f;
    long double e;
    ExpectedCheck(*cases.back(), Unscale(1024.0f), 0, cases.back()->n, &f, &e);
    finite &= f;
    exact += e;
    elements += cases.back()->n;
    spans.push_back(cases.back()->span);
  }
  const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
  fls::ScaleCheck check;
  CoreScaleAndCheckByteRange(spans, offsets, 0, offsets.back(), Unscale(1024.0f), true, &check);
  for (auto& c : cases) CheckCase(*c, Unscale(1024.0f), "10000 tensors, checked");
  CheckScaleCheck(check, finite, exact, elements, DType::kFloat, true, 0.0,
                  "10000 tensors, checked");

  std::vector<fls::TensorSpan> none;
  fls::ScaleCheck empty;
  CoreScaleAndCheckByteRange(none, fls::ByteOffsets(none), 0, 0, Unscale(2.0f), true, &empty);
  EXPECT(empty.all_finite && empty.sum_of_squares == 0.0, "an empty list changed the check");
  std::vector<fls::TensorSpan> empties{{nullptr, nullptr, 0, DType::kHalf},
                                       {nullptr, nullptr, 0, DType::kDouble}};
  CoreScaleAndCheckByteRange(empties, fls::ByteOffsets(empties), 0, 0, Unscale(2.0f), true,
                             &empty);
  EXPECT(empty.all_finite && empty.sum_of_squares == 0.0, "empty tensors changed the check");
  fls::ScaleCheck held{false, 1.5};
  auto c = MakeCase(DType::kFloat, 33, 1, 2, false, rng, /*ordinary=*/true);
  CoreScaleAndCheckElements(c->span, 0, 33, Unscale(2.0f), true, &held);
  bool f;
  long double e;
  ExpectedCheck(*c, Unscale(2.0f), 0, 33, &f, &e);
  EXPECT(!held.all_finite, "a false flag became true");
  EXPECT(std::fabs(held.sum_of_squares - 1.5 - e) <= SquaresTolerance(DType::kFloat, e, 33),
         "the sum was not added to the one held: %a", held.sum_of_squares);
  CoreScaleAndCheckElements(c->span, 5, 5, Unscale(2.0f), true, &empty);
  CoreScaleAndCheckElements(c->span, 7, 3, Unscale(2.0f), true, &empty);
  EXPECT(empty.all_finite && empty.sum_of_squares == 0.0, "an empty range changed the check");
}

// A case's input as a read-only span: no output pointer.
fls::TensorSpan ReadOnly(const Case& c) { return fls::TensorSpan{c.in->data(), nullptr, c.n, c.dtype}; }

// A copy of `c`'s input, in place, at the same misalignment: what the checked
// loop must see to make the same blocks as the check-only loop.
std::unique_ptr<Case> InPlaceCopy(const Case& c, int misalign, std::mt19937_64& rng) {
  auto copy = MakeCase(c.dtype, c.n, misalign, 0, /*in_place=*/true, rng);
  copy->input = c.input;
  for (int64_t i = 0; i < c.n; ++i) StoreBits(copy->in->data(), c.dtype, i, c.input[i]);
  return copy;
}

void ExpectSameCheck(const fls::ScaleCheck& got, const fls::ScaleCheck& fused,
                     const std::string& what) {
  EXPECT(got.all_finite == fused.all_finite &&
             std::memcmp(&got.sum_of_squares, &fused.sum_of_squares, sizeof(double)) == 0,
         "%s: check-only (%d, %a), checked loop (%d, %a)", what.c_str(), got.all_finite,
         got.sum_of_squares, fused.all_finite, fused.sum_of_squares);
}

void ExpectInputUntouched(const Case& c, const std::string& what) {
  for (int64_t i = 0; i < c.n; ++i) {
    EXPECT(LoadBits(c.in->data(), c.dtype, i) == c.input[i], "%s: input %lld changed",
           what.c_str(), static_cast<long long>(i));
  }
}

// The check without store over one tensor at every size, alignment and
// sub-range: the checked loop's flag and sum (run in place on a copy at the
// same alignment), the reference's, the input untouched; scales below 1 let
// finite values overflow. Then random partitions of lists, as the shards.
void TestCheckOnly(std::mt19937_64& rng) {
  std::vector<int64_t> sizes;
  for (int64_t n = 0; n <= 40; ++n) sizes.push_back(n);
  for (int64_t p : {63, 64, 65, 127, 129, 255, 257, 1025, 4097, 16411}) sizes.push_back(p);
  const float scales[] = {1.0f, 3.0f, 1000.0f, 0.5f, 0x1p-20f};
  long runs = 0;
  for (DType d : kDTypes) {
    for (int64_t n : sizes) {
      for (int misalign = 0; misalign < 8; misalign += (n > 300 ? 3 : 1)) {
        for (bool with_squares : {false, true}) {
          const fls::ScaleFactor factor = Unscale(scales[rng() % 5]);
          auto c = MakeCase(d, n, misalign, 0, /*in_place=*/true, rng);
          FillForCheck(*c, rng);
          auto fused = InPlaceCopy(*c, misalign, rng);
          const int64_t first = (n == 0 || rng() % 2) ? 0 : rng() % (n + 1);
          const int64_t last = (n == 0 || rng() % 2) ? n : first + rng() % (n - first + 1);
          fls::ScaleCheck check;
          fls::ScaleCheck fused_check;
          CoreCheckElements(ReadOnly(*c), first, last, factor, with_squares, &check);
          CoreScaleAndCheckElements(fused->span, first, last, factor, with_squares, &fused_check);
          const std::string what = "CheckElementsWithPath n=" + std::to_string(n) + " [" +
                                   std::to_string(first) + ", " + std::to_string(last) + ")";
          ExpectSameCheck(check, fused_check, what);
          bool finite;
          long double exact;
          ExpectedCheck(*c, factor, first, last, &finite, &exact);
          CheckScaleCheck(check, finite, exact, last - first, d, with_squares, 0.0, what);
          ExpectInputUntouched(*c, what);
          runs += 1;
        }
      }
    }
  }
  for (int trial = 0; trial < 200; ++trial) {
    const bool with_squares = trial & 1;
    std::vector<std::unique_ptr<Case>> cases;
    std::vector<std::unique_ptr<Case>> copies;
    std::vector<fls::TensorSpan> spans;
    std::vector<fls::TensorSpan> fused_spans;
    const int num = 1 + rng() % 30;
    for (int i = 0; i < num; ++i) {
      const int misalign = rng() % 8;
      cases.push_back(MakeCase(kDTypes[rng() % 4], (rng() % 5 == 0) ? 0 : 1 + rng() % 300,
                               misalign, 0, /*in_place=*/true, rng, /*ordinary=*/trial % 3 != 0));
      copies.push_back(InPlaceCopy(*cases.back(), misalign, rng));
      spans.push_back(ReadOnly(*cases.back()));
      fused_spans.push_back(copies.back()->span);
    }
    const std::vector<int64_t> offsets = fls::ByteOffsets(spans);
    std::vector<int64_t> cuts{0, offsets.back()};
    for (int i = rng() % 20; i > 0; --i) cuts.push_back(rng() % (offsets.back() + 1));
    std::sort(cuts.begin(), cuts.end());
    const fls::ScaleFactor factor = Unscale(trial % 4 == 0 ? 0.5f : 3.0f);
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      fls::ScaleCheck check;
      fls::ScaleCheck fused_check;
      CoreCheckByteRange(spans, offsets, cuts[i], cuts[i + 1], factor, with_squares, &check);
      CoreScaleAndCheckByteRange(fused_spans, offsets, cuts[i], cuts[i + 1], factor,
                                 with_squares, &fused_check);
      ExpectSameCheck(check, fused_check, "CheckByteRange partition " + std::to_string(trial));
      runs += 1;
    }
    for (auto& c : cases) ExpectInputUntouched(*c, "CheckByteRange");
  }
  std::vector<fls::TensorSpan> none;
  fls::ScaleCheck empty;
  CoreCheckByteRange(none, fls::ByteOffsets(none), 0, 0, Unscale(2.0f), true, &empty);
  EXPECT(empty.all_finite && empty.sum_of_squares == 0.0, "check-only: an empty list counted");
  std::printf("  check without store: %ld calls\n", runs);
}

// The reference itself, on values worked by hand.
void TestReference() {
  const float third = 1.0f / 3.0f;
  EXPECT(Reference(DType::kHalf, 0x3c00, 0.5f, 0.5) == 0x3800, "half 1 * 0.5");
  EXPECT(Reference(DType::kHalf, 0x7bff, 2.0f, 2.0) == 0x7c00, "half max * 2 = inf");
  EXPECT(Reference(DType::kHalf, 0x0001, 0.5f, 0.5) == 0x0000, "half min subnormal / 2 = 0 (tie to even)");
  EXPECT(Reference(DType::kHalf, 0x0003, 0.5f, 0.5) == 0x0002, "half 3 ulp / 2 = 2 ulp (tie to even)");
  EXPECT(Reference(DType::kHalf, 0x3c00, third, third) == 0x3555, "half 1/3");
  EXPECT(Reference(DType::kHalf, 0x8400, 0.5f, 0.5) == 0x8200, "half -min normal / 2");
  EXPECT(Reference(DType::kBFloat16, 0x3f80, third, third) == 0x3eab, "bfloat16 1/3");
  EXPECT(Reference(DType::kBFloat16, 0x7f7f, 2.0f, 2.0) == 0x7f80, "bfloat16 max * 2 = inf");
  EXPECT(Reference(DType::kFloat, 0x3f800000, third, third) == 0x3eaaaaab, "float 1/3");
  EXPECT(Reference(DType::kFloat, 0x00000001, 0.5f, 0.5) == 0, "float min subnormal / 2");
  EXPECT(Reference(DType::kDouble, 0x3ff0000000000000ull, third, 1.0 / 3.0) == 0x3fd5555555555555ull,
         "double 1/3");
  EXPECT(RoundToSmallFloat(65519.0, 10, 5) == 0x7bff && RoundToSmallFloat(65520.0, 10, 5) == 0x7c00,
         "half overflow threshold");
}

}  // namespace

// The sanitizers' options, built in so that Make and Bazel run the test alike.
extern "C" const char* __asan_default_options() {
  return "halt_on_error=1:detect_stack_use_after_return=1";
}
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20240601;
  const char* path = std::getenv("FIXED_LOSS_SCALE_CPU_PATH");
  std::printf("cpu_core_sanitizer_test seed %llu, FIXED_LOSS_SCALE_CPU_PATH=%s\n",
              (unsigned long long)seed, path ? path : "(unset: best path)");
  std::printf(" active CPU path: %s\n", fls::CpuPathName(fls::ActiveCpuPath()));
  TestReference();
  for (bool ftz : {false, true}) {
#if !defined(__SSE2__)
    if (ftz) break;
#endif
    g_ftz = ftz;
    std::printf(" mode: %s\n", ftz ? "FTZ|DAZ (as in TensorFlow's threads)" : "IEEE (no flushing)");
    std::mt19937_64 rng(seed);
    TestByteOffsets(rng);
    TestDegenerate(rng);
    TestSizesAndAlignments(rng);
    TestAllSixteenBitPatterns(rng);
    TestRandomWide(rng);
    TestManyTensors(rng);
    TestRandomPartitions(rng);
    TestSingleRangeOwnership(rng);
    TestCheckedSizesAndAlignments(rng);
    TestCheckedIgnoresNeighbours(rng);
    TestCheckedPartitions(rng);
    TestCheckedManyAndDegenerate(rng);
    TestCheckOnly(rng);
  }
  std::printf("%ld checks, %ld failures\n", g_checks, g_failures);
  if (g_failures) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("PASSED\n");
  return 0;
}
