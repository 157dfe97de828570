"""Benchmark: FixedUnscaleGrads against TensorFlow's own unscaling, side by side.

    python -m benchmarks [--quick] [--json PATH] [--plot PATH.png]
    python -m benchmarks --report PATH.json [--plot PATH.png]   # a saved run again
    python -m benchmarks --overflow [--json PATH]   # overflow safety: checks and skipping steps

Run from the repository root (`make bench` does); the package is not in the
wheel. Progress goes to stderr, the table to stdout. docs/BENCHMARKS.md
explains every arm and what limits each number; in short:

- Gradients are made in the same tf.function as `relu(v_i * x)` (distinct
  variables, runtime scalar x), so Grappler cannot fold a following multiply
  into their production and an op that forwards its inputs works in place.
- The unscale is repeated N times in a tf.while_loop with
  parallel_iterations=1, between barriers, every loop output returned; the
  same loop with nothing between the barriers (production + loop machinery)
  is timed too and subtracted: per-call time = (T(arm) - T(none)) / N. The
  loops are built with Grappler's dependency optimizer off, so that every arm
  keeps the same barriers and Identities (NOTE [equal scaffolding]).
- The tensor-count sweep also times our op over a single tensor of the same
  bytes in the same loop (NOTE [one pass]): what moving the bytes costs
  there, so that what handling n tensors adds can be read apart from it.
- The sweep is also read without any loop (NOTE [op time]): each arm's own
  kernel time from TF's step stats in a traced Session run, which stays
  readable at 10,000 tensors, where the loops' own ops drown both arms. It
  runs in a child process of its own (op_times.op_times_in_child).
- Before timing, each arm's optimized graph is read from the run metadata; an
  arm whose multiplies were optimized away is reported, not timed.
- Arms take turns call by call for several rounds; an arm's time in a round is
  the median of its calls there, every difference and ratio is taken within a
  round, and the median over rounds is reported.
- GB/s counts bytes read + written by the unscale (2 x the gradients' bytes).
- `--overflow` runs instead the read-only check and the fused
  unscale-and-check against FixedUnscaleGrads alone and TF's per-tensor check,
  in the same loops with a flag and a norm carried (NOTE [check loop]); whole
  Keras 3 optimizer steps that skip non-finite gradients (SGD with momentum,
  Adam, AdamW on two models' variables): bare, Keras's LossScaleOptimizer,
  ours with and without the fused update, and hybrid controls (NOTE [hybrid
  arms]), beside the traffic model's bytes (NOTE [traffic model]); and a
  transformer encoder's train step, gradients from a real backward pass.

The modules, in the order a run uses them:

    gradient_sets  the sets, read from gradient_sets.txt (plain Python, no
                   TensorFlow: gpu_torch.py reads them on GPU machines too)
    common         the loss scale, arm labels, progress log
    timing         the interleaved method: rounds, turns, within-round pairs
    arms           the TensorFlow arms and their loops; optimized-graph checks
    references     the numpy roofline and torch's _foreach_mul_
    scenarios      one gradient set (or sweep point) timed, all arms
    op_times       the sweep's op times from TF's step stats
    peak_memory    peak allocator bytes per arm (BFC allocator)
    optimizer      whole Keras 3 and TF1 optimizer steps
    overflow       --overflow: the checks' op-level arms and loops
    step_arms      --overflow: the optimizer steps' arms (wrappers, hybrids)
    traffic        --overflow: the bytes each step arm moves (plain Python)
    overflow_steps --overflow: the optimizer steps traced, checked and timed
    fit_step       --overflow: a transformer encoder's train step
    child          a function of these modules called in a fresh process
    machine        the machine and the library's CPU path
    report         the table and the plot
    report_overflow the --overflow tables
    cli            the command line
    gpu_torch      the PyTorch arms of `make gpu-bench` (a script of its own)

This file only sets environment defaults that must precede the first import
of TensorFlow or torch, in this process and in its children.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch's OpenMP workers otherwise spin on both cores for a while after each of
# its calls, and the arm that runs next (the arms take turns) loses a core:
# measured on 2 cores, with the torch arm in the rotation ours fell from 67 to
# 143 us on a 4 MB set and TF's time rose alike. Read when torch loads (lazily,
# in references.torch_arm); an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
