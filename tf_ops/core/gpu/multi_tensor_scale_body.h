// The GPU kernel of FixedScaleLoss and FixedUnscaleGrads as plain C++: the
// launch constants, the chunk table, the choice of table and the work of one
// (block, thread), over the core's TensorSpan list (tensor_span.h; pointers
// are device pointers here). multi_tensor_scale.cu wraps it in __global__ kernels;
// tf_ops/tests/host_emulation_test.cc (built with g++, no GPU) runs the same
// code for every (block, thread) of the same launch on the host.
//
// Like scale_math.h this header needs no CUDA, TensorFlow or standard-library
// container header; FLS_HOST_DEVICE marks what the device runs.
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
//
// NOTE [fused check]: FixedUnscaleGradsAndCheck scales with the same body and
// grid, and checks what it writes in the same launch:
//   * each thread keeps a not-finite flag and, when the sum of squares is
//     asked for (a template flag; otherwise no square is computed), the sum of
//     the squares of the outputs it wrote, widened exactly to float (double for
//     double tensors): at most 129 additions per thread (a 64 KB chunk of
//     half is 128 elements a thread, plus one head element in chunk 0), and
//     each square-and-add is one fused multiply-add on both the GPU and the
//     host emulation (AddSquare), so their results agree bit for bit;
//   * the block reduces the 256 (flag, sum) pairs to one, sums in double, in
//     the order of NOTE [check reduction order], and thread 0 stores it in the
//     block's slot of the per-block partials in device scratch;
//   * the block that takes the last ticket (NOTE [ticket counter] in
//     multi_tensor_scale.cu) sums the partials in double, thread i taking
//     blocks i, i + 256, ... in order, then the same block reduction, and
//     writes *all_finite and *sum_of_squares (rounded to float once; a quiet
//     NaN when not asked for).
// No float atomics anywhere, so the result depends only on the data and the
// grid, not on which block finishes last. A list with no element still gets a
// grid of one block, which only writes the outputs.
#ifndef FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_
#define FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tf_ops/core/scale_math.h"

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
// BufferTable) and returns the total number of chunks.
template <typename Table>
int64_t FillTable(const TensorSpan* tensors, int64_t num_tensors, ScaleFactor factor,
                  Table* table) {
  table->num_tensors = num_tensors;
  table->factor = factor;
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const TensorSpan& tensor = tensors[t];
    table->chunk_begin[t] = chunks;
    table->in[t] = tensor.in;
    table->out[t] = tensor.out;
    table->num_elements[t] = tensor.num_elements;
    table->dtype[t] = tensor.dtype;
    chunks += NumChunks(tensor.num_elements,
                        LayoutOf(tensor.in, tensor.out, tensor.num_elements, tensor.dtype),
                        tensor.dtype);
  }
  table->chunk_begin[num_tensors] = chunks;
  return chunks;
}

// Which table a list of `num_tensors` tensors travels in; `large_params`:
// whether the device takes 32 KB kernel parameters (NOTE [kernel parameter
// size]).
enum class TableKind { kSmallInline, kMediumInline, kLargeInline, kBuffer };

inline TableKind TableKindFor(int64_t num_tensors, bool large_params) {
  if (num_tensors <= kSmallInlineTensors) return TableKind::kSmallInline;
  if (!large_params) return TableKind::kBuffer;
  if (num_tensors <= kMediumInlineTensors) return TableKind::kMediumInline;
  if (num_tensors <= kLargeInlineTensors) return TableKind::kLargeInline;
  return TableKind::kBuffer;
}

// ---- Memory access ------------------------------------------------------------
// 16 bytes of one dtype's storage, loaded and stored as one access.
template <typename Storage>
struct alignas(kPackBytes) Pack {
  static constexpr int kLanes = static_cast<int>(kPackBytes / sizeof(Storage));
  Storage lanes[kLanes];
};

// The loads and stores of the kernel. The host emulation substitutes a policy
// with the same two members that also checks alignment and counts every byte
// read and written.
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

  // The fused check's cross-block accesses (NOTE [ticket counter] in
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

// ---- Element math per storage type ------------------------------------------
// The *Flushed functions of scale_math.h: the CPU kernels' results inside
// TensorFlow (FTZ/DAZ), computed in the GPU's IEEE arithmetic.
struct HalfScaler {
  float factor;
  FLS_HOST_DEVICE uint16_t operator()(uint16_t x) const {
    return ScaleHalfBitsFlushed(x, factor);
  }
};

