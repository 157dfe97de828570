// How one GPU launch covers a whole list of tensors: the launch constants,
// each tensor's cut into chunks, and the chunk table that tells block b which
// chunk of which tensor it works on. Plain C++ over the core's TensorSpan
// list (pointers are device pointers here), so the launcher
// (multi_tensor_scale.cu) and the host emulation
// (tf_ops/tests/host_emulation_test.cc, g++) build the same tables.
//
// NOTE [chunk table]: one launch scales a whole list of tensors of any length
// and any mix of dtypes (the approach of apex's multi_tensor_apply and
// PyTorch's foreach kernels, without their per-launch tensor limit).
//   * Each tensor is cut into chunks of kChunkBytes, counted from the first
//     16-byte boundary of its output (the elements before it, its "head", join
//     chunk 0). Every chunk after the first therefore starts on a 16-byte
//     boundary, and so does the first pack of chunk 0.
//   * The table holds, per tensor: input and output pointers, element count,
//     dtype tag, and chunk_begin[t], the index of its first chunk in the list's
//     chunk sequence (chunk_begin[num_tensors] is the total).
//   * The grid has one block per chunk (as in apex and PyTorch); block b
//     finds the tensor of chunk b by binary search over chunk_begin. All
//     threads of a block work on the same chunk, so the search reads are
//     uniform (a broadcast from the constant bank for an inline table, one
//     cached line for a buffer table) and the dtype switch never diverges
//     within a block. A grid-stride loop over chunks was tried: nvcc then
//     kept about 106 registers per thread instead of 48 to 68, for no gain
//     below kMaxGridBlocks chunks.
//   * The table travels as the kernel's parameter (InlineTable) when it fits
//     in kMaxKernelParamBytes, in the smallest of three capacities so that a
//     one-tensor FixedScaleLoss does not ship 32 KB of parameters; longer lists
//     use a BufferTable: the same arrays in one buffer, filled in pinned host
//     memory and copied to device memory with one cudaMemcpyAsync on the op's
//     stream before the launch.
//
// NOTE [packs]: a tensor whose input and output sit at the same offset within
// 16 bytes (always true in place, and for TensorFlow's 64-byte aligned
// allocations) is read and written in 16-byte packs between its head and its
// last whole pack; the head and the tail (each shorter than one pack) are done
// element by element. When the offsets differ no 16-byte access can be aligned
// on both sides, and the tensor is scaled element by element. Pointers must be
// aligned to their element size (TensorFlow guarantees it); an odd address for
// a 2-byte type is not a valid typed pointer and is not supported.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_CHUNK_TABLE_H_
#define FIXED_LOSS_SCALE_CORE_GPU_CHUNK_TABLE_H_

#include <cstddef>
#include <cstdint>

#include "tf_ops/core/tensor_span.h"

