// Launchers of the GPU kernels of this library's ops (FixedScaleLoss,
// FixedUnscaleGrads, FixedUnscaleGradsAndCheck and FixedCheckGrads): a plain
// C++ API over device pointers, sizes, dtype tags and a cudaStream_t that
// depends on the CUDA runtime only (no TensorFlow), so the TensorFlow kernel
// (tf_ops/tf/kernels/fixed_loss_scale_gpu.cc) is a thin adapter and
// launcher_driver.cu builds and tests it with nvcc alone.
//
// One call makes one kernel launch over the whole list, whatever its length and
// dtype mix (NOTE [chunk table] in chunk_table.h). This header declares the
// launchers only: the kernel body (multi_tensor_scale_body.h and the headers
// it includes) is compiled by multi_tensor_scale.cu alone.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_H_
#define FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {

// Bytes of table scratch a launch over `num_tensors` tensors needs: 0 when the
// table travels as the kernel's parameter, otherwise the size of both the
// pinned host buffer and the device buffer LaunchMultiTensorScale takes.
size_t MultiTensorScaleScratchBytes(int64_t num_tensors);

// Enqueues out = in * factor for every tensor of `tensors` on `stream`: one
// kernel launch, none when every tensor is empty. Element math: scale_math.h
// (`factor.f` for half, bfloat16 and float, `factor.d` for double).
//
// When MultiTensorScaleScratchBytes(num_tensors) > 0:
//   host_scratch   page-locked host memory of that size, 8-byte aligned. The
//                  launcher fills it and enqueues one cudaMemcpyAsync from it;
//                  the caller must not reuse or free it until `stream` has
//                  passed that copy (e.g. an event recorded after this call).
//   device_scratch device memory of that size, 8-byte aligned, valid until the
//                  kernel has run (stream order).
// Otherwise both may be null.
//
// Returns the first CUDA error met (nothing is enqueued after it), or
// cudaErrorInvalidValue for a negative count or size, or missing scratch.
cudaError_t LaunchMultiTensorScale(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, void* host_scratch, void* device_scratch,
                                   cudaStream_t stream);

// FixedUnscaleGradsAndCheck: the same scaling, and a check of the outputs it
// writes, in the same single launch (NOTE [fused check] in check_reduction.h).
//
// Bytes of device scratch a checked launch over `tensors` needs: the table
// when it travels in a buffer, the per-block partials and the ticket counter;
// a multiple of 8, never 0 (an empty list still writes its outputs). The host
// scratch stays MultiTensorScaleScratchBytes(num_tensors) (the table only).
// 0 for an invalid list (negative count or element count).
size_t MultiTensorScaleAndCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors);

// One launch: out = in * factor for every tensor (bit-identical to
// LaunchMultiTensorScale), and writes *all_finite (device bool: every output
// finite) and *sum_of_squares (device float: the sum of the outputs' squares,
// or a quiet NaN 0x7fc00000 when !with_sum_of_squares) in stream order, also
// for an empty list. No float atomics: per-block partials and a last-block
// reduction in a fixed order, so the result depends only on the inputs and the
// grid.
//
// host_scratch   as for LaunchMultiTensorScale (null when
//                MultiTensorScaleScratchBytes(num_tensors) is 0).
// device_scratch device memory of MultiTensorScaleAndCheckScratchBytes(tensors,
//                num_tensors) bytes, 8-byte aligned, valid until the kernel has
//                run (stream order); never null. Its contents on entry do not
//                matter (the launcher zeroes what must be zero in stream order).
//
// Returns the first CUDA error met, or cudaErrorInvalidValue for an invalid
// list or missing scratch or output pointer.
cudaError_t LaunchMultiTensorScaleAndCheck(const TensorSpan* tensors, int64_t num_tensors,
                                           ScaleFactor factor, bool with_sum_of_squares,
                                           void* host_scratch, void* device_scratch,
                                           bool* all_finite, float* sum_of_squares,
                                           cudaStream_t stream);

// FixedCheckGrads: the check of LaunchMultiTensorScaleAndCheck without its
// writes, in one launch with the same fixed-order reduction. Reads
// tensors[i].in only; tensors[i].out may be null and is never written (the
// chunks follow the input's alignment, as an in-place launch's do). The flag is
// the checked launch's for the same tensors and factor; so is the sum of
// squares, bit for bit, whenever that launch's input and output sit at the same
// offset modulo 16 bytes (in place, or TensorFlow's aligned buffers). Also for
// an empty list (true, and 0 or the not-computed NaN).
//
// Device scratch bytes (the table when it travels in a buffer, the per-block
// partials and the ticket counter): a multiple of 8, never 0; 0 for an
// invalid list. The host scratch is MultiTensorScaleScratchBytes(num_tensors).
size_t MultiTensorCheckScratchBytes(const TensorSpan* tensors, int64_t num_tensors);

// Scratch, lifetime and error contract as LaunchMultiTensorScaleAndCheck's.
cudaError_t LaunchMultiTensorCheck(const TensorSpan* tensors, int64_t num_tensors,
                                   ScaleFactor factor, bool with_sum_of_squares,
                                   void* host_scratch, void* device_scratch, bool* all_finite,
                                   float* sum_of_squares, cudaStream_t stream);

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_H_
