"""fixed_loss_scale.tf_keras.LossScaleOptimizer under tf_keras's model.fit.

Against `tf_keras.mixed_precision.LossScaleOptimizer` on the same model and
data (tests/tf_keras_models.py: mixed_float16, batches whose scaled float16
gradients overflow): weights (bit patterns), scale, dynamic counter and
iterations, for both optimizer families, dynamic and fixed, jit_compile off
and on; MirroredStrategy over two logical CPUs in a worker process; SavedModel,
h5 and checkpoint round trips; the traced train step runs the package's ops.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import run_worker
from fixed_loss_scale import tf_keras as ftk
from tf_keras_models import FAMILIES
from tf_keras_models import MixedFloat16
from tf_keras_models import data
from tf_keras_models import fit
from tf_keras_models import make
from tf_keras_models import run_step_function
from tf_keras_models import state

TheirLSO = tf_keras.mixed_precision.LossScaleOptimizer


def assert_same_state(ours, theirs):
  assert len(ours["weights"]) == len(theirs["weights"])
  for w, w_ref in zip(ours["weights"], theirs["weights"]):
    assert_bitwise_equal(w, w_ref)
  assert [ours[k] for k in ("scale", "counter", "iterations")] == [
      theirs[k] for k in ("scale", "counter", "iterations")]


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("setting", ["dynamic", "fixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_is_tf_keras_bit_for_bit_with_overflows(family, setting, jit_compile):
  with MixedFloat16():
    ours_model = make(ftk.LossScaleOptimizer, family, setting, jit_compile=jit_compile)
    scales = fit(ours_model)
    ours = state(ours_model)
    assert isinstance(ours_model.optimizer, ftk.LossScaleOptimizer)  # compile kept it
  with MixedFloat16():
    theirs_model = make(TheirLSO, family, setting, jit_compile=jit_compile)
    assert fit(theirs_model) == scales
    theirs = state(theirs_model)
  assert_same_state(ours, theirs)
  assert ours["iterations"] == 16  # two epochs of eight batches, skipped ones counted
  if setting == "dynamic":
    assert min(scales) < 2.0**13  # the overflowing batches halved it
  else:
    assert not all(np.all(np.isfinite(w)) for w in ours["weights"])  # inf applied, as tf_keras


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_with_skip_non_finite_is_tf_keras_without_the_overflowing_batches(family):
  x, y = data()
  finite_rows = np.abs(y[:, 0]) < 1e4
  with MixedFloat16():
    ours_model = make(ftk.LossScaleOptimizer, family, "skip", momentum=0.0)
    fit(ours_model, x=x, y=y)
    ours = state(ours_model)
  with MixedFloat16():
    # Plain SGD does not read `iterations`: leaving the two batches out is the
    # same update as skipping them.
    theirs_model = make(TheirLSO, family, "fixed", momentum=0.0)
    fit(theirs_model, x=x[finite_rows], y=y[finite_rows])
    theirs = state(theirs_model)
  for w, w_ref in zip(ours["weights"], theirs["weights"]):
    assert_bitwise_equal(w, w_ref)
  assert ours["iterations"] == theirs["iterations"] + 4 == 16


@pytest.mark.parametrize("setting,wanted", [
    ("dynamic", {"FixedUnscaleGradsAndCheck"}),
    ("fixed", {"FixedScaleLoss", "FixedUnscaleGrads"}),
    ("skip", {"FixedScaleLoss", "FixedUnscaleGradsAndCheck"}),
])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_train_step_runs_the_packages_ops(family, setting, wanted):
  with MixedFloat16():
    model = make(ftk.LossScaleOptimizer, family, setting)
    fit(model, epochs=1)
    types = set(graph_op_types(run_step_function(model)))
  assert wanted <= types
  if setting != "fixed":
    assert "FixedUnscaleGrads" not in types
  with MixedFloat16():
    model = make(TheirLSO, family, setting.replace("skip", "fixed"))
    fit(model, epochs=1)
    assert not {"FixedScaleLoss", "FixedUnscaleGrads", "FixedUnscaleGradsAndCheck"} & set(
        graph_op_types(run_step_function(model)))


def _saved_and_resumed(lso_class, family, fmt, tmp_path):
  """One epoch, save in `fmt`, load, one more epoch: the loaded model's state."""
  with MixedFloat16():
    model = make(lso_class, family, "dynamic")
    fit(model, epochs=1)
    path = os.path.join(tmp_path, f"{lso_class.__module__}.{fmt}".replace(".", "_"))
    if fmt == "h5":
      path += ".h5"
    model.save(path, save_format=fmt)
    loaded = tf_keras.models.load_model(path)
    loaded_type = type(loaded.optimizer)
    config = loaded.optimizer.get_config()
    fit(loaded, epochs=1)
    return state(loaded), loaded_type, config


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tf", "h5"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_model_and_h5_round_trips_resume_as_tf_keras_does(family, fmt, tmp_path):
  ours, ours_type, ours_config = _saved_and_resumed(ftk.LossScaleOptimizer, family, fmt, tmp_path)
  theirs, theirs_type, theirs_config = _saved_and_resumed(TheirLSO, family, fmt, tmp_path)
  assert issubclass(ours_type, ftk.LossScaleOptimizer) and ours_type.__name__ == theirs_type.__name__
  for config in (ours_config, theirs_config):
    config["inner_optimizer"]["config"].pop("name", None)
  assert ours_config == theirs_config
  assert_same_state(ours, theirs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_of_model_and_optimizer_round_trip(family, tmp_path):
  with MixedFloat16():
    model = make(ftk.LossScaleOptimizer, family, "dynamic")
    fit(model, epochs=1)
    saved = state(model)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        os.path.join(tmp_path, "ckpt"))
    fit(model, epochs=1)
    after_one_more = state(model)
  with MixedFloat16():
    restored = make(ftk.LossScaleOptimizer, family, "dynamic")
    status = tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(path)
    restored_state = state(restored)
    fit(restored, epochs=1)
    status.assert_consumed()
    resumed = state(restored)
  assert_same_state(restored_state, saved)
  assert_same_state(resumed, after_one_more)


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_is_tf_keras_bit_for_bit(tmp_path):
  run_worker("tf_keras_mirrored.py", tmp_path, timeout=600)
  with open(os.path.join(tmp_path, "results.json")) as f:
    results = json.load(f)
  arrays = np.load(os.path.join(tmp_path, "arrays.npz"))
  assert sorted(results) == sorted(
      f"{family}-{setting}" for family in FAMILIES for setting in ("dynamic", "fixed"))
  for key, runs in results.items():
    assert runs["ours"]["replicas"] == runs["theirs"]["replicas"] == 2
    assert [runs["ours"][k] for k in ("scale", "counter", "iterations")] == [
        runs["theirs"][k] for k in ("scale", "counter", "iterations")], key
    for i in range(runs["ours"]["num_weights"]):
      assert_bitwise_equal(arrays[f"{key}-ours-{i}"], arrays[f"{key}-theirs-{i}"])
    if key.endswith("dynamic"):
      assert runs["ours"]["scale"] < 2.0**13
