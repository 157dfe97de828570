"""pip builds a working package through configure.sh + make, and the
wheel requires the TensorFlow minor version its library was built for.

Everything is built from a fresh `git clone` of this repository's HEAD, never
from the repository itself: pip builds a local directory in place, and the
repository's config.mk, build/ and library are what the rest of the suite
uses. Builds are CPU-only and `--no-build-isolation`, in venvs that see this
interpreter's site-packages (its TensorFlow) through a .pth file, so nothing is
downloaded. Two builds in all, one per module fixture: `pip install <clone>`
(whose tree `make wheel` then packs without rebuilding) and `pip install
<sdist>`. The first runs as pip's default does (no FLS_WITH_CUDA) where no CUDA
toolchain it may use is there and apt-get refuses: it must install nothing and
say how to add the GPU kernels. The sdist's is FLS_WITH_CUDA=0.

The isolated build (pip's default, which installs TensorFlow into a build
environment: a ~600 MB download) is checked by its declared requirements here;
FLS_TEST_ISOLATED_BUILD=1 also runs it (needs the network).
"""

import email.parser
import glob
import json
import os
import re
import site
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "tf-fixed-loss-scale"
BUILD_TIMEOUT = 1200

TF_MAJOR, TF_MINOR = (int(part) for part in tf.__version__.split(".")[:2])

# Run in a venv: the installed package, from that venv, runs both ops in a
# tf.function (the custom ops, not the eager fallback), checked against numpy.
CHECK_OPS = textwrap.dedent("""
    import importlib.metadata, json, os, sys
    import numpy as np
    import tensorflow as tf
    import fixed_loss_scale as fls
    assert fls.__file__.startswith(sys.prefix), (fls.__file__, sys.prefix)
    scale = 1024.0
    grads = [np.array([8.0, -3.5, 1e-3, 6e4], np.float32),
             np.array([[0.5, -2.0], [7e-4, 1e3]], np.float16)]
    loss = np.float32(0.3)
    step = tf.function(lambda loss, grads: (fls.ops.fixed_scale_loss(loss, scale),
                                            fls.ops.fixed_unscale_grads(grads, scale)))
    concrete = step.get_concrete_function(
        tf.TensorSpec([], tf.float32),
        [tf.TensorSpec(g.shape, tf.as_dtype(g.dtype)) for g in grads])
    types = {op.type for op in concrete.graph.get_operations()}
    assert {"FixedScaleLoss", "FixedUnscaleGrads"} <= types, sorted(types)
    scaled, unscaled = step(tf.constant(loss), [tf.constant(g) for g in grads])
    reciprocal = np.float32(1) / np.float32(scale)
    assert scaled.numpy() == loss * np.float32(scale), scaled
    for got, g in zip(unscaled, grads):
      want = (g.astype(np.float32) * reciprocal).astype(g.dtype)
      assert got.dtype.as_numpy_dtype == g.dtype
      np.testing.assert_array_equal(got.numpy(), want)
    with open(os.path.join(os.path.dirname(fls.__file__), "_build_info.json")) as f:
      built_for = json.load(f)["tf_version"]
    print(json.dumps({"file": fls.__file__, "version": fls.__version__,
                      "built_for": built_for, "running": tf.__version__,
                      "requires": importlib.metadata.requires("%s")}))
""" % PROJECT)


def _env(**extra):
  env = dict(os.environ, FLS_WITH_CUDA="0", TF_CPP_MIN_LOG_LEVEL="3",
             PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
  for name in ("PYTHONPATH", "FLS_INSTALL_CUDA_TOOLCHAIN", "FLS_CUDA12_PATH", "NVCC",
               "CUDA_HOME", "CLANG", "FLS_CUDA_TOOLCHAIN"):
    env.pop(name, None)
  env.update(extra)
  return env


def _no_cuda_toolchain_env(stubs):
  """pip's default environment (no FLS_WITH_CUDA) on a machine with no CUDA
  toolchain this package may use, wherever the test runs: first on PATH, an
  apt-get that refuses (exit 1) and writes stubs/apt-get.called, and an nvcc
  of CUDA 11.8 (older than the 12.1 configure.sh requires), found before any
  real nvcc. clang-19, if installed, has no CUDA 12.9 folder in a fresh clone."""
  os.makedirs(str(stubs), exist_ok=True)
  scripts = {"apt-get": f'echo "$@" >> {stubs}/apt-get.called\nexit 1\n',
             "nvcc": 'case "$1" in --version) echo "Cuda compilation tools, release 11.8, '
                     'V11.8.89";; esac\n'}
  for name, body in scripts.items():
    path = os.path.join(str(stubs), name)
    with open(path, "w") as f:
      f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
  env = _env(PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}")
  env.pop("FLS_WITH_CUDA")
  return env


def _run(command, timeout=BUILD_TIMEOUT, check=True, **kwargs):
  result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=kwargs.pop("env", None) or _env(), **kwargs)
  if check:
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
  return result