struct BFloat16Scaler {
  float factor;
  FLS_HOST_DEVICE uint16_t operator()(uint16_t x) const {
    return ScaleBFloat16BitsFlushed(x, factor);
  }
};

struct FloatScaler {
  float factor;
  FLS_HOST_DEVICE float operator()(float x) const { return ScaleFloatFlushed(x, factor); }
};

struct DoubleScaler {
  double factor;
  FLS_HOST_DEVICE double operator()(double x) const { return ScaleDoubleFlushed(x, factor); }
};

// ---- What a thread checks of its outputs (NOTE [fused check]) ---------------
// sum + x * x rounded once, on the GPU and on the host alike: a compiler may
// not contract it differently on either side.
FLS_HOST_DEVICE float AddSquare(float sum, float x) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(x, x, sum);
#else
  return __builtin_fmaf(x, x, sum);
#endif
}

FLS_HOST_DEVICE double AddSquare(double sum, double x) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(x, x, sum);
#else
  return __builtin_fma(x, x, sum);
#endif
}

// Per dtype: the storage, the type a thread sums squares in, the value widened
// exactly to it, and whether stored bits are Inf or NaN (exponent all ones).
template <DType kDType>
struct CheckTraits;

template <>
struct CheckTraits<DType::kHalf> {
  using Storage = uint16_t;
  using Sum = float;
  static FLS_HOST_DEVICE bool NotFinite(uint16_t y) { return !IsFiniteHalfBits(y); }
  // For the square only: on a GPU the hardware conversion of every pattern
  // (exact for finite values; an Inf or NaN makes the sum Inf or NaN whatever
  // its payload), without the per-lane NaN branch of HalfBitsToFloat (NOTE
  // [device half conversions]), which made float16 lists with the sum of
  // squares instruction-bound (docs/GPU.md has the numbers).
  static FLS_HOST_DEVICE float Widen(uint16_t y) {
#if defined(__CUDA_ARCH__)
    float widened;
    asm("cvt.f32.f16 %0, %1;" : "=f"(widened) : "h"(y));
    return widened;
#else
    return HalfBitsToFloat(y);
#endif
  }
};

template <>
struct CheckTraits<DType::kBFloat16> {
  using Storage = uint16_t;
  using Sum = float;
  static FLS_HOST_DEVICE bool NotFinite(uint16_t y) { return !IsFiniteBFloat16Bits(y); }
  static FLS_HOST_DEVICE float Widen(uint16_t y) { return BFloat16BitsToFloat(y); }
};

template <>
struct CheckTraits<DType::kFloat> {
  using Storage = float;
  using Sum = float;
  static FLS_HOST_DEVICE bool NotFinite(float y) { return !IsFiniteFloat(y); }
  static FLS_HOST_DEVICE float Widen(float y) { return y; }
};

template <>
struct CheckTraits<DType::kDouble> {
  using Storage = double;
  using Sum = double;
  static FLS_HOST_DEVICE bool NotFinite(double y) { return !IsFiniteDouble(y); }
  static FLS_HOST_DEVICE double Widen(double y) { return y; }
};

// A thread's running check of the outputs it writes.
template <DType kDType, bool kSumOfSquares>
struct OutputCheck {
  using Traits = CheckTraits<kDType>;
  typename Traits::Sum sum = 0;
  bool not_finite = false;
  FLS_HOST_DEVICE void Add(typename Traits::Storage y) {
    not_finite = not_finite | Traits::NotFinite(y);
    if (kSumOfSquares) sum = AddSquare(sum, Traits::Widen(y));
  }
};

// What the unchecked kernels pass: nothing to do.
struct NoCheck {
  template <typename Storage>
  FLS_HOST_DEVICE void Add(Storage) {}
};

// A thread's, a block's or the list's check: whether some output is Inf or
// NaN, and the sum of squares (0 when not asked for).
struct CheckPartial {
  double sum;
  bool not_finite;
};

// ---- The work of one thread --------------------------------------------------
template <typename Storage, typename Scaler, typename Memory, typename Check>
FLS_HOST_DEVICE void ScaleOneElement(const Storage* in, Storage* out, int i,
                                     const Scaler& scaler, const Memory& memory, Check& check) {
  // The output address first, as the unchecked kernels always computed it.
  Storage* const address = out + i;
  const Storage y = scaler(memory.Load(in + i));
  memory.Store(address, y);
  check.Add(y);
}

