"""What the two restated halves of tf_keras's loss_scale_optimizer_test.py share.

The classes under test (`CLASSES[which]`): "ours" is
fixed_loss_scale.tf_keras's front (`base`, tf_keras's BaseLossScaleOptimizer
role), its `LossScaleOptimizer` for legacy optimizers (`legacy`) and
`LossScaleOptimizerV3` (`v3`); "tf_keras" is tf_keras's own three, the
control that shows each restated case asks what upstream asks.

Upstream's combinations become `FULL` (opt_and_strategy_and_mode_combinations:
the new optimizer eagerly with and without tf.function, the legacy one in
graph and eager modes, each with the default strategy and a one-device
MirroredStrategy) and `FAMILIES_ONLY` (opt_combinations_only: each family,
eagerly).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.src.mixed_precision import loss_scale_optimizer as tfk_lso

from fixed_loss_scale import tf_keras as ftk
from upstream_modes import STRATEGIES
from upstream_modes import identity_asserting_its_gradient
from upstream_modes import run_in_mode

CLASSES = {
    "ours": {"base": ftk.LossScaleOptimizer, "legacy": ftk.LegacyLossScaleOptimizer,
             "v3": ftk.LossScaleOptimizerV3},
    "tf_keras": {"base": tfk_lso.BaseLossScaleOptimizer, "legacy": tfk_lso.LossScaleOptimizer,
                 "v3": tfk_lso.LossScaleOptimizerV3},
}
SGD = {"new": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}
ADAM = {"new": tf_keras.optimizers.Adam, "legacy": tf_keras.optimizers.legacy.Adam}

# (family, strategy, mode, use_tf_function)
FULL = [("new", s, "eager", f) for s in sorted(STRATEGIES) for f in (False, True)] + [
    ("legacy", s, m, False) for s in sorted(STRATEGIES) for m in ("graph", "eager")]
FAMILIES_ONLY = ["new", "legacy"]

which_param = pytest.mark.parametrize("which", sorted(CLASSES))
full_param = pytest.mark.parametrize("family,strategy,mode,use_tf_function", FULL)
family_param = pytest.mark.parametrize("family", FAMILIES_ONLY)


def full_cases(test):
  """Upstream's opt_and_strategy_and_mode_combinations, for each class."""
  return full_param(which_param(test))


def family_cases(test):
  """Upstream's opt_combinations_only, for each class."""
  return family_param(which_param(test))


def create_lso(which, inner, dynamic=True, initial_scale=None, dynamic_growth_steps=None):
  """Upstream's create_lso: the front class, which picks the family's class."""
  return CLASSES[which]["base"](inner, dynamic=dynamic, initial_scale=initial_scale,
                                dynamic_growth_steps=dynamic_growth_steps)


def run_if_graph(evaluate, value):
  """Upstream's _run_if_in_graph_mode."""
  if not tf.executing_eagerly():
    evaluate(value)


def eval_if_tensor(evaluate, value):
  """Upstream's _eval_if_tensor: hyperparameters are variables on legacy
  optimizers and Python floats on the new ones."""
  return evaluate(value) if isinstance(value, (tf.Tensor, tf.Variable)) else value


def minimizing(opt, loss, var, use_tf_function=False):
  """`opt.minimize(loss, var_list=[var])` as a function to run (a tf.function
  when asked)."""
  return maybe_function(lambda: opt.minimize(loss, var_list=[var]), use_tf_function)


def run_step(evaluate, strategy_obj, run_fn, initialize=False):
  """strategy.experimental_run(run_fn), then upstream's _run_if_in_graph_mode,
  the variables initialized first when asked."""
  run_op = strategy_obj.experimental_run(run_fn)
  if initialize:
    evaluate(tf.compat.v1.global_variables_initializer())
  run_if_graph(evaluate, run_op)


def run_fn_with_grad_check(strategy, var, opt, expected_grad):
  """Upstream's _run_fn_with_grad_check: minimize of identity(var) / replicas,
  asserting the gradient reaching the identity."""
  checked = identity_asserting_its_gradient(expected_grad)
  replicas = strategy.num_replicas_in_sync
  return lambda: opt.minimize(lambda: checked(var) / replicas, var_list=[var])


def in_full_mode(mode, strategy, fn):
  """Runs `fn(evaluate, strategy_obj)` in `mode` inside the strategy's scope."""

  def case(evaluate):
    with STRATEGIES[strategy]().scope() as strategy_obj:
      return fn(evaluate, strategy_obj)

  return run_in_mode(mode, case)


def maybe_function(fn, use_tf_function):
  return tf.function(fn) if use_tf_function else fn


def assert_all_close(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
