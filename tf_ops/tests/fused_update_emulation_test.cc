// Host emulation of the fused optimizer update's GPU kernel (FixedApplySgd,
// FixedApplyAdam), built with g++ alone (make fused-update-emulation-test)
// and linked with the CPU kernels' core, which is its reference.
//
// First the element math: each op of FlushedMath (fused_update_body.h, IEEE
// arithmetic with x86 FTZ/DAZ in software) against the same op run by this
// x86 CPU under FTZ/DAZ, on values around FLT_MIN, subnormals, zeros, Inf and
// NaNs with payloads, and random ones; then the screen of the first pass
// (NOTE [plain IEEE first]) on packs with and without such values.
//
// Then the launches: for random lists of every rule (SGD, momentum, nesterov,
// Adam, amsgrad; weight decay and NOTE [scalar factors]' fold per tensor), of
// odd sizes, across chunk boundaries, empty tensors, arrays at the same or at
// different offsets within 16 bytes, inline and buffer tables, and
// non-power-of-two loss scales, it builds the table the launcher builds and
// runs the kernel body for every (block, thread), the all-finite flag and the
// per-step scalars read from the arena once per block, through the checked
// memory policy. It checks that
//   * the arena afterwards is bit-identical to the one the CPU kernels
//     (UpdateElementsWithPath, under FTZ/DAZ as on TensorFlow's threads)
//     produce, on every CPU path this machine has;
//   * every gradient byte is read once, every state byte read once and
//     written once, and no other byte of the arena touched; with the flag
//     false, no array byte is read or written at all;
//   * every access is aligned (16 bytes for packs).
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/gpu/fused_update_body.h"
#include "tf_ops/tests/checked_memory.h"
#include "tf_ops/tests/fused_update_cases.h"
#include "tf_ops/tests/gpu_kernel_cases.h"

