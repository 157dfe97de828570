// A plain-C view of the core's facts and choices, exported by the op library
// (and by the standalone CPU-core test library), so that Python reads them with
// ctypes instead of restating them: the benchmark reports the CPU path the
// kernels really take, the wrappers check the same loss-scale range as the op
// registration, and tests learn dtype codes and the sharding threshold.
#ifndef FIXED_LOSS_SCALE_CORE_C_API_H_
#define FIXED_LOSS_SCALE_CORE_C_API_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The CPU path the kernels use in this process (NOTE [CPU paths]): 0 scalar,
// 1 avx2, 2 avx512; its name; whether this build and CPU support `path`.
int fls_active_cpu_path(void);
const char* fls_cpu_path_name(int path);
int fls_cpu_path_supported(int path);
// The code of a path name ("scalar", "avx2", "avx512"), or -1.
int fls_cpu_path_code(const char* name);
// 1 where the active path's bfloat16 loop is the AVX512_BF16 convert loop on
// TensorFlow's threads (FTZ/DAZ on; NOTE [bfloat16 convert]).
int fls_avx512_bf16_loop_active(void);

// The DType code of a TensorFlow type name ("half", "bfloat16", "float",
// "double"), or -1.
int fls_dtype_code(const char* name);

// NOTE [loss scale range]: the smallest and largest valid loss scale.
float fls_min_loss_scale(void);
float fls_max_loss_scale(void);

// NOTE [shard plan]: lists of at least this many bytes are split over threads.
int64_t fls_min_sharded_bytes(void);

// NOTE [sum of squares] (tf_ops/core/cpu/scale_loop.h): the most squares a
// float32 accumulator lane of the CPU loops takes before its flush to float64,
// which sets the sum's error bound.
int fls_squares_per_flush(void);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // FIXED_LOSS_SCALE_CORE_C_API_H_
