"""Crash and resume: a training run killed with SIGKILL part way, twice, and
restarted from its checkpoint ends with exactly the weights (and, for Keras, the
optimizer state) of a run that was never interrupted.

Three flavors (tests/workers/crash_resume.py): a custom loop with
tf.train.Checkpoint, the TF1 optimizer wrapper with a Saver, and Keras `fit`
with BackupAndRestore. For each, one run kills itself right after step 13 (work
since the last checkpoint is lost), the restarted run is killed from outside
while it runs (possibly inside a checkpoint write), and a third run finishes.
Every wait is bounded.
"""

import os
import re
import signal

import numpy as np
import pytest

from conftest import StreamedWorker

TIMEOUT = 300
# Steps per checkpoint (BackupAndRestore saves at the end of each 6-step epoch).
CHECKPOINT_EVERY = {"custom": 5, "tf1": 5, "keras": 6}
DIE_AT = 13
KILL_AFTER = 19
TOTAL_STEPS = 30


class Run(StreamedWorker):
  """tests/workers/crash_resume.py FLAVOR DIRECTORY FLAGS..."""

  def __init__(self, flavor, directory, *flags):
    super().__init__("crash_resume.py", directory, flavor, directory, *flags, timeout=TIMEOUT)

  def wait_for_progress(self, at_least):
    def reached(line):
      match = re.fullmatch(r"progress (\d+)", line)
      return match is not None and int(match.group(1)) >= at_least and int(match.group(1))
    return self.wait_for_line(reached, f"step {at_least}")

  def resumed(self):
    return int(next(line for line in self.lines if line.startswith("resumed")).split()[1])


def load(directory):
  with np.load(os.path.join(directory, "final.npz")) as data:
    return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["custom", "tf1", "keras"])
def test_killed_twice_and_resumed_ends_like_an_uninterrupted_run(flavor, tmp_path):
  reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
  reference_dir.mkdir()
  interrupted_dir.mkdir()
  reference = Run(flavor, str(reference_dir))  # runs alongside the interrupted chain

  # 1. Killed by itself right after step 13, before its next checkpoint.
  first = Run(flavor, str(interrupted_dir), "--die-at", str(DIE_AT))
  assert first.finish() == -signal.SIGKILL, first.output()
  assert first.resumed() == 0 and f"progress {DIE_AT}" in first.lines
  assert "done" not in first.lines

  # 2. Restarted, then killed from outside while it is running.
  second = Run(flavor, str(interrupted_dir), "--throttle-after", str(KILL_AFTER))
  second.wait_for_progress(KILL_AFTER)
  second.process.send_signal(signal.SIGKILL)
  assert second.finish() == -signal.SIGKILL, second.output()
  every = CHECKPOINT_EVERY[flavor]
  assert second.resumed() == DIE_AT // every * every, second.output()  # the last checkpoint
  assert "done" not in second.lines

  # 3. Restarted again: runs to the end from its latest checkpoint.
  third = Run(flavor, str(interrupted_dir))
  assert third.finish() == 0, third.output()
  assert third.resumed() >= KILL_AFTER // every * every, third.output()
  assert "done" in third.lines and f"progress {TOTAL_STEPS}" in third.lines

  assert reference.finish() == 0, reference.output()
  assert reference.resumed() == 0
  expected, got = load(str(reference_dir)), load(str(interrupted_dir))
  assert len(got) == len(expected) >= 2
  for e, g in zip(expected, got):
    assert e.dtype == g.dtype and e.shape == g.shape
    assert e.tobytes() == g.tobytes(), (e, g)
  assert not np.allclose(expected[0], load_initial_first_weight(), atol=1e-3)  # it trained


def load_initial_first_weight():
  rng = np.random.default_rng(1234)
  return (rng.standard_normal((8, 16)) * 0.3).astype(np.float32)
