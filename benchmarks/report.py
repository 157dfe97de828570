"""The report: the table a run prints (and `--report` prints again from its
JSON, byte for byte) and the PNG chart of `--plot`.

Reads only the results dict, never TensorFlow, so a saved run is re-printed
exactly as it was measured.
"""

import sys

import numpy as np

from benchmarks.common import ARM_LABELS


def arm_us(entry, unit=""):
  """An arm's per-call time for the tables: `gone` if it was optimized away,
  `<noise` if below the loop's noise, else microseconds."""
  if entry.get("optimized_away"):
    return "gone"
  if entry.get("below_noise"):
    return "<noise"
  return f"{entry['per_call_s'] * 1e6:.1f}{unit}" if "per_call_s" in entry else "-"


def us_text(entry):
  """arm_us with " us" after a number: the cells of the sweep's sentences."""
  return arm_us(entry, unit=" us")


def print_table(results, out=sys.stdout):
  m = results["machine"]
  # Runs before the library reported its bfloat16 loop have no such key.
  bf16 = " (bfloat16 by AVX512-BF16)" if m.get("avx512_bf16_loop") else ""
  print(f"machine: {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, numpy {m['numpy']}, "
        f"CPU path {m['cpu_path']}{bf16}, intra/inter-op threads {m['intra_op_threads']}/"
        f"{m['inter_op_threads']}, load {m['loadavg_start'][0]:.2f} -> "
        f"{m.get('loadavg_end', [float('nan')])[0]:.2f}", file=out)
  if "overflow" in results:
    # Imported here: report_overflow formats its cells with arm_us, above.
    from benchmarks.report_overflow import print_overflow_report  # pylint: disable=import-outside-toplevel
    print_overflow_report(results, out)
    return
  header = (f"{'scenario':<22}{'tensors':>8}{'MB':>9}  {'ours us':>9}{'TF us':>10}{'XLA us':>9}"
            f"{'floor us':>9}"
            f"  {'ours':>6}{'TF':>6}{'XLA':>6}{'torch':>6}{'roof':>6}  {'ours/TF':>7}"
            f"{'quartiles':>12}{'%roof':>6}")
  print("\nper call (us) and GB/s (bytes read + written), medians over rounds; ours/TF = TF "
        "time / our time within a round, median and quartiles over rounds; floor = one IdentityN over "
        "the list, the least any one op over these tensors costs", file=out)
  print(header, file=out)
  for r in results["scenarios"]:
    a = r["arms"]

    def us(arm):
      return arm_us(a.get(arm, {}))

    def gb(arm):
      e = a.get(arm, {})
      return f"{e['gbps']:.1f}" if "gbps" in e else "-"

    pct = a["ours"].get("fraction_of_roofline")
    quartiles = r.get("ours_vs_tf_quartiles")
    spread = f"{quartiles[0]:.2f}-{quartiles[1]:.2f}" if quartiles else "-"
    print(f"{r['scenario']:<22}{r['num_tensors']:>8}{r['bytes'] / 1e6:>9.2f}  {us('ours'):>9}"
          f"{us('tf'):>10}{us('tf_xla'):>9}{us('floor'):>9}  {gb('ours'):>6}{gb('tf'):>6}{gb('tf_xla'):>6}"
          f"{gb('torch'):>6}{r['roofline_gbps']:>6.1f}  "
          f"{r.get('ours_vs_tf', float('nan')):>6.2f}x{spread:>12}"
          f"{(pct or float('nan')) * 100:>5.0f}%",
          file=out)
  print_one_pass(results, out)
  print_op_times(results, out)
  for p in results.get("peak_memory", []):
    if "skipped" in p:
      print(f"\npeak memory {p['scenario']}: skipped ({p['skipped']})", file=out)
      continue
    print(f"\npeak memory {p['scenario']} (bytes above the variables; gradients "
          f"{p['gradient_bytes'] / 1e6:.1f} MB; {p['allocator']} CPU allocator): produce only "
          f"{p['none'] / 1e6:.1f} MB, ours {p['ours'] / 1e6:.1f} MB, TF per-tensor {p['tf'] / 1e6:.1f} MB", file=out)
  for o in results.get("optimizer_steps", []):
    print(f"\noptimizer step, bert_like variables, {o['optimizer']} "
          f"(gradients {o['gradient_bytes'] / 1e6:.0f} MB): step ms and overhead over the bare "
          "optimizer (medians over rounds; overheads taken within each round)", file=out)
    for name, t in o["step_s"].items():
      extra = o.get("overhead_fraction", {}).get(name)
      extra_s = o.get("overhead_s", {}).get(name)
      tail = "" if extra is None else f"  {extra_s * 1e3:+8.2f} ms  ({extra * 100:+.1f}%)"
      quartiles = o.get("overhead_quartiles_s", {}).get(name)  # absent in older results
      if quartiles is not None:
        tail += f"  quartiles {quartiles[0] * 1e3:+.1f} to {quartiles[1] * 1e3:+.1f} ms"
      print(f"  {name:<36}{t * 1e3:9.2f} ms{tail}", file=out)
    for name in o.get("optimized_away", []):
      print(f"  {name:<36}     gone  ({o['checks'][name]}: not timed)", file=out)
    overhead = o.get("overhead_s", {})
    if "keras:ours_keras" in overhead and overhead.get("keras:keras_loss_scale_optimizer", 0) > 0:
      print(f"  ours_keras overhead / LossScaleOptimizer overhead: "
            f"{overhead['keras:ours_keras'] / overhead['keras:keras_loss_scale_optimizer']:.2f}",
            file=out)


