"""The traffic model: the bytes each step arm moves per float32 parameter.

Owns the model the measured step times are read against (NOTE [traffic
model]): per arm, the bytes loss scaling reads and writes before the skip
decision and inside the apply branch, in units of the gradients' bytes, and
the bytes the optimizer update moves per parameter; from them the bytes an
arm moves beyond the bare step and the time they take at the roofline's
bandwidth. Plain Python: `--report` prints it from a saved run.
"""

# NOTE [traffic model]: every TensorFlow elementwise op on CPU (no XLA) reads
# each full-size input and writes its output to memory once the tensors are
# larger than the caches; an assign to a variable takes over its value's
# buffer (no copy), an assign_add or assign_sub reads the variable and the
# value and writes the variable. Bytes per float32 parameter (4 per tensor
# touched), counted from Keras 3's update_step on the TensorFlow backend:
# - SGD with momentum: m*momentum, g*lr, their difference (assigned to m),
#   var += m: reads 24, writes 16;
# - Adam: g-m, *(1-beta_1), m += ...; g*g, -v, *(1-beta_2), v += ...;
#   m*alpha, sqrt(v), +epsilon, the quotient, var -= ...: reads 72, writes 48;
# - AdamW: Adam and the decay var*wd, *lr, var -= ...: reads 88, writes 60.
# A fused update reads the gradient, the variable and its slots once and
# writes the variable and the slots once (the update's floor); for AdamW,
# Keras's decay ops run before it (NOTE [weight decay stays Keras's] in
# fused_update.py): 16 read, 12 written more. Loss scaling's passes, per gradient
# byte: TF's per-tensor check reads the gradient and writes a bool per element
# that reduce_all reads back (5/4 read, 1/4 written); the read-only check
# reads it (1, 0); an unscale reads and writes it (1, 1); a fused update
# unscales in registers (0, 0). The gradients' production is the same in
# every arm and not counted. What the model leaves out is where the bytes
# are: the temporaries of one variable's update (bert_like's largest is 9.4
# MB) may stay in the last-level cache, so Keras's op bytes bound its update
# from above and the floor from below; a pass over gradients still in cache
# costs less than the model says; and the skip decision is a barrier that
# sends every gradient to memory and back before the update reads it.
UPDATE_BYTES = {"sgd": (24, 16), "adam": (72, 48), "adamw": (88, 60)}
FUSED_UPDATE_BYTES = {"sgd": (12, 8), "adam": (16, 12), "adamw": (32, 24)}

# Per gradient byte, (read, written) of one pass.
TF_CHECK = (1.25, 0.25)
READ_CHECK = (1.0, 0.0)
UNSCALE = (1.0, 1.0)
NOTHING = (0.0, 0.0)

# The arms whose passes are fixed by their construction: (before the skip
# decision, inside the apply branch, fused update).
STATIC_ARMS = {
    "bare": (NOTHING, NOTHING, False),
    "bare_again": (NOTHING, NOTHING, False),
    "keras_lso": (TF_CHECK, UNSCALE, False),
    "hybrid_tf_check_divide": (TF_CHECK, UNSCALE, False),
    "hybrid_tf_check_grouped": (TF_CHECK, UNSCALE, False),
    "hybrid_fused_dropped_grouped": (UNSCALE, UNSCALE, False),
    "hybrid_fused_outputs": (UNSCALE, NOTHING, False),
    "hybrid_check_grouped": (READ_CHECK, UNSCALE, False),
    "hybrid_check_per_variable": (READ_CHECK, UNSCALE, False),
}


def passes_from_ops(counts, fused_update_ops, check_op, fused_check_op, unscale_ops):
  """(before, inside, fused update) of a wrapper arm, read from the op types of
  its executed graph: which check runs before the decision, whether an unscale
  runs inside, whether a fused update applies the gradients."""
  fused = any(counts.get(op, 0) for op in fused_update_ops)
  if counts.get(check_op, 0):
    before = READ_CHECK
  elif counts.get(fused_check_op, 0):
    before = UNSCALE
  elif counts.get("IsFinite", 0):
    before = TF_CHECK
  else:
    before = NOTHING
  inside = UNSCALE if any(counts.get(op, 0) for op in unscale_ops) else NOTHING
  if before == UNSCALE and not fused:
    inside = NOTHING  # the fused op's outputs are the unscaled gradients
  return before, inside, fused


def arm_bytes(kind, passes):
  """{before_rw, inside_rw (per gradient byte), update_rw, total (bytes per
  parameter)} of one arm of a `kind` optimizer step."""
  before, inside, fused = passes
  update = (FUSED_UPDATE_BYTES if fused else UPDATE_BYTES)[kind]
  scaling = 4 * (before[0] + before[1] + inside[0] + inside[1])
  return {"before_rw": list(before), "inside_rw": list(inside), "update_rw": list(update),
          "fused_update": fused, "total": scaling + update[0] + update[1]}


def model_overhead_s(entry, bare_entry, parameters, bandwidth):
  """Seconds the bytes an arm moves beyond the bare step take at `bandwidth`
  (bytes/s), or None without a bandwidth."""
  if not bandwidth:
    return None
  return (entry["total"] - bare_entry["total"]) * parameters / bandwidth
