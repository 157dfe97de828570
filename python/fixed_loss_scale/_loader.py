"""Loads the op library that `make` builds into this package's directory.

The library is loaded by absolute path from this directory only (never from the
current directory or a search path), once per process. A missing library, or one
built for another TensorFlow, raises an ImportError that names both versions and
the command that rebuilds it: graph-mode code must never fall back silently to
Python arithmetic.
"""

import ctypes
import functools
import json
import os

import tensorflow as tf

LIBRARY_NAME = "_fixed_loss_scale_ops.so"
BUILD_INFO_NAME = "_build_info.json"
REBUILD_COMMAND = "make clean && make  (in the tf-fixed-loss-scale source tree)"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ops_module = None


def library_path():
  """Absolute path of the op library inside this package."""
  return os.path.join(_PACKAGE_DIR, LIBRARY_NAME)


def _built_for_tf_version():
  """The TensorFlow version recorded at build time, or None if unknown."""
  try:
    with open(os.path.join(_PACKAGE_DIR, BUILD_INFO_NAME)) as f:
      return json.load(f).get("tf_version")
  except (OSError, ValueError):
    return None


def _load_error(reason, built_for):
  return ImportError(
      f"fixed_loss_scale: {reason}\n"
      f"  library:                {library_path()}\n"
      f"  built for TensorFlow:   {built_for or 'unknown'}\n"
      f"  running TensorFlow:     {tf.__version__}\n"
      f"  rebuild with:           {REBUILD_COMMAND}")


def load_ops():
  """Returns the generated op module, loading the library on first use."""
  global _ops_module
  if _ops_module is not None:
    return _ops_module
  built_for = _built_for_tf_version()
  if not os.path.isfile(library_path()):
    raise _load_error("the op library is missing (the package was not built)", built_for)
  if built_for != tf.__version__:
    raise _load_error("the op library was built for another TensorFlow version", built_for)
  try:
    module = tf.load_op_library(library_path())
  except (tf.errors.NotFoundError, OSError) as error:
    raise _load_error(f"the op library failed to load: {error}", built_for) from error
  _name_op_in_type_errors(module)
  _ops_module = module
  return _ops_module


@functools.lru_cache(maxsize=None)
def c_api():
  """The op library's C API (tf_ops/core/c_api.h) through ctypes: the core's
  constants and choices, read rather than restated. Loads the library first."""
  load_ops()
  library = ctypes.CDLL(library_path())
  for name, restype in (("fls_min_loss_scale", ctypes.c_float),
                        ("fls_max_loss_scale", ctypes.c_float),
                        ("fls_min_sharded_bytes", ctypes.c_int64),
                        ("fls_cpu_path_name", ctypes.c_char_p)):
    getattr(library, name).restype = restype
  library.fls_dtype_code.argtypes = [ctypes.c_char_p]
  return library


def _name_op_in_type_errors(module):
  """Makes the generated wrappers' graph-mode TypeErrors name the op.

  TensorFlow's message for a bad input dtype names the argument and the dtype
  ("Value passed to parameter 'grads' has DataType int32 ...") but not the op.
  """
  for function_name, op_type in (("fixed_scale_loss", "FixedScaleLoss"),
                                 ("fixed_unscale_grads", "FixedUnscaleGrads"),
                                 ("fixed_unscale_grads_and_check",
                                  "FixedUnscaleGradsAndCheck")):
    generated = getattr(module, function_name)

    @functools.wraps(generated)
    def wrapper(*args, _generated=generated, _op_type=op_type, **kwargs):
      try:
        return _generated(*args, **kwargs)
      except TypeError as error:
        if _op_type in str(error):
          raise
        raise TypeError(f"{_op_type}: {error}") from error

    setattr(module, function_name, wrapper)
