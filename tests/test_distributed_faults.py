"""Distributed faults: in a two-worker MultiWorkerMirroredStrategy run on
loopback, a worker that dies makes the other exit with an error, within a
bounded time, instead of hanging; the run then resumes from its checkpoint and
ends with the right weights. Every wait here is bounded, and every process is
killed at the end whatever happens.

Workers: tests/workers/multi_worker.py and cluster.py (training with the
optimizer wrappers), tests/workers/mwms_join.py (joining only).
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from conftest import assert_bitwise_equal
from workers import multi_worker
from workers.cluster import run_cluster
from workers.cluster import start_cluster
from workers.cluster import stop_cluster

HERE = os.path.dirname(os.path.abspath(__file__))
JOIN_WORKER = os.path.join(HERE, "workers", "mwms_join.py")
START_BOUND_S = 180     # both workers up and training
SURVIVOR_BOUND_S = 120  # the survivor's exit, counted from its peer's death
STEPS = 8


def wait_until(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.1)
  raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read(path):
  with open(path, errors="replace") as f:
    return f.read()


def survivor_error(proc, log_path, killed_at):
  """Waits (bounded) for the survivor; returns its log after checking it failed."""
  wait_until(lambda: proc.poll() is not None, SURVIVOR_BOUND_S,
             f"the surviving worker to exit after its peer died ({log_path})")
  elapsed = time.monotonic() - killed_at
  log = read(log_path)
  # Non-zero, and not multi_worker.py's own deadline (124): TensorFlow reported it.
  assert proc.returncode not in (0, 124), (proc.returncode, log[-3000:])
  assert "Error" in log and ("Unavailable" in log or "UNAVAILABLE" in log or
                             "DeadlineExceeded" in log or "aborted" in log), log[-3000:]
  print(f"survivor exited {proc.returncode} {elapsed:.1f} s after its peer died")
  return log


def training_args(out, checkpoint_dir, extra=()):
  return ["--out", out, "--steps", str(STEPS), "--wrappers", "tf1", "--deadline-s", "300",
          "--checkpoint-dir", checkpoint_dir, "--save-every", "2", *extra]


@pytest.mark.slow
def test_non_chief_dies_mid_training_then_the_run_resumes(tmp_path):
  checkpoints, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
  procs = start_cluster(
      2, lambda i: training_args(out, checkpoints, ["--exit-after-step", "3"] if i == 1 else []),
      log_dir=str(tmp_path / "logs1"))
  try:
    dying = procs[1][0]
    wait_until(lambda: dying.poll() is not None, START_BOUND_S, "worker 1 to die after step 3")
    died_at = time.monotonic()
    assert dying.returncode == 17, read(procs[1][1])[-3000:]  # os._exit after step 3
    survivor_error(procs[0][0], procs[0][1], died_at)
  finally:
    stop_cluster(procs)

  # The fault survived: both restart from the chief's step-2 checkpoint and finish.
  results = run_cluster(2, training_args(out, checkpoints), log_dir=str(tmp_path / "logs2"),
                        timeout_s=START_BOUND_S)
  for r in results:
    assert r.returncode == 0, f"worker {r.index}:\n{r.log[-3000:]}"
  summaries = [json.loads(read(os.path.join(out, f"worker{i}.json"))) for i in (0, 1)]
  assert [s["tf1"]["restored_step"] for s in summaries] == [2, 2]
  assert [s["tf1"]["steps"] for s in summaries] == [STEPS, STEPS]
  weights = [dict(np.load(os.path.join(out, f"worker{i}.npz"))) for i in (0, 1)]
  for name in ("tf1_w", "tf1_b"):
    assert_bitwise_equal(weights[0][name], weights[1][name])
  expected_w, expected_b = multi_worker.reference_weights(seed=0, steps=STEPS)
  np.testing.assert_allclose(weights[0]["tf1_w"], expected_w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weights[0]["tf1_b"], expected_b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_chief_killed_mid_training_makes_the_other_worker_fail(tmp_path):
  out = str(tmp_path / "out")
  # Far more steps than can run before the kill lands: the chief dies mid-run.
  procs = start_cluster(2, ["--out", out, "--steps", "5000", "--wrappers", "tf1",
                            "--deadline-s", "300"], log_dir=str(tmp_path / "logs"))
  try:
    wait_until(lambda: "worker 0 tf1 step 3 " in read(procs[0][1]), START_BOUND_S,
               "the chief to reach step 3")
    procs[0][0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: procs[0][0].poll() is not None, 30, "the chief to die")
    assert procs[0][0].returncode == -signal.SIGKILL
    survivor_error(procs[1][0], procs[1][1], killed_at)
  finally:
    stop_cluster(procs)


@pytest.mark.slow
def test_peer_dying_before_the_cluster_forms_is_bounded_by_a_gil_free_watchdog(tmp_path):
  """Known limit (RELIABILITY.md): TensorFlow waits for a missing peer inside
  MultiWorkerMirroredStrategy() holding the GIL, so only a watchdog that needs no
  GIL (faulthandler) bounds it; mwms_join.py uses one."""
  procs = start_cluster(2, ["20"], log_dir=str(tmp_path), script=JOIN_WORKER)
  try:
    procs[1][0].send_signal(signal.SIGKILL)  # before it can join
    killed_at = time.monotonic()
    wait_until(lambda: procs[0][0].poll() is not None, SURVIVOR_BOUND_S,
               "the survivor to give up")
    log = read(procs[0][1])
    assert procs[0][0].returncode != 0, log[-3000:]
    assert "all-reduced" not in log
    print(f"survivor exited {procs[0][0].returncode} after "
          f"{time.monotonic() - killed_at:.1f} s: "
          f"{'watchdog' if 'Timeout (0:00:20)!' in log else 'TensorFlow error'}")
  finally:
    stop_cluster(procs)


@pytest.mark.slow
def test_join_worker_completes_when_nobody_dies(tmp_path):
  """The control for the test above: the same two workers all-reduce and exit 0."""
  results = run_cluster(2, ["60"], log_dir=str(tmp_path), timeout_s=START_BOUND_S,
                        script=JOIN_WORKER)
  for r in results:
    assert r.returncode == 0, r.log[-3000:]
    assert "all-reduced [4.0]" in r.log  # 8/4 on each of two replicas, summed
