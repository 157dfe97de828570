"""fixed_loss_scale.clip_by_global_norm against tf.clip_by_global_norm, and the
Keras wrappers' global clipping from the unscaling pass against Keras's own.

The norm is summed in another order than TensorFlow's, so norms and clipped
values are compared with rtol=1e-5 (clipping.py, NOTE [clipping tolerance]);
everything else (None, IndexedSlices, dtypes, NaN/inf behaviour) exactly.
"""

import threading

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import graph_op_types
from conftest import random_values
from fixed_loss_scale import clipping
from fixed_loss_scale import scaling
from fixed_loss_scale.keras import FixedLossScaleOptimizer

RTOL = 1e-5
MODES = ["eager", "graph", "xla"]


def _run(mode, fn, *args):
  if mode == "eager":
    return fn(*args)
  return tf.function(fn, jit_compile=mode == "xla")(*args)


def _gradients(rng, sizes=((7, 5), (1000,), (3, 4, 5), (100003,))):
  return [tf.constant(random_values(rng, size, np.float32)) for size in sizes]


def _sparse(rng):
  values = tf.constant(random_values(rng, (3, 4), np.float32))
  return tf.IndexedSlices(values, tf.constant([5, 1, 5]), tf.constant([8, 4]))


def _assert_same_structure(ours, theirs):
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    assert (a is None) == (b is None)
    assert isinstance(a, tf.IndexedSlices) == isinstance(b, tf.IndexedSlices)
    if isinstance(a, tf.IndexedSlices):
      np.testing.assert_array_equal(a.indices.numpy(), b.indices.numpy())
      np.testing.assert_array_equal(a.dense_shape.numpy(), b.dense_shape.numpy())


def _values(g):
  return (g.values if isinstance(g, tf.IndexedSlices) else g).numpy()


