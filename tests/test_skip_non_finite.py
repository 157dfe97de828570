"""The all-finite flag (scaling.unscale_and_check) and FixedLossScale(skip_non_finite=True).

References: numpy (the flag is `np.isfinite(...).all()` of the inputs; the
unscaled values are conftest's oracle; a float64 SGD run that skips the same
steps), TF's compat classes (TF's wrapper with TF's DynamicLossScale at
multiplier 1 is a fixed scale that TF's own code skips with) and Keras's own
optimizers on the batches that were not poisoned.
"""

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import fixed_loss_scale as fls
from conftest import NP_DTYPES
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import random_values
from conftest import reference_unscale
from fixed_loss_scale import finite
from fixed_loss_scale import scaling
from fixed_loss_scale.keras import FixedLossScaleOptimizer

v1 = tf.compat.v1
# Sizes around SIMD widths (8/16/32 lanes) and a thread shard edge.
SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 257, 4099]
SPECIALS = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}

_graph_unscale_and_check = tf.function(scaling.unscale_and_check, reduce_retracing=True)


def _special_finite_values(np_dtype):
  """The dtype's smallest subnormal, smallest normal and largest finite values, both signs."""
  info = ml_dtypes.finfo(np_dtype)
  values = [info.smallest_subnormal, info.tiny, info.max]
  return [np_dtype(v) for v in values] + [np_dtype(-v) for v in values]


@st.composite
def gradient_lists(draw):
  """(list of numpy arrays, position of the one inf/NaN or None, its kind)."""
  count = draw(st.integers(1, 4))
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  arrays = []
  for _ in range(count):
    np_dtype = NP_DTYPES[draw(st.sampled_from(list(NP_DTYPES)))]
    values = random_values(rng, (draw(st.sampled_from(SIZES)),), np_dtype)
    # Extreme finite values anywhere: they must not flip the flag.
    for special in _special_finite_values(np_dtype):
      values[rng.integers(values.size)] = special
    arrays.append(values)
  poison = draw(st.one_of(st.none(), st.sampled_from(sorted(SPECIALS))))
  where = None
  if poison is not None:
    tensor = draw(st.integers(0, count - 1))
    index = draw(st.sampled_from([0, arrays[tensor].size - 1, rng.integers(arrays[tensor].size)]))
    arrays[tensor][index] = SPECIALS[poison]
    where = (tensor, int(index))
  return arrays, where


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=gradient_lists(), scale=st.sampled_from([1.0, 2.0**15, 1000.5, 2.0**126]),
       as_tensor=st.booleans(), in_graph=st.booleans())
def test_flag_flips_on_any_single_inf_or_nan_and_only_then(case, scale, as_tensor, in_graph):
  arrays, where = case
  grads = [tf.constant(a) for a in arrays]
  loss_scale = tf.constant(scale, tf.float32) if as_tensor else scale
  fn = _graph_unscale_and_check if in_graph else scaling.unscale_and_check
  unscaled, flag = fn(grads, loss_scale)
  expected = all(np.isfinite(a.astype(np.float64)).all() for a in arrays)
  assert expected == (where is None)
  assert flag.dtype == tf.bool and flag.shape == ()
  assert bool(flag.numpy()) is expected, (where, scale)
  # The unscaled numbers are unscale_gradients' (the oracle's), with or without the check.
  for a, u in zip(arrays, unscaled):
    assert_bitwise_equal(u.numpy(), reference_unscale(a, scale))


@pytest.mark.parametrize("in_graph", [False, True])
def test_flag_skips_none_reads_indexed_slices_values_and_is_true_for_nothing(in_graph):
  fn = _graph_unscale_and_check if in_graph else scaling.unscale_and_check
  slices = tf.IndexedSlices(tf.constant([[1.0, np.nan]]), tf.constant([3]), tf.constant([5, 2]))
  out, flag = fn({"a": [tf.constant([4.0]), None], "b": slices}, 4.0)
  assert not flag.numpy()
  assert out["a"][1] is None and isinstance(out["b"], tf.IndexedSlices)
  np.testing.assert_array_equal(out["b"].indices.numpy(), [3])
  _, flag = fn([None, tf.IndexedSlices(tf.constant([[2.0]]), tf.constant([0]))], 2.0)
  assert flag.numpy()
  out, flag = fn([None, None], 8.0)
  assert out == [None, None] and flag.numpy()


