"""tf_keras's loss_scale_optimizer_test.py, restated (second half: checkpoints,
configs, serialization, errors and warnings).

Upstream, version, license and method: see test_tf_keras_lso_restated.py.
testConvertToLegacyOptimizer and testSerializationWithBuiltInOptimizer's "v1"
case (a config renamed to the deleted LossScaleOptimizerV1) hold for this
package's classes as for tf_keras's: the converted wrapper and the loaded one
are the package's (NOTE [legacy conversion] in fixed_loss_scale/tf_keras.py;
the saved config's registered name outranks its class name).
"""

import os
from unittest import mock

import pytest
import tensorflow as tf
import tf_keras
from tensorflow.python.platform import tf_logging
from tf_keras.src import optimizers as tfk_optimizers

from tf_keras_restate import CLASSES
from tf_keras_restate import FULL
from tf_keras_restate import SGD
from tf_keras_restate import create_lso
from tf_keras_restate import eval_if_tensor
from tf_keras_restate import family_cases
from tf_keras_restate import in_full_mode
from tf_keras_restate import maybe_function
from tf_keras_restate import run_fn_with_grad_check
from tf_keras_restate import run_if_graph
from tf_keras_restate import which_param
from upstream_modes import run_in_mode

v1 = tf.compat.v1
CHECKPOINT_CASES = [(f, s, m, t, save, restore) for f, s, m, t in FULL
                    for save in (False, True) for restore in (False, True)
                    # upstream skips "no loss scaling at all" and returns at
                    # once for a MirroredStrategy in graph mode.
                    if (save or restore) and not (s == "mirrored" and m == "graph")]


@pytest.mark.parametrize("family,strategy,mode,use_tf_function,save_with_ls,restore_with_ls",
                         CHECKPOINT_CASES)
@which_param
def test_checkpoint(which, family, strategy, mode, use_tf_function, save_with_ls,
                    restore_with_ls, tmp_path):
  class TrackingSGD(type(SGD[family]())):
    """A custom optimizer that tracks an extra variable."""

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.my_var = tf.Variable(0.0)
      self._track_trackable(self.my_var, "my_var")

  def model(with_ls):
    var = tf.Variable([2.0])
    opt = inner = TrackingSGD(1.0, momentum=1.0)
    if with_ls:
      opt = create_lso(which, opt, initial_scale=1.0, dynamic_growth_steps=2.0)
    return var, opt, inner

  def case(evaluate, strategy_obj):
    replicas = strategy_obj.num_replicas_in_sync
    var, opt, inner = model(save_with_ls)
    run_fn = maybe_function(lambda: opt.minimize(lambda: var / replicas + 1.0, var_list=[var]),
                            use_tf_function)
    opt_op = strategy_obj.experimental_run(run_fn)
    evaluate(v1.global_variables_initializer())
    evaluate(strategy_obj.experimental_local_results(opt_op))
    assert evaluate(var) == 1.0
    if save_with_ls:
      assert evaluate(opt.loss_scale) == 1.0 and evaluate(opt.dynamic_counter) == 1
    if family == "legacy":
      assert evaluate(opt.get_slot(var, "momentum")).item() == -1
    assert evaluate(opt.iterations) == 1
    evaluate(inner.my_var.assign(1.0))
    save_path = tf.train.Checkpoint(optimizer=opt, var=var).save(os.path.join(tmp_path, "ckpt"))

    var, opt, inner = model(restore_with_ls)
    checkpoint = tf.train.Checkpoint(optimizer=opt, var=var)
    status = checkpoint.restore(save_path)
    if save_with_ls:
      status.assert_existing_objects_matched()
    else:
      status.assert_nontrivial_match()
    if tf.executing_eagerly():  # graph-mode variables are not initialized yet
      assert evaluate(var) == 1.0
      if restore_with_ls:
        assert evaluate(opt.loss_scale) == 1.0
        assert evaluate(opt.dynamic_counter) == (1 if save_with_ls else 0)
      assert evaluate(opt.iterations) == 1

    run_fn = maybe_function(lambda: opt.minimize(lambda: var / replicas + 1.0, var_list=[var]),
                            use_tf_function)
    opt_op = strategy_obj.experimental_run(run_fn)
    evaluate(v1.global_variables_initializer())
    status.run_restore_ops()
    evaluate(strategy_obj.experimental_local_results(opt_op))
    assert evaluate(var) == -1
    if family == "legacy":
      slot_var = opt.get_slot(var, "momentum")
      assert evaluate(slot_var).item() == -2
    assert evaluate(opt.iterations) == 2 and evaluate(inner.my_var) == 1

    status = checkpoint.restore(save_path)  # again, now that the slots exist
    if save_with_ls and restore_with_ls:
      status.assert_consumed()
    elif save_with_ls:
      status.assert_existing_objects_matched()
    else:
      status.assert_nontrivial_match()
    status.run_restore_ops()
    assert evaluate(var) == 1
    if family == "legacy":
      assert evaluate(slot_var).item() == -1

  in_full_mode(mode, strategy, case)


