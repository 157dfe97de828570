// C entry points to the CPU core for tests/test_simd_paths.py (ctypes): runs
// one CpuPath over a buffer under a chosen MXCSR state. Built without any
// TensorFlow header by `make simd-test-lib`, together with tf_ops/core/c_api.cc
// (path queries, dtype codes).
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "tf_ops/core/cpu/multi_tensor_scale_cpu.h"

using fixed_loss_scale::CpuPath;
using fixed_loss_scale::DType;
using fixed_loss_scale::ScaleCheck;
using fixed_loss_scale::ScaleFactor;
using fixed_loss_scale::TensorSpan;

namespace {

// Sets the MXCSR flush-to-zero and denormals-are-zero bits (ftz_daz != 0, as
// in TensorFlow's threads) or clears them, for the object's lifetime.
class ScopedMxcsr {
 public:
  explicit ScopedMxcsr(int ftz_daz) {
#if defined(__x86_64__)
    saved_ = _mm_getcsr();
    _mm_setcsr(ftz_daz ? (saved_ | fixed_loss_scale::kMxcsrFtzDaz)
                       : (saved_ & ~fixed_loss_scale::kMxcsrFtzDaz));
#endif
  }
  ~ScopedMxcsr() {
#if defined(__x86_64__)
    _mm_setcsr(saved_);
#endif
  }

 private:
  unsigned int saved_ = 0;
};

// The list of fls_scale_list; `outs` may be null (the check-only range).
std::vector<TensorSpan> ListSpans(int num_tensors, const int* dtypes, const void* const* ins,
                                  void* const* outs, const int64_t* num_elements) {
  std::vector<TensorSpan> spans;
  for (int i = 0; i < num_tensors; ++i) {
    spans.push_back(TensorSpan{ins[i], outs == nullptr ? nullptr : outs[i], num_elements[i],
                               static_cast<DType>(dtypes[i])});
  }
  return spans;
}

// Each range [cuts[k], cuts[k+1]) of `spans` folded into its own ScaleCheck, by
// ScaleAndCheckByteRange (`write`) or CheckByteRange (FixedCheckGrads, nothing
// written), the checks combined in range order (as the kernel does with its
// shards).
void CheckRanges(const std::vector<TensorSpan>& spans, bool write, const int64_t* cuts,
                 int num_cuts, ScaleFactor factor, int with_sum_of_squares, int* all_finite,
                 double* sum_of_squares) {
  const std::vector<int64_t> offsets = fixed_loss_scale::ByteOffsets(spans);
  ScaleCheck total;
  for (int k = 0; k + 1 < num_cuts; ++k) {
    ScaleCheck check;
    if (write) {
      fixed_loss_scale::ScaleAndCheckByteRange(spans, offsets, cuts[k], cuts[k + 1], factor,
                                               with_sum_of_squares != 0, &check);
    } else {
      fixed_loss_scale::CheckByteRange(spans, offsets, cuts[k], cuts[k + 1], factor,
                                       with_sum_of_squares != 0, &check);
    }
    total.all_finite &= check.all_finite;
    total.sum_of_squares += check.sum_of_squares;
  }
  *all_finite = total.all_finite ? 1 : 0;
  *sum_of_squares = total.sum_of_squares;
}

}  // namespace

