"""tf.distribute: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy on loopback.

Logical devices must be set before TensorFlow initializes its devices, so the
MirroredStrategy runs happen in one subprocess (tests/workers/mirrored_checks.py)
that writes its op placements, outputs and final weights; the assertions here
compare them with the numpy oracles, TF's compat wrapper and Keras's
loss_scale_factor run under the same strategy, and a single-device run. The
multi-worker test starts two worker processes (tests/workers/multi_worker.py)
on 127.0.0.1 with bounded waits and compares their final weights.
"""

import json

import numpy as np
import pytest

from conftest import assert_bitwise_equal
from conftest import reference_scale
from conftest import reference_unscale
from conftest import run_worker
from workers import multi_worker
from workers.cluster import run_cluster

CPU0 = "/job:localhost/replica:0/task:0/device:CPU:0"
CPU1 = "/job:localhost/replica:0/task:0/device:CPU:1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
  out = tmp_path_factory.mktemp("mirrored")
  run_worker("mirrored_checks.py", out)
  with open(out / "results.json") as f:
    results = json.load(f)
  arrays = dict(np.load(out / "arrays.npz"))
  assert results["logical_cpus"] == 2
  return results, arrays


def _by_device(pairs):
  placed = {}
  for op_type, device in pairs:
    placed.setdefault(device, []).append(op_type)
  return {device: sorted(types) for device, types in placed.items()}


def _on_each_cpu(*op_types):
  """The same sorted op types on both replicas' devices, as _by_device gives them."""
  return {CPU0: sorted(op_types), CPU1: sorted(op_types)}


# One training step's custom ops on a replica: it scales its loss (and its
# gradient) and unscales the gradients once.
STEP_OPS = ("FixedScaleLoss", "FixedScaleLoss", "FixedUnscaleGrads")
# The Keras wrapper around Adam unscales inside its fused update (fused_update.py).
KERAS_STEP_OPS = ("FixedScaleLoss", "FixedScaleLoss", "FixedApplyAdam")


def test_ops_run_once_per_replica_on_its_device(mirrored):
  results, _ = mirrored
  assert _by_device(results["per_replica_ops"]) == _on_each_cpu("FixedScaleLoss",
                                                                 "FixedUnscaleGrads")


def test_per_replica_results_match_single_device_oracle(mirrored):
  _, arrays = mirrored
  for replica in (0, 1):
    assert_bitwise_equal(arrays[f"per_replica_out_loss_{replica}"],
                         reference_scale(arrays["per_replica_in_loss"][replica], 1024))
    for name in ("g16", "g32", "g64"):
      assert_bitwise_equal(arrays[f"per_replica_out_{name}_{replica}"],
                           reference_unscale(arrays[f"per_replica_in_{name}"][replica], 1024))


def test_cross_replica_update_and_call(mirrored):
  results, _ = mirrored
  assert results["cross_replica_eager_update"] == [True, True]  # (None, True)
  assert results["cross_replica_graph_update"] == ["NoOp", True]
  assert results["cross_replica_call"] == results["cross_replica_graph_call"] == 1024.0


def test_tf1_wrapper_under_mirrored_strategy(mirrored):
  results, arrays = mirrored
  # Bit-identical to TF's compat wrapper under the same strategy...
  assert_bitwise_equal(arrays["tf1_ours_mirrored"], arrays["tf1_theirs_mirrored"])
  # ...close to one device on the whole batch (the all-reduce sums two halves)...
  np.testing.assert_allclose(arrays["tf1_ours_mirrored"], arrays["tf1_ours_single"],
                             rtol=1e-5, atol=1e-6)
  # ...with each replica scaling its loss (and its gradient) and unscaling once.
  assert _by_device(results["tf1_ours_mirrored_ops"]) == _on_each_cpu(*STEP_OPS)
  assert results["tf1_theirs_mirrored_ops"] == []


