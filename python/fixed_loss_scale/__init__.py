"""tf-fixed-loss-scale: a fixed loss scale for float16 training, as fused custom ops.

Importing the package loads the op library (the custom ops that
fixed_loss_scale.ops wraps) and registers the gradients of those that have
one; import it before loading a SavedModel or MetaGraph that uses them.

`fixed_loss_scale.tf_keras` (tf_keras's LossScaleOptimizer on the ops) is not
imported here: it needs the optional tf-keras package (the `[tf-keras]` extra),
and importing it registers its classes for `tf_keras.models.load_model`.
"""

from fixed_loss_scale import ops
from fixed_loss_scale.clipping import clip_by_global_norm
from fixed_loss_scale.dynamic import DynamicLossScale
from fixed_loss_scale.loss_scale import FixedLossScale
from fixed_loss_scale.loss_scale import deserialize
from fixed_loss_scale.loss_scale import get
from fixed_loss_scale.loss_scale import serialize
from fixed_loss_scale.optimizer import MixedPrecisionLossScaleOptimizer
from fixed_loss_scale.scaling import scale_loss
from fixed_loss_scale.scaling import unscale_gradients

# The Keras 3 wrapper is imported here (TensorFlow 2.21 imports Keras anyway) so
# that importing this package registers it for keras.models.load_model.
try:
  import keras as _keras
except ImportError:  # TensorFlow without Keras: the TF1 wrapper still works.
  _keras = None
if _keras is not None and _keras.backend.backend() == "tensorflow":
  from fixed_loss_scale import keras  # noqa: F401  (registers keras.FixedLossScaleOptimizer, keras.LossScaleOptimizer)
del _keras

__all__ = [
    "DynamicLossScale",
    "FixedLossScale",
    "MixedPrecisionLossScaleOptimizer",
    "clip_by_global_norm",
    "deserialize",
    "get",
    "ops",
    "scale_loss",
    "serialize",
    "unscale_gradients",
]
from fixed_loss_scale._version import __version__  # noqa: E402  (one definition)
