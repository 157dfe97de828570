"""What every measuring module shares: the loss scale the arms unscale by, the
arms' labels and the progress log (stderr; the table alone goes to stdout)."""

import sys

import numpy as np

# A loss scale just above 1 keeps values in the normal range through N
# repetitions (no arm gets an all-zero or subnormal shortcut); the kernels'
# cost does not depend on the value. 1 + 2^-8 is the smallest whose reciprocal
# is not 1 in bfloat16 (TF's arm multiplies in the gradient's dtype, and Grappler
# drops a multiply by 1).
LOSS_SCALE = 1.00390625
RECIPROCAL = float(np.float32(1) / np.float32(LOSS_SCALE))

ARM_LABELS = {
    "ours": "FixedUnscaleGrads (ours)",
    "tf": "TF per-tensor g * (1/s)",
    "tf_xla": "TF per-tensor under XLA",
    "floor": "IdentityN over the list (op floor)",
    "one_pass": "ours over 1 tensor of the same bytes",
    "numpy_mul": "numpy in-place multiply (roofline)",
    "numpy_copy": "numpy copy (roofline)",
    "torch": "torch._foreach_mul_",
}


def log(message):
  print(message, file=sys.stderr, flush=True)
