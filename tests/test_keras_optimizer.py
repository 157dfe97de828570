"""fixed_loss_scale.keras.FixedLossScaleOptimizer against Keras 3's own fixed-scale path.

The reference is the base optimizer's `loss_scale_factor` (compiled with
`auto_scale_loss=False`, else Keras replaces it by dynamic scaling): it scales
the loss by `loss * s` and divides each float32 gradient by `s`, so for a
power-of-two scale the weights after `fit` must be bit-identical. Clipping is
checked against training without any loss scaling, which only gives the same
bits if the gradients are unscaled before the inner optimizer clips them.
"""

import inspect
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale
from conftest import train_custom_loop
from fixed_loss_scale.keras import FixedLossScaleOptimizer

CUSTOM_OPS = {"FixedScaleLoss", "FixedUnscaleGrads"}


def _data():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((64, 8)).astype("float32")
  y = (x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * rng.standard_normal((64, 1))).astype("float32")
  return x, y


def _model(dtype=None):
  keras.utils.set_random_seed(11)
  return keras.Sequential([
      keras.Input((8,)),
      keras.layers.Dense(16, activation="tanh", dtype=dtype),
      keras.layers.Dense(1, dtype=dtype),
  ])


def _train_function_op_types(model):
  """Op types of the graphs Keras traced for fit (nested function bodies included)."""
  step_fn = inspect.getclosurevars(model.train_function).nonlocals["multi_step_on_iterator"]
  return [t for cf in step_fn._list_all_concrete_functions() for t in graph_op_types(cf)]  # pylint: disable=protected-access


def _fit(optimizer, jit_compile=False, auto_scale_loss=True, epochs=2, model=None):
  x, y = _data()
  model = model or _model()
  model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile,
                auto_scale_loss=auto_scale_loss)
  history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
  return model, [w.numpy() for w in model.trainable_weights], history.history["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("scale", [128, 1024])
def test_fit_mixed_float16_bit_identical_to_loss_scale_factor(mixed_float16, jit_compile, scale):
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), scale)
  model, ours, losses = _fit(opt, jit_compile)
  _, theirs, their_losses = _fit(keras.optimizers.Adam(1e-2, loss_scale_factor=scale),
                                 jit_compile, auto_scale_loss=False)
  assert model.optimizer is opt  # compile did not wrap it in a dynamic LossScaleOptimizer
  assert model.layers[0].kernel.dtype == "float32" and model.layers[0].compute_dtype == "float16"
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert losses == their_losses and losses[-1] < losses[0]
  assert opt.iterations.numpy() == 8
  op_types = _train_function_op_types(model)
  if jit_compile:
    # Custom ops have no XLA kernel: the arithmetic path was traced instead.
    assert not CUSTOM_OPS & set(op_types)
  else:
    # The gradients are unscaled inside the fused Adam update (fused_update.py).
    assert op_types.count("FixedApplyAdam") == 1 and "FixedUnscaleGrads" not in op_types
    assert op_types.count("FixedScaleLoss") == 2  # the scaled loss and its gradient


def test_compile_replaces_loss_scale_factor_but_keeps_our_wrapper(mixed_float16):
  # Keras's own behaviour under mixed_float16 (the reason the wrapper subclasses
  # LossScaleOptimizer): a plain optimizer's fixed loss_scale_factor is cleared
  # and dynamic scaling is wrapped around it...
  plain = keras.optimizers.SGD(0.1, loss_scale_factor=128.0)
  model = _model()
  model.compile(optimizer=plain, loss="mse")
  assert type(model.optimizer) is keras.optimizers.LossScaleOptimizer
  assert plain.loss_scale_factor is None
  # ...while ours is kept, with its scale.
  ours = FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 128)
  model = _model()
  model.compile(optimizer=ours, loss="mse")
  assert model.optimizer is ours and ours.loss_scale == 128.0