extern "C" {

// out[first:last] = in[first:last] * factor with `path`; `dtype` numbers as
// fixed_loss_scale::DType (fls_dtype_code). With ftz_daz != 0 the MXCSR flush-to-zero and
// denormals-are-zero bits are set for the call (as in TensorFlow's threads),
// otherwise cleared; the caller's MXCSR is restored afterwards.
void fls_scale(int path, int dtype, const void* in, void* out, int64_t num_elements,
               int64_t first, int64_t last, float factor_f, double factor_d, int ftz_daz) {
  const TensorSpan span{in, out, num_elements, static_cast<DType>(dtype)};
  const ScopedMxcsr mode(ftz_daz);
  fixed_loss_scale::ScaleElementsWithPath(static_cast<CpuPath>(path), span, first, last,
                                          ScaleFactor{factor_f, factor_d});
}

// fls_scale through ScaleAndCheckElementsWithPath: also returns whether every
// output is finite (*all_finite, 0 or 1) and, when with_sum_of_squares, the sum
// of their squares (*sum_of_squares, float64 as the core keeps it, added to
// the value passed in; untouched otherwise).
void fls_scale_and_check(int path, int dtype, const void* in, void* out, int64_t num_elements,
                         int64_t first, int64_t last, float factor_f, double factor_d,
                         int ftz_daz, int with_sum_of_squares, int* all_finite,
                         double* sum_of_squares) {
  const TensorSpan span{in, out, num_elements, static_cast<DType>(dtype)};
  ScaleCheck check;
  check.sum_of_squares = *sum_of_squares;
  {
    const ScopedMxcsr mode(ftz_daz);
    fixed_loss_scale::ScaleAndCheckElementsWithPath(static_cast<CpuPath>(path), span, first,
                                                    last, ScaleFactor{factor_f, factor_d},
                                                    with_sum_of_squares != 0, &check);
  }
  *all_finite = check.all_finite ? 1 : 0;
  *sum_of_squares = check.sum_of_squares;
}

// fls_scale_and_check through CheckElementsWithPath (FixedCheckGrads): the
// same *all_finite and *sum_of_squares, nothing written.
void fls_check(int path, int dtype, const void* in, int64_t num_elements, int64_t first,
               int64_t last, float factor_f, double factor_d, int ftz_daz,
               int with_sum_of_squares, int* all_finite, double* sum_of_squares) {
  const TensorSpan span{in, nullptr, num_elements, static_cast<DType>(dtype)};
  ScaleCheck check;
  check.sum_of_squares = *sum_of_squares;
  {
    const ScopedMxcsr mode(ftz_daz);
    fixed_loss_scale::CheckElementsWithPath(static_cast<CpuPath>(path), span, first, last,
                                            ScaleFactor{factor_f, factor_d},
                                            with_sum_of_squares != 0, &check);
  }
  *all_finite = check.all_finite ? 1 : 0;
  *sum_of_squares = check.sum_of_squares;
}

// Scales a list of tensors with the active path through ScaleByteRange, one call
// per range [cuts[k], cuts[k+1]) of the concatenated byte space (any cut points:
// the ranges need not fall on element boundaries).
void fls_scale_list(int num_tensors, const int* dtypes, const void* const* ins,
                    void* const* outs, const int64_t* num_elements, const int64_t* cuts,
                    int num_cuts, float factor_f, double factor_d) {
  const std::vector<TensorSpan> spans = ListSpans(num_tensors, dtypes, ins, outs, num_elements);
  const std::vector<int64_t> offsets = fixed_loss_scale::ByteOffsets(spans);
  for (int k = 0; k + 1 < num_cuts; ++k) {
    fixed_loss_scale::ScaleByteRange(spans, offsets, cuts[k], cuts[k + 1],
                                     ScaleFactor{factor_f, factor_d});
  }
}

// fls_scale_list through ScaleAndCheckByteRange, each range folding into its
// own ScaleCheck; the checks are combined in range order (as the kernel does
// with its shards): *all_finite is 1 iff every range's flag is, and
// *sum_of_squares (when with_sum_of_squares) the float64 sum of the ranges'.
void fls_scale_and_check_list(int num_tensors, const int* dtypes, const void* const* ins,
                              void* const* outs, const int64_t* num_elements, const int64_t* cuts,
                              int num_cuts, float factor_f, double factor_d,
                              int with_sum_of_squares, int* all_finite, double* sum_of_squares) {
  CheckRanges(ListSpans(num_tensors, dtypes, ins, outs, num_elements), /*write=*/true, cuts,
              num_cuts, ScaleFactor{factor_f, factor_d}, with_sum_of_squares, all_finite,
              sum_of_squares);
}

// fls_scale_and_check_list through CheckByteRange (FixedCheckGrads): the same
// *all_finite and *sum_of_squares, from `ins` alone.
void fls_check_list(int num_tensors, const int* dtypes, const void* const* ins,
                    const int64_t* num_elements, const int64_t* cuts, int num_cuts,
                    float factor_f, double factor_d, int with_sum_of_squares, int* all_finite,
                    double* sum_of_squares) {
  CheckRanges(ListSpans(num_tensors, dtypes, ins, nullptr, num_elements), /*write=*/false,
              cuts, num_cuts, ScaleFactor{factor_f, factor_d}, with_sum_of_squares, all_finite,
              sum_of_squares);
}

}  // extern "C"
