"""The command line: `python -m benchmarks` (see the package's docstring).

Owns the flags and their defaults, the order of a run (gradient-set
scenarios, the sweep and its op times, peak memory, optimizer steps; with
`--overflow`, the checks' scenarios, the optimizer steps that skip and the
transformer's train step instead), the JSON and plot it writes, and
`--report`, which re-prints a saved run.
"""

import argparse
import json
import os

import tensorflow as tf

import benchmarks
from benchmarks.common import log
from benchmarks.gradient_sets import (DTYPE_MODES, dtypes_for, set_shapes, sweep_elements,
                                      sweep_shapes)
from benchmarks.machine import machine_info
from benchmarks.op_times import op_times_in_child
from benchmarks.fit_step import fit_steps
from benchmarks.optimizer import optimizer_steps
from benchmarks.overflow import run_overflow_scenario
from benchmarks.overflow_steps import STEP_MODELS, overflow_optimizer_steps
from benchmarks.step_arms import KINDS
from benchmarks.peak_memory import peak_memory_scenarios
from benchmarks.report import plot, print_table
from benchmarks.scenarios import run_scenario

DEFAULT_SETS = "tiny,many_small,few_large,bert_like"
# --overflow without --sets or --dtypes: the large sets its goals are stated for, and two
# small ones.
OVERFLOW_SCENARIOS = ("bert_like/float32", "bert_like/float16", "few_large/float32",
                      "many_small/float32", "tiny/float32")


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                   description=benchmarks.__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes, one round: a smoke run (CI), not a measurement")
  parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
  parser.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
  parser.add_argument("--overflow", action="store_true",
                      help="instead of the unscale comparison: the read-only check and the "
                           "fused unscale-and-check against FixedUnscaleGrads and TF's "
                           "per-tensor check on the gradient sets (default " +
                           ",".join(OVERFLOW_SCENARIOS) + "; --sets x --dtypes where given), "
                           "then Keras 3 optimizer steps that skip non-finite gradients "
                           "(unless --no-optimizer) and a transformer's train step (unless "
                           "--no-fit)")
  parser.add_argument("--step-models", default=",".join(STEP_MODELS),
                      help="--overflow: the models whose variables the optimizer steps update "
                           "(default %(default)s; hybrid arms on the first)")
  parser.add_argument("--step-optimizers", default=",".join(KINDS),
                      help="--overflow: the inner optimizers of the steps (default %(default)s)")
  parser.add_argument("--hybrid-optimizers", default="adam",
                      help="--overflow: the inner optimizers whose steps on the first model "
                           "also time the hybrid control arms (default %(default)s; '' for "
                           "none)")
  parser.add_argument("--traces", type=int, default=1,
                      help="--overflow: traces of each optimizer step arm, called in turn within "
                           "a round (default %(default)s; identical traces can differ by more "
                           "than the arms do: NOTE [shared slots] in benchmarks/step_arms.py)")
  parser.add_argument("--no-fit", action="store_true",
                      help="--overflow: skip the transformer's train step")
  parser.add_argument("--sets", default=None,
                      help="comma-separated gradient sets (default: all)")
  parser.add_argument("--dtypes", default=None,
                      help="comma-separated dtype modes (default: all)")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
  parser.add_argument("--reps", type=int, default=None, help="calls per arm and round (default 5)")
  parser.add_argument("--min-seconds", type=float, default=None,
                      help="keep adding rounds to a gradient-set scenario until it has been "
                           "timed this long, up to 60 rounds (default 20; 0 with --quick)")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                      help="threads for the numpy roofline (default: all cores)")
  parser.add_argument("--no-sweep", action="store_true", help="skip the tensor-count sweep")
  parser.add_argument("--sweep-counts", default=None,
                      help="tensor counts of the sweep (default 1,10,100,1000,10000; "
                           "1,10,100 with --quick)")
  parser.add_argument("--no-op-time", action="store_true",
                      help="skip the sweep's op times from TF's step stats (NOTE [op time])")
  parser.add_argument("--op-time-rounds", type=int, default=None,
                      help="traced runs per arm and sweep count for the op times (default 30; "
                           "3 with --quick)")
  parser.add_argument("--optimizer-rounds", type=int, default=None,
                      help="interleaved rounds of the optimizer steps (default 12; 1 with --quick): "
                           "Adam's ~0.5 s steps drift by more than the overheads in 5")
  parser.add_argument("--no-optimizer", action="store_true", help="skip the optimizer steps")
  parser.add_argument("--no-xla", action="store_true", help="skip the XLA reference arm")
  parser.add_argument("--no-torch", action="store_true", help="skip the torch arm")
  parser.add_argument("--report", metavar="RESULTS.json",
                      help="print the table of a saved --json run (and --plot it) without measuring")
  args = parser.parse_args(argv)
  if args.overflow and args.sets is None and args.dtypes is None:
    args.scenarios = list(OVERFLOW_SCENARIOS)
  else:
    sets = (args.sets if args.sets is not None else DEFAULT_SETS).split(",")
    modes = (args.dtypes if args.dtypes is not None else ",".join(DTYPE_MODES)).split(",")
    args.scenarios = [f"{s}/{m}" for s in sets if s for m in modes if m]
  if args.rounds is None:
    args.rounds = 1 if args.quick else 5
  if args.op_time_rounds is None:
    args.op_time_rounds = 3 if args.quick else 30
  if args.optimizer_rounds is None:
    args.optimizer_rounds = 1 if args.quick else 12
  args.step_models = [m for m in args.step_models.split(",") if m]
  args.step_optimizers = [k for k in args.step_optimizers.split(",") if k]
  args.hybrid_optimizers = [k for k in args.hybrid_optimizers.split(",") if k]
  if args.sweep_counts is None:
    args.sweep_counts = "1,10,100" if args.quick else "1,10,100,1000,10000"
  args.sweep_counts = [int(c) for c in args.sweep_counts.split(",") if c]
  if args.min_seconds is None:
    args.min_seconds = 0.0 if args.quick else 20.0
  if args.reps is None:
    args.reps = 2 if args.quick else 5
  return args


