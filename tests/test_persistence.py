"""Persistence: a TF2 SavedModel and a TF1 MetaGraph+checkpoint that use the ops,
saved in one fresh process and loaded in another (tests/workers/
persistence.py). With the package imported they train on exactly as the saving
process did; without it, loading fails with an error naming the missing op type,
and succeeds in the same process once the package is imported."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_bitwise_equal
from conftest import reference_scale

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "workers", "persistence.py")
README = os.path.join(os.path.dirname(HERE), "README.md")
SCALE = 1000.1
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def run_worker(mode, directory):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, WORKER, mode, directory], capture_output=True,
                          text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("persistence"))
  run_worker("save", directory)
  return directory


def assert_same_run(path_a, path_b):
  a, b = np.load(path_a), np.load(path_b)
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    assert_bitwise_equal(b[key], a[key])
  # Sanity of what was compared: 3 steps x (loss, scaled, 4 grads) + 4 weights, per format.
  assert len(a.files) == 2 * (3 * 6 + 4)
  for fmt in ("tf1", "tf2"):
    for step in range(3):
      loss = a[f"{fmt}_step{step}_loss"]
      assert_bitwise_equal(a[f"{fmt}_step{step}_scaled"], reference_scale(loss, SCALE))
      assert np.any(a[f"{fmt}_step{step}_grad_float32"] != 0)


@pytest.mark.slow
def test_loads_and_trains_on_in_a_fresh_process_that_imports_the_package(saved):
  report = run_worker("load", saved)
  assert report["tf1_op_types"] == ["FixedScaleLoss", "FixedUnscaleGrads"]
  assert_same_run(os.path.join(saved, "expected.npz"), os.path.join(saved, "loaded.npz"))


@pytest.mark.slow
def test_without_the_package_the_error_names_the_op_type(saved):
  report = run_worker("load-bare", saved)
  assert report["imported_before"] is False
  for fmt in ("tf2", "tf1"):
    error = report[f"{fmt}_error"]
    assert error is not None, f"{fmt} loaded without the op library"
    assert re.search(r"Op type not registered '(FixedScaleLoss|FixedUnscaleGrads)'", error), error
  # The same process loads both once the package is imported.
  assert_same_run(os.path.join(saved, "expected.npz"),
                  os.path.join(saved, "loaded_after_import.npz"))


def test_readme_says_to_import_the_package_before_loading():
  with open(README) as f:
    text = f.read()
  section = text[text.index("## Saved models"):]
  section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
  assert "`import fixed_loss_scale` before" in section
  assert "tf.saved_model.load" in section and "import_meta_graph" in section
  assert "Op type not registered" in section
