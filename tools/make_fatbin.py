#!/usr/bin/env python3
"""Packs cubins and PTX into one fatbinary with NVIDIA's libnvfatbin.

  make_fatbin.py --nvfatbin LIB -o OUT.fatbin [--cubin ARCH=FILE]... [--ptx ARCH=FILE]...

ARCH is the compute capability as NVIDIA writes it without the prefix ("60",
"90"). Used by the Make and Bazel builds for the clang route (docs/GPU.md,
NOTE [clang device code]): the CUDA 12 wheels have ptxas but no `fatbinary`,
and CUDA 13's `fatbinary` rejects clang 19's arguments. libnvfatbin comes from
the nvidia-nvfatbin-cu12 wheel; plain ctypes, so no compiler is needed.
"""
import argparse
import ctypes
import sys


def _pairs(values):
  pairs = []
  for value in values:
    arch, sep, path = value.partition("=")
    if not sep or not arch.isdigit():
      sys.exit(f"make_fatbin: expected ARCH=FILE with a numeric ARCH, got {value!r}")
    pairs.append((arch, path))
  return pairs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nvfatbin", required=True, help="path of libnvfatbin.so.12")
  parser.add_argument("-o", "--output", required=True)
  parser.add_argument("--cubin", action="append", default=[])
  parser.add_argument("--ptx", action="append", default=[])
  args = parser.parse_args()

  lib = ctypes.CDLL(args.nvfatbin)
  lib.nvFatbinGetErrorString.restype = ctypes.c_char_p

  def check(result, what):
    if result != 0:
      sys.exit(f"make_fatbin: {what}: {lib.nvFatbinGetErrorString(result).decode()}")

  # Entries are identified by arch, not by file path, so that two builds (Make's
  # and Bazel's, in different temporary folders) give the same bytes.
  handle = ctypes.c_void_p()
  check(lib.nvFatbinCreate(ctypes.byref(handle), None, ctypes.c_size_t(0)), "nvFatbinCreate")
  for arch, path in _pairs(args.cubin):
    with open(path, "rb") as f:
      code = f.read()
    check(lib.nvFatbinAddCubin(handle, code, ctypes.c_size_t(len(code)), arch.encode(),
                               f"sm_{arch}".encode()), f"nvFatbinAddCubin({path}, sm_{arch})")
  for arch, path in _pairs(args.ptx):
    with open(path, "rb") as f:
      code = f.read() + b"\0"  # nvFatbinAddPTX takes a C string with its terminator
    check(lib.nvFatbinAddPTX(handle, code, ctypes.c_size_t(len(code)), arch.encode(),
                             f"compute_{arch}".encode(), b""), f"nvFatbinAddPTX({path}, compute_{arch})")
  size = ctypes.c_size_t()
  check(lib.nvFatbinSize(handle, ctypes.byref(size)), "nvFatbinSize")
  buffer = ctypes.create_string_buffer(size.value)
  check(lib.nvFatbinGet(handle, buffer), "nvFatbinGet")
  check(lib.nvFatbinDestroy(ctypes.byref(handle)), "nvFatbinDestroy")
  with open(args.output, "wb") as f:
    f.write(buffer.raw)


if __name__ == "__main__":
  main()