// Packs [0, num_packs) of 16-byte aligned `in`/`out`; pack p is done by thread
// p % kBlockSize, so a warp's accesses are 512 contiguous bytes. Offsets within
// a chunk fit in 32 bits (the 64-bit part is in the chunk's base pointers),
// which keeps the index arithmetic and the register count down.
template <typename Storage, typename Scaler, typename Memory, typename Check>
FLS_HOST_DEVICE void ScalePacks(const Pack<Storage>* in, Pack<Storage>* out, int num_packs,
                                int thread, const Scaler& scaler, const Memory& memory,
                                Check& check) {
  for (int step = 0; step < num_packs; step += kBlockSize * kILP) {
    Pack<Storage> packs[kILP];
    FLS_UNROLL
    for (int k = 0; k < kILP; ++k) {
      const int p = step + thread + k * kBlockSize;
      if (p < num_packs) packs[k] = memory.Load(in + p);
    }
    FLS_UNROLL
    for (int k = 0; k < kILP; ++k) {
      const int p = step + thread + k * kBlockSize;
      if (p >= num_packs) continue;
      FLS_UNROLL
      for (int lane = 0; lane < Pack<Storage>::kLanes; ++lane) {
        packs[k].lanes[lane] = scaler(packs[k].lanes[lane]);
      }
      memory.Store(out + p, packs[k]);
      FLS_UNROLL
      for (int lane = 0; lane < Pack<Storage>::kLanes; ++lane) check.Add(packs[k].lanes[lane]);
    }
  }
}

// Thread `thread`'s share of elements [range.begin, range.end) of one tensor,
// a range no longer than a chunk plus a head.
template <typename Storage, typename Scaler, typename Memory, typename Check>
FLS_HOST_DEVICE void ScaleRange(const void* in_bytes, void* out_bytes, ElementRange range,
                                TensorLayout layout, int thread, const Scaler& scaler,
                                const Memory& memory, Check& check) {
  const Storage* in = static_cast<const Storage*>(in_bytes) + range.begin;
  Storage* out = static_cast<Storage*>(out_bytes) + range.begin;
  const int size = static_cast<int>(range.end - range.begin);
  if (!layout.packed) {
    for (int i = thread; i < size; i += kBlockSize) {
      ScaleOneElement(in, out, i, scaler, memory, check);
    }
    return;
  }
  constexpr int kLanes = Pack<Storage>::kLanes;
  // The head (chunk 0 only) and the tail are each shorter than a pack, hence
  // than a block: one element per thread at most.
  const int packs_begin =
      static_cast<int>(MinInt64(MaxInt64(layout.head - range.begin, 0), size));
  if (thread < packs_begin) ScaleOneElement(in, out, thread, scaler, memory, check);
  const int num_packs = (size - packs_begin) / kLanes;
  ScalePacks(reinterpret_cast<const Pack<Storage>*>(in + packs_begin),
             reinterpret_cast<Pack<Storage>*>(out + packs_begin), num_packs, thread, scaler,
             memory, check);
  const int tail_begin = packs_begin + num_packs * kLanes;
  if (tail_begin + thread < size) {
    ScaleOneElement(in, out, tail_begin + thread, scaler, memory, check);
  }
}

// Thread `thread`'s share of chunk `chunk` of one tensor.
template <typename Memory>
FLS_HOST_DEVICE void ScaleChunk(const void* in, void* out, int64_t num_elements, DType dtype,
                                int64_t chunk, ScaleFactor factor, int thread,
                                const Memory& memory) {
  const TensorLayout layout = LayoutOf(in, out, num_elements, dtype);
  const ElementRange range = ChunkRange(chunk, num_elements, layout, dtype);
  NoCheck none;
  switch (dtype) {
    case DType::kHalf:
      ScaleRange<uint16_t>(in, out, range, layout, thread, HalfScaler{factor.f}, memory, none);
      break;
    case DType::kBFloat16:
      ScaleRange<uint16_t>(in, out, range, layout, thread, BFloat16Scaler{factor.f}, memory,
                           none);
      break;
    case DType::kFloat:
      ScaleRange<float>(in, out, range, layout, thread, FloatScaler{factor.f}, memory, none);
      break;
    case DType::kDouble:
      ScaleRange<double>(in, out, range, layout, thread, DoubleScaler{factor.d}, memory, none);
      break;
  }
}

