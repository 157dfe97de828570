"""SavedModel: a tf.Module whose tf.functions use the ops saves and loads.

Loading needs the op library registered (import fixed_loss_scale first);
without it TensorFlow refuses with "Op type not registered", naming the op --
checked in a fresh process, which then imports the package and loads fine.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_scale
from conftest import reference_unscale

SCALE = 4096.0
X_SPEC = tf.TensorSpec([None, 3], tf.float16)


class Trainer(tf.Module):
  """float16 weights, loss scaled and gradients unscaled by the fixed scale."""

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.constant([[0.5], [-0.25], [1.0]], tf.float16))
    self.loss_scale = fls.FixedLossScale(SCALE)

  @tf.function(input_signature=[X_SPEC])
  def scaled_and_unscaled(self, x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(tf.matmul(x, self.w)))
      scaled = self.loss_scale.scale_loss(loss)
    scaled_grad = tape.gradient(scaled, self.w)
    (grad,) = self.loss_scale.unscale_gradients([scaled_grad])
    return {"loss": loss, "scaled": scaled, "scaled_grad": scaled_grad, "grad": grad}

  @tf.function(input_signature=[X_SPEC])
  def train(self, x):
    grad = self.scaled_and_unscaled(x)["grad"]
    self.w.assign_sub(tf.cast(0.125, tf.float16) * grad)
    return self.w.read_value()


def _x():
  return tf.constant([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], tf.float16)


def test_save_and_load_with_package(tmp_path):
  module = Trainer()
  path = str(tmp_path / "saved")
  tf.saved_model.save(module, path)
  loaded = tf.saved_model.load(path)

  ops = graph_op_types(loaded.scaled_and_unscaled.get_concrete_function())
  assert {"FixedScaleLoss", "FixedUnscaleGrads"} <= set(ops)
  out = {k: v.numpy() for k, v in loaded.scaled_and_unscaled(_x()).items()}
  assert_bitwise_equal(out["scaled"], reference_scale(out["loss"], SCALE))
  assert_bitwise_equal(out["grad"], reference_unscale(out["scaled_grad"], SCALE))
  original = {k: v.numpy() for k, v in module.scaled_and_unscaled(_x()).items()}
  for key, value in original.items():
    assert_bitwise_equal(out[key], value)
  for _ in range(3):
    assert_bitwise_equal(loaded.train(_x()).numpy(), module.train(_x()).numpy())


@pytest.mark.slow
def test_load_without_package_names_the_op_then_loads_after_import(tmp_path):
  path = str(tmp_path / "saved")
  module = Trainer()
  tf.saved_model.save(module, path)
  expected = module.scaled_and_unscaled(_x())["grad"].numpy()
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      import tensorflow as tf
      assert "fixed_loss_scale" not in sys.modules
      try:
        tf.saved_model.load({path!r})
        print("LOADED WITHOUT PACKAGE")
      except Exception as error:  # noqa: BLE001
        print("ERROR", type(error).__name__, str(error).splitlines()[0])
      import fixed_loss_scale
      loaded = tf.saved_model.load({path!r})
      x = tf.constant([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]], tf.float16)
      np.save({str(tmp_path / "grad.npy")!r}, loaded.scaled_and_unscaled(x)["grad"].numpy())
      print("LOADED AFTER IMPORT")
      """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=180, env=env, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  error_line = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
  assert "Op type not registered 'Fixed" in error_line, error_line
  assert ("'FixedScaleLoss'" in error_line) or ("'FixedUnscaleGrads'" in error_line)
  assert "LOADED WITHOUT PACKAGE" not in proc.stdout
  assert "LOADED AFTER IMPORT" in proc.stdout
  assert_bitwise_equal(np.load(tmp_path / "grad.npy"), expected)