def _venv(path, reuse_site_packages=True):
  """A venv without pip; with reuse_site_packages, it sees this interpreter's
  site-packages (TensorFlow, numpy, setuptools, pip) after its own.

  (`--system-site-packages` would give the base interpreter's, which has no
  TensorFlow when it lives in a venv, as in .venv.)
  """
  _run([sys.executable, "-m", "venv", "--without-pip", str(path)], timeout=120)
  python = os.path.join(str(path), "bin", "python")
  if reuse_site_packages:
    own = _run([python, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    with open(os.path.join(own, "_reuse_test_runner_site_packages.pth"), "w") as f:
      f.write("\n".join(site.getsitepackages()) + "\n")
  return python


def _pip(python, *args, **kwargs):
  """pip (this interpreter's) run for the venv of `python`."""
  return _run([sys.executable, "-m", "pip", "--python", python, *args], **kwargs)


def _check_ops(python, cwd):
  result = _run([python, "-c", CHECK_OPS], timeout=300, cwd=str(cwd))
  return json.loads(result.stdout.strip().splitlines()[-1])


def _built_requirement(requires):
  (tf_requirement,) = [r for r in requires if re.match(r"tensorflow\b", r)]
  return tf_requirement


def _assert_pins_this_minor_version(requirement):
  """The range holds the version running here and nothing outside its minor."""
  from pip._vendor.packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel
  parsed = Requirement(requirement)
  assert parsed.name == "tensorflow", requirement
  assert parsed.specifier.contains(tf.__version__), requirement
  for outside in (f"{TF_MAJOR}.{TF_MINOR + 1}.0", f"{TF_MAJOR}.{TF_MINOR - 1}.99",
                  f"{TF_MAJOR + 1}.{TF_MINOR}.0", f"{TF_MAJOR}.{TF_MINOR + 1}.0rc0"):
    assert not parsed.specifier.contains(outside, prereleases=True), (requirement, outside)


# ---- module fixtures: one clone, two builds -----------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
  return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def clone(work):
  source = work / "src"
  _run(["git", "clone", "--quiet", ROOT, str(source)], timeout=300)
  return source


@pytest.fixture(scope="module")
def installed_from_clone(work, clone):
  """`pip install --no-build-isolation <fresh clone>` in a new venv, in
  _no_cuda_toolchain_env."""
  python = _venv(work / "venv-clone")
  result = _run([python, "-m", "pip", "install", "-v", "--no-build-isolation", str(clone)],
                env=_no_cuda_toolchain_env(work / "stubs"))
  return python, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(work, clone, installed_from_clone):
  """`make wheel` in the clone pip just built: the same backend, no rebuild."""
  python, _ = installed_from_clone
  library = clone / "python" / "fixed_loss_scale" / "_fixed_loss_scale_ops.so"
  built_at = library.stat().st_mtime_ns
  wheelhouse = work / "wheelhouse"
  _run(["make", "-C", str(clone), "wheel", f"PYTHON={python}", f"WHEEL_DIR={wheelhouse}"])
  assert library.stat().st_mtime_ns == built_at, "make wheel rebuilt the library pip built"
  (path,) = glob.glob(str(wheelhouse / "*.whl"))
  return path


@pytest.fixture(scope="module")
def sdist(work, clone, installed_from_clone):
  """`make sdist` in the clone, after a build: its outputs must stay out."""
  _run(["make", "-C", str(clone), "sdist", f"PYTHON={sys.executable}",
        f"SDIST_DIR={work / 'sdist'}"], timeout=300)
  (path,) = glob.glob(str(work / "sdist" / "*.tar.gz"))
  return path


# ---- pip install <fresh clone> -------------------------------------------------------

@pytest.mark.slow
def test_pip_install_of_a_fresh_clone_runs_the_ops(work, installed_from_clone):
  python, output = installed_from_clone
  # The build's progress is readable in pip's -v output.
  steps = [line.strip() for line in output.splitlines() if line.strip().startswith(f"{PROJECT}: ")]
  for step in ("./configure.sh", "make -j", "the wheel requires tensorflow"):
    assert any(step in line for line in steps), steps
  report = _check_ops(python, work)
  assert report["built_for"] == report["running"] == tf.__version__
  _assert_pins_this_minor_version(_built_requirement(report["requires"]))


@pytest.mark.slow
def test_pip_build_installs_nothing_and_says_how_to_add_the_gpu_kernels(work, clone,
                                                                         installed_from_clone):
  python, output = installed_from_clone
  assert not (work / "stubs" / "apt-get.called").exists(), "the pip build called apt-get"
  assert not (clone / ".cuda12").exists(), "the pip build downloaded the CUDA 12 wheels"
  assert "assembling" not in output, output
  config = (clone / "config.mk").read_text()
  assert re.search(r"^WITH_CUDA := 0$", config, re.M), config
  site_packages = _run([python, "-c", "import fixed_loss_scale, os; "
                        "print(os.path.dirname(fixed_loss_scale.__file__))"],
                       cwd=str(work)).stdout.strip()
  with open(os.path.join(site_packages, "_build_info.json")) as f:
    assert json.load(f)["cuda_version"] == ""  # the installed library is CPU-only
  howto = [line for line in output.splitlines() if f"{PROJECT}: CPU kernels only" in line]
  assert len(howto) == 1, output
  assert "FLS_INSTALL_CUDA_TOOLCHAIN=1" in howto[0] and "nvcc 12.1+" in howto[0], howto


def test_toolchain_script_installs_nothing_when_told(tmp_path):
  """tools/cuda12_toolchain.sh with FLS_INSTALL_CUDA_TOOLCHAIN=0 and no
  assembled folder: exit 1 with the reason, no apt-get (the stub records any
  call), nothing downloaded; whether or not clang-19 is installed here."""
  env = _no_cuda_toolchain_env(tmp_path / "stubs")
  destination = tmp_path / "cuda12"
  env.update(FLS_INSTALL_CUDA_TOOLCHAIN="0", FLS_CUDA12_PATH=str(destination),
             CLANG=str(tmp_path / "no-such-clang++"))
  result = _run([os.path.join(ROOT, "tools", "cuda12_toolchain.sh")], timeout=60, check=False,
                env=env)
  assert result.returncode == 1, result
  assert result.stdout == "", result.stdout  # nothing for configure.sh to eval
  assert "assembling" not in result.stderr, result.stderr
  assert ("no clang++-19" in result.stderr
          or "FLS_INSTALL_CUDA_TOOLCHAIN=0 downloads none" in result.stderr), result.stderr
  assert not (tmp_path / "stubs" / "apt-get.called").exists()
  assert not destination.exists()


# ---- the wheel ---------------------------------------------------------------------------

@pytest.mark.slow
def test_wheel_holds_the_runtime_package_and_the_library_only(clone, wheel):
  names = zipfile.ZipFile(wheel).namelist()
  modules = {f"fixed_loss_scale/{os.path.basename(p)}"
             for p in glob.glob(str(clone / "python" / "fixed_loss_scale" / "*.py"))}
  built = {"fixed_loss_scale/_fixed_loss_scale_ops.so", "fixed_loss_scale/_build_info.json"}
  package = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert package == modules | built, sorted(package ^ (modules | built))
  assert re.search(r"-cp3\d+-cp3\d+-linux_x86_64\.whl$", wheel), wheel


@pytest.mark.slow
def test_wheel_metadata_pins_the_tensorflow_minor_version(clone, wheel):
  with zipfile.ZipFile(wheel) as archive:
    (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    build_info = json.loads(archive.read("fixed_loss_scale/_build_info.json"))
  version = {}
  exec((clone / "python" / "fixed_loss_scale" / "_version.py").read_text(), version)  # pylint: disable=exec-used
  assert metadata["Name"] == PROJECT
  assert metadata["Version"] == version["__version__"]
  requires = metadata.get_all("Requires-Dist")
  assert build_info["tf_version"] == tf.__version__
  _assert_pins_this_minor_version(_built_requirement(requires))
  assert "numpy" in requires


def _stub_wheel(directory, name, version):
  """An empty distribution named `name`: enough for pip's resolver, offline."""
  path = os.path.join(str(directory), f"{name}-{version}-py3-none-any.whl")
  info = f"{name}-{version}.dist-info"
  files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
           f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n"}
  files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
  os.makedirs(str(directory), exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    for member, text in files.items():
      archive.writestr(member, text)
  return path


@pytest.mark.slow
def test_pip_refuses_the_wheel_beside_another_tensorflow_minor_version(work, wheel):
  """Stub `tensorflow` distributions of other minor versions, no index: the
  refusal is pip's resolver's, offline. The control shows that the built
  version's stub is accepted."""
  others = work / "stubs-other"
  same = work / "stubs-same"
  for directory in (others, same):
    _stub_wheel(directory, "numpy", "1.0.0")
  other_versions = [f"{TF_MAJOR}.{TF_MINOR - 1}.0", f"{TF_MAJOR}.{TF_MINOR + 1}.0"]
  for version in other_versions:
    _stub_wheel(others, "tensorflow", version)
  _stub_wheel(same, "tensorflow", tf.__version__)

  python = _venv(work / "venv-other-tf", reuse_site_packages=False)
  offline = ["--no-index", "--no-cache-dir"]
  for version in other_versions:
    _pip(python, "install", *offline, "--find-links", str(others), f"tensorflow=={version}")
    result = _pip(python, "install", *offline, "--find-links", str(others), wheel, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(r"tensorflow ?(<|>=)", output), output  # the pin, as pip states it
    assert "Traceback" not in output, output
    listed = _pip(python, "list", "--format=json").stdout
    installed = {d["name"].lower(): d["version"] for d in json.loads(listed)}
    assert installed.get("tensorflow") == version and PROJECT not in installed, installed

  control = _pip(python, "install", *offline, "--dry-run", "--find-links", str(same), wheel)
  assert f"tensorflow-{tf.__version__}" in control.stdout, control.stdout


# ---- the sdist -------------------------------------------------------------------------------

@pytest.mark.slow
def test_sdist_holds_the_sources_and_no_build_output(sdist):
  with tarfile.open(sdist) as archive:
    names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    (requires_name,) = [n for n in archive.getnames() if n.endswith(".egg-info/requires.txt")]
    requires = archive.extractfile(requires_name).read().decode().split()
  for needed in ("pyproject.toml", "setup.py", "configure.sh", "Makefile", "README.md",
                 "tools/fls_build_backend.py", "python/fixed_loss_scale/_version.py",
                 "tf_ops/tf/ops/fixed_loss_scale_ops.cc"):
    assert needed in names, (needed, sorted(names))
  for built in ("config.mk", ".configure.bazelrc", "python/fixed_loss_scale/_build_info.json",
                "python/fixed_loss_scale/_fixed_loss_scale_ops.so"):
    assert built not in names, built
  for name in names:
    assert not name.startswith(("build/", "tests/", "benchmarks/", ".venv/")), name
    assert not name.endswith((".so", ".o", ".pyc")), name
  # It builds for whichever TensorFlow it finds: no version in its requirement.
  assert "tensorflow" in requires, requires


@pytest.mark.slow
def test_pip_install_of_the_sdist_runs_the_ops(work, sdist):
  python = _venv(work / "venv-sdist")
  _run([python, "-m", "pip", "install", "--no-build-isolation", sdist])
  report = _check_ops(python, work)
  assert report["built_for"] == tf.__version__
  _assert_pins_this_minor_version(_built_requirement(report["requires"]))


# ---- failures are one line ------------------------------------------------------------------

def _one_line_failure(result, expected):
  output = result.stdout + result.stderr
  assert result.returncode != 0, output
  assert "Traceback" not in output, output
  lines = [line.strip() for line in output.splitlines() if f"{PROJECT}: " in line]
  assert len(lines) == 1 and expected in lines[0], output
  return lines[0]


@pytest.mark.slow
def test_missing_compiler_make_or_tensorflow_is_one_line(work, clone):
  with_tf = _venv(work / "venv-failures")
  build = ["-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
           str(work / "never"), str(clone)]
  _one_line_failure(_run([with_tf, *build], check=False, env=_env(CXX="fls-no-such-c++")),
                    "no C++ compiler: `fls-no-such-c++` not found; install g++")
  empty = work / "empty-path"
  empty.mkdir()
  _one_line_failure(_run([with_tf, *build], check=False, env=_env(PATH=str(empty))),
                    "`make` not found: install GNU make")
  without_tf = _venv(work / "venv-no-tf", reuse_site_packages=False)
  _one_line_failure(_pip(without_tf, *build[2:], check=False),
                    "TensorFlow is not installed for")
  # configure.sh run by hand says the same in one line.
  result = _run(["./configure.sh"], check=False, cwd=str(clone), env=_env(PYTHON=without_tf))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f"configure: no TensorFlow for {without_tf}: install it there (pip install tensorflow), "
      "or set PYTHON to a Python that has it"], result.stderr


# ---- the isolated build -------------------------------------------------------------------------

def test_isolated_build_asks_for_tensorflow_for_wheels_only(clone):
  """What pip installs into an isolated build environment: setuptools from
  pyproject.toml, then what the backend's hooks ask for."""
  code = textwrap.dedent("""
      import json, sys, tomllib
      with open("pyproject.toml", "rb") as f:
        system = tomllib.load(f)["build-system"]
      sys.path[:0] = system["backend-path"]
      backend = __import__(system["build-backend"])
      print(json.dumps({"requires": system["requires"],
                        "wheel": backend.get_requires_for_build_wheel(),
                        "editable": backend.get_requires_for_build_editable(),
                        "sdist": backend.get_requires_for_build_sdist()}))
  """)
  if sys.version_info < (3, 11):
    pytest.skip("tomllib is Python 3.11+")
  for with_cuda, install in (("0", "0"), ("1", "0"), ("0", "1"), ("1", "1")):
    result = _run([sys.executable, "-c", code], timeout=120, cwd=str(clone),
                  env=_env(FLS_WITH_CUDA=with_cuda, FLS_INSTALL_CUDA_TOOLCHAIN=install))
    hooks = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(r.startswith("setuptools") for r in hooks["requires"]), hooks
    assert "tensorflow" in hooks["wheel"] and "tensorflow" in hooks["editable"], hooks
    assert not any(r.startswith("tensorflow") for r in hooks["requires"] + hooks["sdist"]), hooks
    # The CUDA toolchain set-up downloads with `python -m pip`: pip is asked for
    # only where the build may set it up.
    assert ("pip" in hooks["wheel"]) == (with_cuda == install == "1"), hooks


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FLS_TEST_ISOLATED_BUILD") != "1",
                    reason="downloads TensorFlow (~600 MB); set FLS_TEST_ISOLATED_BUILD=1")
def test_isolated_pip_wheel_builds_against_the_tensorflow_it_installs(work):
  source = work / "src-isolated"
  _run(["git", "clone", "--quiet", ROOT, str(source)], timeout=300)
  wheelhouse = work / "wheelhouse-isolated"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheelhouse), str(source)],
       timeout=BUILD_TIMEOUT)
  (path,) = glob.glob(str(wheelhouse / "*.whl"))
  with zipfile.ZipFile(path) as archive:
    build_info = json.loads(archive.read("fixed_loss_scale/_build_info.json"))
    (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
  major, minor = (int(p) for p in build_info["tf_version"].split(".")[:2])
  requirement = _built_requirement(metadata.get_all("Requires-Dist"))
  assert requirement == f"tensorflow<{major}.{minor + 1},>={build_info['tf_version']}", requirement
  # Built against the build environment's TensorFlow, it runs with this one
  # (when the versions match, as they do when both are the newest release).
  if build_info["tf_version"] == tf.__version__:
    python = _venv(work / "venv-isolated")
    _run([python, "-m", "pip", "install", path])
    _check_ops(python, work)