def test_bad_tensor_scales_are_refused_naming_the_argument():
  with pytest.raises(TypeError, match="loss_scale must be .* float32 scalar tensor, got a "
                                      "float64 tensor"):
    scaling.unscale_and_check([tf.ones([2])], tf.constant(2.0, tf.float64))
  with pytest.raises(ValueError, match=r"loss_scale must be a scalar, got a tensor of shape \(2,\)"):
    scaling.unscale_and_check([tf.ones([2])], tf.constant([2.0, 2.0]))
  with pytest.raises(ValueError, match="loss_scale must be at least 1, got 0.5"):
    scaling.unscale_and_check([tf.ones([2])], 0.5)


def test_update_reuses_the_flag_of_unscaled_gradients_and_checks_others():
  """In a graph the unscaling is one FixedUnscaleGradsAndCheck and update()
  takes its flag: no check at all. A gradient changed after unscaling (here
  clipped) is checked again: one read-only FixedCheckGrads for it alone."""
  loss_scale = fls.FixedLossScale(8, skip_non_finite=True)

  @tf.function
  def reused(a, b):
    return loss_scale.update(loss_scale.unscale_gradients([a, b]))[1]

  @tf.function
  def rechecked(a, b):
    grads = loss_scale.unscale_gradients([a, b])
    return loss_scale.update([tf.clip_by_value(grads[0], -1, 1), grads[1]])[1]

  args = (tf.constant([8.0, 16.0]), tf.constant([1.0], tf.float16))
  reused_ops = graph_op_types(reused.get_concrete_function(*args))
  assert reused_ops.count("IsFinite") == 0 and reused_ops.count("FixedUnscaleGradsAndCheck") == 1
  rechecked_ops = graph_op_types(rechecked.get_concrete_function(*args))
  assert rechecked_ops.count("FixedCheckGrads") == 1 and "IsFinite" not in rechecked_ops
  assert "FixedCheckGrads" not in reused_ops
  assert reused(*args).numpy() and rechecked(*args).numpy()
  assert not reused(tf.constant([8.0, np.inf]), args[1]).numpy()
  assert not rechecked(args[0], tf.constant([np.nan], tf.float16)).numpy()
  # Eagerly (the arithmetic and TF's check): the flag of an eager unscale is
  # found in the registry, a new tensor is checked.
  grads = loss_scale.unscale_gradients([tf.constant([np.inf])])
  assert not loss_scale.update(grads)[1].numpy()
  assert loss_scale.update([tf.constant([1.0])])[1].numpy()


@pytest.mark.parametrize("scale", ["fixed", "dynamic"])
def test_flag_of_the_fused_op_adds_no_is_finite(scale):
  """update() and finite.all_finite on the op's outputs add no IsFinite (nor
  any other read of the gradients) to the graph: the flag is the op's output
  (NOTE [flag of the op]), also for gradients that never went through
  unscale_and_check and so were never remembered."""
  make_loss_scale = ((lambda: fls.FixedLossScale(8, skip_non_finite=True)) if scale == "fixed"
                     else (lambda: fls.DynamicLossScale(8.0)))

  def new_ops(check):
    """The op types `check(unscaled gradients, loss scale)` adds to a graph,
    and the flag it returns."""
    graph = tf.Graph()
    with graph.as_default():
      grads = [tf.constant([8.0, 16.0]), tf.constant([1.0], tf.float16)]
      unscaled, _, _ = fls.ops.fixed_unscale_grads_and_check(grads, 8.0)
      unscaled = [tf.IndexedSlices(unscaled[0], tf.constant([0, 1])), None, unscaled[1]]
      loss_scale = make_loss_scale()  # its variables are not part of the check
      before = {op.name for op in graph.get_operations()}
      flag = check(unscaled, loss_scale)
      added = [op.type for op in graph.get_operations() if op.name not in before]
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        return added, session.run(flag)

  # all_finite returns the op's flag itself: no new op at all.
  assert new_ops(lambda unscaled, _: finite.all_finite(unscaled)) == ([], True)
  added, value = new_ops(lambda unscaled, loss_scale: loss_scale.update(unscaled)[1])
  assert value and "IsFinite" not in added and "FixedUnscaleGradsAndCheck" not in added
  # Its flag is the op's, not a new check.
  with tf.Graph().as_default():
    unscaled, flag, _ = fls.ops.fixed_unscale_grads_and_check([tf.constant([1.0])], 2.0)
    assert finite.all_finite(unscaled) is flag
    assert finite.all_finite([unscaled[0] * 1]) is not flag  # another op's output


