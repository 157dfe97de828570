"""The `--overflow` report: the checks at op level, the optimizer steps with
their traffic model, and the transformer's train step.

Reads only the results dict, so `--report` re-prints a saved run byte for byte.
"""

from benchmarks.report import arm_us

# The op-level table's columns: (arm, heading).
OVERFLOW_COLUMNS = (("unscale", "unscale"), ("check", "check"), ("check_sos", "check+sos"),
                    ("fused", "fused"), ("fused_sos", "fused+sos"), ("tf_check", "TF check"),
                    ("ours_tf_check", "ours+TFchk"), ("ours_global_norm", "ours+gnorm"))


def print_overflow_report(results, out):
  print_overflow(results, out)
  for entry in results.get("overflow_optimizer_steps", []):
    print_step(entry, out)
  print_step_summary(results.get("overflow_optimizer_steps", []), out)
  for entry in results.get("overflow_fit", []):
    print_fit(entry, out)


def print_overflow(results, out):
  """Op level: every arm's per-call time, then the ratios."""
  rows = results["overflow"]
  print("\nchecks at op level, per call (us), medians over rounds of (T(arm) - T(none)) / N "
        "(NOTE [check loop] in benchmarks/overflow.py):", file=out)
  seen = {}
  for r in rows:
    for arm, entry in r["arms"].items():
      seen.setdefault(arm, entry["label"])
  columns = [(arm, heading) for arm, heading in OVERFLOW_COLUMNS if arm in seen]
  for arm, heading in columns:
    print(f"  {heading:<11} {seen[arm]}", file=out)
  print(f"{'scenario':<22}{'tensors':>8}{'MB':>9}{'N':>4} " +
        "".join(f"{heading:>11}" for _, heading in columns), file=out)
  for r in rows:
    cells = []
    for arm, _ in columns:
      entry = r["arms"].get(arm, {})
      cells.append("n/a" if "skipped" in entry else arm_us(entry))
    print(f"{r['scenario']:<22}{r['num_tensors']:>8}{r['bytes'] / 1e6:>9.2f}{r['repeats']:>4} " +
          "".join(f"{c:>11}" for c in cells), file=out)
  for r in rows:
    for arm, entry in r["arms"].items():
      if "skipped" in entry:
        print(f"  {r['scenario']} {arm}: not available ({entry['skipped']})", file=out)
      elif entry.get("optimized_away"):
        print(f"  {r['scenario']} {arm}: gone ({entry['check']}: not timed)", file=out)
  names = list(rows[0]["ratios"]) if rows else []
  if not names:
    return
  print("\nratios of per-call times, taken within each round: median (quartiles); goals for "
        "the large sets (bert_like, few_large) and the small ones (many_small, tiny)", file=out)
  print(f"{'scenario':<22}" + "".join(f"{name:>28}" for name in names), file=out)
  print(f"{'goal':<22}" + "".join(f"{rows[0]['ratios'][name]['goal'] or '-':>28}"
                                   for name in names), file=out)
  for r in rows:
    cells = []
    for name in names:
      ratio = r["ratios"].get(name, {})
      cells.append("-" if "median" not in ratio else
                   f"{ratio['median']:.2f} ({ratio['quartiles'][0]:.2f}-"
                   f"{ratio['quartiles'][1]:.2f})")
    print(f"{r['scenario']:<22}" + "".join(f"{c:>28}" for c in cells), file=out)


def _ms(seconds, sign=""):
  return f"{seconds * 1e3:{sign}.1f}"


def _range(pair, sign=""):
  return f"{_ms(pair[0], sign)}..{_ms(pair[1], sign)}"


def _ratio(ratio):
  if not ratio or ratio.get("median") is None:
    return "-"
  text = f"{ratio['median']:.2f}"
  if "range" in ratio:
    text += f" ({ratio['range'][0]:.2f}..{ratio['range'][1]:.2f})"
  return text


def _rw(pair):
  return f"{pair[0]:g}/{pair[1]:g}"