namespace fixed_loss_scale {
namespace testing {
namespace {

#if defined(__x86_64__) || defined(__i386__)

using gpu::FlushedMath;

// ---- The element math ----------------------------------------------------------------
// The x86 ops, one per call, on operands the compiler cannot see (the caller
// holds a ScopedFlushToZero).
enum class Op { kAdd, kSub, kMul, kDiv, kSqrt, kMax };
constexpr Op kOps[] = {Op::kAdd, Op::kSub, Op::kMul, Op::kDiv, Op::kSqrt, Op::kMax};
constexpr const char* kOpNames[] = {"add", "sub", "mul", "div", "sqrt", "max"};

__attribute__((noinline)) float HardwareOp(Op op, float a, float b) {
  volatile float va = a;
  volatile float vb = b;
  const float x = va;
  const float y = vb;
  switch (op) {
    case Op::kAdd:
      return x + y;
    case Op::kSub:
      return x - y;
    case Op::kMul:
      return x * y;
    case Op::kDiv:
      return x / y;
    case Op::kSqrt:
      return std::sqrt(x);
    case Op::kMax:
      break;
  }
  return x < y ? y : x;
}

float EmulatedOp(Op op, float a, float b) {
  switch (op) {
    case Op::kAdd:
      return FlushedMath::Add(a, b);
    case Op::kSub:
      return FlushedMath::Sub(a, b);
    case Op::kMul:
      return FlushedMath::Mul(a, b);
    case Op::kDiv:
      return FlushedMath::Div(a, b);
    case Op::kSqrt:
      return FlushedMath::Sqrt(a);
    case Op::kMax:
      break;
  }
  return FlushedMath::Max(a, b);
}

// Pairs whose exact results land around FLT_MIN for each op, and mixed ones.
int64_t CheckElementMath(int64_t pairs_per_op) {
  Rng rng(0xf00d);
  int64_t failed = 0;
  int64_t total = 0;
  for (Op op : kOps) {
    int64_t op_failed = 0;
    std::vector<float> a(pairs_per_op), b(pairs_per_op), hardware(pairs_per_op);
    for (int64_t i = 0; i < pairs_per_op; ++i) {
      a[i] = MixedValue(rng, static_cast<int>(i % 3));
      b[i] = MixedValue(rng, static_cast<int>((i / 3) % 3));
      if (i % 4 == 0 && (op == Op::kAdd || op == Op::kSub)) {
        // A near-cancellation: b within a few ulps of +-a.
        b[i] = FloatOfBits(BitsOf(op == Op::kAdd ? -a[i] : a[i]) +
                           static_cast<uint32_t>(rng.Uniform(0, 8)));
      } else if (i % 4 == 0 && (op == Op::kMul || op == Op::kDiv)) {
        // A product or quotient within a factor of 4 of FLT_MIN.
        const float target = std::ldexp(1.0f, static_cast<int>(rng.Uniform(-128, -124)));
        const float other = op == Op::kMul ? target / a[i] : a[i] / target;
        if (std::isfinite(other) && other != 0.0f) {
          b[i] = FloatOfBits(BitsOf(other) + static_cast<uint32_t>(rng.Uniform(0, 4)) - 2);
        }
      }
    }
    {
      ScopedFlushToZero flush;
      for (int64_t i = 0; i < pairs_per_op; ++i) hardware[i] = HardwareOp(op, a[i], b[i]);
    }
    for (int64_t i = 0; i < pairs_per_op; ++i) {
      const float emulated = EmulatedOp(op, a[i], b[i]);
      if (BitsOf(emulated) != BitsOf(hardware[i]) && op_failed++ < 5) {
        std::printf("  %s(%a [%08x], %a [%08x]): x86 FTZ/DAZ %08x, emulated %08x\n",
                    kOpNames[static_cast<int>(op)], a[i], BitsOf(a[i]), b[i], BitsOf(b[i]),
                    BitsOf(hardware[i]), BitsOf(emulated));
      }
    }
    failed += op_failed;
    total += pairs_per_op;
  }
  std::printf("fused element math: %lld pairs x 6 ops against x86 FTZ/DAZ, %lld differ\n",
              static_cast<long long>(total / 6), static_cast<long long>(failed));
  return failed;
}

// ---- The first pass's screen (NOTE [plain IEEE first]) -----------------------------
// ScreenedUpdate on element groups of ordinary values (the second moments
// non-negative, as Adam's are) and on groups with one subnormal or NaN among
// the gradient and the states: an ordinary group must pass the screen with
// FlushedMath's bits, else every element would take both passes, which the
// launches' bit comparison cannot see; a marked one must not pass.
int64_t CheckScreen(int64_t groups_per_rule) {
  Rng rng(0x5c4ee9);
  gpu::UpdateCoefficients c;
  c.unscale = 0x1p-10f;
  c.clip = 0.75f;
  c.lr = 1e-3f;
  c.weight_decay = 4e-3f;
  c.momentum = 0.9f;
  c.alpha = 1.2e-3f;
  c.one_minus_beta_1 = 0.1f;
  c.one_minus_beta_2 = 1e-3f;
  c.epsilon = 1e-7f;
  c.weight_decay_lr = 4e-6f;
  c.clip_lr = FlushedMath::Mul(c.clip, c.lr);
  bool screenable = false;
  const fused::Coefficients<gpu::ScreenedMath> screened = gpu::Screen(c, &screenable);
  int64_t failed = screenable ? 0 : 1, groups = 0;
  for (int r = 0; r < kNumUpdateRules; ++r) {
    gpu::VisitRule(static_cast<UpdateRule>(r), [&](auto rule) {
      using Rule = decltype(rule);
      constexpr int kValues = Rule::kStates + 1;  // the gradient, then the states
      for (int64_t i = 0; i < 2 * groups_per_rule; ++i, ++groups) {
        float values[kValues];
        for (int k = 0; k < kValues; ++k) {
          const float x = RandomValue(rng, 0);
          values[k] = k >= 3 ? std::fabs(x) : x;
        }
        const bool marked = i % 2 == 1;
        if (marked) {
          const uint32_t sign = rng.Uniform(0, 1) ? 0x80000000u : 0u;
          const uint32_t bits = rng.Uniform(0, 1) ? static_cast<uint32_t>(rng.Uniform(1, 0x7fffff))
                                                  : 0x7fc00000u;
          values[rng.Uniform(0, kValues - 1)] = FloatOfBits(sign | bits);
        }
        float first[Rule::kStates], flushed[Rule::kStates];
        std::memcpy(first, values + 1, sizeof(first));
        std::memcpy(flushed, values + 1, sizeof(flushed));
        const uint32_t key = gpu::ScreenedUpdate<Rule, true, false>(values[0], first, screened);
        fused::UpdateGroup<Rule, true, false, FlushedMath>(values[0], flushed, c);
        const bool passed = key >= gpu::kScreenLimit;
        const bool same = std::memcmp(first, flushed, sizeof(first)) == 0;
        if ((marked ? passed : !(passed && same)) && failed++ < 5) {
          std::printf("  screen, rule %d, %s group %lld: key %08x, %s FlushedMath's bits\n", r,
                      marked ? "marked" : "ordinary", static_cast<long long>(i), key,
                      same ? "with" : "without");
        }
      }
      return 0;
    });
  }
  std::printf("screen of the first pass: %lld element groups (half ordinary, half with a "
              "subnormal or a NaN), %lld wrong\n",
              static_cast<long long>(groups), static_cast<long long>(failed));
  return failed;
}

// The CPU kernels' result on a copy of the arena, with `path`, as TensorFlow
// runs them (FTZ/DAZ); nothing where the flag is false.
std::vector<uint8_t> CpuReference(const UpdateCase& c, const std::vector<uint8_t>& arena,
                                  const ArenaLayout& layout, const UpdateScalars& scalars,
                                  CpuPath path) {
  std::vector<uint8_t> expected = arena;
  if (!c.all_finite) return expected;
  const std::ptrdiff_t shift = expected.data() - arena.data();
  ScopedFlushToZero flush;
  for (UpdateTensor tensor : layout.tensors) {
    tensor.grad = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(tensor.grad) + shift);
    for (int k = 0; k < UpdateStates(c.rule); ++k) {
      tensor.state[k] = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(tensor.state[k]) + shift);
    }
    UpdateElementsWithPath(path, c.rule, tensor, 0, tensor.num_elements, scalars);
  }
  return expected;
}

// The launch LaunchFusedUpdate makes, on the host: the same table choice and
// fill, one ReadBlockScalars per block, then every thread of the block.
template <typename Rule>
void EmulateUpdate(const UpdateCase& c, const std::vector<UpdateTensor>& tensors,
                   const gpu::UpdateHeader& header, const CheckedMemory& memory) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  gpu::VisitTable<true, gpu::UpdateTables>(
      gpu::TableKindFor<gpu::UpdateTables>(n, c.large_params), [&](auto table_of) {
        using Table = typename decltype(table_of)::Table;
        std::vector<uint64_t> buffer(gpu::UpdateBufferBytes(n) / 8 + 1);
        std::unique_ptr<Table> table(new Table());
        if constexpr (std::is_same_v<Table, gpu::UpdateBufferTable>) {
          *table = gpu::UpdateBufferTableAt(buffer.data(), n, header);
        }
        const int64_t chunks = gpu::FillUpdateTable(c.rule, tensors.data(), n, header, table.get());
        for (int64_t block = 0; block < chunks; ++block) {
          gpu::UpdateCoefficients coefficients;
          if (!gpu::ReadBlockScalars(table->header, memory, &coefficients)) continue;
          for (int thread = 0; thread < gpu::kBlockSize; ++thread) {
            gpu::UpdateTableChunk<Rule>(*table, block, thread, coefficients, memory);
          }
        }
        return 0;
      });
}