def test_skip_option_contract_and_default_unchanged():
  default, skipping = fls.FixedLossScale(64), fls.FixedLossScale(64, skip_non_finite=True)
  assert default.skip_non_finite is False and skipping.skip_non_finite is True
  assert default.get_config() == {"loss_scale_value": 64.0}
  assert skipping.get_config() == {"loss_scale_value": 64.0, "skip_non_finite": True}
  assert fls.FixedLossScale.from_config(skipping.get_config()).skip_non_finite is True
  assert fls.deserialize(fls.serialize(skipping)).skip_non_finite is True
  # A config written before the option (and TF's own) loads without it.
  assert fls.FixedLossScale.from_config({"loss_scale_value": 64.0}).skip_non_finite is False
  assert repr(skipping) == "FixedLossScale(64.0, skip_non_finite=True)"
  for bad in ("yes", 1, None):
    with pytest.raises(TypeError, match=f"skip_non_finite must be True or False, got .*{bad!r}"):
      fls.FixedLossScale(64, skip_non_finite=bad)
  # The TF 2.4 contract holds for the default even on NaN gradients.
  assert default.update([tf.constant(np.nan)]) == (None, True)
  update_op, should_apply = skipping.update([tf.constant(np.nan)])
  assert update_op is None and should_apply.dtype == tf.bool and not should_apply.numpy()
  with tf.Graph().as_default():
    update_op, should_apply = skipping.update([tf.constant([1.0])])
    assert update_op.type == "NoOp" and tf.is_tensor(should_apply)


# ---- fault injection: training runs with overflowing steps -------------------------

STEPS = 12
POISONED = {2, 5, 6, 10}
LR = 0.1


def _linear_data():
  rng = np.random.default_rng(21)
  return (rng.standard_normal((16, 4)).astype(np.float32),
          rng.standard_normal((16, 1)).astype(np.float32),
          rng.standard_normal((4, 1)).astype(np.float32))


def _numpy_sgd_skipping(x, y, w0, poisoned):
  """float64 SGD on mean((xw - y)^2), the poisoned steps skipped."""
  w = w0.astype(np.float64)
  x, y = x.astype(np.float64), y.astype(np.float64)
  history = []
  for step in range(STEPS):
    if step not in poisoned:
      w = w - LR * (2.0 / len(x)) * x.T @ (x @ w - y)
    history.append(w.copy())
  return np.array(history)


def _tf1_session_run(make_optimizer):
  """A Session graph: the loss times a fed factor, inf on the poisoned steps."""
  x, y, w0 = _linear_data()
  with tf.Graph().as_default():
    w = tf.compat.v1.Variable(w0)
    global_step = v1.train.get_or_create_global_step()
    factor = v1.placeholder(tf.float32, [])
    loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - y)) * factor
    train_op = make_optimizer().minimize(loss, var_list=[w], global_step=global_step)
    history = []
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(STEPS):
        sess.run(train_op, {factor: np.inf if step in POISONED else 1.0})
        history.append(sess.run(w))
      return np.array(history), sess.run(global_step)