def _fake_gpu_list(original):
  def list_physical_devices(device_type=None):
    devices = original(device_type)
    if device_type in (None, "GPU"):
      devices = devices + [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    return devices
  return list_physical_devices


@pytest.mark.slow
@pytest.mark.parametrize("machine", ["this_machine", "with_gpu"])
def test_jit_compile_auto(mixed_float16, monkeypatch, machine):
  # Keras resolves "auto" from the devices, the distribution strategy, op
  # determinism and each layer's `supports_jit`; it never looks at the
  # optimizer, so the custom ops do not switch XLA off. On a machine with a
  # GPU it picks XLA -- simulated here by listing a GPU during compile.
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), 4096)
  model = _model()
  with monkeypatch.context() as patch:
    if machine == "with_gpu":
      patch.setattr(tf.config, "list_physical_devices",
                    _fake_gpu_list(tf.config.list_physical_devices))
    model.compile(optimizer=opt, loss="mse", jit_compile="auto")
    expected_xla = bool(tf.config.list_physical_devices("GPU"))
  assert model.jit_compile is expected_xla
  model, ours, _ = _fit(opt, model.jit_compile, model=model)
  _, theirs, _ = _fit(keras.optimizers.Adam(1e-2, loss_scale_factor=4096.0),
                      model.jit_compile, auto_scale_loss=False)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  has_custom_ops = bool(CUSTOM_OPS & set(_train_function_op_types(model)))
  assert has_custom_ops is not expected_xla


@pytest.mark.parametrize("clip", [{"clipnorm": 0.05}, {"global_clipnorm": 0.05},
                                  {"clipvalue": 0.01}])
def test_clipping_sees_unscaled_gradients(clip):
  # float32 model, power-of-two scale: the scaled gradients are exactly s * g,
  # so the result equals training without loss scaling only if the inner
  # optimizer clips the unscaled gradients.
  _, ours, _ = _fit(FixedLossScaleOptimizer(keras.optimizers.SGD(0.1, **clip), 2.0**12))
  _, unscaled, _ = _fit(keras.optimizers.SGD(0.1, **clip))
  _, unclipped, _ = _fit(FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 2.0**12))
  for a, b in zip(ours, unscaled):
    if "global_clipnorm" in clip:
      # The wrapper clips with the norm from the unscaling pass, summed in
      # another order than Keras's (clipping.py, NOTE [clipping tolerance]).
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    else:
      assert_bitwise_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(ours, unclipped))  # clipping was active


def test_float16_variables_at_scale_65536_where_loss_scale_factor_gives_zeros():
  # Keras's loss_scale_factor divides a float16 gradient by float16(65536) = inf.
  x, y = _data()
  x, y = x / 64, y / 64  # small enough that the scaled float16 gradients stay finite
  scale = 65536

  def one_step(optimizer):
    model = _model(dtype="float16")
    model.build((None, 8))
    before = [w.numpy() for w in model.trainable_weights]
    with tf.GradientTape() as tape:
      loss = keras.losses.mean_squared_error(y, model(x))
      loss = tf.reduce_mean(tf.cast(loss, tf.float32))
      scaled = optimizer.scale_loss(loss)
    scaled_grads = tape.gradient(scaled, model.trainable_weights)
    optimizer.apply(scaled_grads, model.trainable_weights)
    return before, [g.numpy() for g in scaled_grads], [w.numpy() for w in model.trainable_weights]

  before, _, after = one_step(keras.optimizers.SGD(1.0, loss_scale_factor=float(scale)))
  assert all(np.array_equal(a, b) for a, b in zip(before, after))  # Keras: no update at all

  before, scaled_grads, after = one_step(
      FixedLossScaleOptimizer(keras.optimizers.SGD(1.0), scale))
  assert all(g.dtype == np.float16 and np.all(np.isfinite(g)) for g in scaled_grads)
  for w0, g, w1 in zip(before, scaled_grads, after):
    expected = tf.constant(w0) - tf.constant(reference_unscale(g, scale))  # SGD, lr 1
    assert_bitwise_equal(w1, expected.numpy())
    assert not np.array_equal(w0, w1)


@pytest.mark.parametrize("clip_in_loop", [False, True])
def test_tf_keras2_custom_loop_with_unscale_in_apply_false(mixed_float16, clip_in_loop):
  # A tf.keras 2 loop: get_scaled_loss, get_unscaled_gradients, (optionally
  # clip by hand), apply_gradients -- which, built with unscale_in_apply=False,
  # must not unscale a second time.
  x, y = _data()

  def train(optimizer, ours):
    model = _model()
    model.build((None, 8))

    def apply(grads, weights):
      if ours:
        grads = optimizer.get_unscaled_gradients(grads)
      else:  # the reference unscales exactly as loss_scale_factor does, in float32
        grads = [g / optimizer.loss_scale_factor for g in grads]
      if clip_in_loop:
        grads, _ = tf.clip_by_global_norm(grads, 0.05)
      inner = optimizer if ours else optimizer.inner
      inner.apply_gradients(zip(grads, weights))

    scale_loss = optimizer.get_scaled_loss if ours else optimizer.scale_loss
    return train_custom_loop(model, x, y, 16, scale_loss, apply)

  class Reference:
    loss_scale_factor = 2048.0
    inner = keras.optimizers.SGD(0.1)
    scale_loss = staticmethod(lambda loss: loss * 2048.0)

  ours, op_types = train(
      FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 2048, unscale_in_apply=False), True)
  theirs, _ = train(Reference, False)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert op_types.count("FixedUnscaleGrads") == 1 and "FixedScaleLoss" in op_types


