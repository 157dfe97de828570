"""A benchmark function called in a fresh Python process.

Two measurements run away from the main run: the peak memory, with an
allocator chosen by environment variable before TensorFlow starts, and the op
times, which slow down with what a process has built before them. `call` runs
`function(**kwargs)` in a new interpreter (`python -c`, importing the function
from its module) with extra environment variables, and returns its JSON-able
result. The child's stdout is discarded, so that the table on ours stays the
only thing there; its progress shares our stderr.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile

# The root of the repository, holding the benchmarks package: on the child's
# sys.path, whatever its working directory.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD_CODE = "import sys; from benchmarks.child import run; run(*sys.argv[1:])"


def call(function, kwargs, env=None):
  """function(**kwargs) in a fresh process with `env` added to ours: what it
  returned, or a string saying why nothing came back."""
  module, name = function.__module__, function.__qualname__
  path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "child.json")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE, module, name, json.dumps(kwargs), out],
        env={**os.environ, "PYTHONPATH": path, **(env or {})}, check=False,
        stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
      return f"child process exited {proc.returncode}"
    with open(out) as f:
      return json.load(f)


def run(module, name, kwargs_json, out):
  """The child's side of `call`: module.name(**kwargs), its result as JSON in `out`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.get_logger().setLevel("ERROR")  # as cli.main does in the parent
  result = getattr(importlib.import_module(module), name)(**json.loads(kwargs_json))
  with open(out, "w") as f:
    json.dump(result, f)
