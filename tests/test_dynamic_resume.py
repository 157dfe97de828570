"""SIGKILL and resume with a dynamic loss scale.

A float16 run with fixed_loss_scale.DynamicLossScale and
tf.train.CheckpointManager (tests/workers/dynamic_resume.py) is killed with
SIGKILL from outside while it runs, past a checkpoint at which the scale has
moved from its initial value and the good-steps counter is not zero. Restarted,
it restores that checkpoint: the scale and counter it reports equal those an
uninterrupted run had at that step, and from there its whole trajectory --
scale, counter, which steps were applied, a digest of the weights and
velocities after every step -- and its final state equal the uninterrupted
run's, bit for bit. Every wait is bounded.
"""

import os
import re
import signal

import numpy as np
import pytest

from conftest import StreamedWorker

from workers import dynamic_resume

TIMEOUT = 300
KILL_AFTER = 13
LINE = re.compile(r"(resumed|progress) (\d+) scale (\S+) good (\d+)(.*)")


class Run(StreamedWorker):
  """tests/workers/dynamic_resume.py DIRECTORY FLAGS..."""

  def __init__(self, directory, *flags):
    super().__init__("dynamic_resume.py", directory, directory, *flags, timeout=TIMEOUT)

  def wait_for_progress(self, at_least):
    def reached(line):
      match = LINE.fullmatch(line)
      return match is not None and match.group(1) == "progress" and int(
          match.group(2)) >= at_least
    self.wait_for_line(reached, f"step {at_least}")

  def parsed(self, kind):
    """{step: (scale, good steps, rest of the line)} of the `kind` lines."""
    out = {}
    for line in self.lines:
      match = LINE.fullmatch(line)
      if match and match.group(1) == kind:
        out[int(match.group(2))] = (float(match.group(3)), int(match.group(4)),
                                    match.group(5).strip())
    return out


def load(directory):
  with np.load(os.path.join(directory, "final.npz")) as data:
    return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_killed_after_a_scale_change_and_resumed_continues_like_an_uninterrupted_run(tmp_path):
  reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
  reference_dir.mkdir()
  interrupted_dir.mkdir()
  reference = Run(str(reference_dir))  # runs alongside the interrupted one

  first = Run(str(interrupted_dir), "--throttle-after", str(KILL_AFTER))
  first.wait_for_progress(KILL_AFTER)
  first.process.send_signal(signal.SIGKILL)
  assert first.finish() == -signal.SIGKILL, first.output()
  assert "done" not in first.lines

  second = Run(str(interrupted_dir))
  assert second.finish() == 0, second.output()
  assert reference.finish() == 0, reference.output()
  expected = reference.parsed("progress")
  assert sorted(expected) == list(range(1, dynamic_resume.STEPS + 1))
  assert reference.parsed("resumed") == {0: (dynamic_resume.INITIAL_SCALE, 0, "")}

  # Before the kill the run was the reference's; it resumes from a checkpoint it
  # wrote (steps after it, usually some, are done again).
  killed_progress = first.parsed("progress")
  assert killed_progress == {k: expected[k] for k in killed_progress}, first.output()
  (resumed_at, (scale, good, _)), = second.parsed("resumed").items()
  every = dynamic_resume.CHECKPOINT_EVERY
  assert resumed_at % every == 0 and KILL_AFTER // every * every <= resumed_at, second.output()
  assert resumed_at <= max(killed_progress) + every, (resumed_at, max(killed_progress))
  print(f"killed after step {max(killed_progress)}, resumed from step {resumed_at}")

  # The restored scale and counter are those at the checkpoint, which had moved.
  assert (scale, good) == expected[resumed_at][:2], (resumed_at, scale, good)
  assert scale != dynamic_resume.INITIAL_SCALE and good > 0, (scale, good)

  # The continued trajectory is the uninterrupted one, step by step.
  continued = second.parsed("progress")
  assert sorted(continued) == list(range(resumed_at + 1, dynamic_resume.STEPS + 1))
  assert continued == {k: expected[k] for k in continued}
  scales = [expected[k][0] for k in sorted(continued)]
  assert max(scales) > min(scales)  # the scale still moves after the restore
  got, want = load(str(interrupted_dir)), load(str(reference_dir))
  assert len(got) == len(want) == 6
  for g, w in zip(got, want):
    assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), (g, w)
