// The kernel body's memory policy: every load and store it makes, and the
// fused check's cross-block accesses, go through a Memory object. DirectMemory
// is what the GPU runs (plain accesses, a fence, an atomic ticket); the host
// emulation (tf_ops/tests/host_emulation_test.cc) substitutes a policy with the
// same members that also checks alignment and counts every byte read and
// written, and so runs the same body on the host.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_DEVICE_MEMORY_H_
#define FIXED_LOSS_SCALE_CORE_GPU_DEVICE_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tf_ops/core/gpu/chunk_table.h"

// The per-pack arrays must live in registers: fully unrolled loops index them
// with constants only (otherwise nvcc places them in local memory). Device
// compilation only: host compilers warn about the pragma.
#if defined(__CUDA_ARCH__)
#define FLS_UNROLL _Pragma("unroll")
#else
#define FLS_UNROLL
#endif

namespace fixed_loss_scale {
namespace gpu {

// 16 bytes of one dtype's storage, loaded and stored as one access.
template <typename Storage>
struct alignas(kPackBytes) Pack {
  static constexpr int kLanes = static_cast<int>(kPackBytes / sizeof(Storage));
  Storage lanes[kLanes];
  FLS_HOST_DEVICE Storage Lane(int i) const { return lanes[i]; }
  FLS_HOST_DEVICE void SetLane(int i, Storage value) { lanes[i] = value; }
};

// 16-bit elements travel as four 32-bit words, two lanes each (lane 2i in the
// low half, as in memory on the GPU and on x86): the paired 16-bit path
// (element_math.h) works on the words, and the compiler keeps a pack in four
// registers instead of splitting it into eight.
template <>
struct alignas(kPackBytes) Pack<uint16_t> {
  static constexpr int kLanes = 8;
  uint32_t words[4];
  FLS_HOST_DEVICE uint16_t Lane(int i) const {
    return static_cast<uint16_t>(words[i / 2] >> (16 * (i % 2)));
  }
  FLS_HOST_DEVICE void SetLane(int i, uint16_t value) {
    const int shift = 16 * (i % 2);
    words[i / 2] = (words[i / 2] & ~(0xffffu << shift)) | static_cast<uint32_t>(value) << shift;
  }
};

struct DirectMemory {
  template <typename T>
  FLS_HOST_DEVICE T Load(const T* address) const {
#if defined(__CUDA_ARCH__)
    return *address;
#else
    T value;
    memcpy(&value, address, sizeof(T));
    return value;
#endif
  }

  template <typename T>
  FLS_HOST_DEVICE void Store(T* address, const T& value) const {
#if defined(__CUDA_ARCH__)
    *address = value;
#else
    memcpy(address, &value, sizeof(T));
#endif
  }

  // The checked launches' cross-block accesses (NOTE [ticket counter] in
  // multi_tensor_scale.cu): a volatile load, which the SM's L1 (not coherent
  // with other SMs' stores) does not serve; a device-wide fence; and the
  // ticket: atomically adds 1, returns the old value. The host versions serve
  // the host emulation, which runs one thread at a time.
  template <typename T>
  FLS_HOST_DEVICE T LoadCoherent(const T* address) const {
#if defined(__CUDA_ARCH__)
    static_assert(sizeof(T) % 8 == 0 && alignof(T) >= 8, "loaded as 8-byte words");
    unsigned long long words[sizeof(T) / 8];
    FLS_UNROLL
    for (size_t i = 0; i < sizeof(T) / 8; ++i) {
      words[i] = reinterpret_cast<const volatile unsigned long long*>(address)[i];
    }
    T value;
    memcpy(&value, words, sizeof(T));
    return value;
#else
    return Load(address);
#endif
  }

  FLS_HOST_DEVICE void Fence() const {
#if defined(__CUDA_ARCH__)
    __threadfence();
#endif
  }

  FLS_HOST_DEVICE unsigned TakeTicket(unsigned* counter) const {
#if defined(__CUDA_ARCH__)
    return atomicAdd(counter, 1u);
#else
    const unsigned ticket = Load(counter);
    Store(counter, ticket + 1);
    return ticket;
#endif
  }
};

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_DEVICE_MEMORY_H_
