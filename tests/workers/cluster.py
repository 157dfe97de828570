"""Starts and stops a local MultiWorkerMirroredStrategy cluster of worker processes.

Loopback only: every worker listens on 127.0.0.1 at a port picked by binding
port 0. Every wait is bounded; on timeout or failure all workers are killed.

    from workers.cluster import run_cluster
    results = run_cluster(num_workers=2, worker_args=["--out", out_dir, "--steps", "5"],
                          log_dir=out_dir, timeout_s=240)

`worker_args` is a list (same for every worker) or a function of the task
index returning that worker's list; the arguments go to multi_worker.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker.py")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy",
                    "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "ALL_PROXY")


def free_loopback_ports(count):
  """Ports free on 127.0.0.1 right now (bound to port 0, then released)."""
  sockets, ports = [], []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("127.0.0.1", 0))
      sockets.append(s)
      ports.append(s.getsockname()[1])
  finally:
    for s in sockets:
      s.close()
  return ports


class WorkerResult:
  def __init__(self, index, returncode, log_path):
    self.index, self.returncode, self.log_path = index, returncode, log_path

  @property
  def log(self):
    with open(self.log_path, errors="replace") as f:
      return f.read()


def start_cluster(num_workers, worker_args, log_dir, script=WORKER_SCRIPT, python=None):
  """Starts the workers; returns [(Popen, log path, log file)]."""
  ports = free_loopback_ports(num_workers)
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  os.makedirs(log_dir, exist_ok=True)
  procs = []
  for index in range(num_workers):
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}
    env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = worker_args(index) if callable(worker_args) else list(worker_args)
    log_path = os.path.join(log_dir, f"worker{index}.log")
    log_file = open(log_path, "w")  # pylint: disable=consider-using-with
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [python or sys.executable, script] + args, env=env, stdout=log_file,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append((proc, log_path, log_file))
  return procs


def stop_cluster(procs, grace_s=5.0):
  """Kills workers still running (each wait bounded) and closes their logs."""
  for proc, _, _ in procs:
    if proc.poll() is None:
      proc.kill()
  for proc, _, log_file in procs:
    try:
      proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
      pass
    log_file.close()


def run_cluster(num_workers, worker_args, log_dir, timeout_s=240.0, script=WORKER_SCRIPT):
  """Runs the workers to completion or until timeout_s; returns [WorkerResult].

  A worker still running at the deadline is killed and reported with
  returncode None.
  """
  procs = start_cluster(num_workers, worker_args, log_dir, script=script)
  deadline = time.monotonic() + timeout_s
  try:
    while time.monotonic() < deadline and any(p.poll() is None for p, _, _ in procs):
      time.sleep(0.2)
    codes = [p.poll() for p, _, _ in procs]
  finally:
    stop_cluster(procs)
  return [WorkerResult(i, codes[i], procs[i][1]) for i in range(num_workers)]
