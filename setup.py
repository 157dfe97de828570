"""Packaging for tf-fixed-loss-scale: the Python package plus the prebuilt op library.

Build the library first (`make`); `make wheel` then packs it into a
platform-specific wheel.
"""

import setuptools
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
  """The wheel ships a compiled library, so it is tagged for this platform."""

  def has_ext_modules(self):
    return True


setuptools.setup(
    name="tf-fixed-loss-scale",
    version="0.1.0",
    description="FixedLossScale for TensorFlow 2 as fused graph-native custom ops",
    package_dir={"": "python"},
    packages=["fixed_loss_scale"],
    package_data={"fixed_loss_scale": ["_fixed_loss_scale_ops.so", "_build_info.json"]},
    python_requires=">=3.9",
    install_requires=["tensorflow", "numpy"],
    distclass=BinaryDistribution,
    zip_safe=False,
)
