"""tf_keras's loss_scale_optimizer_test.py, restated (attributes: iterations,
weights, hyperparameters and what the wrapper delegates).

Upstream, version, license and method: see test_tf_keras_lso_restated.py.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_keras_restate import ADAM
from tf_keras_restate import CLASSES
from tf_keras_restate import SGD
from tf_keras_restate import assert_all_close
from tf_keras_restate import create_lso
from tf_keras_restate import eval_if_tensor
from tf_keras_restate import family_cases
from tf_keras_restate import which_param

BASES = {"new": tf_keras.optimizers.Optimizer, "legacy": tf_keras.optimizers.legacy.Optimizer}


@which_param
def test_iterations(which):
  inner = SGD["legacy"](2.0)
  lso = CLASSES[which]["legacy"](inner, dynamic=False, initial_scale=10.0)
  lso.iterations = 7
  assert lso.iterations == 7 and inner.iterations == 7


@which_param
def test_weight_methods(which):
  var = tf.Variable([1.0])
  opt = CLASSES[which]["legacy"](SGD["legacy"](1.0), initial_scale=2.0, dynamic_growth_steps=1)
  opt.minimize(lambda: var * 2, [var])
  assert len(opt.weights) == 1  # iterations
  assert opt.weights[0].numpy() == 1 and opt.get_weights()[0] == 1
  assert opt.variables()[0].numpy() == 1
  opt.set_weights([np.array(2.0)])
  assert opt.variables()[0].numpy() == 2


@which_param
def test_hyper_parameters_exposed_lso_v3(which):
  inner = ADAM["new"](learning_rate=1.0, beta_1=0.5, beta_2=0.9)
  lso = CLASSES[which]["base"](inner)
  lso.learning_rate = tf.Variable(0.005)
  assert_all_close(lso.learning_rate.numpy(), 0.005)
  assert lso.learning_rate is inner.learning_rate
  lso.use_ema = True
  assert lso.use_ema is True and inner.use_ema is True
  lso.ema_momentum = 0.88
  assert lso.ema_momentum == 0.88 and inner.ema_momentum == 0.88


@which_param
def test_hyper_parameters_exposed(which):
  inner = ADAM["legacy"](learning_rate=1.0, beta_1=0.5, beta_2=0.9)
  lso = CLASSES[which]["legacy"](inner)
  inner.lr  # pylint: disable=pointless-statement  (creates the hyperparameters)
  assert lso.beta_1.numpy() == 0.5 and isinstance(lso.beta_1, tf.Variable)
  assert lso.lr.numpy() == 1.0 and lso.lr is inner.lr and lso.lr is lso.learning_rate
  lso.beta_1 = 0.25
  assert lso.beta_1.numpy() == inner.beta_1.numpy() == 0.25 and lso.beta_1 is inner.beta_1
  inner.beta_1 = 0.75
  assert lso.beta_1.numpy() == inner.beta_1.numpy() == 0.75 and lso.beta_1 is inner.beta_1
  lso.lr = 2.0
  assert lso.lr.numpy() == lso.learning_rate.numpy() == 2.0
  assert inner.lr.numpy() == inner.learning_rate.numpy() == 2.0 and lso.lr is inner.lr

  class WithLossScaleHyper(SGD["legacy"]):
    def __init__(self):
      super().__init__()
      self._set_hyper("loss_scale", 123.0)

  lso = CLASSES[which]["legacy"](WithLossScaleHyper())
  with pytest.raises(AttributeError):
    lso.loss_scale = 2.0  # the LossScaleOptimizer's attribute, not the inner hyperparameter


@family_cases
def test_arbitrary_attributes_not_exposed(which, family):
  inner = SGD[family]()
  lso = create_lso(which, inner)
  assert not inner.nesterov
  with pytest.raises(AttributeError,
                     match="'LossScaleOptimizer(V3)?' object has no attribute 'nesterov'"):
    lso.nesterov  # pylint: disable=pointless-statement
  lso.nesterov = True
  assert lso.nesterov and not inner.nesterov


@which_param
def test_dir(which):
  lso = CLASSES[which]["legacy"](SGD["legacy"]())
  names = dir(lso)
  assert {"learning_rate", "lr", "minimize", "loss_scale"} <= set(names)
  assert "nesterov" not in names and "nesterov" in dir(lso.inner_optimizer)


@family_cases
def test_loss_scale_delegation_with_wrapper(which, family):
  class Wrapper(BASES[family]):
    def __init__(self):
      super().__init__("MyOptimizer")
      self.inner_optimizer = SGD[family](learning_rate=1.0)

    @property
    def learning_rate(self):
      return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
      self.inner_optimizer.learning_rate = value

    def get_config(self):
      return {}

  opt = create_lso(which, Wrapper())
  assert eval_if_tensor(lambda v: np.asarray(v), opt.learning_rate) == 1.0
  assert float(np.asarray(opt.inner_optimizer.inner_optimizer.learning_rate)) == 1.0
  opt.learning_rate = 2.0
  assert float(np.asarray(opt.learning_rate)) == 2.0
  assert float(np.asarray(opt.inner_optimizer.inner_optimizer.learning_rate)) == 2.0
