"""What pyproject.toml cannot say statically: the wheel's TensorFlow requirement
and its platform tag.

Build through the PEP 517 backend (`pip install .`, `pip wheel .`, `make wheel`,
`make sdist`; see tools/fls_build_backend.py), which builds the op library with
./configure.sh and make first and sets FLS_TENSORFLOW_REQUIREMENT to the
TensorFlow minor version it was built for. Without it (an sdist) the requirement
is plain `tensorflow`: the sdist builds for whichever TensorFlow it finds.
The `tf-keras` extra follows it: tf-keras of the same minor version (tf-keras
releases track TensorFlow's), or plain `tf-keras` for an sdist.
"""

import os
import re

import setuptools
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
  """The wheel ships a compiled library, so it is tagged for this platform."""

  def has_ext_modules(self):
    return True


def tf_keras_requirement(tensorflow_requirement):
  """`tf-keras>=X.Y,<X.Y+1` for a `tensorflow...,<X.Y+1` pin, else `tf-keras`."""
  match = re.search(r"<\s*(\d+)\.(\d+)", tensorflow_requirement)
  if not match:
    return "tf-keras"
  major, next_minor = int(match.group(1)), int(match.group(2))
  return f"tf-keras>={major}.{next_minor - 1},<{major}.{next_minor}"


TENSORFLOW = os.environ.get("FLS_TENSORFLOW_REQUIREMENT") or "tensorflow"
setuptools.setup(
    install_requires=[TENSORFLOW, "numpy"],
    # fixed_loss_scale.tf_keras: pip install 'tf-fixed-loss-scale[tf-keras]'.
    extras_require={"tf-keras": [tf_keras_requirement(TENSORFLOW)]},
    distclass=BinaryDistribution,
    zip_safe=False,
)
