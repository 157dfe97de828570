"""The benchmark (`python -m benchmarks`) runs end to end (`--quick`) and writes well-formed JSON.

CI runs this so the benchmark never rots; it asserts nothing about speed.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_benchmark_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  command = [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out),
             "--sets", "tiny,many_small", "--dtypes", "float32,mixed", "--no-torch"]
  if not os.environ.get("FLS_BENCH_SMOKE_XLA"):
    command.append("--no-xla")
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "ours/TF" in proc.stdout
  assert "sweep against ours over 1 tensor of the same bytes" in proc.stdout
  results = json.loads(out.read_text())

  machine = results["machine"]
  for key in ("cpu", "cores", "tensorflow", "cpu_path", "loadavg_start", "loadavg_end"):
    assert key in machine, key

  names = [s["scenario"] for s in results["scenarios"]]
  assert "tiny/float32" in names and "many_small/mixed" in names
  assert any(n.startswith("sweep/") for n in names)
  for scenario in results["scenarios"]:
    assert scenario["num_tensors"] > 0 and scenario["bytes"] > 0
    assert scenario["roofline_gbps"] > 0
    # Every arm's loop runs the baseline's barriers and Identities, so that the
    # subtraction leaves the arm's own ops (NOTE [equal scaffolding] in benchmarks/arms.py).
    assert scenario["scaffolding_differences"] == {}, scenario["scaffolding_differences"]
    arms = scenario["arms"]
    # The floor (one IdentityN) is optimized away over a single tensor only.
    assert arms["floor"]["optimized_away"] == (scenario["num_tensors"] == 1), arms["floor"]
    for arm in ("ours", "tf") + (("floor",) if scenario["num_tensors"] > 1 else ()):
      entry = arms[arm]
      assert not entry["optimized_away"], (scenario["scenario"], arm, entry)
      assert entry["total_s"] > 0 and entry["baseline_s"] > 0
      # Quick runs are too short for the difference to be above noise always.
      assert entry.get("below_noise") or entry["per_call_s"] > 0
    for arm in ("numpy_mul", "numpy_copy"):
      assert arms[arm]["gbps"] > 0
    # The sweep's reference, our op over 1 tensor of the same bytes in the same loop
    # (NOTE [one pass] in benchmarks/scenarios.py): timed there, absent from the other sets.
    is_sweep = scenario["scenario"].startswith("sweep/")
    assert ("one_pass" in arms) == is_sweep, (scenario["scenario"], sorted(arms))
    if is_sweep:
      entry = arms["one_pass"]
      assert not entry["optimized_away"], (scenario["scenario"], entry)
      assert entry.get("below_noise") or entry["per_call_s"] > 0
      # What n tensors add to one, taken within rounds, with its spread.
      assert isinstance(scenario["ours_minus_one_pass_s"], float)
      assert len(scenario["ours_minus_one_pass_quartiles_s"]) == 2
    assert "torch" in arms  # skipped with a reason here

  # The sweep's op times from TF's step stats (NOTE [op time] in benchmarks/op_times.py): every
  # arm's kernels were found in the trace, TF's n multiplies each, and timed.
  sweep_counts = [s["num_tensors"] for s in results["scenarios"]
                  if s["scenario"].startswith("sweep/")]
  assert [r["num_tensors"] for r in results["op_times"]] == sweep_counts
  for row in results["op_times"]:
    assert row["kernels"] == {"ours": 1, "one_pass": 1, "floor": 1, "tf": row["num_tensors"]}, row
    for arm in ("ours", "one_pass", "floor", "tf"):
      entry = row["arms"][arm]
      assert entry["per_call_s"] > 0, (row["scenario"], arm, entry)
      assert entry["quartiles_s"][0] <= entry["per_call_s"] <= entry["quartiles_s"][1]
    for other in ("one_pass", "floor"):
      assert isinstance(row[f"ours_minus_{other}_s"], float)
  assert "op time from TF's step stats" in proc.stdout

  # Measured everywhere: in a child process with TF's BFC allocator where the
  # default CPU allocator keeps no statistics.
  assert [p["scenario"] for p in results["peak_memory"]] == [
      "few_large/float32", "bert_like/float32", "bert_like/float16"]
  for peak in results["peak_memory"]:
    assert "skipped" not in peak, peak
    # Producing the gradients allocates them; in place, unscaling adds no copy.
    assert peak["none"] >= peak["gradient_bytes"] > 0
    assert peak["ours"] < peak["none"] + peak["gradient_bytes"] // 2, peak

  kinds = [o["optimizer"] for o in results["optimizer_steps"]]
  assert kinds == ["sgd", "adam"]
  for step in results["optimizer_steps"]:
    for arm in ("keras:bare", "keras:bare_again", "keras:keras_loss_scale_optimizer",
                "keras:keras_loss_scale_factor", "keras:ours_keras", "keras:ours_one_op",
                "keras:tf_per_tensor",
                "tf1:bare", "tf1:tf_compat_lso", "tf1:ours_tf1"):
      assert step["step_s"][arm] > 0, arm
    # Every wrapper arm really unscales in the graph that ran (the TF1 wrappers
    # do it in compute_gradients, so apply_gradients alone would time nothing).
    assert step["optimized_away"] == [], step["checks"]
    for arm in ("keras:ours_keras", "tf1:ours_tf1"):
      assert "FixedUnscaleGrads" in step["checks"][arm], step["checks"]
    assert "Mul/RealDiv more than bare" in step["checks"]["tf1:tf_compat_lso"]
    # Every overhead carries the quartiles of its within-round differences.
    for name, overhead in step["overhead_s"].items():
      low, high = step["overhead_quartiles_s"][name]
      assert low <= overhead <= high, (name, low, overhead, high)

  # --report re-prints a saved run without measuring: the same table, byte for byte.
  report = subprocess.run([sys.executable, "-m", "benchmarks", "--report", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert report.returncode == 0, report.stderr[-4000:]
  assert report.stdout == proc.stdout


@pytest.mark.slow
def test_overflow_benchmark_writes_every_arm(tmp_path):
  """`--overflow` (the checks, the optimizer steps, the train step) on the tiny
  set, one model's quick variables with AdamW and the quick encoder: every arm
  traced, checked and timed, the ratios, overheads and traffic model in the
  JSON, and `--report` prints the same table."""
  out = tmp_path / "overflow.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks", "--overflow", "--quick", "--json",
                         str(out), "--sets", "tiny", "--dtypes", "float32",
                         "--step-models", "gpt2_like", "--step-optimizers", "adamw",
                         "--hybrid-optimizers", "adamw"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "checks at op level, per call" in proc.stdout
  results = json.loads(out.read_text())
  assert results["scenarios"] == [] and results["peak_memory"] == []

  [scenario] = results["overflow"]
  assert scenario["scenario"] == "tiny/float32" and scenario["num_tensors"] > 0
  # The loops run the baseline's ops, less the one Identity per replaced value
  # (NOTE [check loop] in benchmarks/overflow.py).
  assert scenario["scaffolding_differences"] == {}, scenario["scaffolding_differences"]
  arms = scenario["arms"]
  assert sorted(arms) == sorted(["unscale", "check", "check_sos", "fused", "fused_sos",
                                 "tf_check", "ours_tf_check", "ours_global_norm"])
  for arm, entry in arms.items():
    assert "skipped" not in entry, (arm, entry)
    assert not entry["optimized_away"], (arm, entry)
    assert entry["total_s"] > 0, (arm, entry)
    # Quick runs are too short for a difference to be above noise always.
    assert entry.get("below_noise") or entry["per_call_s"] > 0, (arm, entry)
  assert "FixedUnscaleGradsAndCheck x1" in arms["fused"]["check"]
  assert "IsFinite x0" in arms["fused"]["check"]
  assert "FixedCheckGrads x1" in arms["check"]["check"]
  assert "IsFinite x0" in arms["check"]["check"]
  assert sorted(scenario["ratios"]) == sorted([
      "tf_check/check", "check/unscale", "fused/unscale", "fused_sos/unscale",
      "tf_check/fused", "ours_tf_check/fused", "ours_global_norm/fused_sos"])

  [step] = results["overflow_optimizer_steps"]
  assert (step["model"], step["optimizer"]) == ("gpt2_like", "adamw")
  assert step["not_timed"] == {}, step["not_timed"]
  every_arm = (["bare", "bare_again", "keras_lso", "ours_dynamic", "ours_dynamic_fused",
                "ours_fixed_skip", "ours_fixed_skip_fused"] +
               ["hybrid_tf_check_divide", "hybrid_tf_check_grouped",
                "hybrid_fused_dropped_grouped", "hybrid_fused_outputs", "hybrid_check_grouped",
                "hybrid_check_per_variable"])
  assert sorted(step["step_s"]) == sorted(every_arm)
  # Keras checks per tensor; ours with the package's ops, not TF's check.
  assert "IsFinite" in step["ops"]["keras_lso"]
  for arm in ("ours_dynamic", "ours_dynamic_fused", "ours_fixed_skip", "ours_fixed_skip_fused"):
    assert "IsFinite" not in step["ops"][arm], step["ops"]
  for name, overhead in step["overhead_s"].items():
    low, high = step["overhead_quartiles_s"][name]
    assert low <= overhead <= high, (name, low, overhead, high)
  # The traffic model (benchmarks/traffic.py): the bare AdamW update's bytes,
  # less for a fused update, more for any arm that scales.
  traffic = step["traffic"]
  assert traffic["bare"]["total"] == 148 and not traffic["bare"]["fused_update"]
  for arm in every_arm[2:]:
    assert traffic[arm]["total"] > 0 and traffic[arm]["fused_update"] == arm.endswith("_fused")
    assert traffic[arm]["total"] != traffic["bare"]["total"], (arm, traffic[arm])

  [fit] = results["overflow_fit"]
  assert fit["not_timed"] == {}, fit["not_timed"]
  assert sorted(fit["step_s"]) == sorted(["bare", "keras_lso", "ours_dynamic",
                                          "ours_dynamic_fused"])
  assert "IsFinite" in fit["ops"]["keras_lso"]

  report = subprocess.run([sys.executable, "-m", "benchmarks", "--report", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert report.returncode == 0, report.stderr[-4000:]
  assert report.stdout == proc.stdout
