"""Keras 3's own LossScaleOptimizer tests, run against this package's wrappers.

The test module ships with Keras (keras/src/optimizers/loss_scale_optimizer_test.py).
It is imported from the installed package, not copied: the first subclass
below replaces the name `LossScaleOptimizer` in that module, for the duration
of each test, by an adapter that builds FixedLossScaleOptimizer with the
meaning Keras 3 refuses, `LossScaleOptimizer(opt, dynamic=False, initial_scale=s)`: the scale is
`initial_scale` (default 2**15, as Keras's), and stays there.

Keras's assertions are unchanged. The tests that need a dynamic scale (one that
skips non-finite steps, halves and doubles itself, and has a growth schedule in
its config) are skipped there, each with its reason; the `stateless` variants skip
themselves on the TensorFlow backend, as they do for Keras's own class.

The second subclass runs the whole suite against the drop-in
`fixed_loss_scale.keras.LossScaleOptimizer` (keras_dynamic.py), put in place
of Keras's class as it is: nothing skipped but the `stateless` variants.
"""

import pytest

from fixed_loss_scale.keras import FixedLossScaleOptimizer
from fixed_loss_scale.keras import LossScaleOptimizer

upstream = pytest.importorskip("keras.src.optimizers.loss_scale_optimizer_test")


class FixedAsLossScaleOptimizer:
  """Keras 3's LossScaleOptimizer signature, building FixedLossScaleOptimizer.

  `initial_scale` becomes the fixed `loss_scale`; `dynamic_growth_steps`, which
  only schedules a dynamic scale's growth, has nothing to act on and is
  dropped; every other argument reaches FixedLossScaleOptimizer as given, so
  its own checks (base-optimizer arguments, unknown arguments) are the ones
  tested.
  """

  def __new__(cls, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
              name=None, **kwargs):
    del dynamic_growth_steps
    return FixedLossScaleOptimizer(inner_optimizer, initial_scale, name=name, **kwargs)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config["loss_scale"] = config.pop("initial_scale", 2.0**15)
    config.pop("dynamic_growth_steps", None)
    return FixedLossScaleOptimizer.from_config(config, custom_objects=custom_objects)


NEEDS_A_DYNAMIC_SCALE = {
    "test_infinite_step_stateful":
        "needs a dynamic scale: it skips a step with non-finite gradients, where a fixed "
        "scale applies them as they are (TF 2.4 FixedLossScale's contract)",
    "test_downscaling_stateful": "needs a dynamic scale: it halves the scale on inf gradients",
    "test_upscaling_stateful": "needs a dynamic scale: it doubles the scale every "
                               "dynamic_growth_steps finite steps",
    "test_serialization":
        "asserts a dynamic scale's config (initial_scale, dynamic_growth_steps); a fixed "
        "scale's config is name, inner_optimizer, loss_scale, unscale_in_apply (checked in "
        "test_keras_optimizer.py)",
    "test_init_dynamic_arg":
        "asserts that dynamic=True is accepted and dynamic=False refused, the reverse of "
        "what a fixed-scale wrapper means",
}


class TestKerasLossScaleOptimizerSuiteOnFixedScale(upstream.LossScaleOptimizerTest):
  """Keras 3's LossScaleOptimizerTest with FixedLossScaleOptimizer in place of its class."""

  def setUp(self):
    super().setUp()
    reason = NEEDS_A_DYNAMIC_SCALE.get(self._testMethodName)
    if reason is not None:
      self.skipTest(reason)
    original = upstream.LossScaleOptimizer
    upstream.LossScaleOptimizer = FixedAsLossScaleOptimizer
    self.addCleanup(setattr, upstream, "LossScaleOptimizer", original)

  def test_the_suite_builds_our_wrapper(self):
    # Keras's tests build their optimizer through the module-level name this
    # class replaces; were that to change, they would test Keras's class.
    optimizer = upstream.LossScaleOptimizer(upstream.SGD(learning_rate=0.5), initial_scale=8.0)
    self.assertIsInstance(optimizer, FixedLossScaleOptimizer)
    self.assertEqual(optimizer.loss_scale, 8.0)
    self.assertEqual(optimizer.dynamic, False)


class TestKerasLossScaleOptimizerSuiteOnDropIn(upstream.LossScaleOptimizerTest):
  """Keras 3's LossScaleOptimizerTest, every test, with the drop-in in place of its class."""

  def setUp(self):
    super().setUp()
    original = upstream.LossScaleOptimizer
    upstream.LossScaleOptimizer = LossScaleOptimizer
    self.addCleanup(setattr, upstream, "LossScaleOptimizer", original)

  def test_the_suite_builds_the_drop_in(self):
    optimizer = upstream.LossScaleOptimizer(upstream.SGD(learning_rate=0.5), initial_scale=8.0)
    self.assertIs(type(optimizer), LossScaleOptimizer)
    self.assertEqual(optimizer.initial_scale, 8.0)


def test_the_suite_still_has_the_tests_this_module_relies_on():
  # If Keras renames or drops tests, the skip list above would silently stop
  # matching, or the suite would shrink: pin what it contains.
  names = {name for name in dir(upstream.LossScaleOptimizerTest) if name.startswith("test_")}
  assert set(NEEDS_A_DYNAMIC_SCALE) <= names
  run_here = {
      "test_config", "test_apply_with_no_vars", "test_finite_step_stateful",
      "test_finite_step_with_inner_loss_scale_stateful", "test_finite_step_with_overwrite_stateful",
      "test_iterations_update_stateful", "test_init_unsupported_arg",
      "test_init_base_optimizer_unsupported_args_clipnorm",
      "test_deserialization_backwards_compatibility",
  }
  assert run_here <= names