TF_2_3_SGD = {"class_name": "SGD", "config": {"learning_rate": 2.0, "momentum": 0.5, "decay": 0.0,
                                              "nesterov": False, "name": "SGD"}}
CONFIG_VERSIONS = [("v2", "graph"), ("v2", "eager"), ("tf2_3", "graph"), ("tf2_3", "eager"),
                   ("v3", "eager")]


def _from_config(which, config_version, settings, tf_2_3_loss_scale):
  if config_version == "v2":
    opt = CLASSES[which]["legacy"](SGD["legacy"](2.0, momentum=0.5), **settings)
    return CLASSES[which]["legacy"].from_config(opt.get_config())
  if config_version == "v3":
    opt = CLASSES[which]["v3"](SGD["new"](2.0, momentum=0.5), **settings)
    return CLASSES[which]["v3"].from_config(opt.get_config())
  return CLASSES[which]["legacy"].from_config(
      {"optimizer": TF_2_3_SGD, "loss_scale": tf_2_3_loss_scale})


@pytest.mark.parametrize("config_version,mode", CONFIG_VERSIONS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
@which_param
def test_get_config(which, dynamic, config_version, mode):
  # Upstream's testGetConfigFixed and testGetConfigDynamic.
  if dynamic:
    settings = {"initial_scale": 2, "dynamic_growth_steps": 3}
    loss_scale = {"class_name": "DynamicLossScale", "config": {
        "initial_loss_scale": 2.0, "increment_period": 3, "multiplier": 2.0}}
  else:
    settings = {"dynamic": False, "initial_scale": 2}
    loss_scale = {"class_name": "FixedLossScale", "config": {"loss_scale_value": 2.0}}

  def case(evaluate):
    opt = _from_config(which, config_version, settings, loss_scale)
    opt.learning_rate  # pylint: disable=pointless-statement  (creates the hyperparameters)
    evaluate(v1.global_variables_initializer())
    assert evaluate(opt.learning_rate) == 2.0
    assert evaluate(opt.inner_optimizer.learning_rate) == 2.0
    assert eval_if_tensor(evaluate, opt.inner_optimizer.momentum) == 0.5
    assert evaluate(opt.loss_scale) == 2.0 and opt.initial_scale == 2.0
    if dynamic:
      assert opt.dynamic_growth_steps == 3.0 and opt.dynamic
    else:
      assert opt.dynamic_growth_steps is None and opt.dynamic_counter is None
      assert not opt.dynamic
    var = tf.Variable([5.0])
    run_op = run_fn_with_grad_check(tf.distribute.get_strategy(), var, opt, 2)()
    evaluate(v1.global_variables_initializer())
    run_if_graph(evaluate, run_op)
    assert evaluate(var) == [3.0]
    if dynamic:
      assert evaluate(opt.dynamic_counter) == 1

  run_in_mode(mode, case)


@which_param
def test_from_config_with_invalid_multiplier(which):
  config = {"optimizer": TF_2_3_SGD, "loss_scale": {"class_name": "DynamicLossScale", "config": {
      "initial_loss_scale": 2.0, "increment_period": 3, "multiplier": 4.0}}}
  with pytest.raises(ValueError, match=(
      r"Cannot deserialize LossScaleOptimizer with a DynamicLossScale whose multiplier is not 2\. "
      r"Got DynamicLossScale: DynamicLossScale\(")):
    CLASSES[which]["legacy"].from_config(config)


@pytest.mark.parametrize("lso_type,mode", [("v1", "graph"), ("v1", "eager"), ("v2", "graph"),
                                           ("v2", "eager"), ("v3", "eager")])
@which_param
def test_serialization_with_built_in_optimizer(which, lso_type, mode):
  def case(evaluate):
    if lso_type == "v3":
      opt = CLASSES[which]["v3"](SGD["new"](2.0, momentum=0.5), initial_scale=2.0,
                                 dynamic_growth_steps=3)
      config = tf_keras.optimizers.serialize(opt)
    else:
      opt = CLASSES[which]["legacy"](SGD["legacy"](2.0, momentum=0.5), initial_scale=2.0,
                                     dynamic_growth_steps=3.0)
      config = tf_keras.optimizers.serialize(opt)
      if lso_type == "v1":
        # The deleted LossScaleOptimizerV1: loads as the (non-V1) class that saved it.
        config["class_name"] = "LossScaleOptimizerV1"
    opt = tf_keras.optimizers.deserialize(config)
    opt.learning_rate  # pylint: disable=pointless-statement
    evaluate(v1.global_variables_initializer())
    assert evaluate(opt.learning_rate) == 2.0
    assert eval_if_tensor(evaluate, opt.inner_optimizer.momentum) == 0.5
    assert evaluate(opt.loss_scale) == 2.0 and opt.dynamic_growth_steps == 3.0 and opt.dynamic
    assert type(opt) is CLASSES[which]["v3" if lso_type == "v3" else "legacy"]
    var = tf.Variable([5.0])
    run_op = run_fn_with_grad_check(tf.distribute.get_strategy(), var, opt, 2)()
    evaluate(v1.global_variables_initializer())
    run_if_graph(evaluate, run_op)
    assert evaluate(var) == [3.0] and evaluate(opt.dynamic_counter) == 1

  run_in_mode(mode, case)


@family_cases
def test_serialization_with_custom_optimizer(which, family):
  class AttributeSGD(type(SGD[family]())):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.my_attribute = 123

  opt = create_lso(which, AttributeSGD(2.0, momentum=0.5), initial_scale=2.0,
                   dynamic_growth_steps=3.0)
  config = tf_keras.optimizers.serialize(opt)
  opt = tf_keras.optimizers.deserialize(config, custom_objects={"AttributeSGD": AttributeSGD})
  opt.learning_rate  # pylint: disable=pointless-statement
  assert float(opt.learning_rate.numpy()) == 2.0
  assert float(eval_if_tensor(lambda t: t.numpy(), opt.inner_optimizer.momentum)) == 0.5
  assert opt.loss_scale.numpy() == 2.0 and opt.dynamic_growth_steps == 3.0
  assert opt.inner_optimizer.my_attribute == 123


@which_param
def test_convert_to_legacy_optimizer(which):
  class HalvingSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, initial_learning_rate):
      self.initial_learning_rate = initial_learning_rate

    def __call__(self, step):
      return self.initial_learning_rate / (tf.cast(step, tf.float32) + 1)

    def get_config(self):
      return {"initial_learning_rate": self.initial_learning_rate}

  for learning_rate in (lambda: 1.0, lambda: HalvingSchedule(1.0)):
    opt = CLASSES[which]["base"](SGD["new"](learning_rate()))
    converted = tfk_optimizers.convert_to_legacy_optimizer(opt)
    assert type(converted) is CLASSES[which]["legacy"]
    reference = CLASSES[which]["base"](SGD["legacy"](learning_rate()))
    reference_config = reference.get_config()
    assert converted.get_config() == reference_config


