"""The Keras wrappers with the fused update (fused_update.py, NOTE [fused update
in the wrappers]) against Keras 3's own classes.

`model.fit` under `mixed_float16` (float16 compute, float32 variables) with
injected overflows (inf sample weights) and a dynamic scale that moves both
ways: the drop-in `fixed_loss_scale.keras.LossScaleOptimizer` (fused by
default) must leave the weights, slots, scale, step counter and iterations of
Keras's `LossScaleOptimizer` bit for bit, for every update rule, and its step
must hold the fused op and no inner `apply`. The fixed-scale wrapper (with and
without `skip_non_finite`, with global clipping) is compared with itself
built with `fused_update=False`, today's path. Checkpoints move both ways;
the cases the fused update does not take keep today's graph.
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_bitwise_equal
from conftest import graph_op_types
from fixed_loss_scale import fused_update
from fixed_loss_scale.keras import FixedLossScaleOptimizer
from fixed_loss_scale.keras import LossScaleOptimizer
# The data of the drop-in's own tests: 64 rows, batches of BATCH, inf sample
# weights in POISONED_BATCHES of each epoch of 16.
from test_keras_dynamic import BATCH
from test_keras_dynamic import POISONED_BATCHES
from test_keras_dynamic import _data

KerasLossScaleOptimizer = keras.optimizers.LossScaleOptimizer
FUSED_OPS = (fused_update.SGD_OP, fused_update.ADAM_OP)


def _schedule():
  return keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=7, decay_rate=0.9)


RULES = {
    "sgd": lambda: keras.optimizers.SGD(0.01),
    "sgd_momentum": lambda: keras.optimizers.SGD(_schedule(), momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.01, momentum=0.8, nesterov=True,
                                                 weight_decay=0.01),
    "adam": lambda: keras.optimizers.Adam(_schedule()),
    "adam_amsgrad": lambda: keras.optimizers.Adam(1e-2, amsgrad=True),
    "adamw": lambda: keras.optimizers.AdamW(_schedule(), weight_decay=0.05),
    "adamw_amsgrad": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05, amsgrad=True),
}


def _model():
  keras.utils.set_random_seed(7)
  return keras.Sequential([
      keras.Input((8,)),
      keras.layers.Dense(32, activation="tanh"),
      keras.layers.Dense(5, activation="tanh"),
      keras.layers.Dense(1),
  ])


def _fit(opt, epochs, jit_compile=False):
  x, y, sample_weight = _data()
  model = _model()
  model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
  model.fit(x, y, sample_weight=sample_weight, batch_size=BATCH, epochs=epochs, shuffle=False,
            verbose=0)
  return model


def _state(model, opt):
  return [w.numpy() for w in model.trainable_weights] + [v.numpy() for v in opt.variables]


def _op_types(model):
  step_fn = inspect.getclosurevars(model.train_function).nonlocals["multi_step_on_iterator"]
  return [t for cf in step_fn._list_all_concrete_functions() for t in graph_op_types(cf)]  # pylint: disable=protected-access


def _assert_same(model, opt, ref_model, ref_opt):
  assert int(opt.iterations.numpy()) == int(ref_opt.iterations.numpy())
  for a, b in zip(_state(model, opt), _state(ref_model, ref_opt)):
    assert_bitwise_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("rule", sorted(RULES))
def test_dynamic_drop_in_fit_bit_identical_to_keras(mixed_float16, rule):
  # 20 epochs of 16 steps, with injected overflows and a scale that doubles
  # every 4 finite steps (so natural float16 overflows too).
  args = {"initial_scale": 2.0**12, "dynamic_growth_steps": 4}
  opt = LossScaleOptimizer(RULES[rule](), **args)
  ref_opt = KerasLossScaleOptimizer(RULES[rule](), **args)
  model, ref_model = _fit(opt, 20), _fit(ref_opt, 20)
  _assert_same(model, opt, ref_model, ref_opt)
  assert 0 < int(opt.iterations.numpy()) <= 320 - 20 * len(POISONED_BATCHES)
  assert model.layers[0].kernel.dtype == "float32"
  types = _op_types(model)
  assert sum(types.count(op) for op in FUSED_OPS) == 1, rule
  # The inner apply's per-variable updates are gone; what remains: the
  # iterations and the step counter, and Keras's own weight decay (NOTE
  # [weight decay stays Keras's] in fused_update.py).
  decayed = len(model.trainable_weights) if opt.inner_optimizer.weight_decay else 0
  assert types.count("AssignAddVariableOp") <= 2, types.count("AssignAddVariableOp")
  assert types.count("AssignSubVariableOp") <= 2 + decayed, types.count("AssignSubVariableOp")


def _fixed(rule, fused, skip, clip=None):
  inner = RULES[rule]()
  if clip is not None:
    inner = type(inner).from_config(dict(inner.get_config(), global_clipnorm=clip))
  return FixedLossScaleOptimizer(inner, 1024, skip_non_finite=skip, fused_update=fused)


@pytest.mark.slow
@pytest.mark.parametrize("rule,skip,clip", [("adamw", True, None), ("sgd_momentum", True, None),
                                            ("adam", False, None), ("sgd_nesterov", False, None),
                                            ("adamw_amsgrad", True, 0.5), ("adamw", False, 0.5)])
def test_fixed_wrapper_fused_bit_identical_to_unfused(mixed_float16, rule, skip, clip):
  epochs = 6
  opt, ref_opt = _fixed(rule, True, skip, clip), _fixed(rule, False, skip, clip)
  model, ref_model = _fit(opt, epochs), _fit(ref_opt, epochs)
  if skip:  # with an applied inf, the weights are NaN on both sides: nothing to compare
    _assert_same(model, opt, ref_model, ref_opt)
    assert int(opt.iterations.numpy()) == 16 * epochs - epochs * len(POISONED_BATCHES)
  types, ref_types = _op_types(model), _op_types(ref_model)
  assert sum(types.count(op) for op in FUSED_OPS) == 1
  assert not any(op in ref_types for op in FUSED_OPS)


@pytest.mark.slow
def test_fixed_wrapper_without_skip_matches_unfused_on_finite_data():
  x, y, _ = _data()
  results = []
  for fused in (True, False):
    opt = FixedLossScaleOptimizer(RULES["adamw"](), 1024, fused_update=fused)
    model = _model()
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    results.append((model, opt))
  _assert_same(*results[0], *results[1])
  assert fused_update.ADAM_OP in _op_types(results[0][0])


FALLBACKS = {
    "use_ema": lambda: keras.optimizers.Adam(1e-2, use_ema=True),
    "accumulation": lambda: keras.optimizers.SGD(0.01, gradient_accumulation_steps=2),
    "clipvalue": lambda: keras.optimizers.Adam(1e-2, clipvalue=0.5),
    "clipnorm": lambda: keras.optimizers.SGD(0.01, clipnorm=0.5),
    "sgd_global_clipnorm": lambda: keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=0.5),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-2),
    "subclass": lambda: type("MyAdam", (keras.optimizers.Adam,), {})(1e-2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_fallbacks_keep_todays_path(case):
  opt = LossScaleOptimizer(FALLBACKS[case]())
  ref_opt = LossScaleOptimizer(FALLBACKS[case](), fused_update=False)
  model, ref_model = _fit(opt, 1), _fit(ref_opt, 1)
  types = _op_types(model)
  assert not any(op in types for op in FUSED_OPS)
  assert sorted(types) == sorted(_op_types(ref_model))


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [True, "auto"])
def test_xla_keeps_todays_path(jit_compile):
  model = _fit(LossScaleOptimizer(RULES["adam"]()), 1, jit_compile=jit_compile)
  if model.jit_compile:  # "auto" turns XLA on only where Keras chooses it
    assert not any(op in _op_types(model) for op in FUSED_OPS)


def test_fused_update_argument_and_config():
  opt = LossScaleOptimizer(keras.optimizers.Adam())
  assert "fused_update" not in opt.get_config()
  off = LossScaleOptimizer(keras.optimizers.Adam(), fused_update=False)
  assert off.get_config()["fused_update"] is False
  assert LossScaleOptimizer.from_config(off.get_config())._fused_update is False  # pylint: disable=protected-access
  fixed = FixedLossScaleOptimizer(keras.optimizers.SGD(), 8, fused_update=False)
  assert FixedLossScaleOptimizer.from_config(fixed.get_config())._fused_update is False  # pylint: disable=protected-access
  assert "fused_update" not in FixedLossScaleOptimizer(keras.optimizers.SGD(), 8).get_config()
  for cls, args in ((LossScaleOptimizer, ()), (FixedLossScaleOptimizer, (8,))):
    with pytest.raises(ValueError, match="fused_update must be True .* or False, got 'yes'"):
      cls(keras.optimizers.SGD(), *args, fused_update="yes")


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["ours_to_keras", "keras_to_ours"])
def test_checkpoints_both_ways(mixed_float16, tmp_path, direction):
  """A checkpoint of one class restores into the other and training goes on
  as it would have in the first."""
  make = {"ours": lambda: LossScaleOptimizer(RULES["adamw"](), initial_scale=2.0**12,
                                             dynamic_growth_steps=4),
          "keras": lambda: KerasLossScaleOptimizer(RULES["adamw"](), initial_scale=2.0**12,
                                                   dynamic_growth_steps=4)}
  first, second = direction.split("_to_")
  opt = make[first]()
  model = _fit(opt, 2)
  path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
  results = []
  for kind in (first, second):
    new_opt = make[kind]()
    new_model = _model()
    new_model.compile(optimizer=new_opt, loss="mse")
    new_opt.build(new_model.trainable_weights)
    tf.train.Checkpoint(model=new_model, optimizer=new_opt).restore(path).assert_consumed()
    x, y, weights = _data()
    new_model.fit(x, y, sample_weight=weights, batch_size=BATCH, epochs=2, shuffle=False,
                  verbose=0)
    results.append((new_model, new_opt))
  _assert_same(*results[0], *results[1])


# --- MirroredStrategy on two logical CPUs (in a subprocess) --------------------

def _mirrored_worker(out_dir):
  """Runs in a fresh process: `fit` under MirroredStrategy over two logical
  CPUs, ours (fused) and Keras's class, for two rules."""
  tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices("CPU")[0],
      [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  keras.mixed_precision.set_global_policy("mixed_float16")
  arrays, fused_ops = {}, {}
  x, y, _ = _data()
  # Overflows on both replicas' halves of a batch: Keras's class takes the
  # first replica's flag, this package agrees over all (keras_dynamic.py).
  weights = np.ones(len(x), np.float32)
  for batch in (1, 4):
    weights[batch * 8 + 1] = weights[batch * 8 + 5] = np.inf
  for rule in ("adamw", "sgd_nesterov"):
    for name, cls in (("ours", LossScaleOptimizer), ("keras", KerasLossScaleOptimizer)):
      with strategy.scope():
        model = _model()
        opt = cls(RULES[rule](), initial_scale=2.0**10, dynamic_growth_steps=3)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
      model.fit(x, y, sample_weight=weights, batch_size=8, epochs=4, shuffle=False, verbose=0)
      for i, value in enumerate(_state(model, opt)):
        arrays[f"{rule}_{name}_{i}"] = value
      fused_ops[f"{rule}_{name}"] = sum(_op_types(model).count(op) for op in FUSED_OPS)
  np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
  with open(os.path.join(out_dir, "fused_ops.json"), "w") as f:
    json.dump(fused_ops, f)


@pytest.mark.slow
def test_mirrored_fit_bit_identical_to_keras(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "worker", str(tmp_path)],
                        capture_output=True, text=True, timeout=600, env=env, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  with open(tmp_path / "fused_ops.json") as f:
    fused_ops = json.load(f)
  arrays = dict(np.load(tmp_path / "arrays.npz"))
  for rule in ("adamw", "sgd_nesterov"):
    # One op per replica in the step's graph; none in Keras's.
    assert fused_ops[f"{rule}_ours"] >= 1 and fused_ops[f"{rule}_keras"] == 0, fused_ops
    keys = sorted(k for k in arrays if k.startswith(f"{rule}_ours_"))
    assert keys
    for key in keys:
      assert_bitwise_equal(arrays[key], arrays[key.replace("ours", "keras")])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
  _mirrored_worker(sys.argv[2])
