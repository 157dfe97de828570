"""Library loading: what happens when the op library is missing, stale, corrupt,
or when a loadable copy sits in the current directory or on a search path.

Each case copies the package to a temporary directory, breaks the copy, and
imports it in a fresh Python process with that directory first on sys.path.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import fixed_loss_scale
from fixed_loss_scale import _loader

PACKAGE_DIR = os.path.dirname(os.path.abspath(fixed_loss_scale.__file__))
LIBRARY = _loader.LIBRARY_NAME
BUILD_INFO = _loader.BUILD_INFO_NAME
TF_VERSION = tf.__version__

# Run in the child: import the package, report what happened as one JSON line.
# A failed import must leave the ops unregistered (nothing loaded behind it).
IMPORT_AND_REPORT = """
import importlib.util, json, os, sys
sys.path.insert(0, {site!r})
spec = importlib.util.find_spec("fixed_loss_scale")
report = {{"origin": spec.origin}}
try:
  import fixed_loss_scale
  from fixed_loss_scale import _loader
  import tensorflow as tf
  report["library_path"] = _loader.library_path()
  report["value"] = float(tf.function(
      lambda: fixed_loss_scale.unscale_gradients([tf.constant(6.0)], 4.0))()[0])
except ImportError as error:
  report["error"] = str(error)