@family_cases
def test_unsupported_strategy(which, family):
  strategy = tf.distribute.experimental.CentralStorageStrategy()
  message = ("Loss scaling is not supported with the tf.distribute.Strategy: "
             "CentralStorageStrategy. Try using a different Strategy, e.g. a MirroredStrategy")
  with strategy.scope(), pytest.raises(ValueError, match=message):
    create_lso(which, SGD[family]())
  opt = create_lso(which, SGD[family]())
  with strategy.scope():
    var = tf.Variable(1.0)
    with pytest.raises(ValueError, match=message):
      strategy.experimental_run(lambda: opt.minimize(lambda: var * 2.0, [var]))


@family_cases
def test_invalid_args_with_fixed_loss_scale(which, family):
  with pytest.raises(ValueError, match='"initial_scale" must be specified if "dynamic" is False'):
    create_lso(which, SGD[family](), dynamic=False)
  with pytest.raises(ValueError, match='"dynamic_growth_steps" must be None if "dynamic" is '
                                       "False, but got: 2"):
    create_lso(which, SGD[family](), dynamic=False, initial_scale=1, dynamic_growth_steps=2)


@family_cases
def test_dynamic_must_be_bool(which, family):
  with pytest.raises(TypeError, match='"dynamic" argument to LossScaleOptimizer.__init__ must '
                                      "be a bool, but got: 'dynamic'"):
    create_lso(which, SGD[family](), "dynamic")


