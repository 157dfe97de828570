"""Fault injection: training runs with overflows at random (seeded) steps.

A small two-layer model trains for STEPS steps in a custom loop; on about one
step in seven an inf, -inf or NaN is injected, either into the loss (every
gradient overflows) or into one element of one gradient (the check must find a
single bad value anywhere in the list). With float16 weights the gradient list
is mixed (two float16 gradients, one float32), and a large dynamic scale also
overflows float16 by itself.

Each run is compared, after every step, with a reference that does the skipping
by hand: the same forward and backward pass (`loss * scale`), the gradients
unscaled by conftest's numpy oracle, the flag taken with `np.isfinite`, and the
same inner optimizer (a second instance) applied only where the flag is true.
Weights and optimizer slots must match bit for bit, no non-finite value may
reach them, and a DynamicLossScale's scale and good-steps counter must equal
those of TF's own `tf.compat.v1.mixed_precision.DynamicLossScale` driven by the
reference's flags.

The wrappers are used as a user would (scaling.unscale_and_check underneath),
so whichever implementation the seam has -- TF arithmetic or the fused op --
is the one under test.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import reference_unscale
from fixed_loss_scale.keras import FixedLossScaleOptimizer

v1 = tf.compat.v1
STEPS = 100
FEATURES, HIDDEN, BATCH = 8, 16, 16
LR, MOMENTUM = 0.05, 0.9
FIXED_SCALE = 1024.0
POISON_PROBABILITY = 0.15
SPECIALS = (np.inf, -np.inf, np.nan)
# DynamicLossScale(initial, increment_period) per weight dtype: 2**20 overflows
# float16 gradients by itself (the scale falls, then rises every 10 good steps).
DYNAMIC = {"float16": (2.0**20, 10), "float32": (2.0**15, 10)}
VARIANTS = ["fixed_custom_loop", "dynamic_custom_loop", "keras_fixed", "tf1_fixed",
            "tf1_dynamic"]


def weight_dtypes(dtype):
  """w1, b1, w2: float16 runs keep b1 in float32, so the gradient list is mixed."""
  return [tf.float16, tf.float32, tf.float16] if dtype == "float16" else [tf.float32] * 3


def initial_weights(dtype):
  rng = np.random.default_rng(5)
  values = [rng.standard_normal((FEATURES, HIDDEN)) * 0.4, rng.standard_normal(HIDDEN) * 0.1,
            rng.standard_normal((HIDDEN, 1)) * 0.4]
  return [v.astype(d.as_numpy_dtype) for v, d in zip(values, weight_dtypes(dtype))]


def batch(step):
  rng = np.random.default_rng(1000 + step)
  x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
  y = (np.sin(x.sum(axis=1, keepdims=True)) + 0.1).astype(np.float32)
  return x, y


def poison_plan(seed, shapes):
  """Per step: None, ("loss", value) or ("grad", weight index, flat position, value)."""
  rng = np.random.default_rng(seed)
  plan = [None] * STEPS
  for k, step in enumerate(np.flatnonzero(rng.random(STEPS) < POISON_PROBABILITY)):
    value = SPECIALS[rng.integers(len(SPECIALS))]
    if k % 3 == 0:  # one poisoning in three hits the loss, the others one gradient value
      plan[step] = ("loss", value)
    else:
      index = int(rng.integers(len(shapes)))
      plan[step] = ("grad", index, int(rng.integers(int(np.prod(shapes[index])))), value)
  return plan


class Injector:
  """Variables that carry a step's poison into the graph (one trace for all steps)."""

  def __init__(self, weights):
    self.loss_factor = tf.Variable(1.0, trainable=False)
    self.grad_poison = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                        for w in weights]

  def set(self, poison):
    self.loss_factor.assign(1.0)
    for p in self.grad_poison:
      p.assign(tf.zeros_like(p))
    if poison is None:
      return
    if poison[0] == "loss":
      self.loss_factor.assign(poison[1])
    else:
      _, index, position, value = poison
      p = self.grad_poison[index]
      flat = np.zeros(int(np.prod(p.shape)), p.dtype.as_numpy_dtype)
      flat[position] = value
      p.assign(flat.reshape(p.shape))


@tf.custom_gradient
def _with_gradient_poison(w, poison):
  """Identity forward; the gradient gets `poison` added (zero on clean steps)."""
  def grad(upstream):
    return upstream + poison, None
  return tf.identity(w), grad