def _tf2_run(make_optimizer, use_function):
  x, y, w0 = _linear_data()
  w = tf.Variable(w0)
  global_step = tf.Variable(0, dtype=tf.int64)
  factor = tf.Variable(1.0)
  opt = make_optimizer()

  def step():
    opt.minimize(lambda: tf.reduce_mean(tf.square(tf.matmul(x, w) - y)) * factor,
                 var_list=[w], global_step=global_step)

  step = tf.function(step) if use_function else step
  history = []
  for i in range(STEPS):
    factor.assign(np.inf if i in POISONED else 1.0)
    step()
    history.append(w.numpy())
  return np.array(history), global_step.numpy()


def _ours_fixed_skip():
  return fls.MixedPrecisionLossScaleOptimizer(
      v1.train.GradientDescentOptimizer(LR), fls.FixedLossScale(1024, skip_non_finite=True))


def _tf_dynamic_multiplier_one():
  return v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
      v1.train.GradientDescentOptimizer(LR),
      v1.mixed_precision.DynamicLossScale(1024, increment_period=10**9, multiplier=1.0))


@pytest.mark.parametrize("mode", ["session", "eager", "function"])
def test_tf1_wrapper_skips_overflowing_steps_like_tf_and_numpy(mode):
  run = {"session": _tf1_session_run,
         "eager": lambda make: _tf2_run(make, False),
         "function": lambda make: _tf2_run(make, True)}[mode]
  ours, our_step = run(_ours_fixed_skip)
  theirs, their_step = run(_tf_dynamic_multiplier_one)
  assert np.isfinite(ours).all()
  assert_bitwise_equal(ours, theirs)
  assert our_step == their_step == STEPS - len(POISONED)
  np.testing.assert_allclose(ours, _numpy_sgd_skipping(*_linear_data(), POISONED), rtol=1e-5,
                             atol=1e-6)


def test_without_the_option_the_overflow_reaches_the_weights():
  """The default (TF 2.4's contract) applies the inf step: what the option prevents."""
  ours, our_step = _tf1_session_run(lambda: fls.MixedPrecisionLossScaleOptimizer(
      v1.train.GradientDescentOptimizer(LR), 1024))
  assert not np.isfinite(ours[min(POISONED)]).all() and our_step == STEPS


def test_tf_own_wrapper_does_not_consult_a_fixed_scale():
  """Documented limit: TF's compat wrapper calls update() only for a
  DynamicLossScale, so it applies the inf step even with skip_non_finite."""
  theirs, their_step = _tf1_session_run(lambda: v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
      v1.train.GradientDescentOptimizer(LR), fls.FixedLossScale(1024, skip_non_finite=True)))
  assert not np.isfinite(theirs[-1]).all() and their_step == STEPS


def test_tf_own_wrapper_with_our_dynamic_scale_checks_with_one_read_only_op():
  """TF's compat wrapper unscales the gradients itself and asks update() of a
  DynamicLossScale: their flag comes from one FixedCheckGrads (scaling.
  check_finite), not an IsFinite per gradient, and skips as TF's scale does."""
  results = []
  for scale in (fls.DynamicLossScale(1024, increment_period=3),
                v1.mixed_precision.DynamicLossScale(1024, increment_period=3)):
    w = tf.Variable([1.0, 2.0])
    b = tf.Variable([0.5])
    opt = v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
        v1.train.GradientDescentOptimizer(LR), scale)

    @tf.function
    def step(x):
      opt.minimize(lambda: tf.reduce_sum(w * x) + tf.reduce_sum(b * x[:1]), var_list=[w, b])

    outer = [op.type for op in step.get_concrete_function(tf.TensorSpec([2])).graph.get_operations()]
    for x in ([1.0, 2.0], [np.inf, 1.0], [3.0, -1.0], [1.0, np.nan], [2.0, 2.0]):
      step(tf.constant(x))
    results.append((outer, [w.numpy(), b.numpy(), scale().numpy()]))
  (ours_ops, ours), (tf_ops, theirs) = results
  assert ours_ops.count("FixedCheckGrads") == 1 and "IsFinite" not in ours_ops
  assert "FixedCheckGrads" not in tf_ops and "IsFinite" in tf_ops
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)


def _keras_model(w0):
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
  model.layers[0].kernel.assign(w0)
  return model


