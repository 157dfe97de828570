"""Overflow on one replica only, under tf.distribute: every replica skips.

- MultiWorkerMirroredStrategy, two worker processes on loopback (one CPU replica
  each): the loss of one worker is multiplied by inf on chosen steps (mostly
  worker 1's, once worker 0's, once both). With the Keras wrapper in a custom
  loop (FixedLossScaleOptimizer(skip_non_finite=True); on CPUs MWMS uses
  merge_call, so the flags are summed across workers in the cross-replica
  context) and the TF1 wrapper with a fixed scale that skips and with
  fixed_loss_scale.DynamicLossScale (update in the cross-replica context, the
  flags summed by strategy.reduce): both workers skip the same steps, their
  weights stay finite and bit-identical after every step, and they equal a
  single-process run of the same code (the default strategy, whose one
  replica overflows on every step on which any worker did). The dynamic scale
  halves on both workers, to the values TF's algorithm gives by hand.
- MirroredStrategy on two logical CPUs, Keras `fit`: batches with an inf in a
  row that replica 1 gets are skipped on both replicas, and the weights equal
  those of the inner SGD fitted on the clean batches alone, bit for bit.

tests/test_skip_non_finite.py covers custom loops under MirroredStrategy on two
logical CPUs. Workers: tests/workers/mwms_overflow.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_bitwise_equal
from workers import mwms_overflow
from workers.cluster import run_cluster

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "mwms_overflow.py")
TIMEOUT_S = 300


def _log_tail(results):
  return "\n".join(f"--- worker {r.index} exited {r.returncode}:\n{r.log[-3000:]}"
                   for r in results)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
  """The two workers' arrays (worker 0's, worker 1's)."""
  out = tmp_path_factory.mktemp("mwms_overflow")
  results = run_cluster(2, ["--out", str(out), "--deadline-s", str(TIMEOUT_S - 60)],
                        log_dir=str(out / "logs"), timeout_s=TIMEOUT_S, script=WORKER)
  assert all(r.returncode == 0 for r in results), _log_tail(results)
  return [dict(np.load(out / f"worker{i}.npz")) for i in (0, 1)]


@pytest.fixture(scope="module")
def single_process():
  """The same training in this process, no strategy (TF's default one)."""
  arrays = {}
  for variant in mwms_overflow.VARIANTS:
    arrays.update(mwms_overflow.train(variant, tf.distribute.get_strategy()))
  return arrays


def _skipped_steps():
  return np.array([step in mwms_overflow.POISON for step in range(mwms_overflow.STEPS)])


@pytest.mark.slow
@pytest.mark.parametrize("variant", mwms_overflow.VARIANTS)
def test_both_workers_skip_every_step_on_which_one_overflows(workers, variant):
  skipped = _skipped_steps()
  one_worker_only = [s for s, r in mwms_overflow.POISON.items() if len(r) == 1]
  assert {mwms_overflow.POISON[s] for s in one_worker_only} == {(0,), (1,)}
  for name in ("w", "b"):
    per_worker = [w[f"{variant}_{name}"] for w in workers]
    for values in per_worker:
      assert np.isfinite(values).all()
    assert_bitwise_equal(per_worker[0], per_worker[1])  # the same after every step
    for step in np.flatnonzero(skipped):  # a skipped step leaves the weights as they were
      assert_bitwise_equal(per_worker[0][step], per_worker[0][step - 1])
  for w in workers:
    assert list(w[f"{variant}_counters"]) == list(np.cumsum(~skipped))
  assert_bitwise_equal(workers[0][f"{variant}_scales"], workers[1][f"{variant}_scales"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", mwms_overflow.VARIANTS)
def test_workers_equal_a_single_process_run_that_skips_the_same_steps(
    workers, single_process, variant):
  """Two half-batch gradients summed against one full-batch gradient: equal to
  float32 rounding, not bit for bit. Counters and scales exactly."""
  for name in ("w", "b"):
    np.testing.assert_allclose(workers[0][f"{variant}_{name}"],
                               single_process[f"{variant}_{name}"], rtol=1e-5, atol=1e-6)
  assert list(workers[0][f"{variant}_counters"]) == list(single_process[f"{variant}_counters"])
  assert_bitwise_equal(workers[0][f"{variant}_scales"], single_process[f"{variant}_scales"])


@pytest.mark.slow
def test_dynamic_scale_halves_on_both_workers_as_tfs_algorithm_says(workers):
  # DynamicLossScale(1024, increment_period=2, multiplier=2) on the steps'
  # flags: halved on each skipped step, doubled after two clean ones.
  expected = [1024, 512, 256, 256, 512, 256, 128, 128, 256, 128]
  for w in workers:
    assert w["tf1_dynamic_scales"].tolist() == expected
  assert all(w["tf1_fixed_scales"].tolist() == [mwms_overflow.SCALE] * mwms_overflow.STEPS
             for w in workers)


@pytest.mark.slow
def test_keras_fit_on_two_logical_cpus_skips_batches_where_replica_1_overflows(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, WORKER, "--mirrored-fit", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  fit = dict(np.load(tmp_path / "fit.npz"))
  poisoned = list(mwms_overflow.FIT_POISONED)
  clean = [b for b in range(mwms_overflow.FIT_BATCHES) if b not in poisoned]
  # The inf rows reach replica 1 only.
  expected_nonfinite = np.zeros((mwms_overflow.FIT_BATCHES, 2), bool)
  expected_nonfinite[poisoned, 1] = True
  np.testing.assert_array_equal(fit["nonfinite"], expected_nonfinite)
  ours, reference = fit["ours"], fit["reference"]  # [batch, replica, FEATURES, 1]
  assert np.isfinite(ours).all()
  assert_bitwise_equal(ours[:, 0], ours[:, 1])
  assert fit["iterations"].tolist() == [len(clean), len(clean)]
  assert_bitwise_equal(ours[clean], reference)
  for b in poisoned:
    assert_bitwise_equal(ours[b], ours[b - 1])
