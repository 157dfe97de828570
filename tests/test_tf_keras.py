"""fixed_loss_scale.tf_keras.LossScaleOptimizer against tf_keras's own class.

The reference is `tf_keras.mixed_precision.LossScaleOptimizer` run on the same
data: weights (bit patterns), scales, dynamic counters and `iterations` after
every step, for both optimizer families, dynamic with overflows and fixed;
the fixed scale that skips is checked against tf_keras's fixed class whose
overflowing steps the test itself leaves out. tf_keras is imported directly:
`tf.keras` stays Keras 3 (checked at the end). Training through `model.fit`,
saving and MirroredStrategy: tests/test_tf_keras_fit.py.
"""

import glob
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from fixed_loss_scale import tf_keras as ftk

TheirLSO = tf_keras.mixed_precision.LossScaleOptimizer
FAMILIES = {"new": tf_keras.optimizers.Adam, "legacy": tf_keras.optimizers.legacy.Adam}
SETTINGS = {
    "dynamic": {"initial_scale": 2.0**12, "dynamic_growth_steps": 2},
    "fixed": {"dynamic": False, "initial_scale": 1024.0},
}
# float16 inputs: 70 times a scale of at least 1024 overflows float16, so
# steps with a 70 overflow (and halve a dynamic scale) while the others do not.
XS = [np.full(8, v, np.float16) * np.linspace(0.5, 1.0, 8, dtype=np.float16)
      for v in (1.0, 70.0, -3.0, 0.25, 70.0, 70.0, 2.0, -1.0, 0.5, 1.5)]


def loss_fn(var, x):
  """A float16 forward pass whose scaled gradient overflows for large x."""
  return tf.cast(tf.reduce_sum(tf.cast(var, tf.float16) * x), tf.float32)


def train(lso_class, family, settings, style, skip_overflows=False, function=True):
  """(per step (weights, scale, counter, iterations), the optimizer, the
  traced step or None, the variable); `skip_overflows`
  leaves out the apply of any step whose unscaled gradients are not finite
  (counting it in `iterations`), the reference of a fixed scale that skips."""
  var = tf.Variable(np.linspace(-1.0, 1.0, 8, dtype=np.float32))
  opt = lso_class(FAMILIES[family](learning_rate=0.01), **settings)

  def step(x):
    if style == "minimize":
      opt.minimize(lambda: loss_fn(var, x), [var])
      return
    with tf.GradientTape() as tape:
      scaled = opt.get_scaled_loss(loss_fn(var, x))
    grads = opt.get_unscaled_gradients(tape.gradient(scaled, [var]))
    if skip_overflows and not np.all(np.isfinite(grads[0].numpy())):
      opt.iterations.assign_add(1)
      return
    opt.apply_gradients(zip(grads, [var]))

  run = tf.function(step) if function and not skip_overflows else step
  history = []
  for x in XS:
    run(tf.constant(x))
    counter = opt.dynamic_counter
    history.append((var.numpy().copy(), float(opt.loss_scale.numpy()),
                    None if counter is None else int(counter.numpy()),
                    int(opt.iterations.numpy())))
  return history, opt, (run if function and not skip_overflows else None), var


def assert_same_history(ours, theirs):
  assert len(ours) == len(theirs)
  for (w, scale, counter, iterations), (w_ref, *rest) in zip(ours, theirs):
    assert_bitwise_equal(w, w_ref)
    assert (scale, counter, iterations) == tuple(rest)


