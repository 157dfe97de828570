"""The gradient sets: shapes and dtypes of the lists the benchmarks unscale.

Owns the reader of gradient_sets.txt (the one definition of each named set,
shared with gpu_torch.py and the CUDA launcher driver's bench), the sweep's
parametric shapes, the dtype modes and the byte counts. Plain Python on
purpose, no numpy or TensorFlow: gpu_torch.py imports it on GPU machines that
have PyTorch and nothing else.
"""

import functools
import math
import os
import re

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gradient_sets.txt")
VARIANTS = ("full", "quick")

DTYPE_MODES = ("float32", "float16", "bfloat16", "mixed")
MIXED_CYCLE = ("float32", "float16", "bfloat16")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


_SHAPE = re.compile(r"[0-9]+(x[0-9]+)*(\*[0-9]+)?")


def parse_shape(token):
  """[shape, ...] for one token of the file: `768x3072` is one shape,
  `256*100` one hundred copies of (256,)."""
  if not _SHAPE.fullmatch(token):
    raise ValueError(f"not a shape (<dim>x<dim>...[*<copies>]): {token!r}")
  dims, _, copies = token.partition("*")
  shape = tuple(int(d) for d in dims.split("x"))
  count = int(copies) if copies else 1
  if min(shape) < 1 or count < 1:
    raise ValueError(f"not a positive shape: {token!r}")
  return [shape] * count


def parse(text, source="<text>"):
  """{set name: {variant: [shape tuples]}} from the text of a sets file."""
  sets = {}
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    if not fields or fields[0].startswith("#"):
      continue
    where = f"{source}:{number}"
    if len(fields) < 3:
      raise ValueError(f"{where}: want <set_name> <variant> <shape> [<shape> ...]: {line!r}")
    name, variant, tokens = fields[0], fields[1], fields[2:]
    if variant not in VARIANTS:
      raise ValueError(f"{where}: variant {variant!r} is not one of {VARIANTS}")
    if variant in sets.get(name, {}):
      raise ValueError(f"{where}: {name} {variant} defined twice")
    shapes = []
    for token in tokens:
      try:
        shapes += parse_shape(token)
      except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    sets.setdefault(name, {})[variant] = shapes
  for name, variants in sets.items():
    missing = [v for v in VARIANTS if v not in variants]
    if missing:
      raise ValueError(f"{source}: set {name} has no {' or '.join(missing)} variant")
  return sets


@functools.lru_cache(maxsize=None)
def read(path=PATH):
  """The sets of gradient_sets.txt (or `path`), parsed once per process."""
  with open(path) as f:
    return parse(f.read(), source=path)


def set_shapes(name, quick):
  """The shapes of set `name`: its quick variant with `quick`, else its full one."""
  sets = read()
  if name not in sets:
    raise ValueError(name)
  return list(sets[name]["quick" if quick else "full"])


def sweep_elements(quick):
  """Elements shared by the tensors of every sweep point (float32: 4 MiB, 64 KiB quick)."""
  return 1 << 14 if quick else 1 << 20


def sweep_shapes(count, total):
  """The tensor-count sweep: `count` 1-D tensors sharing `total` elements."""
  return [(max(1, total // count),)] * count


def dtypes_for(mode, count):
  if mode == "mixed":
    return [MIXED_CYCLE[i % 3] for i in range(count)]
  return [mode] * count


def elements(shape):
  return math.prod(shape)


def nbytes(shapes, dtypes):
  return sum(elements(s) * DTYPE_BYTES[d] for s, d in zip(shapes, dtypes))
