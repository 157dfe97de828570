"""The layers of tf_ops/ hold (docs/DESIGN.md, "Layout"): nothing under tf_ops/core/
includes TensorFlow or its bundled libraries, and the core's CPU sources
compile with g++ and no include path but the checkout's, so the core stays
usable and testable without TensorFlow (the sanitizer test, the host
emulation and the GPU check build it that way)."""

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "tf_ops", "core")
# What TensorFlow's include directory brings: its own headers and the libraries
# it bundles.
TF_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](tensorflow/|third_party/|Eigen/|unsupported/Eigen|'
                        r'absl/|google/protobuf|tsl/|xla/)', re.MULTILINE)


def core_files():
  files = [path for pattern in ("*.h", "*.cc", "*.cu")
           for path in glob.glob(os.path.join(CORE, "**", pattern), recursive=True)]
  assert len(files) >= 10, files  # the glob found the core
  return sorted(files)


def test_no_core_file_includes_tensorflow():
  offenders = {}
  for path in core_files():
    with open(path) as f:
      found = TF_INCLUDE.findall(f.read())
    if found:
      offenders[os.path.relpath(path, ROOT)] = found
  assert not offenders, offenders


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_core_cpu_sources_compile_without_tensorflow(tmp_path):
  """Each .cc of the core compiles with `-I <checkout>` alone (no TensorFlow
  include path, no defines)."""
  sources = [path for path in core_files() if path.endswith(".cc")]
  for source in sources:
    result = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-I", ROOT,
                             source], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, f"{source}:\n{result.stderr[-3000:]}"
