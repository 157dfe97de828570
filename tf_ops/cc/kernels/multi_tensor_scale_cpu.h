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

// Scales elements [first, last) of one span, with the active CpuPath.
void ScaleElements(const TensorSpan& span, int64_t first, int64_t last, ScaleFactor factor);

// NOTE [CPU paths]: the element loops exist as portable scalar code (the
// functions of scale_math.h) and, on x86-64, as AVX2+F16C and AVX-512 loops
// that give the same bits (scale_simd_x86.h). The best path this CPU supports
// is picked once, at first use; the environment variable
// FIXED_LOSS_SCALE_CPU_PATH=scalar|avx2|avx512 picks a lower one (an
// unsupported or unknown value is ignored), for benchmarks and tests.
enum class CpuPath : uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Whether this build and this CPU can run `path` (kScalar always can).
bool CpuPathSupported(CpuPath path);
// The path ScaleElements and ScaleByteRange use in this process.
CpuPath ActiveCpuPath();
const char* CpuPathName(CpuPath path);
// ScaleElements with an explicit path, which must be supported (tests).
void ScaleElementsWithPath(CpuPath path, const TensorSpan& span, int64_t first, int64_t last,
                           ScaleFactor factor);

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_MULTI_TENSOR_SCALE_CPU_H_