@pytest.mark.parametrize("style", ["get_scaled_loss", "minimize"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_steps_are_tf_keras_bit_for_bit_with_overflows(family, setting, style):
  ours, opt, _, _ = train(ftk.LossScaleOptimizer, family, SETTINGS[setting], style)
  theirs, _, _, _ = train(TheirLSO, family, SETTINGS[setting], style)
  assert_same_history(ours, theirs)
  scales = [h[1] for h in ours]
  if setting == "dynamic":  # the overflows halved it, finite steps doubled it
    assert {0.5, 2.0} <= {b / a for a, b in zip(scales, scales[1:])}
  else:  # tf_keras applies the overflow: inf/NaN weights, the same bits
    assert not np.all(np.isfinite(ours[-1][0]))
  assert type(opt).__name__ == {"new": "LossScaleOptimizerV3", "legacy": "LossScaleOptimizer"}[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eagerly_too(family):
  settings = SETTINGS["dynamic"]
  ours, _, _, _ = train(ftk.LossScaleOptimizer, family, settings, "minimize", function=False)
  theirs, _, _, _ = train(TheirLSO, family, settings, "minimize", function=False)
  assert_same_history(ours, theirs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fixed_scale_skip_non_finite_skips_the_overflowing_steps(family):
  settings = dict(SETTINGS["fixed"], skip_non_finite=True)
  ours, opt, _, _ = train(ftk.LossScaleOptimizer, family, settings, "get_scaled_loss")
  theirs, _, _, _ = train(TheirLSO, family, SETTINGS["fixed"], "get_scaled_loss",
                       skip_overflows=True)
  assert_same_history(ours, theirs)
  assert np.all(np.isfinite(ours[-1][0])) and opt.skip_non_finite and not opt.dynamic
  assert opt.get_config()["skip_non_finite"] is True
  assert "skip_non_finite" not in ftk.LossScaleOptimizer(
      FAMILIES[family](), **SETTINGS["fixed"]).get_config()


@pytest.mark.parametrize("setting,ops_wanted,ops_absent", [
    ("dynamic", {"FixedUnscaleGradsAndCheck"}, {"FixedUnscaleGrads"}),
    ("fixed", {"FixedScaleLoss", "FixedUnscaleGrads"}, {"FixedUnscaleGradsAndCheck"}),
    ("skip", {"FixedScaleLoss", "FixedUnscaleGradsAndCheck"}, {"FixedUnscaleGrads", "IsFinite"}),
])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_graph_runs_the_packages_ops(family, setting, ops_wanted, ops_absent):
  settings = dict(SETTINGS["fixed"], skip_non_finite=True) if setting == "skip" else SETTINGS[setting]
  _, _, run, _ = train(ftk.LossScaleOptimizer, family, settings, "minimize")
  types = graph_op_types(run.get_concrete_function(tf.constant(XS[0])))
  assert ops_wanted <= set(types) and not ops_absent & set(types)
  if setting == "dynamic":
    # The flag is the op's, through the all-reduce's IdentityN: the only
    # IsFinite left is the algorithm's own check of the doubled scale.
    assert types.count("IsFinite") == 1


def test_a_real_aggregation_is_checked_again():
  # tf_keras's testCustomAggregater: an aggregator that makes a gradient NaN.
  def nan_last(grads_and_vars):
    grads_and_vars = list(grads_and_vars)
    grad, var = grads_and_vars[-1]
    grads_and_vars[-1] = (grad * float("nan"), var)
    return grads_and_vars

  var = tf.Variable([1.0, 2.0])
  opt = ftk.LossScaleOptimizer(tf_keras.optimizers.legacy.SGD(1.0, gradient_aggregator=nan_last),
                               initial_scale=2, dynamic_growth_steps=2)

  @tf.function
  def step():
    opt.minimize(lambda: var * 2, [var])

  step()
  np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])
  assert opt.loss_scale.numpy() == 1.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_arguments_properties_and_config_as_tf_keras(family):
  for settings in ({}, {"initial_scale": 8, "dynamic_growth_steps": 3},
                   {"dynamic": False, "initial_scale": 8}):
    ours = ftk.LossScaleOptimizer(FAMILIES[family](0.5), **settings)
    theirs = TheirLSO(FAMILIES[family](0.5), **settings)
    assert isinstance(ours, TheirLSO) and isinstance(ours, ftk.LossScaleOptimizer)
    for name in ("dynamic", "initial_scale", "dynamic_growth_steps"):
      assert getattr(ours, name) == getattr(theirs, name)
    assert ours.loss_scale.numpy() == theirs.loss_scale.numpy()
    assert (ours.dynamic_counter is None) == (theirs.dynamic_counter is None)
    ours_config, theirs_config = ours.get_config(), theirs.get_config()
    ours_config["inner_optimizer"]["config"].pop("name")
    theirs_config["inner_optimizer"]["config"].pop("name")
    assert ours_config == theirs_config
    rebuilt = type(ours).from_config(ours.get_config())
    assert type(rebuilt) is type(ours) and rebuilt.get_config() == ours.get_config()


@pytest.mark.parametrize("loss_scale,expected", [
    ({"class_name": "FixedLossScale", "config": {"loss_scale_value": 2.0}}, (False, 2.0, False)),
    (fls.serialize(fls.FixedLossScale(4, skip_non_finite=True)), (False, 4.0, True)),
    ({"class_name": "DynamicLossScale",
      "config": {"initial_loss_scale": 2.0, "increment_period": 3, "multiplier": 2.0}},
     (True, 2.0, False)),
])
def test_loads_tf_2_3_configs(loss_scale, expected):
  config = {"optimizer": {"class_name": "SGD", "config": {
      "learning_rate": 2.0, "momentum": 0.5, "decay": 0.0, "nesterov": False, "name": "SGD"}},
            "loss_scale": loss_scale}
  opt = ftk.LegacyLossScaleOptimizer.from_config(config)
  assert (opt.dynamic, opt.initial_scale, opt.skip_non_finite) == expected
  assert float(opt.learning_rate.numpy()) == 2.0


def test_tf_keras_converter_accepts_our_fixed_loss_scale():
  # Once refused with "Passing a LossScale that is not a FixedLossScale or a
  # DynamicLossScale is not supported".
  from tf_keras.src.mixed_precision import loss_scale_optimizer as tfk_lso  # pylint: disable=import-outside-toplevel
  opt = tfk_lso._create_loss_scale_optimizer_from_v1_loss_scale(  # pylint: disable=protected-access
      tf_keras.optimizers.legacy.SGD(), fls.FixedLossScale(1024))
  assert not opt.dynamic and opt.initial_scale == 1024.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoints_move_between_the_two_classes(family, tmp_path):
  # Each class's checkpoint restored into the other class, then one more
  # step: the same state (scale, counter, iterations, slots) gives the same bits.
  settings = SETTINGS["dynamic"]
  after = []
  for saver, loader in ((ftk.LossScaleOptimizer, TheirLSO), (TheirLSO, ftk.LossScaleOptimizer)):
    _, trained, _, var = train(saver, family, settings, "minimize")
    path = tf.train.Checkpoint(optimizer=trained, var=var).save(os.path.join(tmp_path, "c"))
    var = tf.Variable(np.zeros(8, np.float32))
    opt = loader(FAMILIES[family](learning_rate=0.01), **settings)
    status = tf.train.Checkpoint(optimizer=opt, var=var).restore(path)
    status.assert_existing_objects_matched()
    for name in ("loss_scale", "dynamic_counter", "iterations"):
      assert getattr(opt, name).numpy() == getattr(trained, name).numpy(), name
    opt.minimize(lambda: loss_fn(var, tf.constant(XS[0])), [var])  # slots restored here
    status.assert_consumed()
    after.append((var.numpy(), opt.loss_scale.numpy(), opt.iterations.numpy()))
  assert_bitwise_equal(after[0][0], after[1][0])
  assert after[0][1:] == after[1][1:]


@pytest.mark.parametrize("kwargs,error,message", [
    ({"dynamic": False, "initial_scale": 0.5}, ValueError, "initial_scale must be at least 1"),
    ({"dynamic": False, "initial_scale": 2.0**127}, ValueError, "initial_scale must be at most"),
    ({"dynamic": False, "initial_scale": 8, "skip_non_finite": 1}, TypeError,
     "skip_non_finite must be True or False, got int: 1"),
    ({"skip_non_finite": True}, ValueError, '"skip_non_finite" is for a fixed scale'),
    ({"dynamic": "dynamic"}, TypeError, '"dynamic" argument to LossScaleOptimizer.__init__ must'),
    ({"dynamic": False}, ValueError, '"initial_scale" must be specified if "dynamic" is False'),
])
def test_mistakes_are_named(kwargs, error, message):
  inner = tf_keras.optimizers.SGD()
  with pytest.raises(error, match=message.replace("(", r"\(")):
    ftk.LossScaleOptimizer(inner, **kwargs)
  if error is ValueError and "initial_scale must" in message:
    ftk.LossScaleOptimizer(inner, dynamic=False, initial_scale=8)  # still not wrapped


def test_a_non_optimizer_is_refused_in_tf_keras_words():
  with pytest.raises(TypeError, match='"inner_optimizer" must be an instance of '):
    ftk.LossScaleOptimizer(1)


def test_without_tf_keras_the_import_error_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "tf_keras", None)
  monkeypatch.delitem(sys.modules, "fixed_loss_scale.tf_keras")
  with pytest.raises(ImportError, match=r"pip install 'tf-fixed-loss-scale\[tf-keras\]'"):
    importlib.import_module("fixed_loss_scale.tf_keras")
  monkeypatch.setitem(sys.modules, "fixed_loss_scale.tf_keras", ftk)


@pytest.mark.parametrize("tensorflow,extra", [
    ("tensorflow>=2.21.0,<2.22", "tf-keras<2.22,>=2.21"),  # a wheel: the minor version built for
    ("", "tf-keras"),  # an sdist: whichever TensorFlow it is built for
])
def test_the_tf_keras_extra_is_pinned_like_tensorflow(tensorflow, extra, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, FLS_TENSORFLOW_REQUIREMENT=tensorflow)
  subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                 cwd=root, env=env, check=True, capture_output=True, timeout=120)
  (requires,) = glob.glob(str(tmp_path / "*.egg-info" / "requires.txt"))
  with open(requires) as f:
    sections = f.read().split("[tf-keras]")
  assert sections[1].split() == [extra]
  assert (tensorflow.replace(">=2.21.0,<2.22", "<2.22,>=2.21.0") or "tensorflow") in sections[0]


def test_tf_keras_leaves_keras_3_the_default():
  import keras  # pylint: disable=import-outside-toplevel
  assert tf.keras.optimizers.SGD is keras.optimizers.SGD
  assert keras.__version__.startswith("3.")
  assert "TF_USE_LEGACY_KERAS" not in os.environ
