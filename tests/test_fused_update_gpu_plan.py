"""fused_update.plan's device rule: variables on a CPU, or on a GPU where the
library registered the ops' GPU kernels (NOTE [where the GPU kernels run]).

No machine here has a GPU, and an eagerly created variable -- every Keras
optimizer's -- is placed on the CPU by soft placement whatever device it was
asked for, so plan() as a whole never sees a GPU variable here. The rule it
applies per variable is checked instead on graph-mode variables, whose device
string is kept as written, in a child process whose GPU system is injected
(FIXED_LOSS_SCALE_TEST_GPUS, as tests/test_gpu_build.py does): a supported GPU
(the GPU kernels registered) and a driver too old for the device code (not
registered).
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_MK = os.path.join(ROOT, "config.mk")
CONFIG = dict(re.findall(r"^(\w+) := (.*)$", open(_CONFIG_MK).read(), re.M)) \
    if os.path.exists(_CONFIG_MK) else {}

pytestmark = pytest.mark.skipif(CONFIG.get("WITH_CUDA") != "1",
                                reason="CPU-only build (WITH_CUDA=0 in config.mk): no GPU kernels")

_PROBE = """
import tensorflow as tf
from tensorflow.python.framework import kernels
from fixed_loss_scale import fused_update
registered = sorted(k.device_type for k in
                    kernels.get_registered_kernels_for_op("FixedApplySgd").kernel)
with tf.Graph().as_default():
  for device in ("/GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1", "/CPU:0", "/TPU:0"):
    with tf.device(device):
      variable = tf.Variable(tf.zeros([3]))
    print("DEVICE", device, "->", fused_update._device_reason(variable))
print("REGISTERED", registered)
"""


def _probe(injected):
  env = dict(os.environ, FIXED_LOSS_SCALE_TEST_GPUS=injected, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_gpu_variables_are_accepted_where_the_gpu_kernels_are_registered():
  lowest = min(int(arch[3:]) for arch in CONFIG["CUDA_ARCHS"].split())
  out = _probe(f"{CONFIG['CUDA_MIN_DRIVER']}:{lowest},90")
  assert "REGISTERED ['CPU', 'GPU']" in out, out
  assert "DEVICE /GPU:0 -> None" in out, out
  assert "DEVICE /job:localhost/replica:0/task:0/device:GPU:1 -> None" in out, out
  assert "DEVICE /CPU:0 -> None" in out, out
  assert "DEVICE /TPU:0 -> is on a TPU, where the ops have no kernel" in out, out


def test_gpu_variables_are_refused_without_the_gpu_kernels():
  out = _probe("11080:80")  # a driver older than the device code needs
  assert "REGISTERED ['CPU']" in out, out
  assert "DEVICE /GPU:0 -> is on a GPU, and this library's GPU kernels are not registered" in out
  assert "DEVICE /CPU:0 -> None" in out, out
