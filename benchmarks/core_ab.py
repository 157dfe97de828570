"""A/B of the CPU core alone: the working tree's element loops against a git revision's.

    python -m benchmarks.core_ab [--before REV] [--rounds N] [--reps N] [--sets a,b]

No TensorFlow: both cores are built standalone (with the library's CXX_FLAGS
from config.mk) into two shared libraries behind the test shim's C entry point
`fls_scale_list`, loaded into this one process, and called alternately on the
same buffers, call by call (benchmarks.timing.interleaved), so the machine's
drift hits both alike; ratios are taken within a round. One thread, the active
CPU path (FIXED_LOSS_SCALE_CPU_PATH picks a lower one for both), this process's
MXCSR (flush-to-zero off: on AVX512_BF16 CPUs both sides then take the integer
bfloat16 loop). Each call scales the whole gradient set out of place, so values
never drift. docs/BENCHMARKS.md, "CPU loops", has a run.
"""

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks import gradient_sets
from benchmarks import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DType codes of the core (tf_ops/core/tensor_span.h; unchanged since the first
# release, so both sides agree); fls_dtype_code names them in the new core.
DTYPES = {"float16": (0, np.uint16), "bfloat16": (1, np.uint16), "float32": (2, np.float32),
          "float64": (3, np.float64)}
LOSS_SCALE = 1.00390625


def log(message):
  print(message, file=sys.stderr, flush=True)


def cxx_flags():
  """CXX_FLAGS of config.mk: the flags the op library's core is built with."""
  with open(os.path.join(ROOT, "config.mk")) as f:
    for line in f:
      name, _, value = line.partition(":=")
      if name.strip() == "CXX_FLAGS":
        return value.split()
  raise SystemExit("core_ab: no CXX_FLAGS in config.mk; run ./configure.sh (or make) first")


def core_sources(tree):
  """The shim and core sources of a source tree, in either layout."""
  if os.path.isdir(os.path.join(tree, "tf_ops", "core")):
    cpu = os.path.join(tree, "tf_ops", "core", "cpu")
    return [os.path.join(tree, "tf_ops", "tests", "simd_paths_shim.cc"),
            os.path.join(tree, "tf_ops", "core", "c_api.cc")] + sorted(
                os.path.join(cpu, name) for name in os.listdir(cpu) if name.endswith(".cc"))
  # Before the redesign: one core file, the SIMD loops in a header.
  return [os.path.join(tree, "tests", "cc", "simd_paths_shim.cc"),
          os.path.join(tree, "tf_ops", "cc", "kernels", "multi_tensor_scale_cpu.cc")]


def build(tree, output):
  command = ["g++", *cxx_flags(), "-fPIC", "-shared", "-I", tree, "-o", output,
             *core_sources(tree)]
  subprocess.run(command, check=True)
  library = ctypes.CDLL(output)
  library.fls_scale_list.argtypes = [
      ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
      ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_double]
  return library


def checkout(revision, directory):
  archive = subprocess.run(["git", "-C", ROOT, "archive", revision, "tf_ops", "tests"],
                           check=True, capture_output=True).stdout
  os.makedirs(directory)
  subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
  return directory


def list_call(library, arrays, outs, code):
  """A function that scales `arrays` into `outs` with one fls_scale_list call."""
  count = len(arrays)
  dtypes = np.full(count, code, np.int32)
  ins = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
  out_ptrs = (ctypes.c_void_p * count)(*[o.ctypes.data for o in outs])
  sizes = np.array([a.size for a in arrays], np.int64)
  cuts = np.array([0, sum(a.nbytes for a in arrays)], np.int64)
  factor32 = float(np.float32(1) / np.float32(LOSS_SCALE))
  factor64 = 1.0 / float(np.float32(LOSS_SCALE))

  def call():
    library.fls_scale_list(count, dtypes.ctypes.data, ctypes.cast(ins, ctypes.c_void_p),
                           ctypes.cast(out_ptrs, ctypes.c_void_p), sizes.ctypes.data,
                           cuts.ctypes.data, 2, factor32, factor64)
  return call


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--before", default="HEAD", help="git revision of the 'before' core")
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--reps", type=int, default=5, help="calls per arm per round")
  parser.add_argument("--sets", default="tiny,many_small,few_large,bert_like")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as scratch:
    log(f"core_ab: building the core of {args.before} and of the working tree")
    before = build(checkout(args.before, os.path.join(scratch, "before")),
                   os.path.join(scratch, "before.so"))
    after = build(ROOT, os.path.join(scratch, "after.so"))
    after.fls_cpu_path_name.restype = ctypes.c_char_p
    path = after.fls_cpu_path_name(after.fls_active_cpu_path()).decode()
    print(f"CPU core A/B, one thread, path {path}: {args.before} (before) against the "
          f"working tree (after); {args.rounds} rounds of {args.reps} calls per arm")
    print(f"{'set':<11} {'dtype':<9} {'MB':>7} {'before us':>11} {'after us':>11} "
          f"{'after/before':>12} {'quartiles':>13} {'after GB/s':>10}")
    rng = np.random.default_rng(0)
    for set_name in args.sets.split(","):
      shapes = gradient_sets.set_shapes(set_name, quick=False)
      for dtype in args.dtypes.split(","):
        code, storage = DTYPES[dtype]
        arrays = []
        for shape in shapes:
          values = rng.standard_normal(int(np.prod(shape))).astype(np.float32)
          if dtype == "float16":
            values = values.astype(np.float16).view(np.uint16)
          elif dtype == "bfloat16":
            values = (values.view(np.uint32) >> 16).astype(np.uint16)
          arrays.append(values.astype(storage, copy=False))
        outs = [np.empty_like(a) for a in arrays]
        fns = {"before": list_call(before, arrays, outs, code),
               "after": list_call(after, arrays, outs, code)}
        for fn in fns.values():
          fn()  # first touch of `outs`, and warm caches, outside the timing
        times = timing.interleaved(fns, args.rounds, args.reps)
        ratio = timing.paired(lambda b, a: a / b, times["before"], times["after"])
        spread = timing.quartiles([a / b for b, a in zip(times["before"], times["after"])])
        moved = 2 * sum(a.nbytes for a in arrays)
        after_s = float(np.median(times["after"]))
        print(f"{set_name:<11} {dtype:<9} {moved / 2e6:7.1f} "
              f"{1e6 * float(np.median(times['before'])):11.1f} {1e6 * after_s:11.1f} "
              f"{ratio:12.3f} {spread[0]:6.3f}-{spread[1]:.3f} {moved / after_s / 1e9:10.1f}",
              flush=True)


if __name__ == "__main__":
  main()
