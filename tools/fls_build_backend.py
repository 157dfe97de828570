"""PEP 517 build backend for tf-fixed-loss-scale (pyproject.toml names it).

pip, `python -m build`, `make wheel` and `make sdist` all come through here.
Wheels (and editable installs) first build the op library the way `make` does:
`./configure.sh` with PYTHON set to the Python running this backend, then
`make`, in the tree being built and nowhere else. Then setuptools packs
python/fixed_loss_scale with the library and `_build_info.json`, and the wheel
requires the TensorFlow minor version the library was built against, from the
version built for: `tensorflow>=2.21.0,<2.22`. An sdist holds the sources only
and requires plain `tensorflow`: it builds for whichever TensorFlow the
environment has.

Which TensorFlow is built against:
  - an isolated build (pip's default): the one pip installs into the build
    environment, from get_requires_for_build_wheel below: the newest
    `tensorflow` release for this Python (with pip itself where
    FLS_INSTALL_CUDA_TOOLCHAIN=1 lets the build download the CUDA toolchain);
  - --no-build-isolation: the one already installed beside this Python.

A build through here changes nothing outside the tree it builds: it runs
configure.sh with FLS_INSTALL_CUDA_TOOLCHAIN=0, so the GPU kernels are built
only with a CUDA toolchain that is already there (clang-19 with the CUDA 12.9
folder .cuda12/ that `make` assembles, or an nvcc 12.1+); with none, the CPU
kernels only, and the build's output says how to add the GPU ones (`make`, by
contrast, installs clang-19 as root and downloads NVIDIA's wheels).

Environment: FLS_WITH_CUDA=0 skips the CUDA kernels even where a toolchain is
there; FLS_INSTALL_CUDA_TOOLCHAIN=1 lets configure.sh install what the clang
route lacks, as `make` does; CXX names the C++ compiler (default g++).

A missing make, compiler, setuptools or TensorFlow ends the build with one line
that says what to install, not a traceback.
"""

import json
import os
import re
import shutil
import subprocess
import sys

PROJECT = "tf-fixed-loss-scale"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "python", "fixed_loss_scale")
BUILD_INFO = os.path.join(PACKAGE_DIR, "_build_info.json")
CONFIG_MK = os.path.join(ROOT, "config.mk")
# setup.py reads the wheel's TensorFlow requirement from here (plain `tensorflow`
# when unset, as for an sdist).
REQUIREMENT_ENV = "FLS_TENSORFLOW_REQUIREMENT"
INSTALL_ENV = "FLS_INSTALL_CUDA_TOOLCHAIN"


def _say(message):
  print(f"{PROJECT}: {message}", flush=True)


def _fail(message):
  """Ends the build with one line (SystemExit prints no traceback)."""
  sys.stdout.flush()
  raise SystemExit(f"{PROJECT}: {message}")


def _setuptools_backend():
  try:
    from setuptools import build_meta  # pylint: disable=import-outside-toplevel
  except ImportError:
    _fail(f"setuptools is missing from {sys.executable}: pip install setuptools wheel "
          "(or build without --no-build-isolation)")
  return build_meta


# ---- checks before building -------------------------------------------------------

def _tensorflow_distribution():
  """The installed distribution that provides `import tensorflow`, or None.

  Usually `tensorflow`; `tensorflow-cpu` and friends provide the same module.
  """
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("tensorflow") is None:
    return None
  names = importlib.metadata.packages_distributions().get("tensorflow") or []
  if "tensorflow" in names or not names:
    return "tensorflow"
  return names[0]


