// The GPU kernel bodies' memory policy for the host emulations
// (host_emulation_test.cc, fused_update_emulation_test.cc): DirectMemory's
// members (tf_ops/core/gpu/device_memory.h) with every access checked against
// one arena and its alignment, and counted per byte, so a test can say that
// each byte was read and written exactly as often as the kernel must.
#ifndef FIXED_LOSS_SCALE_TESTS_CHECKED_MEMORY_H_
#define FIXED_LOSS_SCALE_TESTS_CHECKED_MEMORY_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace fixed_loss_scale {
namespace testing {

// Read and write counts per arena byte (saturating), and access faults.
struct AccessLog {
  uintptr_t base = 0;
  int64_t size = 0;
  std::vector<uint8_t> reads;
  std::vector<uint8_t> writes;
  int64_t faults = 0;
  std::string first_fault;
};

// The kernel body's memory policy (see DirectMemory) with every access checked
// against the arena and alignment, and counted.
class CheckedMemory {
 public:
  explicit CheckedMemory(AccessLog* log) : log_(log) {}

  template <typename T>
  T Load(const T* address) const {
    T value{};
    if (Record(address, sizeof(T), alignof(T), &log_->reads)) memcpy(&value, address, sizeof(T));
    return value;
  }

  template <typename T>
  void Store(T* address, const T& value) const {
    if (Record(address, sizeof(T), alignof(T), &log_->writes)) memcpy(address, &value, sizeof(T));
  }

  // The fused check's cross-block accesses (see DirectMemory): a coherent
  // load is a load; the ticket a load and a store of the counter.
  template <typename T>
  T LoadCoherent(const T* address) const {
    return Load(address);
  }
  void Fence() const {}
  unsigned TakeTicket(unsigned* counter) const {
    const unsigned ticket = Load(counter);
    Store(counter, ticket + 1);
    return ticket;
  }

 private:
  bool Record(const void* address, size_t size, size_t alignment,
              std::vector<uint8_t>* counts) const {
    const uintptr_t where = reinterpret_cast<uintptr_t>(address);
    const int64_t offset = static_cast<int64_t>(where - log_->base);
    if (where < log_->base || offset + static_cast<int64_t>(size) > log_->size) {
      return Fault("access outside the arena at offset " + std::to_string(offset));
    }
    if (where % alignment != 0) {
      return Fault(std::to_string(size) + "-byte access at arena offset " +
                   std::to_string(offset) + " is not " + std::to_string(alignment) +
                   "-byte aligned");
    }
    for (size_t i = 0; i < size; ++i) {
      uint8_t& count = (*counts)[static_cast<size_t>(offset) + i];
      if (count < 255) ++count;
    }
    return true;
  }

  bool Fault(const std::string& what) const {
    if (log_->faults++ == 0) log_->first_fault = what;
    return false;
  }

  AccessLog* log_;
};

}  // namespace testing
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TESTS_CHECKED_MEMORY_H_