def forward_loss(weights, injector, x, y):
  w1, b1, w2 = [_with_gradient_poison(tf.convert_to_tensor(w), p)
                for w, p in zip(weights, injector.grad_poison)]
  h = tf.tanh(tf.matmul(tf.cast(x, w1.dtype), w1) + tf.cast(b1, w1.dtype))
  out = tf.matmul(h, w2)
  return tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y)) * injector.loss_factor


def make_variables(variant, dtype):
  make = keras.Variable if variant.startswith("keras") else tf.Variable
  return [make(w) for w in initial_weights(dtype)]


def hand_sgd(weights, grads):
  return tf.group([w.assign_sub(g * tf.cast(LR, w.dtype)) for w, g in zip(weights, grads)])


# ---- the run under test ---------------------------------------------------------------


class Ours:
  """The variant as a user writes it. step() trains one step; state() gives
  (scale, good steps) for a dynamic scale, slots() the optimizer's state."""

  def __init__(self, variant, dtype):
    self.variant = variant
    self.weights = make_variables(variant, dtype)
    self.injector = Injector(self.weights)
    self.loss_scale = None
    if variant == "fixed_custom_loop":
      self.loss_scale = fls.FixedLossScale(FIXED_SCALE, skip_non_finite=True)
      self._step = tf.function(self._custom_loop_step)
    elif variant == "dynamic_custom_loop":
      self.loss_scale = fls.DynamicLossScale(*DYNAMIC[dtype])
      self._step = tf.function(self._custom_loop_step)
    elif variant == "keras_fixed":
      self.opt = FixedLossScaleOptimizer(keras.optimizers.SGD(LR, momentum=MOMENTUM), FIXED_SCALE,
                                         skip_non_finite=True)
      self._step = tf.function(self._keras_step)
    else:
      self.loss_scale = (fls.FixedLossScale(FIXED_SCALE, skip_non_finite=True)
                         if variant == "tf1_fixed" else fls.DynamicLossScale(*DYNAMIC[dtype]))
      self.opt = fls.MixedPrecisionLossScaleOptimizer(
          v1.train.MomentumOptimizer(LR, MOMENTUM), self.loss_scale)
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
      self._step = tf.function(self._tf1_step)

  def _custom_loop_step(self, x, y):
    with tf.GradientTape() as tape:
      scaled = self.loss_scale.scale_loss(forward_loss(self.weights, self.injector, x, y))
    grads = self.loss_scale.unscale_gradients(tape.gradient(scaled, self.weights))
    _, should_apply = self.loss_scale.update(grads)
    tf.cond(should_apply, lambda: hand_sgd(self.weights, grads), tf.no_op)

  def _keras_step(self, x, y):
    with tf.GradientTape() as tape:
      scaled = self.opt.scale_loss(forward_loss(self.weights, self.injector, x, y))
    self.opt.apply(tape.gradient(scaled, self.weights), self.weights)

  def _tf1_step(self, x, y):
    self.opt.minimize(lambda: forward_loss(self.weights, self.injector, x, y),
                      var_list=self.weights, global_step=self.global_step)

  def step(self, poison, x, y):
    self.injector.set(poison)
    self._step(tf.constant(x), tf.constant(y))

  def state(self):
    if not isinstance(self.loss_scale, fls.DynamicLossScale):
      return None
    return (np.float32(self.loss_scale._current_loss_scale.numpy()),  # pylint: disable=protected-access
            int(self.loss_scale._num_good_steps.numpy()))  # pylint: disable=protected-access

  def applied_steps(self):
    if self.variant == "keras_fixed":
      return int(self.opt.iterations.numpy())
    if self.variant.startswith("tf1"):
      return int(self.global_step.numpy())
    return None

  def slots(self):
    if self.variant == "keras_fixed":
      return [np.asarray(v) for v in self.opt.inner_optimizer.variables]
    if self.variant.startswith("tf1"):
      inner = self.opt._optimizer  # pylint: disable=protected-access  (TF's wrapper keeps the slots there)
      return [inner.get_slot(w, "momentum").numpy() for w in self.weights]
    return []


# ---- the reference: same gradients, skipping by hand ----------------------------------