// ScaleRange with an OutputCheck; returns the thread's check.
template <DType kDType, bool kSumOfSquares, typename Scaler, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleRangeAndCheck(const void* in, void* out, ElementRange range,
                                                TensorLayout layout, int thread,
                                                const Scaler& scaler, const Memory& memory) {
  OutputCheck<kDType, kSumOfSquares> check;
  ScaleRange<typename CheckTraits<kDType>::Storage>(in, out, range, layout, thread, scaler,
                                                    memory, check);
  return CheckPartial{static_cast<double>(check.sum), check.not_finite};
}

// ScaleChunk, checked (NOTE [fused check]).
template <bool kSumOfSquares, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleAndCheckChunk(const void* in, void* out, int64_t num_elements,
                                                DType dtype, int64_t chunk, ScaleFactor factor,
                                                int thread, const Memory& memory) {
  const TensorLayout layout = LayoutOf(in, out, num_elements, dtype);
  const ElementRange range = ChunkRange(chunk, num_elements, layout, dtype);
  switch (dtype) {
    case DType::kHalf:
      return ScaleRangeAndCheck<DType::kHalf, kSumOfSquares>(in, out, range, layout, thread,
                                                             HalfScaler{factor.f}, memory);
    case DType::kBFloat16:
      return ScaleRangeAndCheck<DType::kBFloat16, kSumOfSquares>(
          in, out, range, layout, thread, BFloat16Scaler{factor.f}, memory);
    case DType::kFloat:
      return ScaleRangeAndCheck<DType::kFloat, kSumOfSquares>(in, out, range, layout, thread,
                                                              FloatScaler{factor.f}, memory);
    case DType::kDouble:
      break;
  }
  return ScaleRangeAndCheck<DType::kDouble, kSumOfSquares>(in, out, range, layout, thread,
                                                           DoubleScaler{factor.d}, memory);
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

// The kernel body: everything thread `thread` of block `block` does. The grid
// has one block per chunk of the list, so `block` is the list chunk index.
template <typename Table, typename Memory>
FLS_HOST_DEVICE void ScaleTableChunk(const Table& table, int64_t block, int thread,
                                     const Memory& memory) {
  const int64_t t = TensorOfChunk(table, block);
  ScaleChunk(table.in[t], table.out[t], table.num_elements[t], table.dtype[t],
             block - table.chunk_begin[t], table.factor, thread, memory);
}

// ---- The fused check across the grid (NOTE [fused check]) ------------------
// Threads per warp, for the block reduction's order.
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kBlockSize / kWarpSize;
static_assert(kBlockSize % kWarpSize == 0, "whole warps");

// The first kernel-body step of a checked launch: ScaleTableChunk, returning
// the thread's check. A block past the list's chunks (the one block of a list
// with no element) scales nothing.
template <bool kSumOfSquares, typename Table, typename Memory>
FLS_HOST_DEVICE CheckPartial ScaleAndCheckTableChunk(const Table& table, int64_t block,
                                                     int thread, const Memory& memory) {
  if (block >= table.chunk_begin[table.num_tensors]) return CheckPartial{0.0, false};
  const int64_t t = TensorOfChunk(table, block);
  return ScaleAndCheckChunk<kSumOfSquares>(table.in[t], table.out[t], table.num_elements[t],
                                           table.dtype[t], block - table.chunk_begin[t],
                                           table.factor, thread, memory);
}

// NOTE [check reduction order]: a block reduces its threads' checks in one
// fixed order, the same on the GPU (ReduceBlock in multi_tensor_scale.cu: warp
// shuffles, then shared memory) and in the host emulation (CombineBlock):
//   1. within each warp, a tree: for offset 16, 8, 4, 2, 1, lane l adds lane
//      l + offset's value (__shfl_down_sync), so lane 0 holds the warp's sum;
//   2. thread 0 adds the 8 warp sums in warp order: ((w0 + w1) + w2) + ...
// Sums are in double; flags are or-ed (order-free). The last block reduces the
// threads' sums of the per-block partials (SumBlockPartials) the same way.
inline CheckPartial CombineBlock(const CheckPartial* threads) {
  CheckPartial block{0.0, false};
  for (int warp = 0; warp < kWarpsPerBlock; ++warp) {
    double lanes[kWarpSize];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      lanes[lane] = threads[warp * kWarpSize + lane].sum;
      block.not_finite = block.not_finite || threads[warp * kWarpSize + lane].not_finite;
    }
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      for (int lane = 0; lane < offset; ++lane) lanes[lane] += lanes[lane + offset];
    }
    block.sum = warp == 0 ? lanes[0] : block.sum + lanes[0];
  }
  return block;
}

