"""unscale_gradients on CPU: one FixedUnscaleGrads per run of consecutive
gradients of at most CPU_GROUP_BYTES (scaling.py NOTE [CPU groups]), one op for
small lists and for a GPU's gradients; the numbers are the same either way.

The grouping is decided from the gradients' own device strings, so every test
here runs on every host: the op-count tests place their gradients on the CPU
explicitly, and GPU and mixed placements are graph tensors built under
tf.device("/GPU:0"), which keep that device string on a machine without a GPU
(soft placement moves them to the CPU only when they run).
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale
from fixed_loss_scale import ops
from fixed_loss_scale import scaling

SCALE = 3.0
# float32 elements in a quarter of a group.
QUARTER = scaling.CPU_GROUP_BYTES // 4 // 4


def on_cpu(grads):
  """The gradients as tensors placed on the CPU, whatever the host has."""
  with tf.device("/CPU:0"):
    return tf.nest.map_structure(tf.identity, grads)


def unscale_fn():
  return tf.function(lambda gs: scaling.unscale_gradients(on_cpu(gs), SCALE))


def op_count(fn, *args):
  return graph_op_types(fn.get_concrete_function(*args)).count("FixedUnscaleGrads")


def test_small_lists_stay_one_op():
  values = [np.full(100, i + 1, np.float32) for i in range(50)]
  assert op_count(unscale_fn(), [tf.constant(v) for v in values]) == 1


def test_large_lists_are_split_into_runs_of_consecutive_gradients(rng):
  # Groups: [4 quarters] [2 quarters] [5 quarters alone] [7 elements].
  sizes = [QUARTER] * 6 + [5 * QUARTER, 7]
  values = [rng.standard_normal(n).astype(np.float32) for n in sizes]
  fn = unscale_fn()
  inputs = [tf.constant(v) for v in values]
  assert op_count(fn, inputs) == 4
  for got, want in zip(fn(inputs), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_group_bytes_count_each_dtype_by_its_size(rng):
  """Four float16 tensors of a quarter group's bytes each fill one group; a
  float64 tensor of a quarter group's bytes starts the next."""
  half_values = [rng.standard_normal(2 * QUARTER).astype(np.float16) for _ in range(4)]
  double_value = rng.standard_normal(QUARTER // 2)  # an eighth of a group
  fn = unscale_fn()
  inputs = [tf.constant(v) for v in half_values] + [tf.constant(double_value)]
  assert op_count(fn, inputs) == 2
  for got, want in zip(fn(inputs), half_values + [double_value]):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_none_and_indexed_slices_keep_their_places_across_groups(rng):
  dense = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(3)]
  slice_values = rng.standard_normal((2, 4)).astype(np.float32)

  @tf.function
  def f():
    slices = tf.IndexedSlices(tf.constant(slice_values), tf.constant([0, 3]),
                              tf.constant([5, 4]))
    with tf.device("/CPU:0"):
      grads = {"a": tf.constant(dense[0]), "b": None, "c": [slices, tf.constant(dense[1])],
               "d": tf.constant(dense[2])}
    out = scaling.unscale_gradients(grads, SCALE)
    assert out["b"] is None and isinstance(out["c"][0], tf.IndexedSlices)
    return out["a"], out["c"][0].values, out["c"][0].indices, out["c"][1], out["d"]

  assert op_count(f) == 3
  a, values, indices, c1, d = f()
  for got, want in ((a, dense[0]), (values, slice_values), (c1, dense[1]), (d, dense[2])):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))
  np.testing.assert_array_equal(indices.numpy(), [0, 3])


