"""What FixedLossScale and fixed_loss_scale.get() accept as the scale, and how
they refuse the rest: the exception type and a message saying what was passed.
"""

import numpy as np
import pytest
import tensorflow as tf

import fixed_loss_scale as fls
from conftest import assert_bitwise_equal

# ---- FixedLossScale and get(): what the scale may be ------------------------------

GOOD_SCALES = [8, 8.0, np.float32(8), np.float64(8), np.float16(8), np.int64(8), np.int32(8),
               np.uint8(8), np.int8(8), np.array(8.0), np.array([8], np.int64)]


@pytest.mark.parametrize("value", GOOD_SCALES, ids=lambda v: f"{type(v).__name__}({v!r})")
def test_fixed_loss_scale_accepts_real_scalars(value):
  scale = fls.FixedLossScale(value)
  assert type(scale.loss_scale_value) is float and scale.loss_scale_value == 8.0
  assert scale().dtype == tf.float32 and scale().numpy() == 8.0
  grads = scale.unscale_gradients([tf.constant([8.0, 1.0])])
  assert_bitwise_equal(grads[0].numpy(), np.array([1.0, 0.125], np.float32))


class _Weird:
  def __float__(self):
    return 8.0


# (value, the exception, a piece of the message that says what was passed)
REJECTED = [
    (True, TypeError, "bool"),
    (False, TypeError, "bool"),
    (np.bool_(True), TypeError, "bool"),
    ("8", TypeError, "str"),
    (b"8", TypeError, "bytes"),
    (None, TypeError, "NoneType"),
    ([8.0], TypeError, "list"),
    ((8.0,), TypeError, "tuple"),
    ({"value": 8}, TypeError, "dict"),
    (np.array([8.0, 2.0]), TypeError, "shape (2,)"),
    (np.ones((2, 2)), TypeError, "shape (2, 2)"),
    (np.array([]), TypeError, "shape (0,)"),
    (np.array(["8"]), TypeError, "ndarray"),
    (np.array([True]), TypeError, "ndarray"),
    (8 + 0j, TypeError, "complex"),
    (np.complex64(8), TypeError, "complex64"),
    (_Weird(), TypeError, "_Weird"),
    (0, ValueError, "got 0.0"),
    (0.5, ValueError, "got 0.5"),
    (-8, ValueError, "got -8.0"),
    (np.float32(np.nan), ValueError, "got nan"),
    (np.inf, ValueError, "got inf"),
    (-np.inf, ValueError, "got -inf"),
    (np.float64(1e39), ValueError, "got 1e+39"),
    (2**127, ValueError, "got 1.7014118346046923e+38"),
    (10**400, ValueError, "1000000000"),
]


@pytest.mark.parametrize("value,error,says", REJECTED,
                         ids=[f"{type(v).__name__}-{i}" for i, (v, _, _) in enumerate(REJECTED)])
def test_fixed_loss_scale_rejects_with_a_message_saying_what_it_got(value, error, says):
  with pytest.raises(error) as info:
    fls.FixedLossScale(value)
  assert says in str(info.value), str(info.value)
  assert "loss_scale_value" in str(info.value)


def test_fixed_loss_scale_rejects_tensors_and_variables_eagerly_and_in_graphs():
  for value in [tf.constant(8.0), tf.Variable(8.0), tf.constant([8.0])]:
    with pytest.raises(TypeError, match="loss_scale_value must be a Python or numpy"):
      fls.FixedLossScale(value)

  @tf.function
  def build(x):
    return fls.FixedLossScale(x)

  with pytest.raises(TypeError, match="got (Symbolic)?Tensor"):
    build(tf.constant(8.0))


@pytest.mark.parametrize("value", [True, "8", [8], None.__class__, np.array([1.0, 2.0]), -1, 0.5])
def test_get_rejects_what_it_cannot_interpret(value):
  with pytest.raises(ValueError):
    fls.get(value)

