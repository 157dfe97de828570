// The element math of the fused optimizer updates (FixedApplySgd,
// FixedApplyAdam): Keras 3's SGD and Adam update steps, op for op, on one
// element (a float) or one register of elements (a CPU vector), in float32.
//
// NOTE [fused update numerics]: the ops promise the weights and slots that
// Keras 3 computes, bit for bit, so each rule below is Keras's expression
// tree (keras/src/optimizers/{sgd,adam}.py, update_step; the TensorFlow
// backend's _apply_weight_decay; LossScaleOptimizer's unscaling) with each of
// its ops rounded once to float32, in Keras's order:
//   gradient   g = (scaled * unscale) * clip
//                  unscale: the float32 reciprocal of the loss scale, exactly
//                  FixedUnscaleGrads' factor (TensorReciprocalFactorFor); for a
//                  power-of-two scale, Keras's g / scale gives the same bits.
//                  clip: Keras's clip_by_global_norm factor, 1 without it
//                  (x * 1 is x).
//   decay      var = var - (var * wd) * lr            (before the update)
//   SGD        var = var - g * lr
//   momentum   m = m * momentum - g * lr;  var = var + m
//   nesterov   m = m * momentum - g * lr;  var = var + (m * momentum - g * lr)
//   (the products by two scalars as NOTE [scalar factors] says)
//   Adam       m = m + (g - m) * (1 - beta_1)
//              v = v + (g * g - v) * (1 - beta_2)
//              [amsgrad: vhat = max(vhat, v), and vhat for v below]
//              var = var - (m * alpha) / (sqrt(v) + epsilon)
// The per-step scalars (lr after the schedule, alpha = lr * sqrt(1 -
// beta_2^t) / (1 - beta_1^t), 1 - beta_1, ...) are computed in the graph by
// Keras's own expressions and arrive as float32 values: only the elementwise
// part is here. Every element is independent, so fusing the weight decay and
// the update into one pass keeps each op's rounding.
// Bit for bit needs three things beyond the order:
// - no contraction: a*b + c must round twice, as TensorFlow's separate Mul and
//   Add kernels do. The compilers contract by default where the target has FMA
//   (g++ even with -std=c++17), so the objects that compile these rules are
//   built with -ffp-contract=off (Makefile, tf_ops/BUILD; a test checks the
//   objects hold no FMA instruction), and a GPU build uses the _rn intrinsics,
//   which are never contracted;
// - IEEE square root and division: TensorFlow's CPU Sqrt and RealDiv are
//   Eigen's sqrtps/divps (no reciprocal estimate in its float Sqrt on AVX);
// - the same flush-to-zero mode: the CPU kernels run on TensorFlow's threads,
//   whose MXCSR has FTZ and DAZ on, as TensorFlow's own kernels do.
// tests/test_fused_update_op.py compares the ops with Keras's classes over
// long runs.
//
// A `Math` policy supplies the arithmetic of one lane type V: Add, Sub, Mul,
// Div, Sqrt, Max. ScalarMath (below) is the float one; the CPU vector loops
// (cpu/fused_update_loop.h) pass their ISA's. The functions are
// FLS_FUSED_INLINE: a vector translation unit defines it, before including
// this header, as its target attribute (NOTE [one target per translation
// unit] in cpu/scale_loop.h); everything here is in an anonymous namespace
// for the same reason.
#ifndef FIXED_LOSS_SCALE_CORE_FUSED_UPDATE_MATH_H_
#define FIXED_LOSS_SCALE_CORE_FUSED_UPDATE_MATH_H_

#include <cmath>

#include "tf_ops/core/tensor_span.h"

#ifndef FLS_FUSED_INLINE
#define FLS_FUSED_INLINE FLS_HOST_DEVICE
#endif