def _arm_rows(o, out, traffic_columns):
  print(f"  {'arm':<30}{'step ms':>9}{'quartiles':>16}{'overhead ms':>13}{'quartiles':>16}"
        f"{'/ Keras LSO (range)':>22}" +
        (f"{'before':>10}{'inside':>9}{'update':>9}{'B/param':>9}{'model ms':>10}"
         if traffic_columns else ""), file=out)
  bare_traffic = o.get("traffic", {}).get("bare")
  for arm, t in o["step_s"].items():
    overhead = o["overhead_s"].get(arm)
    cells = (f"  {arm:<30}{_ms(t):>9}{_range(o['step_quartiles_s'][arm]):>16}" +
             (f"{_ms(overhead, '+'):>13}{_range(o['overhead_quartiles_s'][arm], '+'):>16}"
              if overhead is not None else f"{'':>29}") +
             f"{_ratio(o['ratio_to_keras'].get(arm)):>22}")
    if traffic_columns:
      tr = o["traffic"][arm]
      model = (tr["total"] - bare_traffic["total"]) * o["parameters"] / o["bandwidth"]
      cells += (f"{_rw(tr['before_rw']):>10}{_rw(tr['inside_rw']):>9}{_rw(tr['update_rw']):>9}"
                f"{tr['total']:>9g}{_ms(model, '+'):>10}")
    print(cells, file=out)
  for arm, why_not in o["not_timed"].items():
    print(f"  {arm:<30}      n/a  ({why_not})", file=out)
  print("  " + "; ".join(f"{arm} = {label}" for arm, label in o["labels"].items()), file=out)
  for arm, note in o["ops"].items():
    print(f"  ops in {arm}'s executed graph (a cond's branches counted, taken or not): {note}",
          file=out)


def print_step(o, out):
  """One model's variables and one optimizer: every arm, with the traffic model."""
  print(f"\noptimizer step that skips non-finite gradients, {o['model']} variables "
        f"({o['num_variables']}, {o['parameters'] / 1e6:.1f}M parameters, "
        f"{o['gradient_bytes'] / 1e6:.0f} MB of float32 gradients), {o['optimizer']}, "
        f"{o['rounds']} rounds x {o['reps']} calls"
        f"{', each arm ' + str(o['traces']) + ' traces called in turn' if o.get('traces', 1) > 1 else ''}"
        ": step ms (median, quartiles over rounds), "
        "overhead over the bare step taken within each round, and overhead / Keras's "
        "LossScaleOptimizer's (ratio of medians; range from the quartiles). Traffic model "
        "(NOTE [traffic model] in benchmarks/traffic.py): read/written per gradient byte "
        "before the skip decision and inside the apply branch, read/written bytes per "
        "parameter of the update, all bytes per parameter, and the time of the bytes beyond "
        f"the bare step at {o['bandwidth'] / 1e9:.1f} GB/s (numpy copies of the same bytes, "
        "timed among the arms)",
        file=out)
  _arm_rows(o, out, traffic_columns=True)


def print_step_summary(entries, out):
  """The goals: ours' overhead against Keras's, and ours against the bare step."""
  if not entries:
    return
  arms = ("ours_dynamic", "ours_fixed_skip", "ours_dynamic_fused", "ours_fixed_skip_fused")
  print("\nsummary: overhead / Keras LossScaleOptimizer's overhead, median (range from the "
        "quartiles) [goal <= 0.75, none above 1.0]; and the fused drop-in's step minus the "
        "bare step, ms (quartiles) [goal: below 0 for Adam and AdamW, not above 0 for SGD]",
        file=out)
  print(f"  {'step':<18}" + "".join(f"{arm:>24}" for arm in arms) +
        f"{'drop-in fused - bare':>24}", file=out)
  for o in entries:
    cells = [_ratio(o["ratio_to_keras"].get(arm)) for arm in arms]
    fused = o["overhead_s"].get("ours_dynamic_fused")
    cells.append("-" if fused is None else
                 f"{_ms(fused, '+')} ({_range(o['overhead_quartiles_s']['ours_dynamic_fused'], '+')})")
    print(f"  {o['model'] + ' ' + o['optimizer']:<18}" + "".join(f"{c:>24}" for c in cells),
          file=out)


def print_fit(o, out):
  """The transformer's train step (a real backward pass) under each optimizer."""
  cfg = o["config"]
  print(f"\ntrain step of a transformer encoder (Model.train_on_batch, fit's train function; "
        f"{o['parameters'] / 1e6:.1f}M parameters, {cfg['layers']} layers of width "
        f"{cfg['width']}, batch {cfg['batch']}x{cfg['seq']}), Adam, {o['rounds']} rounds x "
        f"{o['reps']} calls: step ms, overhead over the bare step within rounds, / Keras "
        "LossScaleOptimizer's", file=out)
  _arm_rows(o, out, traffic_columns=False)