namespace fixed_loss_scale {
namespace gpu {

// ---- Launch constants ------------------------------------------------------
// Threads per block.
constexpr int kBlockSize = 256;
// Width of one vectorised load or store (LDG.128 / STG.128).
constexpr int64_t kPackBytes = 16;
// Packs each thread loads before it stores any: with kBlockSize threads a
// block keeps 16 KiB of reads in flight per step, which a memory-bound kernel
// needs to cover DRAM latency.
constexpr int kILP = 4;
// Bytes of one tensor that one block scales in one visit (4 steps).
constexpr int64_t kChunkBytes = int64_t{64} << 10;
// Most blocks of a 1-D grid, hence most chunks of one launch (128 TiB).
constexpr int64_t kMaxGridBlocks = (int64_t{1} << 31) - 1;
// NOTE [kernel parameter size]: kernels take up to 32,764 bytes of parameters
// on Volta and later when the toolkit, the runtime and the driver are all
// CUDA 12.1 or newer; otherwise 4,096 bytes (ptxas refuses more than 4,352 for
// sm_60 code). The device code for sm_70 and later declares all three inline
// tables; sm_60 code declares only the small one, which fits 4,096 bytes (the
// .cu file does not instantiate the others for it). At run time the launcher
// asks, once per device, whether the 32 KB form is available
// (LargeKernelParamsAvailable in multi_tensor_scale.cu) and otherwise sends
// lists longer than kSmallInlineTensors in a buffer table.
constexpr int64_t kMaxKernelParamBytes = 32764;
constexpr int64_t kLegacyMaxKernelParamBytes = 4096;
// Where the 32 KB form is available: compute capability and CUDA version
// (runtime and driver, as cudaDriverGetVersion writes them).
constexpr int kLargeParamsMinComputeCapability = 70;
constexpr int kLargeParamsMinCudaVersion = 12010;
// Inline table capacities, in tensors. kLargeInlineTensors is the most that
// fits kMaxKernelParamBytes: an InlineTable<n> takes 8 + 16 + 8 * (n + 1) bytes
// of header and chunk_begin plus 8 + 8 + 8 + 1 per tensor, rounded up to 8.
constexpr int64_t kSmallInlineTensors = 16;
constexpr int64_t kMediumInlineTensors = 128;
constexpr int64_t kLargeInlineTensors = (kMaxKernelParamBytes - 32 - 7) / 33;

static_assert(kChunkBytes % (kPackBytes * kBlockSize * kILP) == 0,
              "a chunk is a whole number of block steps");

// ---- Small helpers usable on both sides ------------------------------------
FLS_HOST_DEVICE int64_t MinInt64(int64_t a, int64_t b) { return a < b ? a : b; }
FLS_HOST_DEVICE int64_t MaxInt64(int64_t a, int64_t b) { return a > b ? a : b; }
FLS_HOST_DEVICE int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Per-tensor geometry (NOTE [chunk table], NOTE [packs]) -----------------
struct TensorLayout {
  // Elements before the first 16-byte boundary of the output, scaled one by
  // one by chunk 0. 0 when the tensor is not packed.
  int64_t head;
  // Whether the elements after `head` are read and written in 16-byte packs.
  bool packed;
};

FLS_HOST_DEVICE TensorLayout LayoutOf(const void* in, const void* out, int64_t num_elements,
                                      DType dtype) {
  const uint64_t in_offset = reinterpret_cast<uintptr_t>(in) % kPackBytes;
  const uint64_t out_offset = reinterpret_cast<uintptr_t>(out) % kPackBytes;
  if (in_offset != out_offset) return TensorLayout{0, false};
  const int64_t head_bytes = static_cast<int64_t>((kPackBytes - out_offset) % kPackBytes);
  return TensorLayout{MinInt64(head_bytes / DTypeSize(dtype), num_elements), true};
}

FLS_HOST_DEVICE int64_t ChunkElements(DType dtype) { return kChunkBytes / DTypeSize(dtype); }

FLS_HOST_DEVICE int64_t NumChunks(int64_t num_elements, TensorLayout layout, DType dtype) {
  if (num_elements <= 0) return 0;
  return MaxInt64(1, CeilDiv(num_elements - layout.head, ChunkElements(dtype)));
}

// The span a launch that only reads sees (the read-only check): its output
// slot holds its input, so that its chunks and packs follow the input's
// alignment (as an in-place launch's do), and nothing is ever written there.
inline TensorSpan AsReadOnly(TensorSpan tensor) {
  tensor.out = const_cast<void*>(tensor.in);
  return tensor;
}

// The chunks of one tensor of a list.
inline int64_t TensorChunks(const TensorSpan& tensor) {
  return NumChunks(tensor.num_elements,
                   LayoutOf(tensor.in, tensor.out, tensor.num_elements, tensor.dtype),
                   tensor.dtype);
}

// The chunks of a list: the grid of its launch (FillTable counts the same).
inline int64_t TotalChunks(const TensorSpan* tensors, int64_t num_tensors,
                           bool read_only = false) {
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    chunks += TensorChunks(read_only ? AsReadOnly(tensors[t]) : tensors[t]);
  }
  return chunks;
}

// Elements [begin, end) of a tensor.
struct ElementRange {
  int64_t begin;
  int64_t end;
};

FLS_HOST_DEVICE ElementRange ChunkRange(int64_t chunk, int64_t num_elements, TensorLayout layout,
                                        DType dtype) {
  const int64_t chunk_elements = ChunkElements(dtype);
  const int64_t begin = chunk == 0 ? 0 : layout.head + chunk * chunk_elements;
  return ElementRange{begin,
                      MinInt64(num_elements, layout.head + (chunk + 1) * chunk_elements)};
}

// ---- The chunk table (NOTE [chunk table]) -----------------------------------
// Travels by value as the kernel parameter. Members are named as in
// BufferTable so the kernel body reads both through the same expressions.
template <int64_t kCapacity>
struct InlineTable {
  int64_t num_tensors;
  ScaleFactor factor;
  int64_t chunk_begin[kCapacity + 1];
  const void* in[kCapacity];
  void* out[kCapacity];
  int64_t num_elements[kCapacity];
  DType dtype[kCapacity];
};

static_assert(sizeof(InlineTable<kSmallInlineTensors>) <= kLegacyMaxKernelParamBytes,
              "the small inline table fits every GPU's parameter space");
static_assert(sizeof(InlineTable<kMediumInlineTensors>) > kLegacyMaxKernelParamBytes,
              "the medium table needs the 32 KB form (else sm_60 code could declare it)");
static_assert(sizeof(InlineTable<kLargeInlineTensors>) <= kMaxKernelParamBytes,
              "the large inline table fits the kernel parameter space");
static_assert(sizeof(InlineTable<kLargeInlineTensors + 1>) > kMaxKernelParamBytes,
              "kLargeInlineTensors is the largest capacity that fits");

// The same arrays in one caller-provided buffer (pinned host memory while it
// is filled, device memory when the kernel reads it).
struct BufferTable {
  int64_t num_tensors;
  ScaleFactor factor;
  int64_t* chunk_begin;
  const void** in;
  void** out;
  int64_t* num_elements;
  DType* dtype;
};

// Byte offsets of a BufferTable's arrays in its buffer, each 8-byte aligned.
struct BufferLayout {
  size_t chunk_begin;
  size_t in;
  size_t out;
  size_t num_elements;
  size_t dtype;
  size_t total_bytes;
};

inline BufferLayout BufferLayoutFor(int64_t num_tensors) {
  const size_t n = static_cast<size_t>(num_tensors);
  BufferLayout layout;
  layout.chunk_begin = 0;
  layout.in = layout.chunk_begin + sizeof(int64_t) * (n + 1);
  layout.out = layout.in + sizeof(void*) * n;
  layout.num_elements = layout.out + sizeof(void*) * n;
  layout.dtype = layout.num_elements + sizeof(int64_t) * n;
  layout.total_bytes = (layout.dtype + sizeof(DType) * n + 7) / 8 * 8;
  return layout;
}

// The table whose arrays live in `buffer` (at least BufferLayoutFor().total_bytes,
// 8-byte aligned). Called on the pinned host buffer and on the device buffer
// with the same arguments, it gives matching views of the copied bytes.
inline BufferTable BufferTableAt(void* buffer, int64_t num_tensors, ScaleFactor factor) {
  const BufferLayout layout = BufferLayoutFor(num_tensors);
  char* base = static_cast<char*>(buffer);
  BufferTable table;
  table.num_tensors = num_tensors;
  table.factor = factor;
  table.chunk_begin = reinterpret_cast<int64_t*>(base + layout.chunk_begin);
  table.in = reinterpret_cast<const void**>(base + layout.in);
  table.out = reinterpret_cast<void**>(base + layout.out);
  table.num_elements = reinterpret_cast<int64_t*>(base + layout.num_elements);
  table.dtype = reinterpret_cast<DType*>(base + layout.dtype);
  return table;
}

// Writes the list into `table` (an InlineTable of enough capacity or a
// BufferTable) and returns the total number of chunks; `read_only`: for a
// launch that writes nothing (AsReadOnly).
template <typename Table>
int64_t FillTable(const TensorSpan* tensors, int64_t num_tensors, ScaleFactor factor,
                  Table* table, bool read_only = false) {
  table->num_tensors = num_tensors;
  table->factor = factor;
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const TensorSpan tensor = read_only ? AsReadOnly(tensors[t]) : tensors[t];
    table->chunk_begin[t] = chunks;
    table->in[t] = tensor.in;
    table->out[t] = tensor.out;
    table->num_elements[t] = tensor.num_elements;
    table->dtype[t] = tensor.dtype;
    chunks += TensorChunks(tensor);
  }
  table->chunk_begin[num_tensors] = chunks;
  return chunks;
}

