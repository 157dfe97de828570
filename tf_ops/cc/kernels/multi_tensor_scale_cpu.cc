// See multi_tensor_scale_cpu.h.
#include "tf_ops/cc/kernels/multi_tensor_scale_cpu.h"

#include <algorithm>

namespace fixed_loss_scale {
namespace {

// One tight loop per storage type; the per-element switch of ScaleElement stays
// out of the hot path so the compiler can vectorise each loop.
template <typename Storage, typename ElementFn>
void ScaleLoop(const void* in, void* out, int64_t first, int64_t last, ElementFn element_fn) {
  const Storage* src = static_cast<const Storage*>(in);
  Storage* dst = static_cast<Storage*>(out);
  for (int64_t i = first; i < last; ++i) dst[i] = element_fn(src[i]);
}

// Smallest element index of a span whose first byte is at or after `byte`.
int64_t FirstElementAtOrAfter(int64_t byte, int64_t span_offset, int64_t element_size) {
  if (byte <= span_offset) return 0;
  return (byte - span_offset + element_size - 1) / element_size;
}

}  // namespace

std::vector<int64_t> ByteOffsets(const std::vector<TensorSpan>& spans) {
  std::vector<int64_t> offsets(spans.size() + 1, 0);
  for (size_t i = 0; i < spans.size(); ++i) {
    offsets[i + 1] = offsets[i] + spans[i].num_elements * DTypeSize(spans[i].dtype);
  }
  return offsets;
}

void ScaleElements(const TensorSpan& span, int64_t first, int64_t last, ScaleFactor factor) {
  if (first >= last) return;
  switch (span.dtype) {
    case DType::kHalf:
      ScaleLoop<uint16_t>(span.in, span.out, first, last,
                          [f = factor.f](uint16_t x) { return ScaleHalfBits(x, f); });
      break;
    case DType::kBFloat16:
      ScaleLoop<uint16_t>(span.in, span.out, first, last,
                          [f = factor.f](uint16_t x) { return ScaleBFloat16Bits(x, f); });
      break;
    case DType::kFloat:
      ScaleLoop<float>(span.in, span.out, first, last,
                       [f = factor.f](float x) { return ScaleFloat(x, f); });
      break;
    case DType::kDouble:
      ScaleLoop<double>(span.in, span.out, first, last,
                        [d = factor.d](double x) { return ScaleDouble(x, d); });
      break;
  }
}

void ScaleByteRange(const std::vector<TensorSpan>& spans,
                    const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                    int64_t byte_end, ScaleFactor factor) {
  // The first span that ends after byte_begin; spans are visited until one
  // starts at or after byte_end.
  size_t i = std::upper_bound(byte_offsets.begin() + 1, byte_offsets.end(), byte_begin) -
             (byte_offsets.begin() + 1);
  for (; i < spans.size() && byte_offsets[i] < byte_end; ++i) {
    const int64_t element_size = DTypeSize(spans[i].dtype);
    const int64_t first = FirstElementAtOrAfter(byte_begin, byte_offsets[i], element_size);
    const int64_t last = std::min(
        spans[i].num_elements, FirstElementAtOrAfter(byte_end, byte_offsets[i], element_size));
    ScaleElements(spans[i], first, last, factor);
  }
}

}  // namespace fixed_loss_scale
