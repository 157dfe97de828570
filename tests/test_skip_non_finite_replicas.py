"""skip_non_finite under MirroredStrategy on two logical CPUs.

tests/workers/skip_replicas.py trains in a fresh process (logical devices must
be set before TensorFlow starts) with an overflow on one replica at a time.
References: a float64 SGD in numpy that skips every step on which any replica
overflowed, and TF's own wrapper with TF's DynamicLossScale.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_bitwise_equal

WORKERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")

# ---- MirroredStrategy on two logical CPUs: an overflow on one replica -----------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
  out = tmp_path_factory.mktemp("skip_replicas")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, os.path.join(WORKERS_DIR, "skip_replicas.py"), str(out)],
      capture_output=True, text=True, timeout=300, env=env, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return dict(np.load(out / "arrays.npz"))


def _replica_reference(arrays):
  """float64 SGD on the summed per-replica gradients, skipping every step on
  which any replica overflowed."""
  x = arrays["x"].reshape(16, 3).astype(np.float64)
  y = arrays["y"].reshape(16, 1).astype(np.float64)
  w = arrays["w0"].astype(np.float64)
  history = []
  for factors in arrays["poison"]:
    if np.isfinite(factors).all():
      w = w - 0.1 * (2.0 / 16) * x.T @ (x @ w - y)
    history.append(w.copy())
  return np.array(history)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["tf1_fixed_skip", "keras_fixed_skip"])
def test_every_replica_skips_when_one_overflows(replicas, run):
  weights = replicas[f"{run}_weights"]  # [step, replica, 3, 1]
  poisoned_steps = ~np.isfinite(replicas["poison"]).all(axis=1)
  assert poisoned_steps.sum() == 4 and (np.isfinite(replicas["poison"]).sum(axis=1) == 1).sum() == 3
  assert np.isfinite(weights).all()
  assert_bitwise_equal(weights[:, 0], weights[:, 1])  # the replicas agree at every step
  np.testing.assert_allclose(weights[:, 0], _replica_reference(replicas), rtol=1e-5, atol=1e-6)
  assert list(replicas[f"{run}_counters"]) == list(np.cumsum(~poisoned_steps))


@pytest.mark.slow
def test_replicas_fixed_skip_is_tf_dynamic_scale_at_multiplier_one_bit_for_bit(replicas):
  assert_bitwise_equal(replicas["tf1_fixed_skip_weights"],
                       replicas["tf1_tf_dynamic_multiplier_1_weights"])


@pytest.mark.slow
def test_replicas_dynamic_scale_ours_matches_tfs_bit_for_bit(replicas):
  """fixed_loss_scale.DynamicLossScale in this package's wrapper against TF's
  class in TF's wrapper, overflows on one replica: the same skips, scales and
  weights (tests/test_dynamic_loss_scale.py covers one device)."""
  assert_bitwise_equal(replicas["tf1_ours_dynamic_scales"], replicas["tf1_tf_dynamic_scales"])
  assert_bitwise_equal(replicas["tf1_ours_dynamic_weights"], replicas["tf1_tf_dynamic_weights"])
  assert list(replicas["tf1_ours_dynamic_counters"]) == list(replicas["tf1_tf_dynamic_counters"])
  assert list(replicas["tf1_ours_dynamic_scales"]) == [256, 128, 128, 64, 32, 32, 16, 16]


@pytest.mark.slow
def test_update_inside_strategy_run_all_reduces_the_flag(replicas):
  # (replica 0, replica 1) inputs: finite/finite, finite/inf, nan/finite, inf/inf
  assert replicas["replica_context_flags"].tolist() == [[True, True], [False, False],
                                                        [False, False], [False, False]]