// The tensor holding list chunk `chunk`: the last t with chunk_begin[t] <= chunk
// (tensors with no chunk share their chunk_begin with the next one and are
// never chosen).
template <typename Table>
FLS_HOST_DEVICE int64_t TensorOfChunk(const Table& table, int64_t chunk) {
  int64_t low = 0;
  int64_t high = table.num_tensors - 1;
  while (low < high) {
    const int64_t middle = low + (high - low + 1) / 2;
    if (table.chunk_begin[middle] <= chunk) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// ---- Which table a launch uses -------------------------------------------------
// NOTE [table families]: the tables of one kind of launch form a family: the
// inline tables of three capacities and the buffer table, all read by the
// kernel body through the same member names. The unscale launches' family is
// ScaleTables (a row: in, out, num_elements, dtype); the fused optimizer update
// has its own rows (update_table.h, UpdateTables). A family gives
//   template <int64_t kCapacity> using Inline;  using Buffer;
//   kSmall, kMedium, kLarge: its inline capacities, in tensors; kSmall fits
//   kLegacyMaxKernelParamBytes, kMedium is kSmall (no medium table) or does
//   not fit it, kLarge fits kMaxKernelParamBytes (its header's
//   static_asserts).
// TableKindFor and VisitTable pick a member of a family; TensorOfChunk needs
// only num_tensors and chunk_begin, and so serves every family.
// A family from its table templates and its medium and large capacities; its
// small capacity is the unscale tables'. A family without a medium table
// gives kMedium = kSmallInlineTensors (its lists of kSmall + 1 tensors and
// more take the large table).
template <template <int64_t> class InlineT, typename BufferT, int64_t kMediumCapacity,
          int64_t kLargeCapacity>
struct TableFamily {
  template <int64_t kCapacity>
  using Inline = InlineT<kCapacity>;
  using Buffer = BufferT;
  static constexpr int64_t kSmall = kSmallInlineTensors;
  static constexpr int64_t kMedium = kMediumCapacity;
  static constexpr int64_t kLarge = kLargeCapacity;
};
using ScaleTables =
    TableFamily<InlineTable, BufferTable, kMediumInlineTensors, kLargeInlineTensors>;

// `large_params`: whether the device takes 32 KB kernel parameters (NOTE
// [kernel parameter size]).
enum class TableKind { kSmallInline, kMediumInline, kLargeInline, kBuffer };

template <typename Family = ScaleTables>
TableKind TableKindFor(int64_t num_tensors, bool large_params) {
  if (num_tensors <= Family::kSmall) return TableKind::kSmallInline;
  if (!large_params) return TableKind::kBuffer;
  if (num_tensors <= Family::kMedium) return TableKind::kMediumInline;
  if (num_tensors <= Family::kLarge) return TableKind::kLargeInline;
  return TableKind::kBuffer;
}

// What VisitTable hands its visitor: an inline table's capacity, or the
// buffer table, of one family.
template <int64_t kCapacity, typename Family = ScaleTables>
struct InlineTableOf {
  using Table = typename Family::template Inline<kCapacity>;
};
template <typename Family = ScaleTables>
struct BufferTableOf {
  using Table = typename Family::Buffer;
};

// The one switch over TableKind: calls `visit(InlineTableOf<capacity,
// Family>())` or `visit(BufferTableOf<Family>())`. kWithLargeTables false
// leaves the two 32 KB capacities out of the instantiation (the sm_60 device
// pass of the .cu files, whose host code, which picks them, is never run from
// that pass).
template <bool kWithLargeTables = true, typename Family = ScaleTables, typename Visitor>
auto VisitTable(TableKind kind, Visitor&& visit) {
  if (kind == TableKind::kSmallInline) return visit(InlineTableOf<Family::kSmall, Family>());
  if constexpr (kWithLargeTables) {
    if (kind == TableKind::kMediumInline) return visit(InlineTableOf<Family::kMedium, Family>());
    if (kind == TableKind::kLargeInline) return visit(InlineTableOf<Family::kLarge, Family>());
  }
  return visit(BufferTableOf<Family>());
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_CHUNK_TABLE_H_
