"""fixed_loss_scale.tf_keras's wrappers through tf_keras's conversion and
(de)serialization, against tf_keras's own classes doing the same.

`convert_to_legacy_optimizer` of our V3 wrapper gives our legacy wrapper, with
the config and variables tf_keras's conversion of its own wrapper gives, and
trains as that does, on the package's ops (NOTE [legacy conversion] in
tf_keras.py); tf_keras's own wrappers convert as without the package. Configs
move both ways: ours load into tf_keras's classes (with this module hidden,
as in plain tf_keras) and tf_keras's into ours where the caller names ours;
a config renamed to the deleted LossScaleOptimizerV1 loads into the class that
saved it.
"""

import copy
import sys
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.src import optimizers as tfk_optimizers
from tf_keras.src.mixed_precision import loss_scale_optimizer as tfk_lso

from conftest import assert_bitwise_equal
from conftest import graph_op_types
from fixed_loss_scale import tf_keras as ftk

OURS = {"legacy": ftk.LegacyLossScaleOptimizer, "v3": ftk.LossScaleOptimizerV3}
THEIRS = {"legacy": tfk_lso.LossScaleOptimizer, "v3": tfk_lso.LossScaleOptimizerV3}
SETTINGS = {"dynamic": {"initial_scale": 2.0**12, "dynamic_growth_steps": 2},
            "fixed": {"dynamic": False, "initial_scale": 1024.0}}
# 70 * 1024 overflows float16: the second and fifth steps overflow.
XS = [np.full(4, v, np.float16) for v in (1.0, 70.0, -3.0, 0.25, 70.0, 2.0)]


LEARNING_RATES = {"constant": lambda: 0.01, "schedule": lambda: (
    tf_keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.5))}


def convert(optimizer):
  """tf_keras's converter, as tf_keras's own modules see it now."""
  return tfk_optimizers.convert_to_legacy_optimizer(optimizer)


def converted(classes, setting, learning_rate):
  return convert(classes["v3"](tf_keras.optimizers.SGD(LEARNING_RATES[learning_rate](),
                                                       momentum=0.5), **SETTINGS[setting]))


def history(opt):
  """Weights, scale and iterations after each traced step (overflows included),
  and the traced step."""
  var = tf.Variable(np.linspace(-1.0, 1.0, 4, dtype=np.float32))

  @tf.function
  def step(x):
    opt.minimize(lambda: tf.cast(tf.reduce_sum(tf.cast(var, tf.float16) * x), tf.float32), [var])

  out = []
  for x in XS:
    step(tf.constant(x))
    out.append((var.numpy().copy(), float(opt.loss_scale.numpy()), int(opt.iterations.numpy())))
  return out, step


@pytest.mark.parametrize("learning_rate", sorted(LEARNING_RATES))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_converted_wrapper_is_ours_as_tf_keras_converts_its_own(setting, learning_rate):
  ours, theirs = (converted(c, setting, learning_rate) for c in (OURS, THEIRS))
  assert type(theirs) is THEIRS["legacy"] and type(ours) is OURS["legacy"]
  assert ours.get_config() == theirs.get_config()
  assert [(v.name, v.numpy()) for v in ours.variables()] == [
      (v.name, v.numpy()) for v in theirs.variables()]
  (ours_steps, step), (theirs_steps, _) = history(ours), history(theirs)
  for (w, *rest), (w_ref, *rest_ref) in zip(ours_steps, theirs_steps):
    assert_bitwise_equal(w, w_ref)
    assert rest == rest_ref
  types = graph_op_types(step.get_concrete_function(tf.constant(XS[0])))
  assert {"dynamic": "FixedUnscaleGradsAndCheck", "fixed": "FixedUnscaleGrads"}[setting] in types


def test_a_converted_wrapper_keeps_skip_non_finite():
  settings = dict(SETTINGS["fixed"], skip_non_finite=True)
  opt = convert(ftk.LossScaleOptimizer(tf_keras.optimizers.SGD(0.5), **settings))
  direct = ftk.LossScaleOptimizer(tf_keras.optimizers.legacy.SGD(0.5), **settings)
  assert type(opt) is OURS["legacy"] and opt.skip_non_finite
  assert opt.get_config() == direct.get_config()
  steps, _ = history(opt)
  assert np.all(np.isfinite(steps[-1][0])) and steps[1][0].tolist() == steps[0][0].tolist()


def test_tf_keras_converts_its_own_classes_and_refusals_as_without_the_package():
  original = tfk_optimizers.convert_to_legacy_optimizer.__wrapped__
  for make in (lambda: tf_keras.optimizers.Adam(0.5),
               lambda: THEIRS["v3"](tf_keras.optimizers.Adam(0.5), initial_scale=8)):
    with_wrapper, without = convert(make()), original(make())
    assert type(with_wrapper) is type(without)
    assert with_wrapper.get_config() == without.get_config()
  for refused in (tf_keras.optimizers.legacy.SGD(),
                  OURS["legacy"](tf_keras.optimizers.legacy.SGD())):
    with pytest.raises(ValueError) as ours_error:
      convert(refused)
    with pytest.raises(ValueError) as tf_keras_error:
      original(refused)
    assert str(ours_error.value) == str(tf_keras_error.value)