from tensorflow.python.framework import op_def_registry
report["registered"] = op_def_registry.get("FixedUnscaleGrads") is not None
with open("/proc/self/maps") as maps:
  report["mapped"] = sorted({{line.split()[-1] for line in maps if {library!r} in line}})
{extra}
print(json.dumps(report))
"""


def copy_package(root):
  """A copy of the installed package under root/site/fixed_loss_scale."""
  site = os.path.join(root, "site")
  shutil.copytree(PACKAGE_DIR, os.path.join(site, "fixed_loss_scale"),
                  ignore=shutil.ignore_patterns("__pycache__"))
  return site


def import_in_child(site, cwd, extra="", env=None, path_entry=None):
  """Imports the copy at `site` in a child process, `path_entry` (default: site)
  first on sys.path."""
  code = IMPORT_AND_REPORT.format(site=path_entry or site, library=LIBRARY,
                                  extra=textwrap.dedent(extra))
  child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  child_env.pop("PYTHONPATH", None)
  child_env.update(env or {})
  result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=child_env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]  # an ImportError, never a crash
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # The copy was the package imported, not the source tree or the installed one.
  origin = os.path.join(cwd, report["origin"])  # a relative origin is relative to cwd
  assert origin == os.path.join(site, "fixed_loss_scale", "__init__.py"), report
  return report


def assert_load_error(report, reason, built_for):
  message = report.get("error")
  assert message, f"the import succeeded: {report}"
  assert reason in message, message
  assert re.search(r"built for TensorFlow:\s+" + re.escape(built_for), message), message
  assert re.search(r"running TensorFlow:\s+" + re.escape(TF_VERSION), message), message
  assert _loader.REBUILD_COMMAND in message and "make clean && make" in message, message
  # Nothing was loaded: no op registered, no copy of the library mapped.
  assert not report["registered"] and not report["mapped"], report


def set_built_for(site, version):
  path = os.path.join(site, "fixed_loss_scale", BUILD_INFO)
  with open(path) as f:
    info = json.load(f)
  info["tf_version"] = version
  with open(path, "w") as f:
    json.dump(info, f)


@pytest.mark.slow
def test_missing_library_names_both_versions_and_the_rebuild_command(tmp_path):
  site = copy_package(str(tmp_path))
  os.remove(os.path.join(site, "fixed_loss_scale", LIBRARY))
  report = import_in_child(site, cwd=str(tmp_path))
  assert_load_error(report, "the op library is missing", built_for=TF_VERSION)
  assert os.path.join(site, "fixed_loss_scale", LIBRARY) in report["error"]


@pytest.mark.slow
@pytest.mark.parametrize("built_for", ["2.20.0", "1.15.5"])
def test_library_built_for_another_tensorflow_is_not_loaded(tmp_path, built_for):
  site = copy_package(str(tmp_path))
  set_built_for(site, built_for)
  report = import_in_child(site, cwd=str(tmp_path))
  assert_load_error(report, "built for another TensorFlow version", built_for=built_for)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "not json"])
def test_unreadable_build_info_counts_as_unknown_version(tmp_path, damage):
  site = copy_package(str(tmp_path))
  path = os.path.join(site, "fixed_loss_scale", BUILD_INFO)
  if damage == "missing":
    os.remove(path)
  else:
    with open(path, "w") as f:
      f.write("{not json" if damage == "not json" else "{}")
  report = import_in_child(site, cwd=str(tmp_path))
  assert_load_error(report, "built for another TensorFlow version", built_for="unknown")


@pytest.mark.slow
def test_corrupt_library_raises_import_error_not_a_crash(tmp_path):
  site = copy_package(str(tmp_path))
  with open(os.path.join(site, "fixed_loss_scale", LIBRARY), "wb") as f:
    f.write(b"\x7fELF this is not a shared library" * 10)
  report = import_in_child(site, cwd=str(tmp_path))
  assert_load_error(report, "the op library failed to load", built_for=TF_VERSION)


@pytest.mark.slow
def test_never_loads_a_copy_from_the_current_directory_or_a_search_path(tmp_path):
  """A working copy of the library in the current directory, on LD_LIBRARY_PATH
  and on sys.path is ignored: the package without its own library fails."""
  site = copy_package(str(tmp_path))
  decoy = tmp_path / "decoy"
  decoy.mkdir()
  shutil.move(os.path.join(site, "fixed_loss_scale", LIBRARY), decoy / LIBRARY)
  shutil.copy(os.path.join(site, "fixed_loss_scale", BUILD_INFO), decoy / BUILD_INFO)
  report = import_in_child(
      site, cwd=str(decoy), extra=f"sys.path.append({str(decoy)!r})",
      env={"LD_LIBRARY_PATH": str(decoy), "PATH": f"{decoy}:{os.environ.get('PATH', '')}"})
  assert_load_error(report, "the op library is missing", built_for=TF_VERSION)


@pytest.mark.slow
def test_loads_by_absolute_path_from_its_own_directory(tmp_path):
  """Imported through a relative sys.path entry, the package still loads its own
  library by absolute path, which stays right after a chdir."""
  site = copy_package(str(tmp_path))
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  report = import_in_child(site, cwd=str(tmp_path), path_entry="site", extra=f"""
      os.chdir({str(elsewhere)!r})
      report["after_chdir"] = _loader.library_path()
      report["after_chdir_value"] = float(tf.function(
          lambda: fixed_loss_scale.unscale_gradients([tf.constant(6.0)], 4.0))()[0])
  """)
  own = os.path.join(site, "fixed_loss_scale", LIBRARY)
  assert "error" not in report, report["error"]
  assert report["library_path"] == own and os.path.isabs(report["library_path"])
  assert report["after_chdir"] == own
  assert report["mapped"] == [os.path.realpath(own)]  # exactly one copy, this one
  assert report["value"] == 1.5 and report["after_chdir_value"] == 1.5


def test_this_process_mapped_exactly_the_package_library():
  assert os.path.isabs(_loader.library_path())
  assert _loader.library_path() == os.path.join(PACKAGE_DIR, LIBRARY)
  with open("/proc/self/maps") as maps:
    mapped = {line.split()[-1] for line in maps if LIBRARY in line}
  assert mapped == {os.path.realpath(_loader.library_path())}


def test_load_ops_twice_returns_the_same_module():
  first = _loader.load_ops()
  assert _loader.load_ops() is first
  # TensorFlow itself returns the loaded library again for the same path.
  again = tf.load_op_library(_loader.library_path())
  out = again.fixed_unscale_grads([tf.constant([6.0])], loss_scale=4.0)
  assert out[0].numpy().tolist() == [1.5]


@pytest.mark.slow
def test_reloading_and_reimporting_the_package_is_harmless(tmp_path):
  """importlib.reload of every module (as notebook autoreload does) and a fresh
  import after clearing sys.modules: no error, one library, ops and gradients work."""
  site = copy_package(str(tmp_path))
  report = import_in_child(site, cwd=str(tmp_path), extra="""
      import importlib
      import fixed_loss_scale.keras, fixed_loss_scale.optimizer
      names = sorted(n for n in sys.modules if n.startswith("fixed_loss_scale"))
      for name in names + ["fixed_loss_scale"]:
        importlib.reload(sys.modules[name])
      for name in names:
        del sys.modules[name]
      import fixed_loss_scale as again
      report["reloaded"] = names
      report["reimported_library"] = again._loader.library_path()
      x = tf.Variable([4.0, -2.0])
      with tf.GradientTape() as tape:
        y = tf.function(lambda: again.scale_loss(tf.reduce_sum(x * x), 8.0))()
      grads = tape.gradient(y, x)
      report["grads"] = tf.function(lambda: again.unscale_gradients([grads], 8.0))()[0].numpy().tolist()
      with open("/proc/self/maps") as maps:
        report["mapped"] = sorted({line.split()[-1] for line in maps if "_fixed_loss_scale_ops" in line})
  """)
  assert "error" not in report, report["error"]
  assert "fixed_loss_scale.ops" in report["reloaded"] and len(report["reloaded"]) >= 6
  assert report["grads"] == [8.0, -4.0]  # d(sum x^2)/dx, scaled by 8 then unscaled
  assert report["mapped"] == [os.path.realpath(report["reimported_library"])]
