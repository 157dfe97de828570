"""fixed_loss_scale.keras.LossScaleOptimizer against Keras 3's own LossScaleOptimizer.

The reference is Keras's class itself, run side by side on the same model,
data and overflows: with float32 variables (`mixed_float16`) and power-of-two
scales the weights, the scale, its step counter and the iterations must be
the same bits after every run (keras_dynamic.py, NOTE [Keras drop-in
numerics]). Checkpoints, weight files and configs move between the classes.
MirroredStrategy runs happen in a subprocess (this file run as a script, on two
logical CPUs, which must be configured before TensorFlow starts).
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from fixed_loss_scale import clipping
from fixed_loss_scale.keras import LossScaleOptimizer

KerasLossScaleOptimizer = keras.optimizers.LossScaleOptimizer
CLASSES = {"ours": LossScaleOptimizer, "keras": KerasLossScaleOptimizer}
BATCH = 4
# Batches (of 16 per epoch) whose loss is made inf by an inf sample weight.
POISONED_BATCHES = (3, 4, 9, 10, 11)


def _data(rows=64):
  rng = np.random.default_rng(5)
  x = rng.standard_normal((rows, 8)).astype("float32")
  y = (x[:, :1] * 3.0 - x[:, 1:2] + 0.1 * rng.standard_normal((rows, 1))).astype("float32")
  weights = np.ones(rows, np.float32)
  for batch in POISONED_BATCHES:
    if batch * BATCH < rows:
      weights[batch * BATCH + 1] = np.inf
  return x, y, weights


def _model():
  keras.utils.set_random_seed(7)
  return keras.Sequential([
      keras.Input((8,)),
      keras.layers.Dense(32, activation="tanh"),
      keras.layers.Dense(1),
  ])


class _ScaleLog(keras.callbacks.Callback):
  def __init__(self, optimizer):
    super().__init__()
    self.optimizer_ = optimizer
    self.scales = []

  def on_train_batch_end(self, batch, logs=None):
    self.scales.append(float(self.optimizer_.dynamic_scale.numpy()))


def _fit(cls, jit_compile, epochs, **optimizer_args):
  x, y, sample_weight = _data()
  model = _model()
  opt = cls(keras.optimizers.Adam(1e-2), **optimizer_args)
  model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
  log = _ScaleLog(opt)
  model.fit(x, y, sample_weight=sample_weight, batch_size=BATCH, epochs=epochs, shuffle=False,
            verbose=0, callbacks=[log])
  assert model.optimizer is opt
  return model, opt, log.scales


def _state(model, opt):
  return ([w.numpy() for w in model.trainable_weights] +
          [v.numpy() for v in opt.variables])


def _train_function_op_types(model):
  step_fn = inspect.getclosurevars(model.train_function).nonlocals["multi_step_on_iterator"]
  return [t for cf in step_fn._list_all_concrete_functions() for t in graph_op_types(cf)]  # pylint: disable=protected-access


@pytest.mark.slow
def test_fit_320_steps_with_overflows_bit_identical_to_keras(mixed_float16):
  # 20 epochs of 16 steps: injected overflows (inf sample weights) and natural
  # ones (float16 activations under a scale that doubles every 4 steps).
  args = {"initial_scale": 2.0**12, "dynamic_growth_steps": 4}
  model, opt, scales = _fit(LossScaleOptimizer, False, 20, **args)
  ref_model, ref_opt, ref_scales = _fit(KerasLossScaleOptimizer, False, 20, **args)
  assert len(scales) == 320
  assert scales == ref_scales
  assert any(b < a for a, b in zip(scales, scales[1:]))  # the scale went down...
  assert any(b > a for a, b in zip(scales, scales[1:]))  # ...and up
  for a, b in zip(_state(model, opt), _state(ref_model, ref_opt)):
    assert_bitwise_equal(a, b)
  skipped = 320 - int(opt.iterations.numpy())
  assert skipped >= len(POISONED_BATCHES) * 20
  assert model.layers[0].compute_dtype == "float16" and model.layers[0].kernel.dtype == "float32"
  op_types = _train_function_op_types(model)
  if tf.config.list_logical_devices("GPU"):
    assert op_types.count("FixedUnscaleGradsAndCheck") == 1  # the fused op, once
  else:
    # The read-only check once, before the cond; the unscaling after it
    # (scaling.py, NOTE [check before the skip]; tests/test_keras_apply_step.py).
    assert op_types.count("FixedCheckGrads") == 1
    assert "FixedUnscaleGradsAndCheck" not in op_types


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [True, "auto"])
def test_fit_under_xla_and_auto_bit_identical_to_keras(mixed_float16, jit_compile):
  args = {"initial_scale": 2.0**14, "dynamic_growth_steps": 3}
  model, opt, scales = _fit(LossScaleOptimizer, jit_compile, 3, **args)
  ref_model, ref_opt, ref_scales = _fit(KerasLossScaleOptimizer, jit_compile, 3, **args)
  assert model.jit_compile == ref_model.jit_compile
  assert scales == ref_scales
  for a, b in zip(_state(model, opt), _state(ref_model, ref_opt)):
    assert_bitwise_equal(a, b)
  if model.jit_compile:
    assert "FixedUnscaleGradsAndCheck" not in _train_function_op_types(model)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_embedding_indexed_slices_as_keras(mixed_float16, clip):
  # An Embedding's gradient is tf.IndexedSlices (with repeated indices): the
  # drop-in unscales its values and keeps the slices, as Keras's division does.
  rng = np.random.default_rng(8)
  tokens = rng.integers(0, 20, size=(32, 6))
  y = rng.standard_normal((32, 1)).astype("float32")
  runs = []
  for cls in (LossScaleOptimizer, KerasLossScaleOptimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    opt = cls(keras.optimizers.SGD(0.5, momentum=0.5, global_clipnorm=clip),
              initial_scale=2.0**10, dynamic_growth_steps=3)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    model.fit(tokens, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    runs.append(_state(model, opt))
  for a, b in zip(*runs):
    if clip is None:
      assert_bitwise_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _custom_steps(cls, grads_per_step, traced, initial_scale=4.0, **inner_args):
  v = keras.Variable(np.array([1.0, -2.0, 3.0, 0.5], np.float32))
  opt = cls(keras.optimizers.SGD(0.25, momentum=0.5, **inner_args), initial_scale=initial_scale,
            dynamic_growth_steps=2)
  opt.build([v])

  def step(g):
    opt.apply([g], [v])

  step = tf.function(step, jit_compile=traced == "xla") if traced else step
  history = []
  for g in grads_per_step:
    step(tf.constant(g, tf.float32))
    history.append((v.numpy(), float(opt.dynamic_scale.numpy()), int(opt.step_counter.numpy()),
                    int(opt.iterations.numpy())))
  return history


@pytest.mark.parametrize("traced", [False, True, "xla"])
def test_scale_below_one_and_growth_follow_keras(traced):
  # Keras halves without a floor: four overflows from 4 leave 0.25, outside
  # the fused op's range; those steps are unscaled as Keras does.
  finite = [3.0, -1.0, 0.5, 2.0]
  grads = [[np.inf] * 4] * 4 + [finite] * 5 + [[np.nan, 1.0, 1.0, 1.0]] + [finite] * 3
  ours = _custom_steps(LossScaleOptimizer, grads, traced)
  theirs = _custom_steps(KerasLossScaleOptimizer, grads, traced)
  assert [h[1] for h in ours][:4] == [2.0, 1.0, 0.5, 0.25]
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a[0], b[0])
    assert a[1:] == b[1:]


def test_variables_config_and_defaults_are_keras():
  ours = LossScaleOptimizer(keras.optimizers.SGD(0.5, name="sgd"), name="lso")
  theirs = KerasLossScaleOptimizer(keras.optimizers.SGD(0.5, name="sgd"), name="lso")
  v = keras.Variable(np.zeros(3, np.float32))
  ours.build([v])
  theirs.build([v])
  assert [(x.path, x.dtype, tuple(x.shape)) for x in ours.variables] == [
      (x.path, x.dtype, tuple(x.shape)) for x in theirs.variables]
  assert [x.path for x in ours.variables][2:4] == ["lso/step_counter", "lso/dynamic_scale"]
  assert ours.get_config() == theirs.get_config()
  assert ours.initial_scale == 2.0**15 and ours.dynamic_growth_steps == 2000
  restored = LossScaleOptimizer.from_config(ours.get_config())
  assert type(restored) is LossScaleOptimizer and restored.get_config() == ours.get_config()
  serialized = keras.saving.serialize_keras_object(ours)
  assert serialized["registered_name"] == "fixed_loss_scale>LossScaleOptimizer"
  assert type(keras.saving.deserialize_keras_object(serialized)) is LossScaleOptimizer
  with pytest.raises(ValueError, match="on the `inner_optimizer`"):
    LossScaleOptimizer(keras.optimizers.SGD(0.5), clipnorm=1.0)
  assert fls.keras.LossScaleOptimizer is LossScaleOptimizer


def _trained(cls, steps=5):
  """A model and optimizer of class `cls` after a few steps (one overflowing)."""
  x, y, _ = _data(16)
  model = _model()
  opt = cls(keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=2.0**10,
            dynamic_growth_steps=3)
  model.compile(optimizer=opt, loss="mse", jit_compile=False)
  weights = np.ones(16, np.float32)
  weights[5] = np.inf  # the second batch overflows
  model.fit(x, y, sample_weight=weights, batch_size=BATCH, epochs=steps // 4 + 1,
            shuffle=False, verbose=0)
  return model, opt


def _fresh(cls):
  model = _model()
  opt = cls(keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=2.0**10,
            dynamic_growth_steps=3)
  model.compile(optimizer=opt, loss="mse", jit_compile=False)
  opt.build(model.trainable_variables)
  return model, opt


def _assert_same_state(a, b):
  state_a, state_b = _state(*a), _state(*b)
  assert len(state_a) == len(state_b)
  for x, y in zip(state_a, state_b):
    assert_bitwise_equal(x, y)


@pytest.mark.parametrize("direction", [("keras", "ours"), ("ours", "keras")])
@pytest.mark.parametrize("form", ["tf_checkpoint", "weights_h5", "keras_file"])
def test_checkpoints_move_between_the_classes(tmp_path, direction, form):
  source = _trained(CLASSES[direction[0]])
  assert float(source[1].dynamic_scale.numpy()) != 2.0**10  # not the initial values
  target = _fresh(CLASSES[direction[1]])
  if form == "tf_checkpoint":
    path = tf.train.Checkpoint(model=source[0], optimizer=source[1]).write(
        str(tmp_path / "ckpt"))
    status = tf.train.Checkpoint(model=target[0], optimizer=target[1]).read(path)
    status.assert_consumed()
  elif form == "weights_h5":
    path = str(tmp_path / "model.weights.h5")
    source[0].save_weights(path)
    target[0].load_weights(path)
  else:
    path = str(tmp_path / "model.keras")
    source[0].save(path)
    target[0].load_weights(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is CLASSES[direction[0]]
    _assert_same_state((loaded, loaded.optimizer), source)
  _assert_same_state(target, source)


@pytest.mark.parametrize("traced", [True, "xla"])
def test_global_clipnorm_from_the_same_pass_close_to_keras(monkeypatch, traced):
  calls = []
  original = keras.optimizers.SGD._clip_gradients

  def counting(self, grads):
    calls.append(type(self).__name__)
    return original(self, grads)

  monkeypatch.setattr(keras.optimizers.SGD, "_clip_gradients", counting)
  grads = [[30.0, -10.0, 5.0, 60.0], [np.inf, 1.0, 1.0, 1.0], [0.5, 0.25, -0.125, 0.0],
           [300.0, 100.0, -50.0, 20.0]]
  scaled = [list(np.float32(4.0) * np.array(g, np.float32)) for g in grads]
  ours = _custom_steps(LossScaleOptimizer, scaled, traced, global_clipnorm=2.0)
  inner_calls = len(calls)
  theirs = _custom_steps(KerasLossScaleOptimizer, scaled, traced, global_clipnorm=2.0)
  # The wrapper's inner optimizer did not clip (the wrapper did, from the
  # unscaling's sum of squares); Keras's class clips in its inner optimizer.
  assert inner_calls == 0 and len(calls) >= 1
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)  # clipping.py, NOTE [clipping tolerance]
    assert a[1:] == b[1:]


def test_global_clipnorm_leaves_the_inner_optimizer_as_it_was():
  inner = keras.optimizers.Adam(1e-2, global_clipnorm=0.5)
  opt = LossScaleOptimizer(inner, initial_scale=8.0)
  v = keras.Variable(np.ones(3, np.float32))
  tf.function(lambda: opt.apply([tf.constant([80.0, -40.0, 8.0])], [v]))()
  assert inner.get_config()["global_clipnorm"] == 0.5 and inner.global_clipnorm == 0.5
  assert "_clip_gradients" not in vars(inner)
  assert clipping.fused_global_clipnorm(inner) == 0.5
  assert clipping.fused_global_clipnorm(keras.optimizers.Adam(global_clipnorm=0.5,
                                                              gradient_accumulation_steps=2)) is None
  assert clipping.fused_global_clipnorm(keras.optimizers.Adam(clipnorm=0.5)) is None


def test_gradient_accumulation_clips_in_the_inner_optimizer_bit_identical():
  grads = [[4.0, -8.0, 2.0, 6.0], [12.0, 4.0, -4.0, 0.0], [1.0, 1.0, 1.0, 1.0],
           [40.0, 8.0, 8.0, -8.0]]
  ours = _custom_steps(LossScaleOptimizer, grads, True, global_clipnorm=0.5,
                       gradient_accumulation_steps=2)
  theirs = _custom_steps(KerasLossScaleOptimizer, grads, True, global_clipnorm=0.5,
                         gradient_accumulation_steps=2)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a[0], b[0])
    assert a[1:] == b[1:]


# --- MirroredStrategy on two logical CPUs (in a subprocess) --------------------

def _worker(out_dir):
  """Runs in a fresh process: MirroredStrategy over two logical CPUs."""
  tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices("CPU")[0],
      [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  arrays, results = {}, {"logical_cpus": len(tf.config.list_logical_devices("CPU"))}

  keras.mixed_precision.set_global_policy("mixed_float16")
  x, y, _ = _data(64)
  for name, cls in CLASSES.items():
    for clip in (None, 0.5):
      with strategy.scope():
        model = _model()
        opt = cls(keras.optimizers.Adam(1e-2, global_clipnorm=clip), initial_scale=2.0**8,
                  dynamic_growth_steps=4)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
      model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
      key = f"fit_{name}_clip{clip}"
      for i, value in enumerate(_state(model, opt)):
        arrays[f"{key}_{i}"] = value
      results[f"{key}_hooked"] = "_clip_gradients" in vars(opt.inner_optimizer)
  keras.mixed_precision.set_global_policy("float32")

  # A custom loop whose loss overflows on one replica only at step 1.
  w0 = np.array([[0.5], [-1.0], [2.0]], np.float32)
  xs = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
  for name, cls in CLASSES.items():
    with strategy.scope():
      w = tf.Variable(w0)
      opt = cls(keras.optimizers.SGD(0.1), initial_scale=2.0**6, dynamic_growth_steps=100)
      opt.build([w])

    def replica_fn(factor):
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.matmul(tf.gather(xs, replica), w)) * factor[replica]
        scaled = opt.scale_loss(loss)
      opt.apply(tape.gradient(scaled, [w]), [w])

    @tf.function
    def step(factor):
      strategy.run(replica_fn, args=(factor,))

    for i, factor in enumerate([[1.0, 1.0], [1.0, np.inf], [1.0, 1.0]]):
      step(tf.constant(factor, tf.float32))
      arrays[f"loop_{name}_w_{i}"] = np.stack(
          [t.numpy() for t in strategy.experimental_local_results(w)])
      arrays[f"loop_{name}_scale_{i}"] = np.float32(opt.dynamic_scale.numpy())
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("keras_dynamic_mirrored")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "worker", str(out_dir)],
                        capture_output=True, text=True, timeout=600, env=env, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  with open(out_dir / "results.json") as f:
    results = json.load(f)
  return results, dict(np.load(out_dir / "arrays.npz"))


@pytest.mark.slow
def test_mirrored_fit_bit_identical_to_keras(mirrored):
  results, arrays = mirrored
  assert results["logical_cpus"] == 2
  ours = sorted(k for k in arrays if k.startswith("fit_ours_clipNone_"))
  assert ours
  for key in ours:
    assert_bitwise_equal(arrays[key], arrays[key.replace("ours", "keras")])


@pytest.mark.slow
def test_mirrored_fit_with_global_clipnorm_close_to_keras(mirrored):
  results, arrays = mirrored
  assert not results["fit_ours_clip0.5_hooked"]  # the hook is gone after the step
  keys = sorted(k for k in arrays if k.startswith("fit_ours_clip0.5_"))
  for key in keys:
    np.testing.assert_allclose(arrays[key], arrays[key.replace("ours", "keras")], rtol=1e-5,
                               atol=1e-6)
  # Clipping was active: the clipped run differs from the unclipped one.
  assert not all(np.array_equal(arrays[k], arrays[k.replace("clip0.5", "clipNone")])
                 for k in keys)


@pytest.mark.slow
def test_mirrored_overflow_on_one_replica_skips_everywhere(mirrored):
  _, arrays = mirrored
  before, after = arrays["loop_ours_w_0"], arrays["loop_ours_w_1"]
  assert_bitwise_equal(after, before)  # step 1 skipped on both replicas
  assert_bitwise_equal(after[0], after[1])
  assert float(arrays["loop_ours_scale_1"]) == 32.0 and float(arrays["loop_ours_scale_2"]) == 32.0
  assert np.all(np.isfinite(arrays["loop_ours_w_2"]))
  assert not np.array_equal(arrays["loop_ours_w_2"], after)
  # Keras's class takes replica 0's flag (finite): it applies the step, and the
  # all-reduced gradient carries replica 1's inf into the weights.
  assert float(arrays["loop_keras_scale_1"]) == 64.0
  assert not np.all(np.isfinite(arrays["loop_keras_w_1"]))
  # Before the overflow, the two classes agree bit for bit.
  assert_bitwise_equal(arrays["loop_ours_w_0"], arrays["loop_keras_w_0"])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
  _worker(sys.argv[2])