@pytest.mark.parametrize("style", ["keras3", "tf_keras2"])
def test_keras_wrapper_custom_loop_skips_like_adam_on_the_clean_steps(style):
  """Adam counts its steps, so a step that was not skipped would show. The
  reference is Keras's Adam alone, not scaled, on the clean steps only: with a
  power-of-two scale the unscaled float32 gradients are exactly the true ones."""
  x, y, w0 = _linear_data()
  factor = tf.Variable(1.0)

  def train(model, apply, scale_loss, steps):
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y)) * factor
        scaled = scale_loss(loss)
      apply(tape.gradient(scaled, model.trainable_weights), model.trainable_weights)

    history = []
    for i in steps:
      factor.assign(np.inf if i in POISONED else 1.0)
      step()
      history.append(model.layers[0].kernel.numpy())
    return np.array(history)

  model = _keras_model(w0)
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(0.05), 1024,
                                unscale_in_apply=style == "keras3", skip_non_finite=True)
  if style == "keras3":
    ours = train(model, opt.apply, opt.scale_loss, range(STEPS))
  else:
    ours = train(model, lambda g, v: opt.apply_gradients(zip(opt.get_unscaled_gradients(g), v)),
                 opt.get_scaled_loss, range(STEPS))
  assert np.isfinite(ours).all()
  assert int(opt.iterations.numpy()) == STEPS - len(POISONED)
  reference_model = _keras_model(w0)
  adam = keras.optimizers.Adam(0.05)
  clean = [i for i in range(STEPS) if i not in POISONED]
  reference = train(reference_model, adam.apply, lambda loss: loss, clean)
  assert_bitwise_equal(ours[clean], reference)
  for i in sorted(POISONED):  # a skipped step leaves the weights as they were
    assert_bitwise_equal(ours[i], ours[i - 1] if i else w0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_keras_fit_skips_batches_that_overflow(jit_compile):
  """fit on batches of which some hold an inf: the weights equal Adam's fit on
  the other batches alone."""
  x, y, w0 = _linear_data()
  x = np.tile(x, (4, 1))[:48]
  y = np.tile(y, (4, 1))[:48]
  poisoned_x = x.copy()
  poisoned_batches = [1, 4]
  for b in poisoned_batches:
    poisoned_x[b * 8 + 3, 2] = np.inf
  clean = np.concatenate([np.arange(b * 8, b * 8 + 8) for b in range(6) if b not in poisoned_batches])

  def fit(optimizer, xs, ys):
    model = _keras_model(w0)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.fit(xs, ys, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model.layers[0].kernel.numpy(), optimizer

  ours, opt = fit(FixedLossScaleOptimizer(keras.optimizers.Adam(0.05), 2**12,
                                          skip_non_finite=True), poisoned_x, y)
  reference, _ = fit(keras.optimizers.Adam(0.05), x[clean], y[clean])
  assert np.isfinite(ours).all()
  assert int(opt.iterations.numpy()) == 6 - len(poisoned_batches)
  assert_bitwise_equal(ours, reference)


def test_keras_wrapper_skip_argument_and_config():
  sgd = keras.optimizers.SGD(0.1)
  assert FixedLossScaleOptimizer(sgd, 8).skip_non_finite is False
  assert "skip_non_finite" not in FixedLossScaleOptimizer(sgd, 8).get_config()
  from_scale = FixedLossScaleOptimizer(sgd, fls.FixedLossScale(8, skip_non_finite=True))
  assert from_scale.skip_non_finite is True
  config = from_scale.get_config()
  assert config["skip_non_finite"] is True
  assert FixedLossScaleOptimizer.from_config(config).skip_non_finite is True
  assert "skip_non_finite=True" in repr(from_scale)
  with pytest.raises(TypeError, match="skip_non_finite must be None .* got 'yes'"):
    FixedLossScaleOptimizer(sgd, 8, skip_non_finite="yes")
  with pytest.raises(ValueError, match="skip_non_finite=False contradicts"):
    FixedLossScaleOptimizer(sgd, fls.FixedLossScale(8, skip_non_finite=True),
                            skip_non_finite=False)
