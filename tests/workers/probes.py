"""What the tests and the worker processes read back from a run, written once.

Imports nothing heavy: the worker processes import it before TensorFlow (some
set up a watchdog first), and tests/conftest.py re-exports `graph_op_types`.
"""

import os


def graph_op_types(concrete_function):
  """Op types in a concrete function's graph, nested function bodies included."""
  graph = concrete_function.graph
  types = [op.type for op in graph.get_operations()]
  for function in graph._functions.values():  # pylint: disable=protected-access
    types.extend(node.op for node in function.definition.node_def)
  return types


def rss_bytes():
  """This process's resident memory now, in bytes (Linux)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