def _assert_close(ours, theirs, rtol=RTOL):
  _assert_same_structure(ours, theirs)
  for a, b in zip(ours, theirs):
    if a is not None:
      assert a.dtype == b.dtype
      np.testing.assert_allclose(_values(a).astype(np.float64), _values(b).astype(np.float64),
                                 rtol=rtol, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip_norm", [1e-3, 1e9])  # clipping, and not
def test_matches_tf_clip_by_global_norm(rng, mode, clip_norm):
  grads = _gradients(rng)
  grads = grads[:2] + [None, _sparse(rng)] + grads[2:]
  clipped, norm = _run(mode, lambda *g: fls.clip_by_global_norm(list(g), clip_norm), *grads)
  ref_clipped, ref_norm = tf.clip_by_global_norm(grads, clip_norm)
  assert norm.dtype == tf.float32 and norm.shape == ()
  np.testing.assert_allclose(norm.numpy(), ref_norm.numpy(), rtol=RTOL)
  _assert_close(clipped, ref_clipped)
  if clip_norm > 1:  # not clipping: the values come back as they were
    _assert_close(clipped, grads, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_loss_scale_unscales_in_the_same_call(rng, mode):
  grads = _gradients(rng, sizes=((40, 3), (257,)))
  grads.append(_sparse(rng))
  scaled = [tf.IndexedSlices(g.values * 1024.0, g.indices, g.dense_shape)
            if isinstance(g, tf.IndexedSlices) else g * 1024.0 for g in grads]
  scale = tf.Variable(1024.0)
  for loss_scale in (1024, scale):
    clipped, norm = _run(mode, lambda *g, s=loss_scale: fls.clip_by_global_norm(
        list(g), 0.01, loss_scale=s), *scaled)
    ref_clipped, ref_norm = tf.clip_by_global_norm(scaling.unscale_gradients(scaled, 1024), 0.01)
    np.testing.assert_allclose(norm.numpy(), ref_norm.numpy(), rtol=RTOL)
    _assert_close(clipped, ref_clipped)


def test_mixed_dtypes_where_tf_fails(rng):
  grads = [tf.constant(random_values(rng, (64,), dtype)) for dtype in
           (np.float16, ml_dtypes.bfloat16, np.float32, np.float64)]
  with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
    tf.clip_by_global_norm(grads, 0.5)  # TensorFlow stacks per-dtype norms
  clipped, norm = fls.clip_by_global_norm(grads, 0.5)
  # numpy: squares of the values widened exactly, summed in float64.
  ref_norm = np.sqrt(sum(np.sum(np.square(g.numpy().astype(np.float64))) for g in grads))
  np.testing.assert_allclose(norm.numpy(), ref_norm, rtol=RTOL)
  # The scaling step is TensorFlow's own: the same bits for the same norm.
  ref_clipped, _ = tf.clip_by_global_norm(grads, 0.5, use_norm=norm)
  for a, b, g in zip(clipped, ref_clipped, grads):
    assert a.dtype == g.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_float16_norm_does_not_overflow_where_tf_does():
  grads = [tf.constant([300.0, -200.0, 100.0], tf.float16)]  # 300**2 > float16 max
  _, ref_norm = tf.clip_by_global_norm(grads, 1.0)
  assert not np.isfinite(ref_norm.numpy())  # TensorFlow: L2Loss in float16
  clipped, norm = fls.clip_by_global_norm(grads, 1.0)
  np.testing.assert_allclose(norm.numpy(), np.sqrt(140000.0), rtol=RTOL)
  np.testing.assert_allclose(clipped[0].numpy(), np.array([300, -200, 100]) / np.sqrt(140000.0),
                             rtol=1e-3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_gives_tf_nan_values(rng, mode, bad):
  grads = _gradients(rng, sizes=((5,), (6,)))
  grads[1] = tf.tensor_scatter_nd_update(grads[1], [[2]], [bad])
  clipped, norm = _run(mode, lambda *g: fls.clip_by_global_norm(list(g), 1.0), *grads)
  ref_clipped, ref_norm = tf.clip_by_global_norm(grads, 1.0)
  assert np.isnan(norm.numpy()) == np.isnan(ref_norm.numpy())
  assert np.isinf(norm.numpy()) == np.isinf(ref_norm.numpy())
  for a, b in zip(clipped, ref_clipped):
    assert np.all(np.isnan(a.numpy())) and np.all(np.isnan(b.numpy()))


def test_arguments_as_tf():
  with pytest.raises(TypeError, match="should be a sequence"):
    fls.clip_by_global_norm(tf.constant([1.0]), 1.0)
  clipped, norm = fls.clip_by_global_norm([None, None], 1.0)
  assert clipped == [None, None] and float(norm) == 0.0
  clipped, norm = fls.clip_by_global_norm((tf.constant([3.0, 4.0]),), tf.constant(1.0))
  np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)
  assert float(norm) == 5.0


# --- the Keras wrappers ----------------------------------------------------------

def _steps(make_optimizer, scaled_grads):
  v = keras.Variable(np.array([1.0, -2.0, 3.0, 0.5], np.float32))
  opt = make_optimizer()
  opt.build([v])
  step = tf.function(lambda g: opt.apply([g], [v]))
  for g in scaled_grads:
    step(tf.constant(g, np.float32))
  return v.numpy(), opt


GRADS = [[30.0, -10.0, 5.0, 60.0], [0.5, 0.25, -0.125, 0.0], [300.0, 100.0, -50.0, 20.0]]


@pytest.mark.parametrize("skip_non_finite", [False, True])
def test_fixed_wrapper_clips_from_the_unscaling_pass(monkeypatch, skip_non_finite):
  calls = []
  original = keras.optimizers.SGD._clip_gradients
  monkeypatch.setattr(keras.optimizers.SGD, "_clip_gradients",
                      lambda self, grads: calls.append(1) or original(self, grads))
  scale = 256.0
  ours, opt = _steps(lambda: FixedLossScaleOptimizer(
      keras.optimizers.SGD(0.5, momentum=0.5, global_clipnorm=2.0), scale,
      skip_non_finite=skip_non_finite), [np.float32(scale) * np.array(g, np.float32)
                                         for g in GRADS])
  assert not calls  # the inner optimizer did not clip
  assert "_clip_gradients" not in vars(opt.inner_optimizer)
  assert opt.inner_optimizer.get_config()["global_clipnorm"] == 2.0
  # Keras's own clipping of the true gradients.
  theirs, _ = _steps(lambda: keras.optimizers.SGD(0.5, momentum=0.5, global_clipnorm=2.0), GRADS)
  assert calls
  np.testing.assert_allclose(ours, theirs, rtol=RTOL)


def test_fixed_wrapper_graph_has_one_norm_pass():
  # The traced step squares what the seam squares (nothing with the fused op)
  # and has none of Keras's global_norm (a Square per gradient, then Pack).
  v = [keras.Variable(np.ones((3, 3), np.float32)), keras.Variable(np.ones(3, np.float32))]
  specs = (tf.TensorSpec([3, 3]), tf.TensorSpec([3]))
  opt = FixedLossScaleOptimizer(keras.optimizers.SGD(0.1, global_clipnorm=1.0), 8)
  opt.build(v)
  step = tf.function(lambda g0, g1: opt.apply([g0, g1], v))
  seam = tf.function(lambda g0, g1: scaling.unscale_and_check([g0, g1], 8.0, sum_of_squares=True))
  step_types = graph_op_types(step.get_concrete_function(*specs))
  seam_types = graph_op_types(seam.get_concrete_function(*specs))
  assert step_types.count("Square") == seam_types.count("Square")
  assert step_types.count("Pack") == seam_types.count("Pack")


def test_fused_global_clipnorm_decision():
  assert clipping.fused_global_clipnorm(keras.optimizers.SGD(global_clipnorm=0.5)) == 0.5
  assert clipping.fused_global_clipnorm(keras.optimizers.SGD()) is None
  assert clipping.fused_global_clipnorm(keras.optimizers.SGD(clipnorm=0.5)) is None
  assert clipping.fused_global_clipnorm(keras.optimizers.SGD(clipvalue=0.5)) is None
  assert clipping.fused_global_clipnorm(keras.optimizers.SGD(
      global_clipnorm=0.5, gradient_accumulation_steps=2)) is None


def test_skipping_is_per_thread_and_per_optimizer():
  a, b = keras.optimizers.SGD(global_clipnorm=1.0), keras.optimizers.SGD(global_clipnorm=1.0)
  grads = [tf.constant([3.0, 4.0])]
  seen = {}
  with clipping.inner_global_clipping_skipped(a):
    seen["a"] = a._clip_gradients(grads)[0].numpy()  # pylint: disable=protected-access
    seen["b"] = b._clip_gradients(grads)[0].numpy()  # pylint: disable=protected-access
    thread = threading.Thread(
        target=lambda: seen.update(other=a._clip_gradients(grads)[0].numpy()))  # pylint: disable=protected-access
    thread.start()
    thread.join()
  assert "_clip_gradients" not in vars(a)
  np.testing.assert_array_equal(seen["a"], [3.0, 4.0])  # passed through
  np.testing.assert_allclose(seen["b"], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(seen["other"], [0.6, 0.8], rtol=1e-6)