def main(argv=None):
  args = parse_args(argv)
  tf.get_logger().setLevel("ERROR")
  if args.report:
    return report(args)
  results = {"machine": machine_info(args), "scenarios": [], "op_times": [],
             "peak_memory": [], "optimizer_steps": []}
  log(f"machine: {results['machine']}")
  if args.overflow:
    return overflow(args, results)
  for scenario in args.scenarios:
    set_name, mode = scenario.split("/")
    shapes = set_shapes(set_name, args.quick)
    results["scenarios"].append(
        run_scenario(scenario, shapes, dtypes_for(mode, len(shapes)), args, xla=not args.no_xla))
  if not args.no_sweep:
    total = sweep_elements(args.quick)
    for count in args.sweep_counts:
      shapes = sweep_shapes(count, total)
      results["scenarios"].append(
          run_scenario(f"sweep/{count}", shapes, dtypes_for("float32", count), args,
                       xla=not args.no_xla and count <= 1000, one_pass=True))
    if not args.no_op_time:
      results["op_times"] = op_times_in_child(args.quick, args.sweep_counts,
                                              args.op_time_rounds)
  results["peak_memory"] = peak_memory_scenarios(args.quick)
  if not args.no_optimizer:
    results["optimizer_steps"] = optimizer_steps(args)
  return finish(args, results)


def overflow(args, results):
  """--overflow: the checks' scenarios, then the optimizer steps and the train step."""
  results["overflow"] = []
  for scenario in args.scenarios:
    set_name, mode = scenario.split("/")
    shapes = set_shapes(set_name, args.quick)
    results["overflow"].append(
        run_overflow_scenario(scenario, shapes, dtypes_for(mode, len(shapes)), args))
  results["overflow_optimizer_steps"] = [] if args.no_optimizer else overflow_optimizer_steps(args)
  results["overflow_fit"] = [] if args.no_fit else [fit_steps(args)]
  return finish(args, results)


def finish(args, results):
  """The table, and the JSON and plot where asked for."""
  results["machine"]["loadavg_end"] = os.getloadavg()
  print_table(results)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
    log(f"wrote {args.json}")
  if args.plot and "overflow" in results:
    log("--plot: no chart for --overflow runs; the table and JSON hold its numbers")
  elif args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    plot(results, args.plot)
    log(f"wrote {args.plot}")
  return results


def report(args):
  """--report: the table (and --plot) of a saved run, exactly as it printed."""
  with open(args.report) as f:
    results = json.load(f)
  print_table(results)
  if args.plot and "overflow" in results:
    log("--plot: no chart for --overflow runs; the table and JSON hold its numbers")
  elif args.plot:
    plot(results, args.plot)
    log(f"wrote {args.plot}")
  return results