def test_keras_fit_under_mirrored_strategy(mirrored):
  results, arrays = mirrored
  assert results["keras_ours_mirrored_optimizer"] == "FixedLossScaleOptimizer"
  assert results["keras_ours_mirrored_jit_compile"] is False  # Keras: no auto-XLA with tf.distribute
  for i in range(4):
    assert_bitwise_equal(arrays[f"keras_ours_mirrored_{i}"], arrays[f"keras_factor_mirrored_{i}"])
    np.testing.assert_allclose(arrays[f"keras_ours_mirrored_{i}"], arrays[f"keras_ours_single_{i}"],
                               rtol=1e-3, atol=1e-4)
  assert results["keras_ours_mirrored_loss"] == results["keras_factor_mirrored_loss"]
  losses = results["keras_ours_mirrored_loss"]
  assert losses[-1] < losses[0]
  assert _by_device(results["keras_ours_mirrored_ops"]) == _on_each_cpu(*KERAS_STEP_OPS)
  assert results["keras_factor_mirrored_ops"] == []


def test_keras_custom_loops_under_mirrored_strategy(mirrored):
  # The tf.keras 2 style (get_unscaled_gradients, then apply_gradients, which
  # built with unscale_in_apply=False does not unscale again) in each replica
  # thread equals the Keras 3 style; so does the Keras 3 style with the
  # gradients also unscaled for logging, eagerly before the first trace and
  # inside it (where apply must still do its own unscale).
  _, arrays = mirrored
  for part in ("w", "b"):
    assert_bitwise_equal(arrays[f"keras_loop_tf_keras2_style_{part}"],
                         arrays[f"keras_loop_keras3_style_{part}"])
    assert_bitwise_equal(arrays[f"keras_loop_keras3_logged_{part}"],
                         arrays[f"keras_loop_keras3_style_{part}"])
    np.testing.assert_allclose(arrays[f"keras_loop_keras3_style_{part}"],
                               arrays[f"keras_loop_single_{part}"], rtol=1e-5, atol=1e-6)
  assert np.abs(arrays["keras_loop_keras3_style_w"] - arrays["keras_loop_w0"]).min() > 1e-3


def test_multi_worker_mirrored_two_processes_on_loopback(tmp_path):
  steps = 5
  workers = run_cluster(2, ["--out", str(tmp_path), "--steps", str(steps), "--wrappers",
                            "tf1,keras", "--deadline-s", "200"],
                        log_dir=str(tmp_path), timeout_s=240)
  for worker in workers:
    assert worker.returncode == 0, f"worker {worker.index}:\n{worker.log[-4000:]}"
  weights = [dict(np.load(tmp_path / f"worker{i}.npz")) for i in (0, 1)]
  summaries = []
  for i in (0, 1):
    with open(tmp_path / f"worker{i}.json") as f:
      summaries.append(json.load(f))
  assert sorted(weights[0]) == ["keras_b", "keras_w", "tf1_b", "tf1_w"]
  expected_w, expected_b = multi_worker.reference_weights(seed=0, steps=steps)
  for name in weights[0]:
    assert_bitwise_equal(weights[0][name], weights[1][name])  # the two workers agree exactly
  for wrapper, rtol in (("tf1", 1e-5), ("keras", 2e-2)):  # keras: float16 compute
    np.testing.assert_allclose(weights[0][f"{wrapper}_w"], expected_w, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(weights[0][f"{wrapper}_b"], expected_b, rtol=rtol, atol=rtol)
    for summary in summaries:
      assert summary["num_replicas"] == 2
      info = summary[wrapper]
      assert info["steps"] == steps and len(info["losses"]) == steps
      assert info["losses"][-1] < info["losses"][0]
      # The Keras wrapper around SGD unscales inside its fused update (fused_update.py).
      unscale = "FixedApplySgd" if wrapper == "keras" else "FixedUnscaleGrads"
      assert info["op_types"] == sorted(["FixedScaleLoss", "FixedScaleLoss", unscale])