void RunCase(const UpdateCase& c, const std::vector<CpuPath>& paths, CaseTotals* totals) {
  Rng rng(c.seed);
  std::vector<uint8_t> arena;
  const ArenaLayout layout = LayOut(c, rng, &arena, totals);
  uint8_t* base = arena.data() + (64 - reinterpret_cast<uintptr_t>(arena.data()) % 64) % 64;
  base[0] = c.all_finite ? 1 : 0;
  const CaseScalars scalars = DrawScalars(rng, base, c.loss_scale);
  std::vector<std::vector<uint8_t>> expected;
  for (CpuPath path : paths) expected.push_back(CpuReference(c, arena, layout, scalars.cpu, path));

  AccessLog log;
  log.base = reinterpret_cast<uintptr_t>(arena.data());
  log.size = static_cast<int64_t>(arena.size());
  log.reads.assign(arena.size(), 0);
  log.writes.assign(arena.size(), 0);
  const gpu::UpdateHeader header{scalars.cpu.unscale, reinterpret_cast<const bool*>(base),
                                 scalars.device};
  gpu::VisitRule(c.rule, [&](auto rule) {
    EmulateUpdate<decltype(rule)>(c, layout.tensors, header, CheckedMemory(&log));
    return 0;
  });

  std::string failure;
  if (log.faults > 0) failure = log.first_fault;
  const int64_t scalar_end = (base - arena.data()) + kUpdateScalarBytes;
  for (size_t i = scalar_end; i < arena.size() && failure.empty(); ++i) {
    if (log.reads[i] != layout.expected_reads[i] || log.writes[i] != layout.expected_writes[i]) {
      failure = "arena byte " + std::to_string(i) + " read " + std::to_string(log.reads[i]) +
                " times, written " + std::to_string(log.writes[i]) + "; expected " +
                std::to_string(layout.expected_reads[i]) + " and " +
                std::to_string(layout.expected_writes[i]);
    }
  }
  if (failure.empty()) failure = CompareArena(arena.data(), arena.size(), expected, totals);
  ++totals->cases;
  totals->tensors += static_cast<int64_t>(c.sizes.size());
  for (int64_t n : c.sizes) totals->elements += n;
  if (!failure.empty() && totals->failed++ < 10) {
    std::printf("  FAILED %s: %s\n", Describe(c).c_str(), failure.c_str());
  }
}