def print_one_pass(results, out):
  """The sweep against NOTE [one pass]: ours and the floor beside our op over
  one tensor of the same bytes in the same loop."""
  rows = [r for r in results["scenarios"] if "one_pass" in r["arms"]]
  if not rows:
    return
  print("\nsweep against ours over 1 tensor of the same bytes in the same loop (NOTE [one pass] "
        "in benchmarks/scenarios.py), per call, medians over rounds; ours - one pass taken within each round, "
        "median and quartiles:", file=out)

  for r in rows:
    a = r["arms"]
    added = r.get("ours_minus_one_pass_s")
    quartiles = r.get("ours_minus_one_pass_quartiles_s")
    above = "-" if added is None else f"{added * 1e6:+.1f} us"
    spread = "" if quartiles is None else f" ({quartiles[0] * 1e6:+.1f} to {quartiles[1] * 1e6:+.1f})"
    print(f"  {r['scenario']:<14} ours {us_text(a['ours']):>11}  "
          f"one pass {us_text(a['one_pass']):>11}  ours - one pass {above:>11}{spread}  floor {us_text(a['floor']):>11}", file=out)


def print_op_times(results, out):
  """The sweep's op times from TF's step stats (NOTE [op time])."""
  rows = results.get("op_times", [])
  if not rows:
    return
  print("\nsweep, op time from TF's step stats (NOTE [op time] in benchmarks/op_times.py; no loop): time inside "
        "the arm's kernels in one Session run, medians over rounds; TF = its n Muls' kernel times "
        "summed (without the executor's work between them: a lower bound); differences to ours "
        "taken within each round, median and quartiles:", file=out)

  def difference(r, other):
    added = r.get(f"ours_minus_{other}_s")
    if added is None:
      return "-"
    q = r[f"ours_minus_{other}_quartiles_s"]
    return f"{added * 1e6:+.1f} ({q[0] * 1e6:+.1f} to {q[1] * 1e6:+.1f})"

  for r in rows:
    if "skipped" in r:
      print(f"  {r['scenario']:<12} skipped ({r['skipped']})", file=out)
      continue
    a = r["arms"]
    print(f"  {r['scenario']:<12} ours {us_text(a['ours']):>10}  "
          f"one pass {us_text(a['one_pass']):>10}  floor {us_text(a['floor']):>10}  TF Muls {us_text(a['tf']):>10}  ours - one pass "
          f"{difference(r, 'one_pass'):>28}  ours - floor {difference(r, 'floor'):>28}", file=out)


def plot(results, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  scenarios = [r for r in results["scenarios"] if not r["scenario"].startswith("sweep")]
  sweep = [r for r in results["scenarios"] if r["scenario"].startswith("sweep")]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 1.3]})
  arms = ["ours", "tf", "tf_xla", "torch", "numpy_mul", "numpy_copy"]
  width = 0.8 / len(arms)
  xs = np.arange(len(scenarios))
  for k, arm in enumerate(arms):
    values = [r["arms"].get(arm, {}).get("gbps", 0.0) for r in scenarios]
    ax1.bar(xs + (k - len(arms) / 2 + 0.5) * width, values, width, label=ARM_LABELS[arm])
  ax1.set_xticks(xs)
  ax1.set_xticklabels([r["scenario"] for r in scenarios], rotation=45, ha="right", fontsize=8)
  ax1.set_ylabel("GB/s (bytes read + written)")
  ax1.set_title("Unscale throughput per gradient set and dtype")
  ax1.legend(fontsize=8)
  ax1.grid(axis="y", alpha=0.3)
  if sweep:
    counts = [r["num_tensors"] for r in sweep]
    for arm in ("ours", "tf", "tf_xla", "torch", "floor", "one_pass"):
      points = [(c, r["arms"][arm]["per_call_s"] * 1e6) for c, r in zip(counts, sweep)
                if "per_call_s" in r["arms"].get(arm, {})]
      if points:
        ax2.loglog(*zip(*points), marker="o", label=ARM_LABELS[arm])
    op_rows = results.get("op_times", [])
    for arm in ("ours", "floor"):
      points = [(r["num_tensors"], r["arms"][arm]["per_call_s"] * 1e6) for r in op_rows
                if "per_call_s" in r.get("arms", {}).get(arm, {})]
      if points:
        ax2.loglog(*zip(*points), marker="x", linestyle="--",
                   label=f"{ARM_LABELS[arm]}: op time (step stats)")
    ax2.set_xlabel("number of tensors (fixed total size)")
    ax2.set_ylabel("per-call time (us)")
    ax2.set_title(f"Cost against tensor count ({sweep[0]['bytes'] / 1e6:.1f} MB float32)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
  m = results["machine"]
  fig.suptitle(f"tf-fixed-loss-scale, {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, "
               f"load {m['loadavg_start'][0]:.2f}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
