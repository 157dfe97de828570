// Launcher of the GPU kernel of the fused optimizer updates (FixedApplySgd,
// FixedApplyAdam): a plain C++ API over device pointers and a cudaStream_t
// that depends on the CUDA runtime only, as multi_tensor_scale.h, so the
// TensorFlow kernel (tf_ops/tf/kernels/fused_update_gpu.cc) is a thin adapter
// and launcher_driver.cu builds and checks it with nvcc alone.
//
// One call makes one kernel launch over the whole list (NOTE [chunk table] in
// chunk_table.h; its table: update_table.h). The element math is the CPU
// kernels' (tf_ops/core/fused_update_math.h) with their FTZ/DAZ emulated
// (NOTE [fused update on the GPU] in fused_update_body.h), so the GPU writes
// the CPU kernels' bits.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_H_
#define FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/gpu/update_table.h"

namespace fixed_loss_scale {

// Bytes of table scratch a launch over `num_tensors` tensors needs: 0 when the
// table travels as the kernel's parameter, otherwise the size of both the
// pinned host buffer and the device buffer LaunchFusedUpdate takes.
size_t FusedUpdateScratchBytes(int64_t num_tensors);

// Enqueues, on `stream`, the update of every tensor of `tensors` by `rule`:
// tensors[i].grad and .state[0, UpdateStates(rule)) are device pointers to
// num_elements float32 each, aligned to 4 bytes, no two overlapping; .decay
// and .fold as for the CPU kernels (UpdateTensor). Where *all_finite (a
// device bool, e.g. written by the checked launch of multi_tensor_scale.h
// earlier on the stream) is false the kernel writes nothing.
//   unscale   TensorReciprocalFactorFor(loss_scale).f, computed on the host
//             (the loss scale is a host input of every op of this library)
//   scalars   device pointers to the per-step float32 scalars (null: the
//             UpdateScalars default); read by the kernel, in stream order
// One kernel launch, none when no tensor has an element. Scratch: as
// LaunchMultiTensorScale's (host_scratch pinned, filled here and copied by
// one cudaMemcpyAsync that the caller must let complete before reusing it;
// device_scratch valid until the kernel has run); both may be null when
// FusedUpdateScratchBytes(num_tensors) is 0.
//
// Returns the first CUDA error met (nothing is enqueued after it), or
// cudaErrorInvalidValue for a negative count or size, a missing pointer (the
// flag, a tensor's gradient or state of a non-empty tensor, scratch) or an
// unknown rule.
cudaError_t LaunchFusedUpdate(UpdateRule rule, const UpdateTensor* tensors, int64_t num_tensors,
                              float unscale, const UpdateScalarPointers& scalars,
                              const bool* all_finite, void* host_scratch, void* device_scratch,
                              cudaStream_t stream);

}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_FUSED_UPDATE_H_