CaseTotals RunLaunchCases(const std::vector<CpuPath>& paths) {
  CaseTotals totals;
  for (const UpdateCase& c : MakeUpdateCases(60, int64_t{1} << 40)) RunCase(c, paths, &totals);
  return totals;
}

#endif  // x86

int Main() {
#if defined(__x86_64__) || defined(__i386__)
  int64_t failed = CheckElementMath(400000);
  failed += CheckScreen(50000);
  std::vector<CpuPath> paths;
  for (CpuPath path : {CpuPath::kScalar, CpuPath::kAvx2, CpuPath::kAvx512}) {
    if (CpuPathSupported(path)) paths.push_back(path);
  }
  std::string names;
  for (CpuPath path : paths) names += std::string(names.empty() ? "" : ", ") + CpuPathName(path);
  const CaseTotals totals = RunLaunchCases(paths);
  std::printf("fused update launches: %lld cases, %lld tensors, %lld elements "
              "(%lld packed, %lld element by element) against the CPU kernels (%s), "
              "%lld failed; %lld NaN results of another payload (two NaN operands)\n",
              static_cast<long long>(totals.cases), static_cast<long long>(totals.tensors),
              static_cast<long long>(totals.elements), static_cast<long long>(totals.packed),
              static_cast<long long>(totals.unpacked), names.c_str(),
              static_cast<long long>(totals.failed), static_cast<long long>(totals.nan_choices));
  failed += totals.failed;
  std::printf("host emulation of the fused update kernel: %s\n", failed == 0 ? "PASSED" : "FAILED");
  return failed == 0 ? 0 : 1;
#else
  std::printf("host emulation of the fused update kernel: needs an x86 host (its reference is "
              "the CPU kernels under x86 FTZ/DAZ)\n");
  return 0;
#endif
}

}  // namespace
}  // namespace testing
}  // namespace fixed_loss_scale

int main() { return fixed_loss_scale::testing::Main(); }