@family_cases
def test_scaling_warning(which, family):
  var = tf.Variable(1.0)
  for before, warned in (
      ((), "You forgot to call LossScaleOptimizer.get_scaled_loss() and "
           "LossScaleOptimizer.get_unscaled_gradients() before"),
      (("scaled",), "You forgot to call LossScaleOptimizer.get_unscaled_gradients() before"),
      (("unscaled",), "You forgot to call LossScaleOptimizer.get_scaled_loss() before")):
    lso = create_lso(which, SGD[family]())
    with mock.patch.object(tf_logging, "warning") as mock_warn:
      if "scaled" in before:
        lso.get_scaled_loss(tf.constant(1.0))
      if "unscaled" in before:
        lso.get_unscaled_gradients([tf.constant(1.0)])
      lso.apply_gradients([(tf.constant(1.0), var)])
      assert warned in mock_warn.call_args_list[0][0][0]


@family_cases
def test_scaling_no_warning(which, family):
  var = tf.Variable(1.0)
  lso = create_lso(which, SGD[family]())
  with mock.patch.object(tf_logging, "warning") as mock_warn:
    lso.get_scaled_loss(tf.constant(1.0))
    lso.get_unscaled_gradients([tf.constant(1.0)])
    lso.apply_gradients([(tf.constant(1.0), var)])
    mock_warn.assert_not_called()


@family_cases
def test_error_when_nesting(which, family):
  opt = create_lso(which, SGD[family]())
  with pytest.raises(TypeError, match="LossScaleOptimizer cannot wrap another LossScaleOptimizer"):
    create_lso(which, opt)


@family_cases
def test_error_wrapping_same_optimizer_multiple_times(which, family):
  inner = SGD[family]()
  create_lso(which, inner)
  with pytest.raises(ValueError, match='"inner_optimizer" is already wrapped by a '
                                       "LossScaleOptimizer."):
    create_lso(which, inner)


@which_param
def test_error_when_wrapping_non_optimizer(which):
  with pytest.raises(TypeError, match=(
      '"inner_optimizer" must be an instance of `tf.keras.optimizers.Optimizer` or '
      "`tf.keras.optimizers.experimental.Optimizer`, but got: 1")):
    CLASSES[which]["base"](1)


@which_param
def test_error_when_v3_lso_wraps_v2_optimizer(which):
  with pytest.raises(TypeError, match="only the new experimental optimizer"):
    CLASSES[which]["v3"](SGD["legacy"]())


@which_param
def test_error_when_v2_lso_wraps_v3_optimizer(which):
  with pytest.raises(TypeError, match="only the classic optimizers subclassing from "
                                      r"`tf.keras.optimizers.Optimizer` can be passed"):
    CLASSES[which]["legacy"](SGD["new"]())