def _tensorflow_location():
  """The directory of the `tensorflow` package this Python imports (its TF_LIBDIR)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("tensorflow")
  locations = list(spec.submodule_search_locations or []) if spec else []
  return locations[0] if locations else None


def _check_tools():
  if shutil.which("make") is None:
    _fail("`make` not found: install GNU make (Debian/Ubuntu: apt-get install make)")
  cxx = ((os.environ.get("CXX") or "").split() or ["g++"])[0]
  if shutil.which(cxx) is None:
    _fail(f"no C++ compiler: `{cxx}` not found; install g++ "
          "(Debian/Ubuntu: apt-get install g++) or set CXX to a C++17 compiler")
  if _tensorflow_distribution() is None:
    _fail(f"TensorFlow is not installed for {sys.executable}, and the op library is built "
          "against its headers: pip install tensorflow there first, or build without "
          "--no-build-isolation so that pip installs it into the build environment")


# ---- configure.sh + make ---------------------------------------------------------------

def _read_config():
  """config.mk's `KEY := value` lines, or {} when there is none."""
  config = {}
  try:
    with open(CONFIG_MK) as f:
      for line in f:
        key, sep, value = line.partition(":=")
        if sep:
          config[key.strip()] = value.strip()
  except OSError:
    pass
  return config


def _installed_tensorflow_version(distribution):
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _needs_configure(distribution):
  """Why configure.sh must run again, or None to keep config.mk.

  Rerunning it rewrites config.mk and so rebuilds every object; `make wheel`
  and `make install` build against the configuration `make` just used.
  """
  config = _read_config()
  if not config:
    return "no config.mk yet"
  if not os.path.isfile(BUILD_INFO):
    return "no _build_info.json yet"
  if config.get("PYTHON_BIN") != os.path.abspath(sys.executable):
    return f"config.mk is for {config.get('PYTHON_BIN')}, building for {sys.executable}"
  installed = _installed_tensorflow_version(distribution)
  if installed is not None and config.get("TF_VERSION") != installed:
    return f"config.mk is for TensorFlow {config.get('TF_VERSION')}, {installed} is installed"
  # Same Python, another TensorFlow: pip's isolated build environment puts its
  # own TensorFlow in front of the interpreter's.
  location = _tensorflow_location()
  if location and os.path.realpath(config.get("TF_LIBDIR", "")) != os.path.realpath(location):
    return f"config.mk is for the TensorFlow in {config.get('TF_LIBDIR')}, building with {location}"
  wanted = os.environ.get("FLS_WITH_CUDA")
  if wanted == "0" and config.get("WITH_CUDA") != "0":
    return "FLS_WITH_CUDA=0 and config.mk has the CUDA kernels"
  return None


def _installs_cuda_toolchain():
  return os.environ.get(INSTALL_ENV) == "1" and os.environ.get("FLS_WITH_CUDA") != "0"


def _child_env():
  env = dict(os.environ, PYTHON=sys.executable)
  env[INSTALL_ENV] = "1" if _installs_cuda_toolchain() else "0"
  # A `make wheel` or `make install` above us must not pass its own command-line
  # variables or jobserver to this make.
  for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
    env.pop(name, None)
  return env


GPU_KERNELS_HOWTO = (
    "CPU kernels only: no CUDA toolchain is there (clang-19 with .cuda12/, or nvcc 12.1+), "
    f"and this build installs none. For the GPU kernels, build again with {INSTALL_ENV}=1 "
    "(it installs clang-19 with apt-get when root and downloads NVIDIA's CUDA 12.9 wheels into "
    ".cuda12/ of the tree built), or with an nvcc 12.1+ on PATH (or NVCC=/path/to/nvcc)")


def _run(command, what):
  sys.stdout.flush()
  result = subprocess.run(command, cwd=ROOT, env=_child_env(), check=False)
  if result.returncode != 0:
    _fail(f"{what} failed (exit {result.returncode}); its messages are above")


def _build_library():
  """configure.sh (when needed), then make: the op library and _build_info.json."""
  _check_tools()
  distribution = _tensorflow_distribution()
  reason = _needs_configure(distribution)
  if reason:
    _say(f"./configure.sh ({reason})")
    _run(["./configure.sh"], "./configure.sh")
  else:
    _say("config.mk is up to date for this Python and TensorFlow; not reconfiguring")
  config = _read_config()
  kernels = ("CPU and CUDA " + config.get("CUDA_VERSION", "") if config.get("WITH_CUDA") == "1"
             else "CPU")
  jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  _say(f"make -j{jobs or 1}: the op library ({kernels} kernels) for TensorFlow "
       f"{config.get('TF_VERSION')}")
  _run(["make", f"-j{jobs or 1}", f"PYTHON={sys.executable}", "all"], "make")
  if config.get("WITH_CUDA") != "1" and os.environ.get("FLS_WITH_CUDA") != "0":
    _say(GPU_KERNELS_HOWTO)
  os.environ[REQUIREMENT_ENV] = tensorflow_requirement(distribution)
  _say(f"built {os.path.relpath(os.path.join(PACKAGE_DIR, '_fixed_loss_scale_ops.so'), ROOT)}; "
       f"the wheel requires {os.environ[REQUIREMENT_ENV]}")


