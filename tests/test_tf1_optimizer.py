"""fixed_loss_scale.MixedPrecisionLossScaleOptimizer against TF's own compat wrapper.

The reference is `tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer`
with the same scale: for float32 its loss scaling (`loss * float32(s)`) and
unscaling (`g * (1 / float32(s))`) give the same bits as the custom ops, so the
weights after several steps must be bit-identical -- for any scale, not only
powers of two. Float16 gradients are checked against the numpy oracle, since
TF's wrapper cannot unscale them at all.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal
from conftest import graph_op_types
from conftest import reference_unscale

v1 = tf.compat.v1
TFWrapper = v1.mixed_precision.MixedPrecisionLossScaleOptimizer
CUSTOM_OPS = {"FixedScaleLoss", "FixedUnscaleGrads"}

BASE_OPTIMIZERS = {
    "sgd": lambda: v1.train.GradientDescentOptimizer(0.05),
    "momentum": lambda: v1.train.MomentumOptimizer(0.05, 0.9),
    "adam": lambda: v1.train.AdamOptimizer(0.01),
}


def _ours(base, scale):
  return fls.MixedPrecisionLossScaleOptimizer(base, scale)


def _theirs(base, scale):
  return TFWrapper(base, scale)


def _data(dtype=np.float32):
  rng = np.random.default_rng(7)
  return {
      "x": rng.standard_normal((16, 6)).astype(dtype),
      "y": rng.standard_normal((16, 1)).astype(dtype),
      "ids": rng.integers(0, 10, size=(16,)),
      "w1": (rng.standard_normal((6, 8)) * 0.5).astype(dtype),
      "w2": (rng.standard_normal((8, 1)) * 0.5).astype(dtype),
      "emb": (rng.standard_normal((10, 8)) * 0.1).astype(dtype),
  }


def _model_vars(d, dtype=tf.float32):
  return [
      tf.Variable(d["w1"], dtype=dtype, name="w1"),
      tf.Variable(d["w2"], dtype=dtype, name="w2"),
      tf.Variable(d["emb"], dtype=dtype, name="emb"),
  ]


def _loss_fn(d, variables):
  w1, w2, emb = variables
  # tf.gather gives the embedding an IndexedSlices gradient.
  hidden = tf.tanh(tf.matmul(d["x"], w1) + tf.gather(emb, d["ids"]))
  return tf.reduce_mean(tf.square(tf.matmul(hidden, w2) - d["y"]))


def _session_train(wrap, base, scale, *, steps=5, api="minimize", callable_loss=False):
  """Trains in a TF1 Session graph; returns (weights, losses, op types, global_step)."""
  d = _data()
  graph = tf.Graph()
  with graph.as_default():
    variables = _model_vars(d)
    global_step = v1.train.get_or_create_global_step()
    opt = wrap(BASE_OPTIMIZERS[base](), scale)
    loss = _loss_fn(d, variables)
    target = (lambda: _loss_fn(d, variables)) if callable_loss else loss
    if api == "minimize":
      train_op = opt.minimize(target, global_step=global_step, var_list=variables)
    else:
      grads_and_vars = opt.compute_gradients(target, var_list=variables)
      train_op = opt.apply_gradients(grads_and_vars, global_step=global_step)
    op_types = [op.type for op in graph.get_operations()]
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      losses = []
      for _ in range(steps):
        losses.append(sess.run(loss))
        sess.run(train_op)
      return sess.run(variables), losses, op_types, sess.run(global_step)


@pytest.mark.parametrize("base", sorted(BASE_OPTIMIZERS))
@pytest.mark.parametrize("scale", [128, 1024, 1000])
def test_session_minimize_bit_identical_to_tf_wrapper(base, scale):
  ours, our_losses, our_ops, our_step = _session_train(_ours, base, scale)
  theirs, _, their_ops, their_step = _session_train(_theirs, base, scale)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert our_step == their_step == 5
  assert our_losses[-1] < our_losses[0]
  # Ours: the scaled loss and its gradient are FixedScaleLoss, and every
  # gradient (two dense, one IndexedSlices) is unscaled by a single op.
  assert our_ops.count("FixedUnscaleGrads") == 1
  assert our_ops.count("FixedScaleLoss") == 2
  assert not CUSTOM_OPS & set(their_ops)


@pytest.mark.parametrize("callable_loss", [False, True])
def test_session_compute_apply_gradients_bit_identical(callable_loss):
  ours, _, our_ops, our_step = _session_train(
      _ours, "momentum", 512, api="compute_apply", callable_loss=callable_loss)
  theirs, _, _, _ = _session_train(
      _theirs, "momentum", 512, api="compute_apply", callable_loss=callable_loss)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  assert our_step == 5
  assert our_ops.count("FixedUnscaleGrads") == 1


def _eager_train(wrap, scale, steps=4, use_function=False):
  d = _data()
  variables = _model_vars(d)
  opt = wrap(v1.train.MomentumOptimizer(0.05, 0.9), scale)

  def step():
    opt.minimize(lambda: _loss_fn(d, variables), var_list=variables)

  if use_function:
    step = tf.function(step)
  for _ in range(steps):
    step()
  ops = graph_op_types(step.get_concrete_function()) if use_function else []
  return [v.numpy() for v in variables], ops


@pytest.mark.parametrize("use_function", [False, True])
def test_tf2_eager_and_tf_function_bit_identical(use_function):
  ours, ops = _eager_train(_ours, 2048, use_function=use_function)
  theirs, their_ops = _eager_train(_theirs, 2048, use_function=use_function)
  for a, b in zip(ours, theirs):
    assert_bitwise_equal(a, b)
  if use_function:
    assert ops.count("FixedUnscaleGrads") == 1 and "FixedScaleLoss" in ops
    assert not CUSTOM_OPS & set(their_ops)


def test_float16_gradients_unscaled_where_tf_wrapper_fails():
  d = _data(np.float16)
  scale = 1024
  graph = tf.Graph()
  with graph.as_default():
    variables = _model_vars(d, tf.float16)
    loss = _loss_fn(d, variables)
    with pytest.raises((TypeError, ValueError)):
      _theirs(v1.train.GradientDescentOptimizer(0.05), scale).compute_gradients(
          loss, var_list=variables)
    opt = _ours(v1.train.GradientDescentOptimizer(0.05), scale)
    grads_and_vars = opt.compute_gradients(loss, var_list=variables)
    unscale_op = grads_and_vars[0][0].op
    assert unscale_op.type == "FixedUnscaleGrads"
    scaled = list(unscale_op.inputs)  # the gradients of the scaled loss
    train_op = opt.apply_gradients(grads_and_vars)
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      loss0, scaled_v, (unscaled_dense1, unscaled_dense2, unscaled_slices) = sess.run(
          [loss, scaled, [g for g, _ in grads_and_vars]])
      sess.run(train_op)
      loss1 = sess.run(loss)
  assert all(g.dtype == np.float16 for g in scaled_v)
  assert_bitwise_equal(unscaled_dense1, reference_unscale(scaled_v[0], scale))
  assert_bitwise_equal(unscaled_dense2, reference_unscale(scaled_v[1], scale))
  assert_bitwise_equal(unscaled_slices.values, reference_unscale(scaled_v[2], scale))
  assert loss1 < loss0


def test_loss_scale_arguments():
  base = v1.train.GradientDescentOptimizer(0.1)
  for scale in (8, 8.0, np.float32(8), fls.FixedLossScale(8), v1.mixed_precision.FixedLossScale(8)):
    opt = _ours(base, scale)
    assert isinstance(opt.loss_scale, fls.FixedLossScale)
    assert opt.loss_scale.loss_scale_value == 8.0
  for bad in (None, "static", {"class_name": "DynamicLossScale"}, 0.5, float("nan"), "8"):
    with pytest.raises(ValueError):
      _ours(base, bad)
  # Dynamic scales are accepted: "dynamic" gives this package's
  # DynamicLossScale, and a DynamicLossScale object is used as it is.
  assert type(_ours(base, "dynamic").loss_scale) is fls.DynamicLossScale
  for dynamic in (fls.DynamicLossScale(), v1.mixed_precision.DynamicLossScale()):
    assert _ours(base, dynamic).loss_scale is dynamic
  with pytest.raises(ValueError, match="Optimizer"):
    _ours(tf.keras.optimizers.SGD(), 8)
  # TF's wrapper's words for the same mistakes (its loss_scale_optimizer_test
  # matches the first), each followed by this package's guidance.
  with pytest.raises(ValueError, match=r"^loss_scale cannot be None; .*dynamic"):
    _ours(base, None)
  with pytest.raises(ValueError, match=r'^"opt" must be an instance of Optimizer, but got: '
                                       r".*FixedLossScaleOptimizer"):
    _ours(tf.keras.optimizers.SGD(), 8)
  assert isinstance(_ours(base, 8), TFWrapper)


def _ckpt_setup(wrap):
  d = _data()
  variables = _model_vars(d)
  opt = wrap(v1.train.MomentumOptimizer(0.05, 0.9), 256)

  @tf.function
  def step():
    opt.minimize(lambda: _loss_fn(d, variables), var_list=variables)

  ckpt = tf.train.Checkpoint(optimizer=opt, w1=variables[0], w2=variables[1], emb=variables[2])
  return variables, step, ckpt


def test_tf_train_checkpoint_round_trip_and_compatible_with_tf_wrapper(tmp_path):
  variables, step, ckpt = _ckpt_setup(_ours)
  for _ in range(3):
    step()
  path = ckpt.save(str(tmp_path / "ours"))
  for _ in range(3):
    step()
  uninterrupted = [v.numpy() for v in variables]

  variables2, step2, ckpt2 = _ckpt_setup(_ours)
  step2()  # creates the momentum slots, then the restore overwrites everything
  ckpt2.restore(path).assert_consumed()
  for _ in range(3):
    step2()
  for a, b in zip(variables2, uninterrupted):
    assert_bitwise_equal(a.numpy(), b)

  # The checkpoint layout is TF's wrapper's (base_optimizer, loss_scale, slots):
  # checkpoints move between the two wrappers in both directions.
  their_vars, their_step, their_ckpt = _ckpt_setup(_theirs)
  their_step()
  their_path = their_ckpt.save(str(tmp_path / "theirs"))
  assert ({name for name, _ in tf.train.list_variables(path)} ==
          {name for name, _ in tf.train.list_variables(their_path)})
  variables3, step3, ckpt3 = _ckpt_setup(_ours)
  step3()
  ckpt3.restore(their_path).assert_consumed()
  step3()  # continues from TF's wrapper's weights and momentum slots
  their_step()
  for a, b in zip(variables3, their_vars):
    assert_bitwise_equal(a.numpy(), b.numpy())
  _, their_step4, their_ckpt4 = _ckpt_setup(_theirs)
  their_step4()
  their_ckpt4.restore(path).assert_consumed()


def _saver_graph(d):
  graph = tf.Graph()
  with graph.as_default():
    variables = _model_vars(d)
    global_step = v1.train.get_or_create_global_step()
    opt = _ours(v1.train.AdamOptimizer(0.01), 4096)
    train_op = opt.minimize(_loss_fn(d, variables), global_step=global_step, var_list=variables)
    saver = v1.train.Saver()
  return graph, variables, global_step, train_op, saver


def test_tf1_saver_round_trip(tmp_path):
  d = _data()
  graph, variables, global_step, train_op, saver = _saver_graph(d)
  saved_names = {v.op.name for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)}
  assert any("Adam" in name for name in saved_names)  # slots are saved too
  with v1.Session(graph=graph) as sess:
    sess.run(v1.global_variables_initializer())
    for _ in range(3):
      sess.run(train_op)
    path = saver.save(sess, str(tmp_path / "model"), global_step=global_step)
    for _ in range(3):
      sess.run(train_op)
    uninterrupted = sess.run(variables)

  graph2, variables2, global_step2, train_op2, saver2 = _saver_graph(d)
  with v1.Session(graph=graph2) as sess:
    saver2.restore(sess, path)
    assert sess.run(global_step2) == 3
    for _ in range(3):
      sess.run(train_op2)
    assert sess.run(global_step2) == 6
    for a, b in zip(sess.run(variables2), uninterrupted):
      assert_bitwise_equal(a, b)
