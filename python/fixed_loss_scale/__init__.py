"""tf-fixed-loss-scale: a fixed loss scale for float16 training, as fused custom ops.

Importing the package loads the op library (FixedScaleLoss, FixedUnscaleGrads)
and registers their gradients; import it before loading a SavedModel or
MetaGraph that uses them.
"""

from fixed_loss_scale import ops
from fixed_loss_scale.loss_scale import FixedLossScale
from fixed_loss_scale.loss_scale import deserialize
from fixed_loss_scale.loss_scale import get
from fixed_loss_scale.loss_scale import serialize
from fixed_loss_scale.scaling import scale_loss
from fixed_loss_scale.scaling import unscale_gradients

__all__ = [
    "FixedLossScale",
    "deserialize",
    "get",
    "ops",
    "scale_loss",
    "serialize",
    "unscale_gradients",
]
__version__ = "0.1.0"
