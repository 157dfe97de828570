"""A train step whose gradients come from a real backward pass.

Owns the `--overflow` fit arms: a transformer encoder built from Keras layers
(NOTE [fit model]), compiled once per arm with the same initial weights and
one optimizer each (bare Adam, the bare step again, Keras's
LossScaleOptimizer, ours with and without the fused update), each timed
through `Model.train_on_batch`, which runs the train function `fit` runs, on
one synthetic batch made here. Interleaved like every other arm; overheads
over the bare step within rounds.
"""

import gc
import time

import numpy as np

from benchmarks import step_arms
from benchmarks.arms import optimized_op_counts
from benchmarks.common import log
from benchmarks.overflow_steps import check_step, op_note, timed_entry
from benchmarks.timing import interleaved

FIT_ARMS = ("bare", "bare_again", "keras_lso", "ours_dynamic", "ours_dynamic_fused",
            "ours_fixed_skip", "ours_fixed_skip_fused")
# --quick: one arm per wrapper path (the optimizer steps run them all).
QUICK_FIT_ARMS = ("bare", "keras_lso", "ours_dynamic", "ours_dynamic_fused")

# NOTE [fit model]: a post-norm transformer encoder (multi-head self-attention
# and a ReLU feed-forward block per layer, residuals and LayerNormalization)
# over inputs projected by a Dense layer, as a vision transformer projects
# its patches (dense gradients only: an Embedding's would be IndexedSlices,
# which the wrappers would treat apart), pooled and classified. Full: width
# 1024, 16 heads, feed-forward 4096, 2 layers, 25.3M parameters (101 MB),
# batch 2 x 16 positions: few enough tokens that the optimizer's share of the
# step, where loss scaling acts, is not lost in the matrix products, and few
# enough layers that each arm compiles in seconds (8 layers of width 512, the
# same parameters, took 30-80 s an arm on 2 cores). Quick: width 32, 1
# layer. jit_compile=False: the custom ops have no XLA kernels (under XLA
# the package computes with TensorFlow arithmetic).
FULL = {"width": 1024, "heads": 16, "ff": 4096, "layers": 2, "batch": 2, "seq": 16,
        "features": 64, "classes": 16}
QUICK = {"width": 32, "heads": 2, "ff": 64, "layers": 1, "batch": 2, "seq": 8,
         "features": 8, "classes": 4}


def encoder(cfg):
  import keras  # pylint: disable=import-outside-toplevel
  from keras import layers  # pylint: disable=import-outside-toplevel
  inputs = keras.Input((cfg["seq"], cfg["features"]))
  x = layers.Dense(cfg["width"])(inputs)
  for _ in range(cfg["layers"]):
    attended = layers.MultiHeadAttention(cfg["heads"], cfg["width"] // cfg["heads"])(x, x)
    x = layers.LayerNormalization()(x + attended)
    hidden = layers.Dense(cfg["ff"], activation="relu")(x)
    x = layers.LayerNormalization()(x + layers.Dense(cfg["width"])(hidden))
  outputs = layers.Dense(cfg["classes"])(layers.GlobalAveragePooling1D()(x))
  return keras.Model(inputs, outputs)


def fit_steps(args):
  """The fit arms' result entry (an Adam step of the encoder)."""
  import keras  # pylint: disable=import-outside-toplevel
  began = time.perf_counter()
  cfg = QUICK if args.quick else FULL
  keras.utils.set_random_seed(7)
  rng = np.random.default_rng(7)
  x = rng.standard_normal((cfg["batch"], cfg["seq"], cfg["features"]), dtype=np.float32)
  y = rng.integers(0, cfg["classes"], cfg["batch"])
  reference = encoder(cfg)
  weights = reference.get_weights()
  parameters = int(sum(np.prod(w.shape) for w in reference.trainable_weights))
  log(f"[overflow fit] transformer encoder, {parameters / 1e6:.1f}M parameters, "
      f"{cfg['layers']} layers of width {cfg['width']}, batch {cfg['batch']}x{cfg['seq']}")
  optimizers, missing = step_arms.wrapper_optimizers("adam",
                                                     QUICK_FIT_ARMS if args.quick else FIT_ARMS)
  fns, counts = {}, {}
  for arm, opt in optimizers.items():
    start = time.perf_counter()
    try:
      model = encoder(cfg)
      model.set_weights(weights)
      model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
          from_logits=True), jit_compile=False)
      model.train_on_batch(x, y)  # builds the optimizer and the train function
      counts[arm] = optimized_op_counts(lambda _, m=model: m.train_on_batch(x, y), None)
    except Exception as error:  # pylint: disable=broad-except
      missing[arm] = f"its step failed: {type(error).__name__}: {str(error)[:300]}"
      log(f"  {arm}: {missing[arm]}")
      continue
    ok, why_not = check_step(arm, counts[arm])
    log(f"  {arm}: compiled in {time.perf_counter() - start:.1f} s; {op_note(counts[arm])}")
    if ok:
      fns[arm] = (lambda m=model: m.train_on_batch(x, y))
    else:
      missing[arm] = f"{why_not} ({op_note(counts[arm])})"
  times = interleaved(fns, max(2, args.optimizer_rounds // 2), args.reps)
  entry = {"model": "transformer encoder", "optimizer": "adam", "parameters": parameters,
           "config": cfg, "rounds": len(next(iter(times.values()), [])), "reps": args.reps,
           **timed_entry(times, counts, missing)}
  log(f"[overflow fit] {time.perf_counter() - began:.0f} s: " +
      ", ".join(f"{a} {v * 1e3:+.1f} ms" for a, v in entry["overhead_s"].items()))
  del fns
  gc.collect()
  return entry