def tensorflow_requirement(distribution="tensorflow", build_info=BUILD_INFO):
  """`tensorflow>=X.Y.Z,<X.(Y+1)` for the TensorFlow the library was built for.

  The range stays within the minor version built for, so pip refuses to pair
  the wheel with another minor version; it starts at the exact version built
  for, so pip never keeps an older patch release than that.
  """
  with open(build_info) as f:
    version = json.load(f)["tf_version"]
  match = re.match(r"(\d+)\.(\d+)", version)
  if match is None:
    _fail(f"cannot read a TensorFlow version from {version!r} in {build_info}")
  major, minor = int(match.group(1)), int(match.group(2))
  lower = version if re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", version) else f"{major}.{minor}"
  return f"{distribution}>={lower},<{major}.{minor + 1}"


def _remove_stale_setuptools_output():
  """Old build/lib or egg-info contents would otherwise end up in the new wheel or sdist."""
  build = os.path.join(ROOT, "build")
  if os.path.isdir(build):
    for name in os.listdir(build):
      if name == "lib" or name.startswith("bdist."):
        shutil.rmtree(os.path.join(build, name), ignore_errors=True)
  shutil.rmtree(os.path.join(ROOT, "python", "tf_fixed_loss_scale.egg-info"), ignore_errors=True)


# ---- PEP 517 / PEP 660 hooks -------------------------------------------------------------
# prepare_metadata_for_build_wheel is left out on purpose: the wheel's
# requirements depend on the TensorFlow the library is built against, so the
# frontend reads them from the built wheel (PEP 517's fallback), built once.

def _library_requires():
  """What building the library needs in an isolated build environment:
  TensorFlow, and pip where the build may set up the CUDA toolchain
  (tools/cuda12_toolchain.sh fetches NVIDIA's CUDA 12 wheels with
  `$PYTHON -m pip download`; pip's build environments hold no pip)."""
  return ["tensorflow"] + (["pip"] if _installs_cuda_toolchain() else [])


def get_requires_for_build_wheel(config_settings=None):
  return list(_setuptools_backend().get_requires_for_build_wheel(config_settings)) + _library_requires()


def get_requires_for_build_editable(config_settings=None):
  return (list(_setuptools_backend().get_requires_for_build_editable(config_settings))
          + _library_requires())


def get_requires_for_build_sdist(config_settings=None):
  return list(_setuptools_backend().get_requires_for_build_sdist(config_settings))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
  _build_library()
  backend = _setuptools_backend()
  _remove_stale_setuptools_output()
  _say("packing the wheel")
  name = backend.build_wheel(wheel_directory, config_settings, None)
  _say(f"wheel: {name}")
  return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
  _build_library()
  backend = _setuptools_backend()
  _remove_stale_setuptools_output()
  return backend.build_editable(wheel_directory, config_settings, None)


def build_sdist(sdist_directory, config_settings=None):
  backend = _setuptools_backend()
  os.environ.pop(REQUIREMENT_ENV, None)
  _remove_stale_setuptools_output()
  name = backend.build_sdist(sdist_directory, config_settings)
  _say(f"sdist: {name}")
  return name


def main(argv):
  """`python tools/fls_build_backend.py sdist|wheel DIR` (what `make sdist` runs)."""
  if len(argv) != 3 or argv[1] not in ("sdist", "wheel"):
    raise SystemExit(f"usage: {argv[0]} sdist|wheel OUTPUT_DIR")
  output = os.path.abspath(argv[2])
  os.makedirs(output, exist_ok=True)
  os.chdir(ROOT)
  hook = build_sdist if argv[1] == "sdist" else build_wheel
  print(os.path.join(output, hook(output)))


if __name__ == "__main__":
  main(sys.argv)