// A block's check in device scratch (flag widened so the slot is two words).
struct BlockPartial {
  double sum;
  uint64_t not_finite;
};

// The kernel's second parameter in a checked launch (24 bytes: NOTE [kernel
// parameter size] leaves 28 beside the largest inline table). The ticket
// counter is the unsigned int right after the grid's partials.
struct CheckTargets {
  BlockPartial* partials;
  bool* all_finite;
  float* sum_of_squares;
};

static_assert(sizeof(InlineTable<kLargeInlineTensors>) + sizeof(CheckTargets) <=
                  kMaxKernelParamBytes,
              "a checked launch's parameters fit with the largest inline table");
static_assert(sizeof(InlineTable<kSmallInlineTensors>) + sizeof(CheckTargets) <=
                  kLegacyMaxKernelParamBytes,
              "and with the small one on every GPU");

FLS_HOST_DEVICE unsigned* TicketCounter(const CheckTargets& targets, int64_t num_blocks) {
  return reinterpret_cast<unsigned*>(targets.partials + num_blocks);
}

// Where the parts of a checked launch's device scratch are: the buffer table
// if any (`table_bytes`, a multiple of 8), the partials of `num_blocks`
// blocks, then the counter in an 8-byte slot.
struct CheckScratchLayout {
  size_t partials;
  size_t counter;
  size_t total_bytes;
};

inline CheckScratchLayout CheckScratchLayoutFor(size_t table_bytes, int64_t num_blocks) {
  CheckScratchLayout layout;
  layout.partials = table_bytes;
  layout.counter = layout.partials + sizeof(BlockPartial) * static_cast<size_t>(num_blocks);
  layout.total_bytes = layout.counter + 8;
  return layout;
}

// The grid of a checked launch over `total_chunks` chunks: one block per
// chunk, and one for a list with no element.
inline int64_t CheckedGridBlocks(int64_t total_chunks) { return MaxInt64(total_chunks, 1); }

// The chunks of a list, as FillTable counts them.
inline int64_t TotalChunks(const TensorSpan* tensors, int64_t num_tensors) {
  int64_t chunks = 0;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const TensorSpan& tensor = tensors[t];
    chunks += NumChunks(tensor.num_elements,
                        LayoutOf(tensor.in, tensor.out, tensor.num_elements, tensor.dtype),
                        tensor.dtype);
  }
  return chunks;
}

// Thread 0 of each block, with the block's check: stores it in the block's
// slot, makes it visible device-wide, then takes a ticket; true for the block
// that takes the last one, which then finishes the check.
template <typename Memory>
FLS_HOST_DEVICE bool PublishBlockPartial(const CheckTargets& targets, int64_t block,
                                         int64_t num_blocks, CheckPartial partial,
                                         const Memory& memory) {
  memory.Store(targets.partials + block,
               BlockPartial{partial.sum, partial.not_finite ? uint64_t{1} : uint64_t{0}});
  memory.Fence();
  return memory.TakeTicket(TicketCounter(targets, num_blocks)) ==
         static_cast<unsigned>(num_blocks - 1);
}

// Every thread of the last block: the blocks `thread`, `thread` + 256, ... of
// the partials, in that order.
template <bool kSumOfSquares, typename Memory>
FLS_HOST_DEVICE CheckPartial SumBlockPartials(const CheckTargets& targets, int64_t num_blocks,
                                              int thread, const Memory& memory) {
  memory.Fence();
  CheckPartial sum{0.0, false};
  for (int64_t block = thread; block < num_blocks; block += kBlockSize) {
    const BlockPartial partial = memory.LoadCoherent(targets.partials + block);
    if (kSumOfSquares) sum.sum += partial.sum;
    sum.not_finite = sum.not_finite || partial.not_finite != 0;
  }
  return sum;
}

// The quiet NaN a launch without the sum of squares writes: "not computed".
constexpr uint32_t kNotComputedBits = 0x7fc00000u;

// Thread 0 of the last block, with the list's check.
template <bool kSumOfSquares, typename Memory>
FLS_HOST_DEVICE void WriteCheckOutputs(const CheckTargets& targets, CheckPartial total,
                                       const Memory& memory) {
  memory.Store(targets.all_finite, !total.not_finite);
  memory.Store(targets.sum_of_squares, kSumOfSquares ? static_cast<float>(total.sum)
                                                     : BitCast<float>(kNotComputedBits));
}

}  // namespace gpu
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_GPU_MULTI_TENSOR_SCALE_BODY_H_
