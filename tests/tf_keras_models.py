"""The small tf_keras model and data the tf_keras fit tests and their worker share.

`fit(lso_class, family, setting, ...)` trains a two-layer tf_keras model under
tf_keras's `mixed_float16` policy with `model.fit` and returns the model and
the scale after each epoch; the data makes the scaled float16 gradients
overflow in some batches (targets of 3e4), so that a dynamic scale halves and
skips there and a fixed one applies the inf (or, with `skip_non_finite`,
skips). Imported by tests/test_tf_keras_fit.py and tests/workers/
tf_keras_mirrored.py; tf_keras only, so `tf.keras` stays Keras 3.
"""

import numpy as np
import tensorflow as tf
import tf_keras

FAMILIES = {"new": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}
SETTINGS = {
    "dynamic": {"initial_scale": 2.0**13, "dynamic_growth_steps": 3},
    "fixed": {"dynamic": False, "initial_scale": 2.0**10},
    "skip": {"dynamic": False, "initial_scale": 2.0**10, "skip_non_finite": True},
}
BATCH = 8


def data(overflow=True):
  rng = np.random.default_rng(7)
  x = rng.standard_normal((64, 6)).astype(np.float32)
  y = rng.standard_normal((64, 1)).astype(np.float32)
  if overflow:
    y[16:24] = 3e4  # one batch of eight whose scaled gradients overflow float16
    y[40:48] = -3e4
  return x, y


def build(seed=3):
  tf_keras.utils.set_random_seed(seed)
  return tf_keras.Sequential([
      tf_keras.layers.Dense(16, activation="relu", input_shape=(6,)),
      tf_keras.layers.Dense(1),
      tf_keras.layers.Activation("linear", dtype="float32"),
  ])


def make(lso_class, family, setting, learning_rate=0.01, jit_compile=False, momentum=0.9):
  """A compiled model with `lso_class` wrapping `family`'s SGD."""
  settings = dict(SETTINGS[setting])
  if lso_class is tf_keras.mixed_precision.LossScaleOptimizer:
    settings.pop("skip_non_finite", None)
  model = build()
  opt = lso_class(FAMILIES[family](learning_rate, momentum=momentum), **settings)
  model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
  return model


def fit(model, epochs=2, x=None, y=None):
  """Trains without shuffling; returns the scale after each epoch."""
  if x is None:
    x, y = data()
  scales = []
  for _ in range(epochs):
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    scales.append(float(model.optimizer.loss_scale.numpy()))
  return scales


def state(model):
  """What must match bit for bit: weights, scale, counter, iterations."""
  opt = model.optimizer
  counter = opt.dynamic_counter
  return {
      "weights": [np.asarray(w) for w in model.get_weights()],
      "scale": float(opt.loss_scale.numpy()),
      "counter": None if counter is None else int(counter.numpy()),
      "iterations": int(opt.iterations.numpy()),
  }


class MixedFloat16:
  """tf_keras's global policy "mixed_float16" inside a `with`, then float32."""

  def __enter__(self):
    tf_keras.mixed_precision.set_global_policy("mixed_float16")

  def __exit__(self, *exc):
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()


def run_step_function(model):
  """The traced train step of `model` (its graph, for op types)."""
  x, y = data()
  step = tf.function(model.train_step)
  return step.get_concrete_function((tf.constant(x[:BATCH]), tf.constant(y[:BATCH])))
