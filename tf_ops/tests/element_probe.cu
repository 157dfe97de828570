// Kernels that each run one 16-byte pack of the GPU body's element path per
// thread, for every dtype, so that their SASS is that path and little else.
// Counting their instructions per element compares the paired 16-bit path
// (NOTE [paired 16-bit path] in element_math.h) with the per-element one it
// replaced for ordinary packs, and with float32's (docs/GPU.md, "16-bit
// gradients"; tools/gpu_check.sh prints the counts for the local GPU):
//   Paired<dtype, job>   Element::ScalePack and ThreadCheck::AddPack, as
//                        ScalePacks runs them;
//   PairedOnly<...>      (float16, bfloat16) the paired path of a pack that
//                        takes it: IsPaired's test, then ScalePairs, with the
//                        per-element fallback left out, i.e. what an ordinary
//                        pack executes;
//   PerElement<...>      Element::Scale and ThreadCheck::Add on each lane, the
//                        path of the head and tail elements, and of every
//                        16-bit pack before the paired path.
// The job is ScaleJob (FixedUnscaleGrads) or ScaleAndCheckJob<true> (the
// fused check with the sum of squares); Baseline<...> is the load and store
// alone, subtracted. Device code only: nothing launches these kernels.
#include "tf_ops/core/gpu/multi_tensor_scale_body.h"

namespace fixed_loss_scale {
namespace gpu {

// What each probe does to its pack between the load and the store.
struct NoWork {
  template <DType kDType, typename Check>
  __device__ static void Run(Pack<typename Element<kDType>::Storage>&, ScaleFactor, Check&) {}
};

struct PairedWork {
  template <DType kDType, typename Check>
  __device__ static void Run(Pack<typename Element<kDType>::Storage>& pack, ScaleFactor factors,
                             Check& check) {
    Element<kDType>::ScalePack(pack, Element<kDType>::FactorOf(factors));
    check.AddPack(pack);
  }
};

struct PairedOnlyWork {
  template <DType kDType, typename Check>
  __device__ static void Run(Pack<uint16_t>& pack, ScaleFactor factors, Check& check) {
    const bool paired = Element<kDType>::IsPaired(pack, factors.f);
    Element<kDType>::ScalePairs(pack, factors.f);
    pack.words[0] |= paired ? 0u : 1u;  // keeps the test
    check.AddPack(pack);
  }
};

struct PerElementWork {
  template <DType kDType, typename Check>
  __device__ static void Run(Pack<typename Element<kDType>::Storage>& pack, ScaleFactor factors,
                             Check& check) {
    using E = Element<kDType>;
    ScaleLanes<E>(pack, E::FactorOf(factors));
#pragma unroll
    for (int lane = 0; lane < Pack<typename E::Storage>::kLanes; ++lane) check.Add(pack.Lane(lane));
  }
};

template <DType kDType, typename TheJob, typename Work>
__device__ __forceinline__ void Probe(const Pack<typename Element<kDType>::Storage>* in,
                                      Pack<typename Element<kDType>::Storage>* out,
                                      ScaleFactor factors, CheckPartial* partial) {
  ThreadCheck<kDType, TheJob> check;
  Pack<typename Element<kDType>::Storage> pack = in[threadIdx.x];
  Work::template Run<kDType>(pack, factors, check);
  if (TheJob::kWrites) out[threadIdx.x] = pack;
  if (TheJob::kCheck) partial[threadIdx.x] = check.Partial();
}

// One kernel per probe, named for tools/gpu_check.sh's count.
#define FLS_PROBE_KERNEL(Name, Work)                                                          \
  template <DType kDType, typename TheJob>                                                    \
  __global__ void Name(const Pack<typename Element<kDType>::Storage>* in,                     \
                       Pack<typename Element<kDType>::Storage>* out, ScaleFactor factors,     \
                       CheckPartial* partial) {                                               \
    Probe<kDType, TheJob, Work>(in, out, factors, partial);                                   \
  }
FLS_PROBE_KERNEL(Baseline, NoWork)
FLS_PROBE_KERNEL(Paired, PairedWork)
FLS_PROBE_KERNEL(PairedOnly, PairedOnlyWork)
FLS_PROBE_KERNEL(PerElement, PerElementWork)
#undef FLS_PROBE_KERNEL

#define FLS_PROBE(Name, dtype)                                                                 \
  template __global__ void Name<dtype, ScaleJob>(const Pack<Element<dtype>::Storage>*,         \
                                                 Pack<Element<dtype>::Storage>*, ScaleFactor,   \
                                                 CheckPartial*);                               \
  template __global__ void Name<dtype, ScaleAndCheckJob<true>>(                                \
      const Pack<Element<dtype>::Storage>*, Pack<Element<dtype>::Storage>*, ScaleFactor,       \
      CheckPartial*);
#define FLS_PROBES(dtype) \
  FLS_PROBE(Baseline, dtype) FLS_PROBE(Paired, dtype) FLS_PROBE(PerElement, dtype)
FLS_PROBES(DType::kHalf)
FLS_PROBES(DType::kBFloat16)
FLS_PROBES(DType::kFloat)
FLS_PROBE(PairedOnly, DType::kHalf)
FLS_PROBE(PairedOnly, DType::kBFloat16)
#undef FLS_PROBES
#undef FLS_PROBE

}  // namespace gpu
}  // namespace fixed_loss_scale