def test_every_name_tf_keras_exports_the_converter_by_holds_the_wrapper_and_restore_undoes_it():
  from tf_keras import __internal__ as internal  # pylint: disable=import-outside-toplevel
  modules = [tfk_optimizers, internal.optimizers]
  wrapper = tfk_optimizers.convert_to_legacy_optimizer
  original = wrapper.__wrapped__
  assert all(m.convert_to_legacy_optimizer is wrapper for m in modules)
  assert wrapper.__name__ == original.__name__ and wrapper.__doc__ == original.__doc__
  ftk._restore_tf_keras_converter()  # pylint: disable=protected-access
  try:
    assert all(m.convert_to_legacy_optimizer is original for m in modules)
    opt = original(OURS["v3"](tf_keras.optimizers.SGD()))
    assert type(opt) is THEIRS["legacy"]  # what the wrapper is for
  finally:
    ftk._install_tf_keras_converter()  # pylint: disable=protected-access
  wrapper = tfk_optimizers.convert_to_legacy_optimizer
  assert all(m.convert_to_legacy_optimizer is wrapper for m in modules)
  assert wrapper.__wrapped__ is original  # installed again: not a wrapper of a wrapper
  assert type(convert(OURS["v3"](tf_keras.optimizers.SGD()))) is OURS["legacy"]


def test_compile_converts_to_ours_where_tf2_behaviour_is_off():
  # tf_keras's optimizers.get (what compile calls) converts when TF2 is off.
  with mock.patch.object(tfk_optimizers.tf.__internal__.tf2, "enabled", lambda: False):
    for classes in (OURS, THEIRS):
      opt = tf_keras.optimizers.get(classes["v3"](tf_keras.optimizers.SGD()))
      assert type(opt) is classes["legacy"]


@pytest.mark.parametrize("lso_type", ["v1", "v2", "v3"])
def test_a_serialized_wrapper_loads_as_the_class_that_saved_it(lso_type):
  # tf_keras's testSerializationWithBuiltInOptimizer: "v1" renames the config
  # to the deleted LossScaleOptimizerV1.
  family = "v3" if lso_type == "v3" else "legacy"
  inner = {"v3": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}[family]
  for classes in (OURS, THEIRS):
    opt = classes[family](inner(2.0, momentum=0.5), initial_scale=2.0, dynamic_growth_steps=3)
    config = tf_keras.optimizers.serialize(opt)
    if lso_type == "v1":
      config["class_name"] = "LossScaleOptimizerV1"
    loaded = tf_keras.optimizers.deserialize(config)
    assert type(loaded) is classes[family]
    assert loaded.get_config() == opt.get_config()


@pytest.mark.parametrize("family", sorted(OURS))
def test_our_configs_load_into_tf_keras_classes_without_this_module(family):
  inner = {"v3": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}[family]
  for settings in SETTINGS.values():
    ours = OURS[family](inner(2.0), **settings)
    reference = THEIRS[family](inner(2.0), **settings).get_config()
    assert THEIRS[family].from_config(ours.get_config()).get_config() == reference
    config = tf_keras.optimizers.serialize(ours)
    registered = {k: v for k, v in tf_keras.saving.get_custom_objects().items()
                  if k.startswith("fixed_loss_scale>")}
    with mock.patch.dict(sys.modules, {"fixed_loss_scale.tf_keras": None}):
      with mock.patch.dict(tf_keras.saving.get_custom_objects()):
        for key in registered:
          del tf_keras.saving.get_custom_objects()[key]
        loaded = tf_keras.optimizers.deserialize(copy.deepcopy(config))
    assert type(loaded) is THEIRS[family] and loaded.get_config() == reference


@pytest.mark.parametrize("family", sorted(OURS))
def test_tf_keras_configs_load_into_ours_where_asked(family):
  inner = {"v3": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}[family]
  theirs = THEIRS[family](inner(2.0), initial_scale=8, dynamic_growth_steps=3)
  name = type(theirs).__name__
  config = tf_keras.optimizers.serialize(theirs)
  assert type(tf_keras.optimizers.deserialize(copy.deepcopy(config))) is THEIRS[family]
  loaded = tf_keras.optimizers.deserialize(copy.deepcopy(config),
                                           custom_objects={name: OURS[family]})
  assert type(loaded) is OURS[family] and loaded.get_config() == theirs.get_config()
  loaded = OURS[family].from_config(theirs.get_config())
  assert type(loaded) is OURS[family] and loaded.get_config() == theirs.get_config()
