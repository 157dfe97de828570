// The chunk table of the fused optimizer update's GPU launch (FixedApplySgd,
// FixedApplyAdam): a table family of its own (NOTE [table families] in
// chunk_table.h) whose rows hold a variable's gradient and up to four state
// arrays (var, then its slots), over the chunk geometry of NOTE [chunk table].
// Plain C++ like chunk_table.h: the launcher (fused_update.cu) and the host
// emulation (tf_ops/tests/fused_update_emulation_test.cc) fill the same tables.
//
// Every array of a row is float32 and is cut as the variable is: chunks of
// kChunkBytes counted from the variable's first 16-byte boundary. A row is
// read and written in 16-byte packs (NOTE [packs]) when all its arrays sit at
// the same offset within 16 bytes (TensorFlow's 64-byte aligned buffers
// always do), else element by element.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_UPDATE_TABLE_H_
#define FIXED_LOSS_SCALE_CORE_GPU_UPDATE_TABLE_H_

#include <cstddef>
#include <cstdint>

#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/gpu/chunk_table.h"

namespace fixed_loss_scale {

// The per-step scalars of UpdateScalars (all but `unscale`), as pointers to
// float32 scalars in device memory: Keras computes them in the graph on the
// variables' device, and reading them there costs the step no copy to the
// host. A null pointer stands for UpdateScalars' default (clip 1, the rest 0);
// a rule reads only the ones it needs.
struct UpdateScalarPointers {
  const float* clip = nullptr;
  const float* lr = nullptr;
  const float* weight_decay = nullptr;
  const float* momentum = nullptr;
  const float* alpha = nullptr;
  const float* one_minus_beta_1 = nullptr;
  const float* one_minus_beta_2 = nullptr;
  const float* epsilon = nullptr;
  const float* weight_decay_lr = nullptr;
};

namespace gpu {

// What every block of a launch reads once (ReadBlockScalars in
// fused_update_body.h).
struct UpdateHeader {
  float unscale;           // TensorReciprocalFactorFor(loss_scale).f, from the host
  const bool* all_finite;  // device bool: false, and the launch writes nothing
  UpdateScalarPointers scalars;
};

// One variable: its scaled gradient and the arrays the rule updates, var
// first (UpdateTensor's, with device pointers), and its UpdateVariant.
struct UpdateRow {
  const float* grad;
  float* state[kMaxUpdateStates];
  int64_t num_elements;
  int32_t variant;
};

template <int64_t kCapacity>
struct UpdateInlineTable {
  int64_t num_tensors;
  UpdateHeader header;
  int64_t chunk_begin[kCapacity + 1];
  UpdateRow row[kCapacity];
};

struct UpdateBufferTable {
  int64_t num_tensors;
  UpdateHeader header;
  int64_t* chunk_begin;
  UpdateRow* row;
};

// Bytes of an inline table beyond its rows and chunk_begin entries.
constexpr int64_t kUpdateTableFixedBytes =
    static_cast<int64_t>(sizeof(UpdateInlineTable<1>) - sizeof(UpdateRow) - 2 * sizeof(int64_t));
constexpr int64_t kUpdateBytesPerTensor = static_cast<int64_t>(sizeof(UpdateRow) + sizeof(int64_t));

// The family (NOTE [table families]): no medium table, whose kernels would
// add to the object's size (NOTE [update code size] in fused_update_body.h)
// for a launch that is made once per step; the largest capacity that fits the
// 32 KB parameter space.
using UpdateTables =
    TableFamily<UpdateInlineTable, UpdateBufferTable, kSmallInlineTensors,
                (kMaxKernelParamBytes - kUpdateTableFixedBytes - 8) / kUpdateBytesPerTensor>;

static_assert(sizeof(UpdateInlineTable<UpdateTables::kSmall>) <= kLegacyMaxKernelParamBytes,
              "the small update table fits every GPU's parameter space");
static_assert(sizeof(UpdateInlineTable<UpdateTables::kLarge>) <= kMaxKernelParamBytes,
              "the large update table fits the kernel parameter space");
static_assert(sizeof(UpdateInlineTable<UpdateTables::kLarge + 1>) > kMaxKernelParamBytes,
              "UpdateTables::kLarge is the largest capacity that fits");

// A buffer table's bytes: chunk_begin (num_tensors + 1 entries), then the rows.
inline size_t UpdateBufferRowsOffset(int64_t num_tensors) {
  return sizeof(int64_t) * static_cast<size_t>(num_tensors + 1);
}
inline size_t UpdateBufferBytes(int64_t num_tensors) {
  return UpdateBufferRowsOffset(num_tensors) + sizeof(UpdateRow) * static_cast<size_t>(num_tensors);
}

// The table whose arrays live in `buffer` (UpdateBufferBytes, 8-byte aligned):
// on the pinned host buffer and on the device buffer alike.
inline UpdateBufferTable UpdateBufferTableAt(void* buffer, int64_t num_tensors,
                                             const UpdateHeader& header) {
  char* base = static_cast<char*>(buffer);
  return UpdateBufferTable{num_tensors, header, reinterpret_cast<int64_t*>(base),
                           reinterpret_cast<UpdateRow*>(base + UpdateBufferRowsOffset(num_tensors))};
}

// A row's geometry: packed when its gradient and every state of the rule sit
// at the variable's offset within 16 bytes (NOTE [packs]).
FLS_HOST_DEVICE TensorLayout UpdateLayoutOf(const UpdateRow& row, int states) {
  const uintptr_t offset = reinterpret_cast<uintptr_t>(row.state[0]) % kPackBytes;
  for (int k = 1; k < states; ++k) {
    if (reinterpret_cast<uintptr_t>(row.state[k]) % kPackBytes != offset) {
      return TensorLayout{0, false};
    }
  }
  return LayoutOf(row.grad, row.state[0], row.num_elements, DType::kFloat);
}

inline int64_t UpdateRowChunks(const UpdateRow& row, int states) {
  return NumChunks(row.num_elements, UpdateLayoutOf(row, states), DType::kFloat);
}

inline UpdateRow UpdateRowOf(const UpdateTensor& tensor) {
  UpdateRow row{tensor.grad, {}, tensor.num_elements, UpdateVariant(tensor)};
  for (int k = 0; k < kMaxUpdateStates; ++k) row.state[k] = tensor.state[k];
  return row;
}

// Writes the list into `table` (an inline table of enough capacity or a buffer
// table) and returns the total number of chunks, the launch's grid.
template <typename Table>
int64_t FillUpdateTable(UpdateRule rule, const UpdateTensor* tensors, int64_t num_tensors,
                        const UpdateHeader& header, Table* table) {
  table->num_tensors = num_tensors;
  table->header = header;
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    table->chunk_begin[t] = chunks;
    table->row[t] = UpdateRowOf(tensors[t]);
    chunks += UpdateRowChunks(table->row[t], UpdateStates(rule));
  }
  table->chunk_begin[num_tensors] = chunks;
  return chunks;
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_UPDATE_TABLE_H_
