"""The timing method: arms interleaved call by call, statistics within rounds.

Every timed comparison of the benchmark goes through `interleaved` (the
gradient-set scenarios, the sweep, the optimizer steps), and every ratio or
difference it reports is taken within a round (`paired`), with `quartiles` as
its spread; docs/BENCHMARKS.md, "Method", says why.
"""

import time

import numpy as np


def call_time(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved(fns, rounds, reps, min_seconds=0.0, max_rounds=60):
  """{name: [median of its `reps` calls, one per round]}. Within a round the arms
  take turns call by call, in an order rotated every turn, so that arms compared
  in one round (see `paired`) ran milliseconds apart and the drift of a shared
  machine's memory bandwidth hits them alike. At least `rounds` rounds, and
  more (up to `max_rounds`) until `min_seconds` have passed: cheap scenarios,
  whose small differences need more samples to rise above the noise, get them."""
  names = list(fns)
  per_round = {n: [] for n in names}
  turn = 0
  start = time.perf_counter()
  completed = 0
  while completed < rounds or (completed < max_rounds and
                               time.perf_counter() - start < min_seconds):
    completed += 1
    samples = {n: [] for n in names}
    for _ in range(reps):
      shift = turn % len(names)
      for name in names[shift:] + names[:shift]:
        samples[name].append(call_time(fns[name]))
      turn += 1
    for name in names:
      per_round[name].append(float(np.median(samples[name])))
  return per_round


def paired(f, *series):
  """Median over rounds of f(values of one round): a difference or ratio taken
  within each round, where arms ran back to back, so that the slow drift of a
  shared machine's memory bandwidth between rounds cancels out."""
  return float(np.median([f(*values) for values in zip(*series)]))


def quartiles(values):
  """[25th, 75th] percentile: the spread reported beside a median over rounds."""
  return [float(q) for q in np.percentile(values, [25, 75])]
