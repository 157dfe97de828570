"""What pyproject.toml cannot say statically: the wheel's TensorFlow requirement
and its platform tag.

Build through the PEP 517 backend (`pip install .`, `pip wheel .`, `make wheel`,
`make sdist`; see tools/fls_build_backend.py), which builds the op library with
./configure.sh and make first and sets FLS_TENSORFLOW_REQUIREMENT to the
TensorFlow minor version it was built for. Without it (an sdist) the requirement
is plain `tensorflow`: the sdist builds for whichever TensorFlow it finds.
"""

import os

import setuptools
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
  """The wheel ships a compiled library, so it is tagged for this platform."""

  def has_ext_modules(self):
    return True


setuptools.setup(
    install_requires=[os.environ.get("FLS_TENSORFLOW_REQUIREMENT") or "tensorflow", "numpy"],
    distclass=BinaryDistribution,
    zip_safe=False,
)