namespace fixed_loss_scale {
namespace fused {
namespace {

// The float policy: plain operators (no contraction: NOTE [fused update
// numerics]); on a GPU the round-to-nearest intrinsics.
struct ScalarMath {
  using V = float;
  FLS_FUSED_INLINE static V Splat(float x) { return x; }
#if defined(__CUDA_ARCH__)
  FLS_FUSED_INLINE static V Add(V a, V b) { return __fadd_rn(a, b); }
  FLS_FUSED_INLINE static V Sub(V a, V b) { return __fsub_rn(a, b); }
  FLS_FUSED_INLINE static V Mul(V a, V b) { return __fmul_rn(a, b); }
  FLS_FUSED_INLINE static V Div(V a, V b) { return __fdiv_rn(a, b); }
  FLS_FUSED_INLINE static V Sqrt(V a) { return __fsqrt_rn(a); }
#else
  FLS_FUSED_INLINE static V Add(V a, V b) { return a + b; }
  FLS_FUSED_INLINE static V Sub(V a, V b) { return a - b; }
  FLS_FUSED_INLINE static V Mul(V a, V b) { return a * b; }
  FLS_FUSED_INLINE static V Div(V a, V b) { return a / b; }
  FLS_FUSED_INLINE static V Sqrt(V a) { return std::sqrt(a); }
#endif
  // Eigen's max: `a < b ? b : a` (the same as x86 maxps(b, a)).
  FLS_FUSED_INLINE static V Max(V a, V b) { return a < b ? b : a; }
};

// The per-step scalars as values of the policy M's lane type (a rule reads the
// ones it needs); weight_decay_lr and clip_lr are the factors of NOTE [scalar
// factors].
template <typename M>
struct Coefficients {
  using V = typename M::V;
  V unscale, clip, lr, weight_decay, momentum, alpha, one_minus_beta_1, one_minus_beta_2,
      epsilon, weight_decay_lr, clip_lr;
};

// NOTE [scalar factors]: inside a tf.function, Grappler's arithmetic optimizer
// (its MinimizeBroadcasts stage) rewrites a tree of products of a tensor by
// scalars so that the scalars are multiplied first, when the tensor is not a
// scalar: Keras's weight decay `variable * wd * lr` becomes variable * (wd *
// lr) -- and where `lr` is itself a product with no other use (a schedule's
// `initial * decay ** p`, evaluated per variable), its factors join the tree:
// variable * ((wd * initial) * decay ** p). SGD's `gradient * lr` of a clipped
// gradient, `(g * clip) * lr`, becomes g * (clip * lr) (its lr is evaluated
// once per step, a leaf). A rank-0 variable keeps the left-to-right order, as
// does eager execution. Each rounds differently, so the ops follow the graph
// Keras's step actually runs: kFold (a tensor of rank >= 1, while the
// arithmetic optimizer is on) multiplies the variable by weight_decay_lr,
// which the Python wrapper computes in the graph as a probe of shape [1]
// through Keras's own expression, so that Grappler rewrites it as it rewrites
// Keras's (fused_update.py), and the gradient by clip * lr.
// Measured against Keras's classes: tests/test_fused_update_op.py and
// tests/test_fused_update_keras.py.

// The product of the unscaled gradient u and lr, with the clipping factor
// between them (SGD's `ops.multiply(gradient, learning_rate)`).
template <typename M, bool kFold, typename V = typename M::V>
FLS_FUSED_INLINE V GradientTimesLr(V u, const Coefficients<M>& c) {
  if constexpr (kFold) {
    return M::Mul(u, c.clip_lr);
  } else {
    return M::Mul(M::Mul(u, c.clip), c.lr);
  }
}

// The rules. Each Step takes the unscaled, unclipped gradient u and the state
// registers of one element group, var first, then its slots in the op's input
// order.
struct SgdRule {
  static constexpr int kStates = 1;  // var
  template <typename M, bool kFold, typename V>
  FLS_FUSED_INLINE static void Step(V u, V* s, const Coefficients<M>& c) {
    s[0] = M::Sub(s[0], GradientTimesLr<M, kFold>(u, c));
  }
};

template <bool kNesterov>
struct SgdMomentumRule {
  static constexpr int kStates = 2;  // var, momentum
  template <typename M, bool kFold, typename V>
  FLS_FUSED_INLINE static void Step(V u, V* s, const Coefficients<M>& c) {
    const V step = GradientTimesLr<M, kFold>(u, c);
    s[1] = M::Sub(M::Mul(s[1], c.momentum), step);
    if constexpr (kNesterov) {
      s[0] = M::Add(s[0], M::Sub(M::Mul(s[1], c.momentum), step));
    } else {
      s[0] = M::Add(s[0], s[1]);
    }
  }
};

template <bool kAmsgrad>
struct AdamRule {
  static constexpr int kStates = kAmsgrad ? 4 : 3;  // var, m, v[, vhat]
  template <typename M, bool kFold, typename V>
  FLS_FUSED_INLINE static void Step(V u, V* s, const Coefficients<M>& c) {
    const V g = M::Mul(u, c.clip);
    s[1] = M::Add(s[1], M::Mul(M::Sub(g, s[1]), c.one_minus_beta_1));
    s[2] = M::Add(s[2], M::Mul(M::Sub(M::Mul(g, g), s[2]), c.one_minus_beta_2));
    V second = s[2];
    if constexpr (kAmsgrad) {
      s[3] = M::Max(s[3], s[2]);
      second = s[3];
    }
    s[0] = M::Sub(s[0], M::Div(M::Mul(s[1], c.alpha), M::Add(M::Sqrt(second), c.epsilon)));
  }
};

// One element group: the scaled gradient unscaled, the weight decayed when
// kDecay, then the rule's step (NOTE [fused update numerics], NOTE [scalar
// factors]).
template <typename Rule, bool kDecay, bool kFold, typename M, typename V>
FLS_FUSED_INLINE void UpdateGroup(V scaled, V* s, const Coefficients<M>& c) {
  const V u = M::Mul(scaled, c.unscale);
  if constexpr (kDecay && kFold) {
    s[0] = M::Sub(s[0], M::Mul(s[0], c.weight_decay_lr));
  } else if constexpr (kDecay) {
    s[0] = M::Sub(s[0], M::Mul(M::Mul(s[0], c.weight_decay), c.lr));
  }
  Rule::template Step<M, kFold>(u, s, c);
}

}  // namespace
}  // namespace fused
}  // namespace fixed_loss_scale

#endif  // FIXED_LOSS_SCALE_CORE_FUSED_UPDATE_MATH_H_
