"""fixed_loss_scale.DynamicLossScale against TF's tf.compat.v1.mixed_precision.DynamicLossScale.

The reference is TF's class itself, run side by side on the same finite and
overflowing steps: the scale and the good-steps counter must be bit-identical
after every step, eagerly, in a tf.function and in a TF1 Session graph, over
long runs. TF's own loss_scale_test.py cases (not in the wheel) are restated
with their expected outputs. Checkpoints written by either class restore into
the other.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale

v1 = tf.compat.v1
TFDynamic = v1.mixed_precision.DynamicLossScale
FLOAT32_MAX = float(np.finfo(np.float32).max)

# (initial_loss_scale, increment_period, multiplier, overflow probability)
CONFIGS = {
    "defaults_rare_overflows": (2**15, 2000, 2.0, 0.0004),
    "period_3": (1.0, 3, 2.0, 0.25),
    "multiplier_3": (4.0, 2, 3.0, 0.3),
    "cap_at_float32_max": (FLOAT32_MAX / 4, 1, 2.0, 0.1),
    "multiplier_1_5": (16.0, 5, 1.5, 0.2),
}
LONG_STEPS = 3000  # for LONG_CONFIGS; the others run SHORT_STEPS
LONG_CONFIGS = ("defaults_rare_overflows", "period_3")
SHORT_STEPS = 300


def _overflows(steps, probability, seed):
  """Which steps overflow: random, plus a clean stretch of 2100 steps so that
  even the default period of 2000 raises the scale."""
  overflow = np.random.default_rng(seed).random(steps) < probability
  overflow[200:2300] = False
  return overflow


def _grads(overflow, step):
  """A step's gradients: float32, float16 and an IndexedSlices; an overflow puts
  an inf or NaN in one of them."""
  grads = [np.linspace(-3, 3, 9, dtype=np.float32), np.full(5, 0.5, np.float16),
           np.ones((2, 3), np.float32)]
  if overflow:
    grads[step % 3].flat[step % 5] = (np.inf, -np.inf, np.nan)[step % 3]
  return grads


def _as_tensors(arrays):
  return [tf.constant(arrays[0]), tf.constant(arrays[1]),
          tf.IndexedSlices(tf.constant(arrays[2]), tf.constant([0, 4]), tf.constant([6, 3]))]


def _state(loss_scale):
  return (np.float32(loss_scale._current_loss_scale.numpy()),  # pylint: disable=protected-access
          int(loss_scale._num_good_steps.numpy()))  # pylint: disable=protected-access


def _run_tf2(ours, theirs, overflow, use_function):
  def ours_step(grads):
    return ours.update(ours.unscale_gradients(grads))[1]  # the seam's flag

  def theirs_step(grads):
    return theirs.update(grads)[1]  # TF's own check

  if use_function:
    ours_step, theirs_step = tf.function(ours_step), tf.function(theirs_step)
  trajectory = []
  for step, bad in enumerate(overflow):
    grads = _as_tensors(_grads(bad, step))
    assert bool(ours_step(grads).numpy()) is bool(theirs_step(grads).numpy()) is (not bad)
    trajectory.append((_state(ours), _state(theirs)))
  return trajectory


def _run_session(config, overflow):
  with tf.Graph().as_default():
    ours, theirs = fls.DynamicLossScale(*config), TFDynamic(*config)
    feeds = [v1.placeholder(tf.float32, [9]), v1.placeholder(tf.float16, [5]),
             v1.placeholder(tf.float32, [2, 3])]
    grads = [feeds[0], feeds[1], tf.IndexedSlices(feeds[2], tf.constant([0, 4]))]
    our_op, our_flag = ours.update(ours.unscale_gradients(grads))
    their_op, their_flag = theirs.update(grads)
    states = [ours._current_loss_scale, ours._num_good_steps,  # pylint: disable=protected-access
              theirs._current_loss_scale, theirs._num_good_steps]  # pylint: disable=protected-access
    trajectory = []
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step, bad in enumerate(overflow):
        _, _, a, b = sess.run([our_op, their_op, our_flag, their_flag],
                              dict(zip(feeds, _grads(bad, step))))
        assert a == b == (not bad)
        s = sess.run(states)
        trajectory.append(((np.float32(s[0]), int(s[1])), (np.float32(s[2]), int(s[3]))))
    return trajectory


def _assert_same_trajectory(trajectory):
  ours = np.array([t[0][0] for t in trajectory], np.float32)
  theirs = np.array([t[1][0] for t in trajectory], np.float32)
  assert_bitwise_equal(ours, theirs)
  assert [t[0][1] for t in trajectory] == [t[1][1] for t in trajectory]
  return ours


@pytest.mark.parametrize("mode", ["function", "session",
                                  pytest.param("eager", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_long_trajectory_bit_identical_to_tf(name, mode):
  *config, probability = CONFIGS[name]
  steps = LONG_STEPS if name in LONG_CONFIGS else SHORT_STEPS
  overflow = _overflows(steps, probability, seed=len(name))
  if mode == "session":
    trajectory = _run_session(config, overflow)
  else:
    trajectory = _run_tf2(fls.DynamicLossScale(*config), TFDynamic(*config), overflow,
                          use_function=mode == "function")
  scales = _assert_same_trajectory(trajectory)
  # The runs exercise the algorithm: the scale both rose and fell.
  assert overflow.sum() >= 1
  assert (np.diff(scales) > 0).any() and (np.diff(scales) < 0).any()


def _tf_case(inputs, expected, strategy_fn, eager, initial_loss_scale=1.0, increment_period=2,
             multiplier=2):
  """TF's DynamicLossScaleTest._test_helper: `update` on a gradient that is NaN
  (on replica 0) where `inputs` says False; the scale after each step."""

  def run(evaluate):
    with strategy_fn().scope() as strategy:
      loss_scale = fls.DynamicLossScale(initial_loss_scale, increment_period, multiplier)
      is_finite = tf.Variable(True) if eager else v1.placeholder(tf.bool, [])

      def grad():
        value = tf.where(is_finite, 1.0, float("nan"))
        if not tf.distribute.has_strategy():
          return value
        return strategy.extended.call_for_each_replica(
            lambda: tf.where(tf.equal(tf.distribute.get_replica_context()
                                      .replica_id_in_sync_group, 0), value, 1.0))

      outputs = []
      if not eager:
        update_op, should_apply = loss_scale.update([grad()])
        evaluate(v1.global_variables_initializer())
      for value in inputs:
        if eager:
          is_finite.assign(value)
          _, should_apply = loss_scale.update([grad()])
          assert bool(should_apply.numpy()) is value
        else:
          assert evaluate([update_op, should_apply], {is_finite: value})[1] == value
        outputs.append(float(evaluate(loss_scale(), {})))
      return outputs

  if eager:
    return run(lambda t, feed=None: t.numpy() if not isinstance(t, list) else None)
  with tf.Graph().as_default(), v1.Session() as sess:
    return run(lambda t, feed=None: sess.run(t, feed))


TF_CASES = {  # name: (inputs, expected, keyword arguments), from TF's loss_scale_test.py
    "increase": ([True] * 6, [1, 2, 2, 4, 4, 8], {}),
    "keep_increasing_until_capped": (
        [True] * 6, [FLOAT32_MAX / 4, FLOAT32_MAX / 2, FLOAT32_MAX / 2, FLOAT32_MAX,
                     FLOAT32_MAX, FLOAT32_MAX], {"initial_loss_scale": FLOAT32_MAX / 4}),
    "decrease_every_step": ([False] * 6, [512, 256, 128, 64, 32, 16],
                            {"initial_loss_scale": 1024}),
    "keep_decreasing_until_one": ([False] * 6, [8, 4, 2, 1, 1, 1], {"initial_loss_scale": 16}),
    "nan_clear_good_step": ([True, True, True, False, True], [1, 2, 2, 1, 1], {}),
    "trigger_each_step": ([True] * 3 + [False, True, True], [2, 4, 8, 4, 8, 16],
                          {"increment_period": 1}),
    "alternating_each_step": ([True, False] * 4 + [True], [2, 1, 2, 1, 2, 1, 2, 1, 2],
                              {"increment_period": 1}),
    "alternating_every_other_step": ([True, False] * 3 + [True], [32, 16, 16, 8, 8, 4, 4],
                                     {"initial_loss_scale": 32}),
    "nondefault_multiplier": ([True, True, False, True, True], [4, 12, 4, 4, 12],
                              {"initial_loss_scale": 4, "multiplier": 3}),
    "random_mix": ([False, True, True, True, False, True, False, True, True, True, False],
                   [2, 2, 4, 4, 2, 2, 1, 1, 2, 2, 1], {"initial_loss_scale": 4}),
}
STRATEGIES = {"default": tf.distribute.get_strategy,
              "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0"])}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "graph"])
@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_tensorflows_own_dynamic_cases(case, eager, strategy):
  inputs, expected, kwargs = TF_CASES[case]
  assert _tf_case(inputs, expected, STRATEGIES[strategy], eager, **kwargs) == expected


def test_tensorflows_other_dynamic_cases():
  # test_single_tensor_gradient, test_update_with_none_gradients, test_call_type,
  # test_serialization, test_get
  _, should_apply = fls.DynamicLossScale().update(tf.constant(4.0))
  assert should_apply.numpy()
  fls.DynamicLossScale().update([None])
  assert isinstance(fls.DynamicLossScale()(), tf.Tensor)
  config = fls.DynamicLossScale(initial_loss_scale=1, increment_period=2, multiplier=3).get_config()
  assert config == TFDynamic(1, 2, 3).get_config()
  rebuilt = fls.DynamicLossScale.from_config(config)
  assert type(rebuilt) is fls.DynamicLossScale and rebuilt() == 1
  assert (rebuilt.increment_period, rebuilt.multiplier) == (2, 3)
  default = fls.DynamicLossScale()
  assert ((default.initial_loss_scale, default.increment_period, default.multiplier) ==
          (2.0**15, 2000, 2.0))


def test_is_tfs_class_and_get_dynamic_still_gives_tfs():
  assert isinstance(fls.DynamicLossScale(), TFDynamic)
  # The TF 2.4 contract of get/deserialize is unchanged (docs/INTEGRATIONS.md).
  assert type(fls.get("dynamic")) is TFDynamic
  assert type(fls.deserialize(fls.serialize(fls.DynamicLossScale(8)))) is TFDynamic
  assert type(fls.deserialize(fls.serialize(fls.DynamicLossScale(8)),
                              {"DynamicLossScale": fls.DynamicLossScale})) is fls.DynamicLossScale


@pytest.mark.parametrize("kwargs,error,message", [
    ({"initial_loss_scale": 0.5}, ValueError, "initial_loss_scale must be at least 1, got 0.5"),
    ({"initial_loss_scale": float("nan")}, ValueError, "initial_loss_scale must be finite, got nan"),
    ({"initial_loss_scale": 1e39}, ValueError, "initial_loss_scale must fit in float32, got 1e+39"),
    ({"initial_loss_scale": "8"}, TypeError, "initial_loss_scale must be a Python or numpy int or "
                                             "float, got str: '8'"),
    ({"initial_loss_scale": True}, TypeError, "got bool: True"),
    ({"increment_period": 0}, ValueError, "increment_period must be at least 1, got 0"),
    ({"increment_period": 0.5}, ValueError, "increment_period must be at least 1, got 0.5"),
    ({"increment_period": float("nan")}, ValueError, "increment_period must be at least 1, got nan"),
    ({"increment_period": "2"}, TypeError, "increment_period must be a Python or numpy number, got "
                                           "str: '2'"),
    ({"multiplier": 0.5}, ValueError, "multiplier must be at least 1, got 0.5"),
    ({"multiplier": float("inf")}, ValueError, "multiplier must be finite, got inf"),
])
def test_bad_arguments_name_the_argument_and_value(kwargs, error, message):
  with pytest.raises(error, match=message.replace("(", r"\(").replace("+", r"\+")):
    fls.DynamicLossScale(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"initial_loss_scale": 1., "increment_period": 2., "multiplier": 2.},  # TF's testCheckpoint
    {"increment_period": 2.5}, {"increment_period": np.int32(3)}, {"increment_period": 7.99},
    {"initial_loss_scale": np.float32(8), "multiplier": np.float64(3)},
])
def test_takes_the_numbers_tfs_class_takes_with_its_values(kwargs):
  ours, theirs = fls.DynamicLossScale(**kwargs), TFDynamic(**kwargs)
  assert ours.get_config() == theirs.get_config()
  assert type(ours.increment_period) is int and type(ours.multiplier) is float
  assert ours() == theirs()


def test_repr_is_tfs_eagerly_and_in_a_graph():
  assert repr(fls.DynamicLossScale(1, 2, 3)) == repr(TFDynamic(1, 2, 3)) == (
      "DynamicLossScale(current_loss_scale=1.0, num_good_steps=0, initial_loss_scale=1.0, "
      "increment_period=2, multiplier=3.0)")
  with tf.Graph().as_default():
    assert repr(fls.DynamicLossScale(1, 2.5, 3)) == repr(TFDynamic(1, 2.5, 3)) == (
        "DynamicLossScale(initial_loss_scale=1.0, increment_period=2, multiplier=3.0)")


def test_unscale_gradients_numbers_and_no_second_check():
  loss_scale = fls.DynamicLossScale(1000.5)
  rng = np.random.default_rng(3)
  values = [rng.standard_normal(33).astype(t) for t in (np.float16, np.float32, np.float64)]
  for got, value in zip(loss_scale.unscale_gradients([tf.constant(v) for v in values]), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(value, 1000.5))

  @tf.function
  def step(grads):
    return loss_scale.update(loss_scale.unscale_gradients(grads))[1]

  @tf.function
  def step_rechecking(grads):  # gradients that did not come out of unscale_gradients
    return loss_scale.update([g * 1 for g in loss_scale.unscale_gradients(grads)])[1]

  def gradient_checks(function):
    # Checks of the gradients: TF's IsFinite per gradient or one read-only
    # FixedCheckGrads op (finite.all_finite's check); the algorithm's own
    # check of the new scale sits in a cond branch, a nested function.
    types = [op.type for op in function.get_concrete_function(grads).graph.get_operations()]
    return types.count("IsFinite"), types.count("FixedCheckGrads")

  grads = [tf.constant(v) for v in values]
  # The fused op checks while it unscales, and update() takes its flag: no
  # check of the gradients; gradients it did not write are checked (all 3).
  assert gradient_checks(step) == (0, 0)
  assert gradient_checks(step_rechecking) in ((3, 0), (0, 1))
  assert "FixedUnscaleGradsAndCheck" in graph_op_types(step.get_concrete_function(grads))
  assert "IsFinite" in graph_op_types(step.get_concrete_function(grads))  # the new scale's
  assert step(grads).numpy()


# ---- with the optimizer wrappers ----------------------------------------------------


def _wrapper_run(make_optimizer, make_loss_scale, dtype=tf.float32, steps=40):
  """SGD on a linear model in a Session, overflowing on some steps; returns the
  weights and the scale after each step."""
  rng = np.random.default_rng(8)
  x = rng.standard_normal((8, 3)).astype(np.float32)
  y = rng.standard_normal((8, 1)).astype(np.float32)
  overflow = _overflows(steps, 0.3, seed=4)
  with tf.Graph().as_default():
    w = tf.compat.v1.Variable(rng.standard_normal((3, 1)), dtype=dtype)
    factor = v1.placeholder(dtype, [])
    loss = tf.reduce_mean(tf.square(tf.matmul(tf.cast(x, dtype), w) - tf.cast(y, dtype))) * factor
    loss_scale = make_loss_scale()
    opt = make_optimizer(v1.train.GradientDescentOptimizer(0.05), loss_scale)
    train_op = opt.minimize(loss, var_list=[w])
    weights, scales = [], []
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for bad in overflow:
        sess.run(train_op, {factor: np.inf if bad else 1.0})
        weights.append(sess.run(w))
        scales.append(sess.run(loss_scale()))
  return np.array(weights), np.array(scales, np.float32)


@pytest.mark.parametrize("wrapper", ["ours", "tfs"])
def test_optimizer_wrappers_with_ours_match_tfs_wrapper_with_tfs(wrapper):
  make = {"ours": fls.MixedPrecisionLossScaleOptimizer,
          "tfs": v1.mixed_precision.MixedPrecisionLossScaleOptimizer}[wrapper]
  ours = _wrapper_run(make, lambda: fls.DynamicLossScale(64, 3))
  theirs = _wrapper_run(v1.mixed_precision.MixedPrecisionLossScaleOptimizer,
                        lambda: TFDynamic(64, 3))
  assert np.isfinite(ours[0]).all()
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert (np.diff(ours[1]) < 0).any() and (np.diff(ours[1]) > 0).any()


def test_our_wrapper_takes_tfs_dynamic_scale_and_float16():
  ours = _wrapper_run(fls.MixedPrecisionLossScaleOptimizer, lambda: TFDynamic(64, 3))
  theirs = _wrapper_run(v1.mixed_precision.MixedPrecisionLossScaleOptimizer,
                        lambda: TFDynamic(64, 3))
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  weights16, scales16 = _wrapper_run(fls.MixedPrecisionLossScaleOptimizer,
                                     lambda: fls.DynamicLossScale(64, 3), dtype=tf.float16)
  assert np.isfinite(weights16).all()
  assert_bitwise_equal(scales16, ours[1])  # same overflows, same trajectory
  np.testing.assert_allclose(weights16[-1], ours[0][-1], rtol=2e-2, atol=2e-3)


# ---- checkpoints --------------------------------------------------------------------


def _advance(loss_scale, pattern):
  for finite in pattern:
    loss_scale.update([tf.constant(1.0 if finite else np.inf)])


def test_checkpoints_move_between_tfs_class_and_ours(tmp_path):
  theirs = TFDynamic(256, 3)
  _advance(theirs, [True, True, False, True, True])  # scale 128, good steps 2
  path = tf.train.Checkpoint(loss_scale=theirs).save(str(tmp_path / "theirs"))
  ours = fls.DynamicLossScale(256, 3)
  tf.train.Checkpoint(loss_scale=ours).restore(path).assert_consumed()
  assert _state(ours) == _state(theirs) == (np.float32(128), 2)
  _advance(ours, [True, False, True])  # and back, with a state of ours
  _advance(theirs, [True, False, True])
  our_path = tf.train.Checkpoint(loss_scale=ours).save(str(tmp_path / "ours"))
  assert ({name for name, _ in tf.train.list_variables(path)} ==
          {name for name, _ in tf.train.list_variables(our_path)})
  assert any(name.startswith("loss_scale/current_loss_scale")
             for name, _ in tf.train.list_variables(our_path))
  assert any(name.startswith("loss_scale/good_steps")
             for name, _ in tf.train.list_variables(our_path))
  restored = TFDynamic(256, 3)
  tf.train.Checkpoint(loss_scale=restored).restore(our_path).assert_consumed()
  assert _state(restored) == _state(ours) == _state(theirs)


def test_wrapper_checkpoints_with_a_dynamic_scale_have_tfs_layout(tmp_path):
  def save(make_optimizer, loss_scale, name):
    w = tf.Variable([1.0, 2.0])
    opt = make_optimizer(v1.train.MomentumOptimizer(0.1, 0.9), loss_scale)
    opt.minimize(lambda: tf.reduce_sum(w * w), var_list=[w])
    return tf.train.Checkpoint(w=w, optimizer=opt).save(str(tmp_path / name))

  ours = save(fls.MixedPrecisionLossScaleOptimizer, fls.DynamicLossScale(16), "ours")
  theirs = save(v1.mixed_precision.MixedPrecisionLossScaleOptimizer, TFDynamic(16), "theirs")
  assert ({name for name, _ in tf.train.list_variables(ours)} ==
          {name for name, _ in tf.train.list_variables(theirs)})
