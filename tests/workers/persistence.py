"""Worker for tests/test_persistence.py: save and load models that use the ops,
each step in a fresh process.

  save DIR       builds a TF2 SavedModel (tf.Module) and a TF1 MetaGraph+checkpoint
                 whose training steps scale the loss and unscale float16, bfloat16,
                 float32 and float64 gradients in one op; saves them, then trains
                 3 steps and writes what it saw to DIR/expected.npz
  load DIR       imports fixed_loss_scale, loads both, trains 3 steps from the
                 saved state, writes DIR/loaded.npz
  load-bare DIR  without importing fixed_loss_scale: tries to load both and
                 records the errors; then imports it, loads both, writes
                 DIR/loaded_after_import.npz
Each prints one JSON line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SCALE = 1000.1
STEPS = 3
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def batch(step):
  return np.random.default_rng(step).standard_normal((8, 4)).astype(np.float32)


def as_saveable(value):
  """npz cannot hold bfloat16: store its bits."""
  value = np.asarray(value)
  return value.view(np.uint16) if value.dtype.name == "bfloat16" else value


# ---- TF2: a tf.Module saved as a SavedModel ---------------------------------


def build_module():
  import fixed_loss_scale as fls  # only the saving process builds the model

  class Trainer(tf.Module):

    def __init__(self):
      super().__init__()
      rng = np.random.default_rng(0)
      self.ws = [tf.Variable(rng.standard_normal((4, 1)), dtype=d, name=f"w_{d}")
                 for d in DTYPES]
      self.loss_scale = fls.FixedLossScale(SCALE)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def train(self, x):
      with tf.GradientTape() as tape:
        outs = [tf.cast(tf.matmul(tf.cast(x, w.dtype), w), tf.float32) for w in self.ws]
        loss = tf.reduce_mean(tf.square(tf.add_n(outs) - 1.0))
        scaled = self.loss_scale.scale_loss(loss)
      grads = self.loss_scale.unscale_gradients(tape.gradient(scaled, self.ws))
      for w, g in zip(self.ws, grads):
        w.assign_sub(tf.cast(0.01, w.dtype) * g)
      return {"loss": loss, "scaled": scaled, **{f"grad_{d}": g for d, g in zip(DTYPES, grads)}}

  return Trainer()


def run_module(train, variables, record, prefix):
  for step in range(STEPS):
    out = train(tf.constant(batch(step)))
    for key, value in out.items():
      record[f"{prefix}_step{step}_{key}"] = as_saveable(value.numpy())
  for d, w in zip(DTYPES, variables):
    record[f"{prefix}_final_{d}"] = as_saveable(w.numpy())


# ---- TF1: a MetaGraph and checkpoint written by a Saver ---------------------


def build_tf1_graph():
  import fixed_loss_scale as fls
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
    rng = np.random.default_rng(1)
    ws = [tf.compat.v1.get_variable(f"w_{d}", initializer=tf.constant(
        rng.standard_normal((4, 1)), dtype=d)) for d in DTYPES]
    outs = [tf.cast(tf.matmul(tf.cast(x, w.dtype), w), tf.float32) for w in ws]
    loss = tf.reduce_mean(tf.square(tf.add_n(outs) - 1.0), name="loss")
    loss_scale = fls.FixedLossScale(SCALE)
    scaled = tf.identity(loss_scale.scale_loss(loss), name="scaled")
    grads = loss_scale.unscale_gradients(tf.compat.v1.gradients(scaled, ws))
    grads = [tf.identity(g, name=f"grad_{d}") for d, g in zip(DTYPES, grads)]
    train = tf.compat.v1.train.GradientDescentOptimizer(0.01).apply_gradients(
        zip(grads, ws), name="train")
    tf.compat.v1.add_to_collection("train_op", train)
    saver = tf.compat.v1.train.Saver()
  return graph, saver


def run_tf1(session, graph, record, prefix):
  fetches = {"loss": "loss:0", "scaled": "scaled:0",
             **{f"grad_{d}": f"grad_{d}:0" for d in DTYPES}}
  fetches = {k: graph.get_tensor_by_name(v) for k, v in fetches.items()}
  train = graph.get_collection("train_op")[0]
  x = graph.get_tensor_by_name("x:0")
  for step in range(STEPS):
    out, _ = session.run([fetches, train], {x: batch(step)})
    for key, value in out.items():
      record[f"{prefix}_step{step}_{key}"] = as_saveable(value)
  variables = {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
  for d in DTYPES:
    record[f"{prefix}_final_{d}"] = as_saveable(session.run(variables[f"w_{d}"]))


def load_tf1(directory, record, prefix):
  graph = tf.Graph()
  with graph.as_default():
    saver = tf.compat.v1.train.import_meta_graph(os.path.join(directory, "tf1", "model.meta"))
    with tf.compat.v1.Session(graph=graph) as session:
      saver.restore(session, os.path.join(directory, "tf1", "model"))
      types = {op.type for op in graph.get_operations()}
      run_tf1(session, graph, record, prefix)
  return types


def load_tf2(directory, record, prefix):
  loaded = tf.saved_model.load(os.path.join(directory, "tf2"))
  run_module(loaded.train, loaded.ws, record, prefix)


# ---- the three modes ---------------------------------------------------------


def save(directory):
  module = build_module()
  tf.saved_model.save(module, os.path.join(directory, "tf2"))
  graph, saver = build_tf1_graph()
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(tf.compat.v1.global_variables_initializer())
    saver.save(session, os.path.join(directory, "tf1", "model"))  # also writes model.meta
    record = {}
    run_tf1(session, graph, record, "tf1")
  run_module(module.train, module.ws, record, "tf2")
  np.savez(os.path.join(directory, "expected.npz"), **record)
  return {"saved": sorted(os.listdir(directory))}


def load(directory):
  import fixed_loss_scale  # noqa: F401  (registers the ops)
  record = {}
  load_tf2(directory, record, "tf2")
  types = load_tf1(directory, record, "tf1")
  np.savez(os.path.join(directory, "loaded.npz"), **record)
  return {"tf1_op_types": sorted(t for t in types if t.startswith("Fixed"))}


def load_bare(directory):
  report = {"imported_before": "fixed_loss_scale" in sys.modules}
  for name, fn in [("tf2", load_tf2), ("tf1", load_tf1)]:
    try:
      fn(directory, {}, name)
      report[f"{name}_error"] = None
    except Exception as error:  # noqa: BLE001  (whatever TensorFlow raises)
      report[f"{name}_error"] = f"{type(error).__name__}: {error}"
  import fixed_loss_scale  # noqa: F401
  record = {}
  load_tf2(directory, record, "tf2")
  load_tf1(directory, record, "tf1")
  np.savez(os.path.join(directory, "loaded_after_import.npz"), **record)
  return report


if __name__ == "__main__":
  mode, directory = sys.argv[1], sys.argv[2]
  result = {"save": save, "load": load, "load-bare": load_bare}[mode](directory)
  print(json.dumps(result))
