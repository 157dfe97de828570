"""The machine a run measured: CPU, cores, versions, thread settings, load, and
the CPU path of the op library.

The CPU path (scalar, avx2 or avx512; FIXED_LOSS_SCALE_CPU_PATH can ask for a
lower one) and whether bfloat16 runs the AVX512-BF16 loop are read from the
op library itself, through its plain-C exports, never re-derived here: the
library's choice is the one its kernels made.
"""

import ctypes
import os
import platform

import numpy as np
import tensorflow as tf

import fixed_loss_scale
from fixed_loss_scale import _loader

from benchmarks.common import LOSS_SCALE


def cpu_path():
  """(name of the CPU path the library's kernels run, whether its bfloat16
  loop is the AVX512-BF16 one), from the library's exports."""
  _loader.load_ops()  # the library TensorFlow loaded, with its checks
  library = ctypes.CDLL(_loader.library_path())
  try:
    active = library.fls_active_cpu_path
    name = library.fls_cpu_path_name
    bf16_loop = library.fls_avx512_bf16_loop_active
  except AttributeError as error:
    raise RuntimeError(f"{_loader.library_path()} does not export the CPU path ({error}); "
                       f"rebuild it: {_loader.REBUILD_COMMAND}") from error
  active.argtypes, active.restype = [], ctypes.c_int
  name.argtypes, name.restype = [ctypes.c_int], ctypes.c_char_p
  bf16_loop.argtypes, bf16_loop.restype = [], ctypes.c_int
  return name(active()).decode(), bool(bf16_loop())


def machine_info(args):
  model = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  path, avx512_bf16_loop = cpu_path()
  return {
      "cpu": model,
      "cores": os.cpu_count(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "numpy": np.__version__,
      "fixed_loss_scale": fixed_loss_scale.__version__,
      "cpu_path": path,
      "avx512_bf16_loop": avx512_bf16_loop,
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
      "numpy_threads": args.threads,
      "loadavg_start": os.getloadavg(),
      "quick": args.quick,
      "rounds": args.rounds,
      "optimizer_rounds": args.optimizer_rounds,
      "op_time_rounds": args.op_time_rounds,
      "min_seconds": args.min_seconds,
      "reps": args.reps,
      "loss_scale": LOSS_SCALE,
  }