def test_gradients_of_unknown_size_are_a_group_of_their_own(rng):
  values = [rng.standard_normal(n).astype(np.float32) for n in (10, 20, 30)]
  fn = tf.function(lambda a, b, c: scaling.unscale_gradients(on_cpu([a, b, c]), SCALE),
                   input_signature=[tf.TensorSpec([10]), tf.TensorSpec([None]),
                                    tf.TensorSpec([30])])
  assert op_count(fn) == 3
  for got, want in zip(fn(*values), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def graph_tensors(placements, size=QUARTER, dtype=tf.float32):
  """One graph tensor of `size` elements per device string ("" = unplaced),
  built under that device scope in a fresh graph."""
  graph = tf.Graph()
  tensors = []
  with graph.as_default():
    for device in placements:
      with tf.device(device):
        tensors.append(tf.zeros([size], dtype))
  return tensors


def test_graph_tensors_keep_the_device_they_were_built_under():
  # What the pure function reads: on any host, with soft placement on (the
  # default), a graph keeps the requested device string.
  assert tf.config.get_soft_device_placement()
  a, b, c = graph_tensors(["/GPU:0", "/CPU:0", ""])
  assert tf.DeviceSpec.from_string(a.device).device_type == "GPU"
  assert tf.DeviceSpec.from_string(b.device).device_type == "CPU"
  assert c.device == ""


@pytest.mark.parametrize("unplaced", ["CPU", "GPU"])
def test_groups_of_cpu_placed_gradients_ignore_the_unplaced_device_type(unplaced):
  # Quarters, then 5 quarters, then 2 quarters: [4 quarters] [5 quarters alone] [2 quarters].
  tensors = graph_tensors(["/CPU:0"] * 4, QUARTER) + graph_tensors(
      ["/device:CPU:0"], 5 * QUARTER) + graph_tensors(["/cpu:0"] * 2, QUARTER)
  assert scaling.unscale_groups(tensors, unplaced) == [[0, 1, 2, 3], [4], [5, 6]]


def test_cpu_group_bytes_zero_puts_each_cpu_gradient_alone_and_keeps_gpu_groups():
  # unscale_deferred's split: one op per CPU gradient (even the smallest), one
  # per GPU as always.
  tensors = graph_tensors(["/CPU:0", "/GPU:0", "/CPU:0", "/GPU:0", "/CPU:0"], 1)
  assert scaling.unscale_groups(tensors, "CPU", cpu_group_bytes=0) == [[0], [1, 3], [2], [4]]
  assert scaling.unscale_groups(tensors, "CPU") == [[0, 2, 4], [1, 3]]


def test_gpu_placed_gradients_are_one_group_whatever_their_size():
  tensors = graph_tensors(["/GPU:0"] * 4, 3 * QUARTER)
  for unplaced in ("CPU", "GPU"):
    assert scaling.unscale_groups(tensors, unplaced) == [[0, 1, 2, 3]]
  # One group per GPU: an op runs on one device.
  tensors = graph_tensors(["/GPU:0", "/GPU:1", "/GPU:0", "/job:localhost/replica:0/task:0/GPU:1"])
  assert scaling.unscale_groups(tensors, "CPU") == [[0, 2], [1, 3]]


def test_unplaced_gradients_follow_the_unplaced_device_type():
  tensors = graph_tensors([""] * 4, 3 * QUARTER)
  assert scaling.unscale_groups(tensors, "GPU") == [[0, 1, 2, 3]]
  assert scaling.unscale_groups(tensors, "CPU") == [[0], [1], [2], [3]]
  # Unplaced means the process's first device of that type: it shares a group
  # with gradients placed there explicitly.
  mixed = graph_tensors(["", "/GPU:0", "/device:GPU:0", ""], QUARTER)
  assert scaling.unscale_groups(mixed, "GPU") == [[0, 1, 2, 3]]
  assert scaling.unscale_groups(mixed, "CPU") == [[0, 3], [1, 2]]


def test_mixed_placements_cpu_runs_are_not_broken_by_gpu_gradients():
  # CPU, GPU, CPU, GPU, CPU, CPU (quarters each) + one 5-quarter CPU gradient:
  # the GPU's gradients are one group; the CPU's form runs of at most a group's
  # bytes in list order, skipping over the GPU's.
  placements = ["/CPU:0", "/GPU:0", "/CPU:0", "/GPU:0", "/CPU:0", "/CPU:0", "/CPU:0"]
  tensors = graph_tensors(placements[:6], QUARTER) + graph_tensors(placements[6:], 5 * QUARTER)
  assert scaling.unscale_groups(tensors, "GPU") == [[0, 2, 4, 5], [1, 3], [6]]
  # Two CPU devices (e.g. logical CPUs, or another task's CPU) never share a group.
  tensors = graph_tensors(["/CPU:0", "/CPU:1", "/CPU:0", "/job:worker/task:1/CPU:0"], 7)
  assert scaling.unscale_groups(tensors, "CPU") == [[0, 2], [1], [3]]


def test_unscale_groups_needs_an_unplaced_device_type():
  tensors = graph_tensors(["/CPU:0"])
  for bad in (None, "", True):
    with pytest.raises(ValueError, match="unplaced_device_type"):
      scaling.unscale_groups(tensors, bad)
  with pytest.raises(TypeError):
    scaling.unscale_groups(tensors)  # pylint: disable=no-value-for-parameter


def test_unplaced_device_type_is_where_tensorflow_places_an_unplaced_op():
  @tf.function
  def placed():
    return tf.zeros([2]) + 1.0

  # The device TensorFlow actually ran an unplaced op on, read from the eager
  # result of a function whose ops carry no device.
  ran_on = tf.DeviceSpec.from_string(placed().device).device_type
  assert scaling.unplaced_device_type() == ran_on


def test_gpu_placed_gradients_are_one_op_and_right_on_any_host(rng):
  """The GPU rule end to end: gradients built under tf.device("/GPU:0") go
  through one op -- on a GPU, or on the CPU by soft placement where there is none."""
  values = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(4)]

  @tf.function
  def fn(gs):
    with tf.device("/GPU:0"):
      gs = [tf.identity(g) for g in gs]
    return scaling.unscale_gradients(gs, SCALE)

  inputs = [tf.constant(v) for v in values]
  assert op_count(fn, inputs) == 1
  for got, want in zip(fn(inputs), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))
  # The same gradients placed on the CPU are four ops, with the same numbers.
  cpu_fn = unscale_fn()
  assert op_count(cpu_fn, inputs) == 4
  for got, want in zip(cpu_fn(inputs), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_unplaced_gradients_in_a_function_follow_this_host(rng):
  values = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(4)]
  fn = tf.function(lambda gs: scaling.unscale_gradients(gs, SCALE))
  inputs = [tf.constant(v) for v in values]
  expected_ops = 1 if tf.config.list_logical_devices("GPU") else 4
  assert op_count(fn, inputs) == expected_ops
  for got, want in zip(fn(inputs), values):
    assert_bitwise_equal(got.numpy(), reference_unscale(want, SCALE))


def test_the_raw_op_wrapper_is_always_one_op(rng):
  values = [rng.standard_normal(3 * QUARTER).astype(np.float32) for _ in range(4)]
  fn = tf.function(lambda gs: ops.fixed_unscale_grads(gs, SCALE))
  assert op_count(fn, [tf.constant(v) for v in values]) == 1
