"""Keras 3's own SGD, Adam and AdamW tests, stepped through the fused update.

The test modules ship with Keras (keras/src/optimizers/{sgd,adam,adamw}_test.py)
and are imported from the installed package, not copied. For each test that
steps an optimizer, the module's optimizer class is replaced, for the
duration of the test, by a factory wrapping it in `_FusedStepping`: the
drop-in `fixed_loss_scale.keras.LossScaleOptimizer` at scale 1 (the suite's
gradients are not scaled), whose `apply` runs inside a tf.function -- where
the fused op runs (it never runs eagerly) -- and which records the op types
of each step; each such test must have run the fused op (or, listed in
FALLS_BACK with the reason, must not have). Keras's assertions are unchanged. Tests that never step (configs, argument checks, calls of
`_clip_gradients`) or that need what the fused update leaves to Keras
(`use_ema`, `clipnorm`) are skipped, each with its reason.
"""

import keras
import pytest
import tensorflow as tf

from conftest import graph_op_types
from fixed_loss_scale import fused_update
from fixed_loss_scale.keras import LossScaleOptimizer

sgd_test = pytest.importorskip("keras.src.optimizers.sgd_test")
adam_test = pytest.importorskip("keras.src.optimizers.adam_test")
adamw_test = pytest.importorskip("keras.src.optimizers.adamw_test")

_STEPS = {}  # id(optimizer) -> op types of its steps


class _FusedStepping(LossScaleOptimizer):
  """The drop-in at scale 1 whose `apply` runs in a tf.function (module docstring)."""

  def __init__(self, inner_optimizer):
    super().__init__(inner_optimizer, initial_scale=1.0)

  def apply(self, grads, trainable_variables=None):
    if not self.built:
      self.build(trainable_variables)
      self.built = True
    step = tf.function(lambda g: LossScaleOptimizer.apply(self, g, trainable_variables))
    grads = list(grads)
    step(grads)
    _STEPS.setdefault(id(self), []).extend(
        graph_op_types(step.get_concrete_function(grads)))

  @property
  def variables(self):
    """The inner optimizer's: the suite counts and reads those (iterations,
    learning rate), not the wrapper's scale and step counter."""
    return self.inner_optimizer.variables

  def exclude_from_weight_decay(self, var_list=None, var_names=None):
    self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)


NOT_STEPPED = {
    "test_config": "serializes the inner class's config; nothing is stepped",
    "test_invalid_momentum": "checks the inner class's constructor; nothing is stepped",
    "test_weight_decay_is_none": "checks the inner class's constructor; nothing is stepped",
    "test_clip_norm": "calls the inner class's _clip_gradients; nothing is stepped",
    "test_clip_value": "calls the inner class's _clip_gradients; nothing is stepped",
    "test_ema": "use_ema keeps Keras's apply (fused_update.ineligible_reason; "
                "test_fused_update_keras.py checks the fallback)",
    "test_ema_overwrite_frequency": "use_ema keeps Keras's apply (as test_ema)",
    "test_clipnorm_indexed_slices": "clipnorm keeps Keras's apply "
                                    "(test_fused_update_keras.py checks the fallback)",
}


# Tests that step through the wrapper but whose step the fused update must
# leave to Keras (they still run, and must run no fused op).
FALLS_BACK = {
    ("SGD", "test_correctness_with_golden"):
        "its variable is float64 (backend.Variable(np.ones(...))); the fused update takes "
        "float32 variables",
}


def _suite(upstream, class_name):
  """The upstream TestCase with the class `class_name` fused (module docstring)."""

  class Suite(getattr(upstream, f"{class_name}Test")):

    def setUp(self):
      super().setUp()
      reason = NOT_STEPPED.get(self._testMethodName)
      if reason is not None:
        self.skipTest(reason)
      original = getattr(upstream, class_name)
      made = []

      def fused(*args, **kwargs):
        optimizer = _FusedStepping(original(*args, **kwargs))
        made.append(optimizer)
        return optimizer

      setattr(upstream, class_name, fused)
      self.addCleanup(setattr, upstream, class_name, original)
      self.addCleanup(self._assert_fused, made)

    def _assert_fused(self, made):
      self.assertTrue(made, "the test built no optimizer")
      expected = (class_name, self._testMethodName) not in FALLS_BACK
      for optimizer in made:
        types = _STEPS.pop(id(optimizer), [])
        fused = any(op in types for op in (fused_update.SGD_OP, fused_update.ADAM_OP))
        self.assertEqual(fused, expected, f"fused op in the steps of {optimizer.inner_optimizer}")

  Suite.__name__ = Suite.__qualname__ = f"Test{class_name}SuiteFused"
  return Suite


TestSGDSuiteFused = _suite(sgd_test, "SGD")
TestAdamSuiteFused = _suite(adam_test, "Adam")
TestAdamWSuiteFused = _suite(adamw_test, "AdamW")


def test_the_suites_have_stepping_tests():
  """Keras's files still hold the tests this file runs (a renamed test would
  silently leave nothing fused)."""
  for suite in (TestSGDSuiteFused, TestAdamSuiteFused, TestAdamWSuiteFused):
    names = {n for n in dir(suite) if n.startswith("test_")} - set(NOT_STEPPED)
    assert {"test_single_step", "test_weight_decay", "test_correctness_with_golden"} <= names
  assert keras.optimizers.SGD is sgd_test.SGD or sgd_test.SGD.__name__ == "SGD"