def test_custom_loop_scale_loss_and_apply(mixed_float16):
  x, y = _data()

  def train(optimizer):
    model = _model()
    model.build((None, 8))
    return train_custom_loop(model, x, y, 16, optimizer.scale_loss, optimizer.apply)

  ours, op_types = train(FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2), 2048))
  theirs, their_ops = train(keras.optimizers.Adam(1e-2, loss_scale_factor=2048.0))
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  # The gradients are unscaled inside the fused Adam update (fused_update.py).
  assert op_types.count("FixedApplyAdam") == 1 and "FixedUnscaleGrads" not in op_types
  assert op_types.count("FixedScaleLoss") == 2
  assert not CUSTOM_OPS & set(their_ops)


def test_constructor_and_delegation():
  inner = keras.optimizers.Adam(0.01)
  opt = FixedLossScaleOptimizer(inner, np.float32(256))
  assert opt.inner_optimizer is inner and opt.loss_scale == 256.0
  assert opt.initial_scale == 256.0 and opt.dynamic is False
  assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
  assert np.isclose(float(opt.learning_rate), 0.01)
  opt.learning_rate = 0.5
  assert float(inner.learning_rate) == 0.5
  assert opt.iterations is inner.iterations
  assert FixedLossScaleOptimizer(keras.optimizers.SGD(), fls.FixedLossScale(8)).loss_scale == 8.0
  assert FixedLossScaleOptimizer(
      keras.optimizers.SGD(), tf.compat.v1.mixed_precision.FixedLossScale(8)).loss_scale == 8.0
  for bad in (None, "dynamic", "8", 0.5, float("inf")):
    with pytest.raises(ValueError):
      FixedLossScaleOptimizer(keras.optimizers.SGD(), bad)
  with pytest.raises(ValueError, match="inner_optimizer"):
    FixedLossScaleOptimizer(tf.compat.v1.train.GradientDescentOptimizer(0.1), 8)
  with pytest.raises(ValueError, match="LossScaleOptimizer"):
    FixedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), 8)
  with pytest.raises(ValueError, match="clipnorm"):
    FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, clipnorm=1.0)
  # Keras 3's LossScaleOptimizer's words for the same mistakes, then ours.
  with pytest.raises(ValueError, match=r"does not support `global_clipnorm`\. Instead, set "
                                       r"`global_clipnorm` on the `inner_optimizer`; the wrapper"):
    FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, global_clipnorm=1.0)
  with pytest.raises(ValueError, match=r"on the `inner_optimizer`; but this wrapper's scale"):
    FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, loss_scale_factor=4.0)
  with pytest.raises(ValueError, match=r"does not support arguments: `foo`, `bar`"):
    FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, foo=1, bar=2)
  # As Keras's class, base-optimizer arguments at their defaults (which older
  # saved configs carry) are accepted and change nothing.
  defaults = FixedLossScaleOptimizer(keras.optimizers.SGD(name="sgd"), 8, name="w",
                                     clipnorm=None, use_ema=False, ema_momentum=0.99,
                                     loss_scale_factor=None)
  assert defaults.get_config() == FixedLossScaleOptimizer(keras.optimizers.SGD(name="sgd"), 8,
                                                          name="w").get_config()
  assert opt.unscale_in_apply is True
  assert FixedLossScaleOptimizer(keras.optimizers.SGD(), 8,
                                 unscale_in_apply=False).unscale_in_apply is False
  for bad in (None, 0, 1, "False"):
    with pytest.raises(ValueError, match="unscale_in_apply must be True"):
      FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, unscale_in_apply=bad)
  with pytest.warns(UserWarning, match="loss_scale_factor"):
    opt = FixedLossScaleOptimizer(keras.optimizers.SGD(loss_scale_factor=64.0), 8)
  assert opt.inner_optimizer.loss_scale_factor is None  # not unscaled twice


