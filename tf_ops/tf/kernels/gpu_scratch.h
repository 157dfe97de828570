// What the GPU adapters (fixed_loss_scale_gpu.cc, fused_update_gpu.cc) share
// around a launcher call: the table scratch pair and its release once the
// stream has passed the table copy (NOTE [pinned table lifetime] in
// fixed_loss_scale_gpu.cc), and a launcher's status as the op's.
#ifndef FIXED_LOSS_SCALE_TF_KERNELS_GPU_SCRATCH_H_
#define FIXED_LOSS_SCALE_TF_KERNELS_GPU_SCRATCH_H_

#if GOOGLE_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"

namespace fixed_loss_scale {

// Keeps `host_scratch` alive until the op's stream has passed everything
// enqueued so far.
void ReleaseWhenStreamPasses(tensorflow::OpKernelContext* context,
                             const tensorflow::Tensor& host_scratch);

// The table scratch of one launcher call: a pinned host buffer and a device
// buffer of the launcher's ScratchBytes each (TensorFlow's GpuDeviceArrayOnHost
// allocates the same pair), or nothing (null pointers) for 0 bytes.
class TableScratch {
 public:
  absl::Status Allocate(tensorflow::OpKernelContext* context, int64_t bytes);
  void* host() { return bytes_ > 0 ? host_.data() : nullptr; }
  void* device() { return bytes_ > 0 ? device_.data() : nullptr; }
  // After the launcher call: the host buffer is kept until the stream passes
  // the table copy (NOTE [pinned table lifetime]).
  void Release(tensorflow::OpKernelContext* context);

 private:
  int64_t bytes_ = 0;
  tensorflow::Tensor host_;
  tensorflow::Tensor device_;
};

// OkStatus, or an InternalError naming the op and the CUDA error.
absl::Status LaunchStatus(tensorflow::OpKernelContext* context, cudaError_t launched);

}  // namespace fixed_loss_scale

#endif  // GOOGLE_CUDA
#endif  // FIXED_LOSS_SCALE_TF_KERNELS_GPU_SCRATCH_H_
