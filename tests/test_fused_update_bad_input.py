"""Bad input to FixedApplySgd / FixedApplyAdam: an InvalidArgumentError that
names the op, the argument and the value, never a crash or a silent update.
The raw ops run eagerly here, so every case reaches the kernel's checks."""

import numpy as np
import pytest
import tensorflow as tf

from fixed_loss_scale import _loader

raw = _loader.load_ops()


def _vars(*shapes, dtype=tf.float32):
  return [tf.Variable(tf.ones(s, dtype)) for s in shapes]


def _sgd(var, grads, momentums=(), scale=1024.0, flag=True, lr=0.1, **attrs):
  return raw.fixed_apply_sgd([v.handle for v in var], [m.handle for m in momentums], grads,
                             scale, flag, 1.0, lr, 0.9, 0.0, 0.0, **attrs)


def _adam(var, m, v, grads, vhat=(), scale=1024.0, flag=True, **attrs):
  return raw.fixed_apply_adam([x.handle for x in var], [x.handle for x in m],
                              [x.handle for x in v], [x.handle for x in vhat], grads, scale, flag,
                              1.0, 0.1, 0.1, 0.1, 0.001, 1e-7, 0.0, 0.0, **attrs)


def _raises(pattern, fn):
  with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
    fn()


def test_grad_shape_must_match_the_variable():
  var = _vars((3,), (4,))
  _raises(r"FixedApplySgd: var\[1\] has shape \[4\] but grad\[1\] has shape \[5\]",
          lambda: _sgd(var, [tf.ones(3), tf.ones(5)]))


def test_slot_shape_must_match():
  var, m, v = _vars((3,)), _vars((3,)), _vars((2,))
  _raises(r"FixedApplyAdam: v\[0\] has shape \[2\] but grad\[0\] has shape \[3\]",
          lambda: _adam(var, m, v, [tf.ones(3)]))


def test_variables_must_be_float32():
  var = _vars((3,), dtype=tf.float64)
  _raises(r"FixedApplySgd: var\[0\] has dtype double; only float32",
          lambda: _sgd(var, [tf.ones(3)]))


def test_optional_slot_list_is_empty_or_one_per_variable():
  var, m, v, vhat = _vars((3,), (3,)), _vars((3,), (3,)), _vars((3,), (3,)), _vars((3,))
  _raises(r"FixedApplyAdam: vhat holds 1 variables; expected one per gradient \(2\) or none",
          lambda: _adam(var, m, v, [tf.ones(3), tf.ones(3)], vhat=vhat))

  @tf.function
  def in_a_graph():  # the shape function refuses it when the op is added
    _adam(var, m, v, [tf.ones(3), tf.ones(3)], vhat=vhat)

  with pytest.raises(ValueError, match=r"FixedApplyAdam: vhat must hold 0 or N = 2 variables, "
                     r"got 1"):
    in_a_graph()


def test_decay_list_has_one_entry_per_variable():
  var = _vars((3,), (3,))
  _raises(r"FixedApplySgd: decay has 3 entries; expected none or 2",
          lambda: _sgd(var, [tf.ones(3)] * 2, decay=[True, False, True]))


@pytest.mark.parametrize("name", ["scale", "flag", "lr"])
def test_scalars_must_be_scalars(name):
  var = _vars((3,))
  kwargs = {name: [1.0, 2.0] if name != "flag" else [True, True]}
  _raises(r"FixedApplySgd: .*must be a scalar, got shape \[2\]",
          lambda: _sgd(var, [tf.ones(3)], **kwargs))


@pytest.mark.parametrize("scale", [0.0, -4.0, np.inf, np.nan, 1e-40])
def test_loss_scale_must_be_positive_finite_normal(scale):
  var = _vars((3,))
  _raises("FixedApplySgd: loss_scale must be a positive, finite, normal float32",
          lambda: _sgd(var, [tf.ones(3)], scale=scale))


def test_uninitialized_variable():
  """A handle whose variable was never assigned (TensorFlow creates the
  variable's resource at its first assignment)."""
  handle = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[3], shared_name="fused_uninit")
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"FixedApplySgd: var\[0\] is not an initialized variable: .*"
                           r"fused_uninit"):
    raw.fixed_apply_sgd([handle], [], [tf.ones(3)], 1024.0, True, 1.0, 0.1, 0.0, 0.0, 0.0)


def test_the_same_variable_twice_is_refused():
  var = _vars((3,))
  _raises("FixedApplySgd: the same variable is passed twice among var, momentums",
          lambda: _sgd(var, [tf.ones(3)], momentums=var))
  var2 = _vars((3,), (3,))
  _raises("FixedApplySgd: the same variable is passed twice",
          lambda: _sgd([var2[0], var2[0]], [tf.ones(3)] * 2))


def test_nothing_is_written_on_an_error():
  var = _vars((3,), (4,))
  with pytest.raises(tf.errors.InvalidArgumentError):
    _sgd(var, [tf.ones(3), tf.ones(5)])
  np.testing.assert_array_equal(var[0].numpy(), np.ones(3, np.float32))


def test_list_lengths_must_match_in_graphs():
  """In a graph the op definition (one N) refuses a mismatch when the op is added."""
  var = _vars((3,), (3,))

  @tf.function
  def step():
    raw.fixed_apply_sgd([v.handle for v in var], [], [tf.ones(3)], 1024.0, True, 1.0, 0.1,
                        0.0, 0.0, 0.0)

  with pytest.raises((ValueError, TypeError), match=r"List argument 'grad' to 'fixed_apply_sgd' Op "
                     r"with length 1 must match length 2 of argument 'var'"):
    step()