class Reference:
  """Same model and inner optimizer; unscales with the numpy oracle, decides
  with np.isfinite, applies only the clean steps. A dynamic scale is TF's own
  compat DynamicLossScale, updated with the reference's flag."""

  def __init__(self, variant, dtype):
    self.variant = variant
    self.weights = make_variables(variant, dtype)
    self.injector = Injector(self.weights)
    self.tf_dynamic = (v1.mixed_precision.DynamicLossScale(*DYNAMIC[dtype])
                       if "dynamic" in variant else None)
    if variant == "keras_fixed":
      self.opt = keras.optimizers.SGD(LR, momentum=MOMENTUM)
      apply = lambda grads: self.opt.apply(grads, self.weights)
    elif variant.startswith("tf1"):
      self.opt = v1.train.MomentumOptimizer(LR, MOMENTUM)
      apply = lambda grads: self.opt.apply_gradients(list(zip(grads, self.weights)))
    else:
      apply = lambda grads: hand_sgd(self.weights, grads)

    @tf.function
    def apply_clean_step(grads):
      apply(grads)

    self._apply = apply_clean_step
    self.applied = 0

    @tf.function
    def scaled_grads(x, y, scale):
      with tf.GradientTape() as tape:
        scaled = forward_loss(self.weights, self.injector, x, y) * scale
      return tape.gradient(scaled, self.weights)

    self._scaled_grads = scaled_grads

  def scale(self):
    if self.tf_dynamic is not None:
      return np.float32(self.tf_dynamic().numpy())
    return np.float32(FIXED_SCALE)

  def step(self, poison, x, y):
    """Returns the flag (all unscaled gradients finite)."""
    self.injector.set(poison)
    scale = self.scale()
    grads = self._scaled_grads(tf.constant(x), tf.constant(y), tf.constant(scale))
    unscaled = [reference_unscale(g.numpy(), scale) for g in grads]
    finite = all(np.isfinite(u.astype(np.float64)).all() for u in unscaled)
    if self.tf_dynamic is not None:
      self.tf_dynamic.update([tf.constant(1.0 if finite else np.inf)])
    if finite:
      self._apply([tf.constant(u) for u in unscaled])
      self.applied += 1
    return finite

  def state(self):
    if self.tf_dynamic is None:
      return None
    return (np.float32(self.tf_dynamic._current_loss_scale.numpy()),  # pylint: disable=protected-access
            int(self.tf_dynamic._num_good_steps.numpy()))  # pylint: disable=protected-access

  def slots(self):
    if self.variant == "keras_fixed":
      return [np.asarray(v) for v in self.opt.variables]
    if self.variant.startswith("tf1"):
      return [self.opt.get_slot(w, "momentum").numpy() for w in self.weights]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_injected_overflows_are_skipped_exactly_like_a_hand_skipping_reference(variant, dtype):
  ours, reference = Ours(variant, dtype), Reference(variant, dtype)
  plan = poison_plan(seed=VARIANTS.index(variant) + 10 * (dtype == "float16"),
                     shapes=[w.shape for w in initial_weights(dtype)])
  flags, states = [], []
  for step in range(STEPS):
    x, y = batch(step)
    ours.step(plan[step], x, y)
    flags.append(reference.step(plan[step], x, y))
    assert flags[-1] is False or plan[step] is None, (step, plan[step])
    for mine, theirs in zip(ours.weights, reference.weights):
      got = np.asarray(mine)
      assert np.isfinite(got.astype(np.float64)).all(), (step, plan[step])
      assert_bitwise_equal(got, np.asarray(theirs))
    if ours.state() is not None:
      assert ours.state() == reference.state(), (step, ours.state(), reference.state())
      states.append(ours.state())
  for mine, theirs in zip(ours.slots(), reference.slots()):
    assert np.isfinite(mine.astype(np.float64)).all()
    assert_bitwise_equal(mine, theirs)
  if ours.applied_steps() is not None:
    assert ours.applied_steps() == reference.applied == sum(flags)

  # The plan exercised what it claims: both kinds of poison, skipped steps, and
  # for a dynamic scale a scale that fell and rose again.
  kinds = {p[0] for p in plan if p is not None}
  assert kinds == {"loss", "grad"}, plan
  injected = sum(p is not None for p in plan)
  assert injected >= 5 and STEPS - sum(flags) >= injected
  if states:
    scales = np.array([s[0] for s in states])
    assert (np.diff(scales) < 0).any() and (np.diff(scales) > 0).any()
    if dtype == "float16":  # the large initial scale overflowed float16 by itself
      assert STEPS - sum(flags) > injected