def test_get_config_from_config_and_keras_serialize():
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(0.003, clipnorm=1.5), 512, name="fls")
  config = opt.get_config()
  assert config["loss_scale"] == 512.0 and config["name"] == "fls"
  assert config["unscale_in_apply"] is True
  rebuilt = FixedLossScaleOptimizer.from_config(config)
  assert isinstance(rebuilt.inner_optimizer, keras.optimizers.Adam)
  assert rebuilt.inner_optimizer.clipnorm == 1.5 and rebuilt.loss_scale == 512.0
  serialized = keras.optimizers.serialize(opt)
  assert serialized["registered_name"] == "fixed_loss_scale>FixedLossScaleOptimizer"
  again = keras.optimizers.deserialize(serialized)  # no custom_objects needed
  assert type(again) is FixedLossScaleOptimizer and again.get_config() == config
  # The tf.keras 2 mode survives the same round trips.
  tf2_style = FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 64, unscale_in_apply=False)
  assert tf2_style.get_config()["unscale_in_apply"] is False
  assert FixedLossScaleOptimizer.from_config(tf2_style.get_config()).unscale_in_apply is False
  assert keras.optimizers.deserialize(
      keras.optimizers.serialize(tf2_style)).unscale_in_apply is False
  # A config saved before the argument existed gets the default.
  old_config = {k: v for k, v in config.items() if k != "unscale_in_apply"}
  assert FixedLossScaleOptimizer.from_config(old_config).unscale_in_apply is True


def test_model_save_and_load_round_trip(mixed_float16, tmp_path):
  x, y = _data()
  opt = FixedLossScaleOptimizer(keras.optimizers.Adam(1e-2, global_clipnorm=1.0), 1024)
  model, _, _ = _fit(opt, epochs=1)
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)  # no custom_objects
  assert type(loaded.optimizer) is FixedLossScaleOptimizer
  assert loaded.optimizer.loss_scale == 1024.0
  assert loaded.optimizer.unscale_in_apply is True
  assert loaded.optimizer.inner_optimizer.global_clipnorm == 1.0
  assert loaded.optimizer.iterations.numpy() == 4
  for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
    assert_bitwise_equal(np.asarray(a), np.asarray(b))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
  for a, b in zip(loaded.trainable_weights, model.trainable_weights):
    assert_bitwise_equal(a.numpy(), b.numpy())
  # global_clipnorm: the sum of squares comes from the check's pass
  # (apply_step.py): the read-only check on a CPU, the fused op on a GPU.
  op_types = set(_train_function_op_types(loaded))
  assert "FixedScaleLoss" in op_types
  assert {"FixedUnscaleGradsAndCheck", "FixedCheckGrads"} & op_types


def test_unscale_in_apply_false_refuses_scale_loss_and_so_fit():
  opt = FixedLossScaleOptimizer(keras.optimizers.SGD(0.1), 1024, unscale_in_apply=False)
  with pytest.raises(ValueError, match="unscale_in_apply=False"):
    opt.scale_loss(tf.constant(1.0))
  assert float(opt.get_scaled_loss(tf.constant(1.5))) == 1536.0  # the tf.keras 2 name works
  x, y = _data()
  model = _model()
  model.compile(optimizer=opt, loss="mse")
  before = [w.numpy() for w in model.trainable_weights]
  with pytest.raises(ValueError, match="unscale_in_apply=False"):
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
  for a, b in zip(before, model.trainable_weights):
    assert_bitwise_equal(a, b.numpy())  # nothing was applied


def test_model_save_and_load_keeps_unscale_in_apply_false(tmp_path):
  opt = FixedLossScaleOptimizer(keras.optimizers.SGD(0.5), 256, unscale_in_apply=False)
  model = _model()
  model.compile(optimizer=opt, loss="mse")
  path = str(tmp_path / "tf_keras2_style.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded.optimizer) is FixedLossScaleOptimizer
  assert loaded.optimizer.unscale_in_apply is False and loaded.optimizer.loss_scale == 256.0
  # ...and it behaves as saved: a tf.keras 2 step on each model (unscaling once,
  # in get_unscaled_gradients) gives the same weights.
  x, y = _data()
  for m in (model, loaded):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.mean_squared_error(y, m(x)))
      scaled = m.optimizer.get_scaled_loss(loss)
    grads = m.optimizer.get_unscaled_gradients(tape.gradient(scaled, m.trainable_weights))
    m.optimizer.apply_gradients(zip(grads, m.trainable_weights))
  for a, b in zip(loaded.trainable_weights, model.trainable_weights):
    assert_bitwise_equal(a.numpy(), b.numpy())
  assert not all(np.array_equal(a, b.numpy()) for a, b in
                 zip([w.numpy() for w in _model().trainable_weights], model.trainable_weights))
