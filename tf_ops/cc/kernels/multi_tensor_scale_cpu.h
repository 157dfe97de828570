// The CPU core of both ops: multiply every element of a list of tensors by one
// factor, in plain C++ over pointers and sizes (no TensorFlow header), so that
// it is built and run standalone under sanitizers (tf_ops/tests/).
//
// NOTE [byte sharding]: the tensors are laid end to end in one byte space and
// work is split by byte ranges, not by tensor, so one huge tensor and ten
// thousand tiny ones spread over every thread alike. An element belongs to the
// range that holds its first byte, so any partition of [0, total_bytes) writes
// every element exactly once.
#ifndef FIXED_LOSS_SCALE_MULTI_TENSOR_SCALE_CPU_H_
#define FIXED_LOSS_SCALE_MULTI_TENSOR_SCALE_CPU_H_

#include <cstdint>
#include <vector>

#include "tf_ops/cc/kernels/scale_math.h"

namespace fixed_loss_scale {

// One tensor of the list: `out[i] = in[i] * factor` for i < num_elements.
// `in` and `out` may be the same buffer (in place); otherwise they must not overlap.
struct TensorSpan {
  const void* in;
  void* out;
  int64_t num_elements;
  DType dtype;
};

// Byte offset of each span in the concatenated byte space, plus the total at
// the end: offsets.size() == spans.size() + 1.
std::vector<int64_t> ByteOffsets(const std::vector<TensorSpan>& spans);

// Scales the elements whose first byte lies in [byte_begin, byte_end), see
// NOTE [byte sharding]. `byte_offsets` comes from ByteOffsets(spans).
void ScaleByteRange(const std::vector<TensorSpan>& spans,
                    const std::vector<int64_t>& byte_offsets, int64_t byte_begin,
                    int64_t byte_end, ScaleFactor factor);

// Scales elements [first, last) of one span.
void ScaleElements(const TensorSpan& span, int64_t first, int64_t last, ScaleFactor factor);

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_MULTI_TENSOR_SCALE_CPU_H_
