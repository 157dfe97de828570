"""The upstream test files themselves, run unchanged where a caller supplies them.

CI runs their restatements (tests/upstream/, every case, never skipped). The
originals are in no wheel and their code is not kept here; where one is saved
locally this module runs it too, unchanged, against this package's classes,
and against the upstream classes as the control (slow):

- $FLS_TF_LOSS_SCALE_OPTIMIZER_TEST (default tests/upstream/
  loss_scale_optimizer_test_tf.py): TensorFlow's
  tensorflow/python/training/experimental/loss_scale_optimizer_test.py
  (verified at commit 5eb09a1b60d1d0d5ab8bfaf1df5da56f7d47af5e); its
  `loss_scale_module` and `loss_scale_optimizer` names are rebound to
  namespaces holding fixed_loss_scale.DynamicLossScale and
  MixedPrecisionLossScaleOptimizer.
- $FLS_TF_KERAS_LSO_TEST (default tests/upstream/
  loss_scale_optimizer_test_tf_keras.py): tf_keras's
  tf_keras/mixed_precision/loss_scale_optimizer_test.py (verified at v2.21.0);
  its `loss_scale_optimizer` module is a namespace where BaseLossScaleOptimizer,
  LossScaleOptimizer and LossScaleOptimizerV3 are fixed_loss_scale.tf_keras's;
  every case runs, convert_to_legacy_optimizer and the LossScaleOptimizerV1
  config included.
- TF's loss_scale_test.py: tests/test_tf_dynamic_upstream.py.

Shims, for module paths the files name that moved since (their behaviour is
untouched): TF's `distribution_strategy_context` is distribute_lib; the
tf_keras source paths (`tf_keras.optimizers`, `tf_keras.optimizers.sgd`,
`tf_keras.testing_infra`, ...) are the wheel's `tf_keras.src.*`.
"""

import importlib
import importlib.util
import os
import sys
import types

import pytest
from tensorflow.python.distribute import distribute_lib
from tensorflow.python.training.experimental import loss_scale as tf_loss_scale
from tensorflow.python.training.experimental import loss_scale_optimizer as tf_lso

import fixed_loss_scale as fls

HERE = os.path.dirname(os.path.abspath(__file__))
TF_LSO_TEST = os.environ.get("FLS_TF_LOSS_SCALE_OPTIMIZER_TEST",
                             os.path.join(HERE, "upstream", "loss_scale_optimizer_test_tf.py"))
TF_KERAS_LSO_TEST = os.environ.get(
    "FLS_TF_KERAS_LSO_TEST", os.path.join(HERE, "upstream", "loss_scale_optimizer_test_tf_keras.py"))
_TF_KERAS_SOURCE_PATHS = [
    "mixed_precision.test_util", "optimizers.adam", "optimizers.optimizer", "optimizers.sgd",
    "optimizers.legacy.adam", "optimizers.legacy.gradient_descent",
    "optimizers.legacy.optimizer_v2", "optimizers.schedules.learning_rate_schedule",
    "testing_infra", "testing_infra.test_combinations", "testing_infra.test_utils"]


def _load(name, path, aliases, rebind):
  """`path` as module `name`, with `aliases` in sys.modules while it imports,
  then its globals in `rebind` replaced."""
  added = {k: v for k, v in aliases.items() if k not in sys.modules}
  sys.modules.update(added)
  try:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    for key in added:
      del sys.modules[key]
  vars(module).update(rebind)
  return module


def _missing(path, what):
  return (f"{what} is not present at {path}: it is in no wheel and its code is not kept in "
          "this repository (CI runs its restatement in tests/upstream/); save it there or "
          "point the environment variable named in this module's docstring at it")


def _tf_modules():
  aliases = {"tensorflow.python.distribute.distribution_strategy_context": distribute_lib}
  ours = {"loss_scale_module": types.SimpleNamespace(
              **{**vars(tf_loss_scale), "DynamicLossScale": fls.DynamicLossScale,
                 "FixedLossScale": fls.FixedLossScale, "get": fls.get}),
          "loss_scale_optimizer": types.SimpleNamespace(
              **{**vars(tf_lso),
                 "MixedPrecisionLossScaleOptimizer": fls.MixedPrecisionLossScaleOptimizer})}
  return (_load("upstream_tf_lso_test_ours", TF_LSO_TEST, aliases, ours),
          _load("upstream_tf_lso_test_theirs", TF_LSO_TEST, aliases, {}))


def _tf_keras_modules():
  from tf_keras.src.mixed_precision import loss_scale_optimizer as tfk_lso  # pylint: disable=import-outside-toplevel
  from fixed_loss_scale import tf_keras as ftk  # pylint: disable=import-outside-toplevel
  aliases = {f"tf_keras.{p}": importlib.import_module(f"tf_keras.src.{p}")
             for p in _TF_KERAS_SOURCE_PATHS}
  ours_module = types.SimpleNamespace(**{
      **vars(tfk_lso), "BaseLossScaleOptimizer": ftk.LossScaleOptimizer,
      "LossScaleOptimizer": ftk.LegacyLossScaleOptimizer,
      "LossScaleOptimizerV3": ftk.LossScaleOptimizerV3})
  # The source tree's `tf_keras.optimizers` (convert_to_legacy_optimizer included).
  rebind = {"optimizers": importlib.import_module("tf_keras.src.optimizers")}
  ours = _load("upstream_tf_keras_lso_test_ours", TF_KERAS_LSO_TEST,
               {**aliases, "tf_keras.mixed_precision.loss_scale_optimizer": ours_module}, rebind)
  theirs = _load("upstream_tf_keras_lso_test_theirs", TF_KERAS_LSO_TEST,
                 {**aliases, "tf_keras.mixed_precision.loss_scale_optimizer": tfk_lso}, rebind)
  return ours, theirs


def _define(prefix, path, what, load, case_class):
  """Test{prefix}OnOurs and (slow) Test{prefix}Control: the upstream file's
  `case_class` loaded by `load` with this package's classes and with the
  upstream ones; where the file is missing, one test that skips saying so."""
  if not os.path.exists(path):
    def test_missing():
      pytest.skip(_missing(path, what))
    globals()[f"test_{prefix.lower()}_file"] = test_missing
    return
  ours, theirs = load()
  globals()[f"Test{prefix}OnOurs"] = type(
      f"Test{prefix}OnOurs", (getattr(ours, case_class),), {})
  globals()[f"Test{prefix}Control"] = pytest.mark.slow(
      type(f"Test{prefix}Control", (getattr(theirs, case_class),), {}))


_define("TFOptimizerFile", TF_LSO_TEST, "TF's loss_scale_optimizer_test.py", _tf_modules,
        "MixedPrecisionLossScaleOptimizerTest")
_define("TFKerasFile", TF_KERAS_LSO_TEST, "tf_keras's loss_scale_optimizer_test.py",
        _tf_keras_modules, "LossScaleOptimizerTest")
