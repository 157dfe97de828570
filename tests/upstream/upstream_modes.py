"""What the restated upstream tests share: TensorFlow's test modes, said for pytest.

- `run_in_mode(mode, fn)` is one half of TF's `run_in_graph_and_eager_modes`:
  `fn(evaluate)` in a fresh graph with its own session (`evaluate` is
  `session.run`), or eagerly (`evaluate` turns every tensor and variable of a
  structure into numpy and leaves the rest, ops and Python values, as they are).
- `STRATEGIES` are the upstream files' two cases: the default strategy, and a
  MirroredStrategy on cpu:0 (with gpu:0 where there is one, as upstream).
- `identity_asserting_its_gradient(expected)` is the upstream helper's
  contract: an identity whose backward pass asserts (with an assert op that
  runs in the graph) that the gradient it gets equals `expected`, converted to
  the gradient's dtype when the backward pass runs (a variable is read then).
"""

import tensorflow as tf


def run_in_mode(mode, fn):
  if mode == "eager":
    return fn(_evaluate_eagerly)
  assert mode == "graph", mode
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    return fn(session.run)


def _evaluate_eagerly(structure):
  def to_numpy(value):
    return value.numpy() if isinstance(value, (tf.Tensor, tf.Variable)) else value
  return tf.nest.map_structure(to_numpy, structure)


def mirrored_strategy():
  devices = ["cpu:0", "gpu:0"] if tf.config.list_logical_devices("GPU") else ["cpu:0"]
  return tf.distribute.MirroredStrategy(devices)


STRATEGIES = {"default": tf.distribute.get_strategy, "mirrored": mirrored_strategy}


def identity_asserting_its_gradient(expected):

  @tf.custom_gradient
  def identity(x):
    x = tf.identity(x)

    def backward(dx):
      wanted = tf.convert_to_tensor(expected, dtype=dx.dtype)
      with tf.control_dependencies([x]):
        check = tf.debugging.assert_equal(dx, wanted)
      with tf.control_dependencies([check]):
        return tf.identity(dx)

    return x, backward

  return lambda x: identity(x)  # pylint: disable=unnecessary-lambda
