// The cases the fused optimizer update's GPU kernel is checked on, shared by
// the host emulation (tf_ops/tests/fused_update_emulation_test.cc, g++) and
// the GPU driver (tf_ops/tests/launcher_driver.cu), as gpu_kernel_cases.h is
// for the unscale kernels.
//
// A case is a list of variables of one rule laid out in one byte arena: the
// all-finite flag and the per-step scalars in its first kUpdateScalarBytes, then
// each tensor's gradient and states, each array at a chosen offset past a
// 64-byte boundary (all of a tensor's at one offset within 16 bytes, so
// packed, or at independent ones), with guard bytes of a pattern between
// them. Values come from bands around FLT_MIN, subnormals, huge values, zeros,
// Infs and NaNs with payloads, and ordinary ones.
#ifndef FIXED_LOSS_SCALE_TESTS_FUSED_UPDATE_CASES_H_
#define FIXED_LOSS_SCALE_TESTS_FUSED_UPDATE_CASES_H_

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/gpu/update_table.h"
#include "tf_ops/core/scale_math.h"
#include "tf_ops/tests/gpu_kernel_cases.h"

namespace fixed_loss_scale {
namespace testing {

// ---- Values -------------------------------------------------------------------------
inline float FloatOfBits(uint32_t bits) { return BitCast<float>(bits); }
inline uint32_t BitsOf(float x) { return BitCast<uint32_t>(x); }

// A value of one of the bands the cases need: ordinary magnitudes, the
// neighbourhood of FLT_MIN (and of its square root, whose products land
// there), subnormals, huge values, and the specials.
inline float RandomValue(Rng& rng, int band) {
  const float sign = rng.Uniform(0, 1) ? -1.0f : 1.0f;
  const float mantissa = 1.0f + static_cast<float>(rng.Uniform(0, (1 << 23) - 1)) * 0x1p-23f;
  switch (band) {
    case 0:
      return sign * std::ldexp(mantissa, static_cast<int>(rng.Uniform(-24, 6)));
    case 1:
      return sign * std::ldexp(mantissa, static_cast<int>(rng.Uniform(-126, -100)));
    case 2:
      return sign * std::ldexp(mantissa, static_cast<int>(rng.Uniform(-70, -56)));
    case 3:
      return FloatOfBits((sign < 0 ? 0x80000000u : 0u) |
                         static_cast<uint32_t>(rng.Uniform(1, 0x7fffff)));
    case 4:
      return sign * std::ldexp(mantissa, static_cast<int>(rng.Uniform(100, 127)));
    default:
      break;
  }
  switch (rng.Uniform(0, 6)) {
    case 0:
      return sign * 0.0f;
    case 1:
      return sign * FLT_MIN;
    case 2:
      return FloatOfBits(BitsOf(sign * FLT_MIN) + static_cast<uint32_t>(rng.Uniform(1, 3)));
    case 3:
      return sign * INFINITY;
    case 4:  // a NaN with a random payload, quiet or signalling
      return FloatOfBits((sign < 0 ? 0xff800000u : 0x7f800000u) |
                         static_cast<uint32_t>(rng.Uniform(1, 0x7fffff)));
    default:
      return sign * std::ldexp(mantissa, -127 + static_cast<int>(rng.Uniform(0, 2)));
  }
}

// A value from the band mix `mix`: 0 ordinary, 1 mostly tiny, 2 everything.
inline float MixedValue(Rng& rng, int mix) {
  if (mix == 0) return RandomValue(rng, rng.Uniform(0, 19) == 0 ? 2 : 0);
  if (mix == 1) return RandomValue(rng, static_cast<int>(rng.Uniform(0, 3)));
  return RandomValue(rng, static_cast<int>(rng.Uniform(0, 5)));
}

// ---- The cases -------------------------------------------------------------------------
// The arena: the flag and the scalars in its first kUpdateScalarBytes, then every
// array, each at a chosen offset past a 64-byte boundary, with guard bytes.
constexpr int64_t kUpdateScalarBytes = 128;
constexpr int64_t kUpdateGuardBytes = 64;

struct UpdateCase {
  UpdateRule rule;
  std::vector<int64_t> sizes;
  bool all_finite;
  bool large_params;
  float loss_scale;
  int value_mix;
  uint64_t seed;
};

// Where one case's arrays live, and the spans of bytes each must be read and
// written.
struct ArenaLayout {
  std::vector<UpdateTensor> tensors;  // pointers into the arena
  std::vector<int64_t> expected_reads;
  std::vector<int64_t> expected_writes;
};

struct CaseTotals {
  int64_t cases = 0, tensors = 0, elements = 0, failed = 0;
  int64_t packed = 0, unpacked = 0;  // tensors read in packs, element by element
  int64_t nan_choices = 0;           // NaN words of different payloads
};

// The scalars of a case: UpdateScalars for the CPU, and their float copies in
// the arena at the offsets UpdateScalarPointers gives the kernel.
struct CaseScalars {
  UpdateScalars cpu;
  UpdateScalarPointers device;
};

inline CaseScalars DrawScalars(Rng& rng, uint8_t* arena, float loss_scale) {
  CaseScalars s;
  s.cpu.unscale = TensorReciprocalFactorFor(loss_scale).f;
  const float choices[] = {1e-3f, 0.1f, 3e-4f, 0.9f, 1.0f, 1e-40f, 0.0f};
  auto pick = [&](float usual) {
    return rng.Uniform(0, 7) == 0 ? choices[rng.Uniform(0, 6)] : usual;
  };
  s.cpu.clip = rng.Uniform(0, 1) ? 1.0f : pick(0.37f);
  s.cpu.lr = pick(static_cast<float>(rng.Uniform(1, 1000)) * 1e-5f);
  s.cpu.weight_decay = pick(0.004f);
  s.cpu.momentum = pick(rng.Uniform(0, 3) == 0 ? 0.0f : 0.9f);
  s.cpu.alpha = pick(s.cpu.lr * 0.31f);
  s.cpu.one_minus_beta_1 = pick(0.1f);
  s.cpu.one_minus_beta_2 = pick(1e-3f);
  s.cpu.epsilon = pick(1e-7f);
  s.cpu.weight_decay_lr = s.cpu.weight_decay * s.cpu.lr;
  float* slots = reinterpret_cast<float*>(arena + 16);
  const float values[] = {s.cpu.clip,     s.cpu.lr,         s.cpu.weight_decay,
                          s.cpu.momentum, s.cpu.alpha,      s.cpu.one_minus_beta_1,
                          s.cpu.one_minus_beta_2, s.cpu.epsilon, s.cpu.weight_decay_lr};
  const float** pointers[] = {&s.device.clip,     &s.device.lr,    &s.device.weight_decay,
                              &s.device.momentum, &s.device.alpha, &s.device.one_minus_beta_1,
                              &s.device.one_minus_beta_2, &s.device.epsilon,
                              &s.device.weight_decay_lr};
  for (int i = 0; i < 9; ++i) {
    slots[i] = values[i];
    *pointers[i] = slots + i;
  }
  // A missing clip pointer is the default 1.
  if (s.cpu.clip == 1.0f && rng.Uniform(0, 1)) s.device.clip = nullptr;
  return s;
}

// Lays out the case's arrays: each tensor's arrays at one offset within 16
// bytes (packed), or at independent ones (element by element).
inline ArenaLayout LayOut(const UpdateCase& c, Rng& rng, std::vector<uint8_t>* arena_bytes,
                   CaseTotals* totals) {
  const int states = UpdateStates(c.rule);
  int64_t bytes = kUpdateScalarBytes;
  for (int64_t n : c.sizes) bytes += (1 + states) * (n * 4 + 64 + 2 * kUpdateGuardBytes + 64);
  arena_bytes->assign(static_cast<size_t>(bytes + 64), 0);
  uint8_t* base = arena_bytes->data();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  ArenaLayout layout;
  layout.expected_reads.assign(arena_bytes->size(), 0);
  layout.expected_writes.assign(arena_bytes->size(), 0);
  int64_t cursor = kUpdateScalarBytes;
  for (int64_t n : c.sizes) {
    const bool packed = rng.Uniform(0, 3) != 0;
    const int64_t shared_offset = 4 * rng.Uniform(0, 15);
    UpdateTensor tensor{};
    tensor.num_elements = n;
    tensor.decay = rng.Uniform(0, 1) != 0;
    tensor.fold = rng.Uniform(0, 1) != 0;
    for (int a = 0; a <= states; ++a) {
      cursor = (cursor + kUpdateGuardBytes + 63) / 64 * 64;
      cursor += packed ? shared_offset : 4 * rng.Uniform(0, 15);
      float* array = reinterpret_cast<float*>(base + cursor);
      const int64_t first = base + cursor - arena_bytes->data();
      for (int64_t i = 0; i < n * 4; ++i) {
        layout.expected_reads[first + i] = c.all_finite ? 1 : 0;
        layout.expected_writes[first + i] = c.all_finite && a > 0 ? 1 : 0;
      }
      for (int64_t i = 0; i < n; ++i) array[i] = MixedValue(rng, c.value_mix);
      if (a == 0) {
        tensor.grad = array;
      } else {
        tensor.state[a - 1] = array;
      }
      cursor += n * 4;
    }
    (packed ? totals->packed : totals->unpacked) += 1;
    layout.tensors.push_back(tensor);
  }
  // The guards: a pattern, so an unexpected write shows up as a changed byte.
  for (size_t i = (base - arena_bytes->data()) + kUpdateScalarBytes; i < arena_bytes->size(); ++i) {
    if (layout.expected_reads[i] == 0) (*arena_bytes)[i] = static_cast<uint8_t>(0xa5 ^ (i * 7));
  }
  return layout;
}

inline std::string Describe(const UpdateCase& c) {
  std::string sizes;
  for (size_t i = 0; i < c.sizes.size() && i < 6; ++i) sizes += std::to_string(c.sizes[i]) + " ";
  return "rule " + std::to_string(static_cast<int>(c.rule)) + ", " +
         std::to_string(c.sizes.size()) + " tensors (" + sizes + "...), flag " +
         (c.all_finite ? "true" : "false") + ", loss scale " + std::to_string(c.loss_scale) +
         ", mix " + std::to_string(c.value_mix) + ", seed " + std::to_string(c.seed);
}

// Sizes: odd and small, around packs and the chunk (16,384 floats), empty.
inline int64_t DrawSize(Rng& rng) {
  const int64_t chunk = gpu::kChunkBytes / 4;
  switch (rng.Uniform(0, 5)) {
    case 0:
      return rng.Uniform(0, 9);
    case 1:
      return rng.Uniform(10, 1100);
    case 2:
      return chunk + rng.Uniform(-9, 9);
    case 3:
      return 2 * chunk + rng.Uniform(-5, 5);
    case 4:
      return rng.Uniform(1, 3 * chunk);
    default:
      return 0;
  }
}

// The cases: every rule, flag true and false, both parameter spaces, loss
// scales of every kind (non-powers of two, below 1, near the top of the
// range), the three value mixes; mostly short lists of any sizes, some long
// ones of small tensors (medium, large and buffer tables). `per_rule` cases
// per rule; `max_size` caps a tensor (a quick run).
inline std::vector<UpdateCase> MakeUpdateCases(int per_rule, int64_t max_size) {
  const float scales[] = {1.0f, 3.0f, 1000.0f, 32768.0f, 65537.0f, 0.75f, 1e10f, 0x1p126f, 3e38f};
  std::vector<UpdateCase> cases;
  Rng rng(0xada);
  for (int rule = 0; rule < kNumUpdateRules; ++rule) {
    for (int k = 0; k < per_rule; ++k) {
      UpdateCase c;
      c.rule = static_cast<UpdateRule>(rule);
      c.all_finite = k % 7 != 3;
      c.large_params = k % 5 != 4;
      c.loss_scale = scales[rng.Uniform(0, 8)];
      c.value_mix = static_cast<int>(k % 3);
      c.seed = rng.Next();
      const int64_t count = k % 10 == 9 ? rng.Uniform(17, 700) : rng.Uniform(1, 6);
      for (int64_t t = 0; t < count; ++t) {
        c.sizes.push_back(std::min(max_size, count > 16 ? rng.Uniform(0, 40) : DrawSize(rng)));
      }
      cases.push_back(c);
    }
  }
  return cases;
}

// Compares an updated arena with the CPU kernels' (one arena per CPU path):
// an empty string, or what differs first. Bit for bit, except the payload of
// a NaN: where an op meets two NaNs, x86 returns its first operand's, and the
// compilers commute a + b and a * b freely, so the CPU paths themselves return
// different NaNs there (counted in nan_choices). A NaN's payload through one
// NaN operand is checked by the element math. A signalling NaN is never
// right: x86 returns none, and the emulation's IEEE ops return one for a NaN
// (MarkNaN in fused_update_body.h), which must never reach memory.
inline std::string CompareArena(const uint8_t* got_bytes, size_t size,
                                const std::vector<std::vector<uint8_t>>& expected,
                                CaseTotals* totals) {
  for (size_t i = 0; i + 4 <= size; i += 4) {
    uint32_t got;
    memcpy(&got, got_bytes + i, 4);
    uint32_t first;
    memcpy(&first, expected[0].data() + i, 4);
    bool agree = true;
    bool all_nan = IsNaNBits<float>(got);
    for (const std::vector<uint8_t>& reference : expected) {
      uint32_t want;
      memcpy(&want, reference.data() + i, 4);
      agree = agree && want == first;
      all_nan = all_nan && IsNaNBits<float>(want);
    }
    if (agree && got == first) continue;
    if (all_nan && (got & FloatLayout<float>::kQuietBit) != 0) {
      ++totals->nan_choices;
      continue;
    }
    return std::string(agree ? "differs from the CPU kernels" : "the CPU references disagree") +
           " at arena byte " + std::to_string(i) + ": GPU " + std::to_string(got) + ", CPU " +
           std::to_string(first);
  }
  return "";
}

}  // namespace testing
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_TESTS_FUSED_UPDATE_CASES_H_
