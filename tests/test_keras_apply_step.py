"""The shape of the Keras wrappers' apply step (apply_step.py) in the graphs they trace.

On a CPU a skip gets the read-only FixedCheckGrads before the decision and
FixedUnscaleGradsByTensor inside the apply branch, one per CPU group
(scaling.py, NOTE [check before the skip]); gradients placed on a GPU, and a
global-norm clip with no skip, keep the fused FixedUnscaleGradsAndCheck; the
fixed scale's plain path keeps its grouped FixedUnscaleGrads. The graphs are read from the traced
functions: the cond's predicate traced back to the check, its branch functions
read for the unscale. The numbers of both shapes are compared bit for bit on
the same steps (a GPU-placed graph runs on this host by soft placement), and
finite.all_finite is checked to find the read-only check's flag.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_bitwise_equal
from fixed_loss_scale import finite
from fixed_loss_scale import ops
from fixed_loss_scale.keras import FixedLossScaleOptimizer
from fixed_loss_scale.keras import LossScaleOptimizer

CHECK_ONLY, BY_TENSOR, FUSED = ops.CHECK_ONLY_OP, ops.UNSCALE_BY_TENSOR_OP, ops.CHECK_OP
SHAPES = [(7, 5), (5,), (300, 40), (40,)]

WRAPPERS = {
    "dynamic": lambda inner: LossScaleOptimizer(inner, initial_scale=2.0**10),
    "fixed_skip": lambda inner: FixedLossScaleOptimizer(inner, 1024, skip_non_finite=True),
}


def _inner(clip):
  # RMSprop: an optimizer the fused update (fused_update.py) does not replace,
  # so that the inner optimizer's own apply consumes the unscaled gradients.
  return keras.optimizers.RMSprop(1e-2, global_clipnorm=clip)


def _variables():
  rng = np.random.default_rng(4)
  return [keras.Variable(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _step(opt, variables, device=None):
  """A tf.function of a float32 `factor` that applies `variables * 1024` as the
  scaled gradients, the first one times `factor` (inf or NaN: an overflow),
  computed under `device`."""

  @tf.function
  def step(factor):
    with tf.device(device):
      grads = [v * 1024.0 for v in variables]
      grads[0] = grads[0] * factor
    opt.apply(grads, variables)

  opt.build(variables)
  return step


def _graph(opt, variables, device=None):
  step = _step(opt, variables, device)
  return step.get_concrete_function(tf.TensorSpec([], tf.float32)).graph


def _function_op_types(graph, name):
  return [node.op for node in graph._functions[name].definition.node_def]  # pylint: disable=protected-access


def _ancestor_types(tensor):
  """Op types that `tensor` depends on in its graph."""
  seen, stack, types = set(), [tensor.op], []
  while stack:
    op = stack.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    types.append(op.type)
    stack.extend(t.op for t in op.inputs)
  return types


def _cond(graph):
  conds = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
  assert len(conds) == 1, [op.type for op in conds]
  return conds[0]


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_cpu_skip_checks_before_the_cond_and_unscales_in_the_branch(wrapper, clip):
  variables = _variables()
  graph = _graph(WRAPPERS[wrapper](_inner(clip)), variables)
  outer = [op.type for op in graph.get_operations()]
  cond = _cond(graph)
  assert outer.count(CHECK_ONLY) == 1 and CHECK_ONLY in _ancestor_types(cond.inputs[0])
  assert FUSED not in outer and BY_TENSOR not in outer
  then_types = _function_op_types(graph, cond.get_attr("then_branch").name)
  else_types = _function_op_types(graph, cond.get_attr("else_branch").name)
  # One per gradient in the branch, each next to its update (NOTE [check before
  # the skip] in scaling.py); the check before the cond stays one CPU group.
  assert then_types.count(BY_TENSOR) == len(variables)
  assert BY_TENSOR not in else_types and CHECK_ONLY not in then_types


def test_cpu_clip_without_skip_keeps_the_fused_op():
  # No decision would hold a deferred unscale back: one fused read for the norm.
  variables = _variables()
  graph = _graph(FixedLossScaleOptimizer(_inner(1.0), 1024), variables)
  outer = [op.type for op in graph.get_operations()]
  assert outer.count(FUSED) == 1 and not {CHECK_ONLY, BY_TENSOR} & set(outer)
  assert not {"If", "StatelessIf"} & set(outer)


def test_plain_fixed_scale_keeps_its_grouped_unscale():
  graph = _graph(FixedLossScaleOptimizer(_inner(None), 1024), _variables())
  outer = [op.type for op in graph.get_operations()]
  assert outer.count("FixedUnscaleGrads") == 1
  assert not {CHECK_ONLY, BY_TENSOR, FUSED} & set(outer)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_gpu_gradients_keep_the_fused_op_before_the_cond(wrapper):
  variables = _variables()
  graph = _graph(WRAPPERS[wrapper](_inner(1.0)), variables, device="/GPU:0")
  outer = [op.type for op in graph.get_operations()]
  cond = _cond(graph)
  assert outer.count(FUSED) == 1 and FUSED in _ancestor_types(cond.inputs[0])
  assert CHECK_ONLY not in outer
  assert BY_TENSOR not in _function_op_types(graph, cond.get_attr("then_branch").name)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_both_shapes_give_the_same_bits(wrapper, clip):
  # Overflowing steps in between: the dynamic scale halves, the fixed one skips.
  results = []
  for device in (None, "/GPU:0"):  # read-only check + deferred unscale; the fused op
    variables = _variables()
    opt = WRAPPERS[wrapper](_inner(clip))
    step = _step(opt, variables, device)
    for value in (1.0, np.inf, 1.0, np.nan, 3.0, 1.0):
      step(tf.constant(value, tf.float32))
    results.append([v.numpy() for v in variables + list(opt.variables)])
  for a, b in zip(*results):
    assert_bitwise_equal(a, b)


def test_all_finite_finds_the_read_only_check_flag():
  scale = tf.Variable(64.0)

  @tf.function
  def probe(g1, g2):
    flag, _ = ops.fixed_check_grads([g1, g2], scale)
    unscaled = ops.fixed_unscale_grads_by_tensor([g1, g2], scale.read_value())
    same_scale_input = ops.fixed_unscale_grads_by_tensor([g1, g2], flag.op.inputs[2])
    found_other = finite.all_finite(unscaled)  # another read of the scale: checked again
    found = finite.all_finite(same_scale_input)
    return flag, found, found_other, found is flag

  specs = [tf.TensorSpec([3], tf.float32)] * 2
  graph = probe.get_concrete_function(*specs).graph
  assert [op.type for op in graph.get_operations()].count(CHECK_ONLY) == 2
  for values, expected in [([1.0, 2.0, 3.0], True), ([1.0, np.inf, 3.0], False)]:
    flag, found, found_other, same = probe(tf.constant([0.5, 1.0, 2.0]), tf.constant(values))
    assert bool(same) and bool(flag) == bool(found) == bool(found_other) == expected


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_unchecked_gradients_get_the_read_only_check_in_graphs(dtype):
  # What TF's own compat wrapper hands DynamicLossScale.update: gradients it
  # unscaled itself. The flag is TF's check's; the op reads them once.
  cases = [[1.0, 2.0], [1.0, np.inf], [np.nan, 0.0], [-np.inf, 5.0]]
  check = tf.function(lambda a, b: (finite.all_finite([a, b]), finite.is_all_finite([a, b])))
  spec = tf.TensorSpec([2], dtype)
  op_types = [op.type for op in check.get_concrete_function(spec, spec).graph.get_operations()]
  assert op_types.count(CHECK_ONLY) == 1
  for first in cases:
    for second in cases:
      ours, tfs = check(tf.constant(first, dtype), tf.constant(second, dtype))
      assert bool(ours) == bool(tfs)
