"""TensorFlow's own loss-scale tests, run against this package's classes.

TF's tensorflow/python/training/experimental/loss_scale_test.py is not in the
wheel, and its code is not copied into this repository: this module runs a copy
that the caller provides, at $FLS_TF_LOSS_SCALE_TEST or
tests/upstream/loss_scale_test_tf.py (a name pytest does not collect by
itself), and skips, saying so, where there is none. Verified with the file at
tensorflow/tensorflow commit aeeb115816644ae91978ef16c6b38049592bc5e1
(sha256 UPSTREAM_SHA256 below); another version runs too, and the first test
prints which file ran and its hash. tests/test_dynamic_loss_scale.py restates
the DynamicLossScale cases' inputs and outputs; this runs TF's code itself.

The file is loaded twice as its own module, unchanged. In one copy the name
`loss_scale_module` -- through which every test reaches the classes -- is
rebound to a namespace where `DynamicLossScale` is fixed_loss_scale's,
`FixedLossScale` is fixed_loss_scale's and `get` is fixed_loss_scale.get; in
the other it stays TF's module, the control that shows the same cases pass for
TF's classes with the same shims. No assertion is changed.

Shims for names TF 2.21 moved since that file was written (its behaviour is
untouched): `tensorflow.python.distribute.distribution_strategy_context` is
gone, its get_strategy/has_strategy/get_replica_context are
distribute_lib's; `ops.Tensor` is gone, it is `tf.Tensor`.

What runs and what cannot (against ours):
- DynamicLossScaleTest: every case (the scale trajectories of _test_helper --
  increase, capped at float32 max, decrease, floor at 1, NaN clears the good
  steps, period 1 and 2, multiplier 3, a random mix -- each with the default
  strategy and a one-CPU MirroredStrategy, in graph and eager modes;
  single-tensor gradient, serialization, None gradients, get, call type, repr).
- FixedLossScaleTest: every case, against fixed_loss_scale.FixedLossScale (its
  default, TF 2.4's contract: update never skips).
"""

import hashlib
import importlib.util
import os
import sys
import types

import pytest
import tensorflow as tf
from tensorflow.python.distribute import distribute_lib
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.training.experimental import loss_scale as tf_loss_scale

import fixed_loss_scale as fls

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM = os.environ.get("FLS_TF_LOSS_SCALE_TEST",
                          os.path.join(HERE, "upstream", "loss_scale_test_tf.py"))
UPSTREAM_SHA256 = "1b79c8bc63f7364f75fb909fdbd751e577306dcdb4b6bd087b6d072c356f5c75"
_MOVED_MODULE = "tensorflow.python.distribute.distribution_strategy_context"


def _load(name, loss_scale_module):
  """The upstream file as module `name`, its `loss_scale_module` rebound."""
  spec = importlib.util.spec_from_file_location(name, UPSTREAM)
  module = importlib.util.module_from_spec(spec)
  added = _MOVED_MODULE not in sys.modules
  if added:
    sys.modules[_MOVED_MODULE] = distribute_lib
  try:
    spec.loader.exec_module(module)
  finally:
    if added:
      del sys.modules[_MOVED_MODULE]
  module.ops = types.SimpleNamespace(**{**vars(tf_ops), "Tensor": tf.Tensor})
  module.loss_scale_module = loss_scale_module
  return module


if not os.path.exists(UPSTREAM):
  pytest.skip(
      f"TF's loss_scale_test.py is not present at {UPSTREAM}: it is not in the TensorFlow "
      "wheel and its code is not kept in this repository. Save "
      "tensorflow/python/training/experimental/loss_scale_test.py from the tensorflow "
      "repository there (or point FLS_TF_LOSS_SCALE_TEST at it) to run TF's own cases "
      "against fixed_loss_scale.DynamicLossScale", allow_module_level=True)

_ours = _load("tf_upstream_loss_scale_test_ours", types.SimpleNamespace(
    **{**vars(tf_loss_scale), "DynamicLossScale": fls.DynamicLossScale,
       "FixedLossScale": fls.FixedLossScale, "get": fls.get}))
_theirs = _load("tf_upstream_loss_scale_test_theirs", tf_loss_scale)


def test_the_upstream_file_is_the_verified_one_or_is_named():
  with open(UPSTREAM, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  print(f"running {UPSTREAM} (sha256 {digest}; verified: {digest == UPSTREAM_SHA256})")
  assert hasattr(_ours, "DynamicLossScaleTest") and hasattr(_ours, "FixedLossScaleTest")


def test_the_rebinding_reaches_our_classes():
  assert _ours.loss_scale_module.DynamicLossScale is fls.DynamicLossScale
  assert _ours.loss_scale_module.FixedLossScale is fls.FixedLossScale
  assert _theirs.loss_scale_module.DynamicLossScale is tf_loss_scale.DynamicLossScale


class TestUpstreamDynamicLossScaleOnOurs(_ours.DynamicLossScaleTest):
  """TF's DynamicLossScaleTest with fixed_loss_scale.DynamicLossScale."""


class TestUpstreamFixedLossScaleOnOurs(_ours.FixedLossScaleTest):
  """TF's FixedLossScaleTest with fixed_loss_scale.FixedLossScale."""


@pytest.mark.slow
class TestUpstreamDynamicLossScaleOnTFsControl(_theirs.DynamicLossScaleTest):
  """The control: the same file and shims, TF's own class."""
