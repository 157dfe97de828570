"""The batches and first weights of the SIGKILL-and-resume workers
(crash_resume.py, dynamic_resume.py).

A batch is a function of its step index alone, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted one sees.
"""

import numpy as np

BATCH = 16


def data(step):
  rng = np.random.default_rng(step)
  x = rng.standard_normal((BATCH, 8)).astype(np.float32)
  y = (x @ np.linspace(-1, 1, 8 * 2).reshape(8, 2) + 0.1).astype(np.float32)
  return x, y


def initial_weights(seed):
  """The two weight matrices (8 x 16, 16 x 2) of the workers' model."""
  rng = np.random.default_rng(seed)
  return [(rng.standard_normal((8, 16)) * 0.3).astype(np.float32),
          (rng.standard_normal((16, 2)) * 0.3).astype(np.float32)]
