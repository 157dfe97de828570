"""FixedApplySgd / FixedApplyAdam (fused_update.py) against Keras 3's own classes.

Each case runs the same steps twice inside tf.function: Keras's optimizer
`apply` of `grads / scale` (what Keras's LossScaleOptimizer hands its inner
optimizer), and `fused_update.plan(...).apply(grads, scale)`, the op on the
scaled gradients. Weights, slots and `iterations` must be the same bits
(NOTE [fused update numerics], NOTE [scalar factors] in
tf_ops/core/fused_update_math.h). Shapes cover the scalar and vector heads and
tails, rank 0 (no Grappler folding), and a variable large enough for several
shards.
"""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fixed_loss_scale import fused_update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(), (1,), (3,), (17,), (33, 5), (1000,), (300, 257)]
SCALE = 1024.0


def _schedule():
  return keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.8)


CASES = {
    "sgd": lambda: keras.optimizers.SGD(0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "sgd_decay_schedule": lambda: keras.optimizers.SGD(_schedule(), momentum=0.5,
                                                       weight_decay=0.1),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adam_amsgrad": lambda: keras.optimizers.Adam(0.01, amsgrad=True),
    "adam_schedule": lambda: keras.optimizers.Adam(_schedule(), beta_1=0.8, epsilon=1e-5),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.2),
    "adamw_amsgrad_schedule": lambda: keras.optimizers.AdamW(_schedule(), weight_decay=0.3,
                                                             amsgrad=True),
}


def _variables(seed):
  rng = np.random.default_rng(seed)
  return [keras.Variable(rng.standard_normal(s).astype(np.float32), name=f"w{i}")
          for i, s in enumerate(SHAPES)]


def _grads(rng, scale=SCALE):
  return [tf.constant((rng.standard_normal(s) * scale).astype(np.float32)) for s in SHAPES]


def _run_pair(make, steps=12, flags=None, exclude=None):
  """(reference optimizer, fused optimizer, their variables) after `steps`
  steps; where flags[i] is False the fused step gets a false flag and the
  reference skips the step."""
  ref, ours = make(), make()
  if exclude:
    ref.exclude_from_weight_decay(var_names=exclude)
    ours.exclude_from_weight_decay(var_names=exclude)
  ref_vars, our_vars = _variables(1), _variables(1)
  ref.build(ref_vars)
  ours.build(our_vars)

  @tf.function
  def ref_step(grads):
    ref.apply([g / SCALE for g in grads], ref_vars)

  @tf.function
  def our_step(grads, flag):
    update = fused_update.plan(ours, grads, our_vars)
    assert update is not None, fused_update.reason(ours, grads, our_vars)
    update.apply(grads, tf.constant(SCALE), all_finite=flag)

  rng = np.random.default_rng(7)
  for i in range(steps):
    grads = _grads(rng)
    flag = True if flags is None else flags[i]
    if flag:
      ref_step(grads)
    our_step(grads, tf.constant(flag))
  return ref, ours, ref_vars, our_vars


def _assert_same_bits(ref, ours, ref_vars, our_vars):
  assert int(ref.iterations.numpy()) == int(ours.iterations.numpy())
  for a, b in zip(list(ref_vars) + list(ref.variables), list(our_vars) + list(ours.variables)):
    x, y = np.asarray(a.numpy()), np.asarray(b.numpy())
    assert x.tobytes() == y.tobytes(), (a.path, np.sum(x != y), np.max(np.abs(x - y)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_for_bit_with_keras(case):
  _assert_same_bits(*_run_pair(CASES[case]))


def test_weight_decay_exclusions_follow_keras():
  _assert_same_bits(*_run_pair(CASES["adamw"], exclude=["w2", "w4"]))


def test_false_flag_writes_nothing_and_does_not_count():
  flags = [True, False, True, True, False, False, True]
  ref, ours, ref_vars, our_vars = _run_pair(CASES["adamw_amsgrad_schedule"], steps=len(flags),
                                            flags=flags)
  assert int(ours.iterations.numpy()) == sum(flags)
  _assert_same_bits(ref, ours, ref_vars, our_vars)


def test_without_the_arithmetic_optimizer_products_go_left_to_right():
  """With the arithmetic optimizer off, Keras's graph multiplies left to
  right; the wrapper tells the op so (NOTE [scalar factors])."""
  options = tf.config.optimizer.get_experimental_options()
  tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
  try:
    _assert_same_bits(*_run_pair(CASES["adamw"]))
  finally:
    tf.config.optimizer.set_experimental_options(
        {"arithmetic_optimization": options.get("arithmetic_optimization", True)})


_PATH_WORKER = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
import test_fused_update_op as t
digest = hashlib.sha256()
for case in ("sgd_nesterov", "adamw_amsgrad_schedule"):
  ref, ours, ref_vars, our_vars = t._run_pair(t.CASES[case], steps=4)
  for v in list(our_vars) + list(ours.variables):
    digest.update(np.asarray(v.numpy()).tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_every_cpu_path_gives_the_same_bits():
  """Scalar, AVX2 and AVX-512 loops (FIXED_LOSS_SCALE_CPU_PATH) agree."""
  digests = {}
  for path in ("scalar", "avx2", "avx512"):
    env = dict(os.environ, FIXED_LOSS_SCALE_CPU_PATH=path, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", _PATH_WORKER, os.path.join(ROOT, "tests")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digests[path] = result.stdout.split()[-1]
  assert len(set(digests.values())) == 1, digests


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
def test_update_objects_hold_no_fused_multiply_add():
  """-ffp-contract=off reached every object that compiles the rules."""
  for name in ("fused_update_cpu", "fused_update_avx2", "fused_update_avx512"):
    obj = os.path.join(ROOT, "build", "tf_ops", "core", "cpu", name + ".o")
    if not os.path.exists(obj):
      pytest.skip(f"{obj} not built (make)")
    text = subprocess.run(["objdump", "-d", obj], capture_output=True, text=True,
                          check=True).stdout
    assert "vfmadd" not in text and "vfmsub" not in text and "vfnm" not in text, name
    if name != "fused_update_cpu":
      assert "vsqrtps" in text and "vdivps" in text, name  # the vector loops are there


@pytest.mark.parametrize("factors_first", [True, False])
def test_the_ops_own_weight_decay(factors_first):
  """The op's weight decay (which the wrappers leave to Keras: NOTE [weight
  decay stays Keras's] in fused_update.py) in both orders of NOTE [scalar
  factors]: a variable of rank >= 1 with scalar_factors_first takes
  var - var * weight_decay_lr, every other var - (var * wd) * lr."""
  rng = np.random.default_rng(3)
  values = [rng.standard_normal(s).astype(np.float32) * 5 for s in [(), (1,), (999,), (40, 33)]]
  variables = [tf.Variable(v) for v in values]
  wd, lr, wd_lr = np.float32(0.4098661541938782), np.float32(0.6701), np.float32(0.2746)
  raw = fused_update._raw_ops  # pylint: disable=protected-access
  raw.fixed_apply_sgd([v.handle for v in variables], [], [tf.zeros_like(v) for v in variables],
                      1024.0, True, 1.0, lr, 0.0, wd, wd_lr, decay=[True, True, False, True],
                      scalar_factors_first=factors_first)
  for i, (x, v) in enumerate(zip(values, variables)):
    if i == 2:
      expected = x  # decay[2] is False: g * lr with g = 0
    elif factors_first and x.ndim >= 1:
      expected = x - x * wd_lr
    else:
      expected = x - (x * wd) * lr
    assert v.numpy().tobytes() == np.asarray(expected, np.float32).tobytes(), i
