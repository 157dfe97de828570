"""The README's promises: the demo runs and succeeds, and `make wheel` gives an
installable wheel whose library loads from wherever it is installed."""

import glob
import json
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_succeeds_and_shows_the_rescue():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "demo", "demo.py")],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "training stalled" in result.stdout
  assert "the gradients never underflowed" in result.stdout
  assert "FixedScaleLoss, FixedUnscaleGrads" in result.stdout


@pytest.mark.slow
def test_integrations_demo_succeeds_and_shows_the_ops():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "demo", "integrations.py")],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  for section in ("TF1 Session", "Keras model.fit", "MirroredStrategy"):
    assert section in result.stdout
  assert "FixedUnscaleGrads x1 on device:CPU:1" in result.stdout


@pytest.mark.slow
def test_wheel_installs_and_loads_outside_the_source_tree(tmp_path):
  dist = tmp_path / "dist"
  subprocess.run(["make", "-C", ROOT, "wheel", f"WHEEL_DIR={dist}"], check=True,
                 capture_output=True, timeout=600)
  (wheel,) = glob.glob(str(dist / "*.whl"))
  archive = zipfile.ZipFile(wheel)
  names = archive.namelist()
  assert "fixed_loss_scale/_fixed_loss_scale_ops.so" in names
  assert "fixed_loss_scale/_build_info.json" in names
  assert "linux_x86_64" in os.path.basename(wheel) or "linux" in os.path.basename(wheel)
  # The runtime package only, and pip's wheel: it requires the TensorFlow minor
  # version it was built for (tests/test_packaging.py checks the range itself).
  assert all(n.startswith(("fixed_loss_scale/", "tf_fixed_loss_scale-")) for n in names), names
  (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
  built_for = json.loads(archive.read("fixed_loss_scale/_build_info.json"))["tf_version"]
  major, minor = built_for.split(".")[:2]
  assert (f"Requires-Dist: tensorflow<{major}.{int(minor) + 1},>={built_for}"
          in archive.read(metadata).decode().splitlines())

  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--target", str(target), wheel], check=True, timeout=600)
  code = (
      "import fixed_loss_scale as fls, tensorflow as tf\n"
      "assert fls.__file__.startswith(%r), fls.__file__\n"
      "out = tf.function(lambda g: fls.unscale_gradients([g], 4.0))(tf.constant([8.0]))\n"
      "print(out[0].numpy()[0])\n" % str(target))
  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "2.0"
